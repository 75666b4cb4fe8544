"""The pixel grid of a dense map over a tissue image, and its overlapping tiles.

A map is one more "level" of the image: map pixel ``j`` covers full-resolution ``x`` in
``[j·D − 0.5, (j+1)·D − 0.5)`` (pixel centres at integers, as :class:`kgl.io.SlideImage` levels),
``D = step × level.downsample``. ``step`` (level pixels per map pixel) is a multiple of 1/8 chosen
nearest to the model's µm/px, and tiles start at multiples of 32 map pixels, so every tile is an
integer window of the pyramid level (:meth:`~kgl.io.SlideImage.read_window`) resampled by one
fixed factor: tiles line up with each other and with the image exactly, with no per-tile rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from kgl.io import SlideImage

__all__ = ["MapGrid", "MapTiles", "blend_block", "blend_window", "map_grid"]

#: Tiles start on multiples of this many map pixels (the encoder's stride: features align too).
ALIGN = 32


@dataclass(frozen=True)
class MapGrid:
    """Where a map's pixels lie on an image (see the module text).

    Attributes
    ----------
    level
        Pyramid level of the image that is read.
    step
        Level pixels per map pixel (a multiple of 1/8).
    downsample
        Full-resolution pixels per map pixel.
    mpp
        µm per map pixel.
    region
        ``(row0, row1, col0, col1)``: the map pixels computed (multiples of :data:`ALIGN` at the start).

    """

    level: int
    step: Fraction
    downsample: float
    mpp: float
    region: tuple[int, int, int, int]

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the computed region."""
        r0, r1, c0, c1 = self.region
        return r1 - r0, c1 - c0

    def to_map(self, xy: np.ndarray) -> np.ndarray:
        """Full-resolution ``(x, y)`` → continuous map pixel coordinates of the region (centres at integers)."""
        r0, _, c0, _ = self.region
        xy = np.asarray(xy, dtype=np.float64)
        return np.column_stack(
            ((xy[:, 0] + 0.5) / self.downsample - 0.5 - c0, (xy[:, 1] + 0.5) / self.downsample - 0.5 - r0)
        )


def map_grid(
    image: SlideImage,
    *,
    image_mpp: float,
    model_mpp: float,
    bbox: tuple[float, float, float, float] | None = None,
) -> MapGrid:
    """The grid at (nearly) ``model_mpp`` µm/px over ``bbox`` (full-res ``x0, y0, x1, y1``; the whole image by default).

    ``image_mpp`` is µm per full-resolution pixel (the spot lattice's). The level read is the
    coarsest whose pixels are no larger than the model's (:meth:`~kgl.io.SlideImage.select_level`);
    the map's µm/px is the level's times ``step``, which differs from ``model_mpp`` by at most
    1/16 of a level pixel per map pixel (recorded in :attr:`MapGrid.mpp`).
    """
    if not (np.isfinite(image_mpp) and image_mpp > 0 and np.isfinite(model_mpp) and model_mpp > 0):
        raise ValueError(f"µm/px must be positive: image {image_mpp!r}, model {model_mpp!r}.")
    level = image.select_level(model_mpp / image_mpp)
    d = image.levels[level].downsample
    step = Fraction(max(1, round(8 * model_mpp / (image_mpp * d))), 8)
    ds = float(step) * d
    h, w = image.shape
    x0, y0, x1, y1 = (-0.5, -0.5, w - 0.5, h - 0.5) if bbox is None else bbox
    x0, y0, x1, y1 = max(x0, -0.5), max(y0, -0.5), min(x1, w - 0.5), min(y1, h - 0.5)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"The map's region {bbox} does not overlap the {w}x{h} image.")
    c0 = int(np.floor((x0 + 0.5) / ds)) // ALIGN * ALIGN
    r0 = int(np.floor((y0 + 0.5) / ds)) // ALIGN * ALIGN
    c1 = int(np.ceil((x1 + 0.5) / ds))
    r1 = int(np.ceil((y1 + 0.5) / ds))
    return MapGrid(level, step, ds, ds * image_mpp, (r0, max(r1, r0 + 1), c0, max(c1, c0 + 1)))


