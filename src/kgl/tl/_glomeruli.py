"""Glomeruli as objects: polygons from the map, their spots and fractions, and per-glomerulus expression."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kgl._docs import d
from kgl._geometry import SPOT_DIAMETER_UM, spot_coverage, square_coverage
from kgl._spatialdata import accepts_spatialdata
from kgl._types import Precision

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["glomeruli", "glomerulus_expression", "map_polygons"]

#: Columns of the :func:`glomeruli` table besides ``geometry``.
GLOMERULUS_COLUMNS = ("library_id", "area_um2", "diameter_um", "mean_proba", "n_spots", "spots", "spot_fractions")


def map_polygons(
    proba: np.ndarray, *, downsample: float, threshold: float = 0.5, min_area_px: float = 0.0
) -> tuple[list[Any], np.ndarray]:
    """Glomerulus polygons of a map (its pixel ``j`` covers full-res ``[j·D − 0.5, (j+1)·D − 0.5)``), holes filled.

    ``proba`` is a map in ``[0, 1]`` (or ``uint8`` × 255) starting at the full-resolution origin;
    each 4-connected component above ``threshold`` becomes one polygon, outlined along pixel edges
    (:func:`kgl.io.mask_to_polygons`) and mapped into the full-resolution frame (pixel centres at
    integers). Components smaller than ``min_area_px`` map pixels are dropped. Returns the polygons
    and each one's mean map probability over its pixels.
    """
    import cv2
    import shapely
    from shapely.geometry import Polygon

    from kgl.io import mask_to_polygons

    p = np.asarray(proba)
    p = p.astype(np.float32) / 255.0 if p.dtype == np.uint8 else p.astype(np.float32)
    fg = (p > threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=4)
    sums = np.bincount(labels.ravel(), weights=p.ravel(), minlength=n)
    polys, means = [], []
    for k in range(1, n):
        x, y, w, h, area = stats[k]
        if area < min_area_px:
            continue
        parts = mask_to_polygons(labels[y : y + h, x : x + w] == k)
        if not parts:
            continue
        outer = max(parts, key=lambda q: q.area)
        poly = Polygon(outer.exterior)  # holes filled
        poly = shapely.transform(poly, lambda c, x=x, y=y: (c + np.array([x, y]) + 0.5) * downsample - 0.5)
        polys.append(poly)
        means.append(sums[k] / area)
    return polys, np.asarray(means, dtype=np.float64)


@accepts_spatialdata("objects")
@d.dedent
def glomeruli(
    adata: AnnData | SpatialData,
    model: Any = None,
    *,
    library_id: str | Sequence[str] | None = None,
    key: str = "glomerulus",
    threshold: float = 0.5,
    min_area_um2: float = 1500.0,
    device: Any = "auto",
    precision: Precision = "auto",
    img_key: str | None = None,
    spatial_key: str = "spatial",
    library_key: str = "library_id",
    table_name: str | None = None,
    show_progress: bool = False,
) -> Any:
    """One polygon per glomerulus from the glomerulus map, with its size and the spots it overlaps.

    Reuses the map :func:`kgl.tl.glomerulus_map` stored under ``key`` (``uns[spatial_key][lib]
    ["images"][key]``); where there is none, computes it with ``model`` (nothing is written to ``adata``).

    Parameters
    ----------
    adata
        AnnData in the squidpy Visium layout, or a SpatialData (the map stored by
        :func:`kgl.tl.glomerulus_map` as an image element is used; the polygons are also written as
        the shapes element ``f"{region}_{key}_glomeruli"``, in the tissue image's coordinate systems).
    model
        Map model used when no stored map exists (see :func:`kgl.tl.glomerulus_map`).
    %(library_ids)s
    key
        The ``key_added`` of :func:`kgl.tl.glomerulus_map`.
    threshold
        Map probability above which a pixel is glomerulus.
    min_area_um2
        Smaller components are dropped (a human glomerulus is ~20,000–50,000 µm², a mouse one ~5,000).
    device, precision
        As in :func:`kgl.tl.classify_spots` (only when the map is computed here).
    %(img_key)s
    %(spatial_key)s
    %(library_key)s
    %(table_name)s
    show_progress
        Show a progress bar when the map is computed.

    Returns
    -------
    :class:`geopandas.GeoDataFrame`, one row per glomerulus, ``geometry`` in the full-resolution
    pixel frame of ``obsm[spatial_key]`` (pixel centres at integers; :func:`kgl.io.write_geojson`
    writes it for QuPath), with ``library_id``, ``area_um2``, ``diameter_um`` (equivalent circle),
    ``mean_proba`` (the map's mean inside), ``n_spots``, ``spots`` (barcodes of the spots whose
    55-µm disk, or Visium HD bin square, it overlaps) and ``spot_fractions`` (the share of each it covers).
    ``attrs`` holds ``mpp`` per library and the parameters.

    """
    import geopandas as gpd

    from kgl.im import spot_sets

    if table_name is not None:
        raise ValueError("table_name is only for a SpatialData object; adata is an AnnData.")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}.")
    sets = spot_sets(adata, library_id=library_id, img_key=img_key, spatial_key=spatial_key, library_key=library_key)
    rows, mpps = [], {}
    for spots in sets:
        proba, ds = _stored_or_computed_map(adata, spots, key, model, spatial_key, device, precision, show_progress)
        mpp = spots.mpp
        min_px = min_area_um2 / (ds * mpp) ** 2
        polys, means = map_polygons(proba, downsample=ds, threshold=threshold, min_area_px=min_px)
        radius = SPOT_DIAMETER_UM / 2 / mpp if spots.bin_um is None else spots.bin_um / mpp / np.sqrt(2)
        names = adata.obs_names[spots.index].to_numpy()
        for poly, mean in zip(polys, means, strict=True):
            x0, y0, x1, y1 = poly.bounds
            c = spots.centers
            near = np.flatnonzero((c[:, 0] > x0 - radius) & (c[:, 0] < x1 + radius) & (c[:, 1] > y0 - radius)
                                  & (c[:, 1] < y1 + radius))  # fmt: skip
            if spots.bin_um is None:
                cov = spot_coverage(c[near], [poly], radius)
            else:  # Visium HD: the bin's square
                cov = square_coverage(c[near], spots.bin_um / mpp, [poly])
            hit = cov > 0
            area = poly.area * mpp**2
            rows.append({"library_id": spots.library_id, "area_um2": area, "diameter_um": 2 * np.sqrt(area / np.pi),
                         "mean_proba": float(mean), "n_spots": int(hit.sum()), "spots": list(names[near[hit]]),
                         "spot_fractions": [float(v) for v in cov[hit]], "geometry": poly})  # fmt: skip
        mpps[spots.library_id] = mpp
    gdf = gpd.GeoDataFrame(pd.DataFrame(rows, columns=[*GLOMERULUS_COLUMNS, "geometry"]), geometry="geometry")
    gdf.index = pd.Index([f"glom{i:04d}" for i in range(len(gdf))], name="glomerulus")
    gdf.attrs = {"mpp": mpps, "key": key, "threshold": float(threshold), "min_area_um2": float(min_area_um2)}
    return gdf


def _stored_or_computed_map(
    adata: Any, spots: Any, key: str, model: Any, spatial_key: str, device: Any, precision: Any, show_progress: bool
) -> tuple[np.ndarray, float]:
    """The library's map (from :func:`kgl.tl.glomerulus_map` when stored) and its full-res px per map px."""
    meta = adata.uns[spatial_key][spots.library_id]
    stored = (meta.get("images") or {}).get(key)
    scalef = (meta.get("scalefactors") or {}).get(f"tissue_{key}_scalef")
    if stored is not None and scalef:
        if model is not None:
            from kgl._logging import logger

            logger.info("glomeruli: using the stored map %r of %r; model= is not used.", key, spots.library_id)
        return np.asarray(stored), 1.0 / float(scalef)
    from kgl.tl._device import autocast_dtype, resolve_device
    from kgl.tl._map import _full_frame, library_map, resolve_map_model

    net = resolve_map_model(model)
    dev = resolve_device(device)
    pred = library_map(net, spots, device=dev, amp=autocast_dtype(dev, precision), show_progress=show_progress)
    return _full_frame(pred), pred.grid.downsample


def glomerulus_expression(adata: AnnData, glomeruli: Any, *, layer: str | None = None) -> AnnData:
    """Per-glomerulus expression: each glomerulus' counts as its spots' counts weighted by the share it covers.

    Row ``g`` is ``Σ_s f_gs · x_s`` over the spots ``s`` of ``glomeruli.loc[g, "spots"]`` with
    ``f_gs`` from ``spot_fractions`` (the aggregation SarderLab's spatial tools apply to
    segmentations made elsewhere). A spot shared by two glomeruli contributes to each by its share.

    Parameters
    ----------
    adata
        The AnnData (with genes) whose spots :func:`kgl.tl.glomeruli` looked at.
    glomeruli
        The :func:`kgl.tl.glomeruli` table.
    layer
        Counts layer; ``X`` by default.

    Returns
    -------
    :class:`~anndata.AnnData` with one row per glomerulus (``obs``: the table without geometry
    and lists, plus ``weight_sum``, the summed spot fractions), ``var`` as ``adata.var``.

    """
    import anndata as ad
    from scipy import sparse

    missing = {"spots", "spot_fractions"} - set(glomeruli.columns)
    if missing:
        raise KeyError(f"glomeruli lacks columns {sorted(missing)}; make it with kgl.tl.glomeruli(adata).")
    if adata.n_vars == 0:
        raise ValueError("adata has no genes (n_vars == 0): there is no expression to aggregate.")
    x = adata.layers[layer] if layer is not None else adata.X
    pos = pd.Series(np.arange(adata.n_obs), index=adata.obs_names)
    rows, cols, vals = [], [], []
    for g, (names, fr) in enumerate(zip(glomeruli["spots"], glomeruli["spot_fractions"], strict=True)):
        unknown = [s for s in names if s not in pos.index]
        if unknown:
            raise KeyError(
                f"Glomerulus {glomeruli.index[g]!r} names spots not in adata.obs_names (e.g. {unknown[0]!r})."
            )
        rows += [g] * len(names)
        cols += list(pos[list(names)])
        vals += list(fr)
    w = sparse.csr_matrix((vals, (rows, cols)), shape=(len(glomeruli), adata.n_obs))
    counts = w @ x
    obs = pd.DataFrame(glomeruli.drop(columns=["geometry", "spots", "spot_fractions"]))
    obs["weight_sum"] = np.asarray(w.sum(axis=1)).ravel()
    return ad.AnnData(X=counts if sparse.issparse(counts) else np.asarray(counts), obs=obs, var=adata.var.copy())
