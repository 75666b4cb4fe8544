"""Glomerulus classifiers built from torchvision backbones (ImageNet weights loaded with ``weights_only=True``)."""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kgl._files import torch_error_summary
from kgl._logging import logger
from kgl.models._config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_WEIGHTS",
    "TIMM_PREFIX",
    "GlomClassifier",
    "build_model",
    "fold_batchnorm",
    "model_config",
]

#: Output classes of kgl's models, in logit order: index 1 is the glomerulus class.
CLASS_NAMES = ("other", "glomerulus")
#: ImageNet weights per backbone when the caller names none: the ones the issue tracker settled on
#: (``resnet50`` + ``IMAGENET1K_V2`` for training; ``mobilenet_v2`` + ``IMAGENET1K_V1``, the checkpoint
#: available offline). Other backbones use torchvision's ``DEFAULT``.
DEFAULT_WEIGHTS = {"resnet50": "IMAGENET1K_V2", "mobilenet_v2": "IMAGENET1K_V1"}


def _strip_last_linear(model: nn.Module) -> int:
    """Replace the module's last :class:`~torch.nn.Linear` by :class:`~torch.nn.Identity`; return its in_features.

    For torchvision classifiers this leaves the network ending in its global pooled features
    (``fc`` of ResNets, ``classifier[-1]`` of MobileNets/EfficientNets/ConvNeXts, ``heads.head`` of ViTs).
    """
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = (name, mod)
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to replace.")
    name, linear = last
    parent = model
    *path, leaf = name.split(".")
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, leaf, nn.Identity())
    return int(linear.in_features)


