import json

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from shapely.geometry import MultiPolygon, Polygon

from kgl._settings import settings as kgl_settings
from kgl.io import mask_to_polygons, read_coco, read_geojson, read_mask


def _data(name):
    try:
        return kgl_settings.find_data(name)
    except FileNotFoundError as e:
        pytest.skip(str(e))


def _feature(coords, cls=None, gtype="Polygon", **props):
    if cls is not None:
        props["classification"] = cls
    return {"type": "Feature", "geometry": {"type": gtype, "coordinates": coords}, "properties": props}


SQUARE_WITH_HOLE = [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]], [[3, 3], [6, 3], [6, 6], [3, 6], [3, 3]]]
BOWTIE = [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]


# ---------------------------------------------------------------------------------------------
# mask_to_polygons
# ---------------------------------------------------------------------------------------------
def _disk(radius, size=None):
    size = size or int(2 * radius + 6)
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2 + 0.3
    return (yy - c) ** 2 + (xx - c + 0.1) ** 2 <= radius**2


def test_single_pixel_is_its_square_in_pixel_centre_frame():
    m = np.zeros((5, 8), np.uint8)
    m[3, 5] = 1  # row 3, column 5
    (p,) = mask_to_polygons(m)
    assert p.bounds == (4.5, 2.5, 5.5, 3.5)
    assert p.area == 1.0


@pytest.mark.parametrize("radius", [5.64, 50.0])  # ~100-px disk and 100-px-diameter disk
def test_disk_area_matches_pixel_count(radius):
    m = _disk(radius)
    (p,) = mask_to_polygons(m)
    assert abs(p.area - m.sum()) / m.sum() < 0.02
    assert p.area == pytest.approx(m.sum(), abs=1e-9)  # traced along pixel edges: exact
    assert p.is_valid


def test_mask_hole_is_kept():
    m = np.zeros((40, 40), bool)
    m[5:35, 5:35] = True
    m[15:25, 12:20] = False
    (p,) = mask_to_polygons(m)
    assert len(p.interiors) == 1
    assert p.area == m.sum() == 900 - 80
    assert Polygon(p.interiors[0]).bounds == (11.5, 14.5, 19.5, 24.5)
    assert not p.contains(shapely.Point(15, 20))


def test_mask_components_diagonal_min_area_and_empty():
    m = np.zeros((20, 20), np.uint8)
    m[2:6, 2:6] = 255  # 16 px
    m[10, 10] = m[11, 11] = 7  # two pixels touching diagonally
    polys = mask_to_polygons(m)
    assert sorted(p.area for p in polys) == [1, 1, 16]
    assert all(p.is_valid and isinstance(p, Polygon) for p in polys)
    assert [p.area for p in mask_to_polygons(m, min_area=2)] == [16]
    assert mask_to_polygons(np.zeros((4, 4))) == []
    with pytest.raises(ValueError, match="2-D"):
        mask_to_polygons(np.zeros((4, 4, 3)))


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_mask_polygons_are_the_union_of_pixel_squares(m):
    polys = mask_to_polygons(m)
    assert sum(p.area for p in polys) == pytest.approx(m.sum())
    assert all(p.is_valid for p in polys)
    union = shapely.union_all(polys) if polys else Polygon()
    yy, xx = np.mgrid[: m.shape[0], : m.shape[1]]
    inside = shapely.contains_xy(union, xx.ravel(), yy.ravel()).reshape(m.shape)
    np.testing.assert_array_equal(inside, m)


def test_read_mask_colour_and_palette(tmp_path):
    m = np.zeros((30, 30, 3), np.uint8)
    m[5:15, 5:25] = (0, 0, 1)  # dim blue still counts as foreground
    Image.fromarray(m).save(tmp_path / "rgb.png")
    (p,) = read_mask(tmp_path / "rgb.png")
    assert p.area == 200
    pal = Image.fromarray((m[..., 2] * 3).astype(np.uint8), mode="L").convert("P")
    pal.save(tmp_path / "pal.png")
    assert sum(q.area for q in read_mask(tmp_path / "pal.png")) == 200
    with pytest.raises(FileNotFoundError):
        read_mask(tmp_path / "nope.png")


