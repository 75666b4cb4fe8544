import hashlib
import json
import pickle

import numpy as np
import pandas as pd
import pytest
from shapely.geometry import shape

import kgl
from _kgl_fixtures import classified_visium, make_visium, tiny_cnn, two_library_visium
from kgl._utils import reviewed_labels

MARKED = [2, 11, 25]
RED, GREY = [214, 39, 40], [217, 217, 217]  # uns["glomerulus_colors"] of classify_spots


def _classified(**kw):
    return classified_visium(MARKED, **kw)


@pytest.fixture
def classified():
    return _classified()


def _strict_load(path):
    def no_constant(c):
        raise ValueError(f"not valid JSON: {c}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constant)


def _snapshot(adata):
    return (
        adata.obs.copy(),
        {k: np.array(v, copy=True) for k, v in adata.obsm.items()},
        pickle.dumps(dict(adata.uns)),
    )


def _assert_unchanged(adata, snap):
    obs, obsm, uns = snap
    pd.testing.assert_frame_equal(adata.obs, obs)
    assert list(adata.obsm) == list(obsm)
    for k, v in obsm.items():
        np.testing.assert_array_equal(adata.obsm[k], v)
    assert pickle.dumps(dict(adata.uns)) == uns


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _edit(path, out, changes=None, drop=(), unclassify=(), extra=()):
    """Edit a review file as QuPath would: reclassify (class name + colour), delete features, add outlines."""
    data = json.loads(path.read_text())
    feats = []
    for f in data["features"]:
        props = f["properties"]
        name = props["name"]
        if name in drop:
            continue
        if name in (changes or {}):
            props["classification"] = {"name": changes[name], "color": [1, 2, 3]}
        if name in unclassify:
            props.pop("classification")
        # QuPath does not keep unknown plain properties through import/export
        f["properties"] = {k: v for k, v in props.items() if k in ("objectType", "name", "classification")}
        feats.append(f)
    data["features"] = feats + list(extra)
    out.write_text(json.dumps(data))
    return out


# ---------------------------------------------------------------------------------------------
# write_review
# ---------------------------------------------------------------------------------------------
def test_write_review_features(classified, tmp_path):
    out = kgl.io.write_review(classified, tmp_path / "sub" / "review.geojson")
    assert out == tmp_path / "sub" / "review.geojson"
    data = _strict_load(out)  # no NaN: valid JSON for QuPath
    assert data["type"] == "FeatureCollection" and len(data["features"]) == classified.n_obs
    assert data["kgl"]["library_id"] == "lib" and data["kgl"]["pixel_origin"] == "corner"
    obs = classified.obs
    for f, barcode in zip(data["features"], classified.obs_names, strict=True):
        p = f["properties"]
        label = obs.loc[barcode, "glomerulus"]
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
        assert p["objectType"] == "annotation" and p["name"] == barcode == p["barcode"]
        assert p["classification"] == {"name": label, "color": RED if label == "glomerulus" else GREY}
        assert p["label"] == label and p["library_id"] == "lib"
        assert p["measurements"]["probability"] == pytest.approx(obs.loc[barcode, "glomerulus_proba"], abs=1e-6)
        assert p["probability"] == p["measurements"]["probability"]
        assert p["uncertain"] is bool(obs.loc[barcode, "glomerulus_uncertain"])
    assert not list(out.parent.glob(".*tmp"))


@pytest.mark.parametrize("mpp", [0.5, 0.8])
def test_write_review_geometry(tmp_path, mpp):
    adata = _classified(mpp=mpp)
    xy = adata.obsm["spatial"]
    radius = 27.5 / mpp  # 55-µm spot; µm/px = 65 / spot_diameter_fullres
    assert kgl._utils.mpp_from_scalefactors(adata.uns["spatial"]["lib"]["scalefactors"]) == pytest.approx(mpp)
    for origin, shift in (("corner", 0.5), ("center", 0.0)):
        data = _strict_load(kgl.io.write_review(adata, tmp_path / f"{origin}.geojson", pixel_origin=origin))
        for f, (x, y) in zip(data["features"], xy, strict=True):
            poly = shape(f["geometry"])
            ring = np.asarray(f["geometry"]["coordinates"][0])
            assert poly.is_valid and len(ring) == 65 and (ring[0] == ring[-1]).all()
            assert poly.centroid.x == pytest.approx(x + shift, abs=1e-3)
            assert poly.centroid.y == pytest.approx(y + shift, abs=1e-3)
            dist = np.hypot(ring[:, 0] - x - shift, ring[:, 1] - y - shift)
            np.testing.assert_allclose(dist, radius, atol=2e-3)
            assert poly.area == pytest.approx(np.pi * radius**2, rel=2e-3)
    # kgl's own GeoJSON reader (QuPath's corner origin by default) brings the circles back onto the spots
    polys = kgl.io.read_geojson(tmp_path / "corner.geojson")
    centres = np.array([[g.centroid.x, g.centroid.y] for g in polys["geometry"]])
    np.testing.assert_allclose(centres, xy, atol=1e-3)
    assert list(polys["name"]) == list(adata.obs["glomerulus"].astype(str))


def test_write_review_fullres_frame(tmp_path):
    """With a full-resolution image, coordinates stay in its (= obsm) frame, not the hires image's."""
    adata = make_visium(hires_scalef=0.25)
    kgl.tl.classify_spots(adata, tiny_cnn(), show_progress=False)
    data = _strict_load(kgl.io.write_review(adata, tmp_path / "r.geojson", pixel_origin="center"))
    c = shape(data["features"][5]["geometry"]).centroid
    assert (c.x, c.y) == pytest.approx(tuple(adata.obsm["spatial"][5]), abs=1e-3)
    assert data["kgl"]["image"] is None


@pytest.mark.parametrize("kind", ["mask", "series", "barcodes", "index", "one"])
def test_write_review_spots(classified, tmp_path, kind):
    names = classified.obs_names
    wanted = list(names[[0, 2, 5, 11]])
    mask = names.isin(wanted)
    sel = {
        "mask": mask,
        "series": pd.Series(mask, index=names)[::-1],  # aligned by barcode
        "barcodes": wanted[::-1],  # written in obs order
        "index": pd.Index(wanted),
        "one": wanted[1],
    }[kind]
    data = _strict_load(kgl.io.write_review(classified, tmp_path / "r.geojson", spots=sel))
    assert [f["properties"]["name"] for f in data["features"]] == ([wanted[1]] if kind == "one" else wanted)


def test_write_review_uncertain_only(tmp_path):
    adata = make_visium()
    # a band over all of [0, 1]: every spot is flagged, whatever a random network's probabilities are
    kgl.tl.classify_spots(adata, tiny_cnn(), show_progress=False, uncertain=(0.0, 1.0))
    assert adata.obs["glomerulus_uncertain"].all()
    adata.obs.loc[adata.obs_names[:4], "glomerulus_uncertain"] = False
    data = _strict_load(kgl.io.write_review(adata, tmp_path / "r.geojson", spots=adata.obs["glomerulus_uncertain"]))
    assert len(data["features"]) == adata.n_obs - 4
    assert all(f["properties"]["uncertain"] is True for f in data["features"])


def _two_libraries():
    return two_library_visium(MARKED)


def test_write_review_several_libraries(tmp_path):
    both = _two_libraries()
    with pytest.raises(ValueError, match=r"several libraries \['A', 'B'\].*library_id="):
        kgl.io.write_review(both, tmp_path / "r.geojson")
    with pytest.raises(KeyError, match=r"library_id 'C' not found.*Available: \['A', 'B'\]"):
        kgl.io.write_review(both, tmp_path / "r.geojson", library_id="C")
    with pytest.raises(ValueError, match="belong to another library than 'A'"):
        kgl.io.write_review(both, tmp_path / "r.geojson", library_id="A", spots=["B-s0001"])
    assert not (tmp_path / "r.geojson").exists()
    data = _strict_load(kgl.io.write_review(both, tmp_path / "b.geojson", library_id="B"))
    names = [f["properties"]["name"] for f in data["features"]]
    assert names == [n for n in both.obs_names if n.startswith("B-")]
    assert {f["properties"]["library_id"] for f in data["features"]} == {"B"}
    # a mask over all spots is restricted to the library
    everything = np.ones(both.n_obs, bool)
    data = _strict_load(kgl.io.write_review(both, tmp_path / "a.geojson", library_id="A", spots=everything))
    assert all(f["properties"]["name"].startswith("A-") for f in data["features"])


@pytest.mark.parametrize(
    ("prepare", "kwargs", "exc", "match"),
    [
        (lambda a: a.obs.drop(columns="glomerulus_proba", inplace=True), {}, KeyError, r"no \['glomerulus_proba'\]"),
        (None, {"key": "glom"}, KeyError, r"classify_spots\(adata, key_added='glom'\).*Categorical obs columns"),
        (None, {"spots": ["nope-1", "lib-s0001"]}, KeyError, r"1 of the 2 spots are not barcodes.*'nope-1'"),
        (None, {"spots": np.ones(3, bool)}, ValueError, r"one value per spot \(33\)"),
        (None, {"spots": np.zeros(33, bool)}, ValueError, "No spot to export"),
        (lambda a: a.obsm["spatial"].__setitem__((3, 0), np.nan), {}, ValueError, r"non-finite.*'lib-s0003'"),
        (lambda a: setattr(a, "obs_names", ["x"] * a.n_obs), {}, ValueError, "duplicate barcodes"),
        (None, {"pixel_origin": "middle"}, ValueError, "pixel_origin"),
        (None, {"library_id": "nope"}, KeyError, r"Available: \['lib'\]"),
    ],
)
def test_write_review_bad_inputs_write_nothing(classified, tmp_path, prepare, kwargs, exc, match):
    if prepare is not None:
        prepare(classified)
    out = tmp_path / "review.geojson"
    out.write_text("previous review")
    snap = _snapshot(classified)
    with pytest.raises(exc, match=match):
        kgl.io.write_review(classified, out, **kwargs)
    _assert_unchanged(classified, snap)
    assert out.read_text() == "previous review" and sorted(p.name for p in tmp_path.iterdir()) == ["review.geojson"]


def test_write_review_crash_keeps_previous_file(classified, tmp_path, monkeypatch):
    out = tmp_path / "review.geojson"
    out.write_text("previous review")
    real = type(out).write_text

    def half_then_crash(self, text, *a, **k):
        real(self, text[:100], *a, **k)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(type(out), "write_text", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        kgl.io.write_review(classified, out)
    monkeypatch.undo()
    assert out.read_text() == "previous review" and len(list(tmp_path.iterdir())) == 1


# ---------------------------------------------------------------------------------------------
# read_review
# ---------------------------------------------------------------------------------------------
def test_round_trip(classified, tmp_path, kgl_log):
    names = classified.obs_names
    src = kgl.io.write_review(classified, tmp_path / "review.geojson")
    changes = {names[2]: "other", names[11]: "glomerulus", names[0]: "glomerulus", names[7]: "other"}
    drop = {names[25], names[3], names[4]}
    outline = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}}
    edited = _edit(src, tmp_path / "edited.geojson", changes, drop=drop, unclassify={names[9]}, extra=[outline])
    before = _sha(edited)
    assert kgl.tl.apply_review(classified, edited) is None
    rev = classified.obs["glomerulus_reviewed"]
    assert isinstance(rev.dtype, pd.CategoricalDtype)
    assert rev.cat.categories.tolist() == classified.obs["glomerulus"].cat.categories.tolist()
    expected = classified.obs["glomerulus"].astype(object).copy()
    for n, c in changes.items():
        expected[n] = c
    expected[sorted(drop | {names[9]})] = np.nan
    pd.testing.assert_series_equal(rev.astype(object), expected.rename("glomerulus_reviewed"))
    assert rev.isna().sum() == 4 and rev.notna().sum() == classified.n_obs - 4
    # reviewed labels win downstream; unreviewed spots keep the classifier's call
    final = reviewed_labels(classified)
    assert final[names[2]] == "other" and final[names[0]] == "glomerulus" and final[names[25]] == "glomerulus"
    assert sorted(np.flatnonzero(final == "glomerulus")) == [0, 11, 25]  # marked 2, 11, 25; 2 -> other, 0 -> glom
    review = classified.uns["glomerulus"]["review"]
    assert review == {"path": str(edited), "n_reviewed": classified.n_obs - 4, "n_changed": 2}
    assert "params" in classified.uns["glomerulus"]
    assert _sha(edited) == before
    log = kgl_log.text
    assert "Read 29 reviewed label(s) from edited.geojson" in log and "2 changed" in log
    assert "1 glomerulus → other" in log and "1 other → glomerulus" in log
    assert "1 unclassified feature(s)" in log and "ignored 1 feature(s) without a barcode" in log


