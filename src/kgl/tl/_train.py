"""Fine-tune a torchvision backbone on glomerulus / other patches.

:func:`train` is a short driver over named steps, in the manner of torchvision's reference
``references/classification/train.py``: :func:`_check_inputs`, :func:`_build_loaders`,
:func:`_build_model`, :func:`_resume`, then per epoch :func:`_train_one_epoch`, :func:`_evaluate`
and :func:`_save_state`, and at the end :func:`_finalise` (calibration, threshold, metrics, config).
Its keyword settings travel between the steps as one frozen :class:`TrainConfig`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kgl._logging import logger, no_bar
from kgl.im import PatchDataset, collate_patches
from kgl.tl._calibration import calibrated_proba, fit_calibration
from kgl.tl._device import normalise_uint8, normaliser
from kgl.tl._predict import run_eval

__all__ = ["SELECT_RULES", "TrainConfig", "TrainResult", "train"]

#: How :func:`train` picks the epoch it keeps (and when it stops early): the highest validation
#: ROC-AUC (ties: the lower loss) or the lowest validation loss (ties: the higher ROC-AUC).
SELECT_RULES = ("val_auroc", "val_loss")

#: Columns of the training history, in order (one row per epoch).
_HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_auroc",
    "val_f1",
    "frozen_backbone",
    "train_patches",
    "train_s",
    "patches_per_s",
)
#: The settings of a run stored as its recipe in the model config (``config["training"]["recipe"]``).
_RECIPE_KEYS = (
    "backbone",
    "weights",
    "input_size",
    "patch_um",
    "epochs",
    "batch_size",
    "lr",
    "backbone_lr_factor",
    "weight_decay",
    "freeze_epochs",
    "balance",
    "augment",
    "scale_jitter",
    "patience",
    "select",
    "seed",
    "max_batches_per_epoch",
)


@dataclass(frozen=True)
class TrainConfig:
    """The keyword settings of one :func:`train` call (see there), passed to its steps as one value."""

    split_key: str = "split"
    backbone: str = "resnet50"
    weights: str | None = "DEFAULT"
    input_size: int = 224
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    backbone_lr_factor: float = 0.1
    weight_decay: float = 1e-4
    freeze_epochs: int = 1
    balance: str | None = "sampler"
    augment: str = "hed+color"
    scale_jitter: tuple[float, float] = (0.8, 1.25)
    patience: int = 3
    select: str = "val_auroc"
    max_batches_per_epoch: int | None = None
    out_dir: str | os.PathLike | None = None
    resume: bool = False
    name: str = "kgl-glom"
    seed: int = 0
    device: Any = "auto"
    precision: str = "auto"
    num_workers: int = 0
    show_progress: bool = True
    extra_config: dict[str, Any] | None = None

    @property
    def out(self) -> Path | None:
        """``out_dir`` as a :class:`~pathlib.Path` (``None``: nothing written)."""
        return Path(self.out_dir) if self.out_dir is not None else None

    def recipe(self, *, weights: str | None, patch_um: float) -> dict[str, Any]:
        """The recipe entry of the model config: these settings, with the resolved weights and patch size."""
        resolved = {"weights": weights, "patch_um": patch_um, "scale_jitter": list(self.scale_jitter)}
        return {k: resolved[k] if k in resolved else getattr(self, k) for k in _RECIPE_KEYS}


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    model
        The best epoch's :class:`~kgl.models.GlomClassifier` (validation ROC-AUC, then loss), with
        the calibration (temperature, bias) and threshold fitted on validation in its ``config``.
    history
        One row per epoch: training loss and accuracy, validation loss, accuracy, ROC-AUC and F1,
        whether the backbone was frozen, patches and seconds.
    best_epoch
        The epoch whose weights ``model`` holds.
    out_dir
        Folder with ``best.pt``, ``last.pt`` and ``history.csv``; ``None`` when training ran without
        one. Draw the curves with ``kgl.pl.training_curves(result.history, save=...)``.
    val_proba, val_labels
        Calibrated validation probabilities of the best model, and the true labels.
    seconds
        Wall-clock training time.
    step_loss
        Training loss of every optimisation step.

    """

    model: Any
    history: pd.DataFrame
    best_epoch: int
    out_dir: Path | None
    val_proba: np.ndarray = field(repr=False)
    val_labels: np.ndarray = field(repr=False)
    seconds: float = 0.0
    step_loss: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)


