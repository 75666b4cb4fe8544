import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import kgl
from _kgl_fixtures import center_red_model, make_visium, plant_markers, tiny_cnn


def _snapshot(adata):
    return (
        list(adata.obs.columns),
        list(adata.obsm.keys()),
        sorted(adata.uns.keys()),
        adata.obs.copy(),
        {k: np.array(v, copy=True) for k, v in adata.obsm.items()},
    )


def _assert_unchanged(adata, snap):
    cols, obsm, uns, obs, arrays = snap
    assert list(adata.obs.columns) == cols
    assert list(adata.obsm.keys()) == obsm
    assert sorted(adata.uns.keys()) == uns
    pd.testing.assert_frame_equal(adata.obs, obs)
    for k, v in arrays.items():
        np.testing.assert_array_equal(adata.obsm[k], v)


PRECISIONS = ["fp32", "bf16"]  # both code paths, whatever the CPU supports natively
# bf16 keeps 8 bits of mantissa: a probability moves by up to ~1e-2 against fp32
TOL = {"fp32": 1e-6, "bf16": 2e-2}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_contract_and_markers(visium, precision):
    marked = [2, 11, 25]
    plant_markers(visium, marked, radius_um=12)
    assert kgl.tl.classify_spots(visium, center_red_model(), show_progress=False, precision=precision) is None
    obs = visium.obs
    assert isinstance(obs["glomerulus"].dtype, pd.CategoricalDtype)
    assert obs["glomerulus"].cat.categories.tolist() == ["other", "glomerulus"]
    assert np.flatnonzero(obs["glomerulus"] == "glomerulus").tolist() == marked
    p = obs["glomerulus_proba"].to_numpy()
    assert p.dtype == np.float32 and ((p >= 0) & (p <= 1)).all()
    assert p[marked].min() > 0.9 and np.delete(p, marked).max() < 0.1
    assert visium.obsm["X_glomerulus"].shape == (visium.n_obs, 3)
    assert obs["glomerulus_in_image"].between(0, 1).all()
    assert obs["glomerulus_uncertain"].dtype == bool and not obs["glomerulus_uncertain"].any()
    params = visium.uns["glomerulus"]["params"]
    for k in ("model", "model_sha256", "patch_um", "threshold", "device", "input_size", "libraries"):
        assert k in params
    assert params["patch_um"] == 60.0 and params["libraries"]["lib"]["mpp"] == pytest.approx(0.5, rel=0.01)
    assert params["precision"] == {"fp32": "fp32", "bf16": "bfloat16"}[precision]
    assert len(params["model_sha256"]) == 64
    assert visium.uns["glomerulus_colors"] == ["#d9d9d9", "#d62728"]


def test_copy_true_leaves_input_untouched(visium):
    snap = _snapshot(visium)
    out = kgl.tl.classify_spots(visium, tiny_cnn(), copy=True, show_progress=False, key_added="g")
    _assert_unchanged(visium, snap)
    assert "g" in out.obs and "X_g" in out.obsm and out.obsm["X_g"].shape == (visium.n_obs, 8)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"patch_um": -5}, ValueError, "patch_um"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"library_id": "nope"}, KeyError, "Available"),
        ({"device": "cuda:7"}, ValueError, "CUDA"),
        ({"threshold": 2.0}, ValueError, "threshold"),
        ({"uncertain": (0.9, 0.1)}, ValueError, "uncertain"),
        ({"img_key": "lowres"}, KeyError, "Available"),
    ],
)
def test_bad_arguments_leave_adata_untouched(visium, kwargs, exc, match):
    snap = _snapshot(visium)
    with pytest.raises(exc, match=match):
        kgl.tl.classify_spots(visium, tiny_cnn(), show_progress=False, **kwargs)
    _assert_unchanged(visium, snap)


def test_failure_midway_writes_nothing(visium):
    model = tiny_cnn()
    calls = {"n": 0}

    def boom(module, inp):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated failure in batch 2")

    model.backbone.register_forward_pre_hook(boom)
    snap = _snapshot(visium)
    with pytest.raises(RuntimeError, match="batch 2"):
        kgl.tl.classify_spots(visium, model, batch_size=8, show_progress=False)
    _assert_unchanged(visium, snap)