def test_read_review_unedited_changes_nothing(classified, tmp_path):
    kgl.tl.apply_review(classified, kgl.io.write_review(classified, tmp_path / "r.geojson"))
    pd.testing.assert_series_equal(
        classified.obs["glomerulus_reviewed"], classified.obs["glomerulus"], check_names=False
    )
    assert classified.uns["glomerulus"]["review"]["n_changed"] == 0


def test_read_review_copy(classified, tmp_path):
    written = kgl.io.write_review(classified, tmp_path / "r.geojson")
    path = _edit(written, tmp_path / "e.geojson", {"lib-s0002": "other"})
    snap = _snapshot(classified)
    out = kgl.tl.apply_review(classified, path, copy=True)
    _assert_unchanged(classified, snap)
    assert out.obs["glomerulus_reviewed"]["lib-s0002"] == "other"
    assert out.uns["glomerulus"]["review"]["n_changed"] == 1 and "review" not in classified.uns["glomerulus"]


def test_read_review_qupath_variants(classified, tmp_path):
    """QuPath's plain list of Features, string classifications, renamed objects with a barcode property."""
    data = _strict_load(kgl.io.write_review(classified, tmp_path / "r.geojson", spots=["lib-s0002", "lib-s0005"]))
    f0, f1 = data["features"]
    f0["properties"]["classification"] = "other"
    f1["properties"]["name"] = "looks like a glomerulus"  # renamed in QuPath; the barcode property remains
    f1["properties"]["classification"]["name"] = "glomerulus"
    path = tmp_path / "list.geojson"
    path.write_text(json.dumps([f0, f1]))
    kgl.tl.apply_review(classified, path)
    rev = classified.obs["glomerulus_reviewed"]
    assert rev["lib-s0002"] == "other" and rev["lib-s0005"] == "glomerulus" and rev.notna().sum() == 2


