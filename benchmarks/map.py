"""The glomerulus map on a whole capture area against the patch classifier, measured in one run.

    python benchmarks/map.py            # 13x13 PAS tiles at 0.25 µm/px: ~5,000 spots, 26.6k x 26.6k px
    python benchmarks/map.py --quick    # 6x6 tiles at 0.5 µm/px: ~1,000 spots

Each variant runs in its own process (peak RSS is that process's VmHWM) on the same h5ad and the
same lazy full-resolution TIFF, one after the other, after a warm-up on 32 spots:

- ``map``: ``classify_spots`` with a map model (map over the spots' box + exact disk fractions + pooled
  features), then ``glomeruli`` (polygons) on the stored map;
- ``v2``: ``classify_spots`` with the patch classifier kgl-glom-v2 (its architecture and input size at
  random init when it is not in the model cache: the cost does not depend on the weights).

The map model defaults to an untrained ``build_segmenter()`` of the kgl-glom-map-v1 recipe, for the
same reason; ``--map-model PATH`` times a trained one. Ratios, not thresholds: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from run import BENCH_DIR, _capture_area, _image_px, peak_rss_mb


def _child(h5ad: str, variant: str, model_path: str) -> None:
    import logging

    import anndata as ad

    import kgl

    logging.getLogger("kgl").setLevel(logging.WARNING)
    adata = ad.read_h5ad(h5ad)
    model = kgl.models.load_checkpoint(model_path)
    kgl.tl.classify_spots(adata[:32].copy(), model, show_progress=False)  # warm-up: imports, kernels
    t = time.perf_counter()
    kgl.tl.classify_spots(adata, model, show_progress=False)
    classify_s = time.perf_counter() - t
    out = {"classify_s": classify_s, "n_spots": adata.n_obs}
    if variant == "map":
        t = time.perf_counter()
        kgl.tl.glomerulus_map(adata, model, show_progress=False)
        out["map_s"] = time.perf_counter() - t
        t = time.perf_counter()
        gdf = kgl.tl.glomeruli(adata)
        out["polygons_s"] = time.perf_counter() - t
        out["n_glomeruli"] = len(gdf)
        out["map_mpp"] = adata.uns["glomerulus"]["params"]["libraries"][next(iter(adata.uns["spatial"]))]["map_mpp"]
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


def _models(map_model: str | None) -> dict[str, Path]:
    import kgl

    paths = {}
    if map_model is None:
        rec = kgl.models.REGISTRY["kgl-glom-map-v1"].recipe
        m = kgl.models.build_segmenter(rec["arch"], rec["backbone"], weights=None, mpp=rec["mpp"],
                                       input_size=rec["input_size"], head_trained=True)  # fmt: skip
        paths["map"] = kgl.models.save_checkpoint(m, BENCH_DIR / "map-untrained.pt")
    else:
        paths["map"] = Path(map_model)
    try:
        paths["v2"] = kgl.models.fetch_model("kgl-glom-v2")
    except FileNotFoundError:
        rec = kgl.models.REGISTRY["kgl-glom-v2"].recipe
        m = kgl.models.build_model(rec["backbone"], weights=None, patch_um=rec["patch_um"],
                                   input_size=rec["input_size"], head_trained=True)  # fmt: skip
        paths["v2"] = kgl.models.save_checkpoint(m, BENCH_DIR / "v2-architecture-untrained.pt")
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="~1,000 spots")
    p.add_argument("--map-model", default=None, help="a trained map checkpoint (default: the recipe's architecture)")
    p.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        _child(*args._child)
        return
    import torch

    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    side, mpp = (6, 0.5) if args.quick else (13, 0.25)
    t = time.perf_counter()
    adata = _capture_area(side, mpp)
    build_s = time.perf_counter() - t
    h5 = BENCH_DIR / f"map-bench{side}-{mpp}.h5ad"
    adata.write_h5ad(h5)
    models = _models(args.map_model)
    res = {}
    for variant in ("map", "v2"):
        out = subprocess.run([sys.executable, __file__, "--_child", str(h5), variant, str(models[variant])],
                             capture_output=True, text=True, check=True)  # fmt: skip
        res[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    m, v = res["map"], res["v2"]
    machine = f"{os.cpu_count()} CPU threads, torch {torch.__version__}, {torch.get_num_threads()} intra-op"
    area = f"{adata.n_obs} spots, {side}x{side} PAS tiles at {mpp} µm/px ({_image_px(adata)}), built in {build_s:.0f} s"
    rows = [
        ("machine", machine),
        ("capture area", area),
        ("map model", str(models["map"])),
        ("map: classify_spots (map + fractions)", f"{m['classify_s']:.1f} s, peak RSS {m['peak_rss_mb']:.0f} MB"),
        ("map: glomerulus_map (stored image)", f"{m['map_s']:.1f} s at {m['map_mpp']:.3g} µm/px"),
        ("map: glomeruli (polygons, spots)", f"{m['polygons_s']:.1f} s ({m['n_glomeruli']} polygons)"),
        ("v2: classify_spots (patches)", f"{v['classify_s']:.1f} s, peak RSS {v['peak_rss_mb']:.0f} MB"),
        ("map / v2 wall time", f"{m['classify_s'] / v['classify_s']:.2f}x"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, val in rows:
        print(f"{k:<{width}}  {val}")
    print(f"map_s={m['classify_s']:.1f} v2_s={v['classify_s']:.1f} map_rss_mb={m['peak_rss_mb']:.0f}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