@dataclass
class _Data:
    """The loaders of a run (:func:`_build_loaders`)."""

    train_ds: PatchDataset
    train_loader: Any
    val_loader: Any
    generator: Any  # torch.Generator of sampling and shuffling (saved in last.pt)
    counts: np.ndarray  # training patches per class
    steps: int  # optimisation steps per epoch


@dataclass
class _Fit:
    """The model and what trains it (:func:`_build_model`), on one device."""

    model: Any
    criterion: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    device: Any
    amp: Any  # autocast dtype, or None for fp32
    mean: Any
    std: Any


@dataclass
class _Progress:
    """What changes from epoch to epoch (saved in ``last.pt``, restored by :func:`_resume`)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    best_key: tuple[float, float] = (-np.inf, -np.inf)
    best_epoch: int = -1
    bad_epochs: int = 0
    best_state: dict[str, Any] | None = None
    step_loss: list[float] = field(default_factory=list)  # of this call's steps only

    def record(self, row: dict[str, Any], model: Any, select: str) -> bool:
        """Append an epoch's history row and keep its weights if the ``select`` rule prefers them (returned)."""
        self.history.append(row)
        auroc = float(np.nan_to_num(row["val_auroc"], nan=-1.0))
        val_loss = row["val_loss"]
        neg_loss = -val_loss if np.isfinite(val_loss) else -np.inf  # a NaN loss never wins, never blocks
        key = (auroc, neg_loss) if select == "val_auroc" else (neg_loss, auroc)
        improved = key > self.best_key or self.best_state is None  # the first epoch always counts
        if improved:
            self.best_key, self.best_epoch, self.bad_epochs = key, row["epoch"], 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return improved


def train(
    patches: pd.DataFrame,
    *,
    split_key: str = "split",
    backbone: str = "resnet50",
    weights: str | None = "DEFAULT",
    input_size: int = 224,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-3,
    backbone_lr_factor: float = 0.1,
    weight_decay: float = 1e-4,
    freeze_epochs: int = 1,
    balance: str | None = "sampler",
    augment: str = "hed+color",
    scale_jitter: tuple[float, float] = (0.8, 1.25),
    patience: int = 3,
    select: str = "val_auroc",
    max_batches_per_epoch: int | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    name: str = "kgl-glom",
    seed: int = 0,
    device: Any = "auto",
    precision: str = "auto",
    num_workers: int = 0,
    show_progress: bool = True,
    extra_config: dict[str, Any] | None = None,
) -> TrainResult:
    """Fine-tune an ImageNet torchvision backbone with a new 2-class head on µm-defined patches.

    Parameters
    ----------
    patches
        Patch table from :func:`kgl.im.sample_patches` with a ``split_key`` column holding ``train``
        and ``val`` (and possibly ``test``, which is never read here); make it with
        :func:`kgl.tl.split_by_group` so no slide/patient is in two splits.
    split_key
        Column with the split names.
    backbone, weights
        Any torchvision classifier and a member of its weights enum (see :func:`kgl.models.build_model`).
    input_size
        Model input side in pixels (patches are resampled to it).
    epochs
        Maximum number of epochs (early stopping may end sooner).
    batch_size
        Patches per optimisation step.
    lr
        AdamW learning rate of the head; the backbone gets ``lr * backbone_lr_factor``.
    backbone_lr_factor
        See ``lr``.
    weight_decay
        AdamW weight decay.
    freeze_epochs
        Epochs of head-only training (frozen backbone, BatchNorm in eval mode) before fine-tuning all.
    balance
        ``"sampler"`` (class-balanced :class:`~torch.utils.data.WeightedRandomSampler`),
        ``"weights"`` (class-weighted cross-entropy) or ``None``.
    augment
        Augmentation recipe, see :func:`build_transform`.
    scale_jitter
        Range of the random factor on the patch size in µm (log-uniform).
    patience
        Epochs without improvement of the ``select`` criterion before stopping.
    select
        Which epoch's weights are kept: ``"val_auroc"`` (highest validation ROC-AUC, ties broken by
        the loss) or ``"val_loss"`` (lowest validation cross-entropy). ROC-AUC saturates near 0.98 on
        the validation biopsies, so its epoch-to-epoch noise can pick an under-trained epoch; the
        loss, a proper scoring rule, keeps improving with the fit (see docs/training.md).
    max_batches_per_epoch
        Cap on optimisation steps per epoch (small CI runs).
    out_dir
        Folder for ``best.pt`` (kgl checkpoint of the best epoch), ``last.pt`` (resumable state) and
        ``history.csv``; written atomically. ``None``: nothing written. No plot is drawn here: draw
        the curves with ``kgl.pl.training_curves(result.history, save=...)`` (as
        :func:`kgl.recipes.train_default_model` does).
    resume
        Continue from ``out_dir/last.pt``.
    name
        Model name stored in the config.
    seed
        Seeds weights of the head, sampling, augmentation and shuffling: same seed, same run (on CPU).
    device, precision, num_workers, show_progress
        As in :func:`kgl.tl.classify_spots`.
    extra_config
        JSON-able entries added to the model config (e.g. a training-data summary).

    Returns
    -------
    :class:`TrainResult` with the best model (Platt-calibrated on validation, with its decision
    threshold chosen on the validation split), the per-epoch history and validation predictions.

    """
    settings = dict(locals())  # first statement: the keyword arguments and `patches` are all that is local
    del settings["patches"]
    cfg = TrainConfig(**settings)
    from kgl.tl._device import autocast_dtype, resolve_device

    tr, va = _check_inputs(patches, cfg)
    patch_um = float(np.median(patches["patch_um"]))
    dev = resolve_device(cfg.device)
    amp = autocast_dtype(dev, cfg.precision)
    if cfg.out is not None:
        from kgl._files import ensure_dir

        ensure_dir(cfg.out, what="training outputs")
    model = _build_model(cfg, patch_um=patch_um, device=dev)
    data = _build_loaders(tr, va, cfg, device=dev)
    fit = _build_optimizer(model, data, cfg, device=dev, amp=amp)
    progress = _resume(cfg, fit, data) if cfg.resume else _Progress()

    seconds = fit_epochs(
        cfg, fit, data, progress, train_one_epoch=_train_one_epoch, evaluate=_evaluate, columns=_HISTORY_COLUMNS
    )

    result = _finalise(patches, cfg, fit, data, progress, patch_um=patch_um, seconds=seconds)
    if cfg.out is not None:
        from kgl.models import save_checkpoint

        save_checkpoint(result.model, cfg.out / "best.pt")
    return result


