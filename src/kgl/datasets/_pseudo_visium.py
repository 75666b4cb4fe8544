"""Semi-synthetic Visium: real histology tiles under a real Visium spot lattice, with exact ground truth.

Annotated glomerulus images are mosaicked into one full-resolution image, a Visium spot lattice
(55 µm spots, 100 µm pitch, hexagonal) is laid over it at a random sub-pitch offset, and each
spot gets the fraction of its disk covered by glomerulus polygons. The result has the layout of
:func:`kgl.io.read_visium`, so every kgl function runs on it and can be scored against
``obs["glomerulus_coverage"]``.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kgl._files import ensure_dir
from kgl._geometry import (
    ROW_PITCH_UM,
    SPOT_DIAMETER_FULLRES_UM,
    SPOT_DIAMETER_UM,
    SPOT_PITCH_UM,
    spot_coverage,
    spot_lattice,
)
from kgl._logging import logger
from kgl._settings import settings

__all__ = ["he_biopsy_visium", "pas_tiles_visium", "pseudo_visium"]

# Space Ranger's fiducial_diameter_fullres / spot_diameter_fullres (V1_Mouse_Kidney scalefactors_json.json)
_FIDUCIAL_TO_SPOT = 144.509730125681 / 89.4584043635168
_VISIUM_ROWS, _VISIUM_COLS = 78, 128  # one capture area: 6.5 mm × 6.5 mm


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def _read_image(image: Any, i: int) -> tuple[np.ndarray, str]:
    from kgl.io import to_rgb_uint8

    if isinstance(image, (str, os.PathLike)):
        from PIL import Image

        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"Image {i} ({str(path)!r}) does not exist.")
        with Image.open(path) as im:
            alpha = "A" in im.getbands() or "transparency" in im.info
            mode = "RGBA" if alpha else "RGB"
            arr = np.asarray(im if im.mode == mode else im.convert(mode))
        return to_rgb_uint8(arr), path.stem
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ValueError(f"Image {i} must be (H, W) or (H, W, C), got shape {arr.shape}.")
    return np.ascontiguousarray(to_rgb_uint8(arr)), str(i)


_MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")


def _read_annotation_file(path: Path, i: int, image: Any) -> Any:
    """An annotation file by its kind: QuPath GeoJSON, COCO instances (rows of this image) or a binary mask."""
    import json

    from kgl.io import read_coco, read_geojson, read_mask

    if not path.is_file():
        raise FileNotFoundError(f"Annotation {i} ({str(path)!r}) does not exist.")
    suffix = path.suffix.lower()
    if suffix in _MASK_SUFFIXES:
        return read_mask(path)
    if suffix not in (".geojson", ".json"):
        raise ValueError(
            f"Annotation {i} ({str(path)!r}): unknown kind of file {suffix!r}. Give a QuPath GeoJSON (.geojson/.json), "
            f"a COCO instances .json or a binary mask image ({', '.join(_MASK_SUFFIXES)})."
        )
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"Annotation {i} ({str(path)!r}) is not valid JSON: {e}.") from e
    if not (isinstance(obj, dict) and "annotations" in obj and "images" in obj):
        return read_geojson(obj)
    coco = read_coco(obj)
    if not isinstance(image, (str, os.PathLike)):
        raise ValueError(
            f"Annotation {i} is a COCO file ({str(path)!r}) but image {i} is an array: kgl matches COCO annotations to "
            "images by file name. Pass the image as a path, or its polygons (kgl.io.read_coco(...) rows) instead."
        )
    name = Path(image).name
    rows = coco[coco["image"] == name]
    if rows.empty and name not in set(coco["image"]):
        listed = sorted(set(coco["image"]))
        logger.warning(
            "COCO file %s has no annotation for image %r (it annotates %d images, e.g. %s): no glomeruli in it.",
            path.name,
            name,
            len(listed),
            listed[:3],
        )
    return rows


def _annotation_polygons(ann: Any, shape: tuple[int, int], i: int, image: Any = None) -> list[Any]:
    """Polygons of one image's annotation in its pixel frame, clipped to the image."""
    import shapely
    from shapely.geometry.base import BaseGeometry

    from kgl._geometry import polygonal_part
    from kgl.io import mask_to_polygons

    if isinstance(ann, (str, os.PathLike)):
        ann = _read_annotation_file(Path(ann), i, image)
    if ann is None:
        geoms: list[Any] = []
    elif isinstance(ann, pd.DataFrame):
        if "geometry" not in ann:
            raise ValueError(f"Annotation {i} is a DataFrame without a 'geometry' column (columns: {list(ann)}).")
        geoms = list(ann["geometry"])
    elif isinstance(ann, BaseGeometry):
        geoms = [ann]
    elif isinstance(ann, np.ndarray):
        m = ann[..., 0] if ann.ndim == 3 else ann
        if m.shape != shape:
            raise ValueError(f"Mask {i} has shape {m.shape[:2]} but its image is {shape}; they must match.")
        geoms = mask_to_polygons(m)
    else:
        try:
            geoms = list(ann)
        except TypeError:
            geoms = [ann]
    bad = [type(g).__name__ for g in geoms if not isinstance(g, BaseGeometry)]
    if bad:
        raise TypeError(
            f"Annotation {i} must be a GeoJSON/COCO/mask file path, shapely polygons, a DataFrame with a 'geometry' "
            f"column or a binary mask array; got {type(ann).__name__} with elements of type {sorted(set(bad))}."
        )
    h, w = shape
    frame = shapely.box(-0.5, -0.5, w - 0.5, h - 0.5)
    out, outside, n_in = [], [], 0
    for g in geoms:
        g = polygonal_part(g if g.is_valid else shapely.make_valid(g))
        if g is None:
            continue
        clipped = polygonal_part(shapely.intersection(g, frame))
        if clipped is None:
            outside.append(g)
        else:
            n_in += 1
            out.extend(shapely.get_parts(clipped))
    if outside:
        b = ", ".join(f"{v:.0f}" for v in outside[0].bounds)
        what = (
            f"Annotation {i}: {len(outside)} of {len(outside) + n_in} polygon(s) lie entirely outside its image "
            f"({w} x {h} px; e.g. bounds ({b}))"
        )
        if not out:
            raise ValueError(
                f"{what}: they belong to another image or are in another pixel scale. Give each image the "
                "polygons in its own pixel frame (before resampling to target_mpp)."
            )
        logger.warning("%s; they are dropped.", what)
    return out


