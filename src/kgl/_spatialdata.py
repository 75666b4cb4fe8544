"""SpatialData input for the public AnnData functions.

A :class:`~spatialdata.SpatialData` with circle shapes (Visium spots, ``radius`` column), an image
element sharing a coordinate system with them and a table annotating the shapes is mapped onto the
squidpy layout kgl works on: each annotated shapes element (region) becomes a ``library_id``, spot
centres are expressed in the pixel frame of the chosen image's finest scale, and the image is read
lazily through its multiscale pyramid. Results are written back into the table.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from spatialdata import SpatialData

__all__ = [
    "accepts_spatialdata",
    "is_spatialdata",
    "map_on_spatialdata",
    "objects_on_spatialdata",
    "run_on_spatialdata",
    "spatialdata_view",
]

_F = TypeVar("_F", bound=Callable[..., Any])


def is_spatialdata(obj: Any) -> bool:
    """True for :class:`spatialdata.SpatialData` (checked without importing spatialdata)."""
    return type(obj).__name__ == "SpatialData" and type(obj).__module__.startswith("spatialdata")


def _table(sdata: SpatialData, table_name: str | None) -> tuple[str, Any]:
    names = list(sdata.tables.keys())
    if table_name is None:
        if len(names) != 1:
            raise ValueError(f"SpatialData has {len(names)} tables {names}; pass table_name= to choose one.")
        table_name = names[0]
    if table_name not in sdata.tables:
        raise KeyError(f"Table {table_name!r} not found. Available: {names}.")
    return table_name, sdata.tables[table_name]


def annotated_table(data: Any, table_name: str | None = None) -> Any:
    """The AnnData kgl annotates: ``data`` itself, or the table of a SpatialData chosen as :mod:`kgl.tl` chooses it."""
    return _table(data, table_name)[1] if is_spatialdata(data) else data


def _image_levels(image: Any) -> list[tuple[Any, float]]:
    """``(array (H, W, C) lazily transposed, downsample vs. finest scale)`` for a (multiscale) image element."""
    from spatialdata import get_pyramid_levels

    multiscale = hasattr(image, "children") and len(getattr(image, "children", {}))  # DataTree
    arrays = get_pyramid_levels(image) if multiscale else [image]  # spatialdata's own level order
    h0 = arrays[0].sizes["y"]
    return [(da.transpose("y", "x", "c").data, h0 / da.sizes["y"]) for da in arrays]  # dask: stays lazy


def _affine_between(src: Any, dst: Any, common: set[str]) -> np.ndarray:
    """The ``(x, y)`` affine from ``src``'s intrinsic frame to ``dst``'s, through a coordinate system both have.

    Visium HD elements share three coordinate systems (full-res, downscaled hires and lowres) that
    agree, so spatialdata's ``get_transformation_between_coordinate_systems`` finds several equal
    paths and refuses; composing through one of them is the same transformation.
    """
    from spatialdata.transformations import get_transformation

    cs = sorted(common)[0]
    to_cs = [np.asarray(get_transformation(el, to_coordinate_system=cs).to_affine_matrix(
        input_axes=("x", "y"), output_axes=("x", "y")), dtype=float) for el in (src, dst)]  # fmt: skip
    return np.linalg.inv(to_cs[1]) @ to_cs[0]


def _bin_um(shapes: Any, region: str, table_name: str) -> float | None:
    """The bin size (µm) of Visium HD bins, from their name (``..._square_008um``); ``None`` for Visium spot circles.

    HD bins are recognised by name whatever their geometry (``visium_hd(bins_as_squares=False)``
    reads them as circles); polygons must be axis-aligned squares and name their size.
    """
    import re

    m = re.search(r"square_(\d+)um", f"{region} {table_name}")
    if "radius" in shapes.columns:
        return None if m is None else float(int(m.group(1)))
    geom = shapes.geometry
    if len(geom) == 0 or not (geom.geom_type == "Polygon").all():
        raise ValueError(
            f"Shapes {region!r} are neither circles (no 'radius' column) nor Visium HD squares: kgl needs Visium spot "
            "circles or the square bins that spatialdata_io.visium_hd reads."
        )
    b = geom.bounds
    w, h = (b["maxx"] - b["minx"]).to_numpy(), (b["maxy"] - b["miny"]).to_numpy()
    if not (np.allclose(w, h, rtol=1e-3) and np.allclose(geom.area.to_numpy(), w * h, rtol=1e-3)):
        raise ValueError(f"Shapes {region!r} are polygons but not axis-aligned squares: not Visium HD bins.")
    if m is None:
        raise ValueError(
            f"Shapes {region!r} are squares, but neither they nor table {table_name!r} name a bin size "
            "('..._square_008um', as spatialdata_io.visium_hd names them): kgl cannot tell their size in µm."
        )
    return float(int(m.group(1)))


def spatialdata_view(
    sdata: SpatialData,
    *,
    table_name: str | None = None,
    img_key: str | None = None,
    library_key: str = "library_id",
) -> tuple[Any, str]:
    """A temporary AnnData in the squidpy layout over the table's spots (rows in table order)."""
    import anndata as ad

    from kgl.io import SlideImage

    table_name, table = _table(sdata, table_name)
    attrs = table.uns.get("spatialdata_attrs") or {}
    if not attrs.get("region"):
        raise KeyError(f"Table {table_name!r} does not annotate any element (uns['spatialdata_attrs']['region']).")
    region_key, instance_key = attrs["region_key"], attrs["instance_key"]
    regions = [attrs["region"]] if isinstance(attrs["region"], str) else list(attrs["region"])
    coords = np.full((table.n_obs, 2), np.nan)
    spatial: dict[str, Any] = {}
    lib = np.empty(table.n_obs, dtype=object)
    for region in regions:
        if region not in sdata.shapes:
            raise KeyError(
                f"Table {table_name!r} annotates {region!r}, which is not a shapes element: kgl needs Visium "
                f"circles. Shapes: {list(sdata.shapes)}."
            )
        shapes = sdata.shapes[region]
        bin_um = _bin_um(shapes, region, table_name)
        from spatialdata.transformations import get_transformation

        shape_cs = set(get_transformation(shapes, get_all=True))
        candidates = []
        for name, image in sdata.images.items():
            common = shape_cs & set(get_transformation(image, get_all=True))
            if common and (img_key is None or name == img_key):
                to_img = _affine_between(shapes, image, common)  # shapes' frame -> the image's pixels
                candidates.append((abs(np.linalg.det(to_img[:2, :2])), name, to_img))
        if not candidates:
            which = f"image {img_key!r}" if img_key else "any image"
            raise KeyError(
                f"Shapes {region!r} share no coordinate system with {which}. Images: {list(sdata.images)}; "
                f"coordinate systems of the shapes: {sorted(shape_cs)}."
            )
        _, name, to_img = max(candidates, key=lambda c: c[0])  # highest resolution
        lin = to_img[:2, :2]
        if not np.allclose(lin, np.diag(np.diag(lin))) or not np.isclose(lin[0, 0], lin[1, 1]):
            raise NotImplementedError(
                f"Shapes {region!r} map to image {name!r} by a rotation/shear; kgl supports scale + translation."
            )
        rows = np.flatnonzero(table.obs[region_key].astype(str).to_numpy() == region)
        inst = table.obs[instance_key].to_numpy()[rows]
        missing = pd.Index(inst).difference(shapes.index)
        if len(missing):
            raise KeyError(
                f"{len(missing)} table rows point at instances missing from shapes {region!r} (e.g. {missing[0]!r})."
            )
        geo = shapes.loc[inst]
        centre = geo.geometry if "radius" in geo.columns else geo.geometry.centroid
        xy = np.c_[centre.x.to_numpy(), centre.y.to_numpy(), np.ones(len(geo))] @ to_img.T
        coords[rows] = xy[:, :2]
        lib[rows] = region
        if "radius" in geo.columns:  # Visium spots, or HD bins read as circles (bins_as_squares=False)
            size = 2.0 * float(np.median(geo["radius"].to_numpy()))
        else:
            b = geo.geometry.bounds
            size = float(np.median(b["maxx"] - b["minx"]))
        image = SlideImage(_image_levels(sdata.images[name]), name=f"{region}/{name}")
        sf = {"spot_diameter_fullres": size * float(lin[0, 0]), f"tissue_{name}_scalef": 1.0}
        if bin_um is not None:  # Visium HD: the square's side in µm, as Space Ranger's scalefactors say it
            sf["bin_size_um"] = bin_um
        spatial[region] = {"images": {name: image}, "scalefactors": sf, "metadata": {"spatialdata_image": name}}
    view = ad.AnnData(obs=pd.DataFrame({library_key: pd.Categorical(lib)}, index=table.obs_names.copy()))
    for c in ("array_row", "array_col"):  # array indices: the spot lattice gives µm/px (kgl._geometry)
        if c in table.obs:
            view.obs[c] = table.obs[c].to_numpy()
    view.obsm["spatial"] = coords
    view.uns["spatial"] = spatial
    return view, table_name


