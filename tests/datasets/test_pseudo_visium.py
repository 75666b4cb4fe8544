import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import shapely
import tifffile
from scipy.spatial import cKDTree

from kgl._geometry import spot_coverage
from kgl._settings import settings
from kgl._utils import SPOT_DIAMETER_FULLRES_UM, mpp_from_scalefactors
from kgl.datasets import image_facts, pas_tiles_visium, pseudo_visium
from kgl.io import SlideImage, read_visium

RED, GREEN, BLUE = (200, 30, 30), (30, 200, 30), (30, 30, 200)


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "cachedir", tmp_path / "cache")


def _data(name):
    try:
        return settings.find_data(name)
    except FileNotFoundError as e:
        pytest.skip(str(e))


def _tile(h, w, color):
    return np.full((h, w, 3), color, np.uint8)


def _half_plane_fraction(d, r):
    """Fraction of a disk of radius r whose centre is at signed distance d right of the line x = L lying left of it."""
    d = np.clip(d, -r, r)
    return (r**2 * np.arccos(d / r) - d * np.sqrt(r**2 - d**2)) / (math.pi * r**2)


# ---------------------------------------------------------------------------------------------
# lattice
# ---------------------------------------------------------------------------------------------
def test_lattice_is_visium_hexagonal_100um():
    mpp = 0.8
    a = pseudo_visium([_tile(1500, 1300, RED)], [None], mpp=mpp, seed=3)
    xy_um = (a.obsm["spatial"] + 0.5) * mpp  # lattice origin: the canvas' top-left corner
    assert a.n_obs > 100
    d, _ = cKDTree(xy_um).query(xy_um, k=2)
    np.testing.assert_allclose(d[:, 1], 100.0, atol=1e-6)
    row, col = a.obs["array_row"].to_numpy(), a.obs["array_col"].to_numpy()
    assert ((row + col) % 2 == 0).all()
    assert row.dtype == np.int64 and col.dtype == np.int64
    ox, oy = a.uns["pseudo_visium"]["params"]["offset_um"]
    np.testing.assert_allclose(xy_um[:, 0], col * 50 + ox, atol=1e-9)
    np.testing.assert_allclose(xy_um[:, 1], row * 50 * math.sqrt(3) + oy, atol=1e-9)
    assert 0 <= ox < 100 and 0 <= oy < 50 * math.sqrt(3)
    assert a.obs_names.is_unique and a.obs_names[0].startswith("r")
    assert (a.obs["in_tissue"] == 1).all()


def test_scalefactors_follow_space_ranger():
    mpp = 0.5
    a = pseudo_visium([_tile(800, 900, RED)], [None], mpp=mpp, hires_max_px=300, lowres_max_px=90)
    sf = a.uns["spatial"]["pseudo_visium"]["scalefactors"]
    # Space Ranger's spot_diameter_fullres spans a theoretical 65-µm spot (see test_real_visium_pitch)
    assert sf["spot_diameter_fullres"] * mpp == pytest.approx(SPOT_DIAMETER_FULLRES_UM)
    assert mpp_from_scalefactors(sf) == pytest.approx(mpp)
    assert sf["fiducial_diameter_fullres"] / sf["spot_diameter_fullres"] == pytest.approx(144.5097 / 89.4584, rel=1e-5)
    imgs = a.uns["spatial"]["pseudo_visium"]["images"]
    assert imgs["hires"].dtype == np.uint8 and max(imgs["hires"].shape[:2]) == 300
    assert max(imgs["lowres"].shape[:2]) == 90
    assert sf["tissue_hires_scalef"] == pytest.approx(300 / 900)
    assert imgs["hires"].shape[:2] == (round(800 * 300 / 900), 300)


