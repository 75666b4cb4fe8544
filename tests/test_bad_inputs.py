"""The bad-input matrix of issue 7 (documented as the table in docs/reliability.md).

Every case builds a messy input, runs the public entry point a user would call, and checks:

- the exception type and a regex on its message, which must name the problem and the fix
  (or, for inputs that must *work*, that they do, and any warning that must be logged);
- that the AnnData objects and files it watches are unchanged before/after (``snapshot``):
  obs (columns, index, values), obsm (keys, values), uns (keys, nested values, arrays) and X;
  for folders, every file's sha256 (so a half-written output or a leftover temp file shows).

Some cases repeat (briefly) tests elsewhere in tests/: this is the table.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import shapely
import torch
from scipy import sparse

import kgl
from _kgl_fixtures import center_red_model, make_visium, plant_markers
from kgl._settings import settings

MARKED = [4, 9, 20]  # spots with a red "glomerulus" under them (center_red_model calls exactly these)


# ---------------------------------------------------------------------------------------------
# snapshots: state before == state after
# ---------------------------------------------------------------------------------------------
def _freeze(v: Any) -> Any:
    """A comparable, deep copy of an ``uns`` value (arrays by dtype, shape and content hash)."""
    if isinstance(v, dict):
        return {"__dict__": sorted((str(k), _freeze(x)) for k, x in v.items())}
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, *[_freeze(x) for x in v])
    if isinstance(v, np.ndarray):
        data = v.tobytes() if v.dtype != object else repr(v.tolist()).encode()
        return ("ndarray", v.dtype.str, v.shape, hashlib.sha256(data).hexdigest())
    return (type(v).__name__, repr(v))  # repr: nan == nan


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(obj: Any) -> Any:
    """State of an AnnData, a file or a folder tree (absent paths snapshot as empty trees)."""
    if isinstance(obj, ad.AnnData):
        return {
            "obs": obj.obs.copy(),
            "obsm": {k: np.array(v, copy=True) for k, v in obj.obsm.items()},
            "uns": _freeze(dict(obj.uns)),
            "X": None if obj.X is None else (obj.X.toarray() if sparse.issparse(obj.X) else np.array(obj.X, copy=True)),
        }
    path = Path(obj)
    if path.is_file():
        return _sha(path)
    if path.is_dir():
        return {p.relative_to(path).as_posix(): _sha(p) for p in sorted(path.rglob("*")) if p.is_file()}
    return {}


def assert_same(before: Any, after: Any, what: str) -> None:
    if isinstance(before, dict) and "obs" in before:
        assert list(after["obs"].columns) == list(before["obs"].columns), f"{what}: obs columns changed"
        pd.testing.assert_frame_equal(after["obs"], before["obs"], obj=f"{what}.obs")
        assert list(after["obsm"]) == list(before["obsm"]), f"{what}: obsm keys changed"
        for k, v in before["obsm"].items():
            np.testing.assert_array_equal(after["obsm"][k], v, err_msg=f"{what}.obsm[{k!r}] changed")
        assert after["uns"] == before["uns"], f"{what}: uns changed"
        if before["X"] is not None:
            np.testing.assert_array_equal(after["X"], before["X"])
        return
    assert after == before, f"{what} changed on disk: before {before}, after {after}"


# ---------------------------------------------------------------------------------------------
# the matrix
# ---------------------------------------------------------------------------------------------
@dataclass
class Ctx:
    """What a case's setup gets: a temp folder, monkeypatch, and teardown callbacks."""

    tmp: Path
    mp: pytest.MonkeyPatch
    teardown: list[Callable[[], Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Ctx], tuple[Callable[[], Any], list[Any]]]  # -> (action, watched AnnData/paths)
    raises: type[BaseException] | None  # None: the action must work
    match: str | None = None  # regex on the exception message
    log: str | None = None  # regex the kgl log must contain (warnings)
    marks: tuple[Any, ...] = ()


CASES: list[Case] = []


def case(id: str, raises: type[BaseException] | None, match: str | None = None, **kw: Any) -> Callable:
    def deco(setup: Callable) -> Callable:
        CASES.append(Case(id, setup, raises, match, **kw))
        return setup

    return deco


def _visium(**kw: Any) -> ad.AnnData:
    adata = make_visium(**kw)
    plant_markers(adata, MARKED, radius_um=12)
    return adata


def _lib(adata: ad.AnnData) -> dict:
    return adata.uns["spatial"]["lib"]


def _classify(adata: Any, model: Any = None, **kw: Any) -> Callable[[], Any]:
    return lambda: kgl.tl.classify_spots(adata, model or center_red_model(), show_progress=False, **kw)


def _classifies(adata: ad.AnnData, marked: list[int] = MARKED, **kw: Any) -> Callable[[], Any]:
    """The input must *work*: the marked spots, and only they, are called (on a copy: the input stays as is)."""

    def run() -> Any:
        out = kgl.tl.classify_spots(adata, center_red_model(), copy=True, show_progress=False, **kw)
        assert np.flatnonzero(out.obs["glomerulus"] == "glomerulus").tolist() == marked
        return out

    return run


def _rewrite(adata: ad.AnnData, path: Path) -> None:
    """Move the hires image into a full-resolution file the AnnData points to."""
    _lib(adata)["images"].pop("hires")
    _lib(adata)["metadata"]["source_image_path"] = str(path)


def _tiff(adata: ad.AnnData, path: Path, **kw: Any) -> Path:
    return kgl.io.write_tiff_pyramid(path, _lib(adata)["images"]["hires"], tile=128, **kw)


# --- Visium metadata --------------------------------------------------------------------------
@case("uns-spatial-missing", KeyError, r"uns\['spatial'\] not found.*kgl\.io\.read_visium")
def _(c):
    a = _visium()
    del a.uns["spatial"]
    return _classify(a), [a]


@case("uns-spatial-empty", KeyError, r"uns\['spatial'\] is empty")
def _(c):
    a = _visium()
    a.uns["spatial"] = {}
    return _classify(a), [a]


@case("library-id-unknown", KeyError, r"library_id 'nope' not found.*Available: \['lib'\]")
def _(c):
    a = _visium()
    return _classify(a, library_id="nope"), [a]


@case("several-libraries-no-library-column", KeyError, r"2 libraries \['lib', 'lib2'\].*pass library_key=")
def _(c):
    a = _visium()
    a.uns["spatial"]["lib2"] = a.uns["spatial"]["lib"]
    return _classify(a), [a]


@case("scalefactors-missing", KeyError, r"has no 'scalefactors'.*spot_diameter_fullres")
def _(c):
    a = _visium()
    del _lib(a)["scalefactors"]
    return _classify(a), [a]


