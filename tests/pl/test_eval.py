import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import kgl


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.3
    p = np.clip(np.where(y, rng.normal(0.7, 0.2, 400), rng.normal(0.3, 0.2, 400)), 0, 1)
    return y, p


def _png(path):
    assert path.is_file() and path.stat().st_size > 1000
    img = np.asarray(Image.open(path))
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 5  # not blank
    return img


def test_reliability(scores, tmp_path):
    y, p = scores
    ax = kgl.pl.reliability(y, p, save=tmp_path / "rel.png", title="val")
    _png(tmp_path / "rel.png")
    ece = kgl.tl.evaluate(y, p)["ece"]
    assert f"ECE = {ece:.3f}" in ax.get_title() and "val" in ax.get_title()
    assert len(ax.figure.axes) == 2  # diagram + counts underneath
    _, ax0 = plt.subplots()
    assert kgl.pl.reliability(y, p, ax=ax0, n_bins=5) is ax0
    assert len(ax0.figure.axes) == 2  # twin axis for the counts
    kgl.pl.reliability(y, p, save=tmp_path / "rel.pdf")
    assert (tmp_path / "rel.pdf").read_bytes()[:4] == b"%PDF"
    assert not list(tmp_path.glob(".*tmp"))


def test_confusion_inputs(scores, tmp_path):
    y, p = scores
    m = kgl.tl.evaluate(y, p)
    ax = kgl.pl.confusion(m["confusion_matrix"], save=tmp_path / "cm.png")
    _png(tmp_path / "cm.png")
    texts = [t.get_text() for t in ax.texts]
    (tn, _), (_, tp) = m["confusion_matrix"]
    assert texts[0].startswith(f"{tn:,}") and texts[3].startswith(f"{tp:,}")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["other", "glomerulus"]
    pred = (p > 0.5).astype(int)
    for arg, kw in ((m, {}), ((y, pred), {}), (y, {"y_pred": pred})):
        ax2 = kgl.pl.confusion(arg, **kw)
        assert [t.get_text() for t in ax2.texts] == texts
    with pytest.raises(ValueError, match="2x2"):
        kgl.pl.confusion([[1, 2, 3]])
    with pytest.raises(ValueError, match="labels"):
        kgl.pl.confusion(m, labels=("a",))


def test_roc_pr(scores, tmp_path):
    y, p = scores
    axes = kgl.pl.roc_pr(y, p, save=tmp_path / "roc.png")
    _png(tmp_path / "roc.png")
    assert len(axes) == 2
    m = kgl.tl.evaluate(y, p)
    assert axes[0].get_legend().get_texts()[0].get_text() == f"AUC = {m['roc_auc']:.3f}"
    assert axes[1].get_legend().get_texts()[0].get_text() == f"AP = {m['pr_auc']:.3f}"
    axes = kgl.pl.roc_pr({"val": (y, p), "test": (y[:100], p[:100])})
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert labels[0].startswith("val (AUC = ") and labels[1].startswith("test (AUC = ")
    with pytest.raises(ValueError, match="proba"):
        kgl.pl.roc_pr(y)


def test_training_curves(tmp_path):
    n = 8
    hist = pd.DataFrame(
        {
            "epoch": np.arange(1, n + 1),
            "train_loss": np.linspace(1, 0.2, n),
            "val_loss": np.linspace(1.1, 0.4, n),
            "train_acc": np.linspace(0.5, 0.95, n),
            "val_acc": np.linspace(0.5, 0.9, n),
            "val_auroc": np.r_[np.nan, np.linspace(0.6, 0.97, n - 1)],
            "best": [False] * 5 + [True, False, False],
        }
    )
    axes = kgl.pl.training_curves(hist, save=tmp_path / "curves.png")
    _png(tmp_path / "curves.png")
    assert len(axes) == 2
    loss_labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert loss_labels == ["train", "val", "best epoch (6)"]
    score_labels = [t.get_text() for t in axes[1].get_legend().get_texts()]
    assert score_labels == ["train accuracy", "val accuracy", "val AUROC", "best epoch (6)"]
    # list of dicts, missing columns, explicit best epoch
    axes = kgl.pl.training_curves([{"train_loss": 0.7}, {"train_loss": 0.5}], best_epoch=2)
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["train", "best epoch (2)"]
    with pytest.raises(ValueError, match="none of the columns"):
        kgl.pl.training_curves(pd.DataFrame({"epoch": [1, 2], "lr": [0.1, 0.1]}))
    with pytest.raises(ValueError, match="empty"):
        kgl.pl.training_curves([])