def test_overwrite_warns(visium, kgl_log):
    kgl.tl.classify_spots(visium, tiny_cnn(), show_progress=False)
    kgl.tl.classify_spots(visium, tiny_cnn(), show_progress=False)
    assert "adata.obs['glomerulus'] already exists and is overwritten" in kgl_log.text


@pytest.mark.parametrize("precision", PRECISIONS)
def test_deterministic(visium, precision):
    kw = dict(copy=True, show_progress=False, precision=precision)
    a = kgl.tl.classify_spots(visium, tiny_cnn(), **kw)
    again = kgl.tl.classify_spots(visium, tiny_cnn(), **kw)
    # the same call twice on one machine: bit-identical
    np.testing.assert_array_equal(a.obs["glomerulus_proba"], again.obs["glomerulus_proba"])
    np.testing.assert_array_equal(a.obsm["X_glomerulus"], again.obsm["X_glomerulus"])
    # another batch layout may pick other kernels (SIMD tails, bf16 rounding): equal within that precision
    b = kgl.tl.classify_spots(visium, tiny_cnn(), batch_size=5, **kw)
    np.testing.assert_allclose(a.obs["glomerulus_proba"], b.obs["glomerulus_proba"], rtol=0, atol=TOL[precision])
    np.testing.assert_allclose(a.obsm["X_glomerulus"], b.obsm["X_glomerulus"], rtol=0, atol=50 * TOL[precision])


