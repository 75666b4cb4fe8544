"""Training patches for the glomerulus classifier, placed and labelled the way Visium sees tissue.

A patch is a square of ``patch_um`` µm centred on a point, exactly as :func:`kgl.im.spot_patches`
cuts one around a Visium spot; its label comes from the fraction of the central 55-µm capture
disk (:data:`kgl._utils.SPOT_DIAMETER_UM`) that lies inside a glomerulus polygon.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kgl._files import atomic_path
from kgl._geometry import ROW_PITCH_UM, SPOT_DIAMETER_UM, SPOT_PITCH_UM, spot_coverage, spot_lattice
from kgl._logging import logger
from kgl._validators import check_int

__all__ = ["LABEL_NAMES", "patch_counts", "read_patch", "sample_patches", "write_patches"]

LABEL_NAMES = {1: "glomerulus", 0: "other", -1: "ambiguous"}
"""Names of the patch labels (folder names of :func:`write_patches`)."""

_REQUIRED = ("slide", "path", "mpp", "group", "polygons")
_OWN = ("slide", "path", "group", "x", "y", "mpp", "patch_um", "coverage", "label", "kind", "in_image")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _polygons(value: Any, slide: str) -> list[Any]:
    from shapely.geometry.base import BaseGeometry

    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, BaseGeometry):
        return [value]
    if isinstance(value, pd.DataFrame):
        value = value["geometry"]
    geoms = list(value)
    bad = sorted({type(g).__name__ for g in geoms if not isinstance(g, BaseGeometry)})
    if bad:
        raise TypeError(f"Slide {slide!r}: 'polygons' must hold shapely geometries, got {bad}.")
    return [g for g in geoms if not g.is_empty]


def _inside_fraction(xy: np.ndarray, side: float, width: int, height: int) -> np.ndarray:
    """Fraction of the ``side``-px square around each point that lies on the image ``[-0.5, W - 0.5]``."""
    h = side / 2.0
    fx = np.clip(np.minimum(xy[:, 0] + h, width - 0.5) - np.maximum(xy[:, 0] - h, -0.5), 0.0, None) / side
    fy = np.clip(np.minimum(xy[:, 1] + h, height - 0.5) - np.maximum(xy[:, 1] - h, -0.5), 0.0, None) / side
    return fx * fy


def _grid_um(width_um: float, height_um: float, pitch_um: float, rng: np.random.Generator) -> np.ndarray:
    """A Visium lattice (hexagonal, ``pitch_um`` apart) at a random offset, covering the image with margin.

    Positions are µm from the image's top-left corner. The lattice is
    :func:`kgl._geometry.spot_lattice` scaled by ``pitch_um / 100``, extended by
    one pitch on every side so that patches hanging over the border exist (``min_inside`` decides).
    """
    s = pitch_um / SPOT_PITCH_UM
    offset = (float(rng.uniform(0.0, SPOT_PITCH_UM)), float(rng.uniform(0.0, ROW_PITCH_UM)))
    # shifting by 2 columns' worth (100 µm) and 2 rows keeps (row + col) parity: same lattice
    lat = spot_lattice(width_um / s + 2 * SPOT_PITCH_UM, height_um / s + 4 * ROW_PITCH_UM, offset)
    x = (lat["x_um"].to_numpy() - SPOT_PITCH_UM) * s
    y = (lat["y_um"].to_numpy() - 2 * ROW_PITCH_UM) * s
    return np.column_stack([x, y])


def _slide_rng(seed: int, slide: str) -> np.random.Generator:
    """Per-slide generator: a slide's patches do not depend on which other slides are in the table."""
    return np.random.default_rng([int(seed), zlib.crc32(str(slide).encode("utf-8"))])


