"""Calibrated probabilities of a trained model on a table of training-style patches (no augmentation)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["evaluate_patches"]


def evaluate_patches(
    model: Any, table: pd.DataFrame, *, batch_size: int = 128, device: Any = "auto", num_workers: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated glomerulus probabilities of a trained model on a patch table (no augmentation)."""
    import torch
    from torch.utils.data import DataLoader

    from kgl.im import PatchDataset, collate_patches
    from kgl.tl._calibration import calibrated_proba
    from kgl.tl._device import autocast_dtype, normaliser, resolve_device

    dev = resolve_device(device)
    amp = autocast_dtype(dev, "auto")
    spec = model.spec
    ds = PatchDataset(table, size=spec.preprocessing.input_size, augment=spec.augment, train=False)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_patches)
    model = model.to(dev, memory_format=torch.channels_last)
    mean, std = normaliser(spec.preprocessing, dev)
    logits, labels = run_eval(model, loader, device=dev, amp=amp, mean=mean, std=std)
    model.cpu()
    calib = spec.calibration
    return calibrated_proba(logits, calib.temperature, calib.logit_bias, positive=spec.positive_index), labels


def run_eval(model: Any, loader: Any, *, device: Any, amp: Any, mean: Any, std: Any) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels over a loader (eval mode, no grad)."""
    import torch

    from kgl.models import fold_batchnorm
    from kgl.tl._device import normalise_uint8

    model.eval()
    net = fold_batchnorm(model)  # the same folded network classify_spots runs
    logits, labels = [], []
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        for x, y in loader:
            x = normalise_uint8(x.to(device, non_blocking=True), mean, std)
            logits.append(net(x).float().cpu())
            labels.append(y)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()
