import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import kgl

Y = [0, 0, 1, 1]
P = [0.1, 0.4, 0.35, 0.8]


def test_evaluate_hand_computed():
    m = kgl.tl.evaluate(Y, P)  # threshold 0.5 -> pred [0, 0, 0, 1]
    assert m["confusion_matrix"] == [[2, 0], [1, 1]]
    assert (m["n"], m["n_pos"], m["n_neg"]) == (4, 2, 2)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(1.0)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert m["roc_auc"] == pytest.approx(0.75)  # 3 of 4 (pos, neg) pairs ordered
    assert m["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert m["brier"] == pytest.approx((0.1**2 + 0.4**2 + 0.65**2 + 0.2**2) / 4)
    assert m["ece"] == pytest.approx((0.1 + 0.4 + 0.65 + 0.2) / 4)  # one sample per bin
    assert m["threshold"] == 0.5
    # plain Python types, JSON round trip
    assert json.loads(json.dumps(m)) == m
    assert all(type(v) in (int, float, list) for v in m.values())


def test_evaluate_threshold_is_strict_and_bool_labels():
    m = kgl.tl.evaluate(np.array([False, True, True]), [0.2, 0.3, 0.9], threshold=0.3)
    assert m["confusion_matrix"] == [[1, 0], [1, 1]]  # 0.3 is not > 0.3, as in classify_spots


def test_evaluate_perfect_separation():
    m = kgl.tl.evaluate([0, 0, 0, 1, 1], [0.0, 0.1, 0.2, 0.9, 1.0])
    assert m["roc_auc"] == 1.0 and m["pr_auc"] == 1.0 and m["f1"] == 1.0 and m["accuracy"] == 1.0
    assert m["confusion_matrix"] == [[3, 0], [0, 2]]


def test_evaluate_single_class_is_nan_with_warning(kgl_log):
    m = kgl.tl.evaluate([0, 0, 0], [0.1, 0.7, 0.2])
    assert np.isnan(m["roc_auc"]) and np.isnan(m["pr_auc"])
    assert m["confusion_matrix"] == [[2, 1], [0, 0]]
    assert m["precision"] == 0.0 and m["recall"] == 0.0
    assert "roc_auc and pr_auc are undefined" in kgl_log.text
    m = kgl.tl.evaluate([1, 1], [0.9, 0.8])
    assert np.isnan(m["roc_auc"]) and m["recall"] == 1.0 and np.isnan(m["specificity"])


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([], [], "empty"),
        ([0, 1], [0.5], "different lengths"),
        ([0, 1], [0.5, np.nan], "NaN"),
        ([0, 1], [0.5, 1.5], r"\[0, 1\]"),
        ([0, 1], [-0.1, 0.5], "logits"),
        ([0, 2], [0.1, 0.5], "0/1"),
        (["other", "glomerulus"], [0.1, 0.5], "0/1"),
        ([[0, 1]], [[0.1, 0.5]], "1-D"),
    ],
)
def test_evaluate_errors(y, p, match):
    with pytest.raises(ValueError, match=match):
        kgl.tl.evaluate(y, p)


def test_evaluate_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        kgl.tl.evaluate(Y, P, threshold=1.5)


def test_ece_calibrated_vs_overconfident():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = rng.random(20000) < p  # perfectly calibrated by construction
    assert kgl.tl.evaluate(y, p)["ece"] < 0.03
    over = np.where(p > 0.5, 0.99, 0.01)  # same ranking, overconfident
    assert kgl.tl.evaluate(y, over)["ece"] > 0.2


def test_calibration_table():
    t = kgl.tl.calibration_table([*Y, 1], [*P, 1.0], n_bins=5)
    assert list(t.columns) == ["bin", "lower", "upper", "mean_proba", "frac_pos", "count"]
    assert len(t) == 5
    assert t["count"].tolist() == [1, 1, 1, 0, 2]  # 0.4 belongs to [0.4, 0.6), 1.0 to the last bin
    assert t["lower"].tolist() == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])
    assert t.loc[4, "mean_proba"] == pytest.approx(0.9)
    assert t.loc[1, "frac_pos"] == 1.0
    assert np.isnan(t.loc[3, "mean_proba"])
    # the ECE is the count-weighted gap of this table
    full = kgl.tl.calibration_table(Y, P)
    ok = full["count"] > 0
    ece = (full["count"][ok] * (full["mean_proba"][ok] - full["frac_pos"][ok]).abs()).sum() / 4
    assert ece == pytest.approx(kgl.tl.evaluate(Y, P)["ece"])


def test_choose_threshold_separable():
    rng = np.random.default_rng(1)
    neg, pos = rng.uniform(0.0, 0.3, 200), rng.uniform(0.6, 1.0, 50)
    y = np.r_[np.zeros(200), np.ones(50)]
    p = np.r_[neg, pos]
    for metric in ("f1", "youden", "balanced_accuracy"):
        t = kgl.tl.choose_threshold(y, p, metric=metric)
        assert t == 0.5  # every threshold in [0.3, 0.6) separates; the one closest to 0.5 wins
    # a separating gap away from 0.5: the threshold lies in it and gives F1 = 1
    p2 = np.r_[neg * 0.5, 0.2 + pos * 0.1]  # neg <= 0.15 < 0.26 <= pos
    t = kgl.tl.choose_threshold(y, p2)
    assert p2[y == 0].max() <= t < p2[y == 1].min()
    assert kgl.tl.evaluate(y, p2, threshold=t)["f1"] == 1.0
    # deterministic and independent of sample order
    perm = rng.permutation(len(y))
    assert kgl.tl.choose_threshold(y[perm], p2[perm]) == t == kgl.tl.choose_threshold(y, p2)


