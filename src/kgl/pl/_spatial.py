"""Spatial plots of spot calls over the tissue image (built on :func:`squidpy.pl.spatial_scatter`)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kgl._docs import d
from kgl._spatialdata import accepts_spatialdata
from kgl._utils import _spatial_uns, library_mpp, resolve_library_ids, scalefactors
from kgl.pl._utils import save_figure

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["spatial_glom"]


def _squidpy() -> Any:
    with warnings.catch_warnings():  # squidpy's docrep emits SyntaxWarnings at import
        warnings.simplefilter("ignore")
        import squidpy as sq
    return sq


def _with_reviewed_labels(adata: AnnData, key: str, colors: Sequence[str], spatial_key: str) -> Any:
    """A light AnnData for plotting whose ``obs[key]`` holds the reviewed labels where there are some.

    It shares the ``uns`` values (images) with ``adata`` and copies only obs, the spot centres and
    the genes being plotted; ``adata`` itself is not modified.
    """
    import anndata as ad

    from kgl._utils import reviewed_labels

    genes = [c for c in colors if c not in adata.obs and c in adata.var_names]
    obs = adata.obs.copy()
    obs[key] = reviewed_labels(adata, key)
    view = ad.AnnData(
        X=adata[:, genes].X if genes else None,
        obs=obs,
        var=adata.var.loc[genes] if genes else None,
        obsm={spatial_key: np.asarray(adata.obsm[spatial_key])},
        uns=dict(adata.uns),  # a new top level over the same values: the images are not copied
    )
    return view


def _map_overlay(adata: AnnData, library_id: str, key: str, spatial_key: str) -> tuple[np.ndarray, float]:
    """The stored map of ``library_id`` and its full-res px per map px; a clear error when there is none."""
    meta = _spatial_uns(adata, spatial_key)[library_id]
    img = (meta.get("images") or {}).get(key)
    scalef = (meta.get("scalefactors") or {}).get(f"tissue_{key}_scalef")
    if img is None or not scalef:
        raise KeyError(
            f"No glomerulus map {key!r} in library {library_id!r}: run kgl.tl.glomerulus_map(adata, key_added={key!r}) "
            f"first. Images: {list(meta.get('images') or {})}."
        )
    return np.asarray(img), 1.0 / float(scalef)


def _draw_map_and_outlines(ax: Any, overlay: tuple[np.ndarray, float] | None, glomeruli: Any, scale: float) -> None:
    """Draw a map (alpha rising with the probability) and polygon outlines onto axes in the background image's px."""
    import shapely

    if overlay is not None:
        from matplotlib.colors import LinearSegmentedColormap

        m, d = overlay
        h, w = m.shape
        cmap = LinearSegmentedColormap.from_list("kgl_map", [(0.0, (0.0, 0.6, 1.0, 0.0)), (1.0, (0.0, 0.6, 1.0, 0.6))])
        # map pixel j covers full-res [j·d − 0.5, (j+1)·d − 0.5); axes are background-image px (full-res · scale)
        extent = (-0.5 * scale, (w * d - 0.5) * scale, (h * d - 0.5) * scale, -0.5 * scale)
        lim = (ax.get_xlim(), ax.get_ylim())
        ax.imshow(m, cmap=cmap, vmin=0, vmax=255, extent=extent, interpolation="nearest", zorder=0.5)  # under the spots
        ax.set_xlim(*lim[0])
        ax.set_ylim(*lim[1])
    if glomeruli is not None:
        for geom in list(glomeruli.geometry if hasattr(glomeruli, "geometry") else glomeruli):
            for poly in shapely.get_parts(geom):
                xy = np.asarray(poly.exterior.coords) * scale
                ax.plot(xy[:, 0], xy[:, 1], color="#00c8ff", lw=1.0, zorder=4)


def _library_mpp(adata: AnnData, key: str, library_id: str, spatial_key: str, library_key: str) -> float:
    """µm per full-res px: what classify_spots recorded, else measured from the spot lattice."""
    try:
        return float(adata.uns[key]["params"]["libraries"][library_id]["mpp"])
    except (KeyError, TypeError, ValueError):
        return library_mpp(adata, library_id, spatial_key=spatial_key, library_key=library_key).mpp