def _resample(img: np.ndarray, polys: list[Any], scale: float) -> tuple[np.ndarray, list[Any]]:
    import cv2
    import shapely

    if abs(scale - 1.0) < 1e-9:
        return img, polys
    h, w = img.shape[:2]
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = cv2.resize(img, (nw, nh), interpolation=interp)
    s = np.array([nw / w, nh / h])
    # pixel-centre frame: edges at -0.5 and w - 0.5 map to -0.5 and nw - 0.5
    polys = [shapely.transform(p, lambda c: (c + 0.5) * s - 0.5) for p in polys]
    return out, polys


def _mpps(mpp: float | Sequence[float], n: int) -> list[float]:
    vals = [float(mpp)] * n if np.isscalar(mpp) else [float(m) for m in mpp]
    if len(vals) != n:
        raise ValueError(f"mpp has {len(vals)} values for {n} images; give one value or one per image.")
    bad = [m for m in vals if not (np.isfinite(m) and m > 0)]
    if bad:
        raise ValueError(f"mpp must be positive µm/px, got {bad}.")
    return vals


def _layout(n: int, layout: tuple[int, int] | None) -> tuple[int, int]:
    if layout is None:
        cols = math.ceil(math.sqrt(n))
        return math.ceil(n / cols), cols
    rows, cols = (int(v) for v in layout)
    if rows < 1 or cols < 1 or rows * cols < n:
        raise ValueError(f"layout={tuple(layout)} has {rows * cols} cells for {n} images.")
    return rows, cols


