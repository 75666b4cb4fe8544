"""Manual review of spot calls in QuPath: export spot circles as GeoJSON, read the edited classes back.

The loop: :func:`kgl.tl.classify_spots` → :func:`write_review` (e.g. only the uncertain spots) →
open the file in QuPath over the full-resolution image (*File ▸ Import objects*), correct the
classifications → *File ▸ Export objects as GeoJSON* → :func:`kgl.tl.apply_review`, which writes
``obs[f"{key}_reviewed"]`` (reading the file with :func:`read_review`, which only reads). Functions
that need labels use :func:`kgl._utils.reviewed_labels`, so reviewed labels win downstream.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from kgl._docs import d
from kgl._files import atomic_path
from kgl._logging import logger
from kgl._utils import (
    FALLBACK_COLORS,
    SPOT_DIAMETER_UM,
    _spatial_uns,
    class_colors,
    library_mask,
    library_mpp,
    obs_labels,
    resolve_library_ids,
    rgb,
)
from kgl._validators import check_unique_barcodes, one_library, select_spots

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

__all__ = ["REVIEW_COLUMNS", "read_review", "write_review"]


def _circle(x: float, y: float, r: float, n: int) -> list[list[float]]:
    # written here, not shapely's Point.buffer: QuPath gets exactly n vertices from angle 0 (buffer gives 4k + 1)
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    ring = np.c_[x + r * np.cos(t), y + r * np.sin(t)].round(3)
    return [[float(a), float(b)] for a, b in [*ring, ring[0]]]


@d.dedent
def write_review(
    adata: AnnData,
    path: str | os.PathLike,
    *,
    key: str = "glomerulus",
    library_id: str | None = None,
    spots: Any = None,
    spatial_key: str = "spatial",
    library_key: str = "library_id",
    pixel_origin: Literal["corner", "center"] = "corner",
    n_vertices: int = 64,
) -> Path:
    """Write spot calls as a QuPath-importable GeoJSON for manual review.

    Every exported spot becomes a polygonal ``annotation`` approximating its 55-µm capture disk, in
    the full-resolution pixel frame of ``obsm[spatial_key]`` (the image of
    ``uns["spatial"][library_id]["metadata"]["source_image_path"]``, i.e. the image Space Ranger was
    run on): import it over that image in QuPath (*File ▸ Import objects*, or drag and drop). The
    feature's ``name`` is the barcode and its ``classification`` the call (coloured as in
    ``uns[f"{key}_colors"]``); the probability is a measurement. Correct the classifications, export
    with *File ▸ Export objects as GeoJSON* and apply the result with :func:`kgl.tl.apply_review`.

    Parameters
    ----------
    adata
        AnnData annotated by :func:`kgl.tl.classify_spots` (``obs[key]``, ``obs[f"{key}_proba"]``).
    path
        Output ``.geojson`` file; written atomically (a failed call leaves an earlier file as it was).
    key
        The ``key_added`` used by :func:`~kgl.tl.classify_spots`.
    %(library_id)s
    spots
        Export only these spots: a boolean mask over ``adata.obs`` (e.g.
        ``adata.obs["glomerulus_uncertain"]``), or barcodes (a list or :class:`pandas.Index`). A mask
        is restricted to the library; barcodes of another library raise. All spots of the library by
        default.
    %(spatial_key)s
    %(library_key)s
    pixel_origin
        ``"corner"`` (QuPath): coordinate 0 is the top-left corner of the first pixel, so kgl's
        pixel-centre coordinates are shifted by ``+0.5`` (the inverse of :func:`kgl.io.read_geojson`).
        ``"center"``: written in kgl's frame as they are.
    n_vertices
        Vertices of each circle polygon (all at the spot radius).

    Returns
    -------
    The path written.

    Raises
    ------
    KeyError
        ``obs[key]`` / ``obs[f"{key}_proba"]`` missing, unknown ``library_id`` or barcodes in ``spots``.
    ValueError
        Several libraries and no ``library_id``, non-finite coordinates of exported spots, no spot
        to export, a mask of the wrong length.

    Examples
    --------
    >>> kgl.tl.classify_spots(adata, model="kgl-glom-v1")  # doctest: +SKIP
    >>> kgl.io.write_review(adata, "review.geojson", spots=adata.obs["glomerulus_uncertain"])  # doctest: +SKIP

    """
    if pixel_origin not in ("corner", "center"):
        raise ValueError(f"pixel_origin must be 'corner' or 'center', got {pixel_origin!r}.")
    if int(n_vertices) != n_vertices or n_vertices < 8:
        raise ValueError(f"n_vertices must be an integer >= 8, got {n_vertices!r}.")
    labels = obs_labels(adata, key, need_proba=True)
    all_libs = resolve_library_ids(adata, None, spatial_key=spatial_key)
    lib = one_library(adata, library_id, spatial_key=spatial_key, hint="one review file per image")
    check_unique_barcodes(adata)
    if spatial_key not in adata.obsm:
        raise KeyError(f"adata.obsm[{spatial_key!r}] not found (spot centres). Available: {list(adata.obsm.keys())}.")
    coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise ValueError(f"adata.obsm[{spatial_key!r}] must be (n_spots, 2), got shape {coords.shape}.")
    mpp = library_mpp(adata, lib, spatial_key=spatial_key, library_key=library_key).mpp
    in_lib = library_mask(adata, lib, all_libs, library_key)
    mask = select_spots(adata, spots, in_lib, lib)
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        raise ValueError(f"No spot to export: the selection holds none of library {lib!r}'s {int(in_lib.sum())} spots.")
    bad = ~np.isfinite(coords[idx, :2]).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} exported spots have non-finite coordinates in obsm[{spatial_key!r}] "
            f"(e.g. {adata.obs_names[idx[bad][0]]!r}); leave them out with spots= or fix them."
        )

    radius = SPOT_DIAMETER_UM / 2.0 / mpp
    shift = 0.5 if pixel_origin == "corner" else 0.0
    colors = class_colors(adata, key, list(labels.cat.categories))
    proba = np.asarray(adata.obs[f"{key}_proba"], dtype=np.float64)
    ukey = f"{key}_uncertain"
    uncertain = adata.obs[ukey].to_numpy() if ukey in adata.obs else None
    features = []
    for i in idx:
        barcode = str(adata.obs_names[i])
        label = labels.iloc[i]
        label = None if pd.isna(label) else str(label)
        p = None if not np.isfinite(proba[i]) else round(float(proba[i]), 6)
        props: dict[str, Any] = {"objectType": "annotation", "name": barcode}
        if label is not None:
            props["classification"] = {"name": label, "color": colors.get(label, rgb(FALLBACK_COLORS[0]))}
        if p is not None:
            props["measurements"] = {"probability": p}
        props.update({"barcode": barcode, "library_id": lib, "label": label, "probability": p})
        if uncertain is not None:
            props["uncertain"] = None if pd.isna(uncertain[i]) else bool(uncertain[i])
        x, y = coords[i, 0] + shift, coords[i, 1] + shift
        geometry = {"type": "Polygon", "coordinates": [_circle(x, y, radius, int(n_vertices))]}
        features.append({"type": "Feature", "geometry": geometry, "properties": props})

    source = (_spatial_uns(adata, spatial_key)[lib].get("metadata") or {}).get("source_image_path")
    collection = {
        "type": "FeatureCollection",
        "features": features,
        "kgl": {  # a GeoJSON foreign member: QuPath ignores it
            "key": key,
            "library_id": lib,
            "image": None if source is None else str(source),
            "frame": "full-resolution pixels",
            "pixel_origin": pixel_origin,
            "mpp": mpp,
            "spot_diameter_um": SPOT_DIAMETER_UM,
        },
    }
    text = json.dumps(collection, allow_nan=False)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    logger.info(
        "Wrote %d spots of library %r for review to %s (%s; full-resolution pixels of %s).",
        len(idx),
        lib,
        path,
        ", ".join(f"{int((labels.iloc[idx] == c).sum())} {c}" for c in labels.cat.categories),
        repr(str(source)) if source else "the image Space Ranger was run on",
    )
    return path


def _load_features(path: Path) -> list[Any]:
    if not path.is_file():
        raise FileNotFoundError(f"Review file {str(path)!r} does not exist.")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"Review file {str(path)!r} is not valid JSON: {e}") from e
    if isinstance(obj, dict) and obj.get("type") == "FeatureCollection" and isinstance(obj.get("features"), list):
        feats = obj["features"]
    elif isinstance(obj, list):  # QuPath's export without "Export as FeatureCollection"
        feats = obj
    else:
        kind = obj.get("type") if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"Review file {str(path)!r} is not a GeoJSON FeatureCollection (got {kind!r}); write it with "
            "kgl.io.write_review and export it from QuPath with File > Export objects as GeoJSON."
        )
    bad = [i for i, f in enumerate(feats) if not isinstance(f, dict) or f.get("type") != "Feature"]
    if bad:
        raise ValueError(
            f"Review file {str(path)!r}: {len(bad)} entries of 'features' are not GeoJSON Features "
            f"(e.g. index {bad[0]})."
        )
    return feats


def _feature_class(props: dict) -> str | None:
    cls = props.get("classification")
    if isinstance(cls, dict):
        name = cls.get("name")
        return None if name is None or name == "" else str(name)
    if isinstance(cls, str) and cls:
        return cls
    return None


#: Columns of :func:`read_review`'s table.
REVIEW_COLUMNS = ("name", "barcode", "classification")


def read_review(path: str | os.PathLike) -> pd.DataFrame:
    """Read the features of a (QuPath-edited) :func:`write_review` GeoJSON, one row per feature.

    A reader: it returns what the file says and touches no AnnData. :func:`kgl.tl.apply_review`
    matches the rows to spots and writes the reviewed labels (it calls this function when given a path).

    Parameters
    ----------
    path
        The GeoJSON file: a ``FeatureCollection`` (or QuPath's plain list of Features).

    Returns
    -------
    :class:`pandas.DataFrame` with columns ``name`` (``properties.name``: what QuPath shows and keeps,
    the barcode unless renamed), ``barcode`` (``properties.barcode``, written by :func:`write_review`)
    and ``classification`` (``classification.name``; ``None`` where QuPath left the object
    unclassified), each ``None`` where the feature lacks it; ``attrs["path"]`` is the file. Geometry
    is not read: spots do not move.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Invalid JSON, or not a FeatureCollection of Features.

    Examples
    --------
    >>> kgl.io.read_review("review-edited.geojson")["classification"].value_counts()  # doctest: +SKIP

    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"read_review(path) reads a review file and takes no AnnData (got {type(path).__name__}); "
            "to write the reviewed labels into adata.obs use kgl.tl.apply_review(adata, path)."
        )
    path = Path(path)
    rows = []
    for f in _load_features(path):
        props = f.get("properties") or {}
        if not isinstance(props, dict):
            props = {}
        name, barcode = (None if props.get(k) is None else str(props[k]) for k in ("name", "barcode"))
        rows.append((name, barcode, _feature_class(props)))
    table = pd.DataFrame(rows, columns=list(REVIEW_COLUMNS), dtype=object)
    table.attrs["path"] = str(path)
    return table