def fit_epochs(
    cfg: Any,
    fit: Any,
    data: Any,
    progress: _Progress,
    *,
    train_one_epoch: Any,
    evaluate: Any,
    columns: Sequence[str],
    log_epoch: Any = None,
) -> float:
    """The epoch loop every kgl trainer shares; returns its wall-clock seconds.

    Per epoch: ``train_one_epoch(fit, data, cfg, epoch=, frozen=, progress=)`` then
    ``evaluate(fit, data.val_loader)``, one history row (``columns``), the best weights kept by
    ``cfg.select`` (:meth:`_Progress.record`), ``last.pt`` + ``history.csv`` in ``cfg.out``
    (:func:`_save_state`) and early stopping after ``cfg.patience`` epochs without improvement.
    ``cfg`` needs ``epochs``, ``freeze_epochs``, ``select``, ``patience`` and ``out``; ``fit`` and
    ``data`` what :func:`_save_state` saves. The patch classifier (:func:`train`) and the map
    (:func:`kgl.tl.train_map`) differ only in the steps they pass.
    """
    t_start = time.perf_counter()
    for epoch in range(progress.start_epoch, cfg.epochs):
        frozen = epoch < cfg.freeze_epochs
        row = {"epoch": epoch + 1, **train_one_epoch(fit, data, cfg, epoch=epoch, frozen=frozen, progress=progress)}
        row.update(evaluate(fit, data.val_loader))
        row = {k: row[k] for k in columns}
        improved = progress.record(row, fit.model, cfg.select)
        (log_epoch or _log_epoch)(row, improved)
        if cfg.out is not None:
            _save_state(cfg.out, fit, data, progress, epoch=epoch, select=cfg.select)
        if progress.bad_epochs >= cfg.patience and not frozen:
            logger.info("early stopping: no validation improvement for %d epochs", cfg.patience)
            break
    return time.perf_counter() - t_start


