"""Read glomerulus annotations: QuPath GeoJSON, COCO instances and binary masks → shapely polygons.

All readers return geometry in kgl's pixel frame: pixel ``(row i, col j)`` has its centre at
``(x, y) = (j, i)`` and covers ``[j - 0.5, j + 0.5] × [i - 0.5, i + 0.5]`` (the frame of
``adata.obsm["spatial"]`` and :meth:`kgl.io.SlideImage.read_centered`). QuPath and COCO write
vertices with pixel *corners* at integers, so their coordinates are shifted by ``-0.5``
(``pixel_origin="corner"``, the default).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from kgl._geometry import polygonal_part
from kgl._logging import logger

__all__ = ["mask_to_polygons", "read_coco", "read_geojson", "read_mask", "write_geojson"]

_COLUMNS = ["geometry", "name", "image"]
_POLYGONAL = ("Polygon", "MultiPolygon")


# ---------------------------------------------------------------------------------------------
# geometry helpers
# ---------------------------------------------------------------------------------------------
class _Cleaner:
    """Repair/drop geometries and summarise what happened in one warning per reader call."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.repaired = 0
        self.dropped: Counter[str] = Counter()

    def __call__(self, geom: Any) -> Any:
        import shapely

        if geom is None or geom.is_empty:
            self.dropped["empty"] += 1
            return None
        if geom.geom_type not in (*_POLYGONAL, "GeometryCollection"):
            self.dropped[geom.geom_type] += 1
            return None
        if not geom.is_valid:
            self.repaired += 1
            geom = shapely.make_valid(geom)
        poly = polygonal_part(geom)
        if poly is None:
            self.dropped["empty" if geom.is_empty else f"{geom.geom_type} without area"] += 1
        return poly

    def report(self) -> None:
        if self.repaired:
            logger.warning(
                "%s: repaired %d invalid polygon(s) (e.g. self-intersecting) with shapely.make_valid, "
                "keeping their polygonal parts.",
                self.source,
                self.repaired,
            )
        if self.dropped:
            what = ", ".join(f"{n} {k}" for k, n in sorted(self.dropped.items()))
            logger.warning(
                "%s: dropped %d geometry(ies) that are empty or not polygons (%s).",
                self.source,
                sum(self.dropped.values()),
                what,
            )


def _shift(geoms: list[Any], pixel_origin: str) -> list[Any]:
    import shapely

    if pixel_origin not in ("corner", "center"):
        raise ValueError(f"pixel_origin must be 'corner' or 'center', got {pixel_origin!r}.")
    if pixel_origin == "center" or not geoms:
        return geoms
    return list(shapely.transform(np.asarray(geoms, dtype=object), lambda c: c - 0.5))


def _load_json(path_or_obj: Any, what: str) -> tuple[Any, str]:
    if isinstance(path_or_obj, (str, os.PathLike)):
        path = Path(path_or_obj)
        if not path.is_file():
            raise FileNotFoundError(f"{what} file {str(path)!r} does not exist.")
        text = path.read_text(encoding="utf-8").strip()
        if not text:
            raise ValueError(f"{what} file {str(path)!r} is empty: it has no features.")
        try:
            return json.loads(text), path.name
        except json.JSONDecodeError as e:
            raise ValueError(f"{what} file {str(path)!r} is not valid JSON: {e}") from e
    return path_or_obj, f"<{what} object>"