def _downscale(canvas: np.ndarray, max_px: int) -> tuple[np.ndarray, float]:
    import cv2

    h, w = canvas.shape[:2]
    scalef = min(1.0, float(max_px) / max(h, w))
    size = (max(1, round(w * scalef)), max(1, round(h * scalef)))
    img = canvas if scalef == 1.0 else cv2.resize(canvas, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img), scalef


def _content_hash(canvas: np.ndarray, mpp: float, compression: str | None) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{canvas.shape}|{canvas.dtype}|{mpp:.9g}|{compression}|v1".encode())
    h.update(memoryview(np.ascontiguousarray(canvas)).cast("B"))
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# spots
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# public
# ---------------------------------------------------------------------------------------------
def pseudo_visium(
    images: Sequence[Any],
    annotations: Sequence[Any],
    *,
    mpp: float | Sequence[float],
    target_mpp: float | None = None,
    library_id: str = "pseudo_visium",
    seed: int = 0,
    layout: tuple[int, int] | None = None,
    gap_um: float = 0.0,
    names: Sequence[str] | None = None,
    fullres_path: str | os.PathLike | None = None,
    hires_max_px: int = 2000,
    lowres_max_px: int = 600,
    compression: str | None = "zlib",
    simulate_counts: bool = False,
    counts_kwargs: dict[str, Any] | None = None,
) -> Any:
    """Build a semi-synthetic Visium sample from annotated histology images.

    The images are resampled to one µm/px, mosaicked on a white canvas (the full-resolution
    image, written as a pyramidal TIFF) and overlaid with a Visium lattice: 55-µm spots, 100 µm
    centre to centre, spot ``(array_row, array_col)`` at ``x = 50 µm · array_col``,
    ``y = 50√3 µm · array_row`` (``array_row + array_col`` even), shifted as a whole by a random
    sub-pitch offset drawn from :func:`numpy.random.default_rng` ``(seed)``. Spots whose centre
    lies on an image are kept; their ground truth is the fraction of the 55-µm disk covered by
    glomerulus polygons.

    Parameters
    ----------
    images
        RGB(A)/grey ``uint8`` arrays or image file paths (read with Pillow).
    annotations
        One entry per image, in that image's pixel frame (pixel centres at integers, see
        :mod:`kgl.io`): a file path (QuPath GeoJSON read with :func:`kgl.io.read_geojson`, every
        polygon; a COCO instances ``.json`` read with :func:`kgl.io.read_coco`, the rows whose file
        name is the image's; a binary mask image read with :func:`kgl.io.read_mask`), a list of
        shapely polygons, a DataFrame with a ``geometry`` column (from :func:`kgl.io.read_geojson` /
        :func:`kgl.io.read_coco`), a binary mask array of the image's shape (converted with
        :func:`kgl.io.mask_to_polygons`) or ``None`` (no glomeruli).
        Polygons are clipped to their image.
    mpp
        µm per pixel of the images: one value or one per image.
    target_mpp
        µm per pixel of the mosaic; the first image's ``mpp`` when omitted. Images with another
        µm/px are resampled (area averaging when shrinking, bilinear when enlarging) and their
        polygons scaled to match.
    library_id
        Key in ``uns["spatial"]``.
    seed
        Seed of the lattice offset: the same seed gives the same spots.
    layout
        ``(rows, cols)`` of the mosaic grid, filled row by row; near-square by default. Each
        image sits at the top-left of its cell; a column is as wide as its widest image.
    gap_um
        White gap between neighbouring images, in µm (no spot is kept in a gap).
    names
        Names of the images for ``obs["source_image"]``; file stems for paths, else the index.
    fullres_path
        Where to write the full-resolution TIFF. By default it is cached under
        ``settings.cachedir / "pseudo_visium" / f"{library_id}-{hash}.tif"`` (hash of the mosaic's
        pixels, µm/px and compression) and reused when it exists.
    hires_max_px, lowres_max_px
        Longest side of ``images["hires"]`` / ``images["lowres"]`` (never upsampled).
    compression
        TIFF compression (:func:`kgl.io.write_tiff_pyramid`).
    simulate_counts
        Attach simulated negative-binomial counts in which glomerular markers rise with coverage
        and tubular markers fall (:func:`kgl.datasets.simulate_counts`), flagged as simulated in
        ``uns["simulated_counts"]``; otherwise the sample has no genes.
    counts_kwargs
        Passed on to :func:`kgl.datasets.simulate_counts` (``species``, ``n_background``, ...);
        its ``seed`` defaults to ``seed``.

    Returns
    -------
    :class:`~anndata.AnnData` without genes (unless ``simulate_counts``), laid out as
    :func:`kgl.io.read_visium` returns it: ``obsm["spatial"]`` (full-resolution ``x, y`` pixels),
    ``obs`` columns ``in_tissue`` (1),
    ``array_row``, ``array_col``, ``source_image`` and ``glomerulus_coverage`` (in ``[0, 1]``),
    ``uns["spatial"][library_id]`` with ``images`` (``hires``, ``lowres``), ``scalefactors`` and
    ``metadata["source_image_path"]``, and ``uns["pseudo_visium"]`` with ``params``, the placement
    of each image (``tiles``) and the glomerulus polygons in full-resolution coordinates as WKT
    (``glomeruli_wkt``).

    Notes
    -----
    ``scalefactors["spot_diameter_fullres"]`` follows Space Ranger: the pixels spanning a
    theoretical 65 µm spot (:data:`kgl._utils.SPOT_DIAMETER_FULLRES_UM`), so the µm/px recovered
    from it equals the mosaic's. The ground-truth disks are the physical 55-µm capture areas.

    """
    import anndata as ad
    import shapely

    from kgl.io import write_tiff_pyramid

    images = list(images)
    annotations = list(annotations)
    n = len(images)
    if n == 0:
        raise ValueError("pseudo_visium needs at least one image.")
    if len(annotations) != n:
        raise ValueError(f"Got {n} images but {len(annotations)} annotations; give one annotation entry per image.")
    mpps = _mpps(mpp, n)
    mpp_out = float(target_mpp) if target_mpp is not None else mpps[0]
    if not (np.isfinite(mpp_out) and mpp_out > 0):
        raise ValueError(f"target_mpp must be a positive µm/px, got {target_mpp!r}.")
    if names is not None and len(names) != n:
        raise ValueError(f"names has {len(names)} entries for {n} images.")
    if gap_um < 0:
        raise ValueError(f"gap_um must be >= 0, got {gap_um}.")
    if counts_kwargs and not simulate_counts:
        raise ValueError("counts_kwargs is given but simulate_counts=False; pass simulate_counts=True.")
    if fullres_path is not None:  # fail before the work, not after it
        ensure_dir(Path(fullres_path).parent, what="full-resolution TIFF", create=False)

    tiles, tile_polys, tile_names = [], [], []
    for i, (image, ann) in enumerate(zip(images, annotations, strict=True)):
        arr, default_name = _read_image(image, i)
        polys = _annotation_polygons(ann, arr.shape[:2], i, image)
        arr, polys = _resample(arr, polys, mpps[i] / mpp_out)
        tiles.append(arr)
        tile_polys.append(polys)
        tile_names.append(str(names[i]) if names is not None else default_name)
    if len(set(tile_names)) != n:
        tile_names = [f"{i}:{nm}" for i, nm in enumerate(tile_names)]

    # --- mosaic ---
    canvas, frame, glomeruli = _mosaic(tiles, tile_polys, layout=layout, gap_px=round(gap_um / mpp_out))
    n_rows, n_cols = frame.layout
    x0, y0, tw, th = frame.x0, frame.y0, frame.width, frame.height
    height, width = canvas.shape[:2]

    # --- spots ---
    spots, xy, source, offset_um = _spots_on_tiles(frame, canvas.shape[:2], mpp_out, seed)
    coverage = spot_coverage(xy, glomeruli, SPOT_DIAMETER_UM / mpp_out / 2)

    # --- images & files ---------------------------------------------------------------------
    if fullres_path is None:
        key = _content_hash(canvas, mpp_out, compression)
        fullres = Path(settings.cachedir) / "pseudo_visium" / f"{library_id}-{key}.tif"
        if fullres.is_file():
            logger.debug("reusing cached full-resolution mosaic %s", fullres)
        else:
            write_tiff_pyramid(fullres, canvas, mpp=mpp_out, compression=compression)
    else:
        fullres = write_tiff_pyramid(Path(fullres_path), canvas, mpp=mpp_out, compression=compression)
    hires, hires_scalef = _downscale(canvas, hires_max_px)
    lowres, lowres_scalef = _downscale(canvas, lowres_max_px)
    spot_fullres = SPOT_DIAMETER_FULLRES_UM / mpp_out

    # --- AnnData ----------------------------------------------------------------------------
    barcodes = [f"r{r:03d}c{c:03d}" for r, c in zip(spots["array_row"], spots["array_col"], strict=True)]
    obs = pd.DataFrame(
        {
            "in_tissue": np.ones(len(spots), dtype=np.int64),
            "array_row": spots["array_row"].to_numpy(np.int64),
            "array_col": spots["array_col"].to_numpy(np.int64),
            "source_image": pd.Categorical([tile_names[s] for s in source], categories=tile_names),
            "glomerulus_coverage": coverage,
        },
        index=pd.Index(barcodes),
    )
    adata = ad.AnnData(obs=obs)
    adata.obsm["spatial"] = xy
    adata.uns["spatial"] = {
        library_id: {
            "images": {"hires": hires, "lowres": lowres},
            "scalefactors": {
                "tissue_hires_scalef": hires_scalef,
                "tissue_lowres_scalef": lowres_scalef,
                "fiducial_diameter_fullres": spot_fullres * _FIDUCIAL_TO_SPOT,
                "spot_diameter_fullres": spot_fullres,
            },
            "metadata": {"source_image_path": str(Path(fullres).resolve())},
        }
    }
    adata.uns["pseudo_visium"] = {
        "params": {
            "mpp": mpp_out,
            "mpp_images": mpps,
            "seed": int(seed),
            "offset_um": list(offset_um),
            "layout": [n_rows, n_cols],
            "gap_um": float(gap_um),
            "n_images": n,
            "canvas_shape": [height, width],
            "spot_diameter_um": SPOT_DIAMETER_UM,
            "spot_pitch_um": SPOT_PITCH_UM,
            "compression": str(compression),
        },
        "tiles": {
            "name": np.asarray(tile_names, dtype=str),
            "x0": x0.astype(np.int64),
            "y0": y0.astype(np.int64),
            "width": tw.astype(np.int64),
            "height": th.astype(np.int64),
        },
        "glomeruli_wkt": np.asarray([shapely.to_wkt(g, rounding_precision=3) for g in glomeruli], dtype=str),
    }
    if simulate_counts:
        from kgl.datasets._counts import simulate_counts as _simulate

        adata = _simulate(adata, **{"seed": seed, **(counts_kwargs or {})})
        adata.uns["pseudo_visium"]["params"]["simulate_counts"] = True
    logger.info(
        "pseudo-Visium %r: %d images → %d × %d px mosaic at %.3g µm/px, %d spots (%d with glomerulus coverage ≥ 0.5).",
        library_id,
        n,
        width,
        height,
        mpp_out,
        adata.n_obs,
        int((coverage >= 0.5).sum()),
    )
    return adata