def _hard_negatives(
    polys: list[Any],
    k: int,
    ring_px: tuple[float, float],
    radius_px: float,
    side_px: float,
    size: tuple[int, int],
    min_inside: float,
    rng: np.random.Generator,
    *,
    batch: int = 256,
    rounds: int = 20,
) -> tuple[np.ndarray, int]:
    """``k`` points per polygon at a distance in ``ring_px`` from it whose capture disk misses every polygon."""
    import shapely

    r0, r1 = ring_px
    width, height = size
    out: list[np.ndarray] = []
    short = 0
    for poly in polys:
        minx, miny, maxx, maxy = poly.bounds
        lo, hi = np.array([minx - r1, miny - r1]), np.array([maxx + r1, maxy + r1])
        got: list[np.ndarray] = []
        n = 0
        for _ in range(rounds):
            cand = rng.uniform(lo, hi, size=(batch, 2))
            d = shapely.distance(shapely.points(cand), poly)
            ok = (d >= r0) & (d <= r1) & (_inside_fraction(cand, side_px, width, height) >= min_inside)
            cand = cand[ok]
            if len(cand):
                cand = cand[spot_coverage(cand, polys, radius_px) == 0.0]
            take = cand[: k - n]
            got.append(take)
            n += len(take)
            if n >= k:
                break
        short += k - n
        out.extend(got)
    pts = np.concatenate(out) if out else np.empty((0, 2))
    return pts.reshape(-1, 2), short


def _check_params(
    patch_um: float,
    pitch_um: float,
    jitter_um: float,
    pos_threshold: float,
    hard_negatives: int,
    ring: tuple[float, float],
    min_inside: float,
) -> None:
    if not (np.isfinite(patch_um) and patch_um > 0):
        raise ValueError(f"patch_um must be > 0, got {patch_um!r}.")
    if not (np.isfinite(pitch_um) and pitch_um > 0):
        raise ValueError(f"pitch_um must be > 0, got {pitch_um!r}.")
    if not (np.isfinite(jitter_um) and jitter_um >= 0):
        raise ValueError(f"jitter_um must be >= 0, got {jitter_um!r}.")
    if not (0.0 < pos_threshold <= 1.0):
        raise ValueError(f"pos_threshold must be in (0, 1], got {pos_threshold!r}.")
    check_int(hard_negatives, "hard_negatives", minimum=0)
    if len(ring) != 2 or not (0.0 <= ring[0] < ring[1]):
        raise ValueError(f"hard_negative_ring_um must be (inner, outer) with 0 <= inner < outer, got {ring!r}.")
    if not (0.0 <= min_inside <= 1.0):
        raise ValueError(f"min_inside must be in [0, 1], got {min_inside!r}.")