def _frame(rows: list[tuple[Any, Any, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=_COLUMNS)
    return df.astype({"name": object, "image": object})


# ---------------------------------------------------------------------------------------------
# GeoJSON (QuPath)
# ---------------------------------------------------------------------------------------------
def _features(obj: Any, source: str) -> list[dict]:
    if isinstance(obj, dict):
        kind = obj.get("type")
        if kind == "FeatureCollection":
            feats = obj.get("features") or []
        elif kind == "Feature":
            feats = [obj]
        elif kind in (*_POLYGONAL, "GeometryCollection", "Point", "MultiPoint", "LineString", "MultiLineString"):
            feats = [{"type": "Feature", "geometry": obj, "properties": {}}]
        else:
            raise ValueError(
                f"{source}: expected a GeoJSON FeatureCollection, Feature, geometry or a list of Features; "
                f"got an object with type {kind!r}."
            )
    elif isinstance(obj, list):
        feats = [f if f.get("type") == "Feature" else {"type": "Feature", "geometry": f, "properties": {}} for f in obj]
    else:
        raise TypeError(f"{source}: expected a path, a dict or a list of GeoJSON Features, got {type(obj).__name__}.")
    return feats


def _class_name(props: dict | None) -> str | None:
    props = props or {}
    cls = props.get("classification")
    if isinstance(cls, dict) and cls.get("name") is not None:
        return str(cls["name"])
    if isinstance(cls, str) and cls:
        return cls
    name = props.get("name")
    return None if name is None else str(name)


def read_geojson(
    path_or_dict: str | os.PathLike | dict | list,
    *,
    classes: str | Sequence[str] | None = None,
    pixel_origin: Literal["corner", "center"] = "corner",
) -> pd.DataFrame:
    """Read polygon annotations from a GeoJSON file, e.g. a QuPath export.

    Accepts a ``FeatureCollection``, a bare list of Features (QuPath's "export as array"), a
    single Feature or a bare geometry. Polygons, MultiPolygons and holes are kept; invalid
    polygons (e.g. a self-intersecting "bowtie") are repaired with :func:`shapely.make_valid`
    (keeping only polygonal parts) and counted in a warning; empty and non-polygonal geometries
    (points, lines) are dropped with a warning.

    Parameters
    ----------
    path_or_dict
        Path to a ``.geojson``/``.json`` file, or the already parsed JSON object.
    classes
        Keep only features whose class name is one of these. A name that no feature has raises a
        :class:`ValueError` listing the names present.
    pixel_origin
        ``"corner"`` (QuPath, ImageJ, COCO): coordinate ``0`` is the top-left corner of the first
        pixel; shifted by ``-0.5`` into kgl's pixel-centre frame. ``"center"``: already in kgl's frame.

    Returns
    -------
    :class:`pandas.DataFrame` (no rows for an empty ``FeatureCollection``: an image without
    glomeruli) with columns ``geometry`` (shapely ``Polygon``/``MultiPolygon`` in
    the image's pixel frame), ``name`` (class from ``properties.classification.name``, a string
    ``classification`` or ``properties.name``; ``None`` when unclassified) and ``image`` (``None``).

    """
    from shapely.errors import GEOSException
    from shapely.geometry import shape

    obj, source = _load_json(path_or_dict, "GeoJSON")
    feats = _features(obj, source)
    if not feats:  # a slide without glomeruli is a valid annotation: all negative
        logger.info("%s: the GeoJSON has no features (no annotated objects): zero polygons.", source)
        return _frame([])
    names = [_class_name(f.get("properties")) for f in feats]
    if classes is not None:
        wanted = [classes] if isinstance(classes, str) else list(classes)
        present = sorted({n for n in names if n is not None})
        unknown = [c for c in wanted if c not in present]
        if unknown:
            raise ValueError(f"{source}: class(es) {unknown} not found. Class names present: {present}.")
        keep = [n in wanted for n in names]
        feats = [f for f, k in zip(feats, keep, strict=True) if k]
        names = [n for n, k in zip(names, keep, strict=True) if k]

    clean = _Cleaner(source)
    rows: list[tuple[Any, Any, Any]] = []
    for feat, name in zip(feats, names, strict=True):
        gj = feat.get("geometry")
        try:
            geom = None if not gj else shape(gj)
        except (ValueError, TypeError, KeyError, AttributeError, GEOSException):
            clean.dropped["unreadable"] += 1
            continue
        geom = clean(geom)
        if geom is not None:
            rows.append((geom, name, None))
    clean.report()
    if not rows:
        raise ValueError(f"{source}: no polygon features left (of {len(feats)} feature(s)).")
    df = _frame(rows)
    df["geometry"] = _shift(list(df["geometry"]), pixel_origin)
    return df


# ---------------------------------------------------------------------------------------------
# COCO
# ---------------------------------------------------------------------------------------------
def _rle_decode(seg: dict, ann_id: Any) -> np.ndarray:
    h, w = (int(v) for v in seg["size"])
    counts = seg["counts"]
    if isinstance(counts, list):  # uncompressed RLE: column-major runs, starting with background
        flat = np.zeros(h * w, dtype=np.uint8)
        ends = np.cumsum(counts)
        for k in range(1, len(counts), 2):
            flat[ends[k - 1] : ends[k]] = 1
        return flat.reshape((w, h)).T
    try:
        from pycocotools import mask as mask_utils
    except ImportError as e:
        raise ImportError(
            f"COCO annotation {ann_id} stores its segmentation as compressed RLE, which needs pycocotools "
            "(pip install pycocotools). Polygon segmentations and uncompressed RLE are read without it."
        ) from e
    rle = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
    return np.asarray(mask_utils.decode(rle), dtype=np.uint8)


def _coco_geometry(seg: Any, ann_id: Any, clean: _Cleaner, pixel_origin: str) -> Any:
    import shapely
    from shapely.geometry import MultiPolygon, Polygon

    if isinstance(seg, dict) and "counts" in seg:
        polys = mask_to_polygons(_rle_decode(seg, ann_id))  # already in the pixel-centre frame
        return clean(polys[0] if len(polys) == 1 else MultiPolygon(polys)) if polys else clean(None)
    if not isinstance(seg, list):
        clean.dropped["unreadable"] += 1
        return None
    parts = []
    for flat in seg:
        xy = np.asarray(flat, dtype=np.float64)
        if xy.size < 6 or xy.size % 2:
            continue
        parts.append(Polygon(xy.reshape(-1, 2)))
    if not parts:
        return clean(None)
    geom = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    if pixel_origin == "corner":
        geom = shapely.transform(geom, lambda c: c - 0.5)
    return clean(geom)


def read_coco(
    path_or_dict: str | os.PathLike | dict,
    *,
    image_dir: str | os.PathLike | None = None,
    category_ids: int | Iterable[int] | None = None,
    pixel_origin: Literal["corner", "center"] = "corner",
) -> pd.DataFrame:
    """Read COCO instance annotations into polygons, one row per annotation.

    Polygon segmentations (a list of flat ``[x1, y1, x2, y2, …]`` lists; several parts become a
    ``MultiPolygon``) are read directly; uncompressed RLE is decoded here and compressed RLE with
    :mod:`pycocotools` when it is installed. Invalid polygons are repaired as in
    :func:`read_geojson`.

    Parameters
    ----------
    path_or_dict
        Path to the COCO ``.json`` file or the parsed object.
    image_dir
        Folder holding the images: when given, every image listed in ``images`` must exist there
        (by base name), otherwise a :class:`FileNotFoundError` lists the missing ones.
    category_ids
        Keep only these category ids; an id not in ``categories`` raises a :class:`ValueError`.
    pixel_origin
        Convention of the polygon vertices, see :func:`read_geojson` (RLE masks need no shift).

    Returns
    -------
    :class:`pandas.DataFrame` with columns ``geometry``, ``name`` (category name) and ``image``
    (the base name of the image file: ``coco_test/JPEGImages/a.jpg`` → ``a.jpg``).

    """
    obj, source = _load_json(path_or_dict, "COCO")
    if not isinstance(obj, dict) or "annotations" not in obj:
        raise ValueError(f"{source}: not a COCO instances file (expected a dict with 'images' and 'annotations').")
    images = {im["id"]: Path(str(im["file_name"]).replace("\\", "/")).name for im in obj.get("images", [])}
    cats = {c["id"]: str(c.get("name", c["id"])) for c in obj.get("categories", [])}
    anns = list(obj["annotations"])
    if not anns:
        raise ValueError(f"{source}: the COCO file has no annotations.")
    missing_ids = sorted({a["image_id"] for a in anns} - set(images), key=str)
    if missing_ids:
        raise ValueError(
            f"{source}: annotations refer to image id(s) {missing_ids[:10]} that are missing from 'images' "
            f"({len(images)} images listed)."
        )
    base_names = Counter(images.values())
    clashes = sorted(n for n, k in base_names.items() if k > 1)
    if clashes:
        raise ValueError(f"{source}: several images share the base file name(s) {clashes[:5]}; names must be unique.")
    if image_dir is not None:
        folder = Path(image_dir)
        absent = sorted(n for n in images.values() if not (folder / n).is_file())
        if absent:
            raise FileNotFoundError(
                f"{len(absent)} image(s) of {source} are not in {str(folder)!r}: {absent[:10]}"
                + (" …" if len(absent) > 10 else "")
            )
    if category_ids is not None:
        wanted = {int(category_ids)} if np.isscalar(category_ids) else {int(c) for c in category_ids}
        unknown = sorted(wanted - set(cats))
        if unknown:
            raise ValueError(f"{source}: category id(s) {unknown} not found. Categories: {cats}.")
        anns = [a for a in anns if a.get("category_id") in wanted]

    clean = _Cleaner(source)
    rows = []
    for a in anns:
        geom = _coco_geometry(a.get("segmentation"), a.get("id"), clean, pixel_origin)
        if geom is not None:
            cid = a.get("category_id")
            rows.append((geom, cats.get(cid, None if cid is None else str(cid)), images[a["image_id"]]))
    clean.report()
    return _frame(rows)


# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------
def _corner_ring(contour: np.ndarray) -> np.ndarray:
    """Map a contour of the 2×-upsampled mask to the pixel corners of the original mask.

    Each pixel of the upsampled mask is one quadrant of an original pixel; the quadrant's
    centre maps to the original pixel corner it touches (``ceil(u / 2) - 0.5``). Along the
    border these corners are exactly the vertices of the union of the pixel squares.
    """
    pts = contour.reshape(-1, 2)
    corners = (pts + 1) // 2 - 0.5
    keep = np.any(corners != np.roll(corners, 1, axis=0), axis=1)
    return corners[keep] if keep.any() else corners[:1]


def mask_to_polygons(mask: np.ndarray, *, min_area: float = 0.0) -> list[Any]:
    """Polygons (with holes) outlining the foreground of a binary mask, exactly along pixel edges.

    Pixel ``(i, j)`` covers ``[j - 0.5, j + 0.5] × [i - 0.5, i + 0.5]`` in ``(x, y)``, so each
    polygon's area equals its number of pixels. Contours come from :func:`cv2.findContours`
    (``RETR_CCOMP``: outer borders and their holes, ``CHAIN_APPROX_NONE``) on the mask upsampled
    2×, whose border pixels map one-to-one to pixel corners; collinear vertices are removed.
    Foreground pixels touching only diagonally become separate polygons.

    Parameters
    ----------
    mask
        ``(H, W)`` array; nonzero is foreground.
    min_area
        Drop polygons with a smaller area (in pixels², holes subtracted).

    Returns
    -------
    List of :class:`shapely.Polygon`, ordered by their top-left corner (row, then column).

    """
    import cv2
    import shapely
    from shapely.geometry import Polygon

    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}; reduce colour masks first (see read_mask).")
    fg = (mask != 0).astype(np.uint8)
    if not fg.any():
        return []
    up = np.repeat(np.repeat(fg, 2, axis=0), 2, axis=1)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    hier = hierarchy.reshape(-1, 4)
    polys: list[Any] = []
    for k, c in enumerate(contours):
        if hier[k, 3] != -1:  # a hole: handled with its parent
            continue
        holes = []
        child = hier[k, 2]
        while child != -1:
            ring = _corner_ring(contours[child])
            if len(ring) >= 3:
                holes.append(ring)
            child = hier[child, 0]
        poly = Polygon(_corner_ring(c), holes)
        if not poly.is_valid:  # rings touching themselves at a corner (diagonal pixels)
            poly = polygonal_part(shapely.make_valid(poly))
            if poly is None:
                continue
        polys.extend(shapely.get_parts(shapely.simplify(poly, 0.0)))
    polys = [p for p in polys if p.area > 0 and p.area >= min_area]
    polys.sort(key=lambda p: (p.bounds[1], p.bounds[0]))
    return polys


def read_mask(path: str | os.PathLike, *, min_area: float = 0.0) -> list[Any]:
    """Read a binary mask image (PNG, TIFF, …) and return its foreground polygons.

    Any nonzero value in a colour channel (alpha ignored) or palette index counts as foreground.

    Parameters
    ----------
    path
        Mask image file.
    min_area
        See :func:`mask_to_polygons`.

    Returns
    -------
    List of :class:`shapely.Polygon` in the mask's pixel frame.

    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Mask file {str(path)!r} does not exist.")
    with Image.open(path) as im:
        bands = im.getbands()
        arr = np.asarray(im)
    if arr.ndim == 3:
        colour = [i for i, b in enumerate(bands) if b != "A"] or [0]
        arr = np.any(arr[..., colour] != 0, axis=-1)
    return mask_to_polygons(arr, min_area=min_area)


# ---------------------------------------------------------------------------------------------
# writing (QuPath)
# ---------------------------------------------------------------------------------------------
#: QuPath's colour of the class kgl writes (an RGB list, as QuPath exports it).
_GLOMERULUS_RGB = [214, 39, 40]


def write_geojson(
    polygons: Any,
    path: str | os.PathLike,
    *,
    classification: str = "Glomerulus",
    pixel_origin: Literal["corner", "center"] = "corner",
) -> Path:
    """Write polygons as a QuPath GeoJSON ``FeatureCollection`` of annotations (atomically).

    A pathologist opens it in QuPath over the same image (File ▸ Import objects), corrects it, and
    exports it back for :func:`read_geojson` (the round trip keeps the polygons exactly).

    Parameters
    ----------
    polygons
        A (Geo)DataFrame with a ``geometry`` column (:func:`kgl.tl.glomeruli`; its other scalar
        columns become QuPath measurements, lists are left out) or a sequence of shapely polygons,
        in kgl's pixel frame (pixel centres at integers).
    path
        Output ``.geojson`` file.
    classification
        QuPath class of every feature.
    pixel_origin
        ``"corner"`` (QuPath): coordinates are shifted by ``+0.5`` (the inverse of :func:`read_geojson`).

    Returns
    -------
    The path written.

    """
    import shapely
    from shapely.geometry import mapping

    from kgl._files import atomic_path

    if isinstance(polygons, pd.DataFrame):
        if "geometry" not in polygons:
            raise KeyError(f"polygons has no 'geometry' column; it has {list(polygons.columns)}.")
        geoms = list(polygons["geometry"])
        scalar = [c for c in polygons.columns if c != "geometry" and pd.api.types.is_numeric_dtype(polygons[c])]
        measurements = [{c: float(v) for c, v in row.items()} for row in polygons[scalar].to_dict("records")]
        names = [str(i) for i in polygons.index]
    else:
        geoms = list(polygons)
        measurements, names = [{} for _ in geoms], [None for _ in geoms]
    bad = [type(g).__name__ for g in geoms if getattr(g, "geom_type", None) not in _POLYGONAL]
    if bad:
        raise ValueError(f"write_geojson writes polygons; got {bad[:3]} among the geometries.")
    if pixel_origin not in ("corner", "center"):
        raise ValueError(f"pixel_origin must be 'corner' or 'center', got {pixel_origin!r}.")
    shift = 0.5 if pixel_origin == "corner" else 0.0
    feats = []
    for geom, meas, name in zip(geoms, measurements, names, strict=True):
        props: dict[str, Any] = {
            "objectType": "annotation",
            "classification": {"name": classification, "color": _GLOMERULUS_RGB},
        }
        if name is not None:
            props["name"] = name
        if meas:
            props["measurements"] = meas
        moved = shapely.transform(geom, lambda c: c + shift)
        feats.append({"type": "Feature", "geometry": mapping(moved), "properties": props})
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps({"type": "FeatureCollection", "features": feats}), encoding="utf-8")
    return path