class MapTiles:
    """Map-style dataset of the overlapping tiles covering a :class:`MapGrid` (for a DataLoader or a loop).

    Item ``k`` is ``(row, col, tile)``: the tile's top-left map pixel (region coordinates; negative
    for the first tiles, whose halo lies before the region) and its ``uint8`` RGB pixels
    ``(size, size, 3)``; outside the image is white. Neighbouring tiles overlap by ``2 · halo``.
    """

    def __init__(self, image: SlideImage, grid: MapGrid, *, size: int = 512, halo: int = 64, fill: int = 255) -> None:
        if size % ALIGN or halo % ALIGN or size <= 2 * halo:
            raise ValueError(
                f"Tile size ({size}) and halo ({halo}) must be multiples of {ALIGN} px with size > 2 × halo."
            )
        self.image, self.grid, self.size, self.halo, self.fill = image, grid, int(size), int(halo), fill
        stride = self.size - 2 * self.halo
        rows, cols = grid.shape
        starts_r = np.arange(-self.halo, max(rows - self.halo, 1), stride)
        starts_c = np.arange(-self.halo, max(cols - self.halo, 1), stride)
        self.starts = [(int(r), int(c)) for r in starts_r for c in starts_c]
        #: ``(tile rows, tile columns)``; tile ``k`` is at ``divmod(k, shape[1])``. Tile ``(i, j)``'s core
        #: (its pixels minus the halos) is map pixels ``[i·stride, (i+1)·stride) × [j·stride, (j+1)·stride)``.
        self.tile_shape = (len(starts_r), len(starts_c))
        self.stride = stride

    def runs(self, batch_size: int) -> list[list[int]]:
        """Tiles per forward pass: runs of ``batch_size`` along each tile row, row after row.

        The serial loop and the Dask blocks (:func:`kgl.tl.glomerulus_map` with ``use_dask=True``)
        batch the same tiles together, so their forward passes, and their maps, are the same.
        """
        n_r, n_c = self.tile_shape
        starts = range(0, n_c, batch_size)
        return [[i * n_c + j for j in range(j0, min(j0 + batch_size, n_c))] for i in range(n_r) for j0 in starts]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, k: int) -> tuple[int, int, np.ndarray]:
        import cv2

        r, c = self.starts[k]
        g = self.grid
        r0, _, c0, _ = g.region
        step, n = g.step, self.size
        # map pixels [a, a + n) are level pixels [a·step, (a + n)·step): integers (a is a multiple of 32)
        y, x = (r0 + r) * step, (c0 + c) * step
        m = n * step
        assert y.denominator == x.denominator == m.denominator == 1
        win = self.image.read_window(g.level, int(x), int(y), int(x + m), int(y + m), fill=self.fill)
        if int(m) != n:
            interp = cv2.INTER_AREA if m > n else cv2.INTER_LINEAR
            win = cv2.resize(win, (n, n), interpolation=interp)
        return r, c, np.ascontiguousarray(win)


def blend_window(size: int, halo: int) -> np.ndarray:
    """Per-pixel tile weight ``(size, size)``: 1 in the core, ramping to ~0 across the halo (a seamless blend)."""
    i = np.arange(size) + 0.5
    ramp = np.clip(np.minimum(i, size - i) / max(halo, 1), 1e-3, 1.0)
    return np.outer(ramp, ramp).astype(np.float32)


def blend_block(ext: np.ndarray, *, size: int, halo: int, n_tiles: int) -> np.ndarray:
    """The blended cores of a run of tiles from their weighted outputs and their neighbours' halos (overlap-add).

    ``ext`` is ``(C + 1, size + 2·halo, n_tiles·size + 2·halo)``: the run's tiles side by side, each
    ``(values × weight, weight)`` with the weight last, extended by ``halo`` from the neighbouring
    tiles on every side (zeros where there is none: :func:`dask.array.map_overlap` with
    ``depth=halo, boundary=0``). Returns ``(C, size − 2·halo, n_tiles·(size − 2·halo))``: ``Σ values·w /
    Σ w`` over the (up to 9) tiles that cover each core pixel, added in the tiles' row-major order,
    as the serial loop of :func:`kgl.tl._map.predict_map` adds them: the same floating-point sums.
    """
    h, core = halo, size - 2 * halo
    # (slice in ext, slice in the core) of the tile above/left (-1), the tile itself (0), below/right (+1)
    rows = {-1: (slice(0, h), slice(0, h)), 0: (slice(2 * h, size), slice(0, core)),
            1: (slice(size + h, size + 2 * h), slice(core - h, core))}  # fmt: skip
    acc = np.zeros((ext.shape[0], core, n_tiles * core), dtype=ext.dtype)
    for t in range(n_tiles):
        e0, o0 = t * size, t * core  # the tile starts at ext column h + t·size
        cols = {-1: (slice(e0, e0 + h), slice(o0, o0 + h)), 0: (slice(e0 + 2 * h, e0 + size), slice(o0, o0 + core)),
                1: (slice(e0 + size + h, e0 + size + 2 * h), slice(o0 + core - h, o0 + core))}  # fmt: skip
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                (er, orow), (ec, ocol) = rows[dr], cols[dc]
                acc[:, orow, ocol] += ext[:, er, ec]
    values, weight = acc[:-1], acc[-1]
    return np.divide(values, np.maximum(weight, 1e-12, out=weight), out=values)
