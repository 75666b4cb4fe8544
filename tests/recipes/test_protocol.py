"""The evaluation protocol on a tiny configuration (random-init MobileNet_V2 at 32 px, 1 epoch)."""

from __future__ import annotations

import numpy as np
import pytest

import kgl
from kgl._settings import settings

TINY = {"backbone": "mobilenet_v2", "weights": None, "input_size": 32, "epochs": 1, "freeze_epochs": 0}


@pytest.mark.realdata
def test_protocol_leaves_each_he_case_out_and_reports_every_set(shared_data, tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "cachedir", tmp_path / "cache")
    rows = kgl.recipes.evaluate_recipe(
        {**TINY, "he_repeat": 1}, seeds=(0,), max_patches_per_split=30, out_dir=tmp_path / "runs", device="cpu"
    )
    assert set(rows["set"]) == {"multistain-test", "pas-spots", "he-spots"}
    assert set(rows["fold"]) == {"C002", "C004"}  # one training per H&E case left out
    assert set(rows["train_precision"]) <= {"fp32", "bfloat16"}  # recorded, apart from the metric "precision"
    he = rows[rows["set"] == "he-spots"]
    # no case both trained on and tested on: each fold is tested on exactly the case it left out
    assert (he["case"] == he["fold"]).all() and set(he["case"]) == {"C002", "C004"}
    assert set(zip(he["tta"], he["threshold_rule"], strict=True)) == {
        (t, r) for t in ("plain", "adabn", "macenko") for r in ("validation", "expected-f1", "prior-shift")
    }
    assert ((rows["roc_auc"] >= 0) & (rows["roc_auc"] <= 1)).all() and (rows["n_pos"] > 0).all()
    assert (tmp_path / "runs" / "protocol.csv").is_file() and (tmp_path / "runs" / "seed0-C002" / "best.pt").is_file()
    summary = kgl.recipes.summarise_protocol(rows)
    assert (summary["n_seeds"] == 1).all() and np.isnan(summary["roc_auc_std"]).all()
    # re-scoring the saved checkpoints replaces only that variant's spot rows, on the same held-out cases
    again = kgl.recipes.rescore_protocol(tmp_path / "runs", ("plain",), device="cpu")
    key = ["seed", "fold", "set", "case", "tta", "threshold_rule"]
    assert sorted(map(tuple, again[key].astype(str).values)) == sorted(map(tuple, rows[key].astype(str).values))
    he2 = again[again["set"] == "he-spots"]
    assert (he2["case"] == he2["fold"]).all() and (again["set"] == "multistain-test").sum() == 2
    merged = again.merge(rows, on=key, suffixes=("", "_first"))
    assert np.allclose(merged["roc_auc"], merged["roc_auc_first"], atol=1e-6)  # the same checkpoints, the same calls
    with pytest.raises(ValueError, match="Unknown test-time variants"):
        kgl.recipes.rescore_protocol(tmp_path / "runs", ("tta-oracle",))
    # resuming a finished run trains nothing more and scores the same checkpoints again
    resumed = kgl.recipes.evaluate_recipe(
        {**TINY, "he_repeat": 1}, seeds=(0,), max_patches_per_split=30, out_dir=tmp_path / "runs", adabn=False,
        stain_norm=False, resume=True, device="cpu",
    )  # fmt: skip
    merged = resumed.merge(rows, on=key, suffixes=("", "_first"))
    assert len(merged) == len(resumed) == (rows["tta"] == "plain").sum()
    assert np.allclose(merged["roc_auc"], merged["roc_auc_first"], atol=1e-6)
    with pytest.raises(ValueError, match="needs the out_dir"):
        kgl.recipes.evaluate_recipe(TINY, resume=True)

    no_he = kgl.recipes.evaluate_recipe(
        {**TINY, "he_repeat": 0}, seeds=(1,), max_patches_per_split=30, adabn=False, stain_norm=False, device="cpu"
    )
    he = no_he[no_he["set"] == "he-spots"]
    assert set(no_he["fold"]) == {"none"} and set(he["case"]) == {"C002", "C004"}  # tested on both cases
    assert set(no_he["tta"]) == {"plain"}
    with pytest.raises(TypeError, match="Unknown recipe entries"):
        kgl.recipes.evaluate_recipe({"he_weight": 2})