@case("spot-diameter-missing", ValueError, r"no 'spot_diameter_fullres'.*scalefactors_json\.json")
def _(c):
    a = _visium()
    del _lib(a)["scalefactors"]["spot_diameter_fullres"]
    return _classify(a), [a]


for _bad in (0.0, -90.0, float("nan"), "abc"):

    @case(f"spot-diameter-{_bad}", ValueError, r"spot_diameter_fullres'\] of library 'lib' is .*positive number")
    def _(c, _bad=_bad):
        a = _visium()
        _lib(a)["scalefactors"]["spot_diameter_fullres"] = _bad
        return _classify(a), [a]


@case("hires-scalef-missing", KeyError, r"no valid 'tissue_hires_scalef'")
def _(c):
    a = _visium()
    del _lib(a)["scalefactors"]["tissue_hires_scalef"]
    return _classify(a), [a]


@case("scalefactors-put-all-spots-off-image", ValueError, r"All 33 spots .* outside .*scalefactors or coordinates")
def _(c):
    a = _visium()
    _lib(a)["scalefactors"]["tissue_hires_scalef"] = 50.0  # another image's scale factor
    return _classify(a), [a]


@case(
    "scalefactors-put-most-spots-off-image",
    None,
    log=r"\d+ of 33 spots of library 'lib' lie outside",
)
def _(c):
    a = _visium()
    _lib(a)["scalefactors"]["tissue_hires_scalef"] = 2.0  # 2x off: most spots land beyond the image
    return _classify(a, copy=True), [a]


@case("coordinates-nan", ValueError, r"1 spots of library 'lib' have non-finite coordinates.*drop or fix")
def _(c):
    a = _visium()
    a.obsm["spatial"][3] = np.nan
    return _classify(a), [a]


@case("coordinates-all-negative", ValueError, r"All 33 spots .* outside")
def _(c):
    a = _visium()
    a.obsm["spatial"] = -a.obsm["spatial"]
    return _classify(a), [a]


@case("coordinates-one-negative-padded", None)
def _(c):
    a = _visium()
    a.obsm["spatial"][0] = (-2000.0, -50.0)  # off the image: padded with white and flagged, never dropped

    def run():
        out = _classifies(a)()
        assert out.obs["glomerulus_in_image"].iloc[0] == 0.0 and out.obs["glomerulus"].iloc[0] == "other"

    return run, [a]


@case("obsm-spatial-missing", KeyError, r"obsm\['spatial'\] not found \(spot centres\)")
def _(c):
    a = _visium()
    del a.obsm["spatial"]
    return _classify(a), [a]


@case("obsm-spatial-one-column", ValueError, r"must be \(n_spots, 2\)")
def _(c):
    a = _visium()
    a.obsm["spatial"] = a.obsm["spatial"][:, :1]
    return _classify(a), [a]


@case("zero-spots", ValueError, r"no spots \(n_obs == 0\)")
def _(c):
    a = _visium()[:0].copy()
    return _classify(a), [a]


@case(
    "duplicate-barcodes-anndata",
    ValueError,
    r"duplicate.*obs_names_make_unique",
)
def _(c):
    a = _visium()
    a.obs_names = ["AAAC-1"] * a.n_obs
    return _classify(a), [a]


# --- Space Ranger folders ---------------------------------------------------------------------
def _outs(root: Path, *, n: int = 12) -> Path:
    spatial = root / "spatial"
    spatial.mkdir(parents=True)
    rows, cols = np.divmod(np.arange(n), 4)
    pd.DataFrame(
        {
            "barcode": [f"AAAC{i:04d}-1" for i in range(n)],
            "in_tissue": 1,
            "array_row": rows,
            "array_col": cols * 2 + rows % 2,
            "pxl_row_in_fullres": 100 + rows * 173,
            "pxl_col_in_fullres": 100 + (cols * 2 + rows % 2) * 100,
        }
    ).to_csv(spatial / "tissue_positions.csv", index=False)
    (spatial / "scalefactors_json.json").write_text(json.dumps({"spot_diameter_fullres": 130.0}))
    kgl.io.write_tiff_pyramid(root / "image.tif", np.full((800, 1000, 3), 200, np.uint8), mpp=0.5)
    return root


def _edit_positions(c: Ctx, edit: Callable[[pd.DataFrame], Any]) -> Path:
    """A Space Ranger folder whose tissue_positions.csv (read as text) went through ``edit`` in place."""
    root = _outs(c.tmp / "outs")
    pos = root / "spatial" / "tissue_positions.csv"
    df = pd.read_csv(pos, dtype=str)
    edit(df)
    df.to_csv(pos, index=False)
    return root


@case("visium-duplicate-barcodes", ValueError, r"tissue_positions\.csv lists barcode 'AAAC0000-1' more than once")
def _(c):
    root = _outs(c.tmp / "outs")
    pos = root / "spatial" / "tissue_positions.csv"
    lines = pos.read_text().splitlines()
    pos.write_text("\n".join([*lines, lines[1]]) + "\n")
    return lambda: kgl.io.read_visium(root), [root]


@case("visium-spot-diameter-zero", ValueError, r"scalefactors_json\.json' is 0\.0; it must be a positive number")
def _(c):
    root = _outs(c.tmp / "outs")
    (root / "spatial" / "scalefactors_json.json").write_text(json.dumps({"spot_diameter_fullres": 0.0}))
    return lambda: kgl.io.read_visium(root, fullres_image_file="image.tif"), [root]


@case("visium-scalefactors-not-json", ValueError, r"scalefactors_json\.json' is not valid JSON.*restore it")
def _(c):
    root = _outs(c.tmp / "outs")
    (root / "spatial" / "scalefactors_json.json").write_text("{spot_diameter_fullres: 89")
    return lambda: kgl.io.read_visium(root), [root]


@case(
    "visium-fullres-image-missing", FileNotFoundError, r"fullres_image_file 'missing\.tif' does not exist \(looked at"
)
def _(c):
    root = _outs(c.tmp / "outs")
    return lambda: kgl.io.read_visium(root, fullres_image_file="missing.tif"), [root]


@case(
    "visium-positions-pixel-not-a-number",
    ValueError,
    r"tissue_positions\.csv' line 4 \(barcode 'AAAC0002-1'\): pxl_row_in_fullres is 'def', not a number.*Restore",
)
def _(c):
    def bad_pixel(df: pd.DataFrame) -> None:
        df.loc[2, "pxl_row_in_fullres"] = "def"

    root = _edit_positions(c, bad_pixel)
    return lambda: kgl.io.read_visium(root), [root]


@case(
    "visium-positions-column-missing",
    ValueError,
    r"tissue_positions\.csv' lacks the column\(s\) \['array_col'\]: its header is \['barcode', 'in_tissue'",
)
def _(c):
    root = _edit_positions(c, lambda df: df.pop("array_col"))
    return lambda: kgl.io.read_visium(root), [root]


