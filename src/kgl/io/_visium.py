"""Read Space Ranger (Visium) output into AnnData in the squidpy layout."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kgl._geometry import spot_mpp
from kgl._logging import logger
from kgl._utils import check_spot_diameter

__all__ = ["read_visium"]

_POSITION_FILES = ("tissue_positions.csv", "tissue_positions_list.csv", "tissue_positions.parquet")
_POSITION_COLUMNS = ["in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def _spatial_dir(path: Path) -> tuple[Path, Path]:
    """Return ``(root, root/spatial)`` for a Space Ranger ``outs/`` folder or its ``spatial/`` folder."""
    if not path.exists():
        raise FileNotFoundError(f"Visium folder {str(path)!r} does not exist.")
    if (path / "spatial").is_dir():
        return path, path / "spatial"
    if any((path / f).exists() for f in _POSITION_FILES):
        return path.parent, path
    raise FileNotFoundError(
        f"{str(path)!r} is not a Space Ranger output folder: expected a 'spatial/' folder with one of "
        f"{list(_POSITION_FILES)} and scalefactors_json.json. Found: {sorted(p.name for p in path.iterdir())[:20]}."
    )


def _read_positions(spatial: Path) -> pd.DataFrame:
    for name in _POSITION_FILES:
        f = spatial / name
        if f.exists():
            break
    else:
        raise FileNotFoundError(
            f"No tissue positions file in {str(spatial)!r}; expected one of {list(_POSITION_FILES)}."
        )
    if f.suffix == ".parquet":
        df = pd.read_parquet(f)
        if "barcode" not in df.columns:
            raise ValueError(f"{str(f)!r} has no 'barcode' column (columns: {list(df.columns)}).")
        df = df.set_index("barcode")
        header_line = 0
    else:
        # Space Ranger 1.x writes tissue_positions_list.csv without header, >= 2.0 tissue_positions.csv with one;
        # detect by content rather than by name (as squidpy does). Read as text, then check every value.
        with open(f) as fh:
            has_header = fh.readline().split(",")[0].strip().lower() == "barcode"
        try:
            df = pd.read_csv(f, header=0 if has_header else None, index_col=0, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise ValueError(
                f"{str(f)!r} cannot be parsed as CSV ({e}); restore it from the Space Ranger output."
            ) from e
        header_line = 1 if has_header else 0
        if has_header:
            missing = [c for c in _POSITION_COLUMNS if c not in df.columns]
            if missing:
                raise ValueError(
                    f"{str(f)!r} lacks the column(s) {missing}: its header is {['barcode', *df.columns]}, Space Ranger "
                    f"writes ['barcode', {', '.join(repr(c) for c in _POSITION_COLUMNS)}]. Restore the file from the "
                    "Space Ranger output."
                )
            df = df[_POSITION_COLUMNS]
    if df.shape[1] != 5:
        raise ValueError(
            f"{str(f)!r} must have 6 columns (barcode + {_POSITION_COLUMNS}), found {df.shape[1] + 1}. Restore the "
            "file from the Space Ranger output."
        )
    df.columns = _POSITION_COLUMNS
    df.index = df.index.astype(str)
    df.index.name = None
    out = {}
    for col in _POSITION_COLUMNS:
        raw = df[col]
        num = pd.to_numeric(raw, errors="coerce") if raw.dtype == object else raw.astype(np.float64)
        integer = col in ("in_tissue", "array_row", "array_col")
        bad = num.isna().to_numpy() | ~np.isfinite(num.to_numpy(dtype=np.float64, na_value=np.nan))
        if integer and not bad.all():
            bad |= np.asarray(num.fillna(0) % 1 != 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            value = raw.iloc[i]
            what = "is empty" if value == "" or (not isinstance(value, str) and pd.isna(value)) else f"is {value!r}"
            raise ValueError(
                f"{str(f)!r} line {i + 1 + header_line} (barcode {df.index[i]!r}): {col} {what}, not "
                f"{'an integer' if integer else 'a number'} ({int(bad.sum())} bad value(s) in that column). Restore "
                "the file from the Space Ranger output."
            )
        out[col] = num.to_numpy(dtype=np.int64 if integer else np.float64)
    df = pd.DataFrame(out, index=df.index)
    if df.index.has_duplicates:
        dup = df.index[df.index.duplicated()][0]
        raise ValueError(f"{f.name} lists barcode {dup!r} more than once.")
    return df


_SCALEFACTOR_FIELDS = (
    "spot_diameter_fullres",
    "tissue_hires_scalef",
    "tissue_lowres_scalef",
    "fiducial_diameter_fullres",
)


def _read_scalefactors(sf_file: Path) -> dict[str, Any]:
    if not sf_file.exists():
        raise FileNotFoundError(f"{str(sf_file)!r} not found: kgl needs the scalefactors to convert pixels to µm.")
    try:
        sf = json.loads(sf_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(sf_file)!r} is not valid JSON ({e}); restore it from the Space Ranger output.") from e
    check_spot_diameter(sf, f"{str(sf_file)!r}")
    for field in _SCALEFACTOR_FIELDS:
        if field not in sf:
            continue
        v = sf[field]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v > 0
        if not ok:
            raise ValueError(
                f"{str(sf_file)!r}: field {field!r} is {v!r}; it must be a positive number. Restore the file from the "
                "Space Ranger output."
            )
    return sf


def _read_counts(root: Path, counts_file: str, library_id: str | None) -> tuple[Any, str | None]:
    import scanpy as sc

    f = root / counts_file
    if not f.exists():
        return None, library_id
    if f.is_dir():
        adata = sc.read_10x_mtx(f)
        return adata, library_id
    adata = sc.read_10x_h5(f)
    if library_id is None:
        import h5py

        with h5py.File(f, "r") as h5:
            ids = h5.attrs.get("library_ids")
            if ids is not None and len(ids):
                lid = ids[0]
                library_id = lid.decode() if isinstance(lid, bytes) else str(lid)
    return adata, library_id


def _default_library_id(root: Path) -> str:
    metrics = root / "metrics_summary.csv"
    if metrics.exists():
        try:
            sid = pd.read_csv(metrics, nrows=1).get("Sample ID")
            if sid is not None and len(sid) and isinstance(sid.iloc[0], str):
                return sid.iloc[0]
        except (pd.errors.ParserError, UnicodeDecodeError):
            pass
    return root.resolve().name


def read_visium(
    path: str | os.PathLike,
    *,
    counts_file: str = "filtered_feature_bc_matrix.h5",
    library_id: str | None = None,
    fullres_image_file: str | os.PathLike | None = None,
    load_images: bool = True,
    in_tissue_only: bool = True,
) -> Any:
    """Read a Space Ranger output folder into :class:`~anndata.AnnData` in the squidpy layout.

    Counts are read with :func:`scanpy.read_10x_h5` / :func:`scanpy.read_10x_mtx`. Positions,
    scalefactors and images are read here rather than with :func:`squidpy.read.visium`, because
    that reader requires both the count matrix and ``tissue_hires_image.png``; kgl must also load
    image-only folders (positions + scalefactors + any image) for image analysis.

    Parameters
    ----------
    path
        The Space Ranger ``outs/`` folder (containing ``spatial/``) or the ``spatial/`` folder itself.
    counts_file
        Count matrix relative to ``path``: a 10x ``.h5`` file or an ``mtx`` folder. When it is missing
        the AnnData has no genes (``n_vars == 0``) and a warning says so.
    library_id
        Identifier of the sample; by default from the count file, else ``metrics_summary.csv``'s
        ``Sample ID``, else the folder name.
    fullres_image_file
        The full-resolution image used for Space Ranger (TIFF/OME-TIFF/JPEG), absolute or relative
        to ``path``. It is opened lazily later (tile-wise through tifffile + zarr), never loaded
        whole; its path is stored in ``uns["spatial"][library_id]["metadata"]["source_image_path"]``
        as squidpy does.
    load_images
        Load ``tissue_hires_image.png`` / ``tissue_lowres_image.png`` when present.
    in_tissue_only
        Without a count matrix, keep only spots under tissue (what the filtered matrix holds).

    Returns
    -------
    AnnData with ``obsm["spatial"]`` (full-resolution ``x, y`` pixels), ``obs`` columns ``in_tissue``,
    ``array_row``, ``array_col``, and ``uns["spatial"][library_id]`` with ``images``,
    ``scalefactors`` and ``metadata``.

    """
    import anndata as ad

    root, spatial = _spatial_dir(Path(path))
    positions = _read_positions(spatial)
    adata, library_id = _read_counts(root, counts_file, library_id)
    if adata is None:
        logger.warning(
            "No count matrix %r in %s: reading positions and images only (image analysis works; expression "
            "analysis needs counts).",
            counts_file,
            root,
        )
        pos = positions[positions["in_tissue"] == 1] if in_tissue_only else positions
        adata = ad.AnnData(obs=pd.DataFrame(index=pos.index.copy()))
    else:
        missing = adata.obs_names.difference(positions.index)
        if len(missing):
            raise ValueError(
                f"{len(missing)} barcodes of the count matrix (e.g. {missing[0]!r}) are not in the tissue positions "
                "file: counts and spatial/ come from different runs."
            )
        adata.var_names_make_unique()
    library_id = library_id or _default_library_id(root)

    pos = positions.loc[adata.obs_names]
    for c in ("in_tissue", "array_row", "array_col"):
        adata.obs[c] = pos[c].to_numpy()
    adata.obsm["spatial"] = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)

    scalefactors = _read_scalefactors(spatial / "scalefactors_json.json")
    images: dict[str, np.ndarray] = {}
    if load_images:
        from PIL import Image

        for res in ("hires", "lowres"):
            f = spatial / f"tissue_{res}_image.png"
            if f.exists():
                with Image.open(f) as im:
                    images[res] = np.asarray(im.convert("RGB") if im.mode not in ("RGB", "RGBA", "L") else im)
    metadata: dict[str, Any] = {}
    if fullres_image_file is not None:
        from kgl.io._image import SlideImage

        f = Path(fullres_image_file)
        f = f if f.is_absolute() else (root / f if (root / f).exists() else f)
        if not f.is_file():
            where = [f] if f.is_absolute() else [root / f, Path.cwd() / f]
            raise FileNotFoundError(
                f"fullres_image_file {str(fullres_image_file)!r} does not exist (looked at "
                f"{', '.join(repr(str(w)) for w in where)}); pass the full-resolution image Space Ranger was run with."
            )
        img = SlideImage.open(f)  # validates readability now, stays lazy
        metadata["source_image_path"] = str(f.resolve())
        # µm/px from the lattice of all spots (the file lists the whole capture area), cross-checked with the image
        spot_mpp(
            positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64),
            scalefactors,
            array_row=positions["array_row"].to_numpy(),
            array_col=positions["array_col"].to_numpy(),
            image_mpp=img.mpp,
            image_name=f.name,
            where=f"{root.name}/spatial",
        )
    adata.uns["spatial"] = {library_id: {"images": images, "scalefactors": scalefactors, "metadata": metadata}}
    if not images and fullres_image_file is None:
        logger.warning("No tissue image found for library %r: patches need an image (fullres_image_file=).", library_id)
    return adata
