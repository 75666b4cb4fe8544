"""Vendor whole-slide formats that are TIFF inside (Aperio SVS, Hamamatsu NDPI, Leica SCN, Ventana BIF).

Read through :mod:`tiffslide`; each pyramid level is wrapped as an array-like whose slices call
``TiffSlide.read_region`` for just that window. Open files with :meth:`kgl.io.SlideImage.open`
(alias :func:`kgl.io.read_wsi`), which picks this backend for ``.svs``, ``.ndpi``, ``.scn``, ``.bif``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# the factory and its helpers live in _image; re-exported here, where they used to be defined
from kgl.io._image import SUPPORTED_SUFFIXES, image_size, read_wsi
from kgl.io._lazy import _FileImage, _scaled

__all__ = ["SUPPORTED_SUFFIXES", "image_size", "read_wsi"]


class _TiffSlideImage(_FileImage):
    """A vendor whole-slide image read through :class:`tiffslide.TiffSlide`, level by level on demand.

    The slide is (re)opened lazily in each process (:class:`~kgl.io._lazy._FileImage`), so the object
    can go to DataLoader workers.
    """

    _what = "slide"

    def __init__(self, path: Path, *, mpp: float | None = None, downsample: float = 1.0) -> None:
        self._init_handle()
        self.path = path
        try:
            slide = self._handle_here()
            dims = [(int(w), int(h)) for w, h in slide.level_dimensions]
            downsamples = [float(d) for d in slide.level_downsamples]
            meta_mpp = slide.properties.get("tiffslide.mpp-x")
            # one pixel of the coarsest level: channel count, dtype and a truncated-file check
            probe = np.asarray(slide.read_region((0, 0), len(dims) - 1, (1, 1), as_array=True, padding=False))
        except Exception as e:
            raise ValueError(f"Could not read slide {str(path)!r} with tiffslide (corrupt or unsupported?): {e}") from e
        channels = int(probe.shape[-1]) if probe.ndim == 3 else 1
        levels = [
            (_SlideLevel(self, i, (h, w, channels), probe.dtype), downsample * ds)
            for i, ((w, h), ds) in enumerate(zip(dims, downsamples, strict=True))
        ]
        self.metadata_mpp = float(meta_mpp) if meta_mpp else None
        own_mpp = mpp if mpp is not None else _scaled(self.metadata_mpp, downsample)
        super().__init__(levels, mpp=own_mpp, name=path.name, path=path)
        self.vendor = slide.properties.get("tiffslide.vendor")

    def _open_handle(self) -> Any:
        import tiffslide

        return tiffslide.TiffSlide(self.path)

    def _read_level(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.levels[level].array[y0:y1, x0:x1]


def _level0_coordinate(i: int, downsample: float) -> int:
    """The level-0 coordinate that ``TiffSlide.read_region`` maps to level pixel ``i`` (``int(c / ds) == i``)."""
    c = int(np.ceil(i * downsample))
    while c > 0 and int(c / downsample) > i:
        c -= 1
    while int(c / downsample) < i:
        c += 1
    return c


class _SlideLevel:
    """Array-like view ``(H, W, C)`` of one tiffslide level; slicing reads only that window."""

    def __init__(self, owner: _TiffSlideImage, level: int, shape: tuple[int, int, int], dtype: Any) -> None:
        self._owner = owner
        self._level = level
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) > 3 or any(not isinstance(k, slice) for k in key[:2]):
            raise IndexError("slide levels support basic slicing [y0:y1, x0:x1(, channels)] only.")
        key = key + (slice(None),) * (3 - len(key))
        ys, xs, cs = key
        y0, y1, ystep = ys.indices(self.shape[0])
        x0, x1, xstep = xs.indices(self.shape[1])
        h, w = max(0, y1 - y0), max(0, x1 - x0)
        if h == 0 or w == 0:
            return np.zeros((h, w, self.shape[2]), dtype=self.dtype)[::ystep, ::xstep, cs]
        slide = self._owner._handle_here()
        ds = float(slide.level_downsamples[self._level])
        loc = (_level0_coordinate(x0, ds), _level0_coordinate(y0, ds))
        arr = np.asarray(slide.read_region(loc, self._level, (w, h), as_array=True, padding=False))
        if arr.ndim == 2:
            arr = arr[..., None]
        return arr[::ystep, ::xstep, cs]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self[:, :]
        return arr if dtype is None else arr.astype(dtype)
