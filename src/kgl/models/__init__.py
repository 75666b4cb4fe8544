"""Models: torchvision backbones by name, the registry of trained models, checkpoints."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from kgl.models._card import model_card, write_model_card
from kgl.models._config import TASKS, Calibration, ModelConfig, Preprocessing
from kgl.models._registry import (
    DEFAULT_MODEL,
    PATCH_MODEL,
    REGISTRY,
    ModelEntry,
    ModelRegistry,
    available_models,
    fetch_model,
    model_dir,
)
from kgl.models._resolve import resolve_model

# These names load torch: they are imported on first access, so the registry (and
# kgl.recipes.DEFAULT_RECIPE, which reads it) stay torch-free.
_TORCH_NAMES = {
    "CLASS_NAMES": "kgl.models._model",
    "DEFAULT_WEIGHTS": "kgl.models._model",
    "GlomClassifier": "kgl.models._model",
    "build_model": "kgl.models._model",
    "fold_batchnorm": "kgl.models._model",
    "model_config": "kgl.models._model",
    "GlomSegmenter": "kgl.models._segmenter",
    "MAP_ARCHS": "kgl.models._segmenter",
    "build_segmenter": "kgl.models._segmenter",
    "load_checkpoint": "kgl.models._checkpoint",
    "save_checkpoint": "kgl.models._checkpoint",
    "state_dict_sha256": "kgl.models._checkpoint",
}

if TYPE_CHECKING:  # pragma: no cover
    from kgl.models._checkpoint import load_checkpoint, save_checkpoint, state_dict_sha256
    from kgl.models._model import (
        CLASS_NAMES,
        DEFAULT_WEIGHTS,
        GlomClassifier,
        build_model,
        fold_batchnorm,
        model_config,
    )
    from kgl.models._segmenter import MAP_ARCHS, GlomSegmenter, build_segmenter


def __getattr__(name: str):
    if name in _TORCH_NAMES:
        return getattr(importlib.import_module(_TORCH_NAMES[name]), name)
    raise AttributeError(f"module 'kgl.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "CLASS_NAMES",
    "DEFAULT_MODEL",
    "DEFAULT_WEIGHTS",
    "MAP_ARCHS",
    "PATCH_MODEL",
    "REGISTRY",
    "TASKS",
    "Calibration",
    "GlomClassifier",
    "GlomSegmenter",
    "ModelConfig",
    "ModelEntry",
    "ModelRegistry",
    "Preprocessing",
    "available_models",
    "build_model",
    "build_segmenter",
    "fetch_model",
    "fold_batchnorm",
    "load_checkpoint",
    "model_card",
    "model_config",
    "model_dir",
    "resolve_model",
    "save_checkpoint",
    "state_dict_sha256",
    "write_model_card",
]
