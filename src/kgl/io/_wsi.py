"""Open whole-slide images and snapshots of any common format as a lazy :class:`~kgl.io.SlideImage`.

- TIFF / OME-TIFF / BigTIFF: tifffile + zarr, tile-wise (:meth:`SlideImage.open`).
- Vendor WSI formats that are TIFF inside (Aperio SVS, Hamamatsu NDPI, Leica SCN, Ventana BIF):
  :mod:`tiffslide`; each pyramid level is wrapped as an array-like whose slices call
  ``TiffSlide.read_region`` for just that window.
- JPEG / PNG / BMP snapshots: Pillow (decoded once, when opened).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from kgl.io._image import SlideImage

__all__ = ["read_wsi"]

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".ome.tif", ".ome.tiff")
_TIFFSLIDE_SUFFIXES = (".svs", ".ndpi", ".scn", ".bif")
_PIL_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_OPENSLIDE_ONLY = (".mrxs", ".vms", ".vmu")
SUPPORTED_SUFFIXES = _TIFF_SUFFIXES + _TIFFSLIDE_SUFFIXES + _PIL_SUFFIXES
"""File name endings :func:`read_wsi` opens."""


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".ome.tiff", ".ome.tif"):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def read_wsi(path: str | os.PathLike, *, mpp: float | None = None) -> Any:
    """Open a whole-slide image or a snapshot lazily, with its µm/px when the file records it.

    Parameters
    ----------
    path
        Image file: TIFF/OME-TIFF (``.tif``, ``.tiff``, ``.btf``, ``.ome.tif``), a vendor
        whole-slide format read by :mod:`tiffslide` (``.svs``, ``.ndpi``, ``.scn``, ``.bif``) or
        a snapshot read by Pillow (``.jpg``, ``.jpeg``, ``.png``, ``.bmp``).
    mpp
        µm per level-0 pixel, overriding the file's metadata (Aperio ``MPP``, OME
        ``PhysicalSizeX``, TIFF resolution tags). Snapshots rarely record it.

    Returns
    -------
    :class:`~kgl.io.SlideImage` whose ``mpp`` is ``mpp``, else the file's µm/px, else ``None``
    (the caller decides: e.g. Visium scalefactors or an estimate from object sizes). Pyramid
    levels are read tile-wise on demand; :meth:`~kgl.io.SlideImage.read_region` picks the level.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The format is not supported (the message lists what is) or the file cannot be read.

    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file {str(path)!r} does not exist.")
    if mpp is not None and not (np.isfinite(float(mpp)) and float(mpp) > 0):
        raise ValueError(f"mpp must be a positive number of µm per pixel, got {mpp!r}.")
    suffix = _suffix(path)
    if suffix in _TIFFSLIDE_SUFFIXES:
        return _TiffSlideImage(path, mpp=mpp)
    if suffix in _TIFF_SUFFIXES or suffix in _PIL_SUFFIXES:
        return SlideImage.open(path, mpp=mpp)
    hint = ""
    if suffix in _OPENSLIDE_ONLY:
        hint = (
            f" {suffix} (MIRAX/VMS) is not a TIFF and needs OpenSlide; convert it to a pyramidal OME-TIFF "
            "first (e.g. `vips tiffsave in.mrxs out.ome.tif --tile --pyramid`)."
        )
    raise ValueError(
        f"Unsupported image format {suffix or '(no suffix)'!r} of {str(path)!r}. Supported: "
        f"{', '.join(SUPPORTED_SUFFIXES)}.{hint}"
    )


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image's level 0 from its header, without decoding pixels."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file {str(path)!r} does not exist.")
    if _suffix(path) in _PIL_SUFFIXES:
        from PIL import Image

        try:
            with Image.open(path) as im:
                return int(im.size[0]), int(im.size[1])
        except Exception as e:  # PIL raises many types for broken files
            raise ValueError(f"Could not read image header of {str(path)!r}: {e}") from e
    h, w = read_wsi(path).shape
    return int(w), int(h)


# ---------------------------------------------------------------------------------------------
# tiffslide
# ---------------------------------------------------------------------------------------------
class _TiffSlideImage(SlideImage):
    """A vendor whole-slide image read through :class:`tiffslide.TiffSlide`, level by level on demand.

    The slide is (re)opened lazily in each process, so the object can go to DataLoader workers.
    """

    def __init__(self, path: Path, *, mpp: float | None = None) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._slide: Any = None
        self.path = path
        try:
            slide = self._open()
            dims = [(int(w), int(h)) for w, h in slide.level_dimensions]
            downsamples = [float(d) for d in slide.level_downsamples]
            meta_mpp = slide.properties.get("tiffslide.mpp-x")
            # one pixel of the coarsest level: channel count, dtype and a truncated-file check
            probe = np.asarray(slide.read_region((0, 0), len(dims) - 1, (1, 1), as_array=True, padding=False))
        except Exception as e:
            raise ValueError(f"Could not read slide {str(path)!r} with tiffslide (corrupt or unsupported?): {e}") from e
        channels = int(probe.shape[-1]) if probe.ndim == 3 else 1
        levels = [
            (_SlideLevel(self, i, (h, w, channels), probe.dtype), ds)
            for i, ((w, h), ds) in enumerate(zip(dims, downsamples, strict=True))
        ]
        self.metadata_mpp = float(meta_mpp) if meta_mpp else None
        super().__init__(levels, mpp=mpp if mpp is not None else self.metadata_mpp, name=path.name, path=path)
        self.vendor = slide.properties.get("tiffslide.vendor")

    def _open(self) -> Any:
        import tiffslide

        with self._lock:
            if self._pid != os.getpid() or self._slide is None:
                self._slide = tiffslide.TiffSlide(self.path)
                self._pid = os.getpid()
            return self._slide

    def _read_block(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        try:
            return self.levels[level].array[y0:y1, x0:x1]
        except Exception as e:
            raise ValueError(f"Could not decode slide {str(self.path)!r} (corrupt or truncated?): {e}") from e

    def close(self) -> None:
        """Close the file handle (reopened on next access)."""
        with self._lock:
            if self._slide is not None:
                self._slide.close()
            self._slide, self._pid = None, None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_lock=None, _slide=None, _pid=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


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
        slide = self._owner._open()
        ds = float(slide.level_downsamples[self._level])
        loc = (_level0_coordinate(x0, ds), _level0_coordinate(y0, ds))
        arr = np.asarray(slide.read_region(loc, self._level, (w, h), as_array=True, padding=False))
        if arr.ndim == 2:
            arr = arr[..., None]
        return arr[::ystep, ::xstep, cs]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self[:, :]
        return arr if dtype is None else arr.astype(dtype)