def _check_inputs(patches: pd.DataFrame, cfg: TrainConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training and validation rows of ``patches``, after checking the table and the settings."""
    if cfg.split_key not in patches:
        raise KeyError(f"patches has no {cfg.split_key!r} column; make one with kgl.tl.split_by_group.")
    tr = patches[patches[cfg.split_key] == "train"]
    va = patches[patches[cfg.split_key] == "val"]
    for nm, part in (("train", tr), ("val", va)):
        if len(part) == 0 or part["label"].nunique() < 2:
            raise ValueError(f"The {nm} split needs both classes; it has {part['label'].value_counts().to_dict()}.")
    if "group" in patches:
        from kgl.tl._split import check_no_leakage

        check_no_leakage(patches, patches[cfg.split_key], group_key="group")
    if (patches["label"] < 0).any():
        raise ValueError("patches contains ambiguous rows (label -1); sample with keep_ambiguous=False.")
    for k, v in {"epochs": cfg.epochs, "batch_size": cfg.batch_size}.items():
        if int(v) != v or v < 1:
            raise ValueError(f"{k} must be a positive integer, got {v!r}.")
    if cfg.select not in SELECT_RULES:
        raise ValueError(f"select must be one of {SELECT_RULES}, got {cfg.select!r}.")
    if cfg.balance not in ("sampler", "weights", None):
        raise ValueError(f"balance must be 'sampler', 'weights' or None, got {cfg.balance!r}.")
    return tr, va


def _build_model(cfg: TrainConfig, *, patch_um: float, device: Any) -> Any:
    """The backbone with a new, seeded 2-class head, on ``device`` (channels-last)."""
    import torch
    from torch import nn

    from kgl.models import build_model

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.backbone, weights=cfg.weights, patch_um=patch_um, input_size=cfg.input_size, seed=cfg.seed)
    nn.init.normal_(model.head.weight, std=0.01)
    nn.init.zeros_(model.head.bias)
    return model.to(device, memory_format=torch.channels_last)


def _build_loaders(tr: pd.DataFrame, va: pd.DataFrame, cfg: TrainConfig, *, device: Any) -> _Data:
    """Training loader (class-balanced sampling or shuffling, seeded) and validation loader."""
    import torch
    from torch.utils.data import DataLoader, WeightedRandomSampler

    train_ds = PatchDataset(
        tr, size=cfg.input_size, augment=cfg.augment, train=True, scale_jitter=cfg.scale_jitter, seed=cfg.seed
    )
    val_ds = PatchDataset(va, size=cfg.input_size, augment=cfg.augment, train=False, seed=cfg.seed)
    counts = np.bincount(train_ds.labels, minlength=2)
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.balance == "sampler":
        w = (1.0 / counts)[train_ds.labels]
        sampler = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), len(w), replacement=True, generator=gen)
        shuffle = None
    else:
        sampler, shuffle = None, True
    loader_kw = {
        "num_workers": cfg.num_workers,
        "collate_fn": collate_patches,
        "pin_memory": device.type == "cuda",
        "persistent_workers": cfg.num_workers > 0,
    }
    train_loader = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        shuffle=shuffle,
        generator=gen,
        drop_last=len(train_ds) > cfg.batch_size,
        **loader_kw,
    )
    val_loader = DataLoader(val_ds, batch_size=cfg.batch_size * 2, shuffle=False, **loader_kw)
    steps = min(len(train_loader), cfg.max_batches_per_epoch or len(train_loader))
    return _Data(train_ds, train_loader, val_loader, gen, counts, steps)


def _build_optimizer(model: Any, data: _Data, cfg: TrainConfig, *, device: Any, amp: Any) -> _Fit:
    """Loss, AdamW (head at ``lr``, backbone at ``lr * backbone_lr_factor``), one-cycle schedule and grad scaler."""
    import torch
    from torch import nn

    class_w = torch.tensor(data.counts.sum() / (2.0 * data.counts), dtype=torch.float32, device=device)
    criterion = nn.CrossEntropyLoss(weight=class_w if cfg.balance == "weights" else None)
    lrs = [cfg.lr, cfg.lr * cfg.backbone_lr_factor]
    groups = [{"params": list(model.head.parameters()), "lr": lrs[0]}]
    groups.append({"params": list(model.backbone.parameters()), "lr": lrs[1]})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lrs, total_steps=max(1, cfg.epochs * data.steps), pct_start=0.15
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    mean, std = normaliser(model.spec.preprocessing, device)
    return _Fit(model, criterion, optimizer, scheduler, scaler, device, amp, mean, std)


def _resume(cfg: TrainConfig, fit: _Fit, data: _Data) -> _Progress:
    """Restore weights, optimizer, schedule, random streams and progress from ``out_dir/last.pt``."""
    import pickle

    import torch

    from kgl._files import torch_error_summary

    out = cfg.out
    if out is None or not (out / "last.pt").exists():
        raise FileNotFoundError(
            f"resume=True but there is no {str(out / 'last.pt') if out else 'out_dir'} to resume from; pass the "
            "out_dir of the interrupted run, or start afresh without resume=True."
        )
    last = out / "last.pt"
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
    except PermissionError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:  # OSError: truncated
        raise ValueError(
            f"Cannot resume from {str(last)!r}: it does not load with weights_only=True (corrupt, or not written "
            f"by kgl.tl.train). Delete it to start afresh, or use another out_dir. ({torch_error_summary(e)})"
        ) from e
    try:
        fit.model.load_state_dict(state["model"])
        fit.optimizer.load_state_dict(state["optimizer"])
        fit.scheduler.load_state_dict(state["scheduler"])
        data.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        progress = _Progress(
            history=json.loads(state["history"]),
            start_epoch=int(state["epoch"]) + 1,
            best_key=tuple(state["best_key"].tolist()),
            best_epoch=int(state["best_epoch"]),
            bad_epochs=int(state["bad_epochs"]),
            best_state=state.get("best_model"),
        )
        saved_select = state.get("select", "val_auroc")  # runs before select= existed kept the ROC-AUC
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(
            f"Cannot resume from {str(last)!r}: it belongs to a run with other settings (backbone, input size, "
            f"epochs, ...) or is incomplete ({torch_error_summary(e)}). Resume with the arguments of the "
            "interrupted run, or use another out_dir."
        ) from e
    if saved_select != cfg.select:  # its best_key orders epochs by the other rule: comparisons would be wrong
        raise ValueError(
            f"Cannot resume from {str(last)!r} with select={cfg.select!r}: that run kept epochs by "
            f"select={saved_select!r}. Resume with select={saved_select!r}, or use another out_dir."
        )
    logger.info("resuming %s from epoch %d", last, progress.start_epoch)
    return progress


def _train_one_epoch(
    fit: _Fit, data: _Data, cfg: TrainConfig, *, epoch: int, frozen: bool, progress: _Progress
) -> dict[str, Any]:
    """One pass over the training loader (head only while ``frozen``); appends each step's loss to ``progress``."""
    import torch
    from tqdm.auto import tqdm

    model, dev, amp = fit.model, fit.device, fit.amp
    for p in model.backbone.parameters():
        p.requires_grad_(not frozen)
    model.train()
    if frozen:
        model.backbone.eval()  # frozen BatchNorm statistics too
    data.train_ds.set_epoch(epoch)
    tot_loss, tot_correct, tot_n = 0.0, 0, 0
    t0 = time.perf_counter()
    bar = tqdm(
        data.train_loader,
        total=data.steps,
        desc=f"epoch {epoch + 1}/{cfg.epochs}" + (" (head only)" if frozen else ""),
        disable=no_bar(cfg.show_progress),
        unit="batch",
    )
    for b, (x, y) in enumerate(bar):
        if b >= data.steps:
            break
        x = normalise_uint8(x.to(dev, non_blocking=True), fit.mean, fit.std)
        y = y.to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x)
            loss = fit.criterion(logits.float(), y)
        fit.optimizer.zero_grad(set_to_none=True)
        fit.scaler.scale(loss).backward()
        fit.scaler.step(fit.optimizer)
        fit.scaler.update()
        fit.scheduler.step()
        n = len(y)
        progress.step_loss.append(float(loss.detach()))
        tot_loss += progress.step_loss[-1] * n
        tot_correct += int((logits.argmax(1) == y).sum())
        tot_n += n
        bar.set_postfix(loss=f"{tot_loss / tot_n:.3f}")
    train_time = time.perf_counter() - t0
    return {
        "train_loss": tot_loss / max(tot_n, 1),
        "train_acc": tot_correct / max(tot_n, 1),
        "frozen_backbone": frozen,
        "train_patches": tot_n,
        "train_s": train_time,
        "patches_per_s": tot_n / max(train_time, 1e-9),
    }