def test_read_review_update_across_libraries(tmp_path):
    both = _two_libraries()
    wa = kgl.io.write_review(both, tmp_path / "a.geojson", library_id="A")
    kgl.tl.apply_review(both, _edit(wa, tmp_path / "ae", {"A-s0002": "other"}))
    wb = kgl.io.write_review(both, tmp_path / "b.geojson", library_id="B")
    eb = _edit(wb, tmp_path / "be", {"B-s0000": "glomerulus"})
    kgl.tl.apply_review(both, eb, update=True)
    rev = both.obs["glomerulus_reviewed"]
    assert rev.notna().all() and rev["A-s0002"] == "other" and rev["B-s0000"] == "glomerulus"
    assert both.uns["glomerulus"]["review"]["n_changed"] == 2
    kgl.tl.apply_review(both, eb)  # without update: this file's labels only
    rev = both.obs["glomerulus_reviewed"]
    assert rev.notna().sum() == (both.obs["library_id"] == "B").sum() and pd.isna(rev["A-s0002"])


def _bad(name):
    """Review files that must be refused: (file contents or edit function, exception, message regex)."""

    def edited(changes=None, drop=(), extra=()):
        def make(adata, tmp):
            return _edit(kgl.io.write_review(adata, tmp / "w.geojson"), tmp / "r.geojson", changes, drop, (), extra)

        return make

    def raw(text):
        def make(adata, tmp):
            (tmp / "r.geojson").write_text(text)
            return tmp / "r.geojson"

        return make

    def feature(name, cls):
        return {"type": "Feature", "geometry": None, "properties": {"name": name, "classification": {"name": cls}}}

    unknown, dup = feature("AAAC-9", "x"), feature("lib-s0002", "other")
    return {
        "unknown-class": (
            edited({"lib-s0002": "Glomerulus", "lib-s0003": "tubule"}),
            ValueError,
            r"class name\(s\) \['Glomerulus', 'tubule'\] .*allowed: \['other', 'glomerulus'\]",
        ),
        "unknown-barcode": (edited(extra=[unknown]), KeyError, r"1 feature\(s\) whose barcode is not in .*'AAAC-9'"),
        "conflicting-duplicate": (edited(extra=[dup]), ValueError, r"differently.*'lib-s0002'"),
        "not-json": (raw('{"type": "FeatureCollection", "features": [}'), ValueError, "is not valid JSON"),
        "empty-file": (raw(""), ValueError, "is not valid JSON"),
        "a-geometry": (raw('{"type": "Polygon", "coordinates": []}'), ValueError, r"not a GeoJSON FeatureCollection"),
        "a-number": (raw("42"), ValueError, r"not a GeoJSON FeatureCollection \(got 'int'\)"),
        "features-not-features": (
            raw('{"type": "FeatureCollection", "features": [1]}'),
            ValueError,
            r"1 entries of 'features' are not GeoJSON Features",
        ),
    }[name]