# ---------------------------------------------------------------------------------------------
# GeoJSON
# ---------------------------------------------------------------------------------------------
def test_geojson_qupath_featurecollection(tmp_path):
    fc = {
        "type": "FeatureCollection",
        "features": [
            _feature(SQUARE_WITH_HOLE, {"name": "Glomerulus", "color": [255, 0, 0]}, objectType="annotation"),
            _feature(
                [[[[20, 20], [30, 20], [30, 30], [20, 20]]], [[[40, 40], [44, 40], [44, 44], [40, 44], [40, 40]]]],
                "Glomerulus",
                gtype="MultiPolygon",
            ),
            _feature([[[0, 50], [5, 50], [5, 55], [0, 50]]], name="Tubule"),
            _feature([[[60, 60], [65, 60], [65, 65], [60, 60]]]),
        ],
    }
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(fc))
    df = read_geojson(path)
    assert list(df.columns) == ["geometry", "name", "image"]
    assert list(df["name"]) == ["Glomerulus", "Glomerulus", "Tubule", None]
    assert df["image"].isna().all()
    hole, multi = df["geometry"][0], df["geometry"][1]
    assert len(hole.interiors) == 1 and hole.area == 100 - 9
    assert hole.bounds == (-0.5, -0.5, 9.5, 9.5)  # QuPath corner convention → pixel centres
    assert isinstance(multi, MultiPolygon) and len(multi.geoms) == 2
    centred = read_geojson(fc, pixel_origin="center")
    assert centred["geometry"][0].bounds == (0, 0, 10, 10)
    only = read_geojson(fc, classes=["Glomerulus"])
    assert len(only) == 2 and set(only["name"]) == {"Glomerulus"}


def test_geojson_list_single_feature_and_bare_geometry():
    feats = [_feature(SQUARE_WITH_HOLE, "A"), _feature(SQUARE_WITH_HOLE, "B")]
    assert list(read_geojson(feats)["name"]) == ["A", "B"]
    assert list(read_geojson(feats[0])["name"]) == ["A"]
    bare = read_geojson({"type": "Polygon", "coordinates": SQUARE_WITH_HOLE})
    assert bare["name"][0] is None and bare["geometry"][0].area == 91


def test_geojson_bowtie_repaired_with_warning(kgl_log):
    df = read_geojson([_feature(BOWTIE, "Glomerulus"), _feature(SQUARE_WITH_HOLE, "Glomerulus")])
    assert len(df) == 2 and df["geometry"].map(lambda g: g.is_valid).all()
    bow = df["geometry"][0]
    assert isinstance(bow, MultiPolygon) and bow.area == pytest.approx(50)
    assert "repaired 1 invalid polygon" in kgl_log.text


def test_geojson_drops_points_and_empty_with_warning(kgl_log):
    feats = [
        _feature([1, 2], "x", gtype="Point"),
        _feature([], "x"),
        {"type": "Feature", "geometry": None, "properties": {}},
        _feature(SQUARE_WITH_HOLE, "Glomerulus"),
    ]
    df = read_geojson(feats)
    assert len(df) == 1
    assert "dropped 3 geometry" in kgl_log.text and "Point" in kgl_log.text


def test_geojson_errors(tmp_path):
    # an export without objects (an image without glomeruli) is valid: zero polygons, all negative
    assert len(read_geojson({"type": "FeatureCollection", "features": []})) == 0
    (tmp_path / "empty.geojson").write_text("")
    with pytest.raises(ValueError, match="no features"):
        read_geojson(tmp_path / "empty.geojson")
    with pytest.raises(FileNotFoundError):
        read_geojson(tmp_path / "missing.geojson")
    with pytest.raises(ValueError, match=r"'Glomerulus', 'Tubule'"):
        read_geojson(
            [_feature(SQUARE_WITH_HOLE, "Glomerulus"), _feature(SQUARE_WITH_HOLE, "Tubule")], classes=["glomerulus"]
        )
    with pytest.raises(ValueError, match="no polygon features"):
        read_geojson([_feature([1, 2], gtype="Point")])


