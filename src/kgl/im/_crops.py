"""Training crops for the glomerulus map: images and polygon masks at the model's µm/px, sampled over tissue.

:class:`MapCropDataset` holds each slide (a row of a slide table: :func:`kgl.datasets.multistain_slides`,
:func:`kgl.datasets.he_biopsy_slides`) resampled once to the map's µm/px, with its glomerulus mask
rasterised from the polygons at that resolution (a soft mask: each pixel holds its area share inside
a glomerulus). Item ``i`` is a crop centred on a glomerulus (share ``glom_share``) or on a random
tissue pixel, with albumentations geometry (scale jitter, any rotation, flips) and the stain/colour
augmentation of :func:`kgl.im.build_transform` applied to image and mask together.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from kgl.im._dataset import build_transform

__all__ = ["MapCropDataset", "collate_crops", "rasterise_polygons", "slide_at_mpp"]


def rasterise_polygons(polygons: list[Any], shape: tuple[int, int]) -> np.ndarray:
    """``uint8`` mask (1 inside any polygon) of a ``(H, W)`` image; polygons in its pixel frame (centres at integers).

    Filled with OpenCV at 1/16-pixel vertex precision (``shift=4``); holes are cleared.
    """
    import cv2
    import shapely

    mask = np.zeros(shape, dtype=np.uint8)
    scale = 16.0

    def ring(coords: Any) -> np.ndarray:
        return np.round(np.asarray(coords)[:, :2] * scale).astype(np.int32)

    for geom in polygons:
        for poly in shapely.get_parts(geom):
            if poly.is_empty:
                continue
            cv2.fillPoly(mask, [ring(poly.exterior.coords)], 1, lineType=cv2.LINE_8, shift=4)
            for hole in poly.interiors:
                cv2.fillPoly(mask, [ring(hole.coords)], 0, lineType=cv2.LINE_8, shift=4)
    return mask


def slide_at_mpp(row: Any, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """A slide's RGB image and soft glomerulus mask (``float32`` in [0, 1]) resampled to ``mpp`` µm/px."""
    import cv2

    from kgl.io import read_wsi

    image = read_wsi(row["path"])
    h, w = image.shape
    rgb = image.read_window(0, 0, 0, w, h)
    mask = rasterise_polygons(list(row["polygons"]), (h, w)).astype(np.float32)
    f = float(row["mpp"]) / float(mpp)  # output px per input px
    size = (max(1, round(w * f)), max(1, round(h * f)))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    return cv2.resize(rgb, size, interpolation=interp), cv2.resize(mask, size, interpolation=interp)


