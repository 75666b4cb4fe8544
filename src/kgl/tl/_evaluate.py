"""Evaluate glomerulus probabilities: classification metrics, calibration and threshold choice (scikit-learn)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kgl._docs import d
from kgl._logging import logger
from kgl._metrics import calibration_table, check_inputs, ece
from kgl._spatialdata import accepts_spatialdata

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["calibration_table", "choose_threshold", "evaluate", "evaluate_spots"]

_THRESHOLD_METRICS = ("f1", "youden", "balanced_accuracy")


def evaluate(y_true: Any, proba: Any, *, threshold: float = 0.5, n_bins: int = 10) -> dict[str, Any]:
    """Classification and calibration metrics of glomerulus probabilities.

    A sample is called glomerulus when ``proba > threshold``, exactly as in :func:`kgl.tl.classify_spots`.
    Every metric comes from :mod:`sklearn.metrics` except the expected calibration error, which is
    computed here (equal-width bins, weighted by bin counts; see :func:`calibration_table`).

    Parameters
    ----------
    y_true
        True labels, 1 (or ``True``) for glomerulus.
    proba
        Predicted probability of glomerulus, in ``[0, 1]``, without NaN.
    threshold
        Decision threshold on ``proba``; choose it on validation data (:func:`choose_threshold`).
    n_bins
        Equal-width probability bins for the ECE.

    Returns
    -------
    A JSON-serialisable dict of Python floats/ints: ``accuracy``, ``balanced_accuracy``, ``precision``,
    ``recall`` (sensitivity), ``specificity``, ``f1``, ``roc_auc``, ``pr_auc`` (average precision),
    ``brier``, ``ece``, ``confusion_matrix`` (``[[tn, fp], [fn, tp]]``), ``n``, ``n_pos``, ``n_neg``,
    ``threshold`` and ``n_bins``. Precision, recall and F1 are 0 when their denominator is 0.
    With a single class present, ``roc_auc`` and ``pr_auc`` are NaN (a warning is logged).

    Raises
    ------
    ValueError
        Empty input, different lengths, labels other than 0/1, probabilities outside ``[0, 1]`` or NaN.

    """
    from sklearn import metrics as skm

    y, p = check_inputs(y_true, proba)
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}.")
    pred = (p > threshold).astype(np.int8)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    (tn, fp), (fn, tp) = skm.confusion_matrix(y, pred, labels=[0, 1]).tolist()
    prf = {"zero_division": 0.0}
    if n_pos and n_neg:
        roc_auc = float(skm.roc_auc_score(y, p))
        pr_auc = float(skm.average_precision_score(y, p))
    else:
        logger.warning(
            "Only %s present among %d samples: roc_auc and pr_auc are undefined (NaN).",
            "glomeruli" if n_pos else "non-glomeruli",
            len(y),
        )
        roc_auc = pr_auc = float("nan")
    with warnings.catch_warnings():  # balanced accuracy with one class in y_true warns; the value is still defined
        warnings.simplefilter("ignore", UserWarning)
        bacc = float(skm.balanced_accuracy_score(y, pred))
    return {
        "n": len(y),
        "n_pos": n_pos,
        "n_neg": n_neg,
        "threshold": threshold,
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": bacc,
        "precision": float(skm.precision_score(y, pred, labels=[0, 1], **prf)),
        "recall": float(skm.recall_score(y, pred, labels=[0, 1], **prf)),
        "specificity": float(tn / n_neg) if n_neg else float("nan"),
        "f1": float(skm.f1_score(y, pred, labels=[0, 1], **prf)),
        "roc_auc": roc_auc,
        "pr_auc": pr_auc,
        "brier": float(skm.brier_score_loss(y, p, pos_label=1)),
        "ece": ece(y, p, n_bins),
        "n_bins": int(n_bins),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


def choose_threshold(
    y_true: Any, proba: Any, *, metric: str = "f1", grid: Iterable[float] | np.ndarray | None = None
) -> float:
    """The decision threshold that maximises a metric on **validation** data.

    Choose the threshold on the validation split only and then report test metrics at that fixed
    threshold: choosing it on the test split makes the test metrics optimistic.

    Parameters
    ----------
    y_true
        Validation labels, 1 (or ``True``) for glomerulus; both classes must be present.
    proba
        Validation probabilities of glomerulus, in ``[0, 1]``.
    metric
        ``"f1"``, ``"youden"`` (TPR − FPR) or ``"balanced_accuracy"`` ((TPR + TNR) / 2). The last two
        differ by an affine map and pick the same threshold.
    grid
        Candidate thresholds in ``[0, 1]``. By default 0.5 and the midpoints between consecutive distinct
        values of 0, the probabilities and 1, i.e. one threshold per distinct decision rule.

    Returns
    -------
    The threshold ``t`` (samples with ``proba > t`` are called glomerulus, as in
    :func:`kgl.tl.classify_spots`). Among thresholds scoring equally, the one closest to 0.5 wins
    (the smaller on an exact tie), so the result is deterministic and separable data give 0.5
    whenever 0.5 separates them.

    """
    y, p = check_inputs(y_true, proba)
    if metric not in _THRESHOLD_METRICS:
        raise ValueError(f"metric must be one of {list(_THRESHOLD_METRICS)}, got {metric!r}.")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if not n_pos or not n_neg:
        raise ValueError(f"choose_threshold needs both classes in y_true; got {n_pos} glomeruli and {n_neg} others.")
    if grid is None:  # one representative per distinct decision rule: the midpoints of [0, 1] cut at every proba
        u = np.unique(np.concatenate([[0.0], p, [1.0]]))
        cand = np.unique(np.concatenate([[0.5], (u[:-1] + u[1:]) / 2]))
    else:
        cand = np.unique(np.asarray(list(grid) if not isinstance(grid, np.ndarray) else grid, dtype=float).ravel())
        if cand.size == 0 or np.isnan(cand).any() or cand.min() < 0 or cand.max() > 1:
            raise ValueError("grid must be a non-empty sequence of thresholds in [0, 1] without NaN.")
    pos = np.sort(p[y == 1])
    neg = np.sort(p[y == 0])
    tp = n_pos - np.searchsorted(pos, cand, side="right")  # positives with p > t
    fp = n_neg - np.searchsorted(neg, cand, side="right")
    fn = n_pos - tp
    if metric == "f1":
        denom = 2 * tp + fp + fn
        score = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    else:
        tpr, fpr = tp / n_pos, fp / n_neg
        score = tpr - fpr if metric == "youden" else (tpr + 1 - fpr) / 2
    best = np.flatnonzero(score >= score.max() - 1e-12)
    dist = np.abs(cand[best] - 0.5)
    winners = best[dist <= dist.min() + 1e-12]
    t = float(cand[winners].min())
    n_called = int(tp[cand == t][0] + fp[cand == t][0])
    if n_called in (0, len(y)):
        logger.warning(
            "The %s-optimal threshold %.3g calls %s sample glomerulus: the probabilities do not separate the "
            "classes (an untrained or failed model?).",
            metric,
            t,
            "no" if n_called == 0 else "every",
        )
    return t


@accepts_spatialdata("table")
@d.dedent
def evaluate_spots(
    adata: AnnData | SpatialData,
    *,
    key: str = "glomerulus",
    truth_key: str = "glomerulus_coverage",
    pos_min: float = 0.5,
    neg_max: float = 0.0,
    threshold: float | None = None,
    n_bins: int = 10,
    table_name: str | None = None,
) -> dict[str, Any]:
    """Spot-level evaluation of :func:`kgl.tl.classify_spots` against a ground-truth glomerulus coverage.

    For data with known coverage per spot, such as :func:`kgl.datasets.pseudo_visium`. Spots with
    coverage ``>= pos_min`` are positives, those with coverage ``<= neg_max`` negatives; spots in
    between are ambiguous and excluded, as are spots without a probability (libraries that were not
    classified) or without ground truth. All exclusions are counted in the result.

    Parameters
    ----------
    adata
        AnnData annotated by :func:`kgl.tl.classify_spots` (or a SpatialData whose table is).
    key
        The ``key_added`` of :func:`~kgl.tl.classify_spots`: probabilities are read from
        ``obs[f"{key}_proba"]`` and the threshold from ``uns[key]["params"]["threshold"]``.
    truth_key
        ``obs`` column with the fraction of each spot covered by glomeruli, in ``[0, 1]``.
    pos_min
        Minimum coverage of a positive spot.
    neg_max
        Maximum coverage of a negative spot (0: no glomerulus at all under the spot).
    threshold
        Decision threshold; the one used by :func:`~kgl.tl.classify_spots` by default.
    n_bins
        Probability bins for the ECE.
    %(table_name)s

    Returns
    -------
    The dict of :func:`evaluate` on the retained spots, plus ``n_spots`` (all spots),
    ``n_unclassified`` (NaN probability), ``n_no_truth`` (classified, NaN coverage), ``n_ambiguous``
    (classified, coverage strictly between ``neg_max`` and ``pos_min``), ``pos_min``, ``neg_max``,
    ``key`` and ``truth_key``. The exclusions are disjoint:
    ``n_spots == n + n_unclassified + n_no_truth + n_ambiguous``.

    """
    if table_name is not None:
        raise ValueError("table_name is only for a SpatialData object; adata is an AnnData.")
    proba_key = f"{key}_proba"
    missing = [k for k in (proba_key, truth_key) if k not in adata.obs]
    if missing:
        hint = (f" Run kgl.tl.classify_spots(adata, key_added={key!r}) first." if proba_key in missing else "") + (
            " The ground truth comes from kgl.datasets.pseudo_visium." if truth_key in missing else ""
        )
        raise KeyError(f"adata.obs has no column(s) {missing}.{hint} Available obs columns: {list(adata.obs.columns)}.")
    pos_min, neg_max = float(pos_min), float(neg_max)
    if not 0.0 <= neg_max < pos_min <= 1.0:
        raise ValueError(f"Need 0 <= neg_max < pos_min <= 1, got neg_max={neg_max!r} and pos_min={pos_min!r}.")
    if threshold is None:
        try:
            threshold = float(adata.uns[key]["params"]["threshold"])
        except (KeyError, TypeError):
            raise KeyError(
                f"No threshold in adata.uns[{key!r}]['params']['threshold'] (uns keys: {sorted(adata.uns.keys())}); "
                "pass threshold= explicitly."
            ) from None
    cov = pd.to_numeric(adata.obs[truth_key], errors="coerce").to_numpy(dtype=float)
    proba = pd.to_numeric(adata.obs[proba_key], errors="coerce").to_numpy(dtype=float)
    known = ~np.isnan(cov)
    if known.any() and (cov[known].min() < 0 or cov[known].max() > 1):
        raise ValueError(
            f"obs[{truth_key!r}] must be a coverage fraction in [0, 1], got values in "
            f"[{cov[known].min():.4g}, {cov[known].max():.4g}]."
        )
    classified = ~np.isnan(proba)
    positive = known & (cov >= pos_min)
    negative = known & (cov <= neg_max)
    ambiguous = known & ~positive & ~negative
    keep = classified & (positive | negative)
    counts = {  # disjoint: n_spots = n + n_unclassified + n_no_truth + n_ambiguous
        "n_spots": int(adata.n_obs),
        "n_unclassified": int((~classified).sum()),
        "n_no_truth": int((classified & ~known).sum()),
        "n_ambiguous": int((classified & ambiguous).sum()),
    }
    if not keep.any():
        raise ValueError(
            f"No spot left to evaluate: of {counts['n_spots']} spots, {counts['n_unclassified']} have no "
            f"probability, {counts['n_ambiguous']} are ambiguous ({neg_max} < coverage < {pos_min}) and "
            f"{counts['n_no_truth']} have no ground truth."
        )
    res = evaluate(positive[keep], proba[keep], threshold=threshold, n_bins=n_bins)
    res.update(counts)
    res.update({"pos_min": pos_min, "neg_max": neg_max, "key": key, "truth_key": truth_key})
    logger.debug(
        "evaluate_spots: %d spots evaluated, %d ambiguous, %d unclassified excluded",
        res["n"],
        counts["n_ambiguous"],
        counts["n_unclassified"],
    )
    return res
