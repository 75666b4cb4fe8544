"""AnnData helpers shared by the rooms: ``library_id``, Visium metadata in ``adata.uns``, labels, class colours."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kgl._geometry import (
    SPOT_DIAMETER_FULLRES_UM,
    SPOT_DIAMETER_UM,
    SPOT_PITCH_UM,
    SpotMpp,
    mpp_from_scalefactors,
    spot_mpp,
)

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

__all__ = [  # re-exported for older imports
    "SPOT_DIAMETER_FULLRES_UM",
    "SPOT_DIAMETER_UM",
    "SPOT_PITCH_UM",
    "mpp_from_scalefactors",
]


def _spatial_uns(adata: AnnData, spatial_key: str = "spatial") -> dict:
    if spatial_key not in adata.uns:
        raise KeyError(
            f"adata.uns[{spatial_key!r}] not found: kgl needs the squidpy/scanpy Visium layout "
            f"(uns[{spatial_key!r}][library_id] with 'images' and 'scalefactors'). "
            f"Available uns keys: {sorted(adata.uns.keys())}. Read Space Ranger output with kgl.io.read_visium."
        )
    spatial = adata.uns[spatial_key]
    if not isinstance(spatial, dict) or not spatial:
        raise KeyError(f"adata.uns[{spatial_key!r}] is empty: no library_id with images/scalefactors.")
    return spatial


def resolve_library_ids(
    adata: AnnData, library_id: str | Sequence[str] | None = None, *, spatial_key: str = "spatial"
) -> list[str]:
    """Return the library ids to process; unknown ids raise a :class:`KeyError` listing the available ones."""
    available = list(_spatial_uns(adata, spatial_key).keys())
    if library_id is None:
        return available
    wanted = [library_id] if isinstance(library_id, str) else list(library_id)
    missing = [lib for lib in wanted if lib not in available]
    if missing:
        raise KeyError(f"library_id {missing[0]!r} not found in adata.uns[{spatial_key!r}]. Available: {available}.")
    return wanted


def library_mask(
    adata: AnnData, library_id: str, library_ids: Sequence[str], library_key: str = "library_id"
) -> np.ndarray:
    """Boolean mask of the spots that belong to ``library_id``.

    With a single library every spot belongs to it; with several, ``adata.obs[library_key]`` says
    which spot is where (as :func:`anndata.concat` with ``uns_merge`` and squidpy expect).
    """
    if len(library_ids) == 1 and library_key not in adata.obs:
        return np.ones(adata.n_obs, dtype=bool)
    if library_key not in adata.obs:
        raise KeyError(
            f"adata.uns['spatial'] has {len(library_ids)} libraries {list(library_ids)} but adata.obs has no "
            f"{library_key!r} column saying which spot belongs to which; pass library_key=."
        )
    return (adata.obs[library_key].astype(str) == str(library_id)).to_numpy()


def check_spot_diameter(sf: Any, where: str) -> float:
    """``sf["spot_diameter_fullres"]`` as a positive float; a clear :class:`ValueError` otherwise."""
    if not isinstance(sf, dict):
        raise ValueError(
            f"The scalefactors of {where} must be a dict (scalefactors_json.json), got {type(sf).__name__}."
        )
    d = sf.get("spot_diameter_fullres")
    if d is None:
        raise ValueError(
            f"The scalefactors of {where} have no 'spot_diameter_fullres' (keys: {sorted(sf)}); kgl needs it to "
            "convert pixels to µm. Copy it from Space Ranger's spatial/scalefactors_json.json (kgl.io.read_visium "
            "reads it)."
        )
    try:
        value = float(d)
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(
            f"scalefactors['spot_diameter_fullres'] of {where} is {d!r}; it must be a positive number (Space Ranger's "
            "theoretical 65-µm spot diameter in full-resolution pixels, from scalefactors_json.json)."
        )
    return value


def _as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")  # reported by whoever needs this entry (e.g. an invalid tissue_hires_scalef)


def scalefactors(adata: AnnData, library_id: str, spatial_key: str = "spatial") -> dict[str, float]:
    """The library's Space Ranger scalefactors; checks ``spot_diameter_fullres``."""
    lib = _spatial_uns(adata, spatial_key)[library_id]
    sf = lib.get("scalefactors")
    if sf is None:
        raise KeyError(
            f"adata.uns[{spatial_key!r}][{library_id!r}] has no 'scalefactors' (keys: {sorted(lib)}); "
            "it needs at least 'spot_diameter_fullres'."
        )
    check_spot_diameter(sf, f"library {library_id!r}")
    return {k: _as_float(v) for k, v in sf.items() if np.isscalar(v)}


