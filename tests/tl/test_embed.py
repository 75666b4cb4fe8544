"""Spot embeddings from any backbone (torchvision, timm CNN, timm ViT), with classify_spots' engine."""

import numpy as np
import pytest
import torch

import kgl
from _kgl_fixtures import make_visium

BACKBONES = {  # random init (pretrained=False): offline here, timm's standard loading online
    "mobilenet_v2": 1280,
    "timm:convnext_nano": 640,
    "timm:vit_small_patch16_224": 384,
}


@pytest.fixture(scope="module")
def pas(shared_data):  # skips cleanly without the shared data (never a download in the tests)
    return kgl.datasets.pas_tiles_visium()[:48].copy()


@pytest.mark.realdata
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_embed_spots_any_backbone(pas, backbone):
    net = kgl.models.build_model(backbone, weights=None, patch_um=110.0)
    adata = pas.copy()
    kgl.tl.embed_spots(adata, net, key_added="X_img", show_progress=False, precision="fp32")
    a = adata.obsm["X_img"]
    assert a.shape == (adata.n_obs, BACKBONES[backbone]) and a.dtype == np.float32 and np.isfinite(a).all()
    assert adata.uns["X_img"]["params"]["dim"] == BACKBONES[backbone]
    assert "glomerulus" not in adata.obs  # embeddings only: no calls written
    again = kgl.tl.embed_spots(adata, net, key_added="X_img", show_progress=False, precision="fp32", copy=True)
    np.testing.assert_array_equal(again.obsm["X_img"], a)  # same input, same result
    bf = kgl.tl.embed_spots(adata, net, key_added="X_bf", show_progress=False, precision="bf16", copy=True)
    rel = np.linalg.norm(bf.obsm["X_bf"] - a) / np.linalg.norm(a)
    assert rel < 0.05  # bf16 keeps 8 bits of mantissa: ~0.4 % per value, far from a different embedding


def test_default_key_names_the_model():
    adata = make_visium(width=600, height=500)
    kgl.tl.embed_spots(adata, kgl.models.build_model("timm:convnext_nano", weights=None), show_progress=False,
                       precision="fp32")  # fmt: skip
    assert "X_timm_convnext_nano" in adata.obsm


def test_timm_classifier_round_trips_through_a_checkpoint(tmp_path):
    net = kgl.models.build_model("timm:convnext_nano", weights=None, patch_um=110.0, input_size=64, head_trained=True)
    torch.nn.init.normal_(net.head.weight)  # a 'trained' head: not the zeros of an untrained one
    assert net.spec.preprocessing.input_size == 64 and net.config["mean"] == pytest.approx([0.485, 0.456, 0.406])
    back = kgl.models.load_checkpoint(kgl.models.save_checkpoint(net, tmp_path / "timm.pt"))
    assert back.spec.backbone == "timm:convnext_nano" and back.config["mean"] == net.config["mean"]
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(back.eval()(x), net.eval()(x))
    # classify_spots takes it like any kgl model
    adata = make_visium(width=600, height=500)
    kgl.tl.classify_spots(adata, back, show_progress=False, precision="fp32")
    assert adata.obsm["X_glomerulus"].shape == (adata.n_obs, 640)


def test_timm_preprocessing_comes_from_timm():
    vit = kgl.models.build_model("timm:vit_small_patch16_224", weights=None)
    assert vit.spec.preprocessing.input_size == 224 and vit.config["mean"] == pytest.approx([0.5, 0.5, 0.5])
    with pytest.raises(KeyError, match="Unknown timm model"):
        kgl.models.build_model("timm:no_such_model_xyz", weights=None)


def test_foundation_model_shaped_timm_kwargs_round_trip(tmp_path):
    # UNI2-h / Virchow2 are ViTs with SwiGLUPacked MLPs, SiLU and register tokens (timm kwargs on their cards):
    # the same options on a small ViT, by name in JSON, rebuilt from the checkpoint
    kw = {"mlp_layer": "SwiGLUPacked", "act_layer": "SiLU", "mlp_ratio": 5.33334, "reg_tokens": 4,
          "no_embed_class": True, "init_values": 1e-5}  # fmt: skip
    net = kgl.models.build_model("timm:vit_small_patch16_224", weights=None, timm_kwargs=kw, head_trained=True)
    assert type(net.backbone.blocks[0].mlp).__name__ == "GluMlp" and net.config["timm_kwargs"] == kw
    back = kgl.models.load_checkpoint(kgl.models.save_checkpoint(net, tmp_path / "fm.pt"))
    x = torch.rand(1, 3, 224, 224)
    torch.testing.assert_close(back.eval()(x), net.eval()(x))


def test_map_on_a_timm_encoder(tmp_path):
    # segmentation-models-pytorch's tu- encoders: the map model on a timm network, rebuilt from its checkpoint
    net = kgl.models.build_segmenter("Unet", "timm:convnext_nano", weights=None, mpp=2.0, input_size=64)
    back = kgl.models.load_checkpoint(kgl.models.save_checkpoint(net, tmp_path / "map.pt"))
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(back.eval()(x), net.eval()(x))
    adata = make_visium(width=600, height=500)
    kgl.tl.classify_spots(adata, back, show_progress=False, precision="fp32")
    assert adata.obs["glomerulus_fraction"].between(0, 1).all() and adata.obsm["X_glomerulus"].shape[1] == 640


@pytest.mark.parametrize(
    ("backbone", "kwargs", "width"),
    [
        ("timm:vit_small_patch16_224", {"global_pool": "", "reg_tokens": 4, "num_classes": 0}, 384),  # Virchow2-like
        ("timm:mobilenetv3_small_100", {}, 1024),  # pre-logits conv head: wider than num_features
    ],
)
def test_timm_models_give_one_vector_per_patch(backbone, kwargs, width):
    net = kgl.models.build_model(backbone, weights=None, timm_kwargs=kwargs, head_trained=True)
    x = torch.rand(2, 3, 224, 224)
    assert net.forward_features(x).shape == (2, width) and net(x).shape == (2, 2)
    assert "num_classes" not in net.config.get("timm_kwargs", {})  # kgl's own; a card's copy is dropped


def test_a_bad_device_fails_before_the_model_is_loaded(tmp_path):
    adata = make_visium(width=600, height=500)
    missing = tmp_path / "no-such-model.pt"  # loading it would be a FileNotFoundError: the device is checked first
    with pytest.raises(ValueError, match=r"Unknown device 'gpu0'"):
        kgl.tl.embed_spots(adata, str(missing), device="gpu0")
    with pytest.raises(ValueError, match=r"Unknown device 'gpu0'"):
        kgl.tl.classify_spots(adata, str(missing), device="gpu0")
