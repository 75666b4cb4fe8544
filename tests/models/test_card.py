import numpy as np

import kgl
from kgl.models import model_card, write_model_card


def _config():
    y = np.array([0, 0, 0, 1, 1, 0, 1, 0])
    p = np.array([0.1, 0.2, 0.6, 0.7, 0.9, 0.3, 0.4, 0.05])
    val = kgl.tl.evaluate(y, p, threshold=0.5)
    test = kgl.tl.evaluate(y[:6], p[:6], threshold=0.5)
    spots = {**val, "n_ambiguous": 17, "n_unclassified": 0}
    return (
        {
            "name": "kgl-test-model",
            "backbone": "resnet50",
            "weights": "IMAGENET1K_V2",
            "head_trained": True,
            "class_names": ["other", "glomerulus"],
            "input_size": 224,
            "patch_um": 110.0,
            "training_mpp": 0.5,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "threshold": 0.5,
            "threshold_selection": "max F1 on val",
            "temperature": 1.7,
            "training": {
                "data": "PAS tiles split by biopsy",
                "class_counts": {"train": {"other": 800, "glomerulus": 200}, "val": {"other": 90, "glomerulus": 30}},
                "recipe": {"optimizer": "AdamW", "lr": 3e-4, "batch_size": 64},
                "epochs_run": 12,
                "best_epoch": 9,
                "seconds": 1830,
                "device": "cuda",
                "mpp_range": [0.17914068780999223, 1.4800208633590393],
            },
            "metrics": {"val": val, "test (held-out biopsies)": test, "pas_tiles_visium (spot level)": spots},
            "stain_comparison": [{"stain": "PAS", "f1": 0.91}, {"stain": "H&E", "f1": 0.84}],
            "limitations": ["Only human biopsies."],
            "sha256": "ab" * 32,
        },
        val,
        test,
    )


def test_model_card_full():
    cfg, val, test = _config()
    md = model_card(cfg)
    assert "| **mpp_range** | [0.1791, 1.48] |" in md  # float lists as numbers, not 17-digit JSON
    for header in (
        "# Model card: kgl-test-model",
        "## Model",
        "## Intended use",
        "## Training data",
        "## Training procedure",
        "## Evaluation",
        "### By stain",
        "## Calibration & threshold",
        "## Limitations",
        "## How to use",
        "## Checksum",
    ):
        assert f"\n{header}\n" in f"\n{md}", header
    assert "not for diagnosis" in md.lower()
    assert "| metric | val | test (held-out biopsies) | pas_tiles_visium (spot level) |" in md
    f1_row = next(line for line in md.splitlines() if line.startswith("| F1 |"))
    assert f"{val['f1']:.3f}" in f1_row and f"{test['f1']:.3f}" in f1_row
    auc_row = next(line for line in md.splitlines() if line.startswith("| ROC AUC |"))
    assert f"{val['roc_auc']:.3f}" in auc_row
    assert "| n_ambiguous | – | – | 17 |" in md
    assert "| **train** | 800 | 200 | 1,000 |" in md
    assert "| **lr** | 0.0003 |" in md
    assert "30.5 min" in md
    assert "| H&E | 0.840 |" in md
    (tn, fp), (fn, tp) = val["confusion_matrix"]
    assert f"TN {tn}, FP {fp}, FN {fn}, TP {tp}" in md
    assert "Only human biopsies." in md
    assert 'kgl.tl.classify_spots(adata, model="kgl-test-model")' in md
    assert "ab" * 32 in md
    assert "max F1 on val" in md
    assert "T = 1.7" in md and "| **calibration (T, b)** | 1.7, 0 |" in md
    # top-level training_data (as kgl.tl's training recipe writes it)
    cfg2 = {**cfg, "training_data": "from the recipe", "training": {"epochs_run": 3}}
    assert "from the recipe" in model_card(cfg2)


def test_model_card_minimal_and_untrained(tmp_path):
    md = model_card({})
    assert md.startswith("# Model card:")
    assert "## Intended use" in md and "## How to use" in md and "## Limitations" in md
    for absent in ("## Evaluation", "## Training data", "## Checksum", "## Model\n"):
        assert absent not in md
    cfg = kgl.models.model_config("mobilenet_v2", weights="IMAGENET1K_V1")  # untrained head
    md = model_card(cfg)
    assert "untrained" in md and "mobilenet_v2" in md
    # NaN metrics and a single split
    md = model_card({"metrics": {"test": {"roc_auc": float("nan"), "f1": 0.5}}})
    assert "| ROC AUC | n/a |" in md and "| F1 | 0.500 |" in md
    out = write_model_card(_config()[0], tmp_path / "cards" / "MODEL_CARD.md")
    assert out.read_text(encoding="utf-8") == model_card(_config()[0])
    assert not list(out.parent.glob(".*tmp"))


def test_model_card_lists_the_recipe_protocol_with_its_spread():
    proto = {
        "seeds": [0, 1, 2],
        "machine": "2-core test CPU",
        "results": {
            "H&E, leave one case out (spots)": {"roc_auc": [0.973, 0.016], "f1": [0.748, 0.026], "ece": [0.03, 0.01]},
            "PAS tiles, another site (spots)": {"roc_auc": [0.945, 0.002], "f1": [0.648, 0.021]},
        },
    }
    md = model_card({"name": "m", "protocol": proto})
    assert "## Evaluation\n" in md and "### Held-out evaluation of the recipe (several seeds)" in md
    assert "3 seeds (0, 1, 2), 2-core test CPU" in md
    assert "| **H&E, leave one case out (spots)** | 0.973 ± 0.016 | 0.748 ± 0.026 | 0.030 ± 0.010 |" in md
    assert "| **PAS tiles, another site (spots)** | 0.945 ± 0.002 | 0.648 ± 0.021 | – |" in md
    assert "### Held-out" not in model_card({"name": "m", "protocol": {}})
