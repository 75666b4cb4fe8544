"""Test-time adaptation to one capture area, without labels.

- :func:`adapt_batchnorm` (AdaBN, Li et al. 2016): re-estimate every BatchNorm layer's running
  mean and variance on the sample's own patches, so the features are normalised for that stain
  and scanner instead of the training set's.
- :func:`prior_shift` (Saerens, Latinne & Decaestecker 2002): EM re-estimation of the glomerulus
  prior of a sample and the correspondingly adjusted posteriors, from calibrated probabilities.
- :func:`expected_f1_threshold`: the threshold that maximises the F1 expected under calibrated
  probabilities of the sample itself (a plug-in rule; Nan et al. 2012), instead of the threshold
  chosen on the training site's validation set.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["adapt_batchnorm", "expected_f1_threshold", "prior_shift"]


def adapt_batchnorm(model: Any, batches: Iterable[Any], *, device: Any = "cpu", amp: Any = None) -> Any:
    """A copy of ``model`` whose BatchNorm statistics are re-estimated on ``batches`` (AdaBN).

    Every BatchNorm layer's ``running_mean`` / ``running_var`` is reset and replaced by the
    cumulative average over all the patches (``momentum=None``), in one pass without gradients;
    weights, biases and every other buffer stay as they were. ``model`` itself is not changed.

    Parameters
    ----------
    model
        A :class:`~kgl.models.GlomClassifier` (its ``config`` gives the input normalisation).
    batches
        ``uint8`` RGB patches ``(B, H, W, 3)`` (arrays or tensors), e.g. the sample's spot patches.
    device
        Where to run the pass.
    amp
        Autocast dtype (``torch.bfloat16``) or ``None`` for fp32.

    Returns
    -------
    The adapted copy, in eval mode, with ``config["adapted_bn"] = {"n_patches": ...}``.

    """
    import copy

    import torch
    from torch import nn

    from kgl.tl._device import normalise_uint8, normaliser, resolve_device

    dev = resolve_device(device)
    out = copy.deepcopy(model).to(dev).eval()
    bns = [m for m in out.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError(f"{type(model.backbone).__name__} has no BatchNorm layer to adapt.")
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every patch counts the same
        m.train()
    pre = out.spec.preprocessing
    mean, std = normaliser(pre, dev)
    grey = pre.greyscale
    n = 0
    with torch.no_grad(), torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
        for x in batches:
            x = torch.as_tensor(np.asarray(x)).to(dev)
            if x.shape[0] < 2:  # BatchNorm needs two values per channel; a lone patch adds little
                continue
            out.forward_features(normalise_uint8(x, mean, std, greyscale=grey))
            n += int(x.shape[0])
    if n == 0:
        raise ValueError("adapt_batchnorm got no batch of at least 2 patches.")
    for m in bns:
        m.momentum = 0.1
        m.eval()
    out.config = {**out.config, "adapted_bn": {"n_patches": n}}
    return out


def prior_shift(proba: Any, train_prior: float, *, max_iter: int = 200, tol: float = 1e-8) -> tuple[np.ndarray, float]:
    """EM estimate of a sample's positive-class prior, and its posteriors (Saerens et al. 2002).

    ``proba`` are calibrated probabilities under the training prior ``train_prior``. Each EM
    step reweights them by the ratio of the current prior estimate to the training prior,
    ``p' = r₁ p / (r₁ p + r₀ (1 − p))`` with ``r₁ = π'/π`` and ``r₀ = (1 − π')/(1 − π)``,
    and sets ``π'`` to the mean of ``p'``, until ``π'`` moves by less than ``tol``.

    Returns
    -------
    ``(adjusted probabilities, estimated prior)``; NaNs stay NaN and are ignored.

    """
    p = np.asarray(proba, dtype=np.float64)
    if not 0.0 < float(train_prior) < 1.0:
        raise ValueError(f"train_prior must be in (0, 1), got {train_prior!r}.")
    ok = np.isfinite(p)
    if not ok.any():
        raise ValueError("prior_shift needs at least one finite probability.")
    pi0 = float(train_prior)
    q = np.clip(p[ok], 1e-12, 1 - 1e-12)
    pi = float(q.mean())
    adj = q
    for _ in range(int(max_iter)):
        r1, r0 = pi / pi0, (1.0 - pi) / (1.0 - pi0)
        adj = r1 * q / (r1 * q + r0 * (1.0 - q))
        new = float(adj.mean())
        if abs(new - pi) < tol:
            pi = new
            break
        pi = new
    out = np.full_like(p, np.nan)
    out[ok] = adj
    return out, pi


def expected_f1_threshold(proba: Any) -> float:
    """The threshold maximising the F1 expected under calibrated probabilities, from them alone.

    Calling the ``k`` most probable spots gives an expected F1 of about
    ``2 · Σ_{i≤k} p_i / (k + Σ_i p_i)``; the best ``k`` sets the threshold between the ``k``-th and
    ``k+1``-th probability. Needs no labels, so it follows each sample's own distribution.
    """
    p = np.asarray(proba, dtype=np.float64)
    p = np.sort(p[np.isfinite(p)])[::-1]
    if len(p) == 0:
        raise ValueError("expected_f1_threshold needs at least one finite probability.")
    total = p.sum()
    if total <= 0:
        return 1.0
    k = np.arange(1, len(p) + 1)
    ef1 = 2.0 * np.cumsum(p) / (k + total)
    best = int(np.argmax(ef1))
    below = p[best + 1] if best + 1 < len(p) else 0.0
    return float((p[best] + below) / 2.0)
