"""Fine-tune a torchvision backbone on glomerulus / other patches."""

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

from kgl._logging import logger
from kgl.tl._device import normalise_uint8, normaliser

__all__ = [
    "AUGMENTATIONS",
    "PatchDataset",
    "TrainResult",
    "build_transform",
    "calibrated_proba",
    "fit_calibration",
    "train",
]

#: Named augmentation recipes (geometric flips/rot90 + blur in all; the colour part differs).
#: How :func:`train` picks the epoch it keeps (and when it stops early): the highest validation
#: ROC-AUC (ties: the lower loss) or the lowest validation loss (ties: the higher ROC-AUC).
SELECT_RULES = ("val_auroc", "val_loss")
AUGMENTATIONS = ("none", "color", "hed", "hed+color", "grey", "strong", "randstain", "randstain+strong")

#: RandStainNA-style target statistics (OpenCV 8-bit L*a*b*: L 0–255, a and b centred on 128): wide
#: enough to cover H&E (pink-purple, a ≈ 140–160), PAS (magenta), Masson (blue-green, a < 128) and silver.
_LAB_MEAN_RANGE = ((110.0, 225.0), (118.0, 170.0), (100.0, 140.0))
_LAB_STD_RANGE = ((15.0, 60.0), (4.0, 22.0), (4.0, 22.0))


def _random_lab_stats(p: float) -> Any:
    """RandStainNA-style augmentation (Shen et al. 2022): random L*a*b* statistics per patch.

    Each channel is standardised and given a random target mean and std (uniform over
    :data:`_LAB_MEAN_RANGE` / :data:`_LAB_STD_RANGE`), so the network sees the same tissue in many
    plausible stain colourings, H&E among them. Written here because RandStainNA is not packaged.
    """
    import albumentations as A
    import cv2

    class RandomLabStats(A.ImageOnlyTransform):
        def get_params(self) -> dict[str, Any]:
            rng = self.random_generator
            means = np.array([rng.uniform(lo, hi) for lo, hi in _LAB_MEAN_RANGE], dtype=np.float32)
            stds = np.array([rng.uniform(lo, hi) for lo, hi in _LAB_STD_RANGE], dtype=np.float32)
            return {"means": means, "stds": stds}

        def apply(self, img: np.ndarray, means: np.ndarray, stds: np.ndarray, **params: Any) -> np.ndarray:
            lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(np.float32)
            mu = lab.reshape(-1, 3).mean(0)
            sd = lab.reshape(-1, 3).std(0) + 1e-3
            lab = (lab - mu) / sd * stds + means
            return cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)

    return RandomLabStats(p=p)


def build_transform(augment: str = "hed+color", *, train: bool = True, seed: int = 0) -> Any:
    """Albumentations pipeline for ``uint8`` RGB patches (normalisation happens on the device).

    Parameters
    ----------
    augment
        ``"none"``, ``"color"`` (brightness/contrast/saturation/hue jitter), ``"hed"`` (stain
        augmentation in haematoxylin–eosin–DAB space, :class:`albumentations.HEStain`),
        ``"hed+color"`` (both), ``"grey"`` (greyscale replicated to 3 channels: morphology only),
        ``"strong"`` (HED as above plus the strong HSV jitter of Tellez et al. 2019, hue over the
        whole circle, and 10 % random greyscale), ``"randstain"`` (RandStainNA-style random
        L*a*b* statistics covering H&E, PAS, Masson and silver colours) or ``"randstain+strong"``.
        Every recipe adds flips, 90° rotations and light Gaussian blur when ``train``.
    train
        Evaluation transforms are the identity, except ``"grey"``, which must also apply at inference.
    seed
        Seed of the pipeline (reseeded per sample by :class:`PatchDataset`).

    """
    import albumentations as A

    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}.")
    ops: list[Any] = []
    if train:
        ops += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0)]
        if "randstain" in augment:
            ops.append(_random_lab_stats(p=0.8))
        if "hed" in augment or "strong" in augment:
            ops.append(
                A.HEStain(
                    method="random_preset", intensity_scale_range=(0.6, 1.4), intensity_shift_range=(-0.25, 0.25), p=0.8
                )
            )
        if "color" in augment:
            ops.append(A.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.3, hue=0.08, p=0.8))
        if "strong" in augment:  # Tellez et al. 2019, HSV-strong
            ops.append(A.ColorJitter(brightness=0.3, contrast=0.3, saturation=(0.3, 1.7), hue=0.5, p=0.8))
            ops.append(A.ToGray(num_output_channels=3, p=0.1))
        ops.append(A.GaussianBlur(blur_limit=(3, 5), p=0.2))
    if augment == "grey":
        ops.append(A.ToGray(num_output_channels=3, p=1.0))
    return A.Compose(ops, seed=seed)


