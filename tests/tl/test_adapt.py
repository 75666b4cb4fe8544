"""Test-time adaptation: AdaBN, EM prior shift, the expected-F1 threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import kgl
from _kgl_fixtures import center_red_model, plant_markers
from kgl.models import GlomClassifier, build_model, model_config, state_dict_sha256


def _conv_bn(seed: int = 0) -> GlomClassifier:
    torch.manual_seed(seed)
    backbone = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    return GlomClassifier(backbone, 4, model_config("conv_bn", input_size=16, head_trained=True))


def _batches(seed: int = 0, n: int = 3, b: int = 8, size: int = 16):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_adabn_changes_only_batchnorm_statistics_and_not_the_callers_model():
    model = build_model("mobilenet_v2", weights=None, input_size=32).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sha = state_dict_sha256(model)
    adapted = kgl.tl.adapt_batchnorm(model, _batches(size=32))
    assert state_dict_sha256(model) == sha and not model.training  # the caller's model is untouched
    after = adapted.state_dict()
    assert set(after) == set(before)
    stats = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and set(changed) <= set(stats)  # weights and biases are the same
    assert any(k.endswith("running_mean") for k in changed) and any(k.endswith("running_var") for k in changed)
    assert not adapted.training and adapted.config["adapted_bn"] == {"n_patches": 24}


def test_adabn_statistics_are_those_of_the_target_patches():
    model = _conv_bn()
    batches = _batches(seed=1)
    adapted = kgl.tl.adapt_batchnorm(model, batches)
    from kgl.tl._device import normalise_uint8, normaliser

    mean, std = normaliser(model.spec.preprocessing, torch.device("cpu"))
    x = torch.cat([normalise_uint8(torch.as_tensor(b), mean, std) for b in batches])
    with torch.no_grad():
        z = model.backbone[0](x)  # the conv output the BatchNorm normalises
    bn = adapted.backbone[1]
    torch.testing.assert_close(bn.running_mean, z.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    # the mean of per-batch unbiased variances, as BatchNorm accumulates it with momentum=None
    per_batch = torch.stack([zb.var(dim=(0, 2, 3), unbiased=True) for zb in z.split(8)])
    torch.testing.assert_close(bn.running_var, per_batch.mean(0), rtol=1e-4, atol=1e-4)
    assert bn.momentum == 0.1
    with pytest.raises(ValueError, match="no batch of at least 2"):
        kgl.tl.adapt_batchnorm(model, [np.zeros((1, 16, 16, 3), np.uint8)])


def _shifted_sample(prior: float, n: int, seed: int):
    """Scores from two unit-variance Gaussians; probabilities calibrated under a 50/50 training prior."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prior).astype(int)
    s = rng.normal(np.where(y == 1, 1.5, -1.5), 1.0)
    p_train = 1.0 / (1.0 + np.exp(-3.0 * s))  # posterior under prior 0.5: log-odds = 2·1.5·s
    logit_true = 3.0 * s + np.log(prior / (1 - prior))
    return y, p_train, 1.0 / (1.0 + np.exp(-logit_true))


@pytest.mark.parametrize("prior", [0.05, 0.2, 0.7])
def test_prior_shift_recovers_a_known_shift(prior):
    _, p, p_true = _shifted_sample(prior, 20000, seed=int(prior * 100))
    adjusted, est = kgl.tl.prior_shift(p, 0.5)
    assert est == pytest.approx(prior, abs=0.02)
    err_adjusted, err_plain = np.abs(adjusted - p_true).mean(), np.abs(p - p_true).mean()
    assert err_adjusted < 0.02 and err_adjusted < 0.3 * err_plain  # the posteriors under the sample's own prior
    p_nan = p.copy()
    p_nan[:10] = np.nan
    adj_nan, _ = kgl.tl.prior_shift(p_nan, 0.5)
    assert np.isnan(adj_nan[:10]).all() and np.isfinite(adj_nan[10:]).all()
    with pytest.raises(ValueError, match="train_prior"):
        kgl.tl.prior_shift(p, 1.0)


def test_expected_f1_threshold_is_close_to_the_oracle_one():
    from sklearn.metrics import f1_score

    y, _, p_true = _shifted_sample(0.05, 20000, seed=3)
    t = kgl.tl.expected_f1_threshold(p_true)
    grid = np.linspace(0.05, 0.95, 91)
    best = max(f1_score(y, p_true > g) for g in grid)
    assert f1_score(y, p_true > t) > best - 0.02
    assert kgl.tl.expected_f1_threshold(np.zeros(5)) == 1.0


def test_classify_spots_adapt_bn_and_sample_thresholds(visium):
    model = build_model("mobilenet_v2", weights=None, input_size=32, patch_um=60.0)
    sha = state_dict_sha256(model)
    out = kgl.tl.classify_spots(visium, model, adapt_bn=True, copy=True, show_progress=False, precision="fp32")
    assert state_dict_sha256(model) == sha
    params = out.uns["glomerulus"]["params"]
    assert params["adapt_bn"] is True and params["libraries"]["lib"]["adapted_bn"] is True
    plain = kgl.tl.classify_spots(visium, model, copy=True, show_progress=False, precision="fp32")
    assert not np.allclose(out.obsm["X_glomerulus"], plain.obsm["X_glomerulus"])  # other BN statistics
    plant_markers(visium, [4, 9, 20], radius_um=12)
    red = center_red_model()
    red.config["training"] = {"class_counts": {"val": {"other": 90, "glomerulus": 10}}}
    res = kgl.tl.classify_spots(visium, red, threshold="prior-shift", copy=True, show_progress=False)
    lib = res.uns["glomerulus"]["params"]["libraries"]["lib"]
    assert res.uns["glomerulus"]["params"]["threshold_rule"] == "prior-shift"
    assert 0 < lib["prior"] < 0.5 and lib["train_prior"] == pytest.approx(0.1)
    assert np.flatnonzero(res.obs["glomerulus"] == "glomerulus").tolist() == [4, 9, 20]
    with pytest.raises(ValueError, match="threshold must be a number, None or one of"):
        kgl.tl.classify_spots(visium, red, threshold="oracle", show_progress=False)
    with pytest.raises(ValueError, match="validation class counts"):
        kgl.tl.classify_spots(visium, center_red_model(), threshold="prior-shift", show_progress=False)