def library_mpp(
    adata: AnnData,
    library_id: str,
    *,
    spatial_key: str = "spatial",
    library_key: str = "library_id",
    image_mpp: float | None = None,
    image_name: str | None = None,
) -> SpotMpp:
    """µm per full-resolution pixel of a library, from its spot lattice (see :func:`kgl._geometry.spot_mpp`).

    Uses the library's spots in ``obsm[spatial_key]`` and, when present, ``obs["array_row"]`` /
    ``obs["array_col"]``; ``spot_diameter_fullres`` and ``image_mpp`` are cross-checks.
    """
    sf = scalefactors(adata, library_id, spatial_key)
    libs = list(_spatial_uns(adata, spatial_key))
    mask = library_mask(adata, library_id, libs, library_key)
    if spatial_key not in adata.obsm:
        raise KeyError(f"adata.obsm[{spatial_key!r}] not found (spot centres). Available: {list(adata.obsm.keys())}.")
    coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)[mask]
    row = col = None
    if "array_row" in adata.obs and "array_col" in adata.obs:
        import pandas as pd

        row = pd.to_numeric(adata.obs["array_row"], errors="coerce").to_numpy(dtype=np.float64)[mask]
        col = pd.to_numeric(adata.obs["array_col"], errors="coerce").to_numpy(dtype=np.float64)[mask]
    if "bin_size_um" in sf:  # Visium HD bins: the lattice pitch is the bin size
        from kgl._geometry import bin_mpp

        return bin_mpp(coords, sf, array_row=row, array_col=col, image_mpp=image_mpp, where=f"library {library_id!r}")
    return spot_mpp(
        coords,
        sf,
        array_row=row,
        array_col=col,
        image_mpp=image_mpp,
        image_name=image_name,
        where=f"library {library_id!r}",
        spatial_key=spatial_key,
    )


def obs_labels(adata: AnnData, key: str = "glomerulus", *, need_proba: bool = False) -> Any:
    """``adata.obs[key]`` as a categorical (the classifier's labels), checked to exist.

    Raises
    ------
    KeyError
        ``obs[key]`` (or, with ``need_proba``, ``obs[f"{key}_proba"]``) is missing; the message
        says to run :func:`kgl.tl.classify_spots` and lists the obs columns there are.

    """
    import pandas as pd

    cols = [key, f"{key}_proba"] if need_proba else [key]
    missing = [c for c in cols if c not in adata.obs]
    if missing:
        cats = [c for c in adata.obs.columns if isinstance(adata.obs[c].dtype, pd.CategoricalDtype)]
        raise KeyError(
            f"adata.obs has no {missing}: run kgl.tl.classify_spots(adata, key_added={key!r}) first, or pass key= "
            f"the key_added it used. Categorical obs columns: {cats}; all obs columns: {list(adata.obs.columns)}."
        )
    labels = adata.obs[key]
    if not isinstance(labels.dtype, pd.CategoricalDtype):
        labels = labels.astype("category")
    return labels


def reviewed_labels(adata: AnnData, key: str = "glomerulus") -> Any:
    """The labels downstream functions use: ``obs[f"{key}_reviewed"]`` where a reviewer set one, else ``obs[key]``.

    Manual review (:func:`kgl.tl.apply_review`) writes ``obs[f"{key}_reviewed"]``, a categorical with
    the same categories as ``obs[key]`` and missing values for spots nobody reviewed; reviewed
    labels win. Returns a categorical :class:`~pandas.Series` indexed like ``adata.obs``.

    Raises
    ------
    KeyError
        ``obs[key]`` is missing (see :func:`obs_labels`).

    """
    import pandas as pd

    labels = obs_labels(adata, key)
    rkey = f"{key}_reviewed"
    if rkey not in adata.obs:
        return labels
    reviewed = adata.obs[rkey].astype(object)
    out = labels.astype(object).where(reviewed.isna(), reviewed)
    cats = list(labels.cat.categories) + [c for c in pd.unique(reviewed.dropna()) if c not in labels.cat.categories]
    return pd.Series(pd.Categorical(out, categories=cats), index=adata.obs.index, name=key)


#: Class colours when ``uns[f"{key}_colors"]`` does not fit (matplotlib's tab10).
FALLBACK_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def rgb(color: Any) -> list[int]:
    """A matplotlib colour as QuPath's ``[r, g, b]`` (0-255)."""
    from matplotlib.colors import to_rgb

    return [round(255 * c) for c in to_rgb(color)]


def class_colors(adata: AnnData, key: str, categories: Sequence[str]) -> dict[str, list[int]]:
    """QuPath colours of the classes: ``uns[f"{key}_colors"]`` (as scanpy/squidpy plot them) when it fits."""
    colors = adata.uns.get(f"{key}_colors")
    if colors is None or len(colors) != len(categories):
        colors = [FALLBACK_COLORS[i % len(FALLBACK_COLORS)] for i in range(len(categories))]
    out = {}
    for i, (cat, col) in enumerate(zip(categories, colors, strict=True)):
        try:
            out[str(cat)] = rgb(col)
        except ValueError:
            out[str(cat)] = rgb(FALLBACK_COLORS[i % len(FALLBACK_COLORS)])
    return out
