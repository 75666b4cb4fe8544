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


#: Trained glomerulus models. ``kgl-glom-v1`` is produced by ``kgl train`` (kgl.tl.train_default_model)
#: into the model cache; it is not hosted yet (``url=None``), so online users train it once too.
REGISTRY: dict[str, ModelEntry] = {
    "kgl-glom-v1": ModelEntry(
        name="kgl-glom-v1",
        filename="kgl-glom-v1.pt",
        url=None,
        sha256=None,
        description="MobileNet_V2 (ImageNet) fine-tuned on Masson/PASM/PAS glomeruli, 110-µm patches at 112 px",
    ),
}


def available_models() -> list[str]:
    """Names of the registered trained models."""
    return sorted(REGISTRY)


def model_dir() -> Path:
    """Folder where trained models are cached (``<settings.cachedir>/models``)."""
    return Path(settings.cachedir) / "models"


def fetch_model(name: str) -> Path:
    """Local path of a registered model: the cached file, or a sha256-checked download via pooch."""
    if name not in REGISTRY:
        raise KeyError(f"Unknown model {name!r}. Registered: {available_models()}.")
    entry = REGISTRY[name]
    local = model_dir() / entry.filename
    if local.exists() and entry.url is None:
        return local
    if entry.url is None:
        raise FileNotFoundError(
            f"Model {name!r} is not in the model cache ({str(local)!r}) and not published for download yet. "
            "Train it on this machine with `kgl train` (kgl.tl.train_default_model; about 11 minutes on a 2-core "
            "CPU), or pass a checkpoint path / torchvision backbone as model=."
        )
    if entry.sha256 is None:
        raise ValueError(f"Registry entry {name!r} has a URL but no sha256: kgl downloads only checksummed files.")
    from kgl._utils import pooch_download

    return pooch_download(
        entry.url,
        entry.sha256,
        local,
        what=f"model {name!r}",
        fallback="pass a local checkpoint path as model=",
    )