@accepts_spatialdata("plot")
@d.dedent
def spatial_glom(
    adata: AnnData | SpatialData,
    *,
    library_id: str | Sequence[str] | None = None,
    key: str = "glomerulus",
    color: str | Sequence[str] | None = None,
    img_res_key: str | None = None,
    library_key: str = "library_id",
    spatial_key: str = "spatial",
    table_name: str | None = None,
    size: float = 1.0,
    scalebar: bool = True,
    show_map: bool = False,
    glomeruli: Any = None,
    figsize: tuple[float, float] | None = None,
    dpi: int = 150,
    save: str | os.PathLike | None = None,
    ax: Any = None,
    **kwargs: Any,
) -> Any:
    """Draw glomerulus calls (labels and probabilities) over the tissue image.

    Parameters
    ----------
    adata
        AnnData annotated by :func:`kgl.tl.classify_spots` (or a SpatialData whose table is).
    %(library_ids)s
    key
        The ``key_added`` used by :func:`~kgl.tl.classify_spots`.
    color
        What to colour spots by: any ``obs`` column(s) or gene(s). Default: the label
        ``obs[key]`` and the probability ``obs[f"{key}_proba"]`` side by side. When manual review
        (:func:`kgl.tl.apply_review`) wrote ``obs[f"{key}_reviewed"]``, the ``key`` panel shows the
        reviewed labels where there are some (:func:`kgl._utils.reviewed_labels`) and says how many.
    img_res_key
        Background image (``"hires"``, ``"lowres"``); the highest resolution in ``uns`` by default.
    %(library_key)s
    %(spatial_key)s
    %(table_name)s
    size
        Spot size relative to the 55-µm spot diameter.
    scalebar
        Draw a µm scale bar.
    show_map
        Overlay the glomerulus map of :func:`kgl.tl.glomerulus_map` (``uns[spatial_key][lib]["images"][key]``)
        on every panel, transparent where the probability is low.
    glomeruli
        Outline these polygons (:func:`kgl.tl.glomeruli`, full-resolution frame) on every panel.
    figsize, dpi
        Figure size and resolution.
    save
        Write the figure there (PNG/PDF/SVG by extension); written atomically.
    ax
        Axes to draw into.
    kwargs
        Passed to :func:`squidpy.pl.spatial_scatter` (``palette``, ``cmap``, ``crop_coord``, ...).

    Returns
    -------
    The matplotlib axes (a list when there are several panels).

    """
    if table_name is not None:
        raise ValueError("table_name is only for a SpatialData object; adata is an AnnData.")
    if color is None:
        if key not in adata.obs:
            raise KeyError(
                f"adata.obs[{key!r}] not found: run kgl.tl.classify_spots(adata, key_added={key!r}) first, or pass "
                f"key=/color=. Available obs columns: {list(adata.obs.columns)}."
            )
        color = [key, f"{key}_proba"]
    colors = [color] if isinstance(color, str) else list(color)
    missing = [c for c in colors if c not in adata.obs and c not in adata.var_names]
    if missing:
        raise KeyError(
            f"Cannot colour by {missing}: not in adata.obs or var_names. obs columns: {list(adata.obs.columns)}."
        )
    libs = resolve_library_ids(adata, library_id, spatial_key=spatial_key)
    first = _spatial_uns(adata, spatial_key)[libs[0]]
    images = first.get("images") or {}
    if img_res_key is None:
        img_res_key = "hires" if "hires" in images else ("lowres" if "lowres" in images else None)
    elif img_res_key not in images:
        raise KeyError(f"Image {img_res_key!r} not in library {libs[0]!r}. Available: {list(images)}.")
    sf = scalefactors(adata, libs[0], spatial_key)
    plot_kwargs: dict[str, Any] = {
        "color": colors,
        "library_id": libs,
        "img": img_res_key is not None,
        "img_res_key": img_res_key or "hires",
        "size": size,
        "spatial_key": spatial_key,
        "return_ax": True,
        "figsize": figsize,
        "dpi": dpi,
        "ax": ax,
        "legend_na": False,
        "alpha": 0.85,
    }
    if len(_spatial_uns(adata, spatial_key)) > 1:
        plot_kwargs["library_key"] = library_key
    if f"{key}_proba" in colors:
        plot_kwargs.setdefault("cmap", "magma")
    if scalebar:
        scale = sf.get(f"tissue_{img_res_key}_scalef", 1.0) if img_res_key else 1.0
        plot_kwargs["scalebar_dx"] = _library_mpp(adata, key, libs[0], spatial_key, library_key) / scale
        plot_kwargs["scalebar_units"] = "um"
    plot_kwargs.update(kwargs)
    if key in colors and f"{key}_reviewed" in adata.obs:
        adata = _with_reviewed_labels(adata, key, colors, spatial_key)
        if "title" not in kwargs:  # squidpy's titles (the colour names), with the reviewed count per library
            from kgl._utils import library_mask

            done = adata.obs[f"{key}_reviewed"].notna().to_numpy()
            all_libs = list(_spatial_uns(adata, spatial_key))
            n = {lib: int((done & library_mask(adata, lib, all_libs, library_key)).sum()) for lib in libs}
            panels = [(lib, c) for lib in libs for c in colors]
            if not plot_kwargs.get("library_first", True):
                panels = [(lib, c) for c in colors for lib in libs]
            plot_kwargs["title"] = [f"{c} ({n[lib]} reviewed)" if c == key else c for lib, c in panels]
    if show_map and len(libs) > 1:
        raise ValueError(f"show_map draws one library's map; pass library_id= one of {libs}.")
    overlay_map = _map_overlay(adata, libs[0], key, spatial_key) if show_map else None
    sq = _squidpy()
    axes = sq.pl.spatial_scatter(adata, **plot_kwargs)
    axs = list(np.ravel(axes)) if isinstance(axes, list | np.ndarray) else [axes]
    img_scale = sf.get(f"tissue_{img_res_key}_scalef", 1.0) if img_res_key else 1.0
    for a in axs:
        _draw_map_and_outlines(a, overlay_map, glomeruli, img_scale)
    save_figure(axs[0].figure, save, dpi=dpi)
    return axs[0] if len(axs) == 1 else axs
