"""Turn what the user passed as ``model=`` into a :class:`~kgl.models.GlomClassifier`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kgl._logging import logger
from kgl.models._registry import DEFAULT_MODEL, REGISTRY, fetch_model

__all__ = ["resolve_model"]


def resolve_model(model: Any = None) -> Any:
    """Resolve ``model`` (checkpoint path, registry name, ``"backbone[:WEIGHTS]"`` or torch module).

    Returns a :class:`~kgl.models.GlomClassifier`, or a :class:`~kgl.models.GlomSegmenter` for a map model.
    """
    from torch import nn

    from kgl.models._checkpoint import load_checkpoint
    from kgl.models._model import GlomClassifier, build_model
    from kgl.models._segmenter import GlomSegmenter

    if model is None:
        model = DEFAULT_MODEL
    if isinstance(model, GlomClassifier | GlomSegmenter):
        return model
    if isinstance(model, nn.Module):
        return _wrap_module(model)
    if isinstance(model, os.PathLike) or (isinstance(model, str) and (os.sep in model or model.endswith(".pt"))):
        return load_checkpoint(Path(model))
    if not isinstance(model, str):
        raise TypeError(
            f"model must be a checkpoint path, a registry name or a torch.nn.Module, got {type(model).__name__}."
        )
    if model in REGISTRY:
        return load_checkpoint(fetch_model(model))
    if model.startswith("timm:"):  # a timm model with its pretrained weights (timm's own loading)
        net = build_model(model, weights="DEFAULT")
        logger.warning("model=%r is a pretrained timm backbone with an untrained glomerulus head: embeddings only.",
                       model)  # fmt: skip
        return net
    backbone, _, weights = model.partition(":")
    import torchvision

    if backbone not in torchvision.models.list_models(module=torchvision.models):
        raise KeyError(
            f"Unknown model {model!r}. Trained kgl models: {sorted(REGISTRY) or 'none yet'}; or a checkpoint path; "
            "or an ImageNet torchvision backbone such as 'resnet50' or 'mobilenet_v2:IMAGENET1K_V1'."
        )
    net = build_model(backbone, weights=weights or "DEFAULT")
    logger.warning(
        "model=%r is an ImageNet backbone with an untrained glomerulus head: embeddings are meaningful, but every "
        "probability is 0.5 and labels are not informative. Pass a trained kgl checkpoint for real calls.",
        model,
    )
    return net


def _wrap_module(module: Any) -> Any:
    """Use a plain classifier module: its last Linear layer becomes the head, its input the embedding."""
    import copy

    from torch import nn

    from kgl.models._model import CLASS_NAMES, GlomClassifier, _strip_last_linear, model_config

    module = copy.deepcopy(module)
    last = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError(
            f"{type(module).__name__} has no nn.Linear output layer; wrap it as kgl.models.GlomClassifier."
        )
    head = last[-1]
    config = dict(getattr(module, "kgl_config", {}))
    n_classes = head.out_features
    class_names = config.get("class_names", list(CLASS_NAMES))
    if n_classes != len(class_names):
        raise ValueError(
            f"The module's output layer has {n_classes} outputs but kgl expects "
            f"{len(class_names)} classes {class_names}."
        )
    num_features = _strip_last_linear(module)
    config.setdefault("head_trained", True)
    config["class_names"] = class_names
    out = GlomClassifier(module, num_features, model_config(type(module).__name__, **config))
    out.head = head
    return out
