"""Visium HD: the glomerulus map over every 8-µm bin of a capture area, against per-bin patches, in one run.

    python benchmarks/hd.py            # 13x13 PAS tiles at 0.5 µm/px: a 6.65-mm capture area, ~690,000 8-µm bins
    python benchmarks/hd.py --quick    # 4x4 tiles: ~65,000 bins

The sample is :func:`kgl.datasets.pseudo_visium_hd` (Space Ranger HD files read by
``spatialdata_io.visium_hd``, stored as zarr; built once and cached), with 8- and 16-µm bins (the
2-µm table of a whole capture area, ~10 million squares, is left out of the files). Each variant
runs in its own process (peak RSS = its VmHWM), after reading the zarr store:

- ``map``: ``classify_spots(sdata, model, table_name="square_008um")``: the map over the bins' box,
  then each bin's exact square mean; the fraction MAE against the true coverage on the bins that
  touch a glomerulus;
- ``patches``: kgl-glom-v2's architecture (112 px, random init: the cost does not depend on the
  weights) on a 110-µm patch around each of 1 % of the bins (kgl refuses a patch classifier on bins;
  this is what a per-bin patch design would cost), extrapolated to all bins.

The map model defaults to an untrained ``build_segmenter()`` of kgl-glom-map-v1's recipe (the cost
does not depend on the weights; the MAE then means nothing): ``--map-model PATH`` times a trained one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from run import BENCH_DIR, pas_tile_images, peak_rss_mb


def _build(n_side: int) -> Path:
    """The pseudo HD sample of ``n_side``² PAS tiles (rotated repeats), cached under BENCH_DIR."""
    import kgl

    store = BENCH_DIR / f"hd{n_side}" / "bench_hd.zarr"
    if store.exists():
        return store
    images, masks = pas_tile_images(n_side**2)
    t0 = time.perf_counter()
    kgl.datasets.pseudo_visium_hd(images, masks, mpp=0.5, path=store.parent, dataset_id="bench_hd", bin_sizes=(8, 16),
                                  layout=(n_side, n_side))  # fmt: skip
    print(f"built the pseudo HD sample in {time.perf_counter() - t0:.0f} s")
    return store


def _child(store: str, variant: str, model_path: str) -> None:
    import logging

    import spatialdata

    import kgl

    logging.getLogger("kgl").setLevel(logging.WARNING)
    sdata = spatialdata.read_zarr(store)
    table = sdata.tables["square_008um"]
    if variant == "map":
        model = kgl.models.load_checkpoint(model_path) if model_path else kgl.models.build_segmenter(weights=None)
        t0 = time.perf_counter()
        kgl.tl.classify_spots(sdata, model, table_name="square_008um", show_progress=False)
        dt = time.perf_counter() - t0
        cov, frac = table.obs["glomerulus_coverage"].to_numpy(), table.obs["glomerulus_fraction"].to_numpy()
        touch = cov > 0
        out = {"s": dt, "n": int(table.n_obs), "mae": float(np.abs(frac[touch] - cov[touch]).mean()),
               "n_touch": int(touch.sum())}  # fmt: skip
    else:
        out = _per_bin_patches(sdata, table)
    out["rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


def _per_bin_patches(sdata: object, table: object) -> dict:
    """kgl-glom-v2's architecture on 110-µm patches around 1 % of the bins (what classify_spots runs per spot)."""
    from kgl._spatialdata import spatialdata_view
    from kgl.im import spot_sets
    from kgl.models import PATCH_MODEL, REGISTRY, build_model
    from kgl.tl._classify import _Run
    from kgl.tl._device import autocast_dtype, resolve_device

    view, _ = spatialdata_view(sdata, table_name="square_008um")
    (spots,) = spot_sets(view)
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(len(spots.index), size=max(1, len(spots.index) // 100), replace=False))
    spots.index, spots.centers = spots.index[keep], spots.centers[keep]
    prep = REGISTRY[PATCH_MODEL].preprocessing
    net = build_model("mobilenet_v2", weights=None, patch_um=prep.patch_um, input_size=prep.input_size)
    dev = resolve_device("auto")
    amp = autocast_dtype(dev, "auto")
    run = _Run(net, net.spec, patch_um=prep.patch_um, input_size=prep.input_size, batch_size=64, num_workers=0,
               device=dev, amp=amp, adapt_bn=False, stain_norm=None, show_progress=False)  # fmt: skip
    t0 = time.perf_counter()
    run.library(spots, None)
    dt = time.perf_counter() - t0
    return {"s": dt, "n_subset": len(keep), "n": int(table.n_obs), "s_all": dt * table.n_obs / len(keep)}


def main() -> None:
    """Build (once), then time each variant in its own process."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4x4 tiles")
    p.add_argument("--map-model", default=None, help="a trained map checkpoint (default: the recipe's architecture)")
    p.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._child:
        _child(*a._child)
        return
    store = _build(4 if a.quick else 13)
    res = {}
    for variant in ("map", "patches"):
        cmd = [sys.executable, __file__, "--_child", str(store), variant, a.map_model or ""]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        res[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    m, pt = res["map"], res["patches"]
    print(f"{'8-µm bins':40} {m['n']:,} ({store.parent.name})")
    print(f"{'map model':40} {a.map_model or 'kgl-glom-map-v1 architecture, random init'}")
    print(f"{'map: classify_spots on all bins':40} {m['s']:.1f} s, peak RSS {m['rss_mb']:.0f} MB")
    print(f"{'map: bin fraction MAE':40} {m['mae']:.3f} on the {m['n_touch']:,} bins touching a glomerulus")
    print(f"{'patches: 1 % of bins':40} {pt['s']:.1f} s for {pt['n_subset']:,} bins, peak RSS {pt['rss_mb']:.0f} MB")
    print(f"{'patches: all bins, extrapolated':40} {pt['s_all']:.0f} s")
    print(f"{'per-bin patches / map':40} {pt['s_all'] / m['s']:.0f}x")
    print(f"map_s={m['s']:.1f} rss_mb={m['rss_mb']:.0f} mae={m['mae']:.3f} patches_all_s={pt['s_all']:.0f}")


if __name__ == "__main__":
    main()