def run_on_spatialdata(func: Callable, sdata: SpatialData, *, table_name: str | None, copy: bool, **kwargs: Any) -> Any:
    """Run an AnnData function on a SpatialData's spots and copy its outputs into the table."""
    library_key = kwargs.get("library_key", "library_id")
    view, table_name = spatialdata_view(
        sdata, table_name=table_name, img_key=kwargs.get("img_key"), library_key=library_key
    )
    before_obs, before_obsm, before_uns = set(view.obs.columns), set(view.obsm), set(view.uns)
    func(view, copy=False, table_name=None, **kwargs)
    if copy:
        import spatialdata

        sdata = spatialdata.deepcopy(sdata)
    table = sdata.tables[table_name]
    from kgl._validators import save_data

    for k in view.obs.columns:  # what the view did not start with is output
        if k not in before_obs:
            save_data(table, attr="obs", key=k, data=view.obs[k].values)
    for k in set(view.obsm) - before_obsm:
        table.obsm[k] = view.obsm[k]
    for k in set(view.uns) - before_uns:
        table.uns[k] = view.uns[k]
    return sdata if copy else None


def map_on_spatialdata(func: Callable, sdata: SpatialData, *, table_name: str | None, copy: bool, **kwargs: Any) -> Any:
    """Run a dense-map function on a SpatialData's spots; each map becomes an image element aligned with the tissue.

    The AnnData function stores its map in the view as ``uns["spatial"][region]["images"][key]``
    (map pixel ``j`` covering the tissue image's pixels ``[j·D − 0.5, (j+1)·D − 0.5)``, ``D`` =
    ``1 / scalefactors[f"tissue_{key}_scalef"]``). Here it becomes the image element
    ``f"{region}_{key}"`` whose transformation to every coordinate system of the tissue image is
    that scale and half-pixel shift followed by the tissue image's own transformation; the map's
    parameters (new ``uns`` keys) go into the table's ``uns``.
    """
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale, Sequence, Translation, get_transformation

    key = kwargs.get("key_added", "glomerulus")
    view, table_name = spatialdata_view(
        sdata, table_name=table_name, img_key=kwargs.get("img_key"), library_key=kwargs.get("library_key", "library_id")
    )
    before_uns = set(view.uns)
    func(view, copy=False, table_name=None, **kwargs)
    if copy:
        import spatialdata

        sdata = spatialdata.deepcopy(sdata)
    for region, meta in view.uns["spatial"].items():
        arr = (meta.get("images") or {}).get(key)
        if not isinstance(arr, np.ndarray):  # no map for this region (a library not asked for)
            continue
        d = 1.0 / float(meta["scalefactors"][f"tissue_{key}_scalef"])
        tissue = sdata.images[meta["metadata"]["spatialdata_image"]]
        to_tissue = Sequence([Scale([d, d], axes=("x", "y")), Translation([-0.5, -0.5], axes=("x", "y"))])
        transformations = {cs: Sequence([to_tissue, t]) for cs, t in get_transformation(tissue, get_all=True).items()}
        sdata.images[f"{region}_{key}"] = Image2DModel.parse(arr[None], dims=("c", "y", "x"),
                                                             transformations=transformations)  # fmt: skip
    table = sdata.tables[table_name]
    for k in set(view.uns) - before_uns:
        table.uns[k] = view.uns[k]
    return sdata if copy else None