@dataclass(frozen=True)
class _Frame:
    """Where each tile sits in the mosaic (px): top-left corners and sizes, and the grid's (rows, columns)."""

    layout: tuple[int, int]
    x0: np.ndarray
    y0: np.ndarray
    width: np.ndarray
    height: np.ndarray


def _mosaic(
    tiles: list[np.ndarray], tile_polys: list[list[Any]], *, layout: Any, gap_px: int
) -> tuple[np.ndarray, _Frame, list[Any]]:
    """The tiles on a white canvas in a grid (``gap_px`` apart), and the glomeruli in canvas pixels."""
    import shapely

    n = len(tiles)
    n_rows, n_cols = _layout(n, layout)
    gap = gap_px
    cells = [divmod(i, n_cols) for i in range(n)]
    col_w = [
        max((t.shape[1] for t, (_, c) in zip(tiles, cells, strict=True) if c == k), default=0) for k in range(n_cols)
    ]
    row_h = [
        max((t.shape[0] for t, (r, _) in zip(tiles, cells, strict=True) if r == k), default=0) for k in range(n_rows)
    ]
    x_start = np.concatenate([[0], np.cumsum(np.add(col_w, gap))])
    y_start = np.concatenate([[0], np.cumsum(np.add(row_h, gap))])
    width = int(x_start[n_cols] - gap)
    height = int(y_start[n_rows] - gap)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    x0 = np.array([int(x_start[c]) for _, c in cells])
    y0 = np.array([int(y_start[r]) for r, _ in cells])
    tw = np.array([t.shape[1] for t in tiles])
    th = np.array([t.shape[0] for t in tiles])
    glomeruli = []
    for i, t in enumerate(tiles):
        canvas[y0[i] : y0[i] + th[i], x0[i] : x0[i] + tw[i]] = t
        glomeruli.extend(shapely.transform(p, lambda c, i=i: c + np.array([x0[i], y0[i]])) for p in tile_polys[i])
    return canvas, _Frame((n_rows, n_cols), x0, y0, tw, th), glomeruli


