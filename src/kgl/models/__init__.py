"""Models: torchvision backbones by name, the registry of trained models, checkpoints."""

from kgl.models._card import model_card, write_model_card
from kgl.models._model import (
    CLASS_NAMES,
    DEFAULT_WEIGHTS,
    GlomClassifier,
    build_model,
    fold_batchnorm,
    load_checkpoint,
    model_config,
    save_checkpoint,
    state_dict_sha256,
)
from kgl.models._registry import REGISTRY, ModelEntry, available_models, fetch_model
from kgl.models._resolve import DEFAULT_MODEL, resolve_model

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_MODEL",
    "DEFAULT_WEIGHTS",
    "REGISTRY",
    "GlomClassifier",
    "ModelEntry",
    "available_models",
    "build_model",
    "fetch_model",
    "fold_batchnorm",
    "load_checkpoint",
    "model_card",
    "model_config",
    "resolve_model",
    "save_checkpoint",
    "state_dict_sha256",
    "write_model_card",
]
