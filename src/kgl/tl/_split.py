"""Train/validation/test splits by group (biopsy, patient): patches of one group never cross splits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from kgl._logging import logger

__all__ = ["check_no_leakage", "split_by_group"]

_NAMES = {2: ("train", "test"), 3: ("train", "val", "test")}


def _assign(
    sizes: np.ndarray, targets: np.ndarray, weights: np.ndarray, active: np.ndarray, order: np.ndarray
) -> np.ndarray:
    """Greedy: each group (in ``order``) to the active split whose squared deviation from target grows least."""
    n_splits = targets.shape[0]
    filled = np.zeros_like(targets)
    out = np.empty(len(sizes), dtype=np.int64)
    allowed = np.flatnonzero(active)
    for g in order:
        dev_now = filled[allowed] - targets[allowed]
        dev_new = dev_now + sizes[g]
        delta = ((dev_new**2 - dev_now**2) * weights).sum(axis=1)
        s = int(allowed[int(np.argmin(delta))])
        out[g] = s
        filled[s] += sizes[g]
    # never leave an active split empty while another split has several groups
    for s in allowed:
        if (out == s).any():
            continue
        counts = np.bincount(out, minlength=n_splits)
        donor = int(np.argmax(counts))
        if counts[donor] < 2:
            break
        members = np.flatnonzero(out == donor)
        out[members[np.argmin(sizes[members, 0])]] = s
    return out


def _cost(
    assign: np.ndarray,
    sizes: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    active: np.ndarray,
    need: np.ndarray,
) -> float:
    n_splits = targets.shape[0]
    filled = np.zeros_like(targets)
    np.add.at(filled, assign, sizes)
    cost = float((((filled - targets) ** 2) * weights).sum())
    cost += 1e3 * float((active & (np.bincount(assign, minlength=n_splits) == 0)).sum())
    # a stratum that has enough groups should appear in every active split
    present = filled[:, 1:] > 0
    cost += float((~present[active][:, need]).sum())
    return cost


def split_by_group(
    df: pd.DataFrame,
    *,
    group_key: str = "group",
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    stratify_key: str | None = None,
) -> pd.Series:
    """Assign every row to ``train`` / ``val`` / ``test`` so that no group is split across them.

    Groups (biopsies, patients) are assigned whole. Among many random group orders (seeded), each
    greedily filled into the split furthest below its target, the assignment closest to the
    requested fractions of *rows* is kept; with ``stratify_key`` it is also close to the
    requested fractions within every stratum (e.g. stain), and every split gets every stratum
    that has at least as many groups as there are splits.
    Written by hand rather than with scikit-learn's ``GroupShuffleSplit`` (two splits whose size is a
    fraction of *groups*, not rows, with no strata) or ``StratifiedGroupKFold`` (k equal folds, so no
    70/15/15, balancing one class label only): this one splits train/val/test at once to row fractions
    within every stratum, never leaves a requested split empty, puts every stratum with enough groups
    in every split, and depends only on ``seed`` through NumPy's generator, not on scikit-learn's version.

    Parameters
    ----------
    df
        Any table with a group column: a patch table (:func:`kgl.im.sample_patches`, fractions of
        patches) or a slide table (fractions of slides).
    group_key
        Column naming the group of each row.
    fractions
        ``(train, val, test)`` or ``(train, test)`` fractions of rows, summing to 1; a 0 leaves
        that split empty.
    seed
        Seed of the group orders; the same seed gives the same split.
    stratify_key
        Column to balance across splits (a group may hold several of its values).

    Returns
    -------
    Categorical :class:`pandas.Series` named ``split`` with the index of ``df``.

    Raises
    ------
    ValueError
        Fewer groups than (non-empty) splits, missing groups, or fractions that are negative or do
        not sum to 1.

    """
    if group_key not in df.columns:
        raise KeyError(f"Group column {group_key!r} not in the table (columns: {list(df.columns)}).")
    fr = np.asarray(fractions, dtype=float)
    if fr.ndim != 1 or len(fr) not in _NAMES:
        raise ValueError(f"fractions must be (train, val, test) or (train, test), got {tuple(fractions)!r}.")
    if (fr < 0).any() or not np.isfinite(fr).all() or abs(fr.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {tuple(fractions)!r} (sum {fr.sum():.6g}).")
    names = _NAMES[len(fr)]
    groups = df[group_key]
    if groups.isna().any():
        raise ValueError(f"{int(groups.isna().sum())} row(s) have no {group_key!r}; every row needs a group.")
    active = fr > 0
    codes, uniques = pd.factorize(groups.astype(str), sort=True)
    n_groups = len(uniques)
    if n_groups < int(active.sum()):
        raise ValueError(
            f"{n_groups} group(s) in {group_key!r} cannot fill {int(active.sum())} splits "
            f"{[n for n, a in zip(names, active, strict=True) if a]} without splitting a group."
        )

    # sizes[g] = (rows, rows per stratum...); weights normalise each column by its total
    if stratify_key is not None:
        if stratify_key not in df.columns:
            raise KeyError(f"stratify_key {stratify_key!r} not in the table (columns: {list(df.columns)}).")
        strata = pd.crosstab(codes, df[stratify_key].astype(str).to_numpy()).reindex(range(n_groups), fill_value=0)
        sizes = np.column_stack([strata.sum(axis=1).to_numpy(), strata.to_numpy()]).astype(float)
    else:
        sizes = np.bincount(codes, minlength=n_groups).astype(float)[:, None]
    totals = sizes.sum(axis=0)
    weights = 1.0 / totals**2
    if sizes.shape[1] > 1:
        weights[1:] /= sizes.shape[1] - 1
    targets = fr[:, None] * totals[None, :]
    need = (sizes[:, 1:] > 0).sum(axis=0) >= int(active.sum())

    rng = np.random.default_rng(seed)
    restarts = int(np.clip(20000 // max(n_groups, 1), 20, 200))
    best, best_cost = None, np.inf
    for _ in range(restarts):
        assign = _assign(sizes, targets, weights, active, rng.permutation(n_groups))
        c = _cost(assign, sizes, targets, weights, active, need)
        if c < best_cost - 1e-12:
            best, best_cost = assign, c
    split = pd.Series(
        pd.Categorical(np.asarray(names, dtype=object)[best[codes]], categories=list(names)),
        index=df.index,
        name="split",
    )
    got = split.value_counts(normalize=True).reindex(list(names)).fillna(0.0)
    n_g = pd.Series(best).value_counts().reindex(range(len(names)), fill_value=0).to_numpy()
    logger.info(
        "split_by_group(%r): %s",
        group_key,
        ", ".join(f"{n} {got[n]:.1%} of rows ({k} groups)" for n, k in zip(names, n_g, strict=True)),
    )
    return split


def check_no_leakage(df: pd.DataFrame, split: str | Any = "split", group_key: str = "group") -> None:
    """Raise a :class:`ValueError` if any group appears in more than one split.

    Parameters
    ----------
    df
        Table with the group column.
    split
        Column name of the split in ``df``, or the split values aligned with its rows.
    group_key
        Column naming the group of each row.

    """
    if group_key not in df.columns:
        raise KeyError(f"Group column {group_key!r} not in the table (columns: {list(df.columns)}).")
    if isinstance(split, str):
        if split not in df.columns:
            raise KeyError(f"Split column {split!r} not in the table (columns: {list(df.columns)}).")
        values = df[split].to_numpy()
    else:
        values = np.asarray(split)
        if len(values) != len(df):
            raise ValueError(f"split has {len(values)} values for {len(df)} rows.")
    frame = pd.DataFrame({"g": df[group_key].to_numpy(), "s": values}).dropna()
    per_group = frame.groupby("g", sort=True)["s"].unique()
    leaks = per_group[per_group.map(len) > 1]
    if len(leaks):
        shown = "; ".join(f"{g!r} in {sorted(map(str, s))}" for g, s in list(leaks.items())[:10])
        raise ValueError(
            f"Leakage: {len(leaks)} {group_key!r} group(s) appear in more than one split: {shown}"
            + (" …" if len(leaks) > 10 else "")
        )