def _spots_on_tiles(
    frame: _Frame, shape: tuple[int, int], mpp_out: float, seed: int
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, tuple[float, float]]:
    """The Visium lattice at a random offset over the canvas, kept where a spot centre falls on a tile.

    Returns the lattice rows, the centres ``(n, 2)`` in canvas pixels, each spot's tile and the offset.
    """
    height, width = shape
    x0, y0, tw, th = frame.x0, frame.y0, frame.width, frame.height
    rng = np.random.default_rng(seed)
    # [0, 100) × [0, 50√3) µm is a fundamental cell of the lattice: every placement is equally likely
    offset_um = (float(rng.uniform(0.0, SPOT_PITCH_UM)), float(rng.uniform(0.0, ROW_PITCH_UM)))
    # canvas spans [-0.5, W - 0.5] px; the lattice origin is the canvas' top-left corner
    origin = -0.5 * mpp_out
    spots = spot_lattice(width * mpp_out, height * mpp_out, offset_um)
    x = (spots["x_um"].to_numpy() + origin) / mpp_out
    y = (spots["y_um"].to_numpy() + origin) / mpp_out
    on_tile = (
        (x[:, None] >= x0 - 0.5)
        & (x[:, None] < x0 + tw - 0.5)
        & (y[:, None] >= y0 - 0.5)
        & (y[:, None] < y0 + th - 0.5)
    )
    keep = on_tile.any(axis=1)
    spots, x, y = spots[keep].reset_index(drop=True), x[keep], y[keep]
    source = on_tile[keep].argmax(axis=1)
    if len(spots) == 0:
        raise ValueError("No spot centre falls on any image: the images are smaller than the 100 µm spot pitch.")
    if spots["array_row"].max() >= _VISIUM_ROWS or spots["array_col"].max() >= _VISIUM_COLS:
        logger.info(
            "The mosaic (%.1f × %.1f mm) is larger than a Visium capture area (6.5 mm): array indices go beyond "
            "%d rows × %d columns.",
            width * mpp_out / 1000,
            height * mpp_out / 1000,
            _VISIUM_ROWS,
            _VISIUM_COLS,
        )
    xy = np.column_stack([x, y]).astype(np.float64)
    return spots, xy, source, offset_um


