"""Lazy, resolution-aware access to tissue images (TIAToolbox-style ``read_region``).

A :class:`SlideImage` is a list of pyramid levels, each an array-like (numpy, zarr, dask) with its
downsample factor relative to the full-resolution frame in which Visium spot coordinates live
(``adata.obsm["spatial"]``). Callers ask for "a square of this many full-res pixels around this
point, resampled to this many output pixels"; the reader picks the coarsest level that still
has at least the output resolution and touches only the pixels it needs. Nothing here loads a
whole TIFF into memory.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kgl._logging import logger

__all__ = ["SlideImage", "to_rgb_uint8", "write_tiff_pyramid"]

_MODES = ("RGB", "RGBA", "L", "LA", "CMYK")


@dataclass(frozen=True)
class Level:
    """One pyramid level: an array-like ``(H, W[, C])`` and full-res px per level px."""

    array: Any
    downsample: float

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.array.shape[0]), int(self.array.shape[1])


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


class SlideImage:
    """A tissue image in the full-resolution spot frame, possibly multi-resolution and lazy.

    Parameters
    ----------
    levels
        ``(array, downsample)`` pairs; ``downsample`` is the number of full-resolution pixels per
        pixel of that level (``1 / tissue_hires_scalef`` for a Visium hires PNG).
    mpp
        µm per *full-resolution* pixel recorded in the image's own metadata, if any.
    mode
        Colour mode of the stored pixels (``RGB``, ``RGBA``, ``L``, ``LA``, ``CMYK``); inferred
        from the channel count when omitted.
    name
        Used in messages.

    """

    def __init__(
        self,
        levels: Sequence[tuple[Any, float]],
        *,
        mpp: float | None = None,
        mode: str | None = None,
        name: str = "image",
        path: str | os.PathLike | None = None,
    ) -> None:
        if not levels:
            raise ValueError(f"{name}: an image needs at least one level.")
        lv = sorted((Level(a, float(d)) for a, d in levels), key=lambda lv: lv.downsample)
        for level in lv:
            if not np.isfinite(level.downsample) or level.downsample <= 0:
                raise ValueError(f"{name}: downsample factors must be finite and > 0, got {level.downsample}.")
        self.levels: list[Level] = lv
        self.mode = mode or _infer_mode(lv[0].array.shape)
        for level in lv:
            if _infer_mode(level.array.shape) != self.mode and self.mode != "CMYK":
                raise ValueError(f"{name}: all levels must have the same channels.")
        self.mpp = mpp
        self.name = name
        self.path = None if path is None else Path(path)
        self.dtype = np.dtype(lv[0].array.dtype)

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_array(cls, array: Any, *, downsample: float = 1.0, **kwargs: Any) -> SlideImage:
        """Wrap an in-memory (or dask/zarr) ``(H, W[, C])`` array."""
        _check_float_range(array)
        return cls([(array, downsample)], **kwargs)

    @classmethod
    def open(cls, path: str | os.PathLike, *, mpp: float | None = None, downsample: float = 1.0) -> SlideImage:
        """Open an image file lazily: TIFF/OME-TIFF through tifffile + zarr, PNG/JPEG through Pillow.

        Parameters
        ----------
        path
            Image file.
        mpp
            µm per pixel of level 0, overriding what the file's metadata says.
        downsample
            Full-resolution spot-frame pixels per pixel of this file's level 0 (1 for the
            Space Ranger full-resolution image).

        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Image file {str(path)!r} does not exist.")
        if path.suffix.lower() in {".tif", ".tiff", ".btf", ".svs", ".ome.tif"} or path.name.lower().endswith(
            ".ome.tiff"
        ):
            return _LazyTiff(path, mpp=mpp, downsample=downsample)
        from PIL import Image

        try:
            with Image.open(path) as im:
                im.load()
                arr = np.asarray(im.convert("RGB") if im.mode in {"P", "YCbCr", "I;16B"} else im)
        except Exception as e:  # PIL raises many types for broken files
            raise ValueError(f"Could not read image {str(path)!r}: {e}") from e
        return cls.from_array(arr, downsample=downsample, mpp=mpp, name=path.name, path=path)

    # ----------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the image in full-resolution pixels."""
        lv = self.levels[0]
        h, w = lv.shape
        return round(h * lv.downsample), round(w * lv.downsample)

    def select_level(self, fullres_px_per_out_px: float) -> int:
        """Coarsest level whose pixels are no larger than an output pixel."""
        best = 0
        for i, lv in enumerate(self.levels):
            if lv.downsample <= fullres_px_per_out_px * (1 + 1e-6):
                best = i
        return best

    def read_region(
        self,
        center: tuple[float, float],
        size: float,
        out_size: int,
        *,
        level: int | None = None,
        fill: int = 255,
    ) -> tuple[np.ndarray, float]:
        """Read a square region around a full-res point, resampled to ``out_size`` px.

        Parameters
        ----------
        center
            ``(x, y)`` in full-resolution pixels (``obsm["spatial"]`` order); pixel ``i`` has
            its centre at coordinate ``i``.
        size
            Side of the square in full-resolution pixels.
        out_size
            Side of the returned patch in pixels.
        level
            Pyramid level to read; chosen with :meth:`select_level` when omitted.
        fill
            Value for the part of the square outside the image (white: empty slide).

        Returns
        -------
        ``uint8`` RGB patch ``(out_size, out_size, 3)`` and the fraction of the square that lies
        inside the image.

        """
        patches, inside = self.read_regions([center], size, out_size, level=level, fill=fill)
        return patches[0], float(inside[0])

    def _window(self, center: tuple[float, float], size: float, level: int) -> tuple[int, int, int]:
        """Integer window ``(x0, y0, n)`` of level pixels whose centre is nearest to ``center``."""
        d = self.levels[level].downsample
        # continuous level coordinates of the centre (pixel centres at integers in both frames)
        u = (center[0] + 0.5) / d - 0.5
        v = (center[1] + 0.5) / d - 0.5
        n = max(1, round(size / d))
        return round(u - (n - 1) / 2), round(v - (n - 1) / 2), n

    def read_regions(
        self,
        centers: Sequence[tuple[float, float]] | np.ndarray,
        size: float,
        out_size: int,
        *,
        level: int | None = None,
        fill: int = 255,
        max_pixels: int = 2**25,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`read_region` for many nearby centres, decoding their common bounding box once.

        Neighbouring Visium patches overlap and share image tiles; reading the union once (when it
        is at most ``max_pixels`` level pixels, else window by window) avoids decoding each tile
        for every spot. Results are identical to calling :meth:`read_region` per centre.

        Returns
        -------
        ``uint8`` patches ``(k, out_size, out_size, 3)`` and the fraction of each square inside the image.

        """
        if level is None:
            level = self.select_level(size / out_size)
        h, w = self.levels[level].shape
        wins = [self._window(c, size, level) for c in centers]
        out = np.empty((len(wins), out_size, out_size, 3), dtype=np.uint8)
        inside = np.zeros(len(wins), dtype=np.float32)
        if not wins:
            return out, inside
        bx0, by0 = min(x for x, _, _ in wins), min(y for _, y, _ in wins)
        bx1, by1 = max(x + n for x, _, n in wins), max(y + n for _, y, n in wins)
        canvas = None
        if (bx1 - bx0) * (by1 - by0) <= max_pixels:
            canvas = self._read_padded(level, bx0, by0, bx1, by1, fill)
        for i, (x0, y0, n) in enumerate(wins):
            if canvas is None:
                window = self._read_padded(level, x0, y0, x0 + n, y0 + n, fill)
            else:
                window = canvas[y0 - by0 : y0 - by0 + n, x0 - bx0 : x0 - bx0 + n]
            out[i] = resize_square(np.ascontiguousarray(window), out_size)
            ov_x = max(0, min(x0 + n, w) - max(x0, 0))
            ov_y = max(0, min(y0 + n, h) - max(y0, 0))
            inside[i] = ov_x * ov_y / float(n * n)
        return out, inside

    def _read_padded(self, level: int, x0: int, y0: int, x1: int, y1: int, fill: int) -> np.ndarray:
        """RGB ``uint8`` pixels of ``[y0:y1, x0:x1]`` at ``level``; outside the image is ``fill``."""
        h, w = self.levels[level].shape
        out = np.full((y1 - y0, x1 - x0, 3), fill, dtype=np.uint8)
        xa, xb, ya, yb = max(x0, 0), min(x1, w), max(y0, 0), min(y1, h)
        if xa < xb and ya < yb:
            block = self._read_block(level, ya, yb, xa, xb)
            out[ya - y0 : yb - y0, xa - x0 : xb - x0] = to_rgb_uint8(block, self.mode, fill=fill)
        return out

    def _read_block(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.asarray(self.levels[level].array[y0:y1, x0:x1])

    def __repr__(self) -> str:
        lv = ", ".join(f"{lv.shape[1]}x{lv.shape[0]}@{lv.downsample:.3g}" for lv in self.levels)
        return f"SlideImage({self.name!r}, mode={self.mode}, dtype={self.dtype}, levels=[{lv}], mpp={self.mpp})"


def resize_square(window: np.ndarray, out_size: int) -> np.ndarray:
    """Resample a square ``uint8`` window to ``out_size`` (area averaging when shrinking)."""
    import cv2

    n = window.shape[0]
    if n == out_size:
        return window
    interp = cv2.INTER_AREA if n > out_size else cv2.INTER_LINEAR
    return cv2.resize(window, (out_size, out_size), interpolation=interp)


# ---------------------------------------------------------------------------------------------
# TIFF
# ---------------------------------------------------------------------------------------------
def _tiff_mpp(tif: Any) -> float | None:
    """µm/px of level 0 from OME PhysicalSizeX, an Aperio ``MPP =`` or the resolution tags."""
    page = tif.pages[0]
    if tif.is_ome and tif.ome_metadata:
        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        if m:
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
            factor = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4}.get(unit.group(1) if unit else "µm")
            if factor is not None:
                return float(m.group(1)) * factor
    desc = page.description or ""
    m = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
    if m:
        return float(m.group(1))
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        num, den = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
        if num and den and unit in (2, 3):
            px_per_unit = num / den
            return (25400.0 if unit == 2 else 10000.0) / px_per_unit
    return None


class _LazyTiff(SlideImage):
    """A (pyramidal) TIFF read tile-wise through tifffile's zarr store.

    The file is (re)opened lazily in each process, so the object can be sent to DataLoader
    worker processes; only the tiles overlapping a requested region are decoded.
    """

    def __init__(self, path: Path, *, mpp: float | None = None, downsample: float = 1.0) -> None:
        import tifffile

        self._lock = threading.Lock()
        self._pid = None
        self._handle = None
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                axes = series.axes
                shapes = [tuple(lvl.shape) for lvl in series.levels]
                photometric = tif.pages[0].photometric
                meta_mpp = _tiff_mpp(tif)
                _check_tiles_in_file(tif, series, path)
        except Exception as e:
            raise ValueError(f"Could not read TIFF {str(path)!r} (corrupt or truncated?): {e}") from e
        if axes not in ("YX", "YXS"):
            raise ValueError(
                f"TIFF {str(path)!r} has axes {axes!r}; kgl reads 2-D images with axes 'YX' or 'YXS' "
                "(brightfield RGB/grey). Save multi-channel or z-stack images as RGB first."
            )
        import tifffile as _tf

        mode = "CMYK" if photometric == _tf.PHOTOMETRIC.SEPARATED else None
        self._shapes = shapes
        self._arrays: dict[int, Any] = {}
        h0 = shapes[0][0]
        levels = [(_ShapeOnly(s, self, i), downsample * h0 / s[0]) for i, s in enumerate(shapes)]
        super().__init__(
            levels, mpp=mpp if mpp is not None else _scaled(meta_mpp, downsample), mode=mode, name=path.name, path=path
        )
        self.metadata_mpp = meta_mpp
        # sanity: a truncated file fails on first access, not deep inside a DataLoader worker
        self._read_block(len(shapes) - 1, 0, 1, 0, 1)
        self.dtype = np.dtype(self._array(0).dtype)

    def _open(self) -> None:
        import tifffile
        import zarr

        if self._pid == os.getpid() and self._handle is not None:
            return
        tif = tifffile.TiffFile(self.path)
        self._handle = tif
        self._pid = os.getpid()
        self._arrays = {}
        for i in range(len(self._shapes)):
            self._arrays[i] = zarr.open(tif.series[0].aszarr(level=i), mode="r")

    def _array(self, level: int) -> Any:
        with self._lock:
            self._open()
            return self._arrays[level]

    def _read_block(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        try:
            return np.asarray(self._array(level)[y0:y1, x0:x1])
        except Exception as e:
            raise ValueError(f"Could not decode TIFF {str(self.path)!r} (corrupt or truncated?): {e}") from e

    def close(self) -> None:
        """Close the file handle (reopened on next access)."""
        with self._lock:
            if self._handle is not None:
                self._handle.close()
            self._handle, self._arrays, self._pid = None, {}, None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_lock=None, _handle=None, _arrays={}, _pid=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _check_tiles_in_file(tif: Any, series: Any, path: Path) -> None:
    """A truncated TIFF has tile offsets past the end of the file: catch it from metadata, without decoding."""
    size = tif.filehandle.size
    for level in series.levels:
        for page in level.pages:
            if page is None or not hasattr(page, "dataoffsets"):
                continue
            ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False) if c]
            if ends and max(ends) > size:
                raise ValueError(f"tile data ends at byte {max(ends)} but the file has {size} bytes")


def _scaled(mpp: float | None, downsample: float) -> float | None:
    return None if mpp is None else mpp / downsample


class _ShapeOnly:
    """Stand-in level array exposing shape/dtype without opening the file in this process."""

    def __init__(self, shape: tuple[int, ...], owner: _LazyTiff, level: int) -> None:
        self.shape = shape
        self._owner = owner
        self._level = level

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._owner._array(self._level).dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._owner._array(self._level)[key])


def write_tiff_pyramid(
    path: str | os.PathLike,
    image: np.ndarray,
    *,
    mpp: float | None = None,
    tile: int = 256,
    compression: str | None = "zlib",
    min_size: int = 512,
) -> Path:
    """Write a tiled, pyramidal (SubIFD) TIFF with its µm/px in the resolution tags.

    Levels halve until the smaller side is below ``min_size``; the file is written to a temporary
    name and renamed, so a crash never leaves a partial file behind.
    """
    import cv2
    import tifffile

    path = Path(path)
    from kgl._utils import ensure_dir

    ensure_dir(path.parent, what=f"file {path.name!r}")
    pyramid = [image]
    while min(pyramid[-1].shape[:2]) // 2 >= min_size:
        prev = pyramid[-1]
        pyramid.append(cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA))
    photometric = "rgb" if image.ndim == 3 and image.shape[2] in (3, 4) else "minisblack"
    kw: dict[str, Any] = {"tile": (tile, tile), "compression": compression, "photometric": photometric}
    if image.ndim == 3 and image.shape[2] == 4:
        kw["extrasamples"] = ("unassalpha",)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=image.nbytes > 2**31) as tw:
            res = {} if mpp is None else {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
            tw.write(pyramid[0], subifds=len(pyramid) - 1, **kw, **res)
            for lvl in pyramid[1:]:
                tw.write(lvl, subfiletype=1, **kw)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    logger.debug("wrote %s with %d levels", path, len(pyramid))
    return path