def test_choose_threshold_overlap_and_grid():
    y = [0, 0, 0, 1, 1, 1]
    p = [0.1, 0.2, 0.7, 0.6, 0.8, 0.9]
    t = kgl.tl.choose_threshold(y, p)
    f1_best = kgl.tl.evaluate(y, p, threshold=t)["f1"]
    for g in np.linspace(0, 1, 21):
        assert kgl.tl.evaluate(y, p, threshold=g)["f1"] <= f1_best + 1e-12
    assert kgl.tl.choose_threshold(y, p, grid=[0.05, 0.5, 0.95]) == 0.5
    # ties at equal distance from 0.5: the smaller threshold
    assert kgl.tl.choose_threshold([0, 1], [0.3, 0.7], grid=[0.4, 0.6]) == 0.4


def test_choose_threshold_uninformative(kgl_log):
    t = kgl.tl.choose_threshold([0, 1, 0, 1], [0.5] * 4)  # F1 is best calling everything glomerulus
    assert 0.0 < t < 0.5
    assert kgl.tl.evaluate([0, 1, 0, 1], [0.5] * 4, threshold=t)["recall"] == 1.0
    assert "calls every sample glomerulus" in kgl_log.text


def test_choose_threshold_errors():
    with pytest.raises(ValueError, match="both classes"):
        kgl.tl.choose_threshold([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="metric"):
        kgl.tl.choose_threshold(Y, P, metric="accuracy")
    with pytest.raises(ValueError, match="grid"):
        kgl.tl.choose_threshold(Y, P, grid=[0.5, 2.0])


def _spots(threshold=0.5):
    cov = [0.0, 0.0, 0.2, 0.6, 1.0, 0.0, 0.7, np.nan]
    proba = np.array([0.1, 0.6, 0.5, 0.9, 0.4, np.nan, 0.8, 0.3], dtype=np.float32)
    obs = pd.DataFrame(
        {"glomerulus_coverage": cov, "glomerulus_proba": proba}, index=[f"s{i}" for i in range(len(cov))]
    )
    a = ad.AnnData(obs=obs)
    a.uns["glomerulus"] = {"params": {"threshold": threshold}}
    return a


def test_evaluate_spots_counts_and_metrics():
    m = kgl.tl.evaluate_spots(_spots())
    # kept: s0 (neg, .1) s1 (neg, .6) s3 (pos, .9) s4 (pos, .4) s6 (pos, .8)
    assert (m["n"], m["n_pos"], m["n_neg"]) == (5, 3, 2)
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert (m["n_spots"], m["n_unclassified"], m["n_no_truth"], m["n_ambiguous"]) == (8, 1, 1, 1)
    assert m["n_spots"] == m["n"] + m["n_unclassified"] + m["n_no_truth"] + m["n_ambiguous"]
    assert m["threshold"] == 0.5 and m["pos_min"] == 0.5 and m["neg_max"] == 0.0
    json.dumps(m)
    # threshold from uns, or given
    assert kgl.tl.evaluate_spots(_spots(threshold=0.85))["confusion_matrix"] == [[2, 0], [2, 1]]
    assert kgl.tl.evaluate_spots(_spots(), threshold=0.85)["confusion_matrix"] == [[2, 0], [2, 1]]
    # a looser negative bound keeps the 20 %-covered spot as a negative
    m = kgl.tl.evaluate_spots(_spots(), neg_max=0.25)
    assert m["n_ambiguous"] == 0 and m["n_neg"] == 3


def test_evaluate_spots_errors():
    a = _spots()
    with pytest.raises(KeyError, match="glomerulus_coverage"):
        kgl.tl.evaluate_spots(a, key="other")
    with pytest.raises(KeyError, match="pseudo_visium"):
        kgl.tl.evaluate_spots(a, truth_key="cov")
    del a.uns["glomerulus"]
    with pytest.raises(KeyError, match="threshold="):
        kgl.tl.evaluate_spots(a)
    assert kgl.tl.evaluate_spots(a, threshold=0.5)["n"] == 5
    with pytest.raises(ValueError, match="neg_max < pos_min"):
        kgl.tl.evaluate_spots(a, threshold=0.5, pos_min=0.2, neg_max=0.3)
    a.obs["glomerulus_proba"] = np.nan
    with pytest.raises(ValueError, match="No spot left"):
        kgl.tl.evaluate_spots(a, threshold=0.5)
    b = _spots()
    b.obs.loc["s0", "glomerulus_coverage"] = 1.5
    with pytest.raises(ValueError, match="coverage fraction"):
        kgl.tl.evaluate_spots(b)


def test_evaluate_spots_after_classify(visium):
    from _kgl_fixtures import center_red_model, plant_markers

    plant_markers(visium, [4, 12])
    kgl.tl.classify_spots(visium, center_red_model(), show_progress=False)
    cov = np.zeros(visium.n_obs)
    cov[[4, 12]] = 1.0
    visium.obs["glomerulus_coverage"] = cov
    m = kgl.tl.evaluate_spots(visium)
    assert m["n_pos"] == 2 and m["n"] == visium.n_obs
    assert m["recall"] == 1.0 and m["roc_auc"] == 1.0
