"""Train the dense glomerulus map: a segmentation-models-pytorch U-Net on the polygon masks.

:func:`train_map` is :func:`kgl.tl.train`'s sibling: the same epoch loop (:func:`kgl.tl._train.fit_epochs`),
progress record, resumable ``last.pt`` and ``history.csv``; only the task's steps differ — crops
and masks (:class:`kgl.im.MapCropDataset`), the smp model (:func:`kgl.models.build_segmenter`),
BCE + Dice, whole-slide validation, and a finalisation that calibrates the per-spot **fraction**
and picks the call threshold on validation spots (a Visium lattice laid over the validation slides).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kgl._geometry import SPOT_DIAMETER_UM, disk_means, spot_coverage, spot_lattice
from kgl._logging import logger, no_bar
from kgl.tl._train import TrainResult, _Fit, _Progress, _resume, fit_epochs

__all__ = ["MapTrainConfig", "train_map"]

_MAP_HISTORY = ("epoch", "train_loss", "val_loss", "val_auroc", "val_dice", "train_crops", "train_s", "crops_per_s")
_MAP_RECIPE_KEYS = ("arch", "backbone", "weights", "mpp", "input_size", "epochs", "steps_per_epoch", "batch_size",
                    "lr", "encoder_lr_factor", "weight_decay", "glom_share", "augment", "scale_jitter", "select",
                    "seed")  # fmt: skip


@dataclass(frozen=True)
class MapTrainConfig:
    """The keyword settings of one :func:`train_map` call (see there)."""

    split_key: str = "split"
    arch: str = "Unet"
    backbone: str = "mobilenet_v2"
    weights: str | None = "DEFAULT"
    mpp: float = 2.0
    input_size: int = 256
    epochs: int = 5
    steps_per_epoch: int = 100
    batch_size: int = 12
    lr: float = 1e-3
    encoder_lr_factor: float = 0.5
    weight_decay: float = 1e-4
    glom_share: float = 0.5
    augment: str = "hed+color"
    scale_jitter: tuple[float, float] = (0.8, 1.25)
    patience: int = 10
    select: str = "val_loss"
    out_dir: str | os.PathLike | None = None
    resume: bool = False
    name: str = "kgl-glom-map"
    seed: int = 0
    device: Any = "auto"
    precision: str = "auto"
    num_workers: int = 0
    show_progress: bool = True
    extra_config: dict[str, Any] | None = None
    freeze_epochs: int = 0  # the shared loop's; a map trains its encoder from the first step

    @property
    def out(self) -> Path | None:
        """``out_dir`` as a :class:`~pathlib.Path` (``None``: nothing written)."""
        return Path(self.out_dir) if self.out_dir is not None else None

    def recipe(self, weights: str | None) -> dict[str, Any]:
        """The recipe entry of the model config."""
        return {k: (weights if k == "weights" else list(getattr(self, k)) if k == "scale_jitter" else getattr(self, k))
                for k in _MAP_RECIPE_KEYS}  # fmt: skip


@dataclass
class _MapData:
    """Training crops and the validation slides (whole, at the map's µm/px)."""

    train_ds: Any
    train_loader: Any
    val_loader: list[tuple[Any, Any]]  # per validation slide: uint8 (1, H, W, 3), mask (1, 1, H, W), padded to 32
    val_slides: list[tuple[np.ndarray, np.ndarray, Any]]  # image, soft mask, polygons at the map's µm/px
    generator: Any
    steps: int


def train_map(slides: pd.DataFrame, **settings: Any) -> TrainResult:
    """Train a glomerulus map (segmentation) on annotated slides, split by biopsy/case.

    Parameters
    ----------
    slides
        Slide table (:func:`kgl.datasets.multistain_slides`, :func:`kgl.datasets.he_biopsy_slides`:
        ``path``, ``polygons``, ``mpp``, ``group``) with a ``split_key`` column of ``train`` / ``val``
        (``test`` rows are never read); make it with :func:`kgl.tl.split_by_group`. Repeat rows to
        sample a set more often.
    **settings
        :class:`MapTrainConfig` fields: ``arch`` / ``backbone`` / ``weights`` (an smp architecture on a
        torchvision encoder with its ImageNet weights, :func:`kgl.models.build_segmenter`), ``mpp`` and
        ``input_size`` (the map's µm/px and the crop side), ``epochs`` × ``steps_per_epoch`` steps of
        ``batch_size`` crops, ``lr`` (decoder; the encoder gets ``lr * encoder_lr_factor``, AdamW,
        one-cycle), ``glom_share`` (crops centred on a glomerulus), ``augment`` and ``scale_jitter``
        (:class:`kgl.im.MapCropDataset`), ``select`` / ``patience`` (as :func:`kgl.tl.train`),
        ``out_dir`` / ``resume`` / ``name`` / ``seed`` / ``device`` / ``precision`` / ``num_workers`` /
        ``show_progress`` / ``extra_config`` (as :func:`kgl.tl.train`).

    Returns
    -------
    :class:`kgl.tl.TrainResult` whose ``model`` is a :class:`~kgl.models.GlomSegmenter` with the
    spot-fraction calibration and call threshold fitted on validation spots; ``val_proba`` /
    ``val_labels`` are those spots' calibrated probabilities and labels (coverage ≥ 0.5).

    """
    cfg = MapTrainConfig(**settings)
    from kgl.tl._device import autocast_dtype, resolve_device

    tr, va = _check_map_inputs(slides, cfg)
    dev = resolve_device(cfg.device)
    amp = autocast_dtype(dev, cfg.precision)
    if cfg.out is not None:
        from kgl._files import ensure_dir

        ensure_dir(cfg.out, what="training outputs")
    fit = _build_map_fit(cfg, device=dev, amp=amp)
    data = _build_map_data(tr, va, cfg)
    fit = _with_optimizer(fit, cfg)
    progress = _resume(cfg, fit, data) if cfg.resume else _Progress()
    seconds = fit_epochs(cfg, fit, data, progress, train_one_epoch=_train_map_epoch, evaluate=_evaluate_map,
                         columns=_MAP_HISTORY, log_epoch=_log_map_epoch)  # fmt: skip
    result = _finalise_map(slides, cfg, fit, data, progress, seconds=seconds)
    if cfg.out is not None:
        from kgl.models import save_checkpoint

        save_checkpoint(result.model, cfg.out / "best.pt")
    return result


def _check_map_inputs(slides: pd.DataFrame, cfg: MapTrainConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    if cfg.split_key not in slides:
        raise KeyError(f"slides has no {cfg.split_key!r} column; make one with kgl.tl.split_by_group(slides).")
    missing = {"path", "polygons", "mpp"} - set(slides.columns)
    if missing:
        raise KeyError(f"slides lacks columns {sorted(missing)}; build it with kgl.datasets.*_slides().")
    tr = slides[slides[cfg.split_key] == "train"]
    va = slides[slides[cfg.split_key] == "val"]
    for nm, part in (("train", tr), ("val", va)):
        if not len(part) or not part["polygons"].map(len).sum():
            raise ValueError(f"The {nm} split needs slides with glomeruli; it has {len(part)} slides.")
    if "group" in slides:
        from kgl.tl._split import check_no_leakage

        check_no_leakage(slides, slides[cfg.split_key], group_key="group")
    for k in ("epochs", "steps_per_epoch", "batch_size"):
        v = getattr(cfg, k)
        if int(v) != v or v < 1:
            raise ValueError(f"{k} must be a positive integer, got {v!r}.")
    return tr, va


def _build_map_fit(cfg: MapTrainConfig, *, device: Any, amp: Any) -> _Fit:
    import torch

    from kgl.models import build_segmenter
    from kgl.tl._device import normaliser

    model = build_segmenter(cfg.arch, cfg.backbone, cfg.weights, mpp=cfg.mpp, input_size=cfg.input_size, seed=cfg.seed,
                            greyscale=cfg.augment == "grey")  # inference must see grey tiles too  # fmt: skip
    model = model.to(device, memory_format=torch.channels_last)
    mean, std = normaliser(model.spec.preprocessing, device)
    return _Fit(model, _bce_dice(), None, None, None, device, amp, mean, std)


def _bce_dice() -> Any:
    """BCE + soft Dice on logits (Dice from segmentation-models-pytorch, over the whole batch)."""
    from segmentation_models_pytorch.losses import DiceLoss
    from torch import nn

    bce, dice = nn.BCEWithLogitsLoss(), DiceLoss(mode="binary", from_logits=True)
    return lambda logits, y: bce(logits, y) + dice(logits, y)


def _with_optimizer(fit: _Fit, cfg: MapTrainConfig) -> _Fit:
    import torch

    model = fit.model
    enc = list(model.net.encoder.parameters())
    ids = {id(p) for p in enc}
    rest = [p for p in model.parameters() if id(p) not in ids]
    lrs = [cfg.lr, cfg.lr * cfg.encoder_lr_factor]
    optimizer = torch.optim.AdamW([{"params": rest, "lr": lrs[0]}, {"params": enc, "lr": lrs[1]}],
                                  weight_decay=cfg.weight_decay)  # fmt: skip
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lrs, total_steps=max(1, cfg.epochs * cfg.steps_per_epoch), pct_start=0.15
    )
    scaler = torch.amp.GradScaler(fit.device.type, enabled=fit.amp == torch.float16)
    return _Fit(model, fit.criterion, optimizer, scheduler, scaler, fit.device, fit.amp, fit.mean, fit.std)


def _build_map_data(tr: pd.DataFrame, va: pd.DataFrame, cfg: MapTrainConfig) -> _MapData:
    import torch
    from torch.utils.data import DataLoader

    from kgl.im import MapCropDataset, collate_crops, slide_at_mpp
    from kgl.io import image_size

    train_ds = MapCropDataset(tr, mpp=cfg.mpp, size=cfg.input_size, length=cfg.steps_per_epoch * cfg.batch_size,
                              glom_share=cfg.glom_share, augment=cfg.augment, scale_jitter=cfg.scale_jitter,
                              train=True, seed=cfg.seed)  # fmt: skip
    # workers are not persistent: each epoch's workers get the dataset with that epoch's set_epoch
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate_crops,
                        num_workers=cfg.num_workers)  # fmt: skip

    val_loader, val_slides = [], []
    for _, row in va.drop_duplicates("path").iterrows():
        rgb, mask = slide_at_mpp(row, cfg.mpp)
        h, w = mask.shape
        native_w, native_h = image_size(row["path"])  # the file's own size, whatever the table says
        f = (w / native_w, h / native_h)
        polys = [_scaled(p, f) for p in row["polygons"]]
        val_slides.append((rgb, mask, polys))
        H, W = -(-h // 32) * 32, -(-w // 32) * 32
        x = np.full((1, H, W, 3), 255, dtype=np.uint8)
        x[0, :h, :w] = rgb
        y = np.zeros((1, 1, H, W), dtype=np.float32)
        y[0, 0, :h, :w] = mask
        val_loader.append((torch.from_numpy(x), torch.from_numpy(y)))
    gen = torch.Generator().manual_seed(cfg.seed)
    return _MapData(train_ds, loader, val_loader, val_slides, gen, cfg.steps_per_epoch)


def _scaled(poly: Any, f: tuple[float, float]) -> Any:
    """A polygon of the native pixel frame in the resampled one (pixel centres at integers in both)."""
    import shapely

    fx, fy = f
    return shapely.transform(poly, lambda c: np.column_stack(((c[:, 0] + 0.5) * fx - 0.5, (c[:, 1] + 0.5) * fy - 0.5)))


def _train_map_epoch(fit: _Fit, data: _MapData, cfg: MapTrainConfig, *, epoch: int, frozen: bool,
                     progress: _Progress) -> dict[str, Any]:  # fmt: skip
    """One pass of ``steps_per_epoch`` crop batches; appends each step's loss to ``progress``."""
    import time

    import torch
    from tqdm.auto import tqdm

    from kgl.tl._device import normalise_uint8

    model, dev, amp = fit.model, fit.device, fit.amp
    model.train()
    data.train_ds.set_epoch(epoch)
    tot, n, t0 = 0.0, 0, time.perf_counter()
    bar = tqdm(data.train_loader, total=data.steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
               disable=no_bar(cfg.show_progress))  # fmt: skip
    for x, y in bar:
        x = normalise_uint8(x.to(dev, non_blocking=True), fit.mean, fit.std)
        y = y.to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = fit.criterion(model(x).float(), y)
        fit.optimizer.zero_grad(set_to_none=True)
        fit.scaler.scale(loss).backward()
        fit.scaler.step(fit.optimizer)
        fit.scaler.update()
        fit.scheduler.step()
        progress.step_loss.append(float(loss.detach()))
        tot += progress.step_loss[-1] * len(x)
        n += len(x)
        bar.set_postfix(loss=f"{tot / n:.3f}")
    secs = time.perf_counter() - t0
    return {"train_loss": tot / max(n, 1), "train_crops": n, "train_s": secs, "crops_per_s": n / max(secs, 1e-9)}


def _predict_val(fit: _Fit, val_loader: list[tuple[Any, Any]]) -> list[np.ndarray]:
    """Logits of each whole validation slide (eval mode, no grad)."""
    import torch

    from kgl.tl._device import normalise_uint8

    fit.model.eval()
    out = []
    with torch.inference_mode(), torch.autocast(fit.device.type, dtype=fit.amp or torch.float32,
                                                enabled=fit.amp is not None):  # fmt: skip
        for x, _ in val_loader:
            x = normalise_uint8(x.to(fit.device), fit.mean, fit.std, greyscale=fit.model.spec.preprocessing.greyscale)
            out.append(fit.model(x).float().cpu().numpy()[0, 0])
    return out


def _evaluate_map(fit: _Fit, val_loader: list[tuple[Any, Any]]) -> dict[str, float]:
    """Validation BCE + Dice over the whole validation slides, pixel ROC-AUC and Dice at 0.5."""
    import torch
    from sklearn.metrics import roc_auc_score

    logits = _predict_val(fit, val_loader)
    z = np.concatenate([lg.ravel() for lg in logits])
    y = np.concatenate([m.numpy().ravel() for _, m in val_loader])
    loss = float(fit.criterion(torch.from_numpy(z)[None, None, None], torch.from_numpy(y)[None, None, None]))
    hard = y >= 0.5
    rng = np.random.default_rng(0)
    take = rng.choice(len(z), min(len(z), 200_000), replace=False)  # a fixed subsample: AUROC in O(n log n)
    auroc = float(roc_auc_score(hard[take], z[take])) if 0 < hard[take].mean() < 1 else float("nan")
    pred = z > 0
    dice = 2.0 * float((pred & hard).sum()) / max(float(pred.sum() + hard.sum()), 1.0)
    return {"val_loss": loss, "val_auroc": auroc, "val_dice": dice}


def _log_map_epoch(row: dict[str, Any], improved: bool) -> None:
    logger.info("epoch %d: train loss %.4f | val loss %.4f AUROC %.4f Dice %.3f | %.1f crops/s%s", row["epoch"],
                row["train_loss"], row["val_loss"], row["val_auroc"], row["val_dice"], row["crops_per_s"],
                " *" if improved else "")  # fmt: skip


def validation_spots(
    maps: list[np.ndarray], slides: list[tuple[np.ndarray, np.ndarray, Any]], mpp: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Map fractions and true coverage of a Visium lattice (seeded offset) laid over each validation slide."""
    rng = np.random.default_rng(seed)
    frac, cov = [], []
    for proba, (rgb, _, polys) in zip(maps, slides, strict=True):
        h, w = rgb.shape[:2]
        lat = spot_lattice(w * mpp, h * mpp, (float(rng.uniform(0, 100)), float(rng.uniform(0, 50 * np.sqrt(3)))))
        xy = np.column_stack((lat["x_um"], lat["y_um"])) / mpp - 0.5
        keep = (xy[:, 0] < w - 0.5) & (xy[:, 1] < h - 0.5)
        xy = xy[keep]
        radius = SPOT_DIAMETER_UM / 2 / mpp
        frac.append(np.nan_to_num(disk_means(proba[:h, :w], xy, radius, origin=-0.5)[0]))
        cov.append(spot_coverage(xy, polys, radius))
    return np.concatenate(frac), np.concatenate(cov)


def _finalise_map(slides: pd.DataFrame, cfg: MapTrainConfig, fit: _Fit, data: _MapData, progress: _Progress, *,
                  seconds: float) -> TrainResult:  # fmt: skip
    """The best epoch's map, its spot fraction calibrated and the call threshold chosen on validation spots."""
    import torch

    from kgl.tl._calibration import fit_calibration
    from kgl.tl._evaluate import choose_threshold, evaluate
    from kgl.tl._map import fraction_logits, fraction_proba
    from kgl.tl._train import _mpp_range

    model = fit.model
    model.load_state_dict(progress.best_state)
    maps = [1.0 / (1.0 + np.exp(-lg)) for lg in _predict_val(fit, data.val_loader)]
    frac, cov = validation_spots(maps, data.val_slides, cfg.mpp, cfg.seed)
    keep = (cov >= 0.5) | (cov == 0)  # ambiguous spots (0 < coverage < 0.5) are left out, as in the protocol
    y = (cov[keep] >= 0.5).astype(int)
    if not 0 < y.sum() < len(y):
        raise ValueError(
            f"The validation slides give {int(y.sum())} glomerulus spots (coverage ≥ 0.5) of {len(y)}: the spot "
            "calibration needs both. Put slides with whole glomeruli (and background) in the 'val' split."
        )
    calibration = fit_calibration(fraction_logits(frac[keep]), y)
    from kgl.models import Calibration

    p = fraction_proba(frac[keep], Calibration(calibration["temperature"], calibration["logit_bias"]))
    threshold = choose_threshold(y, p, metric="f1")
    hist = pd.DataFrame(progress.history)
    hist["best"] = hist["epoch"] == progress.best_epoch
    model.config.update({
        "name": cfg.name,
        "head_trained": True,
        **calibration,
        "threshold": threshold,
        "training": {
            "recipe": cfg.recipe(model.config.get("weights")),
            "epochs_run": len(progress.history),
            "best_epoch": progress.best_epoch,
            "seconds": seconds,
            "device": str(fit.device),
            "precision": "fp32" if fit.amp is None else str(fit.amp).removeprefix("torch."),
            "slides": {s: int((slides[cfg.split_key] == s).sum()) for s in ("train", "val", "test")},
            "mpp_range": _mpp_range(slides, cfg.split_key),
            "validation_spots": {"n": int(keep.sum()), "glomerulus": int(y.sum())},
        },
        "metrics": {"val (spots)": evaluate(y, p, threshold=threshold)},
        **(cfg.extra_config or {}),
    })  # fmt: skip
    model = model.cpu().to(memory_format=torch.contiguous_format)
    return TrainResult(model, hist, progress.best_epoch, cfg.out, p, y, seconds, np.asarray(progress.step_loss))
