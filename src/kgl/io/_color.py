"""Colour conversion of image blocks to ``uint8`` RGB, explicit per dtype and colour mode."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["to_rgb_uint8"]

_MODES = ("RGB", "RGBA", "L", "LA", "CMYK")


def _infer_mode(shape: Sequence[int]) -> str:
    if len(shape) == 2:
        return "L"
    if len(shape) != 3:
        raise ValueError(f"Expected an image of shape (H, W) or (H, W, C), got shape {tuple(shape)}.")
    return {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}.get(int(shape[2])) or _bad_channels(shape)


def _bad_channels(shape: Sequence[int]) -> str:
    raise ValueError(
        f"Expected 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA/CMYK) channels in the last axis, got shape "
        f"{tuple(shape)}. Channel-first arrays must be transposed to (H, W, C)."
    )


def to_rgb_uint8(block: np.ndarray, mode: str | None = None, *, fill: int = 255) -> np.ndarray:
    """Convert an image block to ``uint8`` RGB ``(H, W, 3)``, explicitly per dtype and mode.

    - ``uint8``: unchanged; ``uint16``: full range mapped to 0–255 (``/ 257``); other integers are
      rejected; ``float``: expected in ``[0, 1]`` (the matplotlib/scanpy convention), scaled by 255
      and clipped; ``bool``: 0/255.
    - ``L`` is replicated to 3 channels; ``RGBA``/``LA`` are composited over white (``fill``), so
      transparent background reads as empty slide; ``CMYK`` is converted with the naive
      ``(1 - C)(1 - K)`` formula (no ICC profile).
    """
    block = np.asarray(block)
    mode = mode or _infer_mode(block.shape)
    if mode not in _MODES:
        raise ValueError(f"Unknown image mode {mode!r}; expected one of {_MODES}.")
    if block.dtype == np.uint8:
        arr = block
    elif block.dtype == np.uint16:
        arr = ((block.astype(np.float32) + 128.0) / 257.0).astype(np.uint8)
    elif block.dtype == bool:
        arr = block.astype(np.uint8) * 255
    elif np.issubdtype(block.dtype, np.floating):
        arr = (np.clip(np.nan_to_num(block, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise ValueError(
            f"Unsupported image dtype {block.dtype}; kgl reads uint8, uint16, bool and float images in [0, 1]."
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if mode == "L":
        return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr[..., :3]
    if mode == "RGB":
        return arr
    if mode == "CMYK":
        cmyk = arr.astype(np.float32) / 255.0
        rgb = 255.0 * (1.0 - cmyk[..., :3]) * (1.0 - cmyk[..., 3:4])
        return (rgb + 0.5).astype(np.uint8)
    # alpha modes: composite over ``fill``
    color = arr[..., :3] if mode == "RGBA" else np.repeat(arr[..., :1], 3, axis=2)
    alpha = arr[..., -1:].astype(np.float32) / 255.0
    out = color.astype(np.float32) * alpha + float(fill) * (1.0 - alpha)
    return (out + 0.5).astype(np.uint8)


def _check_float_range(arr: Any) -> None:
    """Floats must be in [0, 1]; check a strided sample so huge lazy arrays stay lazy."""
    if not np.issubdtype(np.dtype(arr.dtype), np.floating):
        return
    h, w = int(arr.shape[0]), int(arr.shape[1])
    step = max(1, int(max(h, w) // 256))
    sample = np.asarray(arr[::step, ::step])
    if np.nanmax(sample, initial=0.0) > 1.0 + 1e-6 or np.nanmin(sample, initial=0.0) < -1e-6:
        raise ValueError(
            "Float images must hold values in [0, 1] (scanpy/matplotlib convention); got values in "
            f"[{np.nanmin(sample):.3g}, {np.nanmax(sample):.3g}]. Convert to uint8 or rescale first."
        )
