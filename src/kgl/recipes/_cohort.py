"""Many samples: read, classify and write each, serially or on a ``dask.distributed`` cluster.

One sample is one task (:func:`classify_file`): it reads its input, runs
:func:`kgl.tl.classify_spots`, and writes ``<out_dir>/<input stem>.h5ad`` (``.zarr`` for a SpatialData
input) atomically, so an interrupted or failing sample leaves no partial file. A failure is
recorded in its row of the returned table and the other samples go on.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kgl._logging import logger, no_bar

__all__ = ["classify_file", "classify_files", "read_sample", "write_sample"]

#: Columns of :func:`classify_files`' table, one row per input.
COHORT_COLUMNS = ("input", "output", "status", "n_spots", "n_glomerulus", "seconds", "worker", "error")


def read_sample(path: str | os.PathLike, fullres_image: str | os.PathLike | None = None) -> Any:
    """A sample by path: a Space Ranger folder (:func:`kgl.io.read_visium`), an ``.h5ad`` or a SpatialData ``.zarr``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input {str(path)!r} does not exist.")
    if path.suffix == ".h5ad":
        import anndata as ad

        return ad.read_h5ad(path)
    if path.suffix == ".zarr":
        import spatialdata

        return spatialdata.read_zarr(path)
    if path.is_dir():
        from kgl.io import read_visium

        return read_visium(path, fullres_image_file=fullres_image)
    raise ValueError(f"Cannot read {str(path)!r}: expected a Space Ranger folder, an .h5ad or a SpatialData .zarr.")