@case(
    "visium-scalefactor-not-a-number",
    ValueError,
    r"scalefactors_json\.json': field 'tissue_hires_scalef' is 'abc'; it must be a positive number",
)
def _(c):
    root = _outs(c.tmp / "outs")
    sf = root / "spatial" / "scalefactors_json.json"
    sf.write_text(json.dumps({"spot_diameter_fullres": 130.0, "tissue_hires_scalef": "abc"}))
    return lambda: kgl.io.read_visium(root), [root]


# --- coordinate frame and resolution ----------------------------------------------------------
@case(
    "coordinates-in-hires-frame",
    ValueError,
    r"look like hires image pixels, not full-resolution pixels.*divide them by tissue_hires_scalef",
)
def _(c):
    a = _visium()
    _lib(a)["scalefactors"]["tissue_hires_scalef"] = 0.25
    a.obsm["spatial"] = a.obsm["spatial"] * 0.25  # the squidpy #399 mix-up
    return _classify(a), [a]


@case("coordinates-in-lowres-frame", ValueError, r"look like lowres image pixels.*tissue_lowres_scalef")
def _(c):
    a = _visium()
    _lib(a)["scalefactors"]["tissue_lowres_scalef"] = 0.05
    a.obsm["spatial"] = a.obsm["spatial"] * 0.05
    return _classify(a), [a]


@case(
    "image-too-coarse-for-the-model",
    ValueError,
    r"The 'hires' image of library 'lib' has 10 µm/px, but the model needs 1\.88 µm/px.*fullres_image_file=.*"
    r"allow_upsampling=True",
)
def _(c):
    a = _visium(hires_scalef=0.05)  # 0.5 µm/px full res, 10 µm/px hires; center_red_model: 60 µm at 32 px
    return _classify(a), [a]


@case("image-too-coarse-allowed", None, log=r"upsampled .*allow_upsampling=True: classifying anyway")
def _(c):
    a = _visium(hires_scalef=0.05)
    return lambda: kgl.tl.classify_spots(
        a, center_red_model(), copy=True, allow_upsampling=True, show_progress=False
    ), [a]


@case(
    "cli-image-too-coarse", SystemExit, r"^kgl: error: The 'hires' image of library 'lib' has 10 µm/px.*--allow-upsampl"
)
def _(c):
    inp = c.tmp / "in.h5ad"
    _visium(hires_scalef=0.05).write_h5ad(inp)
    ckpt = _ckpt(c)
    return lambda: _cli("classify", inp, "--out", c.tmp / "o.h5ad", "--model", ckpt, "--quiet"), [c.tmp]


@case("mpp-too-few-spots-uses-diameter", None, log=r"too few spots to measure the spot lattice")
def _(c):
    a = _visium()[[4, 9, 20]].copy()  # three spots, not neighbours
    return _classifies(a, marked=[0, 1, 2]), [a]


@case(
    "spot-diameter-disagrees-with-lattice",
    None,
    log=r"µm/px disagreement for library 'lib': the spot lattice .* gives 0\.5 µm/px, spot_diameter_fullres",
)
def _(c):
    a = _visium()
    _lib(a)["scalefactors"]["spot_diameter_fullres"] = 200.0  # 0.325 µm/px as a 65-µm spot, 0.275 as 55 µm
    return _classifies(a), [a]


@case("spatialdata-uncertain-none-honoured", None)
def _(c):
    from spatialdata_io.experimental import from_legacy_anndata

    sdata = from_legacy_anndata(_visium())

    def run() -> None:
        out = kgl.tl.classify_spots(sdata, center_red_model(), uncertain=None, copy=True, show_progress=False)
        table = out.tables["table"]
        assert "glomerulus" in table.obs and "glomerulus_uncertain" not in table.obs

    return run, [sdata.tables["table"]]


# --- images -----------------------------------------------------------------------------------
@case("image-rgba", None)
def _(c):
    a = _visium()
    rgb = _lib(a)["images"]["hires"]
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:50, :50, 3] = 0  # transparent corner: composited over white
    _lib(a)["images"]["hires"] = rgba
    return _classifies(a), [a]


@case("image-greyscale", None)
def _(c):
    a = _visium()
    _lib(a)["images"]["hires"] = _lib(a)["images"]["hires"][..., 1].copy()  # the marker is dark in green
    return _classifies(a), [a]


@case("image-uint16", None)
def _(c):
    a = _visium()
    _lib(a)["images"]["hires"] = _lib(a)["images"]["hires"].astype(np.uint16) * 257
    return _classifies(a), [a]


@case("image-float-0-1", None)
def _(c):
    a = _visium()
    _lib(a)["images"]["hires"] = _lib(a)["images"]["hires"].astype(np.float32) / 255.0
    return _classifies(a), [a]


@case("image-cmyk-tiff", None)
def _(c):
    import tifffile

    a = _visium()
    rgb = _lib(a)["images"]["hires"].astype(np.float64) / 255.0
    k = 1.0 - rgb.max(axis=2, keepdims=True)
    cmy = (1.0 - rgb - k) / np.maximum(1.0 - k, 1e-9)
    cmyk = np.round(255 * np.concatenate([cmy, k], axis=2)).astype(np.uint8)
    path = c.tmp / "cmyk.tif"
    tifffile.imwrite(path, cmyk, photometric="separated", tile=(128, 128))
    _rewrite(a, path)
    return _classifies(a), [a, path]


@case("image-16bit-grey-tiff", None)
def _(c):
    a = _visium()
    path = c.tmp / "grey16.tif"
    kgl.io.write_tiff_pyramid(path, _lib(a)["images"]["hires"][..., 1].astype(np.uint16) * 257, tile=128)
    _rewrite(a, path)
    return _classifies(a), [a, path]


@case("image-float-out-of-range", ValueError, r"Float images must hold values in \[0, 1\].*rescale")
def _(c):
    a = _visium()
    _lib(a)["images"]["hires"] = _lib(a)["images"]["hires"].astype(np.float32)  # 0..255 as float
    return _classify(a), [a]


@case("image-int32", ValueError, r"Unsupported image dtype int32; kgl reads uint8, uint16")
def _(c):
    a = _visium()
    _lib(a)["images"]["hires"] = _lib(a)["images"]["hires"].astype(np.int32)
    return _classify(a), [a]


@case("image-channels-first", ValueError, r"channels in the last axis.*transposed to \(H, W, C\)")
def _(c):
    a = _visium()
    _lib(a)["images"]["hires"] = np.moveaxis(_lib(a)["images"]["hires"], 2, 0).copy()
    return _classify(a), [a]


