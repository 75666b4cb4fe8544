import numpy as np
import pytest

import kgl
from kgl.tl._calibration import GLOMERULUS_COLUMN


def test_fit_calibration_recovers_scale_and_bias():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-(z - 1.0)))).astype(int)  # calibrated logit: z - 1
    logits = np.c_[np.zeros_like(z), z * 3.0]  # overconfident by 3x, prior off by 1
    cal = kgl.tl.fit_calibration(logits, y)
    assert cal["temperature"] == pytest.approx(3.0, rel=0.1)
    assert cal["logit_bias"] == pytest.approx(-1.0, abs=0.1)
    p = kgl.tl.calibrated_proba(logits, **cal)
    assert kgl.tl.evaluate(y, p)["ece"] < 0.02
    # the positive class in column 0: the same fit on the swapped columns
    assert kgl.tl.fit_calibration(logits[:, ::-1], y, positive=0) == cal


def test_calibrated_proba_positive_column_equals_default_on_swapped_columns():
    rng = np.random.default_rng(1)
    for dtype in (np.float32, np.float64):
        logits = rng.normal(0, 3, (500, 2)).astype(dtype)
        for t, b in ((1.0, 0.0), (2.3, -0.7), (0.4, 1.5)):
            default = kgl.tl.calibrated_proba(logits, t, b)
            swapped = kgl.tl.calibrated_proba(np.ascontiguousarray(logits[:, ::-1]), t, b, positive=0)
            np.testing.assert_array_equal(swapped, default)
            assert default.dtype == dtype  # computed in the logits' dtype
            np.testing.assert_array_equal(kgl.tl.calibrated_proba(logits, t, b, positive=1), default)
            # the other column's probability is the complement
            np.testing.assert_allclose(kgl.tl.calibrated_proba(logits, t, -b, positive=0), 1 - default, atol=1e-6)


def test_default_positive_column_is_the_models_glomerulus_class():
    from kgl.models import CLASS_NAMES

    assert GLOMERULUS_COLUMN == CLASS_NAMES.index("glomerulus")
    logits = np.array([[0.0, 2.0], [1.0, -1.0]])
    np.testing.assert_allclose(kgl.tl.calibrated_proba(logits), 1 / (1 + np.exp(-np.array([2.0, -2.0]))))


@pytest.mark.parametrize(
    ("logits", "positive", "match"),
    [(np.zeros((4, 3)), 1, "2-class"), (np.zeros(4), 1, "2-class"), (np.zeros((4, 2)), 2, "column 0 or 1")],
)
def test_calibrated_proba_bad_inputs(logits, positive, match):
    with pytest.raises(ValueError, match=match):
        kgl.tl.calibrated_proba(logits, positive=positive)