class GlomClassifier(nn.Module):
    """A backbone returning pooled features and a linear head over :data:`CLASS_NAMES`.

    ``forward`` returns logits; :meth:`forward_features` the embedding written to
    ``adata.obsm["X_<key>"]``. ``config`` is the JSON-able dict that travels with the checkpoint;
    :attr:`spec` reads it as the typed :class:`~kgl.models.ModelConfig` (preprocessing,
    calibration, classes).
    """

    def __init__(self, backbone: nn.Module, num_features: int, config: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(num_features, len(config["class_names"]))
        self.config = dict(config)
        self.config["num_features"] = int(num_features)

    @property
    def spec(self) -> ModelConfig:
        """The typed record of :attr:`config` (:class:`kgl.models.ModelConfig`): read this, not the dict."""
        return ModelConfig.from_dict(self.config)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``(B, num_features)``."""
        return torch.flatten(self.backbone(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, n_classes)``."""
        return self.head(self.forward_features(x))


def fold_batchnorm(model: GlomClassifier) -> GlomClassifier:
    """An inference copy of ``model`` with every BatchNorm folded into the convolution before it.

    Eval-mode BatchNorm is an affine map per channel, so it can be absorbed into the preceding
    convolution's weights and bias (:func:`torch.fx.experimental.optimization.fuse`, which uses
    :func:`torch.nn.utils.fusion.fuse_conv_bn_eval`). Outputs agree to float rounding and the
    forward pass skips one memory-bound pass per layer: on a 2-core CPU MobileNet_V2 goes from
    9.1 to 5.3 ms/patch in bf16 (``docs/performance.md``). ``model`` itself is not changed.
    A backbone that :mod:`torch.fx` cannot trace, or one with forward hooks registered (which
    folding would drop), is returned unfolded (a copy), with a debug log line.
    """
    import copy

    from torch.fx.experimental.optimization import fuse

    out = copy.deepcopy(model).eval()
    if any(m._forward_hooks or m._forward_pre_hooks for m in out.backbone.modules()):
        logger.debug("BatchNorm folding skipped: the backbone has forward hooks.")
        return out
    try:
        out.backbone = fuse(out.backbone, inplace=True)  # out is already a copy
    except Exception as e:  # any tracing failure just means no folding
        logger.debug("BatchNorm folding skipped for %s: %s", type(model.backbone).__name__, e)
    return out


def model_config(
    backbone: str,
    *,
    weights: str | None = None,
    class_names: tuple[str, ...] | list[str] = CLASS_NAMES,
    patch_um: float = 110.0,
    input_size: int = 224,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    threshold: float = 0.5,
    head_trained: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON-able config every :class:`GlomClassifier` carries (and its checkpoint stores).

    The positive class is the last of ``class_names``; ``mean``/``std`` default to ImageNet's.
    """
    return {
        "backbone": backbone,
        "weights": weights,
        "class_names": list(class_names),
        "positive_class": list(class_names)[-1],
        "patch_um": float(patch_um),
        "input_size": int(input_size),
        "mean": list(IMAGENET_MEAN if mean is None else mean),
        "std": list(IMAGENET_STD if std is None else std),
        "threshold": float(threshold),
        "head_trained": bool(head_trained),
        **extra,
    }


def _resolve_weights(backbone: str, weights: str | None) -> Any:
    import torchvision

    if weights is None:
        return None
    try:
        enum = torchvision.models.get_model_weights(backbone)
    except (ValueError, KeyError) as e:
        raise KeyError(
            f"Unknown torchvision backbone {backbone!r}. Examples: resnet50, mobilenet_v2, efficientnet_b0, "
            "convnext_tiny (torchvision.models.list_models())."
        ) from e
    if weights == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[weights]
    except KeyError:
        raise KeyError(
            f"Backbone {backbone!r} has no weights {weights!r}. Available: {[w.name for w in enum]}."
        ) from None


def build_model(
    backbone: str = "resnet50",
    weights: str | None = "DEFAULT",
    *,
    class_names: tuple[str, ...] = CLASS_NAMES,
    patch_um: float = 110.0,
    input_size: int | None = None,
    threshold: float = 0.5,
    seed: int = 0,
    **config: Any,
) -> GlomClassifier:
    """Build a torchvision backbone by name with torchvision's own weights enum and a new 2-class head.

    Parameters
    ----------
    backbone
        Any torchvision classification model name (``resnet50``, ``mobilenet_v2``, ...), or a timm
        model as ``"timm:<name>"`` (``"timm:convnext_nano"``, ``"timm:hf-hub:MahmoodLab/UNI"``): built by
        :func:`timm.create_model` without its classifier, its preprocessing (input size, mean, std)
        from timm's pretrained config (:func:`timm.data.resolve_data_config`).
    weights
        Name of a member of the backbone's weights enum (``"IMAGENET1K_V2"``), or ``None`` for random
        initialisation. For timm, any value but ``None`` loads the model's pretrained weights the
        standard timm way (the tag, if any, is part of the name: ``"timm:vit_small_patch16_224.augreg_in21k"``).
        ``"DEFAULT"`` is kgl's choice for the backbone, :data:`DEFAULT_WEIGHTS` (the
        weights its recipes were measured with), and torchvision's ``DEFAULT`` member for any other
        backbone. Weights load the standard torchvision way (downloaded once into ``$TORCH_HOME``,
        sha256-checked) and always with ``weights_only=True``.
    class_names
        Classes of the head, negative first.
    patch_um
        Side in µm of the patches the model expects.
    input_size
        Side in px of the model input; the weights' ``crop_size`` (224) by default.
    threshold
        Decision threshold on the positive class probability.
    seed
        Seeds the head's initialisation (and the backbone's when ``weights=None``).
    config
        Extra JSON-able entries stored in ``model.config`` (training summary, metrics, ...).

    Returns
    -------
    The classifier; its head is untrained (``config["head_trained"] = False``).

    """
    if backbone.startswith(TIMM_PREFIX):
        return _build_timm(backbone, weights, class_names=class_names, patch_um=patch_um, input_size=input_size,
                           threshold=threshold, seed=seed, **config)  # fmt: skip
    if backbone not in _torchvision_models():
        raise KeyError(
            f"Unknown torchvision backbone {backbone!r}. Examples: resnet50, mobilenet_v2, efficientnet_b0, "
            "convnext_tiny (torchvision.models.list_models()); timm models as 'timm:<name>'."
        )
    if weights == "DEFAULT":  # kgl's measured weights for its backbones, torchvision's DEFAULT for others
        weights = DEFAULT_WEIGHTS.get(backbone, "DEFAULT")
    w = _resolve_weights(backbone, weights)
    with seeded(seed):
        try:
            net = _pretrained(backbone, w)
        except pickle.UnpicklingError as e:
            raise RuntimeError(
                f"Refusing torchvision weights {w} for {backbone!r}: the cached file does not load with "
                f"weights_only=True ({torch_error_summary(e)}). Delete it from $TORCH_HOME/hub/checkpoints/ "
                "and let torchvision download it again."
            ) from e
        except (OSError, RuntimeError) as e:  # URLError is an OSError; hash mismatch a RuntimeError
            home = os.environ.get("TORCH_HOME", "~/.cache/torch")
            raise RuntimeError(
                f"Could not load torchvision weights {w} for {backbone!r} ({e}). Offline, place the checkpoint "
                f"{Path(w.url).name if w is not None else ''!s} under {home}/hub/checkpoints/, or pick weights that "
                "are available (e.g. model='mobilenet_v2' with IMAGENET1K_V1)."
            ) from e
        num_features = _strip_last_linear(net)
        norm: dict[str, Any] = {}
        crop = 224
        if w is not None:
            t = w.transforms()
            norm, crop = {"mean": list(t.mean), "std": list(t.std)}, int(t.crop_size[0])
        cfg = model_config(
            backbone,
            weights=None if w is None else w.name,
            class_names=class_names,
            patch_um=patch_um,
            input_size=input_size or crop,
            threshold=threshold,
            **{**norm, **config},
        )
        model = GlomClassifier(net, num_features, cfg)
    return _zero_untrained_head(model)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator with ``seed`` inside the block; the caller's state is back afterwards.

    :func:`torch.random.fork_rng` over the CPU generator: building a model draws its random
    initialisation from ``seed`` and does not move the caller's random stream.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _zero_untrained_head(model: GlomClassifier) -> GlomClassifier:
    """An untrained head predicts exactly 0.5 for every spot rather than random noise."""
    if not model.config["head_trained"]:
        nn.init.zeros_(model.head.weight)
        nn.init.zeros_(model.head.bias)
    return model


#: Prefix of timm backbone names (``"timm:<name>"``).
TIMM_PREFIX = "timm:"


def _build_timm(backbone: str, weights: str | None, *, class_names: tuple[str, ...], patch_um: float,
                input_size: int | None, threshold: float, seed: int, **config: Any) -> GlomClassifier:  # fmt: skip
    """:func:`build_model` for ``"timm:<name>"``: :func:`timm.create_model` with ``num_classes=0`` (pooled features).

    Pretrained weights come through timm's own loading (Hugging Face Hub or its URLs; gated models
    need ``HF_TOKEN``), as timm users get them; preprocessing is timm's pretrained config.
    ``config["timm_kwargs"]`` (JSON) are passed to ``create_model`` and stored, so that a
    checkpoint rebuilds the same architecture; layer classes are named (``"mlp_layer":
    "SwiGLUPacked"``, ``"act_layer": "SiLU"``), as the pathology foundation models' cards ask.
    """
    import json

    import timm
    from timm.data import resolve_data_config

    name = backbone[len(TIMM_PREFIX) :]
    timm_kwargs = dict(config.pop("timm_kwargs", None) or {})
    for fixed in ("num_classes", "pretrained"):  # kgl sets these (a model card's num_classes=0 is kgl's own)
        timm_kwargs.pop(fixed, None)
    try:
        json.dumps(timm_kwargs)
    except TypeError as e:
        raise TypeError(
            f"timm_kwargs must be JSON (they are stored so that a checkpoint rebuilds the model): {e}. Give layer "
            "classes by name, e.g. mlp_layer='SwiGLUPacked', act_layer='SiLU'."
        ) from None
    with seeded(seed):
        try:
            net = timm.create_model(name, pretrained=weights is not None, num_classes=0, **_timm_layers(timm_kwargs))
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise KeyError(f"Unknown timm model {name!r} ({e}); see timm.list_models().") from None
            raise RuntimeError(f"Could not load timm weights for {name!r} ({e}).") from e
        except OSError as e:  # offline, or a gated Hugging Face repository without a token
            hub = " (timm reads an hf-hub: model's config from the Hub even without its weights)" if (
                name.startswith("hf-hub:")) else ""  # fmt: skip
            raise RuntimeError(
                f"Could not load timm {'weights' if weights is not None else 'model'} {name!r} ({e}){hub}. Offline, "
                "or a gated model: log in to the Hugging Face Hub (HF_TOKEN) after accepting its licence."
            ) from e
        if getattr(net, "global_pool", None) == "":  # a model whose config returns every token (Virchow2)
            net.reset_classifier(0, "token")  # one vector per patch: the class token
        dc = resolve_data_config({}, model=net)
        tag = net.pretrained_cfg.get("hf_hub_id") or net.pretrained_cfg.get("tag") or "default"
        cfg = model_config(
            backbone,
            weights=None if weights is None else f"timm:{tag}",
            class_names=class_names,
            patch_um=patch_um,
            input_size=input_size or int(dc["input_size"][-1]),
            threshold=threshold,
            **{"mean": list(dc["mean"]), "std": list(dc["std"]), **config},
            **({"timm_kwargs": timm_kwargs} if timm_kwargs else {}),  # JSON: a checkpoint rebuilds the architecture
        )
        width = getattr(net, "head_hidden_size", None) or net.num_features  # pre-logits width (mobilenetv3: 1280)
        model = GlomClassifier(net, int(width), cfg)
    return _zero_untrained_head(model)


def _timm_layers(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``timm_kwargs`` with layer classes given by name resolved to classes.

    ``mlp_layer`` from :mod:`timm.layers`, ``act_layer`` from :mod:`torch.nn`: the JSON-able spelling
    of the foundation models' ``SwiGLUPacked`` / ``SiLU``.
    """
    import timm.layers

    out = dict(kwargs)
    for key, module in (("mlp_layer", timm.layers), ("act_layer", nn)):
        value = out.get(key)
        if isinstance(value, str) and hasattr(module, value):
            out[key] = getattr(module, value)
    return out