def pas_tiles_visium(*, seed: int = 0, **kwargs: Any) -> Any:
    """Pseudo-Visium sample from the 24 PAS tiles of ``glomeruli-pas-tiles`` (about 0.5 µm/px).

    The tiles (``images/<id>.png``) and their masks (``masks/<id>.png``, glomerulus > 0) are found
    with :meth:`kgl.settings.find_data` (``$KGL_DATA_DIR`` overrides the search) and passed to
    :func:`pseudo_visium` with ``mpp=0.5`` and ``library_id="pas_tiles"``.

    Parameters
    ----------
    seed
        Seed of the spot lattice offset.
    **kwargs
        Passed on to :func:`pseudo_visium` (e.g. ``gap_um``, ``fullres_path``, ``library_id``).

    Returns
    -------
    :class:`~anndata.AnnData`, see :func:`pseudo_visium`.

    """
    from kgl.datasets._fetch import data_dir
    from kgl.io import read_mask

    root = data_dir("glomeruli-pas-tiles")
    imgs = sorted((root / "images").glob("*.png"))
    if not imgs:
        raise FileNotFoundError(f"No PNG tiles in {str(root / 'images')!r}.")
    missing = [p.name for p in imgs if not (root / "masks" / p.name).is_file()]
    if missing:
        raise FileNotFoundError(f"Tiles without a mask in {str(root / 'masks')!r}: {missing}.")
    polys = [read_mask(root / "masks" / p.name) for p in imgs]
    kwargs.setdefault("mpp", 0.5)
    kwargs.setdefault("library_id", "pas_tiles")
    return pseudo_visium(imgs, polys, seed=seed, **kwargs)