def _evaluate(fit: _Fit, loader: Any) -> dict[str, float]:
    """Validation pass of an epoch: cross-entropy; accuracy, ROC-AUC, F1 of the uncalibrated probability at 0.5."""
    import torch
    from torch import nn

    from kgl.tl._evaluate import evaluate

    logits, labels = run_eval(fit.model, loader, device=fit.device, amp=fit.amp, mean=fit.mean, std=fit.std)
    val_loss = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
    m = evaluate(labels, calibrated_proba(logits), threshold=0.5)
    return {"val_loss": val_loss, "val_acc": m["accuracy"], "val_auroc": m["roc_auc"], "val_f1": m["f1"]}


def _log_epoch(row: dict[str, Any], improved: bool) -> None:
    logger.info(
        "epoch %d: train loss %.4f acc %.3f | val loss %.4f acc %.3f AUROC %.4f | %.0f patches/s%s",
        row["epoch"],
        row["train_loss"],
        row["train_acc"],
        row["val_loss"],
        row["val_acc"],
        row["val_auroc"],
        row["patches_per_s"],
        " *" if improved else "",
    )


def _finalise(
    patches: pd.DataFrame,
    cfg: TrainConfig,
    fit: _Fit,
    data: _Data,
    progress: _Progress,
    *,
    patch_um: float,
    seconds: float,
) -> TrainResult:
    """The best epoch's model, Platt-calibrated on validation, with threshold, metrics and recipe in its config."""
    import torch

    from kgl.tl._evaluate import choose_threshold, evaluate

    model = fit.model
    model.load_state_dict(progress.best_state)
    val_logits, val_y = run_eval(model, data.val_loader, device=fit.device, amp=fit.amp, mean=fit.mean, std=fit.std)
    calibration = fit_calibration(val_logits, val_y)
    val_p = calibrated_proba(val_logits, **calibration)
    threshold = choose_threshold(val_y, val_p, metric="f1")
    hist = pd.DataFrame(progress.history)
    hist["best"] = hist["epoch"] == progress.best_epoch
    model.config.update(
        {
            "name": cfg.name,
            "head_trained": True,
            "greyscale": cfg.augment == "grey",  # inference must see grey patches too (classify_spots applies it)
            **calibration,
            "threshold": threshold,
            "training": {
                "recipe": cfg.recipe(weights=model.config.get("weights"), patch_um=patch_um),
                "epochs_run": len(progress.history),
                "best_epoch": progress.best_epoch,
                "seconds": seconds,
                "device": str(fit.device),
                "precision": "fp32" if fit.amp is None else str(fit.amp).removeprefix("torch."),  # autocast dtype
                "class_counts": _class_counts(patches, cfg.split_key),
                "mpp_range": _mpp_range(patches, cfg.split_key),  # the source images' µm/px it trained on
            },
            "metrics": {"val": evaluate(val_y, val_p, threshold=threshold)},
            **(cfg.extra_config or {}),
        }
    )
    model = model.cpu().to(memory_format=torch.contiguous_format)
    step_loss = np.asarray(progress.step_loss)
    return TrainResult(model, hist, progress.best_epoch, cfg.out, val_p, val_y, seconds, step_loss)