def objects_on_spatialdata(func: Callable, sdata: SpatialData, *, table_name: str | None, **kwargs: Any) -> Any:
    """Run an object function (polygons from a stored map) on a SpatialData; its polygons also become shapes elements.

    Maps stored by :func:`map_on_spatialdata` (image elements ``f"{region}_{key}"``) are handed to
    the AnnData function as it stores them itself; the returned GeoDataFrame (tissue-image pixel
    frame) is returned, and each region's polygons are written as the shapes element
    ``f"{region}_{key}_glomeruli"`` with the tissue image's transformations (scalar columns only).
    """
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import get_transformation

    key = kwargs.get("key", "glomerulus")
    view, _ = spatialdata_view(
        sdata, table_name=table_name, img_key=kwargs.get("img_key"), library_key=kwargs.get("library_key", "library_id")
    )
    for region, meta in view.uns["spatial"].items():
        name = f"{region}_{key}"
        if name in sdata.images:
            tissue = sdata.images[meta["metadata"]["spatialdata_image"]]
            common = set(get_transformation(sdata.images[name], get_all=True)) & set(
                get_transformation(tissue, get_all=True)
            )
            d = float(_affine_between(sdata.images[name], tissue, common)[0, 0])
            meta["images"][key] = np.asarray(sdata.images[name].data[0])
            meta["scalefactors"][f"tissue_{key}_scalef"] = 1.0 / d
    gdf = func(view, table_name=None, **kwargs)
    if not isinstance(gdf, pd.DataFrame) or "library_id" not in gdf:
        return gdf
    for region, meta in view.uns["spatial"].items():
        part = gdf[gdf["library_id"] == region]
        if part.empty:  # no glomerulus there (or a library not asked for): no shapes element
            continue
        tissue = sdata.images[meta["metadata"]["spatialdata_image"]]
        cols = [c for c in part.columns if c not in ("spots", "spot_fractions")]
        shapes = part[cols].reset_index(drop=True)
        sdata.shapes[f"{region}_{key}_glomeruli"] = ShapesModel.parse(
            shapes, transformations=dict(get_transformation(tissue, get_all=True))
        )
    return gdf


