"""Macenko stain normalisation estimated once per sample (kgl.im.MacenkoNormalizer)."""

from __future__ import annotations

import numpy as np
import pytest

import kgl
from _kgl_fixtures import center_red_model
from kgl.im import MacenkoNormalizer

# two stain matrices (columns: haematoxylin, eosin optical density per RGB channel), unit columns
_HE_A = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
_HE_B = np.array([[0.45, 0.20], [0.80, 0.90], [0.40, 0.38]])


def _render(he: np.ndarray, conc: np.ndarray, io: float = 240.0) -> np.ndarray:
    """uint8 RGB (n, h, w, 3) from stain concentrations (n, h, w, 2): Beer-Lambert, as Macenko assumes."""
    he = he / np.linalg.norm(he, axis=0)
    od = conc @ he.T
    return np.clip(io * np.exp(-od) - 1, 0, 255).round().astype(np.uint8)


def _tissue(seed: int = 0, n: int = 16, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = np.stack([rng.gamma(2.0, 0.35, (n, size, size)), rng.gamma(2.0, 0.25, (n, size, size))], axis=-1)
    c[:, : size // 4] = 0.0  # some background
    return c


def test_fit_recovers_the_stain_vectors_and_normalising_removes_the_stain_difference():
    conc = _tissue()
    a, b = _render(_HE_A, conc), _render(_HE_B, conc)  # the same tissue in two stainings
    na = MacenkoNormalizer().fit([a[:8], a[8:]])
    est = na.stain_matrix.numpy()
    true = _HE_A / np.linalg.norm(_HE_A, axis=0)
    cos = np.abs((est / np.linalg.norm(est, axis=0) * true).sum(0))
    assert (cos > 0.98).all(), cos  # haematoxylin first, eosin second, as Macenko orders them
    assert na.n_patches == 16 and na.as_params()["method"] == "macenko"
    nb = MacenkoNormalizer().fit([b])
    before = np.abs(a.astype(float) - b.astype(float)).mean()
    after = np.abs(na(a).astype(float) - nb(b).astype(float)).mean()
    assert after < 0.25 * before, (before, after)  # differences between 2 stainings mostly gone
    out = na(a)
    assert out.dtype == np.uint8 and out.shape == a.shape
    import torch

    t = na(torch.from_numpy(a))  # tensors in, tensors out: the same values
    assert isinstance(t, torch.Tensor) and np.array_equal(t.numpy(), out)


def test_normalising_onto_the_samples_own_stains_is_about_the_identity():
    a = _render(_HE_A, _tissue(1))
    est = MacenkoNormalizer().fit([a])
    same = MacenkoNormalizer(reference=(est.stain_matrix, est.max_concentrations)).fit([a])
    assert np.abs(same(a).astype(int) - a.astype(int)).max() <= 2


def test_bad_input_is_refused_with_a_reason():
    white = np.full((4, 32, 32, 3), 250, np.uint8)
    with pytest.raises(ValueError, match="needs stained tissue"):
        MacenkoNormalizer().fit([white])
    with pytest.raises(ValueError, match="none were given"):
        MacenkoNormalizer().fit([])
    with pytest.raises(ValueError, match="uint8 RGB"):
        MacenkoNormalizer().fit([np.zeros((2, 8, 8), np.uint8)])
    with pytest.raises(RuntimeError, match="fit must run"):
        MacenkoNormalizer()(white)
    with pytest.raises(ValueError, match="reference must be"):
        MacenkoNormalizer(reference=(np.eye(3), np.ones(2)))


def test_classify_spots_stain_norm(visium):
    img = visium.uns["spatial"]["lib"]["images"]["hires"]
    h, w = img.shape[:2]
    visium.uns["spatial"]["lib"]["images"]["hires"] = _render(_HE_B, _tissue(2, n=1, size=max(h, w))[0][:h, :w])
    model = center_red_model()  # its features are the mean colours of the patch centre
    plain = kgl.tl.classify_spots(visium, model, copy=True, show_progress=False, precision="fp32")
    out = kgl.tl.classify_spots(visium, model, stain_norm="macenko", copy=True, show_progress=False, precision="fp32")
    params = out.uns["glomerulus"]["params"]
    assert params["stain_norm"] == "macenko" and plain.uns["glomerulus"]["params"]["stain_norm"] == "none"
    lib = params["libraries"]["lib"]["stain_norm"]
    assert np.asarray(lib["stain_matrix"]).shape == (3, 2) and lib["n_patches"] == min(256, visium.n_obs)
    assert not np.allclose(out.obsm["X_glomerulus"], plain.obsm["X_glomerulus"])  # other pixels went in
    with pytest.raises(ValueError, match="stain_norm must be None or one of"):
        kgl.tl.classify_spots(visium, model, stain_norm="reinhard", show_progress=False)
