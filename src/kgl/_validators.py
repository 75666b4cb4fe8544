"""Argument checks and the one result writer shared by every room (as squidpy's ``_validators.py``).

Each check raises a ``ValueError`` / ``KeyError`` that names the argument, what it got, and the fix.
:func:`save_data` is squidpy's ``_save_data``: the one place that writes a result into ``adata`` and
warns, as scanpy does, when it replaces one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kgl._logging import logger

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

__all__ = ["check_int", "check_patch_args", "check_unique_barcodes", "one_library", "save_data", "select_spots"]


def check_int(value: Any, name: str, *, minimum: int = 1, what: str = "") -> int:
    """``value`` as an ``int`` when it is a whole number ``>= minimum``; otherwise a ``ValueError``.

    ``what`` describes the argument in the message (``"tiles per row"``).
    """
    label = f"{name} ({what})" if what else name
    kind = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer >= {minimum}")
    try:
        ok = int(value) == value and value >= minimum
    except (TypeError, ValueError):
        ok = False
    if not ok or isinstance(value, bool):
        raise ValueError(f"{label} must be {kind}, got {value!r}.")
    return int(value)


def check_key(value: Any, name: str = "key_added") -> str:
    """A non-empty string key (``key_added``, ...); a :class:`ValueError` naming it otherwise."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}.")
    return value


def check_patch_args(patch_um: float, size: int) -> None:
    """A patch side in µm (> 0) and an output side in px (an integer >= 8)."""
    if not np.isfinite(patch_um) or patch_um <= 0:
        raise ValueError(f"patch_um must be a positive number of µm, got {patch_um!r}.")
    check_int(size, "size", minimum=8, what="output patch side in pixels")


def check_unique_barcodes(adata: AnnData) -> None:
    """Refuse duplicate ``obs_names``: review features are matched to spots by barcode."""
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()]
        raise ValueError(
            f"adata.obs_names has {len(dup)} duplicate barcodes (e.g. {dup[0]!r}): review features are matched to "
            "spots by barcode. Call adata.obs_names_make_unique() first."
        )


def one_library(adata: AnnData, library_id: str | None, *, spatial_key: str = "spatial", hint: str = "") -> str:
    """The one library a function works on: ``library_id``, or the only one ``adata`` has.

    Several libraries and no ``library_id`` is a ``ValueError`` listing them (``hint`` says why one
    is needed, e.g. ``"one review file per image"``); an unknown ``library_id`` a ``KeyError``.
    """
    from kgl._utils import resolve_library_ids

    if library_id is None:
        libs = resolve_library_ids(adata, None, spatial_key=spatial_key)
        if len(libs) > 1:
            why = f" ({hint})" if hint else ""
            raise ValueError(f"adata has several libraries {libs}: pass library_id={why}. Available: {libs}.")
        return libs[0]
    (lib,) = resolve_library_ids(adata, library_id, spatial_key=spatial_key)
    return lib


def save_data(adata: AnnData, *, attr: str, key: str, data: Any) -> None:
    """Store ``data`` as ``getattr(adata, attr)[key]`` (``obs``, ``obsm`` or ``uns``), warning when it replaces one."""
    if attr not in ("obs", "obsm", "uns"):
        raise ValueError(f"attr must be 'obs', 'obsm' or 'uns', got {attr!r}.")
    store = getattr(adata, attr)
    if key in store:
        logger.warning("adata.%s[%r] already exists and is overwritten.", attr, key)
    store[key] = data


def select_spots(adata: AnnData, spots: Any, in_library: np.ndarray, library_id: str) -> np.ndarray:
    """Boolean mask of the chosen ``spots`` (a mask or barcodes) within the library ``in_library`` marks.

    ``None`` chooses every spot of the library; barcodes of another library are a ``ValueError``,
    unknown barcodes a ``KeyError``.
    """
    if spots is None:
        return in_library
    if isinstance(spots, str):
        spots = [spots]
    if isinstance(spots, pd.Series) and spots.dtype == bool:
        if set(spots.index) == set(adata.obs_names):
            spots = spots.reindex(adata.obs_names)
        spots = spots.to_numpy()
    arr = np.asarray(spots) if not isinstance(spots, set | frozenset) else np.asarray(sorted(spots, key=str))
    if arr.dtype == bool:
        if arr.shape != (adata.n_obs,):
            raise ValueError(
                f"spots as a boolean mask must have one value per spot ({adata.n_obs}), got shape {arr.shape}."
            )
        return in_library & arr
    barcodes = pd.Index(arr.ravel().tolist())
    unknown = barcodes.difference(adata.obs_names)
    if len(unknown):
        raise KeyError(
            f"{len(unknown)} of the {len(barcodes)} spots are not barcodes of adata.obs_names "
            f"(e.g. {list(unknown[:5])}); pass barcodes, a pandas Index of them or a boolean mask."
        )
    mask = adata.obs_names.isin(barcodes)
    elsewhere = mask & ~in_library
    if elsewhere.any():
        raise ValueError(
            f"{int(elsewhere.sum())} of the spots belong to another library than {library_id!r} "
            f"(e.g. {list(adata.obs_names[elsewhere][:5])}); write one file per library."
        )
    return mask
