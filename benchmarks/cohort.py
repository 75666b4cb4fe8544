"""A cohort of capture areas: the serial loop against a 2-worker dask.distributed LocalCluster, in one run.

    python benchmarks/cohort.py            # 8 pseudo-Visium capture areas of 6x6 PAS tiles (~1,000 spots each)
    python benchmarks/cohort.py --quick    # 4 areas of 3x3 tiles

Each sample is an ``.h5ad`` with its full-resolution TIFF (``kgl.datasets.pseudo_visium`` of
rotated PAS tiles, one seed each), built once and cached. ``kgl.recipes.classify_files`` runs
them (1) one after another in this process, (2) on ``LocalCluster(n_workers=2,
threads_per_worker=1)``, with the same map model; the outputs are compared spot by spot. On 2
cores the cluster can only reorganise the same CPU (torch already uses both cores in the serial
loop): the ratio says what the task layout costs or saves here; N machines would each run their
share of samples (samples are independent: no data moves between tasks but the paths).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from run import BENCH_DIR, pas_tile_images


def _samples(n: int, side: int) -> list[Path]:
    import kgl

    out = []
    for s in range(n):
        path = BENCH_DIR / f"cohort{side}" / f"area{s}.h5ad"
        out.append(path)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        images, masks = pas_tile_images(side * side, shift=5 * s)
        adata = kgl.datasets.pseudo_visium(images, masks, mpp=0.5, library_id=f"area{s}", layout=(side, side), seed=s,
                                           fullres_path=path.with_suffix(".tif"), compression="jpeg")  # fmt: skip
        for k in ("hires", "lowres"):  # the TIFF is the image: keep the h5ad small
            adata.uns["spatial"][f"area{s}"]["images"].pop(k, None)
        adata.write_h5ad(path)
    return out


def main() -> None:
    """Build (once), then the serial loop and the cluster on the same samples and model."""
    import anndata as ad
    from distributed import Client, LocalCluster

    import kgl

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 areas of 3x3 tiles")
    p.add_argument("--map-model", default=None, help="a trained map checkpoint (default: the recipe's architecture)")
    a = p.parse_args()
    n, side = (4, 3) if a.quick else (8, 6)
    paths = _samples(n, side)
    model = a.map_model
    if model is None:
        model = str(BENCH_DIR / "cohort-map.pt")
        kgl.models.save_checkpoint(kgl.models.build_segmenter(weights=None), model)
    work = Path(tempfile.mkdtemp(prefix="kgl-cohort-"))
    t0 = time.perf_counter()
    serial = kgl.recipes.classify_files(paths, work / "serial", model=model, show_progress=False)
    t_serial = time.perf_counter() - t0
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.run(lambda: None)  # workers up before the clock starts
        t0 = time.perf_counter()
        par = kgl.recipes.classify_files(paths, work / "dask", client=client, model=model, show_progress=False)
        t_dask = time.perf_counter() - t0
    assert (serial["status"] == "ok").all() and (par["status"] == "ok").all(), (serial, par)
    diff, agree = 0.0, 1.0
    for path in paths:
        x, y = (ad.read_h5ad(work / d / path.name) for d in ("serial", "dask"))
        diff = max(diff, float(np.abs(x.obs["glomerulus_fraction"] - y.obs["glomerulus_fraction"]).max()))
        agree = min(agree, float((x.obs["glomerulus"] == y.obs["glomerulus"]).mean()))
    spots = int(serial["n_spots"].sum())
    print(f"{'samples':44} {n} pseudo-Visium areas of {side}x{side} PAS tiles, {spots:,} spots, {os.cpu_count()} cores")
    print(f"{'serial loop (this process, torch on all cores)':44} {t_serial:.1f} s ({t_serial / n:.1f} s per sample)")
    print(f"{'LocalCluster(2 workers x 1 thread)':44} {t_dask:.1f} s (per-sample tasks: {par['seconds'].mean():.1f} s)")
    print(f"{'serial / cluster wall time':44} {t_serial / t_dask:.2f}x")
    print(f"{'outputs':44} fraction max |diff| {diff:.1e}, calls equal on {100 * agree:.2f} % of spots (worst sample)")
    print(f"serial_s={t_serial:.1f} dask_s={t_dask:.1f} ratio={t_serial / t_dask:.2f} max_diff={diff:.1e}")


if __name__ == "__main__":
    main()