class MapCropDataset:
    """Map-style dataset of ``(uint8 crop (size, size, 3), float32 mask (size, size))`` pairs for map training.

    Parameters
    ----------
    slides
        Slide table rows (``path``, ``polygons``, ``mpp``); a row repeated is sampled more often.
    mpp
        µm per pixel of the map.
    size
        Crop side in px (a multiple of 32).
    length
        Items per epoch.
    glom_share
        Share of crops centred on a glomerulus (the rest are centred on random tissue).
    augment
        Colour/stain recipe of :func:`kgl.im.build_transform`; ``train=False`` uses none and no geometry.
    scale_jitter
        Range of the random zoom (log-uniform): the multistain µm/px is estimated (±25 %).
    train
        Augment (else a fixed, deterministic crop per item).
    seed
        Crops depend on ``(seed, epoch, index)`` only.

    """

    def __init__(
        self,
        slides: pd.DataFrame,
        *,
        mpp: float,
        size: int,
        length: int,
        glom_share: float = 0.5,
        augment: str = "hed+color",
        scale_jitter: tuple[float, float] = (0.8, 1.25),
        train: bool = True,
        seed: int = 0,
    ) -> None:
        import albumentations as A
        import cv2

        missing = {"path", "polygons", "mpp"} - set(slides.columns)
        if missing:
            raise KeyError(f"The slide table lacks columns {sorted(missing)}; build it with kgl.datasets.*_slides().")
        if not 0.0 <= glom_share <= 1.0:
            raise ValueError(f"glom_share must be in [0, 1], got {glom_share!r}.")
        if len(scale_jitter) != 2 or not 0 < scale_jitter[0] <= scale_jitter[1]:
            raise ValueError(f"scale_jitter must be (low, high) with 0 < low <= high, got {scale_jitter!r}.")
        self.size, self.length, self.glom_share = int(size), int(length), float(glom_share)
        self.train, self.seed, self.epoch, self.mpp = bool(train), int(seed), 0, float(mpp)
        cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.images, self.masks, self.glom_xy, self.tissue_xy = [], [], [], []
        for _, row in slides.iterrows():  # a repeated row shares its arrays
            key = f"{row['path']}@{row['mpp']}"
            if key not in cache:
                cache[key] = slide_at_mpp(row, mpp)
            rgb, mask = cache[key]
            self.images.append(rgb)
            self.masks.append(mask)
            self.glom_xy.append(self._centres(row, mpp))
            tissue = np.argwhere(rgb.min(axis=2) < 220)[:, ::-1]  # (x, y) of non-white pixels
            self.tissue_xy.append(tissue if len(tissue) else np.argwhere(np.ones(rgb.shape[:2]))[:, ::-1])
        # the centre crop's corners, rotated by any angle and zoomed out to min(scale_jitter), must still
        # sample the padded window: half its side >= size / sqrt(2) / min(scale_jitter) (+1 px of interpolation)
        self.pad = int(np.ceil(self.size * np.sqrt(2) / min(scale_jitter))) + 2
        affine = A.Affine(
            scale=scale_jitter, rotate=(-180, 180), border_mode=cv2.BORDER_CONSTANT, fill=255, fill_mask=0, p=1.0
        )
        geometry = [affine] if train else []
        self.transform = A.Compose(
            [*geometry, A.CenterCrop(self.size, self.size), build_transform(augment, train=train, seed=seed)], seed=seed
        )

    @staticmethod
    def _centres(row: Any, mpp: float) -> np.ndarray:
        f = float(row["mpp"]) / mpp
        pts = [((p.centroid.x + 0.5) * f - 0.5, (p.centroid.y + 0.5) * f - 0.5) for p in row["polygons"]]
        return np.asarray(pts, dtype=np.float64).reshape(-1, 2)

    def set_epoch(self, epoch: int) -> None:
        """Change the crops and the augmentation draw (call once per epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng((self.seed, self.epoch if self.train else 0, int(i)))
        k = int(rng.integers(len(self.images)))
        img, mask = self.images[k], self.masks[k]
        gloms = self.glom_xy[k]
        if len(gloms) and rng.random() < self.glom_share:
            cx, cy = gloms[rng.integers(len(gloms))] + rng.uniform(-0.3, 0.3, 2) * self.size
        else:
            cx, cy = self.tissue_xy[k][rng.integers(len(self.tissue_xy[k]))]
        x0, y0 = round(cx) - self.pad // 2, round(cy) - self.pad // 2
        crop = _padded(img, x0, y0, self.pad, 255)
        mcrop = _padded(mask, x0, y0, self.pad, 0)
        self.transform.set_random_seed(int(rng.integers(2**31 - 1)))
        out = self.transform(image=crop, mask=mcrop)
        return np.ascontiguousarray(out["image"]), np.ascontiguousarray(out["mask"], dtype=np.float32)


def _padded(arr: np.ndarray, x0: int, y0: int, n: int, fill: float) -> np.ndarray:
    """``arr[y0:y0+n, x0:x0+n]`` with ``fill`` outside."""
    h, w = arr.shape[:2]
    out = np.full((n, n, *arr.shape[2:]), fill, dtype=arr.dtype)
    xa, xb, ya, yb = max(x0, 0), min(x0 + n, w), max(y0, 0), min(y0 + n, h)
    if xa < xb and ya < yb:
        out[ya - y0 : yb - y0, xa - x0 : xb - x0] = arr[ya:yb, xa:xb]
    return out


def collate_crops(batch: list[tuple[np.ndarray, np.ndarray]]) -> tuple[Any, Any]:
    """``(uint8 images (B, H, W, 3), float32 masks (B, 1, H, W))`` as torch tensors."""
    import torch

    return torch.from_numpy(np.stack([b[0] for b in batch])), torch.from_numpy(np.stack([b[1] for b in batch])[:, None])
