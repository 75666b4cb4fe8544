"""Visium geometry: spot and lattice constants, and the µm per pixel of a spot frame.

The µm/px of the frame in which spot centres are given is taken from the **spot lattice**, the one
physical length every Visium capture area carries: neighbouring spots are 100 µm apart (centre to
centre, hexagonal). ``scalefactors["spot_diameter_fullres"]`` is only a cross-check, because
producers of Visium AnnData write it differently: Space Ranger as the pixels spanning "a
theoretical 65 µm spot", HEST-1k as 55 µm / pixel size. squidpy's experimental
``derive_mpp_from_shapes`` and HEST derive µm/px from the spot spacing the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kgl._logging import logger

SPOT_DIAMETER_UM = 55.0
"""Physical diameter of a Visium capture spot (the area whose transcripts a spot holds)."""
SPOT_PITCH_UM = 100.0
"""Centre-to-centre distance of neighbouring Visium spots."""
SPOT_DIAMETER_FULLRES_UM = 65.0
"""What Space Ranger's ``scalefactors["spot_diameter_fullres"]`` measures: the pixels spanning "a
theoretical 65 µm spot" (10x documentation), not the 55 µm capture area. Checked on V1_Mouse_Kidney:
with 65 µm, the diameter-derived µm/px agrees with the 100-µm lattice; with 55 µm it is 15 % off."""
ROW_PITCH_UM = SPOT_PITCH_UM * math.sqrt(3) / 2
"""86.60 µm between neighbouring array rows (hexagonal lattice)."""
COL_PITCH_UM = SPOT_PITCH_UM / 2
"""50 µm between neighbouring array columns (rows alternate parity)."""

#: Array-index steps to the three "forward" neighbours of a spot, each 100 µm away.
_NEIGHBOUR_STEPS = ((0, 2), (1, 1), (1, -1))
#: Fewest neighbour pairs (array lattice) or spots (nearest-neighbour spacing) for a lattice estimate.
MIN_LATTICE_PAIRS = 3
MIN_LATTICE_SPOTS = 5
#: Relative disagreement between µm/px sources above which a warning is logged.
MPP_TOLERANCE = 0.10
#: What a spot diameter may mean: Space Ranger's theoretical 65-µm spot, or the 55-µm capture spot (HEST-1k).
_DIAMETER_CONVENTIONS_UM = (SPOT_DIAMETER_FULLRES_UM, SPOT_DIAMETER_UM)


def mpp_from_scalefactors(sf: Mapping[str, Any]) -> float:
    """µm per full-resolution pixel implied by ``spot_diameter_fullres`` alone (the theoretical 65-µm spot).

    A cross-check only: :func:`spot_mpp` takes µm/px from the spot lattice.
    """
    return SPOT_DIAMETER_FULLRES_UM / float(sf["spot_diameter_fullres"])


def _near_median(d: np.ndarray) -> np.ndarray:
    """Distances within :data:`MPP_TOLERANCE` of their median: their mean is robust and sub-pixel precise."""
    return np.abs(d / np.median(d) - 1.0) <= MPP_TOLERANCE


def array_neighbour_distances(
    coords: Any, array_row: Any, array_col: Any, steps: Sequence[tuple[int, int]]
) -> np.ndarray:
    """Pixel distances between every pair of points that are neighbours on the array.

    ``(array_row + dr, array_col + dc)`` is a neighbour of ``(array_row, array_col)`` for each
    ``(dr, dc)`` in ``steps`` (Visium spots: :data:`_NEIGHBOUR_STEPS`; Visium HD bins: one row or
    one column). Points with a non-finite coordinate or index are left out, as are zero distances.
    """
    xy = np.asarray(coords, dtype=np.float64)[:, :2]
    row = np.asarray(array_row, dtype=np.float64)
    col = np.asarray(array_col, dtype=np.float64)
    ok = np.isfinite(xy).all(axis=1) & np.isfinite(row) & np.isfinite(col)
    if ok.sum() < 2:
        return np.empty(0)
    r, c, p = row[ok].astype(np.int64), col[ok].astype(np.int64), xy[ok]
    span = int(c.max() - c.min()) + 2 * max(abs(dc) for _, dc in steps) + 1
    key = (r - r.min()) * span + (c - c.min() + max(abs(dc) for _, dc in steps))
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    dists = []
    for dr, dc in steps:
        target = key + dr * span + dc
        pos = np.minimum(np.searchsorted(sorted_key, target), len(sorted_key) - 1)
        hit = sorted_key[pos] == target
        if hit.any():
            dists.append(np.hypot(*(p[hit] - p[order[pos[hit]]]).T))
    d = np.concatenate(dists) if dists else np.empty(0)
    return d[d > 0]


def lattice_pitch_px(coords: Any, array_row: Any = None, array_col: Any = None) -> tuple[float, str, int] | None:
    """Pixels between neighbouring spots (the 100-µm pitch) in the frame of ``coords``.

    With array coordinates, the distance of every pair of spots that are neighbours on the array
    (same row two columns apart, or adjacent rows one column apart: all six neighbours of a spot
    are 100 µm away); without them, the distance of each spot to its nearest neighbour. The mean of
    the distances within 10 % of their median is taken (integer pixel coordinates average out;
    missing spots, outliers and a rotated or flipped image do not matter).

    Parameters
    ----------
    coords
        ``(n, 2)`` spot centres ``x, y`` in pixels.
    array_row, array_col
        Space Ranger's array indices (``obs["array_row"]``, ``obs["array_col"]``), or ``None``.

    Returns
    -------
    ``(pitch_px, method, n)`` with ``method`` ``"array lattice"`` or ``"nearest-neighbour spacing"``
    and ``n`` the neighbour pairs (or spots) used; ``None`` when neither is possible (fewer than
    :data:`MIN_LATTICE_PAIRS` neighbour pairs and fewer than :data:`MIN_LATTICE_SPOTS` spots whose
    spacing agrees).

    """
    xy = np.asarray(coords, dtype=np.float64)[:, :2]
    finite = np.isfinite(xy).all(axis=1)
    if array_row is not None and array_col is not None:
        d = array_neighbour_distances(xy, array_row, array_col, _NEIGHBOUR_STEPS)
        if len(d) >= MIN_LATTICE_PAIRS:
            keep = _near_median(d)
            return float(np.mean(d[keep])), "array lattice", int(keep.sum())
    p = xy[finite]
    if len(p) >= MIN_LATTICE_SPOTS:
        from scipy.spatial import cKDTree

        d, _ = cKDTree(p).query(p, k=2)
        nn = d[:, 1]
        nn = nn[nn > 0]
        if len(nn) >= MIN_LATTICE_SPOTS:
            agree = _near_median(nn)
            if agree.sum() >= MIN_LATTICE_SPOTS and agree.mean() >= 0.5:  # a lattice, not scattered points
                return float(np.mean(nn[agree])), "nearest-neighbour spacing", int(agree.sum())
    return None


@dataclass(frozen=True)
class SpotMpp:
    """µm per pixel of a spot frame, with the source it came from and every value it was checked against.

    Attributes
    ----------
    mpp
        µm per pixel used.
    source
        ``"array lattice"``, ``"nearest-neighbour spacing"`` or ``"spot_diameter_fullres"``.
    lattice
        µm/px from the spot spacing (100 µm pitch), or ``None`` when too few spots.
    diameter
        µm/px from ``spot_diameter_fullres`` read as Space Ranger's 65-µm spot.
    image
        µm/px of the image's own metadata (TIFF/OME/Aperio), or ``None``.
    pitch_px
        Pixels between neighbouring spots, or ``None``.
    n_lattice
        Neighbour pairs (or spots) behind ``lattice``.

    """

    mpp: float
    source: str
    lattice: float | None
    diameter: float
    image: float | None
    pitch_px: float | None
    n_lattice: int

    def as_params(self) -> dict[str, Any]:
        """The record as ``uns[key]["params"]`` stores it (``mpp_*`` keys, JSON/h5ad-friendly)."""
        return {
            "mpp": self.mpp,
            "mpp_source": self.source,
            "mpp_lattice": float("nan") if self.lattice is None else self.lattice,
            "mpp_diameter": self.diameter,
            "mpp_metadata": float("nan") if self.image is None else self.image,
        }


def _log_ratio(a: float, b: float) -> float:
    return abs(math.log(a / b))


def _diameter_distance(pitch_px: float, diameter_px: float) -> float:
    """How far (|log ratio|) a pitch in px is from the one a spot diameter implies, under either convention."""
    return min(_log_ratio(pitch_px, diameter_px * SPOT_PITCH_UM / um) for um in _DIAMETER_CONVENTIONS_UM)


def check_spot_frame(pitch_px: float, sf: Mapping[str, Any], *, where: str, spatial_key: str = "spatial") -> None:
    """Refuse spot coordinates that are in hires/lowres pixels instead of full-resolution pixels.

    Space Ranger, squidpy and kgl keep spot centres in full-resolution pixels; coordinates
    multiplied by ``tissue_hires_scalef`` (or ``tissue_lowres_scalef``) are a classic mix-up
    (squidpy issue #399). When the lattice spacing matches ``spot_diameter_fullres × scalef`` of an
    image far better than ``spot_diameter_fullres`` itself, the patches would be cut at the wrong
    places and sizes: a :class:`ValueError` says so and how to fix it.
    """
    d = float(sf["spot_diameter_fullres"])
    full = _diameter_distance(pitch_px, d)
    for res in ("hires", "lowres"):
        s = sf.get(f"tissue_{res}_scalef")
        try:
            s = float(s)
        except (TypeError, ValueError):
            continue
        if not (np.isfinite(s) and 0 < s < 0.8):  # a scale factor near 1 cannot be told apart
            continue
        there = _diameter_distance(pitch_px, d * s)
        if there < math.log(1.25) and full > math.log(2.0):
            expected = d * SPOT_PITCH_UM / SPOT_DIAMETER_FULLRES_UM
            raise ValueError(
                f"The spot coordinates of {where} (obsm[{spatial_key!r}]) look like {res} image pixels, not "
                f"full-resolution pixels: neighbouring spots are {pitch_px:.1f} px apart, which is what "
                f"spot_diameter_fullres ({d:.4g}) × tissue_{res}_scalef ({s:.4g}) implies for the 100-µm spot pitch, "
                f"while full-resolution pixels would put them ~{expected:.0f} px apart. kgl, squidpy and Space Ranger "
                f"keep spot centres in full-resolution pixels: divide them by tissue_{res}_scalef, e.g. "
                f"adata.obsm[{spatial_key!r}] = adata.obsm[{spatial_key!r}] / {s:.6g}."
            )


def spot_mpp(
    coords: Any,
    sf: Mapping[str, Any],
    *,
    array_row: Any = None,
    array_col: Any = None,
    image_mpp: float | None = None,
    image_name: str | None = None,
    where: str = "the sample",
    spatial_key: str = "spatial",
) -> SpotMpp:
    """µm per pixel of the spot frame: from the lattice, cross-checked against the diameter and the image.

    The spot lattice (100 µm pitch, :func:`lattice_pitch_px`) is the source of truth. Only when it
    cannot be measured (fewer than a handful of spots) is ``spot_diameter_fullres`` used, read as
    Space Ranger's theoretical 65-µm spot, with a warning. A warning names every value when the
    sources disagree by more than :data:`MPP_TOLERANCE`; coordinates that look like hires/lowres
    pixels raise (:func:`check_spot_frame`).

    Parameters
    ----------
    coords
        ``(n, 2)`` spot centres ``x, y`` (full-resolution pixels).
    sf
        The library's scalefactors (``spot_diameter_fullres`` checked to be positive).
    array_row, array_col
        Array indices of the spots, when known.
    image_mpp
        µm per full-resolution pixel from the image's metadata, when it has any.
    image_name
        Names the image in messages.
    where
        Names the sample in messages.
    spatial_key
        Key of the coordinates in ``adata.obsm`` (for messages).

    """
    diameter_px = float(sf["spot_diameter_fullres"])
    mpp_diam = mpp_from_scalefactors(sf)
    img = float(image_mpp) if image_mpp is not None and np.isfinite(image_mpp) and image_mpp > 0 else None
    found = lattice_pitch_px(coords, array_row, array_col)
    if found is None:
        logger.warning(
            "%s has too few spots to measure the spot lattice (need %d neighbour pairs or %d evenly spaced spots): "
            "µm/px = %.4g from spot_diameter_fullres (%.4g px = Space Ranger's theoretical 65-µm spot). Check it if "
            "the AnnData was not written by Space Ranger.",
            where,
            MIN_LATTICE_PAIRS,
            MIN_LATTICE_SPOTS,
            mpp_diam,
            diameter_px,
        )
        result = SpotMpp(mpp_diam, "spot_diameter_fullres", None, mpp_diam, img, None, 0)
    else:
        pitch, method, n = found
        check_spot_frame(pitch, sf, where=where, spatial_key=spatial_key)
        mpp_lat = SPOT_PITCH_UM / pitch
        result = SpotMpp(mpp_lat, method, mpp_lat, mpp_diam, img, pitch, n)
        if _log_ratio(mpp_lat, mpp_diam) > math.log1p(MPP_TOLERANCE):
            as55 = SPOT_DIAMETER_UM / diameter_px
            if _log_ratio(mpp_lat, as55) <= math.log1p(MPP_TOLERANCE):
                logger.info(
                    "%s: spot_diameter_fullres (%.4g px) matches the 55-µm capture spot (as HEST-1k writes it), not "
                    "Space Ranger's 65-µm spot; µm/px = %.4g from the spot lattice.",
                    where,
                    diameter_px,
                    mpp_lat,
                )
            else:
                logger.warning(
                    "µm/px disagreement for %s: the spot lattice (%s, 100-µm pitch = %.1f px) gives %.4g µm/px, "
                    "spot_diameter_fullres (%.4g px as the 65-µm spot) %.4g µm/px (%.0f%% apart). Using the lattice; "
                    "check that the scalefactors belong to these coordinates.",
                    where,
                    method,
                    pitch,
                    mpp_lat,
                    diameter_px,
                    mpp_diam,
                    100 * abs(mpp_diam / mpp_lat - 1),
                )
    if img is not None and _log_ratio(img, result.mpp) > math.log1p(MPP_TOLERANCE):
        logger.warning(
            "µm/px disagreement for %s: image metadata%s says %.4g µm/px, the %s gives %.4g µm/px (lattice %s, "
            "spot_diameter_fullres %.4g; %.0f%% apart). Using the %s; check that the image belongs to these spots.",
            where,
            f" of {image_name}" if image_name else "",
            img,
            result.source,
            result.mpp,
            "n/a" if result.lattice is None else f"{result.lattice:.4g}",
            result.diameter,
            100 * abs(img / result.mpp - 1),
            result.source,
        )
    return result


def spot_lattice(width_um: float, height_um: float, offset_um: tuple[float, float]) -> pd.DataFrame:
    """Visium spot centres covering a ``width_um × height_um`` rectangle.

    Spot ``(array_row, array_col)`` with ``array_row + array_col`` even sits at
    ``x = array_col · 50 µm + offset_x``, ``y = array_row · 50√3 µm + offset_y``: a hexagonal
    lattice with 100 µm between neighbours, indexed as Space Ranger indexes a capture area.
    """
    ox, oy = offset_um
    rows = np.arange(0, math.floor((height_um - oy) / ROW_PITCH_UM) + 1)
    cols = np.arange(0, math.floor((width_um - ox) / COL_PITCH_UM) + 1)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    keep = (rr + cc) % 2 == 0
    rr, cc = rr[keep], cc[keep]
    return pd.DataFrame(
        {
            "array_row": rr.astype(np.int64),
            "array_col": cc.astype(np.int64),
            "x_um": cc * COL_PITCH_UM + ox,
            "y_um": rr * ROW_PITCH_UM + oy,
        }
    )


def spot_coverage(xy: np.ndarray, polygons: Sequence[Any], radius: float, *, quad_segs: int = 16) -> np.ndarray:
    """Fraction of each spot disk (centre ``xy``, ``radius``) covered by the union of ``polygons``."""
    import shapely

    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    cov = np.zeros(len(xy))
    if not len(polygons) or not len(xy):
        return cov
    union = shapely.union_all(np.asarray(polygons, dtype=object))
    disks = shapely.buffer(shapely.points(xy), radius, quad_segs=quad_segs)
    shapely.prepare(union)
    hit = shapely.intersects(disks, union)
    if hit.any():
        inter = shapely.intersection(disks[hit], union)
        cov[hit] = shapely.area(inter) / shapely.area(disks[hit])
    return np.clip(cov, 0.0, 1.0)


_POLYGONAL_TYPES = ("Polygon", "MultiPolygon")


def polygonal_part(geom: Any) -> Any:
    """The polygonal part of ``geom`` as a (Multi)Polygon, or ``None`` when it has none."""
    import shapely
    from shapely.geometry import MultiPolygon

    if geom is None or geom.is_empty:
        return None
    if geom.geom_type in _POLYGONAL_TYPES:
        return geom
    if geom.geom_type != "GeometryCollection":
        return None
    polys = []
    for part in shapely.get_parts(geom):
        if part.geom_type == "Polygon" and not part.is_empty:
            polys.append(part)
        elif part.geom_type in ("MultiPolygon", "GeometryCollection"):
            sub = polygonal_part(part)
            if sub is not None:
                polys.extend(shapely.get_parts(sub))
    if not polys:
        return None
    if len(polys) == 1:
        return polys[0]
    multi = MultiPolygon(polys)
    return multi if multi.is_valid else polygonal_part(shapely.union_all(polys))


# ---------------------------------------------------------------------------------------------
# disk means over a pixel grid (a dense map's per-spot fraction)
# ---------------------------------------------------------------------------------------------
def _disk_cdf(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Area of ``{(X, Y) in the disk of radius r at the origin : X < x, Y < y}``, exactly (closed form)."""

    def g(t: np.ndarray) -> np.ndarray:  # antiderivative of sqrt(r² - t²)
        t = np.clip(t, -r, r)
        return 0.5 * (t * np.sqrt(np.maximum(r * r - t * t, 0.0)) + r * r * np.arcsin(t / r))

    xc = np.clip(x, -r, r)
    left = 2.0 * (g(xc) - g(-r))  # the part of the disk with X < x

    def upper(yy: np.ndarray) -> np.ndarray:  # the cdf for yy >= 0
        yy = np.minimum(yy, r)
        a = np.sqrt(np.maximum(r * r - yy * yy, 0.0))  # |X| < a: the chord is cut at Y = yy
        mid = yy * np.clip(np.minimum(xc, a) + a, 0.0, None)
        return (g(xc) - g(-r)) + (g(np.minimum(xc, -a)) - g(-r)) + mid + (g(np.maximum(xc, a)) - g(a))

    return np.where(y >= 0, upper(np.abs(y)), left - upper(np.abs(y)))


def disk_pixel_weights(
    centers: np.ndarray, radius: float, *, pixel: float = 1.0, origin: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact area weights of the pixels under disks: the disk mean of a piecewise-constant image.

    Pixel ``(i, j)`` of the grid covers ``[origin + j·pixel, origin + (j+1)·pixel)`` in ``x`` (and
    the same in ``y``). For each disk (``centers`` ``(n, 2)`` as ``x, y``, ``radius``, all in one
    frame) the weight of a pixel is the area of the pixel ∩ disk over the disk's area, from the
    closed-form area of a disk below and left of a point (:func:`_disk_cdf`), so a disk mean is
    exact for an image that is constant on each pixel — the same geometry as
    :func:`spot_coverage`, which defines the ground truth, without polygonising the disks.

    Returns
    -------
    ``(rows, cols, weights)``, each ``(n, k, k)``: pixel indices (may lie outside the image) and
    weights summing to 1 per disk.

    """
    c = (np.asarray(centers, dtype=np.float64).reshape(-1, 2) - origin) / pixel
    r = float(radius) / pixel
    k = int(np.ceil(2 * r)) + 2
    j0 = np.floor(c[:, 0] - r).astype(np.int64)
    i0 = np.floor(c[:, 1] - r).astype(np.int64)
    steps = np.arange(k + 1)
    ex = (j0[:, None] + steps[None, :]) - c[:, [0]]  # (n, k+1) pixel edges relative to the centre
    ey = (i0[:, None] + steps[None, :]) - c[:, [1]]
    cdf = _disk_cdf(ex[:, None, :], ey[:, :, None], r)  # (n, k+1 rows, k+1 cols)
    w = cdf[:, 1:, 1:] - cdf[:, :-1, 1:] - cdf[:, 1:, :-1] + cdf[:, :-1, :-1]
    w = np.clip(w, 0.0, None) / (np.pi * r * r)
    rows = np.broadcast_to((i0[:, None] + np.arange(k))[:, :, None], w.shape)
    cols = np.broadcast_to((j0[:, None] + np.arange(k))[:, None, :], w.shape)
    return rows, cols, w


def disk_means(
    image: np.ndarray, centers: np.ndarray, radius: float, *, pixel: float = 1.0, origin: float = 0.0, chunk: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of a 2-D ``image`` over each disk (pixel-exact, :func:`disk_pixel_weights`) and the disk's share on it.

    Parts of a disk off the image count as missing, not as zero: the mean is over the part on the
    image (``NaN`` when none is), and the second array is that part's share of the disk.
    """
    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape
    c = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    mean = np.full(len(c), np.nan)
    inside = np.zeros(len(c))
    for s in range(0, len(c), chunk):  # bounded memory: chunk · k² weights at a time
        rows, cols, wt = disk_pixel_weights(c[s : s + chunk], radius, pixel=pixel, origin=origin)
        ok = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        wt = np.where(ok, wt, 0.0)
        vals = img[np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)]
        share = wt.sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean[s : s + chunk] = np.where(share > 0, (wt * vals).sum(axis=(1, 2)) / share, np.nan)
        inside[s : s + chunk] = share
    return mean, np.clip(inside, 0.0, 1.0)


def square_means(
    image: np.ndarray, centers: np.ndarray, side: float, *, pixel: float = 1.0, origin: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of a 2-D ``image`` over axis-aligned squares (pixel-exact) and each square's share on the image.

    The Visium HD bin's footprint, as :func:`disk_means` is the spot's: pixel ``(i, j)`` covers
    ``[origin + j·pixel, origin + (j+1)·pixel)`` in ``x`` (and ``y``), ``centers`` ``(n, 2)`` are
    ``x, y`` and ``side`` the squares' side, all in one frame. The integral of a piecewise-constant
    image over ``[x0, x) × [y0, y)`` is the bilinear interpolation of its summed-area table, so each
    square costs four lookups, however large (exact up to float64 rounding). Parts off the image are
    missing, not zero: the mean is over the part on the image (``NaN`` when none is).
    """
    img = np.asarray(image)
    h, w = img.shape
    sat = np.zeros((h + 1, w + 1))  # float64: a map's sums reach ~10⁷, beyond float32's exact integers
    np.cumsum(img, axis=0, dtype=np.float64, out=sat[1:, 1:])  # no float64 copy of the map itself
    np.cumsum(sat[1:, 1:], axis=1, out=sat[1:, 1:])
    c = (np.asarray(centers, dtype=np.float64).reshape(-1, 2) - origin) / pixel  # pixel edges at integers
    half = float(side) / pixel / 2

    def integral(u: np.ndarray, v: np.ndarray) -> np.ndarray:  # ∫∫ over [0, u) × [0, v), u, v clipped to the image
        j, i = np.minimum(u.astype(np.int64), w - 1), np.minimum(v.astype(np.int64), h - 1)
        a, b = u - j, v - i
        return (sat[i, j] * (1 - a) * (1 - b) + sat[i, j + 1] * a * (1 - b) + sat[i + 1, j] * (1 - a) * b
                + sat[i + 1, j + 1] * a * b)  # fmt: skip

    x0, x1 = np.clip(c[:, 0] - half, 0, w), np.clip(c[:, 0] + half, 0, w)
    y0, y1 = np.clip(c[:, 1] - half, 0, h), np.clip(c[:, 1] + half, 0, h)
    area = (x1 - x0) * (y1 - y0)
    total = integral(x1, y1) - integral(x0, y1) - integral(x1, y0) + integral(x0, y0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(area > 0, total / area, np.nan)
    return mean, np.clip(area / (2 * half) ** 2, 0.0, 1.0)


def bin_mpp(
    coords: Any,
    sf: Mapping[str, Any],
    *,
    array_row: Any = None,
    array_col: Any = None,
    image_mpp: float | None = None,
    where: str = "the sample",
) -> SpotMpp:
    """µm per pixel of a Visium HD bin frame: the bin lattice's pitch is the bin size (``sf["bin_size_um"]``).

    The pitch in pixels is the median distance between array neighbours (``array_col`` ± 1 in a row,
    ``array_row`` ± 1 in a column); without array indices, the squares' side (``spot_diameter_fullres``,
    which Space Ranger HD sets to ``bin_size_um / microns_per_pixel``). A side or image metadata more
    than :data:`MPP_TOLERANCE` away from the lattice is an error: these bins do not belong to this frame.
    """
    bin_um = float(sf["bin_size_um"])
    side_px = float(sf["spot_diameter_fullres"])
    if not (np.isfinite(bin_um) and bin_um > 0 and np.isfinite(side_px) and side_px > 0):
        raise ValueError(f"{where}: bin_size_um ({bin_um!r}) and the bin side ({side_px!r} px) must be positive.")
    img = float(image_mpp) if image_mpp is not None and np.isfinite(image_mpp) and image_mpp > 0 else None
    pitch, n = None, 0
    if array_row is not None and array_col is not None:
        d = array_neighbour_distances(coords, array_row, array_col, ((0, 1), (1, 0)))  # the right one, the one below
        if len(d) >= MIN_LATTICE_PAIRS:
            pitch, n = float(np.median(d)), len(d)
    mpp_side = bin_um / side_px
    mpp = bin_um / pitch if pitch is not None else mpp_side
    for what, other in (("the squares' side (spot_diameter_fullres)", mpp_side), ("the image metadata", img)):
        if other is not None and _log_ratio(mpp, other) > math.log1p(MPP_TOLERANCE):
            raise ValueError(
                f"{where}: the {bin_um:g}-µm bin lattice gives {mpp:.4g} µm/px but {what} gives {other:.4g} µm/px: "
                "the bins, their size and the image do not belong together (check the table/shapes/image elements)."
            )
    source = "bin lattice" if pitch is not None else "bin side"
    return SpotMpp(mpp, source, None if pitch is None else mpp, mpp_side, img, pitch, n)


def square_coverage(centers: np.ndarray, side: float, polygons: Sequence[Any]) -> np.ndarray:
    """Share of each axis-aligned square (``centers`` ``(n, 2)``, ``side``; one frame) inside ``polygons``, exactly."""
    import shapely

    c = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    out = np.zeros(len(c))
    if not len(c) or not len(polygons):
        return out
    union = shapely.union_all(list(polygons))
    h = side / 2
    boxes = shapely.box(c[:, 0] - h, c[:, 1] - h, c[:, 0] + h, c[:, 1] + h)
    near = shapely.STRtree(boxes).query(union, predicate="intersects")
    near = np.unique(np.atleast_1d(near).ravel())
    out[near] = shapely.area(shapely.intersection(boxes[near], union)) / side**2
    return np.clip(out, 0.0, 1.0)
