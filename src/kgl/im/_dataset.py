"""Training patches as a dataset (:class:`PatchDataset` over a :func:`kgl.im.sample_patches` table), and augmentation.

torch and albumentations are imported inside the functions that need them, so ``import kgl.im`` stays light.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from kgl.im._sampling import read_patch

__all__ = ["AUGMENTATIONS", "PatchDataset", "build_transform"]

#: Named augmentation recipes (geometric flips/rot90 + blur in all; the colour part differs).
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


def collate_patches(batch: list[tuple[np.ndarray, int]]) -> tuple[Any, Any]:
    import torch

    return torch.from_numpy(np.stack([b[0] for b in batch])), torch.tensor([b[1] for b in batch])