def he_biopsy_visium(*, cases: str | Sequence[str] | None = None, seed: int = 0, **kwargs: Any) -> Any:
    """Pseudo-Visium sample from the H&E biopsy screenshots of ``glomeruli-he-biopsy``.

    The images of :func:`kgl.datasets.he_biopsy_slides` (optionally only some ``cases``) are
    resampled to the µm/px of the first one and mosaicked under a Visium spot lattice by
    :func:`pseudo_visium`, with ``library_id="he_biopsy"`` (or ``he_biopsy_<case>`` for one case).
    ``obs["source_image"]`` names each spot's screenshot and ``obs["case"]`` its case, so results
    can be read per case (leave-one-case-out evaluation).

    Parameters
    ----------
    cases
        Case id(s) to include (``"C002"``, ``"C004"``); all by default.
    seed
        Seed of the spot lattice offset.
    **kwargs
        Passed on to :func:`pseudo_visium` (e.g. ``target_mpp``, ``gap_um``, ``library_id``).

    Returns
    -------
    :class:`~anndata.AnnData`, see :func:`pseudo_visium`.

    """
    from kgl.datasets._multistain import he_biopsy_slides

    slides = he_biopsy_slides()
    available = sorted(slides["group"].unique())
    if cases is not None:
        wanted = [cases] if isinstance(cases, str) else list(cases)
        unknown = [c for c in wanted if c not in available]
        if unknown:
            raise ValueError(f"Unknown case(s) {unknown}; the H&E biopsy set has {available}.")
        slides = slides[slides["group"].isin(wanted)]
    kwargs.setdefault(
        "library_id",
        "he_biopsy" if cases is None or len(slides["group"].unique()) > 1 else f"he_biopsy_{slides['group'].iloc[0]}",
    )
    kwargs.setdefault("gap_um", 20.0)
    adata = pseudo_visium(
        list(slides["path"]),
        list(slides["polygons"]),
        mpp=list(slides["mpp"]),
        names=list(slides["slide"]),
        seed=seed,
        **kwargs,
    )
    case_of = dict(zip(slides["slide"], slides["group"], strict=True))
    adata.obs["case"] = pd.Categorical(adata.obs["source_image"].astype(str).map(case_of))
    return adata
