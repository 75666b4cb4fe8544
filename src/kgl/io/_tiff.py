"""TIFF / OME-TIFF / BigTIFF: the tifffile + zarr reader (tile-wise) and the pyramid writer."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from kgl._logging import logger
from kgl.io._lazy import _FileImage, _scaled

__all__ = ["write_tiff_pyramid"]


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


class _TiffHandle:
    """One process's open TIFF and a zarr array per pyramid level of its first series."""

    def __init__(self, path: Path, n_levels: int) -> None:
        import tifffile
        import zarr

        self.tif = tifffile.TiffFile(path)
        self.arrays = [zarr.open(self.tif.series[0].aszarr(level=i), mode="r") for i in range(n_levels)]

    def close(self) -> None:
        self.tif.close()


class _TiffImage(_FileImage):
    """A (pyramidal) TIFF read tile-wise through tifffile's zarr store.

    The file is (re)opened lazily in each process (:class:`~kgl.io._lazy._FileImage`), so the object
    can be sent to DataLoader worker processes; only the tiles overlapping a requested region are decoded.
    """

    _what = "TIFF"

    def __init__(self, path: Path, *, mpp: float | None = None, downsample: float = 1.0) -> None:
        import tifffile

        self._init_handle()
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
        mode = "CMYK" if photometric == tifffile.PHOTOMETRIC.SEPARATED else None
        self._shapes = shapes
        h0 = shapes[0][0]
        levels = [(_ShapeOnly(s, self, i), downsample * h0 / s[0]) for i, s in enumerate(shapes)]
        super().__init__(
            levels, mpp=mpp if mpp is not None else _scaled(meta_mpp, downsample), mode=mode, name=path.name, path=path
        )
        self.metadata_mpp = meta_mpp
        # sanity: a truncated file fails on first access, not deep inside a DataLoader worker
        self._read_block(len(shapes) - 1, 0, 1, 0, 1)
        self.dtype = np.dtype(self._array(0).dtype)

    def _open_handle(self) -> _TiffHandle:
        return _TiffHandle(self.path, len(self._shapes))

    def _array(self, level: int) -> Any:
        return self._handle_here().arrays[level]

    def _read_level(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self._array(level)[y0:y1, x0:x1]


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


class _ShapeOnly:
    """Stand-in level array exposing shape/dtype without opening the file in this process."""

    def __init__(self, shape: tuple[int, ...], owner: _TiffImage, level: int) -> None:
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
    from kgl._files import ensure_dir

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