# ---------------------------------------------------------------------------------------------
# public
# ---------------------------------------------------------------------------------------------
def sample_patches(
    slides: pd.DataFrame,
    *,
    patch_um: float = 110.0,
    pitch_um: float = 100.0,
    jitter_um: float = 25.0,
    pos_threshold: float = 0.5,
    keep_ambiguous: bool = False,
    hard_negatives: int = 2,
    hard_negative_ring_um: tuple[float, float] = (20.0, 120.0),
    min_inside: float = 0.5,
    seed: int = 0,
) -> pd.DataFrame:
    """Place labelled training patches on annotated images, the way Visium will see the tissue.

    Two kinds of positions per slide:

    - ``"grid"``: a Visium lattice (hexagonal, ``pitch_um`` between neighbours, the geometry of
      :func:`kgl.datasets.pseudo_visium`) over the whole image at a random offset, each point then
      moved by a uniform ``±jitter_um`` in x and y, so glomeruli are seen at every position in the
      patch as real spots see them;
    - ``"hard_negative"``: ``hard_negatives`` points per glomerulus at a distance in
      ``hard_negative_ring_um`` from its outline whose capture disk does not touch any glomerulus
      (rejection-sampled): the tubules and Bowman's-capsule surroundings a classifier confuses most.

    Each patch is labelled by ``coverage``, the fraction of the 55-µm capture disk at its centre
    inside the glomerulus polygons: 1 (glomerulus) when ``coverage >= pos_threshold``, 0 (other)
    when it is 0, ambiguous in between (dropped, or kept with label -1). Patches whose square lies
    less than ``min_inside`` on the image are dropped.

    Parameters
    ----------
    slides
        Slide table (:func:`kgl.datasets.multistain_slides`, :func:`kgl.datasets.pas_tiles_slides`)
        with columns ``slide`` (unique name), ``path``, ``mpp`` (µm per level-0 pixel), ``group``
        and ``polygons`` (shapely polygons in the image's pixel frame, pixel centres at integers).
        Optional ``width``/``height`` (px) spare reading the image header. Every other column
        (``stain``, …) is copied to the slide's patches.
    patch_um
        Side of the patch square in µm (the classifier's field of view).
    pitch_um
        Distance between neighbouring lattice points (Visium: 100 µm).
    jitter_um
        Half-width of the uniform jitter added to each lattice point, per axis.
    pos_threshold
        Minimum disk coverage of a glomerulus patch.
    keep_ambiguous
        Keep patches with ``0 < coverage < pos_threshold`` as label -1.
    hard_negatives
        Hard negatives per glomerulus (fewer when the ring has no room: logged).
    hard_negative_ring_um
        ``(inner, outer)`` distance from the glomerulus outline, in µm.
    min_inside
        Minimum fraction of the patch square on the image.
    seed
        Seed; a slide's patches depend only on the seed and its name, so the same seed gives the
        same table.

    Returns
    -------
    :class:`pandas.DataFrame`, one row per patch: ``slide``, ``path``, ``group``, ``x``, ``y``
    (centre in level-0 pixels, pixel centres at integers as in :meth:`kgl.io.SlideImage.read_centered`),
    ``mpp``, ``patch_um``, ``coverage``, ``label``, ``kind`` (``"grid"``/``"hard_negative"``),
    ``in_image`` (fraction of the square on the image), then the slide table's other columns.
    ``attrs["class_counts"]`` is ``{kind: {"glomerulus": n, "other": n, "ambiguous": n}}``
    (ambiguous counted even when dropped) and ``attrs["params"]`` the arguments.

    """
    from kgl.io import image_size

    ring = tuple(float(v) for v in hard_negative_ring_um)
    _check_params(patch_um, pitch_um, jitter_um, pos_threshold, hard_negatives, ring, min_inside)
    missing = [c for c in _REQUIRED if c not in slides.columns]
    if missing:
        raise KeyError(f"slides lacks column(s) {missing}; it needs {list(_REQUIRED)} (has {list(slides.columns)}).")
    names = slides["slide"].astype(str)
    dup = sorted(names[names.duplicated()].unique())
    if dup:
        raise ValueError(f"Slide names must be unique; duplicated: {dup[:10]}.")
    mpps = pd.to_numeric(slides["mpp"], errors="coerce").to_numpy(dtype=float)
    bad = ~(np.isfinite(mpps) & (mpps > 0))
    if bad.any():
        raise ValueError(
            f"Slides without a positive µm/px: {list(names[bad])[:10]}. Give 'mpp' (from the scanner, or an estimate "
            "as kgl.datasets.multistain_slides makes)."
        )
    carried = [c for c in slides.columns if c not in (*_OWN, "polygons")]

    parts = []
    counts: dict[str, dict[str, int]] = {k: dict.fromkeys(LABEL_NAMES.values(), 0) for k in ("grid", "hard_negative")}
    n_short = 0
    for i, (_, srow) in enumerate(slides.iterrows()):
        slide, mpp = names.iloc[i], float(mpps[i])
        polys = _polygons(srow["polygons"], slide)
        if "width" in slides.columns and "height" in slides.columns and pd.notna(srow["width"]):
            width, height = int(srow["width"]), int(srow["height"])
        else:
            width, height = image_size(srow["path"])
        rng = _slide_rng(seed, slide)
        side = patch_um / mpp
        radius = SPOT_DIAMETER_UM / 2.0 / mpp

        grid = _grid_um(width * mpp, height * mpp, pitch_um, rng)
        grid = grid + rng.uniform(-jitter_um, jitter_um, size=grid.shape)
        grid = grid / mpp - 0.5  # µm from the top-left pixel corner → pixel-centre frame
        hard, short = np.empty((0, 2)), 0
        if hard_negatives and polys:
            ring_px = (ring[0] / mpp, ring[1] / mpp)
            hard, short = _hard_negatives(
                polys, int(hard_negatives), ring_px, radius, side, (width, height), min_inside, rng
            )
        n_short += short
        xy = np.concatenate([grid, hard])
        kind = np.array(["grid"] * len(grid) + ["hard_negative"] * len(hard), dtype=object)
        inside = _inside_fraction(xy, side, width, height)
        keep = inside >= min_inside
        xy, kind, inside = xy[keep], kind[keep], inside[keep]
        cov = spot_coverage(xy, polys, radius)
        label = np.where(cov >= pos_threshold, 1, np.where(cov == 0.0, 0, -1))
        for k in ("grid", "hard_negative"):
            for lab, nm in LABEL_NAMES.items():
                counts[k][nm] += int(((kind == k) & (label == lab)).sum())
        if not keep_ambiguous:
            ok = label != -1
            xy, kind, inside, cov, label = xy[ok], kind[ok], inside[ok], cov[ok], label[ok]
        part = pd.DataFrame(
            {
                "slide": slide,
                "path": str(srow["path"]),
                "group": srow["group"],
                "x": xy[:, 0],
                "y": xy[:, 1],
                "mpp": mpp,
                "patch_um": float(patch_um),
                "coverage": cov,
                "label": label.astype(np.int64),
                "kind": kind.astype(str),
                "in_image": inside,
            }
        )
        for c in carried:
            part[c] = [srow[c]] * len(part)
        parts.append(part)

    cols = [*_OWN, *carried]
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
    df = df[cols]
    if n_short:
        logger.info(
            "sample_patches: %d hard negative(s) could not be placed (glomeruli at the image border or crowded).",
            n_short,
        )
    for k, c in counts.items():
        logger.info(
            "sample_patches %s: %d glomerulus, %d other, %d ambiguous (%s).",
            k,
            c["glomerulus"],
            c["other"],
            c["ambiguous"],
            "kept as -1" if keep_ambiguous else "dropped",
        )
    df.attrs["class_counts"] = counts
    df.attrs["params"] = {
        "patch_um": float(patch_um),
        "pitch_um": float(pitch_um),
        "jitter_um": float(jitter_um),
        "pos_threshold": float(pos_threshold),
        "keep_ambiguous": bool(keep_ambiguous),
        "hard_negatives": int(hard_negatives),
        "hard_negative_ring_um": list(ring),
        "min_inside": float(min_inside),
        "seed": int(seed),
        "spot_diameter_um": SPOT_DIAMETER_UM,
    }
    return df


