"""kgl checkpoints: ``state_dict`` + JSON config in one file, loaded with ``weights_only=True`` (never unpickled)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import torch
from torch import nn

from kgl._files import atomic_path, torch_error_summary
from kgl._logging import logger
from kgl.models._model import GlomClassifier, _torchvision_models, build_model
from kgl.models._segmenter import MAP_ARCHS, GlomSegmenter, rebuild_segmenter

__all__ = ["load_checkpoint", "save_checkpoint", "state_dict_sha256"]

_FORMAT = "kgl-checkpoint"
_VERSION = 1


def state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 of the parameters and buffers (names, dtypes, shapes, bytes), independent of file format."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _rebuildable(backbone: str) -> bool:
    """A backbone :func:`kgl.models.build_model` rebuilds by name: torchvision's, or a timm model timm knows."""
    if backbone.startswith("timm:"):
        import timm

        name = backbone[len("timm:") :]
        return name.startswith("hf-hub:") or timm.is_model(name.split(".")[0])
    return backbone in _torchvision_models()


def save_checkpoint(model: GlomClassifier | GlomSegmenter, path: str | os.PathLike) -> Path:
    """Save ``state_dict`` + JSON config in one file (atomically); load it with :func:`load_checkpoint`."""
    if not isinstance(model, GlomClassifier | GlomSegmenter):
        raise TypeError(f"save_checkpoint expects a kgl GlomClassifier or GlomSegmenter, got {type(model).__name__}.")
    if isinstance(model, GlomSegmenter):
        if model.config.get("arch") not in MAP_ARCHS:
            raise ValueError(
                f"Cannot save a checkpoint of map architecture {model.config.get('arch')!r}: kgl rebuilds maps by "
                f"segmentation-models-pytorch name ({MAP_ARCHS}). Save its state_dict with torch.save instead."
            )
    elif not _rebuildable(str(model.config.get("backbone"))):
        raise ValueError(
            f"Cannot save a checkpoint of backbone {model.config.get('backbone')!r}: kgl checkpoints rebuild their "
            "backbone by name (torchvision, or 'timm:<name>'), so only those (kgl.models.build_model) can be "
            "reloaded. Save this model's state_dict with torch.save instead."
        )
    path = Path(path)
    config = dict(model.config)
    config["sha256"] = state_dict_sha256(model)
    payload = {
        "format": _FORMAT,
        "version": _VERSION,
        "config": json.dumps(config, sort_keys=True),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> GlomClassifier | GlomSegmenter:
    """Load a kgl checkpoint with ``torch.load(weights_only=True)``: no pickled code is ever executed.

    The network is rebuilt from the config without downloading weights (a torchvision backbone for
    ``task="classify"``, an smp architecture by name for ``task="segment"``), then the saved
    ``state_dict`` is loaded strictly.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:  # OSError: truncated zip
        raise ValueError(
            f"Refusing to load {str(path)!r}: it is not a kgl checkpoint that loads with weights_only=True "
            f"(pickled objects or a corrupt file). Re-save the model with kgl.models.save_checkpoint. "
            f"({torch_error_summary(e)})"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a kgl checkpoint (expected a dict with format={_FORMAT!r}); a bare torchvision "
            "state_dict can be wrapped with kgl.models.build_model(...).load_state_dict(...)."
        )
    if int(payload.get("version", 0)) > _VERSION:
        raise ValueError(f"{str(path)!r} was written by a newer kgl (checkpoint version {payload['version']}).")
    try:
        config = json.loads(payload["config"])
        sha = config.pop("sha256", None)
        extra = {k: v for k, v in config.items() if k not in _BUILD_KEYS}
        model = (
            rebuild_segmenter(config)
            if config.get("task") == "segment"
            else build_model(
                config["backbone"],
                weights=None,
                class_names=tuple(config["class_names"]),
                patch_um=config["patch_um"],
                input_size=config["input_size"],
                threshold=config["threshold"],
                **extra,
            )
        )
    except (KeyError, TypeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise ValueError(
            f"Checkpoint {str(path)!r} has an unusable config ({type(e).__name__}: {msg}); re-save the model with "
            "kgl.models.save_checkpoint."
        ) from e
    model.config.update(config)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"Checkpoint {str(path)!r} does not match its declared backbone {config['backbone']!r} with "
            f"{len(config['class_names'])} classes ({torch_error_summary(e)}); it was edited or written by other "
            "code. Re-save the model with kgl.models.save_checkpoint."
        ) from e
    if sha is not None and state_dict_sha256(model) != sha:
        raise ValueError(f"Checkpoint {str(path)!r} is corrupt: its parameters do not match the recorded sha256.")
    logger.debug("loaded %s (%s)", path, config["backbone"])
    return model


_BUILD_KEYS = {"backbone", "weights", "class_names", "patch_um", "input_size", "threshold", "num_features"}