# ---------------------------------------------------------------------------------------------
# COCO
# ---------------------------------------------------------------------------------------------
def _coco():
    return {
        "images": [
            {"id": 0, "file_name": "coco_test/JPEGImages/a-PAS.jpg", "height": 50, "width": 60},
            {"id": 1, "file_name": "b-Masson.jpg", "height": 50, "width": 60},
        ],
        "categories": [{"id": 0, "name": "gl"}, {"id": 3, "name": "gs"}],
        "annotations": [
            {"id": 1, "image_id": 0, "category_id": 0, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]], "iscrowd": 0},
            {
                "id": 2,
                "image_id": 1,
                "category_id": 3,
                "iscrowd": 0,
                "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4], [20, 20, 30, 20, 30, 30, 20, 30]],
            },
        ],
    }


def test_coco_polygons_names_images():
    df = read_coco(_coco())
    assert list(df["image"]) == ["a-PAS.jpg", "b-Masson.jpg"]
    assert list(df["name"]) == ["gl", "gs"]
    assert df["geometry"][0].bounds == (-0.5, -0.5, 9.5, 9.5)
    multi = df["geometry"][1]
    assert isinstance(multi, MultiPolygon) and multi.area == 16 + 100
    assert list(read_coco(_coco(), category_ids=[3])["name"]) == ["gs"]
    with pytest.raises(ValueError, match=r"\[7\]"):
        read_coco(_coco(), category_ids=7)


def test_coco_missing_image_and_files(tmp_path):
    coco = _coco()
    coco["annotations"].append({"id": 3, "image_id": 42, "category_id": 0, "segmentation": [[0, 0, 1, 0, 1, 1]]})
    with pytest.raises(ValueError, match="42"):
        read_coco(coco)
    (tmp_path / "a-PAS.jpg").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"b-Masson\.jpg"):
        read_coco(_coco(), image_dir=tmp_path)
    (tmp_path / "b-Masson.jpg").write_bytes(b"")
    assert len(read_coco(_coco(), image_dir=tmp_path)) == 2


def test_coco_rle():
    m = np.zeros((12, 9), np.uint8)
    m[2:7, 3:8] = 1
    m[4, 5] = 0
    counts, value, run = [], 0, 0  # COCO RLE: column-major runs, starting with a run of zeros
    for v in m.T.ravel():
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    coco = _coco()
    coco["annotations"] = [
        {"id": 1, "image_id": 0, "category_id": 0, "iscrowd": 1, "segmentation": {"size": [12, 9], "counts": counts}}
    ]
    (g,) = read_coco(coco)["geometry"]
    assert g.area == m.sum() == 24 and len(g.interiors) == 1
    assert g.bounds == (2.5, 1.5, 7.5, 6.5)
    coco["annotations"][0]["segmentation"]["counts"] = "PPYo0"
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pycocotools"):
            read_coco(coco)


# ---------------------------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_real_multistain_coco():
    root = _data("glomeruli-multistain")
    df = read_coco(root / "annotations.json", image_dir=root / "images")
    assert len(df) == 167
    assert df["image"].nunique() == 105
    assert set(df["name"]) == {"gl", "gn", "gm", "gs"}
    assert all(g.is_valid and g.area > 1000 for g in df["geometry"])
    assert all((root / "images" / n).is_file() for n in df["image"])


@pytest.mark.realdata
def test_real_pas_mask():
    root = _data("glomeruli-pas-tiles")
    f = sorted((root / "masks").glob("*.png"))[0]
    m = np.any(np.asarray(Image.open(f))[..., :3] > 0, axis=-1)
    polys = read_mask(f)
    assert polys and sum(p.area for p in polys) == m.sum()