@case("tiff-truncated", ValueError, r"Could not read TIFF .*truncated\.tif.* \(corrupt or truncated\?\)")
def _(c):
    a = _visium()
    good = _tiff(a, c.tmp / "good.tif")
    bad = c.tmp / "truncated.tif"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    _rewrite(a, bad)
    return _classify(a), [a, c.tmp]


@case("tiff-corrupt", ValueError, r"Could not read TIFF .*corrupt\.tif.* \(corrupt or truncated\?\)")
def _(c):
    a = _visium()
    bad = c.tmp / "corrupt.tif"
    bad.write_bytes(b"II*\x00" + bytes(range(256)) * 8)  # a TIFF header over garbage
    _rewrite(a, bad)
    return _classify(a), [a, c.tmp]


@case("image-path-missing", FileNotFoundError, r"full-resolution image of library 'lib' is missing.*Fix")
def _(c):
    a = _visium()
    _rewrite(a, c.tmp / "moved-away.tif")
    return _classify(a), [a]


@case("image-none", KeyError, r"Library 'lib' has no tissue image.*fullres_image_file=")
def _(c):
    a = _visium()
    _lib(a)["images"].clear()
    return _classify(a), [a]


@case(
    "mpp-metadata-disagrees",
    None,
    log=r"µm/px disagreement for library 'lib': image metadata of lib/fullres \(full\.tif\) says 0\.8 µm/px",
)
def _(c):
    a = _visium()
    path = _tiff(a, c.tmp / "full.tif", mpp=0.8)  # the scalefactors say 0.5 µm/px
    _rewrite(a, path)
    return _classifies(a), [a, path]


# --- annotations ------------------------------------------------------------------------------
SQUARE = [[[10, 10], [60, 10], [60, 60], [10, 60], [10, 10]]]
BOWTIE = [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]


def _feature(coords: Any, name: str = "Glomerulus") -> dict:
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": coords},
        "properties": {"classification": {"name": name}},
    }


def _geojson(c: Ctx, obj: Any, text: str | None = None) -> Path:
    path = c.tmp / "ann.geojson"
    path.write_text(json.dumps(obj) if text is None else text)
    return path


@case("geojson-empty-file", ValueError, r"GeoJSON file '.*ann\.geojson' is empty: it has no features")
def _(c):
    path = _geojson(c, None, "")
    return lambda: kgl.io.read_geojson(path), [path]


@case("geojson-no-features", None, log=r"ann\.geojson: the GeoJSON has no features .*zero polygons")
def _(c):  # a QuPath export of an image without glomeruli: valid, all negative
    path = _geojson(c, {"type": "FeatureCollection", "features": []})

    def run():
        assert len(kgl.io.read_geojson(path, classes="Glomerulus")) == 0

    return run, [path]


@case("geojson-not-json", ValueError, r"GeoJSON file '.*ann\.geojson' is not valid JSON")
def _(c):
    path = _geojson(c, None, '{"type": "FeatureCollection", "features": [')
    return lambda: kgl.io.read_geojson(path), [path]


@case("geojson-self-intersecting-repaired", None, log=r"ann\.geojson: repaired 1 invalid polygon.*make_valid")
def _(c):
    path = _geojson(c, {"type": "FeatureCollection", "features": [_feature(BOWTIE), _feature(SQUARE)]})

    def run():
        df = kgl.io.read_geojson(path)
        assert len(df) == 2 and df["geometry"].map(lambda g: g.is_valid).all()

    return run, [path]


@case("geojson-unknown-class", ValueError, r"class\(es\) \['glomerulus'\] not found\. Class names present: \['Glom")
def _(c):
    path = _geojson(c, [_feature(SQUARE, "Glomerulus"), _feature(SQUARE, "Tubule")])
    return lambda: kgl.io.read_geojson(path, classes=["glomerulus"]), [path]