BAD = [
    "unknown-class",
    "unknown-barcode",
    "conflicting-duplicate",
    "not-json",
    "empty-file",
    "a-geometry",
    "a-number",
    "features-not-features",
]


@pytest.mark.parametrize("name", BAD)
def test_read_review_bad_files_change_nothing(classified, tmp_path, name):
    make, exc, match = _bad(name)
    path = make(classified, tmp_path)
    kgl.tl.apply_review(classified, kgl.io.write_review(classified, tmp_path / "old.geojson"))  # an earlier review
    snap, sha = _snapshot(classified), _sha(path)
    with pytest.raises(exc, match=match):
        kgl.tl.apply_review(classified, path)
    _assert_unchanged(classified, snap)
    assert _sha(path) == sha


def test_read_review_missing_inputs(classified, tmp_path):
    snap = _snapshot(classified)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        kgl.tl.apply_review(classified, tmp_path / "nothing.geojson")
    path = kgl.io.write_review(classified, tmp_path / "r.geojson")
    with pytest.raises(KeyError, match=r"no \['g'\].*classify_spots\(adata, key_added='g'\)"):
        kgl.tl.apply_review(classified, path, key="g")
    _assert_unchanged(classified, snap)


def test_read_review_only_reads(classified, tmp_path):
    """The reader returns the file's features and touches no AnnData; apply_review accepts its table."""
    written = kgl.io.write_review(classified, tmp_path / "r.geojson", spots=["lib-s0002", "lib-s0005"])
    path = _edit(written, tmp_path / "e.geojson", {"lib-s0002": "other"}, unclassify={"lib-s0005"})
    snap = _snapshot(classified)
    table = kgl.io.read_review(path)
    _assert_unchanged(classified, snap)
    assert list(table.columns) == list(kgl.io.REVIEW_COLUMNS) and table.attrs["path"] == str(path)
    rows = table.set_index("name")
    assert rows.loc["lib-s0002", "classification"] == "other"
    assert rows.loc["lib-s0002", "barcode"] is None  # QuPath drops plain properties
    assert rows.loc["lib-s0005", "classification"] is None
    kgl.tl.apply_review(classified, table)  # the table, as the path would be
    rev = classified.obs["glomerulus_reviewed"]
    assert rev["lib-s0002"] == "other" and rev.notna().sum() == 1
    assert classified.uns["glomerulus"]["review"]["path"] == str(path)
    with pytest.raises(TypeError, match=r"kgl\.tl\.apply_review\(adata, path\)"):
        kgl.io.read_review(classified)  # an AnnData, as the old read_review(adata, path) took
    with pytest.raises(KeyError, match=r"lacks column\(s\) \['classification'\]"):
        kgl.tl.apply_review(classified, table.drop(columns="classification"))