def patch_counts(df: pd.DataFrame, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Tidy count table of a patch table.

    Parameters
    ----------
    df
        Patch table (:func:`sample_patches`), optionally with a ``split`` column.
    by
        Columns to count by; default: those of ``split``, ``stain``, ``kind``, ``label`` present.

    Returns
    -------
    :class:`pandas.DataFrame` with the ``by`` columns and ``n`` (patches).

    """
    if by is None:
        by = [c for c in ("split", "stain", "kind", "label") if c in df.columns]
    by = list(by)
    missing = [c for c in by if c not in df.columns]
    if missing:
        raise KeyError(f"Columns {missing} not in the table (has {list(df.columns)}).")
    if not by:
        return pd.DataFrame({"n": [len(df)]})
    return df.groupby(by, observed=True, dropna=False, sort=True).size().reset_index(name="n")


def _field(row: Any, key: str) -> Any:
    if isinstance(row, (pd.Series, Mapping)):
        return row[key]
    return getattr(row, key)


def read_patch(row: Any, *, size: int, scale: float = 1.0, cache: dict | None = None) -> np.ndarray:
    """Read the ``uint8`` RGB patch of one row of a patch table.

    Parameters
    ----------
    row
        A row of :func:`sample_patches`' table (a :class:`pandas.Series`, a mapping or a
        ``DataFrame.itertuples`` tuple) with ``path``, ``x``, ``y``, ``mpp`` and ``patch_um``.
    size
        Side of the returned patch in pixels (the model's input size).
    scale
        Multiplies the patch side in µm: ``scale=1.2`` reads a 20 % wider field of view, resampled
        to the same ``size`` (scale jitter for training, which also absorbs µm/px estimate errors).
    cache
        Optional dict ``path → SlideImage`` that keeps images open between calls (a Dataset holds
        one): JPEG/PNG snapshots are then decoded once, TIFFs keep their file handle.

    Returns
    -------
    ``(size, size, 3)`` ``uint8`` array; the part of the square outside the image is white.

    """
    from kgl.io import read_wsi

    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be > 0, got {scale!r}.")
    path = str(_field(row, "path"))
    img = cache.get(path) if cache is not None else None
    if img is None:
        img = read_wsi(path)
        if cache is not None:
            cache[path] = img
    side_um = float(_field(row, "patch_um")) * float(scale)
    center = (float(_field(row, "x")), float(_field(row, "y")))
    patch, _ = img.read_centered_um(center, side_um, int(size), mpp=float(_field(row, "mpp")))
    return patch


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_name(name: str) -> str:
    """A file-name-safe version of ``name``: no separators, no leading dots, never empty."""
    s = _UNSAFE.sub("_", str(name)).lstrip(".")
    return s[:120] or "slide"


def write_patches(df: pd.DataFrame, out_dir: str | os.PathLike, *, size: int = 224) -> pd.DataFrame:
    """Write every patch of a table as a PNG, with an index, for inspection or other tools.

    Files are ``<out_dir>/<label name>/<slide>_<i>.png`` (label names in :data:`LABEL_NAMES`;
    ``i`` is the row's position in ``df``; slide names are sanitised so nothing leaves
    ``out_dir``), plus ``index.csv`` (and ``index.parquet`` when pyarrow is installed). Every file
    is written to a temporary name and renamed.

    Parameters
    ----------
    df
        Patch table (:func:`sample_patches`).
    out_dir
        Output folder (created).
    size
        Side of the PNGs in pixels.

    Returns
    -------
    The index: ``slide``, ``x``, ``y``, ``mpp``, ``patch_um``, ``coverage``, ``label``, ``group``,
    ``png`` (path relative to ``out_dir``) and, when present, ``kind``, ``stain``, ``split``, ``path``.

    """
    from PIL import Image
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = out.resolve()
    cache: dict[str, Any] = {}
    pngs = []
    try:
        for i, row in enumerate(tqdm(df.itertuples(index=False), total=len(df), desc="patches", disable=len(df) < 500)):
            label = int(row.label)
            folder = LABEL_NAMES.get(label, f"label_{label}")
            rel = Path(folder) / f"{_safe_name(row.slide)}_{i}.png"
            dest = root / rel
            if dest.resolve().parent != (root / folder).resolve():  # pragma: no cover - defensive
                raise ValueError(f"Refusing to write outside {str(root)!r}: {str(dest)!r}.")
            patch = read_patch(row, size=size, cache=cache)
            with atomic_path(dest) as tmp:
                Image.fromarray(patch).save(tmp, format="PNG")
            pngs.append(rel.as_posix())
    finally:
        for img in cache.values():
            if hasattr(img, "close"):
                img.close()
    cols = ["slide", "x", "y", "mpp", "patch_um", "coverage", "label", "group"]
    cols += [c for c in ("kind", "stain", "split", "path") if c in df.columns]
    index = df[cols].reset_index(drop=True).copy()
    index["png"] = pngs
    with atomic_path(root / "index.csv") as tmp:
        index.to_csv(tmp, index=False)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        pass
    else:
        with atomic_path(root / "index.parquet") as tmp:
            index.to_parquet(tmp, index=False)
    logger.info("write_patches: %d PNGs (%d px) and index.csv in %s", len(index), size, root)
    return index