@pytest.mark.realdata
def test_real_visium_pitch():
    """The real capture area: 100 µm between neighbours iff spot_diameter_fullres ↔ 65 µm (not 55)."""
    root = _data("visium-mouse-kidney")
    pos = pd.read_csv(root / "spatial" / "tissue_positions.csv")
    sf = pd.read_json(root / "spatial" / "scalefactors_json.json", typ="series")
    assert ((pos["array_row"] + pos["array_col"]) % 2 == 0).all()
    px = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
    d_px = np.median(cKDTree(px).query(px, k=2)[0][:, 1])
    assert d_px * 65 / sf["spot_diameter_fullres"] == pytest.approx(100, abs=1.5)
    assert d_px * 55 / sf["spot_diameter_fullres"] == pytest.approx(84.8, abs=1.5)  # the 55-µm reading is wrong
    um = px * mpp_from_scalefactors(sf)
    design = np.c_[pos["array_col"], pos["array_row"], np.ones(len(pos))]
    coef, *_ = np.linalg.lstsq(design, um, rcond=None)
    assert coef[0, 0] == pytest.approx(50, rel=0.01)  # x per array column
    assert coef[1, 1] == pytest.approx(50 * math.sqrt(3), rel=0.01)  # y per array row


def test_seed_determinism():
    imgs, anns = [_tile(600, 700, RED)], [[shapely.box(100, 100, 400, 300)]]
    a = pseudo_visium(imgs, anns, mpp=1.0, seed=7)
    b = pseudo_visium(imgs, anns, mpp=1.0, seed=7)
    c = pseudo_visium(imgs, anns, mpp=1.0, seed=8)
    pd.testing.assert_frame_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
    assert a.uns["pseudo_visium"]["params"] == b.uns["pseudo_visium"]["params"]
    assert a.uns["pseudo_visium"]["params"]["offset_um"] != c.uns["pseudo_visium"]["params"]["offset_um"]
    assert a.obsm["spatial"].shape != c.obsm["spatial"].shape or not np.allclose(a.obsm["spatial"], c.obsm["spatial"])


# ---------------------------------------------------------------------------------------------
# coverage
# ---------------------------------------------------------------------------------------------
def test_spot_coverage_inside_outside_half():
    xy = np.array([[0.0, 0.0], [500.0, 500.0], [1000.0, 0.0]])
    polys = [shapely.box(-200, -200, 200, 200), shapely.box(1000, -300, 1300, 300)]
    cov = spot_coverage(xy, polys, 27.5)
    assert cov[0] == pytest.approx(1.0, abs=1e-12)
    assert cov[1] == 0.0
    assert cov[2] == pytest.approx(0.5, abs=0.01)
    assert spot_coverage(xy, [], 27.5).tolist() == [0, 0, 0]


@pytest.mark.parametrize("kind", ["list", "frame", "mask"])
def test_coverage_matches_analytic_half_plane(kind):
    """Glomerulus = left half of the image (columns 0..299): coverage is a circular segment of a 55-µm disk."""
    h, w, mpp = 500, 600, 1.0
    mask = np.zeros((h, w), np.uint8)
    mask[:, :300] = 1
    poly = shapely.box(-0.5, -0.5, 299.5, h - 0.5)
    ann = {"list": [poly], "frame": pd.DataFrame({"geometry": [poly]}), "mask": mask}[kind]
    a = pseudo_visium([_tile(h, w, RED)], [ann], mpp=mpp, seed=1)
    cov = a.obs["glomerulus_coverage"].to_numpy()
    x = a.obsm["spatial"][:, 0]
    expected = _half_plane_fraction(x - 299.5, 27.5 / mpp)
    np.testing.assert_allclose(cov, expected, atol=0.004)  # a half-pixel shift would be off by ~0.01
    assert ((cov >= 0) & (cov <= 1)).all()
    assert (cov == 1).any() and (cov == 0).any() and ((cov > 0.1) & (cov < 0.9)).any()
    (wkt,) = a.uns["pseudo_visium"]["glomeruli_wkt"]
    assert shapely.from_wkt(wkt).bounds == pytest.approx((-0.5, -0.5, 299.5, h - 0.5))


def test_polygons_are_clipped_to_their_tile():
    a = pseudo_visium(
        [_tile(300, 300, RED), _tile(300, 300, GREEN)],
        [[shapely.box(-50, -50, 1000, 1000)], None],
        mpp=1.0,
        layout=(1, 2),
    )
    (wkt,) = a.uns["pseudo_visium"]["glomeruli_wkt"]
    assert shapely.from_wkt(wkt).bounds == pytest.approx((-0.5, -0.5, 299.5, 299.5))
    cov = a.obs["glomerulus_coverage"].to_numpy()
    on1 = (a.obs["source_image"] == "1").to_numpy()
    far = a.obsm["spatial"][:, 0] - 299.5 > 27.5  # disk entirely on the right tile
    assert on1.any() and (cov[on1 & far] == 0).all()
    assert (cov[on1 & ~far] > 0).all()  # a disk across the seam does overlap the left tile's glomerulus
    assert (cov[~on1] > 0.4).all()