def _coco() -> dict:
    return {
        "images": [{"id": 0, "file_name": "JPEGImages/a.jpg"}, {"id": 1, "file_name": "b.jpg"}],
        "categories": [{"id": 0, "name": "gl"}],
        "annotations": [
            {"id": 1, "image_id": 0, "category_id": 0, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
            {"id": 2, "image_id": 1, "category_id": 0, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
        ],
    }


@case("coco-image-id-missing", ValueError, r"image id\(s\) \[42\] that are missing from 'images'")
def _(c):
    coco = _coco()
    coco["annotations"].append({"id": 3, "image_id": 42, "category_id": 0, "segmentation": [[0, 0, 1, 0, 1, 1]]})
    path = _geojson(c, coco)
    return lambda: kgl.io.read_coco(path), [path]


@case("coco-image-files-missing", FileNotFoundError, r"1 image\(s\) of ann\.geojson are not in '.*imgs': \['b\.jpg'\]")
def _(c):
    (c.tmp / "imgs").mkdir()
    (c.tmp / "imgs" / "a.jpg").write_bytes(b"")
    path = _geojson(c, _coco())
    return lambda: kgl.io.read_coco(path, image_dir=c.tmp / "imgs"), [c.tmp]


@case("coco-unknown-category", ValueError, r"category id\(s\) \[7\] not found\. Categories: \{0: 'gl'\}")
def _(c):
    path = _geojson(c, _coco())
    return lambda: kgl.io.read_coco(path, category_ids=7), [path]


@case("coco-file-name-escapes", None)
def _(c):
    coco = _coco()
    coco["images"][1]["file_name"] = "../../../etc/b.jpg"  # only the base name is ever used
    (c.tmp / "imgs").mkdir()
    for n in ("a.jpg", "b.jpg"):
        (c.tmp / "imgs" / n).write_bytes(b"")

    def run():
        assert list(kgl.io.read_coco(coco, image_dir=c.tmp / "imgs")["image"]) == ["a.jpg", "b.jpg"]

    return run, [c.tmp]


_TILE = np.full((300, 300, 3), 200, np.uint8)


@case("polygon-outside-image", ValueError, r"Annotation 0: 1 of 1 polygon\(s\) lie entirely outside its image")
def _(c):
    c.mp.setattr(settings, "cachedir", c.tmp / "cache")
    return lambda: kgl.datasets.pseudo_visium([_TILE], [[shapely.box(1000, 1000, 1100, 1100)]], mpp=1.0), [c.tmp]


@case("polygon-partly-outside-dropped", None, log=r"Annotation 0: 1 of 2 polygon\(s\) lie entirely outside.*dropped")
def _(c):
    c.mp.setattr(settings, "cachedir", c.tmp / "cache")
    polys = [shapely.box(1000, 1000, 1100, 1100), shapely.box(50, 50, 150, 150)]

    def run():
        a = kgl.datasets.pseudo_visium([_TILE], [polys], mpp=1.0)
        assert len(a.uns["pseudo_visium"]["glomeruli_wkt"]) == 1

    return run, []


@case("mask-wrong-size", ValueError, r"Mask 0 has shape \(100, 300\) but its image is \(300, 300\)")
def _(c):
    c.mp.setattr(settings, "cachedir", c.tmp / "cache")
    return lambda: kgl.datasets.pseudo_visium([_TILE], [np.zeros((100, 300), bool)], mpp=1.0), [c.tmp]


# --- checkpoints and the model registry -------------------------------------------------------
def _mobilenet(**kw: Any) -> Any:
    return kgl.models.build_model("mobilenet_v2", weights=None, input_size=32, **kw)


def _ckpt(c: Ctx, name: str = "m.pt") -> Path:
    return kgl.models.save_checkpoint(_mobilenet(), c.tmp / name)


@case(
    "checkpoint-pickle-refused",
    ValueError,
    r"Refusing to load .*weights_only=True.*save_checkpoint\. \(UnpicklingError: Unsupported",
)
def _(c):
    marker = c.tmp / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = c.tmp / "evil.pt"
    path.write_bytes(pickle.dumps({"format": "kgl-checkpoint", "x": Evil()}))

    def run():
        try:
            kgl.models.load_checkpoint(path)
        finally:
            assert not marker.exists(), "the pickle's code ran"

    return run, [c.tmp]


@case("checkpoint-whole-module-pickle", ValueError, r"Refusing to load .*weights_only=True")
def _(c):
    path = c.tmp / "module.pt"
    torch.save(_mobilenet(), path)
    return lambda: kgl.models.load_checkpoint(path), [c.tmp]


@case("checkpoint-bare-state-dict", ValueError, r"not a kgl checkpoint.*build_model\(\.\.\.\)\.load_state_dict")
def _(c):
    path = c.tmp / "sd.pt"
    torch.save(_mobilenet().state_dict(), path)
    return lambda: kgl.models.load_checkpoint(path), [c.tmp]


def _edit_checkpoint(c: Ctx, edit: Callable[[dict, dict], None]) -> Path:
    payload = torch.load(_ckpt(c), weights_only=True)
    cfg = json.loads(payload["config"])
    edit(payload, cfg)
    payload["config"] = json.dumps(cfg)
    path = c.tmp / "edited.pt"
    torch.save(payload, path)
    return path


@case(
    "checkpoint-wrong-number-of-classes",
    ValueError,
    r"does not match its declared backbone 'mobilenet_v2' with 2 classes \(RuntimeError: size mismatch for head",
)
def _(c):
    def three_classes(p, cfg):
        p["state_dict"]["head.weight"] = torch.zeros(3, 1280)
        p["state_dict"]["head.bias"] = torch.zeros(3)

    path = _edit_checkpoint(c, three_classes)
    return lambda: kgl.models.resolve_model(path), [c.tmp]


@case(
    "checkpoint-three-classes", ValueError, r"kgl calls two classes; the model has \['other', 'glomerulus', 'tubule'\]"
)
def _(c):
    path = kgl.models.save_checkpoint(_mobilenet(class_names=("other", "glomerulus", "tubule")), c.tmp / "m3.pt")
    a = _visium()
    return _classify(a, model=path), [a, c.tmp]


@case("checkpoint-other-backbone", ValueError, r"does not match its declared backbone 'resnet18'")
def _(c):
    path = _edit_checkpoint(c, lambda p, cfg: cfg.update(backbone="resnet18"))
    return lambda: kgl.models.resolve_model(path), [c.tmp]


@case("checkpoint-unknown-backbone", ValueError, r"unusable config .*Unknown torchvision backbone 'my_net'")
def _(c):
    path = _edit_checkpoint(c, lambda p, cfg: cfg.update(backbone="my_net"))
    return lambda: kgl.models.resolve_model(path), [c.tmp]


@case("checkpoint-truncated", ValueError, r"Refusing to load .*corrupt file")
def _(c):
    good = _ckpt(c)
    bad = c.tmp / "cut.pt"
    bad.write_bytes(good.read_bytes()[:5000])
    return lambda: kgl.models.resolve_model(bad), [c.tmp]


@case("checkpoint-missing", FileNotFoundError, r"Checkpoint '.*nowhere\.pt' does not exist")
def _(c):
    return lambda: kgl.models.resolve_model(c.tmp / "nowhere.pt"), [c.tmp]


@case("save-checkpoint-non-torchvision", ValueError, r"Cannot save a checkpoint of backbone 'center_pool'.*torchvision")
def _(c):
    return lambda: kgl.models.save_checkpoint(center_red_model(), c.tmp / "x.pt"), [c.tmp]


@case(
    "torchvision-weights-poisoned-cache", RuntimeError, r"Refusing torchvision weights .*weights_only=True.*Delete it"
)
def _(c):
    marker = c.tmp / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    cache = c.tmp / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save({"features.0.0.weight": Evil()}, cache / "mobilenet_v2-b0353104.pth")  # where torchvision looks
    c.mp.setenv("TORCH_HOME", str(c.tmp / "torch"))

    def run():
        try:
            kgl.models.build_model("mobilenet_v2", weights="IMAGENET1K_V1")
        finally:
            assert not marker.exists(), "the cached file's pickled code ran"

    return run, [c.tmp]


def _serve(c: Ctx, root: Path) -> str:
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    c.teardown.append(server.shutdown)
    return f"http://127.0.0.1:{server.server_address[1]}"


@case("registry-bad-checksum", ValueError, r"model 'glom-test' from http://127\.0\.0\.1.* failed its sha256 hash check")
def _(c):
    from kgl.models import REGISTRY, ModelEntry

    (c.tmp / "www").mkdir()
    kgl.models.save_checkpoint(_mobilenet(), c.tmp / "www" / "glom.pt")
    url = _serve(c, c.tmp / "www")
    c.mp.setattr(settings, "cachedir", c.tmp / "cache")
    c.mp.setitem(REGISTRY, "glom-test", ModelEntry("glom-test", "glom-test.pt", f"{url}/glom.pt", "0" * 64))
    return lambda: kgl.models.resolve_model("glom-test"), [c.tmp / "cache"]


@case(
    "registry-model-not-cached",
    FileNotFoundError,
    r"Model 'kgl-glom-v2' is not in the model cache.*`kgl train --name kgl-glom-v2`",
)
def _(c):
    c.mp.setattr(settings, "cachedir", c.tmp / "cache")
    a = _visium()
    return _classify(a, model="kgl-glom-v2"), [a, c.tmp]


# --- arguments --------------------------------------------------------------------------------
@case("obs-key-exists-overwritten", None, log=r"adata\.obs\['glomerulus'\] already exists and is overwritten")
def _(c):
    a = _visium()
    a.obs["glomerulus"] = "the user's own column"
    in_tissue = a.obs["in_tissue"].copy()

    def run():
        kgl.tl.classify_spots(a, center_red_model(), show_progress=False)
        assert np.flatnonzero(a.obs["glomerulus"] == "glomerulus").tolist() == MARKED
        pd.testing.assert_series_equal(a.obs["in_tissue"], in_tissue)

    return run, []


@case("batch-size-0", ValueError, r"batch_size must be a positive integer, got 0")
def _(c):
    a = _visium()
    return _classify(a, batch_size=0), [a]


@case("patch-um-0", ValueError, r"patch_um must be a positive number of µm, got 0")
def _(c):
    a = _visium()
    return _classify(a, patch_um=0), [a]


@case("patch-um-negative", ValueError, r"patch_um must be a positive number of µm, got -5")
def _(c):
    a = _visium()
    return _classify(a, patch_um=-5), [a]


@case("threshold-outside-0-1", ValueError, r"threshold must be in \[0, 1\], got 2\.0")
def _(c):
    a = _visium()
    return _classify(a, threshold=2.0), [a]


@case("stain-norm-unknown", ValueError, r"stain_norm must be None or one of \('macenko',\), got 'reinhard'")
def _(c):
    a = _visium()
    return _classify(a, stain_norm="reinhard"), [a]


@case("stain-norm-without-tissue", ValueError, r"Macenko stain normalisation needs stained tissue: only 0 of")
def _(c):
    a = _visium()
    _lib(a)["images"]["hires"][...] = 250  # a blank (white) slide: no stain to estimate
    return _classify(a, stain_norm="macenko"), [a]


@case("key-added-empty", ValueError, r"key_added must be a non-empty string")
def _(c):
    a = _visium()
    return _classify(a, key_added=""), [a]


@case(
    "device-cuda-without-cuda",
    ValueError,
    r"device='cuda' but CUDA is not available on this machine; use device='auto' or 'cpu'",
    marks=(pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),),
)
def _(c):
    a = _visium()
    return _classify(a, device="cuda"), [a]


@case("precision-unknown", ValueError, r"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got 'fp8'")
def _(c):
    a = _visium()
    return _classify(a, precision="fp8"), [a]


# --- outputs: unwritable paths, crashes while writing -----------------------------------------
def _cli(*args: Any) -> int:
    from kgl._cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main([str(a) for a in args])
    if rc != 0:
        raise SystemExit(err.getvalue().strip())
    return rc


def _cli_input(c: Ctx) -> tuple[Path, Path]:
    inp = c.tmp / "in.h5ad"
    _visium().write_h5ad(inp)
    return inp, _ckpt(c)


@case(
    "cli-out-parent-is-a-file", SystemExit, r"kgl: error: Cannot write .*'x\.h5ad'.*'.*blocker' is a file, not a folder"
)
def _(c):
    inp, ckpt = _cli_input(c)
    (c.tmp / "blocker").write_text("a file, not a folder")
    return lambda: _cli("classify", inp, "--out", c.tmp / "blocker" / "x.h5ad", "--model", ckpt, "--quiet"), [c.tmp]


@case("cli-out-read-only-folder", SystemExit, r"kgl: error: Cannot write .*'x\.h5ad'.*read-only")
def _(c):
    inp, ckpt = _cli_input(c)
    ro = c.tmp / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    c.teardown.append(lambda: ro.chmod(0o700))
    try:
        (ro / ".probe").touch()
    except PermissionError:
        pass
    else:
        (ro / ".probe").unlink()
        pytest.skip("running as root: chmod 0o500 does not stop writes (cli-out-parent-is-a-file covers this)")
    return lambda: _cli("classify", inp, "--out", ro / "x.h5ad", "--model", ckpt, "--quiet"), [c.tmp]


@case("cli-input-missing", SystemExit, r"kgl: error: input '.*nothing\.h5ad' does not exist")
def _(c):
    return lambda: _cli("classify", c.tmp / "nothing.h5ad", "--out", c.tmp / "o.h5ad", "--quiet"), [c.tmp]


@case("cli-out-is-the-input", SystemExit, r"--out must differ from the input")
def _(c):
    inp, ckpt = _cli_input(c)
    return lambda: _cli("classify", inp, "--out", inp, "--model", ckpt, "--quiet"), [c.tmp]


@case("cli-crash-while-writing-keeps-old-output", SystemExit, r"kgl: error: disk full \(simulated\)")
def _(c):
    inp, ckpt = _cli_input(c)
    out = c.tmp / "out.h5ad"
    out.write_bytes(b"the previous result")

    def partial_then_crash(self, filename, *a, **k):
        Path(filename).write_bytes(b"half an h5ad")
        raise OSError("disk full (simulated)")

    c.mp.setattr(ad.AnnData, "write_h5ad", partial_then_crash)
    return lambda: _cli("classify", inp, "--out", out, "--model", ckpt, "--quiet"), [c.tmp]


@case("save-checkpoint-parent-is-a-file", NotADirectoryError, r"Cannot write .*'m\.pt'.*'.*blocker' is a file")
def _(c):
    (c.tmp / "blocker").write_text("a file")
    return lambda: kgl.models.save_checkpoint(_mobilenet(), c.tmp / "blocker" / "sub" / "m.pt"), [c.tmp]


@case("save-checkpoint-crash-keeps-old-file", OSError, r"disk full \(simulated\)")
def _(c):
    path = _ckpt(c)

    def partial_then_crash(obj, f, *a, **k):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full (simulated)")

    c.mp.setattr(torch, "save", partial_then_crash)
    return lambda: kgl.models.save_checkpoint(_mobilenet(), path), [c.tmp]


@case("pseudo-visium-fullres-path-under-a-file", NotADirectoryError, r"full-resolution TIFF .*'.*blocker' is a file")
def _(c):
    (c.tmp / "blocker").write_text("a file")
    return lambda: kgl.datasets.pseudo_visium([_TILE], [None], mpp=1.0, fullres_path=c.tmp / "blocker" / "m.tif"), [
        c.tmp
    ]


@case("pseudo-visium-annotation-file-unknown-kind", ValueError, r"unknown kind of file '\.txt'.*QuPath GeoJSON")
def _(c):
    (c.tmp / "ann.txt").write_text("glomeruli somewhere")
    return lambda: kgl.datasets.pseudo_visium([_TILE], [c.tmp / "ann.txt"], mpp=1.0), [c.tmp]


@case("pseudo-visium-annotation-not-polygons", TypeError, r"Annotation 0 must be a GeoJSON/COCO/mask file path")
def _(c):
    return lambda: kgl.datasets.pseudo_visium([_TILE], [42], mpp=1.0), [c.tmp]


@case("pseudo-visium-coco-file-for-an-array-image", ValueError, r"is a COCO file .* but image 0 is an array")
def _(c):
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 300, "height": 300}],
        "categories": [{"id": 0, "name": "gl"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 0, "segmentation": [[10, 10, 90, 10, 90, 90]]}],
    }
    (c.tmp / "coco.json").write_text(json.dumps(coco))
    return lambda: kgl.datasets.pseudo_visium([_TILE], [c.tmp / "coco.json"], mpp=1.0), [c.tmp]


