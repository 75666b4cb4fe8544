import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import kgl
from _kgl_fixtures import tiny_cnn
from kgl.models import build_model, load_checkpoint, resolve_model, save_checkpoint, state_dict_sha256


def test_resnet50_features_are_2048d():
    m = build_model("resnet50", weights=None)
    assert m.config["num_features"] == 2048
    assert m.config["backbone"] == "resnet50"
    with torch.no_grad():
        f = m.forward_features(torch.zeros(1, 3, 64, 64))
        out = m(torch.zeros(1, 3, 64, 64))
    assert f.shape == (1, 2048) and out.shape == (1, 2)
    # untrained head predicts exactly 0.5
    assert torch.allclose(torch.softmax(out, 1), torch.full((1, 2), 0.5))


def test_default_weights_are_the_torchvision_enums():
    from kgl.models import DEFAULT_WEIGHTS
    from kgl.models._model import _resolve_weights

    assert DEFAULT_WEIGHTS["resnet50"] == "IMAGENET1K_V2"
    w = _resolve_weights("resnet50", "IMAGENET1K_V2")
    assert type(w).__name__ == "ResNet50_Weights"
    with pytest.raises(KeyError, match="Available"):
        _resolve_weights("resnet50", "IMAGENET9K")
    with pytest.raises(KeyError, match="Unknown torchvision backbone"):
        _resolve_weights("resnet5000", "DEFAULT")


def test_mobilenet_imagenet_offline(mobilenet_weights):
    m = build_model("mobilenet_v2", weights="IMAGENET1K_V1")
    assert m.config["weights"] == "IMAGENET1K_V1"
    assert m.config["num_features"] == 1280
    assert m.config["mean"] == pytest.approx([0.485, 0.456, 0.406])
    # ImageNet weights really loaded: the first conv is not at its random init
    ref = build_model("mobilenet_v2", weights=None)
    assert not torch.equal(m.backbone.features[0][0].weight, ref.backbone.features[0][0].weight)


def test_checkpoint_roundtrip_bit_identical(tmp_path):
    m = build_model("mobilenet_v2", weights=None, patch_um=90.0)
    with torch.no_grad():
        m.head.weight.normal_()
    m.config["head_trained"] = True
    path = save_checkpoint(m, tmp_path / "m.pt")
    m2 = load_checkpoint(path)
    assert state_dict_sha256(m2) == state_dict_sha256(m)
    assert m2.config["patch_um"] == 90.0 and m2.config["head_trained"] is True
    x = torch.rand(2, 3, 64, 64)
    m.eval(), m2.eval()
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))


def test_pickle_checkpoint_is_refused(tmp_path):
    m = build_model("mobilenet_v2", weights=None)
    path = tmp_path / "pickled.pt"
    torch.save(m, path)  # a whole pickled module
    with pytest.raises(ValueError, match="weights_only=True"):
        load_checkpoint(path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path2 = tmp_path / "evil.pt"
    path2.write_bytes(pickle.dumps({"format": "kgl-checkpoint", "x": Evil()}))
    with pytest.raises(ValueError, match="Refusing"):
        load_checkpoint(path2)
    assert not marker.exists()  # the payload's code never ran
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ValueError, match="not a kgl checkpoint"):
        load_checkpoint(tmp_path / "sd.pt")


def test_checkpoint_with_wrong_classes_or_backbone(tmp_path):
    m = build_model("mobilenet_v2", weights=None)
    path = save_checkpoint(m, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["head.weight"] = torch.zeros(3, 1280)
    payload["state_dict"]["head.bias"] = torch.zeros(3)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not match"):
        load_checkpoint(tmp_path / "bad.pt")
    import json

    cfg = json.loads(payload["config"])
    cfg["backbone"] = "resnet18"
    payload["config"] = json.dumps(cfg)
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="resnet18"):
        load_checkpoint(tmp_path / "other.pt")


def test_resolve_model_variants(tmp_path):
    m = tiny_cnn()
    assert resolve_model(m) is m
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    wrapped = resolve_model(plain)
    assert wrapped.config["num_features"] == 4
    with torch.no_grad():
        x = torch.rand(1, 3, 16, 16)
        assert torch.allclose(wrapped(x), plain(x))
    with pytest.raises(ValueError, match="2 classes"):
        resolve_model(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)))
    with pytest.raises(KeyError, match="Unknown model"):
        resolve_model("not_a_model")
    with pytest.raises(FileNotFoundError):
        resolve_model(str(tmp_path / "missing.pt"))
    assert kgl.models.available_models() == sorted(kgl.models.REGISTRY)


def test_sha256_changes_with_weights():
    a, b = tiny_cnn(seed=0), tiny_cnn(seed=1)
    assert state_dict_sha256(a) != state_dict_sha256(b)
    assert state_dict_sha256(a) == state_dict_sha256(tiny_cnn(seed=0))
    assert np.all(np.isfinite([0]))


def _bn_net(seed: int = 0):
    """A small conv-BN-ReLU GlomClassifier whose BatchNorm statistics are not the identity."""
    torch.manual_seed(seed)
    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
    )
    bn = backbone[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    torch.nn.init.normal_(bn.weight)
    return kgl.models.GlomClassifier(backbone, 8, kgl.models.model_config("bn_net", input_size=16)).eval()


def test_fold_batchnorm_same_outputs_and_leaves_model_alone():
    model = _bn_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = kgl.models.fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    x = torch.randn(4, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(folded.forward_features(x), model.forward_features(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    assert folded.config == model.config


def test_fold_batchnorm_torchvision_backbone():
    model = kgl.models.build_model("mobilenet_v2", weights=None, input_size=64).eval()
    folded = kgl.models.fold_batchnorm(model)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules()) == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        a, b = folded.forward_features(x), model.forward_features(x)  # the head is zero: compare the features
        assert b.abs().max() > 0 and ((a - b).norm() / b.norm()) < 1e-4
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_fold_batchnorm_keeps_hooked_backbones():
    model = _bn_net()
    seen = []
    model.backbone[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    folded = kgl.models.fold_batchnorm(model)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.inference_mode():
        folded(torch.randn(1, 3, 16, 16))
    assert seen == [torch.Size([1, 8, 16, 16])]


class _DataDependent(torch.nn.Module):
    """Control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.pool = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.bn(self.conv(x))
        return self.pool(x if x.sum() > 0 else -x)


def test_fold_batchnorm_untraceable_backbone_is_copied_unfolded():
    model = kgl.models.GlomClassifier(_DataDependent(), 4, kgl.models.model_config("dd", input_size=16)).eval()
    folded = kgl.models.fold_batchnorm(model)
    assert folded is not model and isinstance(folded.backbone.bn, torch.nn.BatchNorm2d)
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x))


@pytest.mark.parametrize("build", ["classifier", "segmenter", "timm"])
def test_a_seed_gives_the_same_model_and_leaves_the_callers_stream(build):
    from kgl.models import build_segmenter

    make = {
        "classifier": lambda seed: build_model("mobilenet_v2", weights=None, seed=seed),
        "segmenter": lambda seed: build_segmenter(weights=None, seed=seed),
        "timm": lambda seed: build_model("timm:convnext_nano", weights=None, seed=seed),
    }[build]
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    a = make(3)
    assert torch.equal(torch.rand(4), expected)  # building drew from its own seed, not the caller's stream
    assert state_dict_sha256(a) == state_dict_sha256(make(3)) != state_dict_sha256(make(4))