class PatchDataset:
    """Map-style dataset over a patch table (:func:`kgl.im.sample_patches`): ``(uint8 HWC patch, label)``.

    Patches are read from the slides on the fly (images stay open in a per-process cache), with a
    random scale jitter applied to the region size in µm (so the model sees ±``scale_jitter`` of
    the nominal µm/px: the multistain set's µm/px is estimated). Randomness comes from
    ``(seed, epoch, index)`` only, so results do not depend on the number of DataLoader workers.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        *,
        size: int,
        augment: str = "hed+color",
        train: bool = True,
        scale_jitter: tuple[float, float] = (0.8, 1.25),
        seed: int = 0,
    ) -> None:
        missing = {"path", "x", "y", "mpp", "patch_um", "label"} - set(table.columns)
        if missing:
            raise KeyError(f"Patch table lacks columns {sorted(missing)}; build it with kgl.im.sample_patches.")
        self.table = table.reset_index(drop=True)
        self.size = int(size)
        self.train = train
        self.scale_jitter = scale_jitter
        self.seed = int(seed)
        self.epoch = 0
        self.transform = build_transform(augment, train=train, seed=seed)
        self._cache: dict[str, Any] = {}
        self._pid = os.getpid()
        self.labels = self.table["label"].to_numpy().astype(np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw (call once per epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        from kgl.im import read_patch

        if self._pid != os.getpid():  # new worker process: its own open images
            self._cache, self._pid = {}, os.getpid()
        row = self.table.iloc[i]
        scale = 1.0
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, int(i)))
            lo, hi = np.log(self.scale_jitter[0]), np.log(self.scale_jitter[1])
            scale = float(np.exp(rng.uniform(lo, hi)))
            self.transform.set_random_seed(int(rng.integers(2**31 - 1)))
        patch = read_patch(row, size=self.size, scale=scale, cache=self._cache)
        patch = self.transform(image=patch)["image"]
        return np.ascontiguousarray(patch), int(self.labels[i])


def _collate(batch: list[tuple[np.ndarray, int]]) -> tuple[Any, Any]:
    import torch

    return torch.from_numpy(np.stack([b[0] for b in batch])), torch.tensor([b[1] for b in batch])


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
        Folder with ``best.pt``, ``last.pt``, ``history.csv`` and ``curves.png``; ``None`` when
        training ran without one.
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


def _run_eval(model: Any, loader: Any, *, device: Any, amp: Any, mean: Any, std: Any) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels over a loader (eval mode, no grad)."""
    import torch

    from kgl.models import fold_batchnorm

    model.eval()
    net = fold_batchnorm(model)  # the same folded network classify_spots runs
    logits, labels = [], []
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        for x, y in loader:
            x = normalise_uint8(x.to(device, non_blocking=True), mean, std)
            logits.append(net(x).float().cpu())
            labels.append(y)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def fit_calibration(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Platt scaling of the logit margin: ``p = sigmoid((l_pos - l_neg) / T + b)``, fitted on validation.

    A temperature ``T`` (Guo et al. 2017) plus a bias ``b``: the bias undoes the 50/50 prior that
    class-balanced sampling teaches the model, the temperature its over/under-confidence. Two
    parameters, minimised NLL (scipy); the ranking of samples (ROC-AUC) is unchanged.
    """
    from scipy.optimize import minimize

    z = logits[:, 1] - logits[:, 0]
    y = np.asarray(labels, dtype=float)

    def nll(params: np.ndarray) -> float:
        t = z / np.exp(params[0]) + params[1]
        return float(np.mean(np.logaddexp(0.0, t) - y * t))

    res = minimize(nll, x0=np.zeros(2), method="L-BFGS-B", bounds=[(np.log(0.05), np.log(20.0)), (-10.0, 10.0)])
    return {"temperature": float(np.exp(res.x[0])), "logit_bias": float(res.x[1])}


def calibrated_proba(logits: np.ndarray, temperature: float = 1.0, logit_bias: float = 0.0) -> np.ndarray:
    """Positive-class probability of 2-class logits after :func:`fit_calibration`."""
    from scipy.special import expit

    return expit((logits[:, 1] - logits[:, 0]) / temperature + logit_bias)


def train(
    patches: pd.DataFrame,
    *,
    split_key: str = "split",
    backbone: str = "resnet50",
    weights: str | None = "DEFAULT_KGL",
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
        Folder for ``best.pt`` (kgl checkpoint of the best epoch), ``last.pt`` (resumable state),
        ``history.csv`` and ``curves.png``; written atomically. ``None``: nothing written.
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
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, WeightedRandomSampler
    from tqdm.auto import tqdm

    from kgl._utils import torch_error_summary
    from kgl.models import build_model, save_checkpoint
    from kgl.tl._device import autocast_dtype, resolve_device
    from kgl.tl._evaluate import choose_threshold, evaluate

    if split_key not in patches:
        raise KeyError(f"patches has no {split_key!r} column; make one with kgl.tl.split_by_group.")
    tr = patches[patches[split_key] == "train"]
    va = patches[patches[split_key] == "val"]
    for nm, part in (("train", tr), ("val", va)):
        if len(part) == 0 or part["label"].nunique() < 2:
            raise ValueError(f"The {nm} split needs both classes; it has {part['label'].value_counts().to_dict()}.")
    if "group" in patches:
        from kgl.tl._split import check_no_leakage

        check_no_leakage(patches, patches[split_key], group_key="group")
    if (patches["label"] < 0).any():
        raise ValueError("patches contains ambiguous rows (label -1); sample with keep_ambiguous=False.")
    for k, v in {"epochs": epochs, "batch_size": batch_size}.items():
        if int(v) != v or v < 1:
            raise ValueError(f"{k} must be a positive integer, got {v!r}.")
    if select not in SELECT_RULES:
        raise ValueError(f"select must be one of {SELECT_RULES}, got {select!r}.")
    if balance not in ("sampler", "weights", None):
        raise ValueError(f"balance must be 'sampler', 'weights' or None, got {balance!r}.")
    patch_um = float(np.median(patches["patch_um"]))
    dev = resolve_device(device)
    amp = autocast_dtype(dev, precision)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        from kgl._utils import ensure_dir

        ensure_dir(out, what="training outputs")

    torch.manual_seed(seed)
    model = build_model(backbone, weights=weights, patch_um=patch_um, input_size=input_size, seed=seed)
    nn.init.normal_(model.head.weight, std=0.01)
    nn.init.zeros_(model.head.bias)
    model = model.to(dev, memory_format=torch.channels_last)
    cfg = model.config
    mean, std = normaliser(cfg, dev)

    train_ds = PatchDataset(tr, size=input_size, augment=augment, train=True, scale_jitter=scale_jitter, seed=seed)
    val_ds = PatchDataset(va, size=input_size, augment=augment, train=False, seed=seed)
    counts = np.bincount(train_ds.labels, minlength=2)
    gen = torch.Generator().manual_seed(seed)
    if balance == "sampler":
        w = (1.0 / counts)[train_ds.labels]
        sampler = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), len(w), replacement=True, generator=gen)
        shuffle = None
    else:
        sampler, shuffle = None, True
    loader_kw = {
        "num_workers": num_workers,
        "collate_fn": _collate,
        "pin_memory": dev.type == "cuda",
        "persistent_workers": num_workers > 0,
    }
    train_loader = DataLoader(
        train_ds,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle,
        generator=gen,
        drop_last=len(train_ds) > batch_size,
        **loader_kw,
    )
    val_loader = DataLoader(val_ds, batch_size=batch_size * 2, shuffle=False, **loader_kw)
    class_w = torch.tensor(counts.sum() / (2.0 * counts), dtype=torch.float32, device=dev)
    criterion = nn.CrossEntropyLoss(weight=class_w if balance == "weights" else None)
    head_params = list(model.head.parameters())
    body_params = list(model.backbone.parameters())
    optimizer = torch.optim.AdamW(
        [{"params": head_params, "lr": lr}, {"params": body_params, "lr": lr * backbone_lr_factor}],
        weight_decay=weight_decay,
    )
    steps = min(len(train_loader), max_batches_per_epoch or len(train_loader))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[lr, lr * backbone_lr_factor], total_steps=max(1, epochs * steps), pct_start=0.15
    )
    scaler = torch.amp.GradScaler(dev.type, enabled=amp == torch.float16)

    history: list[dict[str, Any]] = []
    start_epoch, best_key, best_epoch, bad_epochs = 0, (-np.inf, -np.inf), -1, 0
    best_state: dict[str, Any] | None = None
    if resume:
        if out is None or not (out / "last.pt").exists():
            raise FileNotFoundError(
                f"resume=True but there is no {str(out / 'last.pt') if out else 'out_dir'} to resume from; pass the "
                "out_dir of the interrupted run, or start afresh without resume=True."
            )
        import pickle

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
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            gen.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            history = json.loads(state["history"])
            start_epoch = int(state["epoch"]) + 1
            best_epoch, bad_epochs = int(state["best_epoch"]), int(state["bad_epochs"])
            best_key = tuple(state["best_key"].tolist())
            best_state = state.get("best_model")
            saved_select = state.get("select", "val_auroc")  # runs before select= existed kept the ROC-AUC
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ValueError(
                f"Cannot resume from {str(last)!r}: it belongs to a run with other settings (backbone, input size, "
                f"epochs, ...) or is incomplete ({torch_error_summary(e)}). Resume with the arguments of the "
                "interrupted run, or use another out_dir."
            ) from e
        if saved_select != select:  # its best_key orders epochs by the other rule: comparisons would be wrong
            raise ValueError(
                f"Cannot resume from {str(last)!r} with select={select!r}: that run kept epochs by "
                f"select={saved_select!r}. Resume with select={saved_select!r}, or use another out_dir."
            )
        logger.info("resuming %s from epoch %d", out / "last.pt", start_epoch)

    t_start = time.perf_counter()
    step_loss: list[float] = []
    for epoch in range(start_epoch, epochs):
        frozen = epoch < freeze_epochs
        for p in body_params:
            p.requires_grad_(not frozen)
        model.train()
        if frozen:
            model.backbone.eval()  # frozen BatchNorm statistics too
        train_ds.set_epoch(epoch)
        tot_loss, tot_correct, tot_n = 0.0, 0, 0
        t0 = time.perf_counter()
        bar = tqdm(
            train_loader,
            total=steps,
            desc=f"epoch {epoch + 1}/{epochs}" + (" (head only)" if frozen else ""),
            disable=not show_progress,
            unit="batch",
        )
        for b, (x, y) in enumerate(bar):
            if b >= steps:
                break
            x = normalise_uint8(x.to(dev, non_blocking=True), mean, std)
            y = y.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(x)
                loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            n = len(y)
            step_loss.append(float(loss.detach()))
            tot_loss += step_loss[-1] * n
            tot_correct += int((logits.argmax(1) == y).sum())
            tot_n += n
            bar.set_postfix(loss=f"{tot_loss / tot_n:.3f}")
        train_time = time.perf_counter() - t0
        val_logits, val_y = _run_eval(model, val_loader, device=dev, amp=amp, mean=mean, std=std)
        val_p = calibrated_proba(val_logits)
        val_loss = float(nn.functional.cross_entropy(torch.from_numpy(val_logits), torch.from_numpy(val_y)))
        m = evaluate(val_y, val_p, threshold=0.5)
        row = {
            "epoch": epoch + 1,
            "train_loss": tot_loss / max(tot_n, 1),
            "train_acc": tot_correct / max(tot_n, 1),
            "val_loss": val_loss,
            "val_acc": m["accuracy"],
            "val_auroc": m["roc_auc"],
            "val_f1": m["f1"],
            "frozen_backbone": frozen,
            "train_patches": tot_n,
            "train_s": train_time,
            "patches_per_s": tot_n / max(train_time, 1e-9),
        }
        history.append(row)
        auroc = float(np.nan_to_num(m["roc_auc"], nan=-1.0))
        neg_loss = -val_loss if np.isfinite(val_loss) else -np.inf  # a NaN loss never wins, never blocks
        key = (auroc, neg_loss) if select == "val_auroc" else (neg_loss, auroc)
        improved = key > best_key or best_state is None  # the first epoch always counts
        if improved:
            best_key, best_epoch, bad_epochs = key, epoch + 1, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        logger.info(
            "epoch %d: train loss %.4f acc %.3f | val loss %.4f acc %.3f AUROC %.4f | %.0f patches/s%s",
            epoch + 1,
            row["train_loss"],
            row["train_acc"],
            val_loss,
            m["accuracy"],
            m["roc_auc"],
            row["patches_per_s"],
            " *" if improved else "",
        )
        if out is not None:
            _save_state(
                out,
                model,
                optimizer,
                scheduler,
                gen,
                history,
                epoch,
                best_epoch,
                bad_epochs,
                best_key,
                best_state,
                select,
            )
            _write_history(out, history)
        if bad_epochs >= patience and not frozen:
            logger.info("early stopping: no validation improvement for %d epochs", patience)
            break

    seconds = time.perf_counter() - t_start
    model.load_state_dict(best_state)
    val_logits, val_y = _run_eval(model, val_loader, device=dev, amp=amp, mean=mean, std=std)
    calibration = fit_calibration(val_logits, val_y)
    val_p = calibrated_proba(val_logits, **calibration)
    threshold = choose_threshold(val_y, val_p, metric="f1")
    hist = pd.DataFrame(history)
    hist["best"] = hist["epoch"] == best_epoch
    model.config.update(
        {
            "name": name,
            "head_trained": True,
            "greyscale": augment == "grey",  # inference must see grey patches too (classify_spots applies it)
            **calibration,
            "threshold": threshold,
            "training": {
                "recipe": {
                    "backbone": backbone,
                    "weights": cfg.get("weights"),
                    "input_size": input_size,
                    "patch_um": patch_um,
                    "epochs": epochs,
                    "batch_size": batch_size,
                    "lr": lr,
                    "backbone_lr_factor": backbone_lr_factor,
                    "weight_decay": weight_decay,
                    "freeze_epochs": freeze_epochs,
                    "balance": balance,
                    "augment": augment,
                    "scale_jitter": list(scale_jitter),
                    "patience": patience,
                    "select": select,
                    "seed": seed,
                    "max_batches_per_epoch": max_batches_per_epoch,
                },
                "epochs_run": len(history),
                "best_epoch": best_epoch,
                "seconds": seconds,
                "device": str(dev),
                "class_counts": _class_counts(patches, split_key),
            },
            "metrics": {"val": evaluate(val_y, val_p, threshold=threshold)},
            **(extra_config or {}),
        }
    )
    model = model.cpu().to(memory_format=torch.contiguous_format)
    if out is not None:
        save_checkpoint(model, out / "best.pt")
        try:
            import matplotlib.pyplot as plt

            from kgl.pl import training_curves

            axes = training_curves(hist, save=out / "curves.png")
            plt.close(axes[0].figure)  # only the file: an open figure would pop up in notebooks and accumulate
        except ImportError:  # pragma: no cover - plotting is optional here
            pass
    return TrainResult(model, hist, best_epoch, out, val_p, val_y, seconds, np.asarray(step_loss))


def _class_counts(patches: pd.DataFrame, split_key: str) -> dict[str, dict[str, int]]:
    tab = patches.groupby([split_key, "label"]).size().unstack(fill_value=0)
    return {
        str(s): {("glomerulus" if int(lab) == 1 else "other"): int(n) for lab, n in r.items()}
        for s, r in tab.iterrows()
    }


def _write_history(out: Path, history: Sequence[dict[str, Any]]) -> None:
    from kgl._utils import atomic_path

    with atomic_path(out / "history.csv") as tmp:
        pd.DataFrame(history).to_csv(tmp, index=False)


def _save_state(
    out: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    gen: Any,
    history: list,
    epoch: int,
    best_epoch: int,
    bad_epochs: int,
    best_key: tuple,
    best_state: Any,
    select: str,
) -> None:
    """Resumable state, loadable with ``weights_only=True`` (tensors, numbers, strings only)."""
    import torch

    from kgl._utils import atomic_path

    state = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),  # dropout draws
        "history": json.dumps(history),
        "epoch": epoch,
        "best_epoch": best_epoch,
        "bad_epochs": bad_epochs,
        "best_key": torch.tensor(best_key, dtype=torch.float64),
        "best_model": best_state,
        "select": select,
    }
    with atomic_path(out / "last.pt") as tmp:
        torch.save(state, tmp)
