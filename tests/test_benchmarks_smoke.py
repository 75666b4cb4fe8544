"""A tiny smoke run of benchmarks/run.py's measurements (benchmarks are not tests: no timing asserted)."""

import importlib.util
from pathlib import Path

import numpy as np

from _kgl_fixtures import make_visium, tiny_cnn
from kgl.io import write_tiff_pyramid


def _bench():
    spec = importlib.util.spec_from_file_location("kgl_bench", Path(__file__).parents[1] / "benchmarks" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_functions_run(tmp_path):
    bench = _bench()
    adata = make_visium()
    img = adata.uns["spatial"]["lib"]["images"].pop("hires")
    write_tiff_pyramid(tmp_path / "full.tif", img, mpp=0.5, tile=128, min_size=128)
    adata.uns["spatial"]["lib"]["metadata"]["source_image_path"] = str(tmp_path / "full.tif")
    model = tiny_cnn()
    assert bench.matmul_gflops("fp32", n=64, reps=1) > 0
    assert bench.model_gflops(model, 32) > 0
    assert bench.naive_spots_per_s(adata, model, 4) > 0
    stages = bench.timed_stages(adata, model, n_batches=1, batch_size=8)
    assert set(stages) == {"read", "crop/resample", "transfer/normalise", "forward"}
    assert all(np.isfinite(v) and v >= 0 for v in stages.values())
    assert bench.subset_spots_per_s(adata, model, 8) > 0