def test_resampling_to_target_mpp():
    h = 100
    mask = np.zeros((h, h), np.uint8)
    mask[:, :50] = 1
    a = pseudo_visium(
        [_tile(h, h, RED), _tile(200, 200, GREEN)], [mask, None], mpp=[1.0, 0.5], target_mpp=0.5, layout=(1, 2)
    )
    tiles = a.uns["pseudo_visium"]["tiles"]
    assert list(tiles["width"]) == [200, 200] and list(tiles["x0"]) == [0, 200]
    (wkt,) = a.uns["pseudo_visium"]["glomeruli_wkt"]
    assert shapely.from_wkt(wkt).bounds == pytest.approx((-0.5, -0.5, 99.5, 199.5))
    on0 = (a.obs["source_image"] == "0").to_numpy()
    x = a.obsm["spatial"][on0, 0]
    np.testing.assert_allclose(
        a.obs["glomerulus_coverage"].to_numpy()[on0], _half_plane_fraction(x - 99.5, 55.0), atol=0.004
    )
    assert a.uns["spatial"]["pseudo_visium"]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(130)
    b = pseudo_visium([_tile(h, h, RED), _tile(200, 200, GREEN)], [mask, None], mpp=[1.0, 0.5], layout=(1, 2))
    assert list(b.uns["pseudo_visium"]["tiles"]["width"]) == [100, 100]  # default: the first image's mpp


# ---------------------------------------------------------------------------------------------
# mosaic and files
# ---------------------------------------------------------------------------------------------
def test_tiles_placed_where_expected(tmp_path):
    mpp = 2.0
    tiles = [_tile(300, 400, RED), _tile(200, 200, GREEN), _tile(250, 300, BLUE)]
    out = tmp_path / "mosaic.tif"
    a = pseudo_visium(tiles, [None] * 3, mpp=mpp, layout=(2, 2), gap_um=10, names=["a", "b", "c"], fullres_path=out)
    assert a.uns["spatial"]["pseudo_visium"]["metadata"]["source_image_path"] == str(out.resolve())
    canvas = tifffile.imread(out)
    gap = 5  # 10 µm at 2 µm/px
    assert canvas.shape == (300 + gap + 250, 400 + gap + 200, 3)
    x0, y0 = list(a.uns["pseudo_visium"]["tiles"]["x0"]), list(a.uns["pseudo_visium"]["tiles"]["y0"])
    assert x0 == [0, 400 + gap, 0] and y0 == [0, 0, 300 + gap]
    assert tuple(canvas[0, 0]) == RED and tuple(canvas[299, 399]) == RED
    assert tuple(canvas[0, 405]) == GREEN and tuple(canvas[199, 604]) == GREEN
    assert tuple(canvas[305, 0]) == BLUE and tuple(canvas[554, 299]) == BLUE
    assert tuple(canvas[302, 10]) == (255, 255, 255)  # gap
    assert tuple(canvas[400, 500]) == (255, 255, 255)  # empty cell
    # every spot sits on its own tile
    colour = {"a": RED, "b": GREEN, "c": BLUE}
    ij = np.rint(a.obsm["spatial"][:, ::-1]).astype(int)
    under = [tuple(canvas[i, j]) for i, j in ij]
    assert under == [colour[s] for s in a.obs["source_image"]]
    assert set(a.obs["source_image"]) == {"a", "b", "c"}
    img = SlideImage.open(out)
    assert img.mpp == pytest.approx(mpp) and img.shape == canvas.shape[:2]


