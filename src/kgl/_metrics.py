"""Metric primitives shared by :mod:`kgl.tl` (which reports them) and :mod:`kgl.pl` (which draws them).

A low module of no room: input checks of labels and probabilities, the equal-width calibration
bins, the expected calibration error, and the ROC / precision-recall curves. Plots call these
instead of computing anything of their own, and tl's metrics and pl's figures agree by construction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from kgl._validators import check_int

__all__ = ["bin_ids", "calibration_table", "check_inputs", "ece", "roc_pr_curves"]


def check_inputs(y_true: Any, proba: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels (0/1 or bool) and probabilities; return them as ``int8`` and ``float64`` 1-D arrays."""
    y = np.asarray(y_true)
    p = np.asarray(proba)
    if y.ndim != 1 or p.ndim != 1:
        raise ValueError(
            f"y_true and proba must be 1-D (one value per sample), got shapes {y.shape} and {p.shape}. "
            "For a (n, 2) softmax output pass its positive column, proba[:, 1]."
        )
    if len(y) != len(p):
        raise ValueError(f"y_true and proba have different lengths: {len(y)} and {len(p)}.")
    if len(y) == 0:
        raise ValueError("Cannot evaluate an empty set: y_true and proba have no samples.")
    if y.dtype == bool:
        y = y.astype(np.int8)
    else:
        try:
            yf = y.astype(float)
        except (TypeError, ValueError):
            yf = None
        bad = yf is None or not np.all((yf == 0) | (yf == 1))
        if bad:
            shown = list(pd.unique(pd.Series(y.astype(object))))[:5]
            raise ValueError(
                f"y_true must hold 0/1 (or bool) labels, 1 = glomerulus; found values {shown}. "
                "Map class names first, e.g. y_true = (labels == 'glomerulus')."
            )
        y = yf.astype(np.int8)
    try:
        p = p.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"proba must be numeric probabilities, got dtype {p.dtype}.") from e
    n_nan = int(np.isnan(p).sum())
    if n_nan:
        first = int(np.flatnonzero(np.isnan(p))[0])
        raise ValueError(
            f"proba contains {n_nan} NaN value(s) (first at position {first}); drop unclassified samples first "
            "(evaluate_spots does this for spots of libraries that were not classified)."
        )
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(
            f"proba must be probabilities in [0, 1], got values in [{p.min():.4g}, {p.max():.4g}] "
            "(logits? apply a softmax/sigmoid first)."
        )
    return y, p


def bin_ids(proba: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each probability: bin ``i`` is ``[i/n, (i+1)/n)``, the last one includes 1."""
    check_int(n_bins, "n_bins")
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    return np.searchsorted(edges[1:-1], proba, side="right")


def ece(y: np.ndarray, p: np.ndarray, n_bins: int) -> float:
    """Expected calibration error over equal-width bins, weighted by bin counts (written here, not sklearn)."""
    ids = bin_ids(p, n_bins)
    sum_p = np.bincount(ids, weights=p, minlength=n_bins)
    sum_y = np.bincount(ids, weights=y, minlength=n_bins)
    return float(np.abs(sum_p - sum_y).sum() / len(p))  # = sum_b (n_b / n) |mean_p_b - frac_pos_b|


def calibration_table(y_true: Any, proba: Any, n_bins: int = 10) -> pd.DataFrame:
    """Reliability table: observed frequency of glomeruli per equal-width probability bin.

    Parameters
    ----------
    y_true
        True labels, 1 (or ``True``) for glomerulus.
    proba
        Predicted probability of glomerulus, in ``[0, 1]``.
    n_bins
        Number of equal-width bins over ``[0, 1]``; bin ``i`` is ``[i/n_bins, (i+1)/n_bins)``, the last
        one includes 1.

    Returns
    -------
    One row per bin (empty bins included, with ``count`` 0 and NaN means): ``bin``, ``lower``,
    ``upper``, ``mean_proba`` (mean predicted probability), ``frac_pos`` (fraction of true
    glomeruli) and ``count``. The count-weighted mean of ``|mean_proba - frac_pos|`` is the ECE
    reported by :func:`kgl.tl.evaluate`.

    """
    y, p = check_inputs(y_true, proba)
    ids = bin_ids(p, n_bins)
    n_bins = int(n_bins)
    count = np.bincount(ids, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(ids, weights=p, minlength=n_bins) / count
        frac = np.bincount(ids, weights=y, minlength=n_bins) / count
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return pd.DataFrame(
        {
            "bin": np.arange(n_bins),
            "lower": edges[:-1],
            "upper": edges[1:],
            "mean_proba": mean_p,
            "frac_pos": frac,
            "count": count.astype(np.int64),
        }
    )


def roc_pr_curves(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """ROC and precision-recall curves of checked labels / probabilities (:func:`check_inputs`), with their areas.

    Returns ``fpr``, ``tpr``, ``roc_auc``, ``precision``, ``recall``, ``average_precision`` and
    ``prevalence`` (scikit-learn's curves and areas, as :func:`kgl.tl.evaluate` reports them).
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    prec, rec, _ = precision_recall_curve(y, p)
    return {
        "fpr": fpr,
        "tpr": tpr,
        "roc_auc": float(roc_auc_score(y, p)),
        "precision": prec,
        "recall": rec,
        "average_precision": float(average_precision_score(y, p)),
        "prevalence": float(np.mean(y)),
    }
