import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import kgl
from kgl.models import load_checkpoint, state_dict_sha256


def _synthetic_patch_table(tmp_path, n_slides=6, seed=0):
    """Slides with red 'glomeruli' on pink noise; one row per patch centre (positives on disks)."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_slides):
        img = np.clip(rng.normal((225, 185, 210), 10, (400, 400, 3)), 0, 255).astype(np.uint8)
        yy, xx = np.mgrid[:400, :400]
        centres = [(100, 100), (300, 280)]
        for cx, cy in centres:
            img[(xx - cx) ** 2 + (yy - cy) ** 2 <= 45**2] = (150, 30, 60)
        path = tmp_path / f"slide{s}.png"
        Image.fromarray(img).save(path)
        for cx, cy in centres:
            for dx, dy in [(0, 0), (5, -5), (-6, 4)]:
                rows.append((str(path), f"s{s}", cx + dx, cy + dy, 1))
        for x, y in [(250, 80), (80, 300), (200, 200), (340, 60), (60, 200), (180, 350)]:
            rows.append((str(path), f"s{s}", x, y, 0))
    df = pd.DataFrame(rows, columns=["path", "group", "x", "y", "label"])
    df["slide"] = df["group"]
    df["mpp"] = 1.0
    df["patch_um"] = 60.0
    split = {"s0": "val", "s1": "test"}
    df["split"] = [split.get(g, "train") for g in df["group"]]
    return df


def test_train_small_run_writes_history_checkpoint_and_calibration(tmp_path):
    """The plumbing of a run (random init, fp32): history, files, calibration, a bit-identical checkpoint."""
    table = _synthetic_patch_table(tmp_path)
    res = kgl.tl.train(
        table,
        backbone="mobilenet_v2",
        weights=None,
        input_size=32,
        epochs=3,
        batch_size=8,
        lr=3e-3,
        freeze_epochs=0,
        patience=5,
        out_dir=tmp_path / "run",
        show_progress=False,
        augment="color",
        seed=0,
        device="cpu",
        precision="fp32",
    )
    h = res.history
    assert list(h["epoch"]) == [1, 2, 3]
    # a property of any correct run, not of one CPU's rounding: every step's loss is finite
    assert len(res.step_loss) == 3 * 6 and np.isfinite(res.step_loss).all()
    for f in ("best.pt", "last.pt", "history.csv"):
        assert (tmp_path / "run" / f).exists()
    assert not list((tmp_path / "run").glob("*.png"))  # train draws no curves (kgl.pl.training_curves does)
    cfg = res.model.config
    assert cfg["head_trained"] and 0.0 < cfg["threshold"] < 1.0 and cfg["temperature"] > 0 and "logit_bias" in cfg
    assert cfg["training"]["class_counts"]["train"] == {"other": 24, "glomerulus": 24}
    assert cfg["training"]["mpp_range"] == [1.0, 1.0] and res.model.spec.coarsest_training_mpp == 1.0
    loaded = load_checkpoint(tmp_path / "run" / "best.pt")
    assert state_dict_sha256(loaded) == state_dict_sha256(res.model)
    assert loaded.config["threshold"] == cfg["threshold"]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), res.model.eval()(x))
    # the epoch kept follows `select`: highest validation ROC-AUC by default, lowest validation loss on request
    assert res.best_epoch == int(h.sort_values(["val_auroc", "val_loss"], ascending=[False, True])["epoch"].iloc[0])
    by_loss = kgl.tl.train(
        table, backbone="mobilenet_v2", weights=None, input_size=32, epochs=3, batch_size=8, lr=3e-3,
        freeze_epochs=0, patience=5, select="val_loss", show_progress=False, augment="color", seed=0,
        device="cpu", precision="fp32",
    )  # fmt: skip
    assert by_loss.best_epoch == int(by_loss.history["val_loss"].idxmin()) + 1
    assert by_loss.model.config["training"]["recipe"]["select"] == "val_loss"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_learns_a_trivially_separable_task(tmp_path, mobilenet_weights, precision):
    """Red disks vs pink noise on frozen ImageNet features: any correct trainer, on any CPU and in either
    precision, ends far better than chance (AUROC 0.5, loss ln 2 = 0.69); measured here AUROC 1.0, loss ~0.45."""
    table = _synthetic_patch_table(tmp_path)
    res = kgl.tl.train(
        table,
        backbone="mobilenet_v2",
        weights="IMAGENET1K_V1",
        input_size=64,
        epochs=3,
        freeze_epochs=3,  # head only: a convex problem on fixed features
        batch_size=8,
        lr=1e-2,
        patience=5,
        out_dir=tmp_path / "run",
        show_progress=False,
        augment="color",
        seed=0,
        device="cpu",
        precision=precision,
    )
    h = res.history
    assert h["val_auroc"].max() >= 0.95
    assert h["val_loss"].min() < 0.6 and h["train_loss"].iloc[-1] < 0.6
    assert np.isfinite(res.step_loss).all()
    assert res.model.config["training"]["precision"] == {"fp32": "fp32", "bf16": "bfloat16"}[precision]  # what ran
    # within one machine the checkpoint round-trips bit for bit
    loaded = load_checkpoint(tmp_path / "run" / "best.pt")
    assert state_dict_sha256(loaded) == state_dict_sha256(res.model)


def test_resume_is_identical_to_an_uninterrupted_run(tmp_path, monkeypatch):
    table = _synthetic_patch_table(tmp_path)
    kw = dict(
        backbone="mobilenet_v2",
        weights=None,
        input_size=32,
        batch_size=8,
        freeze_epochs=1,
        patience=5,
        epochs=3,
        show_progress=False,
        seed=1,
        device="cpu",
        precision="fp32",
    )
    full = kgl.tl.train(table, out_dir=tmp_path / "full", **kw)

    import kgl.tl._train as tr

    real_eval, calls = tr.run_eval, {"n": 0}

    def crash_in_epoch_3(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption during epoch 3")
        return real_eval(*a, **k)

    monkeypatch.setattr(tr, "run_eval", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        kgl.tl.train(table, out_dir=tmp_path / "cut", **kw)
    monkeypatch.setattr(tr, "run_eval", real_eval)
    assert len(pd.read_csv(tmp_path / "cut" / "history.csv")) == 2
    assert not (tmp_path / "cut" / "best.pt").exists()
    with pytest.raises(ValueError, match="kept epochs by select='val_auroc'"):  # its best epoch was by the other rule
        kgl.tl.train(table, out_dir=tmp_path / "cut", resume=True, **{**kw, "select": "val_loss"})
    resumed = kgl.tl.train(table, out_dir=tmp_path / "cut", resume=True, **kw)
    assert list(resumed.history["epoch"]) == [1, 2, 3]
    np.testing.assert_array_equal(resumed.history["val_loss"], full.history["val_loss"])
    assert state_dict_sha256(resumed.model) == state_dict_sha256(full.model)


def test_train_input_errors(tmp_path):
    table = _synthetic_patch_table(tmp_path, n_slides=3)
    with pytest.raises(KeyError, match="split"):
        kgl.tl.train(table.drop(columns="split"), backbone="mobilenet_v2", weights=None)
    leaky = table.copy()
    leaky.loc[leaky.index[leaky["group"] == "s2"][0], "split"] = "val"  # slide s2 now in train and val
    with pytest.raises(ValueError, match="s2"):
        kgl.tl.train(leaky, backbone="mobilenet_v2", weights=None)
    with pytest.raises(ValueError, match="select must be one of"):
        kgl.tl.train(table, backbone="mobilenet_v2", weights=None, select="val_f1")
    onlyneg = table.copy()
    onlyneg.loc[onlyneg["split"] == "val", "label"] = 0
    with pytest.raises(ValueError, match="both classes"):
        kgl.tl.train(onlyneg, backbone="mobilenet_v2", weights=None)
    with pytest.raises(FileNotFoundError, match="resume"):
        kgl.tl.train(
            table,
            backbone="mobilenet_v2",
            weights=None,
            resume=True,
            out_dir=tmp_path / "none",
            input_size=32,
            show_progress=False,
        )


TINY = {"backbone": "mobilenet_v2", "weights": None, "input_size": 32, "epochs": 1, "freeze_epochs": 0}


def test_same_seed_same_history_checkpoint_and_config(tmp_path):
    """A tiny random-init run twice with one seed: the same history, weights and config (timings aside)."""
    table = _synthetic_patch_table(tmp_path)
    kw = dict(TINY, batch_size=8, show_progress=False, seed=4, device="cpu", precision="fp32")
    a = kgl.tl.train(table, out_dir=tmp_path / "a", **kw)
    b = kgl.tl.train(table, out_dir=tmp_path / "b", **kw)
    timing = ["train_s", "patches_per_s"]
    assert list(a.history.columns) == [
        "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auroc", "val_f1", "frozen_backbone",
        "train_patches", "train_s", "patches_per_s", "best",
    ]  # fmt: skip
    pd.testing.assert_frame_equal(a.history.drop(columns=timing), b.history.drop(columns=timing))
    np.testing.assert_array_equal(a.step_loss, b.step_loss)
    np.testing.assert_array_equal(a.val_proba, b.val_proba)
    assert state_dict_sha256(a.model) == state_dict_sha256(b.model)
    ca, cb = (dict(r.model.config, training={**r.model.config["training"], "seconds": 0}) for r in (a, b))
    assert ca == cb
    assert load_checkpoint(tmp_path / "b" / "best.pt").config["threshold"] == a.model.config["threshold"]
    other = kgl.tl.train(table, **{**kw, "seed": 5})
    assert state_dict_sha256(other.model) != state_dict_sha256(a.model)


def test_train_config_holds_every_keyword_of_train():
    """TrainConfig mirrors train's keywords one for one, defaults included (train builds it from them)."""
    import dataclasses
    import inspect

    from kgl.tl._train import TrainConfig

    params = list(inspect.signature(kgl.tl.train).parameters.values())[1:]
    assert all(p.kind is p.KEYWORD_ONLY for p in params)
    assert [(p.name, p.default) for p in params] == [(f.name, f.default) for f in dataclasses.fields(TrainConfig)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().epochs = 3


def test_train_default_weights_are_build_models():
    """train's default weights mean what build_model's default means (kgl's per-backbone choice)."""
    import inspect

    from kgl.models import build_model
    from kgl.tl._train import TrainConfig

    default = inspect.signature(build_model).parameters["weights"].default
    assert inspect.signature(kgl.tl.train).parameters["weights"].default == default == "DEFAULT"
    assert TrainConfig.__dataclass_fields__["weights"].default == default
