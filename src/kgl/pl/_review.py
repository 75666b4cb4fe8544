"""A gallery of spot patches for manual review: the most confident and the most uncertain calls per class."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kgl._docs import d
from kgl._utils import SPOT_DIAMETER_UM, obs_labels, reviewed_labels

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

__all__ = ["review_gallery"]

_DEFAULT_PATCH_UM = 110.0
_DEFAULT_THRESHOLD = 0.5


def _pick(order_margin: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into the class's spots) of the most confident and the most uncertain, disjoint.

    ``order_margin`` is ``|p - threshold|``. With fewer than ``2 n`` spots, they are split between
    the two rows rather than shown twice.
    """
    k = len(order_margin)
    order = np.argsort(-order_margin, kind="stable")  # most confident first
    n_unc = min(n, k // 2) if k < 2 * n else n
    n_conf = min(n, k - n_unc)
    confident = order[:n_conf]
    uncertain = order[::-1][:n_unc]  # nearest the threshold first
    return confident, uncertain


def _ink(background: str) -> str:
    """Black or white text, whichever reads better on ``background``."""
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(background)
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.6 else "white"


def _tile(ax: Any, patch: np.ndarray, *, title: str, color: str, spot_r: float, note: str | None, note_color: str):
    from matplotlib.patches import Circle

    size = patch.shape[0]
    ax.imshow(patch, interpolation="lanczos" if size < 96 else "antialiased")
    c = (size - 1) / 2
    ax.add_patch(Circle((c, c), spot_r, fill=False, ec="black", lw=0.9, ls=(0, (3, 2)), alpha=0.7))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(2.5)
    ax.set_title(title, fontsize=6.5, pad=2)
    if note:
        ax.text(
            0.5,
            0.03,
            note,
            transform=ax.transAxes,
            ha="center",
            va="bottom",
            fontsize=6,
            color=_ink(note_color),
            fontweight="bold",
            bbox={"boxstyle": "round,pad=0.2", "fc": note_color, "ec": "none", "alpha": 0.9},
        )


@d.dedent
def review_gallery(
    adata: AnnData,
    *,
    key: str = "glomerulus",
    library_id: str | None = None,
    n: int = 8,
    patch_um: float | None = None,
    spots: Any = None,
    size: int = 160,
    img_key: str | None = None,
    spatial_key: str = "spatial",
    library_key: str = "library_id",
    figsize: tuple[float, float] | None = None,
    dpi: int = 150,
    save: str | os.PathLike | None = None,
) -> Any:
    """Spot patches to review: for each class, its most confident and its most uncertain calls.

    One row of ``n`` tiles per class for the spots called that class (``obs[key]``) with the
    probability farthest from the threshold ("most confident"), and one for those nearest it
    ("most uncertain"); the two rows never show the same spot. Each tile is the tissue of side
    ``patch_um`` around the spot, with the 55-µm capture spot dashed, a frame in the class's colour
    and the barcode and probability on top. Spots already reviewed (:func:`kgl.tl.apply_review`) are
    marked with their reviewed label (:func:`kgl._utils.reviewed_labels`), in the reviewed class's
    colour, and "changed" when it differs from the call. Export the spots you want to check with
    :func:`kgl.io.write_review`.

    Parameters
    ----------
    adata
        AnnData annotated by :func:`kgl.tl.classify_spots` (``obs[key]``, ``obs[f"{key}_proba"]``).
    key
        The ``key_added`` used by :func:`~kgl.tl.classify_spots`.
    %(library_id)s
    n
        Tiles per row.
    patch_um
        Side of each tile in µm; default: the classifier's (``uns[key]["params"]["patch_um"]``), else 110.
    spots
        Choose among these spots only: a boolean mask over ``adata.obs`` (e.g.
        ``adata.obs["in_tissue"] == 1``) or barcodes, as in :func:`kgl.io.write_review`.
    size
        Side of each tile in pixels.
    %(img_key)s
    %(spatial_key)s
    %(library_key)s
    figsize, dpi
        Size of the figure (default: from ``n`` and the number of rows) and resolution of the saved one.
    save
        Write the figure there (PNG/PDF by suffix), atomically.

    Returns
    -------
    The tiles' :class:`~matplotlib.axes.Axes`, an array of (rows, ``n``) as ``plt.subplots`` gives
    (two rows per class: most confident, most uncertain); ``axes[0, 0].figure`` is the figure.

    Raises
    ------
    KeyError
        ``obs[key]`` or ``obs[f"{key}_proba"]`` missing, unknown ``library_id`` or barcodes in ``spots``.
    ValueError
        Several libraries and no ``library_id``; ``n`` not a positive integer; no classified spot.

    Examples
    --------
    >>> kgl.pl.review_gallery(adata, n=6, save="review.png")  # doctest: +SKIP

    """
    import matplotlib.pyplot as plt

    from kgl._utils import class_colors
    from kgl._validators import check_int, one_library, select_spots
    from kgl.im import SpotPatchDataset, spot_sets
    from kgl.pl._utils import save_figure

    n = check_int(n, "n", what="tiles per row")
    labels = obs_labels(adata, key, need_proba=True)
    final = reviewed_labels(adata, key)
    lib0 = one_library(adata, library_id, spatial_key=spatial_key)
    params = (adata.uns.get(key) or {}).get("params", {}) if isinstance(adata.uns.get(key), dict) else {}
    if patch_um is None:
        patch_um = float(params.get("patch_um") or _DEFAULT_PATCH_UM)
    threshold = params.get("threshold")
    threshold = _DEFAULT_THRESHOLD if threshold is None else float(threshold)
    (sset,) = spot_sets(adata, library_id=lib0, img_key=img_key, spatial_key=spatial_key, library_key=library_key)
    lib = sset.library_id
    ds = SpotPatchDataset(sset, patch_um=patch_um, size=size)

    proba = np.asarray(adata.obs[f"{key}_proba"], dtype=np.float64)[sset.index]
    called = labels.to_numpy()[sset.index]
    chosen = select_spots(adata, spots, np.ones(adata.n_obs, dtype=bool), lib)[sset.index]
    ok = np.isfinite(proba) & pd.notna(called) & chosen
    if not ok.any():
        raise ValueError(
            f"No {'chosen ' if spots is not None else ''}spot of library {lib!r} has a call in obs[{key!r}] and a "
            "probability."
        )
    rkey = f"{key}_reviewed"
    reviewed = adata.obs[rkey].to_numpy()[sset.index] if rkey in adata.obs else np.full(len(proba), np.nan)
    after = final.to_numpy()[sset.index]
    categories = [str(c) for c in labels.cat.categories]
    colors = {c: "#{:02x}{:02x}{:02x}".format(*rgb) for c, rgb in class_colors(adata, key, categories).items()}

    rows: list[tuple[str, np.ndarray]] = []  # (row label, local positions into the library's spots)
    for cls in reversed(categories):  # the positive class (last category) first
        members = np.flatnonzero(ok & (called.astype(object) == cls))
        confident, uncertain = _pick(np.abs(proba[members] - threshold), n)
        rows.append((f"most confident\n{cls}", members[confident]))
        rows.append((f"most uncertain\n{cls}", members[uncertain]))

    wanted = np.unique(np.concatenate([r for _, r in rows])).astype(np.int64)
    patches = dict(zip(wanted.tolist(), ds.read_chunk(wanted)[0], strict=True)) if len(wanted) else {}
    spot_r = SPOT_DIAMETER_UM / 2.0 / patch_um * size

    if figsize is None:
        figsize = (1.45 * n + 0.9, 1.75 * len(rows) + 0.5)
    fig = plt.figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (row_label, members) in enumerate(rows):
        for j in range(n):
            ax = axes[r, j]
            if j >= len(members):  # an empty cell: no frame, but the row label stays visible
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if j == 0:
                    ax.text(0.5, 0.5, "no spots", ha="center", va="center", fontsize=7, color="0.4")
                continue
            i = int(members[j])
            call = str(called[i])
            note, note_color = None, "0.3"
            if pd.notna(reviewed[i]):
                rv = str(after[i])
                note = f"reviewed: {rv}" if rv == call else f"changed → {rv}"
                note_color = colors.get(rv, "0.3") if rv == call else "black"
            _tile(
                ax,
                patches[i],
                title=f"{adata.obs_names[sset.index[i]]}\np = {proba[i]:.3f}",
                color=colors.get(call, "0.5"),
                spot_r=spot_r,
                note=note,
                note_color=note_color,
            )
        axes[r, 0].set_ylabel(row_label, fontsize=8)
    n_rev = int((pd.notna(reviewed) & ok).sum())
    fig.suptitle(
        f"{key}: review gallery, library {lib!r} ({int(ok.sum()):,} spots, threshold {threshold:g}, "
        f"{patch_um:g}-µm tiles, dashed: 55-µm spot{f', {n_rev} reviewed' if n_rev else ''})",
        fontsize=9,
    )
    save_figure(fig, save, dpi=dpi)
    return axes