@case(
    "write-tiff-pyramid-parent-is-a-file",
    NotADirectoryError,
    r"'.*blocker' is a file, not a folder",
)
def _(c):
    (c.tmp / "blocker").write_text("a file")
    return lambda: kgl.io.write_tiff_pyramid(c.tmp / "blocker" / "m.tif", _TILE), [c.tmp]


@case("write-patches-slide-name-escapes", None)
def _(c):
    from PIL import Image

    Image.fromarray(_TILE).save(c.tmp / "slide.png")
    evil = ["../../evil", "/etc/evil", "..\\..\\evil", "..", ""]
    df = pd.DataFrame(
        {
            "slide": evil,
            "path": str(c.tmp / "slide.png"),
            "x": 150.0,
            "y": 150.0,
            "mpp": 1.0,
            "patch_um": 50.0,
            "coverage": 0.0,
            "label": 0,
            "group": "g",
        }
    )
    out = c.tmp / "deep" / "out"
    before = {p for p in c.tmp.parent.rglob("*") if p.is_file()}

    def run():
        index = kgl.im.write_patches(df, out, size=16)
        new = {p for p in c.tmp.parent.rglob("*") if p.is_file()} - before
        assert len(new) >= len(evil) + 1 and all(out.resolve() in p.resolve().parents for p in new), new
        assert all((out / p).resolve().parent == (out / "other").resolve() for p in index["png"])

    return run, []


