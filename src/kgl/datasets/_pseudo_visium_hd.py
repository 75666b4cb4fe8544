"""Semi-synthetic Visium HD: annotated images under Space Ranger's 2-µm grid, read by spatialdata-io itself.

:func:`pseudo_visium_hd` writes what Space Ranger HD writes (the ``outs/`` files that
``spatialdata_io.visium_hd`` reads: ``binned_outputs/square_XXXum/`` with a 10x HDF5 matrix,
``tissue_positions.parquet`` and ``scalefactors_json.json``, the feature-slice file, hires/lowres
PNGs and the full-resolution image), reads it back with ``spatialdata_io.visium_hd`` and stores it
as a chunked zarr store. The layout is therefore the reader's by construction (element names,
transformations, table annotations), not kgl's copy of it; only the ground truth is added: each
table's ``obs["glomerulus_coverage"]`` (the exact share of the bin's square inside glomerulus
polygons) and ``uns["pseudo_visium_hd"]`` (parameters, the polygons as WKT).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kgl._geometry import square_coverage
from kgl._logging import logger
from kgl.datasets._pseudo_visium import _annotation_polygons, _downscale, _mosaic, _mpps, _read_image, _resample

__all__ = ["pseudo_visium_hd"]

#: Space Ranger HD's finest square (µm); larger bins are k × k of them.
_SQUARE_UM = 2


def pseudo_visium_hd(
    images: Sequence[Any],
    annotations: Sequence[Any],
    *,
    mpp: float | Sequence[float],
    path: str | os.PathLike,
    dataset_id: str = "pseudo_hd",
    bin_sizes: Sequence[int] = (2, 8, 16),
    target_mpp: float | None = None,
    layout: tuple[int, int] | None = None,
    gap_um: float = 0.0,
    seed: int = 0,
    library_size: float = 100.0,
    chunk_px: int = 1024,
) -> Any:
    """Build a semi-synthetic Visium HD sample from annotated histology images, as spatialdata-io reads it.

    The images are mosaicked as in :func:`kgl.datasets.pseudo_visium`; Space Ranger's grid of 2-µm
    squares, shifted by a random sub-square offset from ``seed``, covers the mosaic, and bins of
    ``b`` µm are ``b/2 × b/2`` squares (``array_row = row_2µm // (b/2)``), as Space Ranger bins them.
    A bin is in the tissue when its centre lies on an image; only those are written (the filtered
    matrix's bins). Counts are simulated (:func:`kgl.datasets.simulate_counts`: glomerular markers
    rise with the bin's coverage), scaled to the bin's area.

    Parameters
    ----------
    images, annotations, mpp, target_mpp, layout, gap_um
        As in :func:`kgl.datasets.pseudo_visium`.
    path
        Folder to write: ``path/outs`` (the Space Ranger files) and ``path/<dataset_id>.zarr``.
    dataset_id
        Space Ranger's sample name: elements are ``f"{dataset_id}_square_008um"``, ...
    bin_sizes
        Bin sides in µm, multiples of 2 (Space Ranger writes 2, 8 and 16).
    seed
        Seed of the grid offset and the counts.
    library_size
        Mean UMIs of a 55-µm-disk-sized area; a bin gets its area's share.
    chunk_px
        Chunk side of the images in the zarr store.

    Returns
    -------
    :class:`~spatialdata.SpatialData` read from ``path/<dataset_id>.zarr``: images
    ``f"{dataset_id}_full_image"`` (multiscale), ``_hires_image``, ``_lowres_image``; per bin size
    ``b``, shapes ``f"{dataset_id}_square_{b:03d}um"`` and table ``f"square_{b:03d}um"`` with the
    ground truth ``obs["glomerulus_coverage"]``; coordinate systems ``dataset_id`` (full-res
    pixels) and its ``_downscaled_hires`` / ``_downscaled_lowres``.

    """
    import shapely
    import spatialdata as sd
    from spatialdata_io import visium_hd

    sizes = sorted({int(b) for b in bin_sizes})
    if not sizes or any(b <= 0 or b % _SQUARE_UM for b in sizes):
        raise ValueError(f"bin_sizes must be positive multiples of {_SQUARE_UM} µm, got {list(bin_sizes)!r}.")
    images, annotations = list(images), list(annotations)
    if not images or len(images) != len(annotations):
        raise ValueError(f"Give one annotation entry per image: {len(images)} images, {len(annotations)} annotations.")
    mpps = _mpps(mpp, len(images))
    mpp_out = float(target_mpp) if target_mpp is not None else mpps[0]
    tiles, polys = [], []
    for i, (image, ann) in enumerate(zip(images, annotations, strict=True)):
        arr, _ = _read_image(image, i)
        arr, p = _resample(arr, _annotation_polygons(ann, arr.shape[:2], i, image), mpps[i] / mpp_out)
        tiles.append(arr)
        polys.append(p)
    canvas, frame, glomeruli = _mosaic(tiles, polys, layout=layout, gap_px=round(gap_um / mpp_out))
    height, width = canvas.shape[:2]
    rng = np.random.default_rng(seed)
    offset_um = rng.uniform(0.0, _SQUARE_UM, 2)  # the grid's shift against the image (x, y)

    root = Path(path)
    outs = root / "outs"
    (outs / "spatial").mkdir(parents=True, exist_ok=True)
    hires, hires_scalef = _downscale(canvas, 2000)
    lowres, lowres_scalef = _downscale(canvas, 600)
    sf = {"tissue_hires_scalef": hires_scalef, "tissue_lowres_scalef": lowres_scalef, "microns_per_pixel": mpp_out,
          "regist_target_img_scalef": hires_scalef, "fiducial_diameter_fullres": 0.0}  # fmt: skip
    _write_space_ranger_images(outs, dataset_id, canvas, hires, lowres, {**sf, "spot_diameter_fullres": 2 / mpp_out,
                                                                          "bin_size_um": 2.0})  # fmt: skip
    truth = {}
    for b in sizes:
        pos, cov = _bins(frame, (height, width), mpp_out, b, offset_um, glomeruli)
        _write_bins(outs / "binned_outputs" / f"square_{b:03d}um", pos, cov, b, mpp_out, sf, library_size, seed)
        truth[f"square_{b:03d}um"] = pd.Series(cov, index=pos["barcode"].to_numpy())
    full = outs / f"{dataset_id}_tissue_image.tif"
    sdata = visium_hd(outs, dataset_id=dataset_id, fullres_image_file=full, load_segmentations_only=False,
                      image_models_kwargs={"chunks": (3, chunk_px, chunk_px)})  # fmt: skip
    wkt = np.asarray([shapely.to_wkt(g, rounding_precision=3) for g in glomeruli], dtype=str)
    for name, cov in truth.items():
        table = sdata.tables[name]
        if len(cov) != table.n_obs or not cov.index.isin(table.obs_names).all():
            raise RuntimeError(f"spatialdata_io read {table.n_obs} {name} bins of the {len(cov)} written.")
        table.obs["glomerulus_coverage"] = cov.reindex(table.obs_names).to_numpy()  # by barcode
        params = {"mpp": mpp_out, "seed": int(seed), "offset_um": offset_um.tolist(), "bin_um": int(name[7:10]),
                  "canvas_shape": [height, width], "n_images": len(images)}  # fmt: skip
        table.uns["pseudo_visium_hd"] = {"params": params, "glomeruli_wkt": wkt}
    store = root / f"{dataset_id}.zarr"
    import warnings

    with warnings.catch_warnings():  # zarr announces a future default once per array: not the user's concern
        warnings.filterwarnings("ignore", message=".*autosharding.*", category=UserWarning)
        sdata.write(store, overwrite=True)
    logger.info(
        "pseudo Visium HD %r: %d images → %d × %d px at %.3g µm/px; bins %s; %d glomeruli.",
        dataset_id, len(images), width, height, mpp_out,
        ", ".join(f"{n}: {sdata.tables[n].n_obs}" for n in truth), len(glomeruli),
    )  # fmt: skip
    return sd.read_zarr(store)


def _bins(frame: Any, shape: tuple[int, int], mpp: float, b: int, offset_um: np.ndarray,
          glomeruli: list[Any]) -> tuple[pd.DataFrame, np.ndarray]:  # fmt: skip
    """Tissue bins of side ``b`` µm (centre on an image) and their exact glomerulus coverage."""
    height, width = shape
    k = b // _SQUARE_UM
    n_c = int(np.ceil((width * mpp + offset_um[0]) / b))
    n_r = int(np.ceil((height * mpp + offset_um[1]) / b))
    rr, cc = np.meshgrid(np.arange(n_r), np.arange(n_c), indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    # the canvas' left edge (x_µm = 0) is at pixel -0.5; 2-µm square j starts at 2j - offset
    x = ((cc + 0.5) * b - offset_um[0]) / mpp - 0.5
    y = ((rr + 0.5) * b - offset_um[1]) / mpp - 0.5
    x0, y0, tw, th = frame.x0, frame.y0, frame.width, frame.height
    on = np.zeros(len(x), dtype=bool)
    for i in range(len(x0)):
        on |= (x >= x0[i] - 0.5) & (x < x0[i] + tw[i] - 0.5) & (y >= y0[i] - 0.5) & (y < y0[i] + th[i] - 0.5)
    rr, cc, x, y = rr[on], cc[on], x[on], y[on]
    if not len(rr):
        raise ValueError(f"No {b}-µm bin centre falls on any image.")
    row_2, col_2 = rr * k, cc * k  # the bin's first 2-µm square: Space Ranger's binned indices are these // k
    pos = pd.DataFrame({
        "barcode": [f"s_{b:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(row_2 // k, col_2 // k, strict=True)],
        "in_tissue": np.ones(len(rr), dtype=np.int32),
        "array_row": rr.astype(np.int32),
        "array_col": cc.astype(np.int32),
        "pxl_row_in_fullres": y,
        "pxl_col_in_fullres": x,
    })  # fmt: skip
    return pos, square_coverage(np.column_stack([x, y]), b / mpp, glomeruli)


def _write_space_ranger_images(outs: Path, ds: str, canvas: np.ndarray, hires: np.ndarray, lowres: np.ndarray,
                               sf: dict[str, float]) -> None:  # fmt: skip
    """The feature-slice file, the global scalefactors, the hires/lowres PNGs and the full-res TIFF."""
    import h5py
    import tifffile
    from PIL import Image

    ident = [1, 0, 0, 0, 1, 0, 0, 0, 1]
    names = ("cytassist_colrow_to_spot_colrow", "spot_colrow_to_cytassist_colrow", "microscope_colrow_to_spot_colrow",
             "spot_colrow_to_microscope_colrow")  # fmt: skip
    meta = {"hd_layout_json": json.dumps({"file_format": "1.0", "transform": ident}),
            "transform_matrices": dict.fromkeys(names, ident)}  # fmt: skip
    with h5py.File(outs / f"{ds}_feature_slice.h5", "w") as f:
        f.attrs["metadata_json"] = json.dumps(meta)
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf))
    Image.fromarray(hires).save(outs / "spatial" / "tissue_hires_image.png")
    Image.fromarray(lowres).save(outs / "spatial" / "tissue_lowres_image.png")
    tifffile.imwrite(outs / f"{ds}_tissue_image.tif", canvas, photometric="rgb", compression="zlib")


def _write_bins(d: Path, pos: pd.DataFrame, cov: np.ndarray, b: int, mpp: float, sf: dict[str, float],
                library_size: float, seed: int) -> None:  # fmt: skip
    """``binned_outputs/square_XXXum``: positions, scalefactors and a 10x HDF5 matrix of simulated counts."""
    import anndata as ad
    import h5py

    from kgl.datasets._counts import simulate_counts

    (d / "spatial").mkdir(parents=True, exist_ok=True)
    pos.to_parquet(d / "spatial" / "tissue_positions.parquet", index=False)
    (d / "spatial" / "scalefactors_json.json").write_text(
        json.dumps({**sf, "spot_diameter_fullres": b / mpp, "bin_size_um": float(b)})
    )
    area_share = b * b / (np.pi * 27.5**2)  # the bin against a 55-µm spot
    tmp = ad.AnnData(obs=pd.DataFrame({"glomerulus_coverage": cov}, index=pos["barcode"].to_numpy()))
    sim = simulate_counts(tmp, n_background=20, library_size=library_size * area_share, seed=seed)
    x, genes = sim.X.tocsr(), sim.var_names.to_numpy()
    with h5py.File(d / "filtered_feature_bc_matrix.h5", "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = pos["barcode"].to_numpy().astype("S")
        m["data"], m["indices"] = x.data.astype(np.int32), x.indices.astype(np.int64)
        m["indptr"] = x.indptr.astype(np.int64)
        m["shape"] = np.array([x.shape[1], x.shape[0]], dtype=np.int32)
        ft = m.create_group("features")
        ft["id"] = np.array([f"KGL{i:05d}" for i in range(x.shape[1])], dtype="S")
        ft["name"] = genes.astype("S")
        ft["feature_type"] = np.array(["Gene Expression"] * x.shape[1], dtype="S")
        ft["genome"] = np.array(["simulated"] * x.shape[1], dtype="S")
        ft["_all_tag_keys"] = np.array([b"genome"])