def _mpp_range(patches: pd.DataFrame, split_key: str) -> list[float]:
    """Finest and coarsest µm/px of the images the training split's patches were cut from."""
    mpp = patches.loc[patches[split_key] == "train", "mpp"].astype(float)
    return [float(mpp.min()), float(mpp.max())]


def _class_counts(patches: pd.DataFrame, split_key: str) -> dict[str, dict[str, int]]:
    tab = patches.groupby([split_key, "label"]).size().unstack(fill_value=0)
    return {
        str(s): {("glomerulus" if int(lab) == 1 else "other"): int(n) for lab, n in r.items()}
        for s, r in tab.iterrows()
    }


def _write_history(out: Path, history: Sequence[dict[str, Any]]) -> None:
    from kgl._files import atomic_path

    with atomic_path(out / "history.csv") as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)


def _save_state(out: Path, fit: _Fit, data: _Data, progress: _Progress, *, epoch: int, select: str) -> None:
    """``last.pt`` (resumable, loads with ``weights_only=True``: tensors, numbers, strings) and ``history.csv``."""
    import torch

    from kgl._files import atomic_path

    state = {
        "model": {k: v.detach().cpu() for k, v in fit.model.state_dict().items()},
        "optimizer": fit.optimizer.state_dict(),
        "scheduler": fit.scheduler.state_dict(),
        "generator": data.generator.get_state(),
        "torch_rng": torch.get_rng_state(),  # dropout draws
        "history": json.dumps(progress.history),
        "epoch": epoch,
        "best_epoch": progress.best_epoch,
        "bad_epochs": progress.bad_epochs,
        "best_key": torch.tensor(progress.best_key, dtype=torch.float64),
        "best_model": progress.best_state,
        "select": select,
    }
    with atomic_path(out / "last.pt") as tmp:
        torch.save(state, tmp)
    _write_history(out, progress.history)