def output_path(path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """``out_dir / <stem>.h5ad`` for an AnnData input, ``.zarr`` for a SpatialData one (by the input's suffix)."""
    path = Path(path)
    stem = path.stem if path.suffix else path.name
    if stem == "outs":  # Space Ranger's SAMPLE/outs: the sample is the folder above
        stem = path.resolve().parent.name
    return Path(out_dir) / f"{stem}{'.zarr' if path.suffix == '.zarr' else '.h5ad'}"


def write_sample(data: Any, out: str | os.PathLike) -> Path:
    """Write an AnnData (``.h5ad``) or a SpatialData (``.zarr``) atomically: a temporary sibling, renamed when done."""
    import shutil

    from kgl._files import atomic_path, ensure_dir
    from kgl._spatialdata import is_spatialdata

    out = Path(out)
    want = ".zarr" if is_spatialdata(data) else ".h5ad"
    if out.suffix != want:
        raise ValueError(f"{'SpatialData' if want == '.zarr' else 'AnnData'} output must end in {want}: {str(out)!r}.")
    if want == ".h5ad":
        with atomic_path(out) as tmp:
            data.write_h5ad(tmp)
        return out
    ensure_dir(out.parent, what=f"output {out.name!r}")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.zarr")
    try:
        data.write(tmp, overwrite=True, update_sdata_path=False)  # the object does not point at the temporary
        if out.exists():  # a folder cannot be renamed over another: move the old one aside first
            old = out.with_name(f".{out.name}.{os.getpid()}.old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)  # the new output is in place: a leftover is not a failure
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def classify_file(
    path: str | os.PathLike, out: str | os.PathLike, *, fullres_image: str | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Read one sample, :func:`kgl.tl.classify_spots` it (``kwargs``) and write it to ``out``; its row of the table.

    Never raises for the sample's own errors: they go into the row (``status="failed"``, ``error``).
    On a ``dask.distributed`` worker, torch uses the worker's threads, not every core of the machine.
    """
    import kgl
    from kgl._spatialdata import annotated_table

    row: dict[str, Any] = dict.fromkeys(COHORT_COLUMNS)
    row.update(input=str(path), output=str(out), worker=_worker_name())
    t0 = time.perf_counter()
    try:
        _limit_threads()
        data = read_sample(path, fullres_image)
        kgl.tl.classify_spots(data, **kwargs)
        key = kwargs.get("key_added", "glomerulus")
        table = annotated_table(data, kwargs.get("table_name"))
        calls = table.obs[key]
        n_pos = int((calls == calls.cat.categories[-1]).sum())  # the positive class is the last category
        write_sample(data, out)  # last: a sample counted as written is written
        row.update(status="ok", n_spots=int(table.n_obs), n_glomerulus=n_pos)
    except Exception as e:  # one sample's failure must not stop the cohort: it is reported in its row
        row.update(status="failed", error=f"{type(e).__name__}: {e}")
        logger.debug("sample %s failed:\n%s", path, traceback.format_exc())
    row["seconds"] = time.perf_counter() - t0
    return row


def classify_files(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    client: Any = None,
    fullres_images: Sequence[str | None] | None = None,
    show_progress: bool = True,
    **kwargs: Any,
) -> pd.DataFrame:
    """Classify every sample of ``inputs`` into ``out_dir`` (``<stem>.h5ad`` / ``<stem>.zarr``), one task per sample.

    Parameters
    ----------
    inputs
        Space Ranger folders, ``.h5ad`` files or SpatialData ``.zarr`` stores (stems must differ).
    out_dir
        Output folder (created); an output is never an input.
    client
        A :class:`dask.distributed.Client`: each sample runs on one of its workers (a
        ``LocalCluster`` on this machine, or any cluster it is connected to, whose workers see the
        same paths). ``None``: one after another in this process.
    fullres_images
        A full-resolution image per input (Space Ranger folders only; ``None`` entries for none).
    show_progress
        One progress bar over the samples (per-sample bars are off).
    **kwargs
        Passed to :func:`kgl.tl.classify_spots` (``model``, ``key_added``, ``device``, ...).

    Returns
    -------
    One row per input, in input order: ``input``, ``output``, ``status`` (``"ok"`` / ``"failed"``),
    ``n_spots``, ``n_glomerulus``, ``seconds``, ``worker`` and ``error``. Failed samples leave no output.

    """
    from tqdm.auto import tqdm

    paths = [Path(p).resolve() for p in inputs]  # workers elsewhere (--scheduler) get absolute paths
    if not paths:
        raise ValueError("No inputs to classify.")
    fullres = list(fullres_images) if fullres_images is not None else [None] * len(paths)
    fullres = [None if f is None else str(Path(f).resolve()) for f in fullres]
    if len(fullres) != len(paths):
        raise ValueError(f"fullres_images has {len(fullres)} entries for {len(paths)} inputs.")
    out_dir = Path(out_dir).resolve()
    outs = [output_path(p, out_dir) for p in paths]
    dup = pd.Index([str(o) for o in outs])
    if dup.has_duplicates:
        raise ValueError(f"Two inputs would write the same output {dup[dup.duplicated()][0]!r}: rename one.")
    clash = [str(p) for p, o in zip(paths, outs, strict=True) if p.resolve() == o.resolve()]
    if clash:
        raise ValueError(f"Input {clash[0]!r} is inside out_dir under its own output name: choose another out_dir.")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    kwargs = {**kwargs, "show_progress": False}
    bar = tqdm(total=len(paths), desc="samples", unit="sample", disable=no_bar(show_progress))
    rows: list[dict[str, Any]] = [{}] * len(paths)
    if client is None:
        for i, (p, o, f) in enumerate(zip(paths, outs, fullres, strict=True)):
            rows[i] = classify_file(p, o, fullres_image=f, **kwargs)
            bar.update()
    else:
        from distributed import as_completed

        futures = {client.submit(classify_file, str(p), str(o), fullres_image=f, pure=False, **kwargs): i
                   for i, (p, o, f) in enumerate(zip(paths, outs, fullres, strict=True))}  # fmt: skip
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                rows[i] = fut.result()
            except Exception as e:  # the worker itself died: the sample failed, the others go on
                rows[i] = {**dict.fromkeys(COHORT_COLUMNS), "input": str(paths[i]), "output": str(outs[i]),
                           "status": "failed", "error": f"{type(e).__name__}: {e}"}  # fmt: skip
            bar.update()
    bar.close()
    table = pd.DataFrame(rows, columns=list(COHORT_COLUMNS))
    for _, r in table[table["status"] == "failed"].iterrows():
        logger.warning("sample %s failed: %s", r["input"], r["error"])
    return table


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return "local"


def _limit_threads() -> None:
    """On a distributed worker, torch's intra-op threads = the worker's threads (else N workers × all cores)."""
    try:
        from distributed import get_worker

        n = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        return
    import torch

    torch.set_num_threads(max(1, int(n)))
