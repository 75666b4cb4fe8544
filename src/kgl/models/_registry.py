"""Registry of trained kgl glomerulus models: name → file, URL and sha256 (torchvision-style)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from kgl._settings import settings
from kgl.models._config import Preprocessing

__all__ = [
    "DEFAULT_MODEL",
    "PATCH_MODEL",
    "REGISTRY",
    "ModelEntry",
    "ModelRegistry",
    "available_models",
    "fetch_model",
    "model_dir",
]

#: Registry name of the model :func:`kgl.tl.classify_spots` uses when no ``model`` is given
#: (``REGISTRY["DEFAULT"]``, ``REGISTRY.DEFAULT``): the dense glomerulus map, which beat the patch
#: classifier on held-out H&E and the PAS tiles beyond the seed spread (docs/training.md).
DEFAULT_MODEL = "kgl-glom-map-v1"
#: The best patch classifier: the recipe :func:`kgl.recipes.train_default_model` and
#: :func:`kgl.recipes.evaluate_recipe` start from (:data:`kgl.recipes.DEFAULT_RECIPE`).
PATCH_MODEL = "kgl-glom-v2"


@dataclass(frozen=True)
class ModelEntry:
    """A trained model: where to download it, how to verify it, and the recipe that trains it.

    Attributes
    ----------
    name, filename
        Registry name and file name in the model cache.
    url, sha256
        Download address and checksum (``None``: not hosted; ``kgl train --name NAME`` trains it).
    description
        One line for listings.
    recipe
        The training recipe (:func:`kgl.recipes.train_default_model` entries) that produces this model,
        like torchvision's weights enums carry their transforms: ``kgl train --name NAME`` rebuilds it.
    protocol
        The recipe's leave-one-case-out evaluation (:func:`kgl.recipes.evaluate_recipe`, mean ± sd over
        seeds, per held-out set), copied into the model card: the model itself trains on every case.

    """

    name: str
    filename: str
    url: str | None
    sha256: str | None
    description: str = ""
    recipe: Mapping[str, Any] = field(default_factory=dict)
    protocol: Mapping[str, Any] = field(default_factory=dict)

    @property
    def preprocessing(self) -> Preprocessing:
        """The input contract the recipe trains (patch µm, input px, ImageNet normalisation).

        Known before any download, as torchvision's ``Weights.transforms``; the trained checkpoint's
        :attr:`GlomClassifier.spec` carries the same plus its calibration.
        """
        return Preprocessing(
            patch_um=float(self.recipe["patch_um"]),
            input_size=int(self.recipe["input_size"]),
            greyscale=self.recipe.get("augment") == "grey",
        )


_BASE_RECIPE: dict[str, Any] = {
    "backbone": "mobilenet_v2",
    "weights": "IMAGENET1K_V1",
    "patch_um": 110.0,
    "input_size": 224,
    "epochs": 6,
    "batch_size": 48,
    "lr": 2e-3,
    "backbone_lr_factor": 0.25,
    "freeze_epochs": 1,
    "balance": "sampler",
    "augment": "hed+color",
    "scale_jitter": (0.8, 1.25),
    "patience": 3,
    "select": "val_auroc",
    "he_repeat": 0,
}

#: The recipe of the dense glomerulus map (:func:`kgl.recipes.train_map_model`, :func:`kgl.tl.train_map`):
#: ``patch_um`` is a training crop's field of view (``mpp × input_size``), as :attr:`ModelEntry.preprocessing` reads it.
_MAP_RECIPE: dict[str, Any] = {
    "task": "segment",
    "arch": "Unet",
    "backbone": "mobilenet_v2",
    "weights": "IMAGENET1K_V1",
    "mpp": 1.0,
    "input_size": 256,
    "patch_um": 256.0,
    "epochs": 5,
    "steps_per_epoch": 100,
    "batch_size": 12,
    "lr": 1e-3,
    "encoder_lr_factor": 0.5,
    "glom_share": 0.5,
    "augment": "hed+color",
    "scale_jitter": (0.8, 1.25),
    "select": "val_loss",
    "he_repeat": 3,
}

#: Leave-one-case-out evaluation of the kgl-glom-v2 recipe (``kgl evaluate-recipe --out DIR --seeds 0 1 2``
#: with this recipe; docs/training.md): per held-out set, (mean, sd) over seeds; validation threshold.
_PROTOCOL_V2: dict[str, Any] = {
    "seeds": (0, 1, 2),
    "machine": "2-core AMD EPYC, AVX2 only, fp32",
    "results": {
        "H&E, leave one case out (spots)": {"roc_auc": (0.970, 0.012), "f1": (0.726, 0.031), "ece": (0.036, 0.008)},
        "H&E case C002 (held out)": {"roc_auc": (0.997, 0.001), "f1": (0.899, 0.017), "ece": (0.029, 0.012)},
        "H&E case C004 (held out)": {"roc_auc": (0.942, 0.024), "f1": (0.552, 0.046), "ece": (0.043, 0.013)},
        "PAS tiles, another site (spots)": {"roc_auc": (0.935, 0.005), "f1": (0.608, 0.052), "ece": (0.041, 0.019)},
        "held-out multistain biopsies (patches)": {
            "roc_auc": (0.983, 0.012),
            "f1": (0.869, 0.031),
            "ece": (0.023, 0.006),
        },
    },
}


#: Leave-one-case-out evaluation of the kgl-glom-map-v1 recipe (``scripts/map_protocol.py train|score``:
#: :func:`kgl.recipes.train_map_model` per seed and held-out H&E case, :func:`kgl.recipes.score_map_model`):
#: spot level, the map's calibrated fraction at the validation threshold; (mean, sd) over seeds.
_PROTOCOL_MAP: dict[str, Any] = {
    "seeds": (0, 1, 2),
    "machine": "2-core AMD EPYC with AVX512-BF16, bf16 autocast",
    "results": {
        "H&E, leave one case out (spots)": {"roc_auc": (0.998, 0.001), "f1": (0.936, 0.007), "ece": (0.008, 0.004)},
        "H&E case C002 (held out)": {"roc_auc": (1.000, 0.000), "f1": (0.994, 0.011), "ece": (0.007, 0.004)},
        "H&E case C004 (held out)": {"roc_auc": (0.997, 0.002), "f1": (0.879, 0.012), "ece": (0.009, 0.005)},
        "PAS tiles, another site (spots)": {"roc_auc": (0.989, 0.002), "f1": (0.855, 0.004), "ece": (0.017, 0.001)},
        "held-out multistain biopsies (spots)": {
            "roc_auc": (0.988, 0.013),
            "f1": (0.974, 0.009),
            "ece": (0.015, 0.004),
        },
    },
}


class ModelRegistry(MutableMapping[str, ModelEntry]):
    """Name → :class:`ModelEntry`, with ``"DEFAULT"`` as an alias of the default model.

    Like a torchvision ``Weights`` enum, whose ``DEFAULT`` is an alias and not a member of its own:
    ``REGISTRY["DEFAULT"]`` and ``REGISTRY.DEFAULT`` give the entry of :data:`DEFAULT_MODEL`, ``"DEFAULT"``
    is ``in`` the registry, and iterating (``sorted(REGISTRY)``, :func:`available_models`) lists each
    model once, by its real name.
    """

    ALIAS = "DEFAULT"

    def __init__(self, entries: Mapping[str, ModelEntry], *, default: str) -> None:
        self._entries = dict(entries)
        if default not in self._entries:
            raise KeyError(f"default model {default!r} is not among {sorted(self._entries)}.")
        self._default = default

    def resolve(self, name: str) -> str:
        """The real name of ``name`` (``"DEFAULT"`` → the default model's name); ``KeyError`` if unknown."""
        name = self._default if name == self.ALIAS else name
        if name not in self._entries:
            raise KeyError(f"Unknown model {name!r}. Registered: {sorted(self._entries)} (or {self.ALIAS!r}).")
        return name

    @property
    def DEFAULT(self) -> ModelEntry:  # torchvision spells it Weights.DEFAULT
        """The default model's entry."""
        return self._entries[self._default]

    def __getitem__(self, name: str) -> ModelEntry:
        return self._entries[self.resolve(name)]

    def __contains__(self, name: object) -> bool:
        return name == self.ALIAS or name in self._entries

    def __setitem__(self, name: str, entry: ModelEntry) -> None:
        if name == self.ALIAS:
            raise KeyError(f"{self.ALIAS!r} is an alias of the default model ({self._default!r}), not a name.")
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        if self.resolve(name) == self._default:
            raise KeyError(f"{self._default!r} is the default model and cannot be removed.")
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"ModelRegistry({sorted(self._entries)}, DEFAULT={self._default!r})"


#: Trained glomerulus models, produced by ``kgl train --name NAME`` (kgl.recipes.train_default_model with the
#: entry's recipe) into the model cache; not hosted yet (``url=None``), so online users train them once too.
REGISTRY = ModelRegistry({
    "kgl-glom-v1": ModelEntry(
        name="kgl-glom-v1",
        filename="kgl-glom-v1.pt",
        url=None,
        sha256=None,
        description="MobileNet_V2 (ImageNet) fine-tuned on Masson/PASM/PAS glomeruli, 110-µm patches at 224 px; "
        "no H&E in training (at chance on H&E)",
        recipe=MappingProxyType(dict(_BASE_RECIPE)),
    ),
    "kgl-glom-v2": ModelEntry(
        name="kgl-glom-v2",
        filename="kgl-glom-v2.pt",
        url=None,
        sha256=None,
        description="MobileNet_V2 (ImageNet) fine-tuned on Masson/PASM/PAS glomeruli plus 2 H&E biopsy cases "
        "(patches repeated 3x), 110-µm patches at 112 px, 4 epochs, epoch kept by validation loss",
        recipe=MappingProxyType({**_BASE_RECIPE, "input_size": 112, "epochs": 4, "he_repeat": 3, "select": "val_loss"}),
        protocol=MappingProxyType(_PROTOCOL_V2),
    ),
    "kgl-glom-map-v1": ModelEntry(
        name="kgl-glom-map-v1",
        filename="kgl-glom-map-v1.pt",
        url=None,
        sha256=None,
        description="Glomerulus map: smp U-Net on MobileNet_V2 (ImageNet) trained on the polygon masks of the "
        "Masson/PASM/PAS glomeruli plus 2 H&E biopsy cases (repeated 3x), 1 µm/px, 256-px crops, BCE + Dice; "
        "per-spot fraction = the map's mean over the 55-µm disk",
        recipe=MappingProxyType(dict(_MAP_RECIPE)),
        protocol=MappingProxyType(_PROTOCOL_MAP),
    ),
}, default=DEFAULT_MODEL)  # fmt: skip


def available_models() -> list[str]:
    """Names of the registered trained models."""
    return sorted(REGISTRY)


def model_dir() -> Path:
    """Folder where trained models are cached (``<settings.cachedir>/models``)."""
    return Path(settings.cachedir) / "models"


def _recipe_changes(entry: ModelEntry, path: Path) -> dict[str, tuple[Any, Any]]:
    """Settings of the registry's recipe that changed since a cached, locally trained checkpoint was made.

    A model trained here before the recipe changed (a kgl upgrade) keeps its name in the cache; this
    tells it apart. The checkpoint records the registry's recipe of its day
    (``config["training"]["registry_recipe"]``, written by :func:`kgl.recipes.train_model`): the settings
    a user overrode for that run (``kgl train --epochs 1``) are not a change of recipe. Checkpoints from
    before that record are compared by the settings they ran with. The file is memory-mapped.
    """
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        cfg = ckpt["config"]
        training = (json.loads(cfg) if isinstance(cfg, str) else cfg).get("training") or {}
    except Exception:  # an unreadable file: load_checkpoint gives the real error
        return {}
    then = training.get("registry_recipe") or training.get("recipe") or {}

    def norm(v: Any) -> Any:
        return list(v) if isinstance(v, (list, tuple)) else v

    return {k: (then[k], v) for k, v in entry.recipe.items()
            if k in then and k != "seed" and norm(then[k]) != norm(v)}  # fmt: skip


def fetch_model(name: str) -> Path:
    """Local path of a registered model: the cached file, or a sha256-checked download via pooch."""
    name = REGISTRY.resolve(name)  # KeyError naming the registered models
    entry = REGISTRY[name]
    local = model_dir() / entry.filename
    stale = _recipe_changes(entry, local) if local.exists() and entry.url is None else {}
    if local.exists() and entry.url is None and not stale:
        return local
    if stale:
        changes = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in sorted(stale.items()))
        raise FileNotFoundError(
            f"The cached {name!r} ({str(local)!r}) was trained with an older recipe ({changes}): kgl will not use it "
            f"as {name!r}. Retrain it with `kgl train --name {name}`, or pass the file as model= to use it anyway."
        )
    if entry.url is None:
        raise FileNotFoundError(
            f"Model {name!r} is not in the model cache ({str(local)!r}) and not published for download yet. "
            f"Train it on this machine with `kgl train --name {name}` (kgl.recipes.train_default_model(name={name!r}); "
            "minutes on a 2-core CPU, see docs/training.md), or pass a checkpoint path / torchvision backbone as "
            "model=."
        )
    if entry.sha256 is None:
        raise ValueError(f"Registry entry {name!r} has a URL but no sha256: kgl downloads only checksummed files.")
    from kgl._files import pooch_download

    return pooch_download(
        entry.url,
        entry.sha256,
        local,
        what=f"model {name!r}",
        fallback="pass a local checkpoint path as model=",
    )
