"""Apply a manual review (a QuPath-edited :func:`kgl.io.write_review` file) to the spots' labels."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from kgl._logging import logger
from kgl._utils import obs_labels
from kgl._validators import check_unique_barcodes, save_data

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

__all__ = ["apply_review"]


def _barcode(name: str | None, barcode: str | None, obs_names: pd.Index) -> str | None:
    # QuPath shows and keeps `name`; a reviewer may rename an object, and then write_review's
    # `barcode` property still says which spot it is
    if name is not None and (name in obs_names or barcode is None):
        return name
    return barcode


def apply_review(
    adata: AnnData,
    review: str | os.PathLike | pd.DataFrame,
    *,
    key: str = "glomerulus",
    update: bool = False,
    copy: bool = False,
) -> AnnData | None:
    """Write the reviewed spot classes of a (QuPath-edited) review file into ``adata``.

    Features are matched to spots by barcode: ``properties.name`` (what QuPath shows and keeps),
    else ``properties.barcode``. The feature's ``classification.name`` is the reviewed label;
    features without a classification leave their spot unreviewed, and features without any
    barcode (e.g. outlines drawn in QuPath) are ignored with a warning.

    Parameters
    ----------
    adata
        AnnData annotated by :func:`kgl.tl.classify_spots` (``obs[key]``).
    review
        The GeoJSON file written by :func:`kgl.io.write_review` and edited in QuPath, or the table
        :func:`kgl.io.read_review` read from it.
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
      spots nobody reviewed. Functions that need labels (:func:`kgl.tl.glom_markers`, the plots)
      merge it over ``obs[key]``, so reviewed labels win downstream.
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
        ``review`` is a path that does not exist.

    Examples
    --------
    >>> kgl.tl.apply_review(adata, "review-edited.geojson")  # doctest: +SKIP
    >>> adata.obs["glomerulus_reviewed"].value_counts()  # doctest: +SKIP

    """
    from kgl.io import REVIEW_COLUMNS, read_review

    labels = obs_labels(adata, key, need_proba=False)
    check_unique_barcodes(adata)
    if key in adata.uns and not isinstance(adata.uns[key], dict):
        raise ValueError(f"adata.uns[{key!r}] is a {type(adata.uns[key]).__name__}, not a dict; cannot record review.")
    if isinstance(review, pd.DataFrame):
        missing = [c for c in REVIEW_COLUMNS if c not in review.columns]
        if missing:
            raise KeyError(
                f"review table lacks column(s) {missing}; it has {list(review.columns)}. "
                "Pass the review file's path, or the table kgl.io.read_review(path) returns."
            )
        table, source = review, str(review.attrs.get("path", "<table>"))
    else:
        table = read_review(review)
        source = table.attrs["path"]
    what = f"Review file {source!r}"
    categories = [str(c) for c in labels.cat.categories]

    reviewed: dict[str, str] = {}
    conflicts: list[str] = []
    unknown_barcodes: list[str] = []
    unknown_classes: set[str] = set()
    no_barcode = unclassified = 0
    for name, bc, cls in table[list(REVIEW_COLUMNS)].itertuples(index=False):
        barcode = _barcode(name, bc, adata.obs_names)
        if barcode is None:
            no_barcode += 1
            continue
        if barcode not in adata.obs_names:
            unknown_barcodes.append(barcode)
            continue
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
            f"{what} has {len(unknown_barcodes)} feature(s) whose barcode is not in "
            f"adata.obs_names (e.g. {unknown_barcodes[:5]}): is it the review file of this sample?"
        )
    if unknown_classes:
        raise ValueError(
            f"{what} uses class name(s) {sorted(unknown_classes)} that are not categories of "
            f"adata.obs[{key!r}]; allowed: {categories}. Rename the classes in QuPath (names are case-sensitive)."
        )
    if conflicts:
        raise ValueError(
            f"{what} classifies {len(set(conflicts))} barcode(s) differently in several features "
            f"(e.g. {sorted(set(conflicts))[:5]}); keep one feature per spot."
        )
    label = os.path.basename(source)
    if no_barcode:
        logger.warning(
            "%s: ignored %d feature(s) without a barcode (properties.name / properties.barcode), e.g. outlines "
            "drawn in QuPath.",
            label,
            no_barcode,
        )

    rkey = f"{key}_reviewed"
    values = pd.Series(np.nan, index=adata.obs_names, dtype=object)
    if update and rkey in adata.obs:
        values = adata.obs[rkey].astype(object).where(adata.obs[rkey].notna(), np.nan)
    if reviewed:
        values.loc[list(reviewed)] = list(reviewed.values())
    new = pd.Series(pd.Categorical(values.to_numpy(), categories=labels.cat.categories), index=adata.obs_names)
    done = new.notna()
    changed = done & (new.astype(object) != labels.astype(object)).to_numpy()
    summary = {"path": source, "n_reviewed": int(done.sum()), "n_changed": int(changed.sum())}

    if copy:
        adata = adata.copy()
    save_data(adata, attr="obs", key=rkey, data=new)
    uns = dict(adata.uns.get(key) or {})
    uns["review"] = summary
    adata.uns[key] = uns
    in_file = changed & new.index.isin(list(reviewed))
    moves = pd.crosstab(labels.astype(object)[in_file], new.astype(object)[in_file]).stack()
    detail = ", ".join(f"{int(n)} {a} → {b}" for (a, b), n in moves.items() if n > 0)
    logger.info(
        "Read %d reviewed label(s) from %s into obs[%r]: %d changed%s%s%s.",
        len(reviewed),
        label,
        rkey,
        int(in_file.sum()),
        f" ({detail})" if detail else "",
        f"; {unclassified} unclassified feature(s) left unreviewed" if unclassified else "",
        f"; {summary['n_reviewed']} reviewed in all (update=True)" if update else "",
    )
    return adata if copy else None
