"""Many samples: one task each, serially or on a dask.distributed cluster; a failing sample is reported, not fatal."""

import anndata as ad
import numpy as np
import pytest

import kgl
from _kgl_fixtures import make_visium
from kgl._cli import main


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two small samples, one broken file, and a map checkpoint (a real smp U-Net at random init)."""
    from kgl.models import build_segmenter, save_checkpoint

    d = tmp_path_factory.mktemp("cohort")
    paths = []
    for i in range(2):
        make_visium(width=700, height=600, seed=i, library_id=f"lib{i}").write_h5ad(d / f"s{i}.h5ad")
        paths.append(d / f"s{i}.h5ad")
    (d / "broken.h5ad").write_bytes(b"not an h5ad file")
    paths.insert(1, d / "broken.h5ad")
    net = build_segmenter("Unet", "resnet18", weights=None, mpp=2.0, input_size=64, head_trained=True)
    return paths, save_checkpoint(net, d / "map.pt")


def test_a_failing_sample_leaves_the_others_written(cohort, tmp_path):
    paths, ckpt = cohort
    table = kgl.recipes.classify_files(paths, tmp_path / "out", model=str(ckpt), show_progress=False,
                                       precision="fp32")  # fmt: skip
    assert table["status"].tolist() == ["ok", "failed", "ok"]
    assert "broken.h5ad" in table.loc[1, "input"] and table.loc[1, "error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s0.h5ad", "s1.h5ad"]  # no partial file
    res = ad.read_h5ad(tmp_path / "out" / "s0.h5ad")
    assert res.obs["glomerulus_fraction"].between(0, 1).all() and table.loc[0, "n_spots"] == res.n_obs


def test_a_local_cluster_writes_what_the_serial_loop_writes(cohort, tmp_path):
    distributed = pytest.importorskip("distributed")
    paths, ckpt = cohort
    good = [paths[0], paths[2]]
    kw = dict(model=str(ckpt), show_progress=False, precision="fp32")
    serial = kgl.recipes.classify_files(good, tmp_path / "serial", **kw)
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as c,
        distributed.Client(c) as client,
    ):
        par = kgl.recipes.classify_files(good, tmp_path / "dask", client=client, **kw)
    assert (serial["status"] == "ok").all() and (par["status"] == "ok").all()
    assert "local" not in set(par["worker"]) and set(serial["worker"]) == {"local"}  # it ran on the workers
    for p in good:
        a, b = (ad.read_h5ad(tmp_path / d / p.name) for d in ("serial", "dask"))
        # a worker runs torch on its one thread, this process on all cores: float sums in another order
        np.testing.assert_allclose(b.obs["glomerulus_fraction"], a.obs["glomerulus_fraction"], atol=1e-5)
        assert (a.obs["glomerulus"] == b.obs["glomerulus"]).mean() > 0.99


def test_cli_many_inputs_exit_code_names_the_failure(cohort, tmp_path, capsys):
    paths, ckpt = cohort
    rc = main(["classify", *map(str, paths), "--out-dir", str(tmp_path / "o"), "--model", str(ckpt), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 1 and "2 of 3 samples written" in out and "failed: " in out and "broken.h5ad" in out.splitlines()[-1]
    assert (tmp_path / "o" / "s0.h5ad").is_file() and not (tmp_path / "o" / "broken.h5ad").exists()
    with pytest.raises(SystemExit, match="--out for one input"):
        main(["classify", *map(str, paths), "--out", str(tmp_path / "x.h5ad")])


def test_cli_runs_samples_on_a_running_scheduler(cohort, tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    paths, ckpt = cohort
    good = [str(paths[0]), str(paths[2])]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as c:
        rc = main(["classify", *good, "--out-dir", str(tmp_path / "o"), "--model", str(ckpt), "--quiet",
                   "--scheduler", c.scheduler_address])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "2 of 2 samples written" in out and ", local)" not in out  # ran on the cluster's worker
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["s0.h5ad", "s1.h5ad"]


def test_space_ranger_outs_folders_are_named_by_their_sample(tmp_path):
    from kgl.recipes._cohort import output_path

    assert output_path(tmp_path / "S1" / "outs", tmp_path / "r").name == "S1.h5ad"
    assert output_path(tmp_path / "a.zarr", tmp_path / "r").name == "a.zarr"
