"""Platt calibration of the logit margin: fitted by :func:`kgl.tl.train`, applied there and by classify_spots."""

from __future__ import annotations

import numpy as np

__all__ = ["GLOMERULUS_COLUMN", "calibrated_proba", "fit_calibration"]

#: Logit column of the glomerulus class in kgl's models (``kgl.models.CLASS_NAMES = ("other", "glomerulus")``;
#: written out here so that calibration needs no torch import).
GLOMERULUS_COLUMN = 1


def _margin(logits: np.ndarray, positive: int) -> np.ndarray:
    """``l_pos - l_neg`` of 2-class logits, in their dtype."""
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] != 2:
        raise ValueError(f"Calibration needs 2-class logits of shape (n, 2), got shape {logits.shape}.")
    if positive not in (0, 1):
        raise ValueError(f"positive must be the column 0 or 1 of the 2-class logits, got {positive!r}.")
    return logits[:, positive] - logits[:, 1 - positive]


def fit_calibration(logits: np.ndarray, labels: np.ndarray, *, positive: int = GLOMERULUS_COLUMN) -> dict[str, float]:
    """Platt scaling of the logit margin: ``p = sigmoid((l_pos - l_neg) / T + b)``, fitted on validation.

    A temperature ``T`` (Guo et al. 2017) plus a bias ``b``: the bias undoes the 50/50 prior that
    class-balanced sampling teaches the model, the temperature its over/under-confidence. Two
    parameters, minimised NLL (scipy); the ranking of samples (ROC-AUC) is unchanged. ``labels`` are
    1 for the class in logit column ``positive`` (by default the glomerulus column).
    """
    from scipy.optimize import minimize

    z = _margin(logits, positive)
    y = np.asarray(labels, dtype=float)

    def nll(params: np.ndarray) -> float:
        t = z / np.exp(params[0]) + params[1]
        return float(np.mean(np.logaddexp(0.0, t) - y * t))

    res = minimize(nll, x0=np.zeros(2), method="L-BFGS-B", bounds=[(np.log(0.05), np.log(20.0)), (-10.0, 10.0)])
    return {"temperature": float(np.exp(res.x[0])), "logit_bias": float(res.x[1])}


def calibrated_proba(
    logits: np.ndarray, temperature: float = 1.0, logit_bias: float = 0.0, *, positive: int = GLOMERULUS_COLUMN
) -> np.ndarray:
    """Probability of the class in logit column ``positive`` after :func:`fit_calibration`.

    ``sigmoid((l_pos - l_neg) / temperature + logit_bias)`` of 2-class ``logits`` ``(n, 2)``, computed
    in the logits' dtype; ``positive`` defaults to the glomerulus column of ``kgl.models.CLASS_NAMES``
    (for a model with other class names: ``config["class_names"].index(config["positive_class"])``).
    """
    from scipy.special import expit

    return expit(_margin(logits, positive) / temperature + logit_bias)
