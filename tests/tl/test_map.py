"""The dense glomerulus map: fractions, storage, polygons, per-glomerulus counts, memory, training."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import shapely

import kgl
from _kgl_fixtures import make_visium, paint_disk, red_fraction_segmenter, tiny_cnn
from kgl._geometry import spot_coverage

MPP = 0.5  # make_visium's µm per full-res px
GLOM = ((300.0, 250.0), 90.0)  # a painted 'glomerulus': centre (µm) and radius (µm)


def _painted(**kw):
    adata = make_visium(width=1200, height=1000, mpp=MPP, **kw)
    paint_disk(adata, *GLOM)
    return adata


def _truth(adata):
    (cx, cy), r = GLOM
    disk = shapely.Point(cx / MPP, cy / MPP).buffer(r / MPP, quad_segs=128)
    return spot_coverage(adata.obsm["spatial"], [disk], 27.5 / MPP)


@pytest.mark.parametrize("hires_scalef", [1.0, 0.3])
def test_fraction_equals_disk_coverage(hires_scalef):
    # a model whose map is the share of red in each map pixel: the spot fraction is the disk coverage
    adata = _painted(hires_scalef=hires_scalef)
    kgl.tl.classify_spots(adata, red_fraction_segmenter(), show_progress=False, precision="fp32")
    cov, frac = _truth(adata), adata.obs["glomerulus_fraction"].to_numpy()
    assert (cov > 0.9).sum() >= 3 and ((cov > 0) & (cov < 0.9)).sum() >= 2  # inside and border spots
    np.testing.assert_allclose(frac, cov, atol=0.02)  # painting and resampling at pixel scale, nothing more
    # the rest of classify_spots' contract holds for a map model
    obs = adata.obs
    assert obs["glomerulus"].cat.categories.tolist() == ["other", "glomerulus"]
    assert obs["glomerulus_proba"].dtype == np.float32 and obs["glomerulus_proba"].between(0, 1).all()
    assert adata.obsm["X_glomerulus"].shape == (adata.n_obs, 3)
    params = adata.uns["glomerulus"]["params"]
    assert params["task"] == "segment" and params["libraries"]["lib"]["map_mpp"] == pytest.approx(2.0, rel=0.07)


def test_disk_weights_are_exact_area_shares():
    from kgl._geometry import disk_means, disk_pixel_weights

    rng = np.random.default_rng(0)
    centers, r = rng.uniform(20, 80, (40, 2)), 9.3
    _, _, w = disk_pixel_weights(centers, r)
    np.testing.assert_allclose(w.sum(axis=(1, 2)), 1.0, atol=1e-12)
    img = np.zeros((100, 100))
    img[30:60, 40:90] = 1.0  # pixel (i, j) covers [j - 0.5, j + 0.5) with origin -0.5
    mean, inside = disk_means(img, centers, r, origin=-0.5)
    box = shapely.box(39.5, 29.5, 89.5, 59.5)
    ref = [shapely.Point(c).buffer(r, quad_segs=512).intersection(box).area / (np.pi * r * r) for c in centers]
    np.testing.assert_allclose(mean, ref, atol=1e-4)
    assert (inside == 1).all()


def test_tiles_blend_seamlessly():
    # tiles of 64 px (many seams) and of 512 px (none over this sample) give the same map
    adata = _painted()
    a = kgl.tl.glomerulus_map(adata, red_fraction_segmenter(), tile_size=64, halo=0, copy=True,
                              show_progress=False, precision="fp32")  # fmt: skip
    b = kgl.tl.glomerulus_map(adata, red_fraction_segmenter(), copy=True, show_progress=False, precision="fp32")
    ma, mb = (x.uns["spatial"]["lib"]["images"]["glomerulus"].astype(int) for x in (a, b))
    assert ma.shape == mb.shape and np.abs(ma - mb).max() <= 1


def test_glomerulus_map_storage_and_squidpy_frame():
    adata = _painted()
    assert kgl.tl.glomerulus_map(adata, red_fraction_segmenter(), show_progress=False, precision="fp32") is None
    meta = adata.uns["spatial"]["lib"]
    img, sf = meta["images"]["glomerulus"], meta["scalefactors"]["tissue_glomerulus_scalef"]
    assert img.dtype == np.uint8 and img.ndim == 2
    (cx, cy), _ = GLOM
    # the glomerulus centre, in full-res px, times the scale factor lands inside the painted disk of the map
    assert img[round(cy / MPP * sf), round(cx / MPP * sf)] > 250
    assert img[5, 5] < 5
    params = adata.uns["glomerulus_map"]["params"]
    assert params["libraries"]["lib"]["map_mpp"] == pytest.approx(MPP / sf)


def test_map_refuses_classifier_and_writes_nothing():
    adata = _painted()
    before = (dict(adata.uns["spatial"]["lib"]["images"]), sorted(adata.uns))
    with pytest.raises(ValueError, match=r"patch classifier .* needs a map model"):
        kgl.tl.glomerulus_map(adata, tiny_cnn(), show_progress=False)
    with pytest.raises(ValueError, match="adapt_bn / stain_norm are patch-classifier options"):
        kgl.tl.classify_spots(adata, red_fraction_segmenter(), adapt_bn=True, show_progress=False)
    assert (dict(adata.uns["spatial"]["lib"]["images"]).keys(), sorted(adata.uns)) == (before[0].keys(), before[1])
    assert list(adata.obs.columns) == ["in_tissue"]


def test_failure_midway_writes_nothing():
    adata = _painted()
    model = red_fraction_segmenter()
    calls = {"n": 0}

    def boom(module, inp):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated failure in tile batch 2")

    model.net.register_forward_pre_hook(boom)
    cols, uns, images = list(adata.obs.columns), sorted(adata.uns), list(adata.uns["spatial"]["lib"]["images"])
    with pytest.raises(RuntimeError, match="tile batch 2"):
        kgl.tl.glomerulus_map(adata, model, tile_size=128, halo=32, batch_size=1, show_progress=False)
    assert (list(adata.obs.columns), sorted(adata.uns), list(adata.uns["spatial"]["lib"]["images"])) == (
        cols,
        uns,
        images,
    )


def test_glomeruli_polygons_geojson_round_trip_and_counts(tmp_path):
    adata = _painted()
    paint_disk(adata, (100.0, 100.0), 40.0)
    kgl.tl.glomerulus_map(adata, red_fraction_segmenter(), show_progress=False, precision="fp32")
    gdf = kgl.tl.glomeruli(adata)
    assert len(gdf) == 2
    big = gdf.loc[gdf["area_um2"].idxmax()]
    assert big["area_um2"] == pytest.approx(np.pi * 90**2, rel=0.05)
    assert big["diameter_um"] == pytest.approx(180, rel=0.03)
    assert big["geometry"].centroid.distance(shapely.Point(600, 500)) < 4  # full-res px
    assert big["mean_proba"] > 0.9 and len(big["geometry"].interiors) == 0
    # the overlapping spots and their fractions agree with the exact coverage of the polygon
    names = list(adata.obs_names)
    cov = _truth(adata)
    for s, f in zip(big["spots"], big["spot_fractions"], strict=True):
        assert f == pytest.approx(cov[names.index(s)], abs=0.03)
    # QuPath GeoJSON round trip
    path = kgl.io.write_geojson(gdf, tmp_path / "glomeruli.geojson")
    feats = json.loads(path.read_text())["features"]
    assert {f["properties"]["classification"]["name"] for f in feats} == {"Glomerulus"}
    back = kgl.io.read_geojson(path, classes="Glomerulus")
    for a, b in zip(gdf.geometry, back["geometry"], strict=True):
        assert a.equals_exact(b, 1e-9)
    # per-glomerulus counts: the fraction-weighted sums of the spots' counts
    counts = np.arange(adata.n_obs * 2, dtype=float).reshape(-1, 2)
    genes = ad.AnnData(X=counts, obs=adata.obs[[]], var=pd.DataFrame(index=["Nphs1", "Umod"]))
    agg = kgl.tl.glomerulus_expression(genes, gdf)
    assert agg.shape == (2, 2) and list(agg.obs_names) == list(gdf.index)
    for g, row in enumerate(gdf.itertuples()):
        expect = sum(f * counts[names.index(s)] for s, f in zip(row.spots, row.spot_fractions, strict=True))
        np.testing.assert_allclose(agg.X[g], expect)
        assert agg.obs["weight_sum"].iloc[g] == pytest.approx(sum(row.spot_fractions))


def test_glomeruli_computes_the_map_when_none_is_stored():
    adata = _painted()
    gdf = kgl.tl.glomeruli(adata, red_fraction_segmenter(), precision="fp32")
    assert len(gdf) == 1 and "glomerulus" not in adata.uns["spatial"]["lib"]["images"]


def test_large_tiff_is_read_through_the_pyramid(tmp_path):
    import tracemalloc

    from kgl.io import SlideImage, write_tiff_pyramid

    side = 6000  # 108 MB of RGB at full resolution
    img = np.full((side, side, 3), (230, 190, 215), dtype=np.uint8)
    yy, xx = np.ogrid[:side, :side]
    img[(xx - 3000) ** 2 + (yy - 3000) ** 2 <= 300**2] = (220, 0, 0)
    path = write_tiff_pyramid(tmp_path / "big.tif", img, mpp=MPP)
    del img, yy, xx
    adata = make_visium(width=side, height=side, mpp=MPP)
    meta = adata.uns["spatial"]["lib"]
    meta["images"] = {}
    meta["metadata"]["source_image_path"] = str(path)
    windows = []
    real = SlideImage.read_window

    def spy(self, level, x0, y0, x1, y1, **kw):
        windows.append((level, (x1 - x0) * (y1 - y0)))
        return real(self, level, x0, y0, x1, y1, **kw)

    kgl.tl.classify_spots(_painted(), red_fraction_segmenter(), show_progress=False)  # imports and caches first
    SlideImage.read_window = spy
    try:
        tracemalloc.start()
        kgl.tl.classify_spots(adata, red_fraction_segmenter(), show_progress=False, precision="fp32")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        SlideImage.read_window = real
    assert {lv for lv, _ in windows} == {2}  # 4x downsampled level: 2 µm/px, the model's resolution
    assert max(a for _, a in windows) == 512 * 512
    assert peak < 108e6 / 2  # two float32 canvases at 2 µm/px (1/6 of the image) and a few tiles: never the image
    frac = adata.obs["glomerulus_fraction"].to_numpy()
    disk = shapely.Point(3000, 3000).buffer(300, quad_segs=128)
    np.testing.assert_allclose(frac, spot_coverage(adata.obsm["spatial"], [disk], 55.0), atol=0.02)


def test_segmenter_checkpoint_round_trip(tmp_path):
    import torch

    model = kgl.models.build_segmenter("FPN", "resnet18", weights=None, mpp=1.0, input_size=64).eval()
    path = kgl.models.save_checkpoint(model, tmp_path / "map.pt")
    back = kgl.models.load_checkpoint(path).eval()
    assert isinstance(back, kgl.models.GlomSegmenter) and back.spec.task == "segment" and back.spec.arch == "FPN"
    assert back.spec.mpp == 1.0
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(back(x), model(x))
    with pytest.raises(ValueError, match="input_size must be a positive multiple of 32"):
        kgl.models.build_segmenter(input_size=100, weights=None)
    with pytest.raises(ValueError, match="Unknown map architecture"):
        kgl.models.build_segmenter("SegFormer", weights=None)


def _slides(tmp_path, n=4):
    """A slide table of painted images: pink with one or two red 'glomeruli', two groups."""
    from PIL import Image

    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.full((300, 360, 3), (230, 190, 215), dtype=np.uint8)
        yy, xx = np.ogrid[:300, :360]
        cx, cy = rng.uniform(100, 260), rng.uniform(100, 200)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= 80**2] = (200, 40, 90)
        path = tmp_path / f"s{i}.png"
        Image.fromarray(img).save(path)
        poly = shapely.Point(cx, cy).buffer(80, quad_segs=32)
        rows.append({"slide": f"s{i}", "path": str(path), "group": f"g{i % 2}", "polygons": [poly], "mpp": 1.0,
                     "width": 360, "height": 300, "split": "train" if i % 2 == 0 else "val"})  # fmt: skip
    return pd.DataFrame(rows)


def test_crops_align_image_and_mask(tmp_path):
    ds = kgl.im.MapCropDataset(_slides(tmp_path), mpp=1.0, size=64, length=8, seed=3, augment="none")
    for i in range(len(ds)):
        x, m = ds[i]
        red = (x[..., 1] < 100).astype(float)  # the painted disk, after any rotation
        assert np.abs(red - m).mean() < 0.03
    a, b = ds[5], ds[5]
    np.testing.assert_array_equal(a[0], b[0])


def test_crops_never_show_padding_inside_tissue(tmp_path):
    # any rotation with the widest zoom-out: the centre crop's corners still sample the slide, not the fill
    from PIL import Image

    Image.fromarray(np.full((600, 600, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    poly = shapely.Point(300, 300).buffer(40)
    slides = pd.DataFrame([{"slide": "g", "path": str(tmp_path / "grey.png"), "group": "g", "polygons": [poly],
                            "mpp": 1.0, "width": 600, "height": 600, "split": "train"}])  # fmt: skip
    ds = kgl.im.MapCropDataset(slides, mpp=1.0, size=64, length=64, glom_share=1.0, augment="none", seed=1)
    assert max(int(ds[i][0].max()) for i in range(len(ds))) < 140


def test_train_map_runs_resumes_and_calibrates(tmp_path):
    slides = _slides(tmp_path)
    kw = dict(backbone="resnet18", weights=None, mpp=1.0, input_size=64, steps_per_epoch=2, batch_size=2,
              show_progress=False, precision="fp32", out_dir=tmp_path / "run")  # fmt: skip
    first = kgl.tl.train_map(slides, epochs=2, **kw)
    assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "best.pt").is_file()
    res = kgl.tl.train_map(slides, epochs=2, resume=True, **kw)  # a finished run: restored, not retrained
    assert list(res.history["epoch"]) == [1, 2]
    pd.testing.assert_series_equal(res.history["val_loss"], first.history["val_loss"])
    assert res.best_epoch == first.best_epoch
    spec = res.model.spec
    assert spec.task == "segment" and 0 <= spec.calibration.threshold <= 1
    assert spec.training["validation_spots"]["n"] > 0
    back = kgl.models.load_checkpoint(tmp_path / "run" / "best.pt")
    assert back.spec.name == "kgl-glom-map"
    with pytest.raises(KeyError, match="has no 'split' column"):
        kgl.tl.train_map(slides.drop(columns="split"), **kw)


def test_spatialdata_fractions_and_map_element():
    from spatialdata.transformations import get_transformation
    from spatialdata_io.experimental import from_legacy_anndata

    adata = _painted()
    sdata = from_legacy_anndata(adata.copy())
    kgl.tl.classify_spots(sdata, red_fraction_segmenter(), show_progress=False, precision="fp32")
    kgl.tl.classify_spots(adata, red_fraction_segmenter(), show_progress=False, precision="fp32")
    table = sdata.tables["table"]
    np.testing.assert_allclose(table.obs["glomerulus_fraction"].to_numpy(), adata.obs["glomerulus_fraction"], atol=1e-6)
    # the map as an image element, placed through the tissue image's own transformation
    assert kgl.tl.glomerulus_map(sdata, red_fraction_segmenter(), show_progress=False, precision="fp32") is None
    (name,) = [n for n in sdata.images if n.endswith("_glomerulus")]
    element = sdata.images[name]
    (tissue,) = [n for n in sdata.images if not n.endswith("_glomerulus")]
    assert set(get_transformation(element, get_all=True)) == set(get_transformation(sdata.images[tissue], get_all=True))
    cs = next(iter(get_transformation(element, get_all=True)))
    to_cs = get_transformation(element, cs).to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    tissue_cs = get_transformation(sdata.images[tissue], cs).to_affine_matrix(input_axes=("x", "y"),
                                                                              output_axes=("x", "y"))  # fmt: skip
    m = np.asarray(element.data[0])
    yy, xx = np.nonzero(m > 128)
    centre_map = to_cs @ np.array([xx.mean() + 0.5, yy.mean() + 0.5, 1.0])  # spatialdata: pixel j spans [j, j + 1)
    (cx, cy), _ = GLOM
    scale = adata.uns["spatial"]["lib"]["scalefactors"]["tissue_hires_scalef"]
    centre_tissue = tissue_cs @ np.array([cx / MPP * scale, cy / MPP * scale, 1.0])
    assert np.abs(centre_map[:2] - centre_tissue[:2]).max() < 3.0  # within a map pixel (4 px of the tissue image)
    assert "glomerulus_map" in table.uns


def test_spatialdata_glomeruli_shapes_element():
    from spatialdata.transformations import get_transformation
    from spatialdata_io.experimental import from_legacy_anndata

    adata = _painted()
    sdata = from_legacy_anndata(adata.copy())
    kgl.tl.glomerulus_map(sdata, red_fraction_segmenter(), show_progress=False, precision="fp32")
    gdf = kgl.tl.glomeruli(sdata)
    kgl.tl.glomerulus_map(adata, red_fraction_segmenter(), show_progress=False, precision="fp32")
    ref = kgl.tl.glomeruli(adata)
    assert len(gdf) == len(ref) == 1
    assert gdf.geometry.iloc[0].equals_exact(ref.geometry.iloc[0], 1e-6)  # the same map, read from the element
    (name,) = [n for n in sdata.shapes if n.endswith("_glomerulus_glomeruli")]
    shapes = sdata.shapes[name]
    assert shapes["area_um2"].iloc[0] == pytest.approx(gdf["area_um2"].iloc[0])
    (tissue,) = [n for n in sdata.images if not n.endswith("_glomerulus")]
    assert set(get_transformation(shapes, get_all=True)) == set(get_transformation(sdata.images[tissue], get_all=True))


def test_no_glomeruli_no_shapes_element_and_keys_that_are_not_maps_are_refused():
    from spatialdata_io.experimental import from_legacy_anndata

    adata = make_visium(width=1200, height=1000, mpp=MPP)  # nothing painted: no glomerulus
    sdata = from_legacy_anndata(adata.copy())
    model = red_fraction_segmenter().train()
    kgl.tl.glomerulus_map(sdata, model, show_progress=False, precision="fp32")
    assert model.training  # the caller's model keeps its mode (the map runs on a copy)
    assert len(kgl.tl.glomeruli(sdata)) == 0 and not [n for n in sdata.shapes if n.endswith("_glomeruli")]
    with pytest.raises(ValueError, match="already holds an image 'hires' that is not a kgl map"):
        kgl.tl.glomerulus_map(adata, model, key_added="hires", show_progress=False)
    assert adata.uns["spatial"]["lib"]["images"]["hires"].ndim == 3
