"""Manual review of spot calls in QuPath: export spot circles as GeoJSON, read the edited classes back.

The loop: :func:`kgl.tl.classify_spots` → :func:`write_review` (e.g. only the uncertain spots) →
open the file in QuPath over the full-resolution image (*File ▸ Import objects*), correct the
classifications → *File ▸ Export objects as GeoJSON* → :func:`read_review`, which writes
``obs[f"{key}_reviewed"]``. Functions that need labels use :func:`kgl._utils.reviewed_labels`, so
reviewed labels win downstream.
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
from kgl._validators import one_library, save_data, select_spots

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

__all__ = ["read_review", "write_review"]


def _check_unique_barcodes(adata: AnnData) -> None:
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()]
        raise ValueError(
            f"adata.obs_names has {len(dup)} duplicate barcodes (e.g. {dup[0]!r}): review features are matched to "
            "spots by barcode. Call adata.obs_names_make_unique() first."
        )


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
    with *File ▸ Export objects as GeoJSON* and read the result with :func:`read_review`.

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
    _check_unique_barcodes(adata)
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


def _feature_barcode(props: dict, obs_names: pd.Index) -> str | None:
    name, barcode = props.get("name"), props.get("barcode")
    name = None if name is None else str(name)
    barcode = None if barcode is None else str(barcode)
    if name is not None and (name in obs_names or barcode is None):
        return name
    return barcode


def read_review(
    adata: AnnData,
    path: str | os.PathLike,
    *,
    key: str = "glomerulus",
    update: bool = False,
    copy: bool = False,
) -> Any:
    """Read reviewed spot classes from a (QuPath-edited) :func:`write_review` GeoJSON.

    Features are matched to spots by barcode: ``properties.name`` (what QuPath shows and keeps),
    else ``properties.barcode``. The feature's ``classification.name`` is the reviewed label;
    features without a classification leave their spot unreviewed, and features without any
    barcode (e.g. outlines drawn in QuPath) are ignored with a warning. Geometry is not read:
    spots do not move.

    Parameters
    ----------
    adata
        AnnData annotated by :func:`kgl.tl.classify_spots` (``obs[key]``).
    path
        The GeoJSON file: a ``FeatureCollection`` (or QuPath's plain list of Features).
    key
        The ``key_added`` used by :func:`~kgl.tl.classify_spots`.
    update
        Keep earlier reviewed labels of spots this file does not classify (e.g. reviewing one
        library after another); by default ``obs[f"{key}_reviewed"]`` holds this file's labels only.
    copy
        Return an annotated copy instead of writing into ``adata``.

    Returns
    -------
    With ``copy=True`` the annotated copy, else ``None``. Writes:

    - ``obs[f"{key}_reviewed"]``: categorical with the categories of ``obs[key]``; missing for
      spots nobody reviewed. :func:`kgl._utils.reviewed_labels` merges it over ``obs[key]``.
    - ``uns[key]["review"]``: ``{"path", "n_reviewed", "n_changed"}`` (spots with a reviewed label,
      and those whose reviewed label differs from ``obs[key]``).

    Raises
    ------
    KeyError
        ``obs[key]`` missing, or barcodes in the file that are not in ``adata.obs_names``.
    ValueError
        Invalid JSON, not a FeatureCollection, class names that are not categories of ``obs[key]``,
        one barcode classified differently twice. Nothing is written to ``adata`` on error.
    FileNotFoundError
        ``path`` does not exist.

    Examples
    --------
    >>> kgl.io.read_review(adata, "review-edited.geojson")  # doctest: +SKIP
    >>> adata.obs["glomerulus_reviewed"].value_counts()  # doctest: +SKIP

    """
    labels = obs_labels(adata, key, need_proba=False)
    _check_unique_barcodes(adata)
    if key in adata.uns and not isinstance(adata.uns[key], dict):
        raise ValueError(f"adata.uns[{key!r}] is a {type(adata.uns[key]).__name__}, not a dict; cannot record review.")
    path = Path(path)
    feats = _load_features(path)
    categories = [str(c) for c in labels.cat.categories]

    reviewed: dict[str, str] = {}
    conflicts: list[str] = []
    unknown_barcodes: list[str] = []
    unknown_classes: set[str] = set()
    no_barcode = unclassified = 0
    for f in feats:
        props = f.get("properties") or {}
        if not isinstance(props, dict):
            props = {}
        barcode = _feature_barcode(props, adata.obs_names)
        if barcode is None:
            no_barcode += 1
            continue
        if barcode not in adata.obs_names:
            unknown_barcodes.append(barcode)
            continue
        cls = _feature_class(props)
        if cls is None:
            unclassified += 1
            continue
        if cls not in categories:
            unknown_classes.add(cls)
            continue
        if reviewed.get(barcode, cls) != cls:
            conflicts.append(barcode)
        reviewed[barcode] = cls
    if unknown_barcodes:
        raise KeyError(
            f"Review file {str(path)!r} has {len(unknown_barcodes)} feature(s) whose barcode is not in "
            f"adata.obs_names (e.g. {unknown_barcodes[:5]}): is it the review file of this sample?"
        )
    if unknown_classes:
        raise ValueError(
            f"Review file {str(path)!r} uses class name(s) {sorted(unknown_classes)} that are not categories of "
            f"adata.obs[{key!r}]; allowed: {categories}. Rename the classes in QuPath (names are case-sensitive)."
        )
    if conflicts:
        raise ValueError(
            f"Review file {str(path)!r} classifies {len(set(conflicts))} barcode(s) differently in several features "
            f"(e.g. {sorted(set(conflicts))[:5]}); keep one feature per spot."
        )
    if no_barcode:
        logger.warning(
            "%s: ignored %d feature(s) without a barcode (properties.name / properties.barcode), e.g. outlines "
            "drawn in QuPath.",
            path.name,
            no_barcode,
        )

    rkey = f"{key}_reviewed"
    values = pd.Series(np.nan, index=adata.obs_names, dtype=object)
    if update and rkey in adata.obs:
        values = adata.obs[rkey].astype(object).where(adata.obs[rkey].notna(), np.nan)
    if reviewed:
        values.loc[list(reviewed)] = list(reviewed.values())
    new = pd.Categorical(values.to_numpy(), categories=labels.cat.categories)
    new_s = pd.Series(new, index=adata.obs_names)
    done = new_s.notna()
    changed = done & (new_s.astype(object) != labels.astype(object)).to_numpy()
    summary = {"path": str(path), "n_reviewed": int(done.sum()), "n_changed": int(changed.sum())}

    if copy:
        adata = adata.copy()
    save_data(adata, attr="obs", key=rkey, data=new_s)
    uns = dict(adata.uns.get(key) or {})
    uns["review"] = summary
    adata.uns[key] = uns
    in_file = changed & new_s.index.isin(list(reviewed))
    moves = pd.crosstab(labels.astype(object)[in_file], new_s.astype(object)[in_file]).stack()
    detail = ", ".join(f"{int(n)} {a} → {b}" for (a, b), n in moves.items() if n > 0)
    logger.info(
        "Read %d reviewed label(s) from %s into obs[%r]: %d changed%s%s%s.",
        len(reviewed),
        path.name,
        rkey,
        int(in_file.sum()),
        f" ({detail})" if detail else "",
        f"; {unclassified} unclassified feature(s) left unreviewed" if unclassified else "",
        f"; {summary['n_reviewed']} reviewed in all (update=True)" if update else "",
    )
    return adata if copy else None