@pytest.mark.parametrize("img_key", ["fullres", "hires"])
def test_kgl_im_reads_spots_on_their_tile(img_key):
    """kgl.im cuts each spot's patch from its own tile, in the full-res TIFF and in the hires image."""
    import kgl

    tiles = [_tile(300, 400, RED), _tile(200, 200, GREEN), _tile(250, 300, BLUE)]
    a = pseudo_visium(tiles, [None] * 3, mpp=2.0, layout=(2, 2), gap_um=10, hires_max_px=200)
    idx, patches, _ = zip(*kgl.im.spot_patches(a, patch_um=20, size=8, img_key=img_key), strict=True)
    idx, patches = np.concatenate(idx), np.concatenate(patches)
    centre = patches[:, 3:5, 3:5].reshape(len(patches), -1, 3).mean(axis=1).argmax(axis=1)
    np.testing.assert_array_equal(centre, a.obs["source_image"].cat.codes.to_numpy()[idx])


def test_fullres_cache_reused(tmp_path):
    imgs = [_tile(300, 300, RED)]
    a = pseudo_visium(imgs, [None], mpp=1.0, library_id="lib")
    path = a.uns["spatial"]["lib"]["metadata"]["source_image_path"]
    assert path.startswith(str(settings.cachedir / "pseudo_visium" / "lib-")) and path.endswith(".tif")
    mtime = (stat := __import__("os").stat(path)).st_mtime_ns
    assert stat.st_size > 0
    b = pseudo_visium(imgs, [None], mpp=1.0, library_id="lib", seed=5)  # same pixels → same file, untouched
    assert b.uns["spatial"]["lib"]["metadata"]["source_image_path"] == path
    assert __import__("os").stat(path).st_mtime_ns == mtime
    c = pseudo_visium([_tile(300, 300, GREEN)], [None], mpp=1.0, library_id="lib")
    assert c.uns["spatial"]["lib"]["metadata"]["source_image_path"] != path


