"""Registry of trained kgl glomerulus models: name → file, URL and sha256 (torchvision-style)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kgl._settings import settings

__all__ = ["REGISTRY", "ModelEntry", "available_models", "fetch_model"]


@dataclass(frozen=True)
class ModelEntry:
    """A trained model: where to download it and how to verify it."""

    name: str
    filename: str
    url: str | None
    sha256: str | None
    description: str = ""


#: Trained models, filled by the training work (none is published yet).
REGISTRY: dict[str, ModelEntry] = {}


def available_models() -> list[str]:
    """Names of the registered trained models."""
    return sorted(REGISTRY)


def model_dir() -> Path:
    """Folder where trained models are cached (``<settings.cachedir>/models``)."""
    return Path(settings.cachedir) / "models"


def fetch_model(name: str) -> Path:
    """Local path of a registered model: the cached file, or a sha256-checked download via pooch."""
    entry = REGISTRY[name]
    local = model_dir() / entry.filename
    if local.exists() and entry.url is None:
        return local
    if entry.url is None:
        raise FileNotFoundError(f"Model {name!r} is not cached at {str(local)!r} and has no download URL.")
    import pooch

    return Path(
        pooch.retrieve(
            entry.url,
            known_hash=None if entry.sha256 is None else f"sha256:{entry.sha256}",
            fname=entry.filename,
            path=model_dir(),
            progressbar=False,
        )
    )