# --- training ---------------------------------------------------------------------------------
def _patch_table(c: Ctx) -> pd.DataFrame:
    from PIL import Image

    rows = []
    yy, xx = np.mgrid[:160, :160]
    for s in range(4):
        img = np.full((160, 160, 3), (225, 185, 210), np.uint8)
        img[(xx - 50) ** 2 + (yy - 50) ** 2 <= 30**2] = (150, 30, 60)
        Image.fromarray(img).save(c.tmp / f"s{s}.png")
        for x, y, label in [(50, 50, 1), (54, 47, 1), (120, 120, 0), (120, 40, 0)]:
            rows.append((str(c.tmp / f"s{s}.png"), f"s{s}", x, y, label))
    df = pd.DataFrame(rows, columns=["path", "group", "x", "y", "label"])
    df["slide"], df["mpp"], df["patch_um"] = df["group"], 1.0, 60.0
    df["split"] = np.where(df["group"] == "s0", "val", "train")
    return df


_TRAIN = dict(
    backbone="mobilenet_v2",
    weights=None,
    input_size=32,
    epochs=2,
    batch_size=4,
    freeze_epochs=1,
    patience=5,
    show_progress=False,
    device="cpu",
    precision="fp32",
    seed=0,
)


@case("train-interrupted-resumes-identically", None)
def _(c):
    import kgl.tl._train as tr

    table = _patch_table(c)
    real_eval, calls = tr.run_eval, {"n": 0}

    def crash_in_epoch_2(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption in epoch 2")
        return real_eval(*a, **k)

    def run():
        full = kgl.tl.train(table, out_dir=c.tmp / "full", **_TRAIN)
        c.mp.setattr(tr, "run_eval", crash_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            kgl.tl.train(table, out_dir=c.tmp / "cut", **_TRAIN)
        c.mp.setattr(tr, "run_eval", real_eval)
        assert len(pd.read_csv(c.tmp / "cut" / "history.csv")) == 1 and not (c.tmp / "cut" / "best.pt").exists()
        assert not list((c.tmp / "cut").glob(".*.tmp"))
        resumed = kgl.tl.train(table, out_dir=c.tmp / "cut", resume=True, **_TRAIN)
        np.testing.assert_array_equal(resumed.history["val_loss"], full.history["val_loss"])
        assert kgl.models.state_dict_sha256(resumed.model) == kgl.models.state_dict_sha256(full.model)

    return run, []


@case("train-resume-without-last-checkpoint", FileNotFoundError, r"resume=True but there is no .*last\.pt")
def _(c):
    table = _patch_table(c)
    return lambda: kgl.tl.train(table, out_dir=c.tmp / "run", resume=True, **_TRAIN), [c.tmp]


@case("train-resume-from-other-run", ValueError, r"Cannot resume from .*last\.pt.*other settings.*another out_dir")
def _(c):
    table = _patch_table(c)
    (c.tmp / "run").mkdir()
    torch.save({"model": {"conv.weight": torch.zeros(1)}}, c.tmp / "run" / "last.pt")
    return lambda: kgl.tl.train(table, out_dir=c.tmp / "run", resume=True, **_TRAIN), [c.tmp]


@case("train-resume-from-pickle", ValueError, r"Cannot resume from .*last\.pt.*weights_only=True")
def _(c):
    table = _patch_table(c)
    (c.tmp / "run").mkdir()
    torch.save(_mobilenet(), c.tmp / "run" / "last.pt")  # a whole pickled module
    return lambda: kgl.tl.train(table, out_dir=c.tmp / "run", resume=True, **_TRAIN), [c.tmp]


@case("train-out-dir-is-a-file", NotADirectoryError, r"Cannot write the training outputs .*is a file")
def _(c):
    table = _patch_table(c)
    (c.tmp / "run").write_text("a file")
    return lambda: kgl.tl.train(table, out_dir=c.tmp / "run", **_TRAIN), [c.tmp]


# --- expression and manual review (issue 6) ---------------------------------------------------
def _expression(n_samples: int = 1) -> ad.AnnData:
    """Spots with simulated counts and image-style labels (glomerulus where coverage >= 0.5)."""
    parts = []
    for k in range(n_samples):
        rng = np.random.default_rng(k)
        cov = np.where(rng.random(200) < 0.15, rng.uniform(0.6, 1.0, 200), 0.0)
        a = ad.AnnData(obs=pd.DataFrame({"glomerulus_coverage": cov}, index=[f"s{k}-{i}" for i in range(200)]))
        a = kgl.datasets.simulate_counts(a, seed=k, n_background=30)
        a.obs["library_id"] = f"sample{k}"
        parts.append(a)
    out = ad.concat(parts, merge="same") if n_samples > 1 else parts[0]
    out.obs["glomerulus"] = pd.Categorical(
        np.where(out.obs["glomerulus_coverage"] >= 0.5, "glomerulus", "other"), categories=["other", "glomerulus"]
    )
    return out


def _reviewable(c: Ctx) -> tuple[ad.AnnData, Path]:
    a = _visium()
    kgl.tl.classify_spots(a, center_red_model(), show_progress=False)
    path = kgl.io.write_review(a, c.tmp / "review.geojson")
    return a, path


def _edit_review(path: Path, edit: Callable[[dict], Any]) -> None:
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))


