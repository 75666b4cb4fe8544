"""kgl benchmarks: classify_spots end to end vs. a naive baseline, the CPU roofline, memory, training.

    python benchmarks/run.py            # full table (5,000-spot capture area), < 10 min here
    python benchmarks/run.py --quick    # ~1,000 spots, < 2 min; last line: speedup/roofline/spots_per_s

Everything is measured in this one run, on this machine: ratios, never absolute thresholds.
The capture area is a pseudo-Visium (real Visium spot geometry) tiled from the shared PAS tiles,
written as a tiled pyramidal TIFF on disk (``KGL_DATA_DIR`` must point at the shared data).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kgl.models import PATCH_MODEL

BENCH_DIR = Path(tempfile.gettempdir()) / "kgl-bench"


def peak_rss_mb() -> float:
    """Peak RSS of this process in MB: VmHWM, not ru_maxrss (Linux carries that over exec from the parent)."""
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def pas_tile_images(n: int, shift: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` PAS tiles and their glomerulus masks, repeats rotated so that a mosaic is not periodic."""
    from PIL import Image

    from kgl._settings import settings

    root = settings.find_data("glomeruli-pas-tiles")
    ids = sorted(p.stem for p in (root / "images").glob("*.png"))
    images, masks = [], []
    for k in range(n):
        i = ids[(k + shift) % len(ids)]
        r = ((k + shift) // len(ids) + shift) % 4
        img = np.asarray(Image.open(root / "images" / f"{i}.png").convert("RGB"))
        msk = np.asarray(Image.open(root / "masks" / f"{i}.png").convert("L")) > 0
        images.append(np.ascontiguousarray(np.rot90(img, r)))
        masks.append(np.ascontiguousarray(np.rot90(msk, r)))
    return images, masks


def _capture_area(n_tiles_side: int, target_mpp: float = 0.5) -> object:
    """A pseudo-Visium of ``n_tiles_side``² PAS tiles (flipped/rotated copies), full-res TIFF on disk."""
    import kgl

    images, masks = pas_tile_images(n_tiles_side**2)
    return kgl.datasets.pseudo_visium(
        images,
        masks,
        mpp=0.5,
        target_mpp=target_mpp,
        library_id=f"bench{n_tiles_side}",
        layout=(n_tiles_side, n_tiles_side),
        fullres_path=BENCH_DIR / f"bench{n_tiles_side}-{target_mpp}.tif",
        compression="jpeg",
    )


def _image_px(adata: object) -> str:
    from kgl.im import spot_image

    img, _ = spot_image(adata)
    h, w = img.shape
    return f"{w} x {h} px, {len(img.levels)} levels"


def matmul_gflops(dtype: str, n: int = 2048, reps: int = 6) -> float:
    """Measured dense matmul throughput of this CPU (all intra-op threads) in GFLOP/s."""
    import torch

    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    torch.matmul(a, b)
    t = time.perf_counter()
    for _ in range(reps):
        torch.matmul(a, b)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def model_gflops(model: object, size: int) -> float:
    """FLOPs of one forward pass (torch's FlopCounterMode; a multiply-add counts 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        model(torch.randn(1, 3, size, size))
    return fc.get_total_flops() / 1e9


def naive_spots_per_s(adata: object, model: object, n: int) -> float:
    """The squidpy ``generate_spot_crops`` way: whole image in memory, one spot at a time, fp32.

    The whole-image load is timed once and the per-spot time on ``n`` spots; the result is the
    rate for the whole capture area (``n_obs`` spots), so the load is amortised as it would be.
    """
    import cv2
    import tifffile
    import torch

    from kgl.im import spot_sets

    spots = spot_sets(adata)[0]
    cfg = model.config
    t0 = time.perf_counter()
    img = tifffile.imread(spots.image.path)  # the whole full-res image
    load_s = time.perf_counter() - t0
    side = cfg["patch_um"] / spots.mpp
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    model = model.eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x, y in spots.centers[:n]:
            x0, y0 = round(x - side / 2), round(y - side / 2)
            crop = img[max(y0, 0) : y0 + round(side), max(x0, 0) : x0 + round(side)]
            crop = cv2.resize(crop, (cfg["input_size"], cfg["input_size"]), interpolation=cv2.INTER_AREA)
            t = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255.0
            model((t - mean) / std)
    per_spot = (time.perf_counter() - t0) / min(n, len(spots.centers))
    total = len(spots.centers)
    return total / (load_s + total * per_spot)


def timed_stages(adata: object, model: object, n_batches: int = 4, batch_size: int = 64) -> dict[str, float]:
    """Seconds per spot in each stage of kgl's path, measured separately on the same spots."""
    import torch

    import kgl
    from kgl.im import SpotPatchDataset, spot_sets
    from kgl.tl._device import autocast_dtype, normalise_uint8, normaliser

    spots = spot_sets(adata)[0]
    cfg = model.config
    ds = SpotPatchDataset(spots, patch_um=cfg["patch_um"], size=cfg["input_size"])
    n = min(len(ds), n_batches * batch_size)
    lv = spots.image.levels[ds.level]
    t = time.perf_counter()
    for i in range(n):  # read only (decode the tiles the patch touches)
        c = spots.centers[i]
        half = ds.size_px / lv.downsample / 2
        u, v = c[0] / lv.downsample, c[1] / lv.downsample
        spots.image._read_block(ds.level, max(0, int(v - half)), int(v + half), max(0, int(u - half)), int(u + half))
    read = (time.perf_counter() - t) / n
    t = time.perf_counter()
    patches = np.stack([ds[i][0] for i in range(n)])
    read_resample = (time.perf_counter() - t) / n
    x = torch.from_numpy(patches)
    amp = autocast_dtype(torch.device("cpu"))
    mean, std = normaliser(model.spec.preprocessing, torch.device("cpu"))
    model = kgl.models.fold_batchnorm(model).to(memory_format=torch.channels_last)  # as classify_spots
    t = time.perf_counter()
    xs = [normalise_uint8(x[i : i + batch_size], mean, std) for i in range(0, n, batch_size)]
    transfer = (time.perf_counter() - t) / n
    with torch.inference_mode(), torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
        model(xs[0])
        t = time.perf_counter()
        for xb in xs:
            model(xb)
        forward = (time.perf_counter() - t) / n
    return {
        "read": read,
        "crop/resample": max(0.0, read_resample - read),
        "transfer/normalise": transfer,
        "forward": forward,
    }


def classify_run(adata: object, model: object) -> tuple[float, float]:
    """spots/s of kgl.tl.classify_spots end to end (image opened lazily from the TIFF), and write time."""
    import kgl

    t = time.perf_counter()
    kgl.tl.classify_spots(adata, model, show_progress=False)
    return adata.n_obs / (time.perf_counter() - t), 0.0


def train_patches_per_s(n_batches: int = 6) -> tuple[float, float]:
    """Training throughput of the default recipe (fine-tuning epoch, its real training patches): patches/s, s/epoch."""
    import kgl
    from kgl.recipes._train import _split_patches, _with_he  # the recipe's own patch table, as kgl train builds it

    rec = kgl.recipes.DEFAULT_RECIPE
    patches = _split_patches(kgl.datasets.multistain_slides(), patch_um=rec["patch_um"], seed=0)
    if rec.get("he_repeat", 0):  # the recipe's H&E patches in the training split, repeated
        try:
            he_slides = kgl.datasets.he_biopsy_slides()
        except FileNotFoundError as e:  # time the multistain part only, and say so
            print(f"training throughput without the H&E patches: {str(e).splitlines()[0]}", file=sys.stderr)
        else:
            patches, _ = _with_he(patches, he_slides, patch_um=rec["patch_um"], seed=0, repeat=int(rec["he_repeat"]))
    n_train = int((patches["split"] == "train").sum())
    res = kgl.tl.train(
        patches[patches["split"] != "test"],
        backbone=rec["backbone"],
        weights=rec["weights"],
        input_size=rec["input_size"],
        batch_size=rec["batch_size"],
        epochs=1,
        freeze_epochs=0,
        max_batches_per_epoch=n_batches,
        show_progress=False,
        augment=rec["augment"],
    )
    pps = float(res.history["patches_per_s"].iloc[0])
    return pps, n_train / pps


def subset_spots_per_s(adata: object, model: object, n: int) -> float:
    """spots/s of classify_spots on the first ``n`` spots (for slow models)."""
    import kgl

    sub = adata[:n].copy()
    kgl.tl.classify_spots(sub[:32].copy(), model, show_progress=False)  # warm-up
    t = time.perf_counter()
    kgl.tl.classify_spots(sub, model, show_progress=False)
    return n / (time.perf_counter() - t)


def _rss_child(h5ad: str, model: str) -> None:
    """Subprocess: classify from the lazy TIFF and report peak RSS (the parent's arrays don't count)."""
    import anndata as ad

    import kgl

    adata = ad.read_h5ad(h5ad)
    kgl.tl.classify_spots(adata, model, show_progress=False)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="~1,000 spots, < 2 minutes")
    p.add_argument(
        "--model",
        default=PATCH_MODEL,
        help="patch classifier to time (default: kgl-glom-v2; the map: benchmarks/map.py)",
    )
    p.add_argument("--naive-spots", type=int, default=64, help="spots timed for the naive baseline")
    p.add_argument("--_rss-child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._rss_child:
        _rss_child(*args._rss_child)
        return
    import logging

    import torch

    import kgl

    logging.getLogger("kgl").setLevel(logging.WARNING)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    # 6x6 tiles of 512 µm at 0.5 µm/px: ~1,000 spots; 13x13 at 0.25 µm/px: ~5,000 spots on a
    # 26.6k x 26.6k px full-res image (the size of a Visium H&E scan)
    side, mpp = (6, 0.5) if args.quick else (13, 0.25)
    t = time.perf_counter()
    adata = _capture_area(side, mpp)
    build_s = time.perf_counter() - t
    h5 = BENCH_DIR / f"bench{side}-{mpp}.h5ad"
    adata.write_h5ad(h5)
    model = kgl.models.resolve_model(args.model)
    cfg = model.config
    rows: list[tuple[str, str]] = [
        (
            "machine",
            f"{os.cpu_count()} CPU threads, torch {torch.__version__}, {torch.get_num_threads()} intra-op threads",
        ),
        (
            "capture area",
            f"{adata.n_obs} spots, {side}x{side} PAS tiles at {mpp} µm/px, full-res TIFF (jpeg, tiled pyramid, "
            f"{_image_px(adata)}), built in {build_s:.0f} s",
        ),
        (
            "model",
            f"{cfg.get('name', cfg['backbone'])} ({cfg['backbone']}), {cfg['patch_um']:g} µm -> {cfg['input_size']} px",
        ),
    ]
    run = adata.copy()
    ours, _ = classify_run(run, model)
    # the CPU stages below run in what classify_spots chooses on this CPU (on a GPU machine the
    # end-to-end run above uses CUDA, but the roofline is the CPU's)
    from kgl.tl._device import autocast_dtype

    cpu_amp = autocast_dtype(torch.device("cpu"), "auto")
    precision = "bfloat16" if cpu_amp is not None else "fp32"
    naive = naive_spots_per_s(adata, kgl.models.resolve_model(args.model), args.naive_spots)
    gf = model_gflops(kgl.models.resolve_model(args.model), cfg["input_size"])
    # bf16 matmul is emulated (minutes, ~0 GFLOP/s) on CPUs without native bf16: measured only where it is used
    peak_fp32 = matmul_gflops("fp32")
    peak_bf16 = matmul_gflops("bf16") if precision == "bfloat16" else None
    stages = timed_stages(adata, kgl.models.resolve_model(args.model))
    model_only = 1.0 / stages["forward"]
    # the roofline of the precision the model ran in: bf16 on CPUs with native bf16, else fp32
    peak_name, peak = ("bf16", peak_bf16) if precision == "bfloat16" else ("fp32", peak_fp32)
    roof = gf * model_only / peak
    rows += [
        ("classify_spots (kgl)", f"{ours:.1f} spots/s -> 5,000 spots in {5000 / ours:.0f} s"),
        (
            "naive baseline",
            f"{naive:.1f} spots/s (whole image loaded into memory, then one spot at a time in fp32; "
            "rate for the whole area)",
        ),
        ("speedup vs naive", f"{ours / naive:.2f}x"),
        ("model FLOPs", f"{gf:.2f} GFLOP/patch"),
        (
            "matmul peak (measured)",
            (f"bf16 {peak_bf16:.0f} GFLOP/s, " if peak_bf16 else "bf16 not native here (not measured), ")
            + f"fp32 {peak_fp32:.0f} GFLOP/s",
        ),
        (
            "model part",
            f"{model_only:.1f} patches/s = {gf * model_only:.0f} GFLOP/s = {100 * roof:.0f}% of the {peak_name} peak "
            f"(classify_spots ran {precision})",
        ),
        ("time split (ms/spot)", ", ".join(f"{k} {1e3 * v:.1f}" for k, v in stages.items())),
    ]
    if not args.quick:
        for name in ("resnet50", "mobilenet_v2"):  # architectures at random init: speed only
            m = kgl.models.build_model(name, weights=None, input_size=cfg["input_size"])
            sps = subset_spots_per_s(adata, m, 320)
            g = model_gflops(m, cfg["input_size"])
            rows.append(
                (
                    f"classify_spots {name} (random init)",
                    f"{sps:.1f} spots/s, {g:.2f} GFLOP/patch = {100 * g * sps / peak:.0f}% of the {peak_name} peak "
                    "end to end",
                )
            )
    pps, s_epoch = train_patches_per_s()
    rows.append(("training (default recipe)", f"{pps:.1f} patches/s fine-tuning -> {s_epoch:.0f} s/epoch"))
    out = subprocess.run(
        [sys.executable, __file__, "--_rss-child", str(h5), args.model], capture_output=True, text=True, check=True
    )
    rss = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    rows.append(("peak RSS (classify, own process)", f"{rss:.0f} MB"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(f"speedup_vs_naive={ours / naive:.2f} roofline_fraction={roof:.2f} spots_per_s={ours:.1f}")


if __name__ == "__main__":
    main()