def test_dataloader_workers_match(visium):
    a = kgl.tl.classify_spots(visium, tiny_cnn(), copy=True, show_progress=False, precision="fp32")
    b = kgl.tl.classify_spots(visium, tiny_cnn(), copy=True, show_progress=False, precision="fp32", num_workers=2)
    # worker processes cut the same patches; tensors in another process may differ in memory alignment,
    # which changes SIMD rounding of the forward pass by an ulp
    np.testing.assert_allclose(a.obs["glomerulus_proba"], b.obs["glomerulus_proba"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.obs["glomerulus"], b.obs["glomerulus"])


def _two_samples():
    a, b = make_visium(library_id="A", seed=1), make_visium(library_id="B", seed=2, width=900)
    plant_markers(a, [1])
    plant_markers(b, [4, 5])
    return ad.concat({"A": a, "B": b}, label="library_id", uns_merge="unique", index_unique=None)


def test_multi_sample():
    adata = _two_samples()
    assert sorted(adata.uns["spatial"]) == ["A", "B"]
    kgl.tl.classify_spots(adata, center_red_model(), show_progress=False)
    lib = adata.obs["library_id"].astype(str).to_numpy()
    calls = adata.obs["glomerulus"] == "glomerulus"
    assert np.flatnonzero(calls[lib == "A"]).tolist() == [1]
    assert np.flatnonzero(calls[lib == "B"]).tolist() == [4, 5]
    assert adata.uns["glomerulus"]["params"]["library_id"] == ["A", "B"]
    # only one library: the other gets missing values
    only = kgl.tl.classify_spots(adata, center_red_model(), library_id="B", copy=True, show_progress=False)
    assert only.obs.loc[lib == "A", "glomerulus"].isna().all()
    assert np.isnan(only.obs.loc[lib == "A", "glomerulus_proba"]).all()
    assert only.obs.loc[lib == "B", "glomerulus"].notna().all()


def test_multi_sample_needs_library_key():
    adata = _two_samples()
    del adata.obs["library_id"]
    with pytest.raises(KeyError, match="library_key"):
        kgl.tl.classify_spots(adata, tiny_cnn(), show_progress=False)


def test_spatialdata_gives_identical_results(visium):
    from spatialdata_io.experimental import from_legacy_anndata

    plant_markers(visium, [3, 9])
    sdata = from_legacy_anndata(visium.copy())
    kgl.tl.classify_spots(visium, center_red_model(), show_progress=False)
    out = kgl.tl.classify_spots(sdata, center_red_model(), show_progress=False, copy=True)
    table = out.tables["table"]
    assert "glomerulus" not in sdata.tables["table"].obs  # copy=True left the input alone
    np.testing.assert_array_equal(table.obs["glomerulus_proba"].to_numpy(), visium.obs["glomerulus_proba"].to_numpy())
    np.testing.assert_array_equal(table.obsm["X_glomerulus"], visium.obsm["X_glomerulus"])
    assert (table.obs["glomerulus"].astype(str).to_numpy() == visium.obs["glomerulus"].astype(str).to_numpy()).all()
    kgl.tl.classify_spots(sdata, tiny_cnn(), show_progress=False)
    assert "X_glomerulus" in sdata.tables["table"].obsm


def test_cpu_runs_the_gpu_code_path(visium):
    """The CUDA path differs only in device/pinning/autocast dtype: exercise autocast on CPU explicitly."""
    from kgl.tl._device import autocast_dtype, resolve_device

    dev = resolve_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert autocast_dtype(torch.device("cpu"), "fp32") is None
    assert autocast_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    out = kgl.tl.classify_spots(visium, tiny_cnn(), copy=True, show_progress=False, precision="bf16", device="cpu")
    ref = kgl.tl.classify_spots(visium, tiny_cnn(), copy=True, show_progress=False, precision="fp32", device="cpu")
    assert out.uns["glomerulus"]["params"]["precision"] == "bfloat16"
    assert ref.uns["glomerulus"]["params"]["precision"] == "fp32"
    np.testing.assert_allclose(out.obs["glomerulus_proba"], ref.obs["glomerulus_proba"], atol=TOL["bf16"])


def test_imagenet_backbone_untrained_head(visium, mobilenet_weights, kgl_log):
    kgl.tl.classify_spots(visium, "mobilenet_v2:IMAGENET1K_V1", show_progress=False, batch_size=16)
    assert "untrained glomerulus head" in kgl_log.text
    assert visium.obsm["X_glomerulus"].shape == (visium.n_obs, 1280)
    assert np.allclose(visium.obs["glomerulus_proba"], 0.5)
    assert visium.obs["glomerulus_uncertain"].all()  # 0.5 is inside the default (0.2, 0.8) band
    assert visium.uns["glomerulus"]["params"]["head_trained"] is False


def test_fullres_tiff_with_dataloader_workers(visium, tmp_path):
    """The lazy TIFF reader reopens itself in worker processes; results equal the in-process read."""
    from kgl.io import write_tiff_pyramid

    plant_markers(visium, [6, 20])
    img = visium.uns["spatial"]["lib"]["images"]["hires"]
    write_tiff_pyramid(tmp_path / "full.tif", img, mpp=0.5, tile=128, min_size=128)
    visium.uns["spatial"]["lib"]["metadata"]["source_image_path"] = str(tmp_path / "full.tif")
    a = kgl.tl.classify_spots(visium, center_red_model(), copy=True, show_progress=False, precision="fp32")
    b = kgl.tl.classify_spots(
        visium, center_red_model(), copy=True, show_progress=False, precision="fp32", num_workers=2, batch_size=4
    )
    assert a.uns["glomerulus"]["params"]["libraries"]["lib"]["img_key"] == "fullres"
    assert np.flatnonzero(a.obs["glomerulus"] == "glomerulus").tolist() == [6, 20]
    assert np.flatnonzero(b.obs["glomerulus"] == "glomerulus").tolist() == [6, 20]
    # another process and batch size: same patches, the forward pass may round differently by an ulp
    np.testing.assert_allclose(a.obs["glomerulus_proba"], b.obs["glomerulus_proba"], rtol=0, atol=1e-6)


@pytest.mark.realdata
def test_pas_tiles_visium_with_imagenet_backbone(shared_data, mobilenet_weights, tmp_path, monkeypatch):
    from kgl._settings import settings

    monkeypatch.setattr(settings, "cachedir", tmp_path)
    adata = kgl.datasets.pas_tiles_visium()
    sub = adata[::6].copy()  # a CI-sized subset of the real capture area
    kgl.tl.classify_spots(sub, "mobilenet_v2:IMAGENET1K_V1", show_progress=False, batch_size=32, precision="fp32")
    params = sub.uns["glomerulus"]["params"]
    assert params["libraries"]["pas_tiles"]["img_key"] == "fullres"
    assert params["libraries"]["pas_tiles"]["mpp"] == pytest.approx(0.5, rel=0.01)
    emb = sub.obsm["X_glomerulus"]
    assert emb.shape == (sub.n_obs, 1280) and np.isfinite(emb).all()
    # ImageNet features separate glomerulus spots from the rest better than chance on real tissue
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    cov = sub.obs["glomerulus_coverage"].to_numpy()
    keep = (cov >= 0.5) | (cov == 0)
    y = (cov[keep] >= 0.5).astype(int)
    assert y.sum() >= 5
    from sklearn.metrics import roc_auc_score

    p = cross_val_predict(LogisticRegression(max_iter=2000, C=0.1), emb[keep], y, cv=3, method="predict_proba")[:, 1]
    assert roc_auc_score(y, p) > 0.7


def _multi_sample_spatialdata(samples):
    """One shapes element (region) and image per sample, one table annotating all regions (spatialdata-io style)."""
    import spatialdata as sd
    from spatialdata.models import TableModel
    from spatialdata_io.experimental import from_legacy_anndata

    images, shapes, tables = {}, {}, []
    for lib, adata in samples.items():
        one = from_legacy_anndata(adata.copy())
        images.update(one.images)
        shapes[lib] = one.shapes["locations"]
        t = one.tables["table"]
        t.obs["region"] = lib
        tables.append(t)
    table = ad.concat(tables, index_unique=None)
    table.uns.pop("spatialdata_attrs", None)
    table.obs["region"] = pd.Categorical(table.obs["region"])
    table = TableModel.parse(table, region=list(samples), region_key="region", instance_key="instance_id")
    return sd.SpatialData(images=images, shapes=shapes, tables={"table": table})


def test_spatialdata_multi_sample_matches_anndata():
    a, b = make_visium(library_id="A", seed=1), make_visium(library_id="B", seed=2, width=900)
    plant_markers(a, [1])
    plant_markers(b, [4, 5])
    sdata = _multi_sample_spatialdata({"A": a, "B": b})
    kgl.tl.classify_spots(sdata, center_red_model(), show_progress=False)
    table = sdata.tables["table"]
    region = table.obs["region"].astype(str).to_numpy()
    calls = (table.obs["glomerulus"] == "glomerulus").to_numpy()
    assert np.flatnonzero(calls[region == "A"]).tolist() == [1]
    assert np.flatnonzero(calls[region == "B"]).tolist() == [4, 5]
    adata = _two_samples()
    kgl.tl.classify_spots(adata, center_red_model(), show_progress=False)
    np.testing.assert_array_equal(
        table.obs["glomerulus_proba"].to_numpy(), adata.obs.loc[table.obs_names, "glomerulus_proba"].to_numpy()
    )
    assert sorted(table.uns["glomerulus"]["params"]["library_id"]) == ["A", "B"]


def test_prefetch_keeps_order_raises_and_stops_early():
    from kgl.tl._classify import _prefetch

    assert list(_prefetch(iter(range(7)))) == list(range(7))
    assert list(_prefetch(iter([]))) == []

    def broken():
        yield 1
        raise OSError("tile 2 is corrupt")

    got = []
    with pytest.raises(OSError, match="tile 2 is corrupt"):
        for x in _prefetch(broken()):
            got.append(x)
    assert got == [1]
    pulled = []

    def counted():
        for i in range(100):
            pulled.append(i)
            yield i

    gen = _prefetch(counted(), depth=2)
    assert next(gen) == 0
    gen.close()  # the consumer stops: the worker pulls at most depth items ahead
    assert len(pulled) <= 3


def test_images_as_coarse_as_the_training_images_are_accepted():
    """The 2x-coarser refusal yields to the coarsest µm/px the model itself was trained on, and no further."""
    a = make_visium(hires_scalef=0.1)  # 5 µm/px hires; center_red_model needs 60 µm / 32 px = 1.875 µm/px
    model = center_red_model()
    with pytest.raises(ValueError, match=r"has 5 µm/px.*accepts up to 3\.75 µm/px\)"):
        kgl.tl.classify_spots(a, model, copy=True, show_progress=False)
    model.config["training"] = {"mpp_range": [0.5, 4.0]}  # trained on images up to 4 µm/px: still too coarse
    assert model.spec.coarsest_training_mpp == 4.0
    with pytest.raises(ValueError, match=r"accepts up to 4 µm/px, the coarsest of its training images"):
        kgl.tl.classify_spots(a, model, copy=True, show_progress=False)
    assert "glomerulus" not in a.uns and "glomerulus" not in a.obs
    model.config["training"] = {"mpp_range": [0.5, 6.0]}  # its training images were this coarse: in distribution
    out = kgl.tl.classify_spots(a, model, copy=True, show_progress=False)
    assert out.obs["glomerulus"].notna().all()
