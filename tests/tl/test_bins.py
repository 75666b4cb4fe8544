"""Visium HD: a pseudo HD sample in spatialdata-io's layout, and bin fractions from the map."""

import numpy as np
import pytest
import shapely

import kgl
from _kgl_fixtures import red_fraction_segmenter

DS = "hd"
DISK = ((400.0, 300.0), 150.0)  # a painted 'glomerulus' in image px (0.5 µm/px): centre, radius


@pytest.fixture(scope="module")
def hd(tmp_path_factory):
    pytest.importorskip("spatialdata_io")
    img = np.full((600, 800, 3), (230, 190, 215), np.uint8)
    (cx, cy), r = DISK
    yy, xx = np.mgrid[:600, :800]
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r**2] = (220, 0, 0)
    poly = shapely.Point(cx, cy).buffer(r, quad_segs=256)
    return kgl.datasets.pseudo_visium_hd([img], [[poly]], mpp=0.5, path=tmp_path_factory.mktemp("hd"), dataset_id=DS)


def test_square_means_are_exact_area_means():
    from kgl._geometry import square_means

    rng = np.random.default_rng(0)
    img = rng.random((20, 30))
    centers, side = rng.uniform(-4, 34, (60, 2)), 5.7
    mean, inside = square_means(img, centers, side, origin=-0.5)
    for (x, y), m, s in zip(centers, mean, inside, strict=True):
        sq = shapely.box(x - side / 2, y - side / 2, x + side / 2, y + side / 2)
        a = np.array([[sq.intersection(shapely.box(j - 0.5, i - 0.5, j + 0.5, i + 0.5)).area for j in range(30)]
                      for i in range(20)])  # fmt: skip
        assert s == pytest.approx(a.sum() / side**2, abs=1e-12)
        if a.sum() > 0:
            assert m == pytest.approx((a * img).sum() / a.sum(), abs=1e-9)
        else:
            assert np.isnan(m)


def test_pseudo_hd_has_spatialdata_io_layout(hd):
    from spatialdata.transformations import Identity, Scale, get_transformation

    assert set(hd.images) == {f"{DS}_full_image", f"{DS}_hires_image", f"{DS}_lowres_image"}
    assert set(hd.shapes) == {f"{DS}_square_{b:03d}um" for b in (2, 8, 16)}
    assert set(hd.tables) == {f"square_{b:03d}um" for b in (2, 8, 16)}
    assert set(get_transformation(hd.images[f"{DS}_full_image"], get_all=True)) == {DS}
    hires = get_transformation(hd.images[f"{DS}_hires_image"], to_coordinate_system=DS)
    assert isinstance(hires, Scale)
    for b in (2, 8, 16):
        shapes, table = hd.shapes[f"{DS}_square_{b:03d}um"], hd.tables[f"square_{b:03d}um"]
        assert isinstance(get_transformation(shapes, to_coordinate_system=DS), Identity)
        attrs = table.uns["spatialdata_attrs"]
        assert attrs == {"region": f"{DS}_square_{b:03d}um", "region_key": "region", "instance_key": "location_id"}
        assert table.obs["location_id"].isin(shapes.index).all()
        side = shapes.geometry.bounds.eval("maxx - minx").to_numpy()
        np.testing.assert_allclose(side, b / 0.5)  # squares of b µm at 0.5 µm/px
        # Space Ranger's binning: a b-µm bin is (b/2)² 2-µm squares, so the bins' area adds up
        cov = table.obs["glomerulus_coverage"].to_numpy()
        assert cov.sum() * b * b == pytest.approx(np.pi * (DISK[1] * 0.5) ** 2, rel=0.01)


@pytest.mark.parametrize("b", [2, 8, 16])
def test_bin_fractions_match_the_known_mask(hd, b):
    sd = hd
    name = f"square_{b:03d}um"
    # a 0.5-µm map (the image's own pixels): fractions are exact up to the painted disk's pixel edges
    kgl.tl.classify_spots(sd, red_fraction_segmenter(mpp=0.5, input_size=64), table_name=name, show_progress=False,
                          precision="fp32")  # fmt: skip
    obs = sd.tables[name].obs
    cov, frac = obs["glomerulus_coverage"].to_numpy(), obs["glomerulus_fraction"].to_numpy()
    assert ((cov > 0) & (cov < 1)).sum() > 10 and (cov == 1).sum() > 10
    # the painted disk is whole pixels: a 2-µm bin (4 × 4 px) on its edge can differ by ~2 px of 16
    np.testing.assert_allclose(frac, cov, atol={2: 0.15, 8: 0.03, 16: 0.02}[b])
    assert np.abs(frac - cov).mean() < 0.005
    assert obs["glomerulus"].cat.categories.tolist() == ["other", "glomerulus"]
    assert "X_glomerulus" not in sd.tables[name].obsm  # a bin is smaller than one feature cell
    assert sd.tables[name].uns["glomerulus"]["params"]["libraries"][f"{DS}_{name}"]["bin_um"] == b


def test_patch_classifier_on_bins_is_refused(hd):
    from _kgl_fixtures import tiny_cnn

    before = set(hd.tables["square_016um"].obs.columns)
    with pytest.raises(ValueError, match="Visium HD bins"):
        kgl.tl.classify_spots(hd, tiny_cnn(), table_name="square_016um", show_progress=False, precision="fp32",
                              allow_upsampling=True)  # fmt: skip
    assert set(hd.tables["square_016um"].obs.columns) == before


def test_map_and_glomeruli_on_hd_bins(hd):
    net = red_fraction_segmenter(mpp=0.5, input_size=64)
    kgl.tl.glomerulus_map(hd, net, table_name="square_016um", show_progress=False, precision="fp32")
    assert f"{DS}_square_016um_glomerulus" in hd.images
    gdf = kgl.tl.glomeruli(hd, table_name="square_016um")
    r = DISK[1]
    assert len(gdf) == 1 and gdf["area_um2"].iloc[0] == pytest.approx(np.pi * (r * 0.5) ** 2, rel=0.02)
    # the bins' square shares add up to the glomerulus' area
    assert sum(gdf["spot_fractions"].iloc[0]) * 16**2 == pytest.approx(gdf["area_um2"].iloc[0], rel=0.02)


def test_hd_zarr_through_classify_files(hd, tmp_path):
    # a whole HD sample as a file: the table named is the one annotated and counted
    net = red_fraction_segmenter(mpp=0.5, input_size=64)
    table = kgl.recipes.classify_files([hd.path], tmp_path / "out", model=net, table_name="square_016um",
                                       show_progress=False, precision="fp32")  # fmt: skip
    row = table.iloc[0]
    assert row["status"] == "ok", row["error"]
    assert row["n_spots"] == hd.tables["square_016um"].n_obs and row["n_glomerulus"] > 10
    assert row["output"].endswith(".zarr")