def plotting_view(
    sdata: SpatialData, *, table_name: str | None = None, max_px: int = 2000, library_key: str = "library_id"
) -> Any:
    """An in-memory squidpy-layout AnnData of the table (obs, obsm, uns) with a ``hires`` image per region.

    The image is the pyramid level of each region's image whose longer side is at most ``max_px``
    (the coarsest level otherwise), so plotting never materialises a full-resolution image.
    """
    from kgl.io import to_rgb_uint8

    view, table_name = spatialdata_view(sdata, table_name=table_name, library_key=library_key)
    table = sdata.tables[table_name]
    for meta in view.uns["spatial"].values():
        (image,) = meta["images"].values()
        fitting = [lv for lv in image.levels if max(lv.shape) <= max_px] or [image.levels[-1]]
        level = fitting[0]
        meta["images"] = {"hires": to_rgb_uint8(np.asarray(level.array), image.mode)}
        meta["scalefactors"]["tissue_hires_scalef"] = 1.0 / level.downsample
    for k in table.obs.columns:
        if k not in view.obs:
            view.obs[k] = table.obs[k].values
    for k, v in table.obsm.items():
        if k != "spatial":
            view.obsm[k] = v
    for k, v in table.uns.items():
        if k not in ("spatial", "spatialdata_attrs"):
            view.uns[k] = v
    return view


def accepts_spatialdata(kind: Literal["annotate", "map", "objects", "table", "plot"]) -> Callable[[_F], _F]:
    """Let an AnnData function (``adata`` first, ``table_name=`` keyword) take a SpatialData too.

    The call is bound to the function's real signature (:func:`inspect.Signature.bind`, defaults
    applied), so every argument reaches the AnnData code path and none can be forgotten by a
    hand-written forward (as ``uncertain`` once was). ``kind`` says what the AnnData path gets:

    - ``"annotate"``: a view of the spots in the squidpy layout (:func:`spatialdata_view`); the
      outputs are copied back into the table (:func:`run_on_spatialdata`; ``copy=`` honoured);
    - ``"map"``: as ``"annotate"``, and the dense maps the function stored become image elements
      (:func:`map_on_spatialdata`);
    - ``"objects"``: a view of the spots with the stored maps, and the returned polygons become
      shapes elements too (:func:`objects_on_spatialdata`);
    - ``"table"``: the table itself (:func:`_table`);
    - ``"plot"``: an in-memory plotting view (:func:`plotting_view`).

    The AnnData path is ``wrapper.__wrapped__``, looked up at call time; it receives
    ``table_name=None``.
    """
    if kind not in ("annotate", "map", "objects", "table", "plot"):
        raise ValueError(f"kind must be 'annotate', 'map', 'objects', 'table' or 'plot', got {kind!r}.")

    def decorate(func: _F) -> _F:
        sig = inspect.signature(func)
        first = next(iter(sig.parameters))
        if "table_name" not in sig.parameters or (kind in ("annotate", "map") and "copy" not in sig.parameters):
            raise TypeError(f"{func.__name__} needs table_name= (and copy= to annotate) to accept SpatialData.")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            impl = wrapper.__wrapped__  # type: ignore[attr-defined]
            bound = sig.bind(*args, **kwargs)
            data = bound.arguments[first]
            if not is_spatialdata(data):
                return impl(*args, **kwargs)
            bound.apply_defaults()
            kw = dict(bound.arguments)
            del kw[first]
            for name, param in sig.parameters.items():
                if param.kind is inspect.Parameter.VAR_KEYWORD:  # **kwargs: passed on as keywords
                    kw.update(kw.pop(name))
                elif param.kind is inspect.Parameter.VAR_POSITIONAL:
                    raise TypeError(f"{func.__name__}: *args cannot be bound for SpatialData input.")
            table_name = kw.pop("table_name")
            if kind in ("annotate", "map"):
                copy = kw.pop("copy")
                run = run_on_spatialdata if kind == "annotate" else map_on_spatialdata
                return run(impl, data, table_name=table_name, copy=copy, **kw)
            if kind == "table":
                return impl(_table(data, table_name)[1], table_name=None, **kw)
            if kind == "objects":
                return objects_on_spatialdata(impl, data, table_name=table_name, **kw)
            library_key = kw.get("library_key", "library_id")
            view = plotting_view(data, table_name=table_name, library_key=library_key)
            return impl(view, table_name=None, **kw)

        wrapper.__kgl_spatialdata__ = kind  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