def test_image_paths_and_h5ad_roundtrip(tmp_path):
    from PIL import Image

    Image.fromarray(_tile(400, 500, RED)).save(tmp_path / "t1.png")
    rgba = np.dstack([_tile(300, 300, GREEN), np.full((300, 300), 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "t2.png")
    a = pseudo_visium([tmp_path / "t1.png", str(tmp_path / "t2.png")], [[shapely.box(0, 0, 200, 200)], None], mpp=1.0)
    assert list(a.obs["source_image"].cat.categories) == ["t1", "t2"]
    a.write_h5ad(tmp_path / "pv.h5ad")
    b = ad.read_h5ad(tmp_path / "pv.h5ad")
    pd.testing.assert_frame_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.obsm["spatial"], b.obsm["spatial"])
    assert b.uns["spatial"]["pseudo_visium"]["images"]["hires"].dtype == np.uint8
    assert shapely.from_wkt(b.uns["pseudo_visium"]["glomeruli_wkt"][0]).area == pytest.approx(200 * 200)
    assert b.uns["pseudo_visium"]["params"]["seed"] == 0


def test_input_errors():
    t = _tile(200, 200, RED)
    with pytest.raises(ValueError, match="annotation"):
        pseudo_visium([t, t], [None], mpp=1.0)
    with pytest.raises(ValueError, match="shape"):
        pseudo_visium([t], [np.zeros((100, 100))], mpp=1.0)
    with pytest.raises(ValueError, match="layout"):
        pseudo_visium([t, t, t], [None] * 3, mpp=1.0, layout=(1, 2))
    with pytest.raises(ValueError, match="mpp"):
        pseudo_visium([t, t], [None] * 2, mpp=[1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="shapely"):
        pseudo_visium([t], [[(0, 0, 1, 1)]], mpp=1.0)


def test_pas_tiles_missing_data_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "datadir", tmp_path)
    with pytest.raises(FileNotFoundError, match="Looked in"):
        pas_tiles_visium()


# ---------------------------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pas(tmp_path_factory):
    try:
        settings.find_data("glomeruli-pas-tiles")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(settings, "cachedir", tmp_path_factory.mktemp("pas_cache"))
        yield pas_tiles_visium(seed=0)


@pytest.mark.realdata
def test_pas_tiles_visium(pas, tmp_path):
    expected = 24 * 512 * 512 / (100 * 100 * math.sqrt(3) / 2)  # ≈ 726 spots on 24 tiles of 512 × 512 µm
    assert abs(pas.n_obs - expected) / expected < 0.15
    cov = pas.obs["glomerulus_coverage"]
    assert (cov >= 0.5).sum() >= 20
    assert (cov == 0).sum() >= 0.6 * pas.n_obs
    assert pas.obs["source_image"].nunique() == 24
    assert "pas_tiles" in pas.uns["spatial"]
    assert max(pas.uns["spatial"]["pas_tiles"]["images"]["hires"].shape[:2]) <= 2000
    assert len(pas.uns["pseudo_visium"]["glomeruli_wkt"]) >= 24
    pas.write_h5ad(tmp_path / "pas.h5ad")


@pytest.mark.realdata
def test_layout_matches_read_visium(pas):
    real = read_visium(_data("visium-mouse-kidney"))
    (lib,) = real.uns["spatial"]
    assert set(real.obs.columns) <= set(pas.obs.columns)
    for c in ("in_tissue", "array_row", "array_col"):
        assert pas.obs[c].dtype == real.obs[c].dtype
    assert pas.obsm["spatial"].dtype == real.obsm["spatial"].dtype and pas.obsm["spatial"].shape[1] == 2
    assert set(pas.uns["spatial"]["pas_tiles"]) == set(real.uns["spatial"][lib])
    assert set(pas.uns["spatial"]["pas_tiles"]["scalefactors"]) == set(real.uns["spatial"][lib]["scalefactors"])
    assert pas.n_vars == real.n_vars == 0


def test_annotations_as_file_paths_match_the_same_polygons(tmp_path):
    """What a QuPath user has: GeoJSON / COCO / mask files, read by suffix (and COCO rows by image file name)."""
    import json

    from PIL import Image

    img = _tile(200, 300, (230, 200, 220))
    img_path = tmp_path / "a.png"
    Image.fromarray(img).save(img_path)
    box = [[40, 40], [160, 40], [160, 150], [40, 150], [40, 40]]  # corner-origin pixels, as QuPath writes them
    gj = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [box]},
                "properties": {"classification": {"name": "glomerulus"}},
            }
        ],
    }
    (tmp_path / "a.geojson").write_text(json.dumps(gj))
    coco = {
        "images": [{"id": 1, "file_name": "x/a.png", "width": 300, "height": 200}],
        "categories": [{"id": 0, "name": "gl"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 0, "segmentation": [[c for xy in box[:-1] for c in xy]]}
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    mask = np.zeros((200, 300), np.uint8)
    mask[40:150, 40:160] = 255
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    runs = {
        name: pseudo_visium([img_path], [ann], mpp=1.0, seed=3)
        for name, ann in {
            "geojson": tmp_path / "a.geojson",
            "coco": str(tmp_path / "coco.json"),
            "mask": tmp_path / "a_mask.png",
        }.items()
    }
    cov = {k: a.obs["glomerulus_coverage"].to_numpy() for k, a in runs.items()}
    assert cov["geojson"].max() > 0.5 and (cov["geojson"] > 0).sum() >= 2
    np.testing.assert_allclose(cov["coco"], cov["geojson"], atol=1e-9)
    np.testing.assert_allclose(cov["mask"], cov["geojson"], atol=0.02)  # a raster outline of the same box
    with pytest.raises(FileNotFoundError, match="Annotation 0"):
        pseudo_visium([img_path], [tmp_path / "missing.geojson"], mpp=1.0)


@pytest.mark.realdata
def test_he_biopsy_geojson_paths():
    """The H&E biopsy screenshots with their QuPath GeoJSON files, given as paths."""
    root = _data("glomeruli-he-biopsy")
    meta = image_facts("glomeruli-he-biopsy")
    names = sorted(meta)[:2]
    adata = pseudo_visium(
        [root / "images" / f"{n}.png" for n in names],
        [root / "annotations" / f"{n}.geojson" for n in names],
        mpp=[meta[n]["mpp"] for n in names],
    )
    assert (adata.obs["glomerulus_coverage"] >= 0.5).sum() >= 3


def test_an_empty_qupath_export_is_an_all_negative_image(tmp_path):
    # QuPath's export of an image without glomeruli: zero polygons, every spot's coverage 0
    import json

    path = tmp_path / "none.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    adata = pseudo_visium([np.full((400, 500, 3), 200, np.uint8)], [path], mpp=0.5, fullres_path=tmp_path / "e.tif")
    assert adata.n_obs > 0 and (adata.obs["glomerulus_coverage"] == 0).all()
    assert len(adata.uns["pseudo_visium"]["glomeruli_wkt"]) == 0