@case("de-no-genes", ValueError, r"no genes.*simulate_counts=True")
def _(c):
    a = _visium()
    kgl.tl.classify_spots(a, center_red_model(), show_progress=False)
    return lambda: kgl.tl.glom_markers(a), [a]


@case("de-labels-missing", KeyError, r"adata.obs has no \['glomerulus'\]: run kgl.tl.classify_spots")
def _(c):
    a = _expression()
    del a.obs["glomerulus"]
    return lambda: kgl.tl.glom_markers(a), [a]


@case("de-one-class-only", ValueError, r"needs spots in and outside 'glomerulus'")
def _(c):
    a = _expression()
    a.obs["glomerulus"] = pd.Categorical(["other"] * a.n_obs, categories=["other", "glomerulus"])
    return lambda: kgl.tl.glom_markers(a), [a]


@case("de-pseudobulk-one-sample", ValueError, r"at least 2 samples.*method='wilcoxon'")
def _(c):
    a = _expression(1)
    return lambda: kgl.tl.glom_markers(a, method="pseudobulk"), [a]


@case("de-pseudobulk-lognormalised", ValueError, r"not raw counts.*layer='counts'")
def _(c):
    import scanpy as sc

    a = _expression(2)
    a.layers["counts"] = a.X.copy()
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    return lambda: kgl.tl.glom_markers(a, method="pseudobulk"), [a]


@case("marker-check-genes-missing", None, log=r"Marker genes not in adata.*'NPHS1'")
def _(c):
    a = _expression()
    a = a[:, ~a.var_names.isin(["NPHS1"])].copy()
    return lambda: kgl.tl.marker_check(a), [a]


@case("simulate-counts-has-genes", ValueError, r"already has \d+ genes")
def _(c):
    a = _expression()
    return lambda: kgl.datasets.simulate_counts(a), [a]


@case("review-write-several-libraries", ValueError, r"several libraries \['lib', 'lib2'\].*pass library_id=")
def _(c):
    a = _visium()
    kgl.tl.classify_spots(a, center_red_model(), show_progress=False)
    a.uns["spatial"]["lib2"] = a.uns["spatial"]["lib"]
    a.obs["library_id"] = pd.Categorical(["lib"] * a.n_obs, categories=["lib", "lib2"])
    return lambda: kgl.io.write_review(a, c.tmp / "r.geojson"), [a, c.tmp]


@case("review-read-unknown-class", ValueError, r"class name\(s\) \['Glomerulus'\].*allowed: \['other', 'glomerulus'\]")
def _(c):
    a, path = _reviewable(c)
    _edit_review(path, lambda o: o["features"][0]["properties"]["classification"].__setitem__("name", "Glomerulus"))
    return lambda: kgl.tl.apply_review(a, path), [a, c.tmp]


@case("review-read-unknown-barcode", KeyError, r"not in adata.obs_names.*review file of this sample")
def _(c):
    a, path = _reviewable(c)
    _edit_review(path, lambda o: o["features"][0]["properties"].update(name="XX-1", barcode="XX-1"))
    return lambda: kgl.tl.apply_review(a, path), [a, c.tmp]


@case("review-read-not-geojson", ValueError, r"not a GeoJSON FeatureCollection.*Export objects as GeoJSON")
def _(c):
    a, path = _reviewable(c)
    path.write_text(json.dumps({"type": "Feature", "geometry": None, "properties": {}}))
    return lambda: kgl.tl.apply_review(a, path), [a, c.tmp]


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(c: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kgl_log: Any) -> None:
    ctx = Ctx(tmp_path / "case", monkeypatch)
    ctx.tmp.mkdir()
    try:
        action, watched = c.setup(ctx)
        before = [snapshot(w) for w in watched]
        if c.raises is None:
            action()
        else:
            with pytest.raises(c.raises) as info:
                action()
            msg = str(info.value.args[0] if isinstance(info.value, KeyError) and info.value.args else info.value)
            assert re.search(c.match, msg, flags=re.S), f"message does not match {c.match!r}:\n{msg}"
        if c.log is not None:
            assert re.search(c.log, kgl_log.text), f"log lacks {c.log!r}:\n{kgl_log.text}"
        for w, b in zip(watched, before, strict=True):  # watched AnnData / files identical before and after
            assert_same(b, snapshot(w), repr(w) if not isinstance(w, ad.AnnData) else "adata")
    finally:
        for fn in reversed(ctx.teardown):
            fn()


def test_matrix_size_and_ids():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 30


def test_snapshot_sees_every_change(tmp_path: Path) -> None:
    """The before/after comparison is not vacuous: each kind of change to an AnnData or a folder fails it."""
    changes = {
        "obs column": lambda a: a.obs.__setitem__("x", 1),
        "obs value": lambda a: a.obs.__setitem__("in_tissue", 0),
        "obs_names": lambda a: setattr(a, "obs_names", [f"b{i}" for i in range(a.n_obs)]),
        "obsm key": lambda a: a.obsm.__setitem__("X_g", np.zeros((a.n_obs, 2))),
        "obsm value": lambda a: a.obsm["spatial"].__setitem__((0, 0), -1.0),
        "uns key": lambda a: a.uns.__setitem__("g", {"params": {}}),
        "uns scalar": lambda a: _lib(a)["scalefactors"].__setitem__("spot_diameter_fullres", 1.0),
        "uns pixel": lambda a: _lib(a)["images"]["hires"].__setitem__((0, 0, 0), 7),
    }
    for what, change in changes.items():
        a = make_visium()
        before = snapshot(a)
        assert_same(before, snapshot(a), "adata")
        change(a)
        with pytest.raises(AssertionError):
            assert_same(before, snapshot(a), what)
    (tmp_path / "f").write_bytes(b"x")
    before = snapshot(tmp_path)
    for change in (lambda: (tmp_path / ".f.1.tmp").write_bytes(b""), lambda: (tmp_path / "f").write_bytes(b"y")):
        change()
        with pytest.raises(AssertionError):
            assert_same(before, snapshot(tmp_path), "folder")


def test_docs_table_lists_every_case() -> None:
    """docs/reliability.md's table and this matrix name the same cases."""
    doc = (Path(__file__).parents[1] / "docs" / "reliability.md").read_text(encoding="utf-8")
    table = doc.split("<!-- matrix -->")[1]
    documented = re.findall(r"^\| `([a-z0-9.\-]+)` \|", table, flags=re.M)
    assert sorted(documented) == sorted(c.id for c in CASES)