def _pretrained(backbone: str, w: Any) -> nn.Module:
    """The torchvision network with the weights enum ``w`` loaded with ``weights_only=True``.

    ``get_model(backbone, weights=w)`` would load them with ``torch.load(weights_only=False)`` (its
    ``check_hash`` only covers files it downloads, not one already in ``$TORCH_HOME``); torchvision
    0.29's ``WeightsEnum.get_state_dict`` passes ``weights_only`` on to ``torch.hub``. The network is
    built as the enum's builder builds it (``num_classes`` from the weights' categories) and the
    state dict loaded strictly, so a builder that needs other weight-specific arguments fails loudly.
    """
    import torchvision

    if w is None:
        return torchvision.models.get_model(backbone, weights=None)
    if backbone in _WEIGHT_SPECIFIC_BUILDERS:
        raise ValueError(
            f"{backbone!r} changes its architecture for pretrained weights (input transform, auxiliary heads), "
            "which kgl's weights_only loading does not reproduce. Use another backbone, e.g. resnet50, "
            "mobilenet_v2, efficientnet_b0 or convnext_tiny."
        )
    net = torchvision.models.get_model(backbone, weights=None, num_classes=len(w.meta["categories"]))
    state = w.get_state_dict(progress=True, check_hash=True, weights_only=True)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:  # not a download problem: the enum's builder needs other arguments
        raise ValueError(
            f"Weights {w} do not fit {backbone!r} as kgl builds it ({torch_error_summary(e)}); use another "
            "weights member or backbone."
        ) from e
    return net


#: torchvision builders that take weight-specific arguments besides ``num_classes`` (kgl refuses them).
_WEIGHT_SPECIFIC_BUILDERS = frozenset({"googlenet", "inception_v3"})


def _torchvision_models() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)
