"""What a trained kgl model *is*, as one typed record (no torch): preprocessing, calibration, classes.

Imitates torchvision's weights records (``Weights(url, transforms=..., meta=...)``): callers ask the
record for the patch side, input size, normalisation, calibration and classes instead of reading a
nested dict. A checkpoint still stores the flat JSON dict (:meth:`ModelConfig.to_dict`), so every
existing checkpoint loads unchanged (:meth:`ModelConfig.from_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from kgl._validators import check_int

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TASKS", "Calibration", "ModelConfig", "Preprocessing"]

#: What a kgl model does: ``"classify"`` one patch per spot (:class:`~kgl.models.GlomClassifier`) or
#: ``"segment"`` a dense glomerulus map (:class:`~kgl.models.GlomSegmenter`).
TASKS = ("classify", "segment")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The flat config keys the record reads into typed fields; every other key is kept in ``extra``.
_TYPED_KEYS = frozenset(
    {"name", "backbone", "weights", "class_names", "positive_class", "patch_um", "input_size", "mean", "std",
     "greyscale", "threshold", "temperature", "logit_bias", "head_trained", "training", "metrics", "task", "arch"}
)  # fmt: skip


def _frozen(x: Any) -> Any:
    if isinstance(x, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in x.items()})
    return x


def _plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return [_plain(v) for v in x]
    return x


@dataclass(frozen=True)
class Preprocessing:
    """How a patch becomes the model's input: ``patch_um`` µm resized to ``input_size`` px, normalised.

    ``greyscale``: the model was trained on greyscale patches (``augment="grey"``), so its inputs are
    converted too. ``mean``/``std`` are per RGB channel on ``[0, 1]`` values (torchvision's).
    """

    patch_um: float
    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    greyscale: bool = False

    def __post_init__(self) -> None:
        if not self.patch_um > 0:
            raise ValueError(f"patch_um must be > 0 µm, got {self.patch_um!r}.")
        check_int(self.input_size, "input_size", what="px")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean/std must be 3 values per RGB channel (std > 0), got {self.mean} / {self.std}.")


@dataclass(frozen=True)
class Calibration:
    """Platt scaling of the logit margin and the decision threshold, both fitted on validation data.

    ``p = sigmoid((l_pos - l_neg) / temperature + logit_bias)`` (:func:`kgl.tl.calibrated_proba`);
    a spot is called glomerulus when ``p > threshold``.
    """

    temperature: float = 1.0
    logit_bias: float = 0.0
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}.")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold!r}.")


@dataclass(frozen=True)
class ModelConfig:
    """The contract of a trained kgl model, read by classification, adaptation and the model card.

    Attributes
    ----------
    backbone, weights
        The torchvision architecture and the ImageNet weights enum member it started from.
    class_names, positive_class
        Head classes (negative first) and the one that is called.
    preprocessing, calibration
        :class:`Preprocessing` and :class:`Calibration`.
    head_trained
        ``False`` for an ImageNet backbone with a new head (every probability 0.5).
    name
        Registry or run name (``None``: an untrained backbone).
    training, metrics
        Training summary (recipe, epochs, class counts, ...) and held-out metrics, read-only.
    extra
        Every other key of the stored config (protocol, limitations, training data, sha256, ...).
    task
        ``"classify"`` (a patch classifier; every config written before maps existed) or
        ``"segment"`` (a dense map: ``preprocessing.patch_um`` is the training crop's field of view
        and ``patch_um / input_size`` the map's µm/px, :attr:`mpp`).
    arch
        The segmentation-models-pytorch architecture of a ``"segment"`` model (``"Unet"``, ...).

    """

    backbone: str
    weights: str | None
    class_names: tuple[str, ...]
    positive_class: str
    preprocessing: Preprocessing
    calibration: Calibration = field(default_factory=Calibration)
    head_trained: bool = False
    name: str | None = None
    training: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    metrics: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    task: str = "classify"
    arch: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}.")
        if len(self.class_names) != 2:
            raise ValueError(f"kgl calls two classes; the model has {list(self.class_names)}.")
        if self.positive_class not in self.class_names:
            raise ValueError(f"positive_class {self.positive_class!r} is not one of {list(self.class_names)}.")

    @property
    def positive_index(self) -> int:
        """Column of the positive class in the head's logits."""
        return self.class_names.index(self.positive_class)

    @property
    def negative_class(self) -> str:
        """The class that is not called."""
        return next(c for c in self.class_names if c != self.positive_class)

    @property
    def mpp(self) -> float:
        """µm per input pixel the model was trained at: ``patch_um / input_size`` (a map's resolution)."""
        return self.preprocessing.patch_um / self.preprocessing.input_size

    @property
    def augment(self) -> str:
        """The training augmentation (``"none"`` when the model was not trained by kgl)."""
        return str(self.training.get("recipe", {}).get("augment", "none"))

    @property
    def coarsest_training_mpp(self) -> float | None:
        """The coarsest µm/px among the images the model was trained on (``None``: not recorded).

        Images up to this coarse are inside the training distribution, however many times their
        patches are upsampled to ``input_size`` (:func:`kgl.im.check_resolution`).
        """
        rng = self.training.get("mpp_range")
        return float(rng[1]) if rng else None

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> ModelConfig:
        """The record of a stored config dict (``GlomClassifier.config``, a checkpoint's JSON).

        Older configs without ``positive_class``, ``greyscale`` or calibration keys read as they
        always did: the last class is positive, a model trained with ``augment="grey"`` is
        greyscale, no calibration (T = 1, b = 0).
        """
        try:
            classes = tuple(str(c) for c in cfg["class_names"])
            training = cfg.get("training") or {}
            augment = (training.get("recipe") or {}).get("augment")
            return cls(
                backbone=str(cfg["backbone"]),
                weights=cfg.get("weights"),
                class_names=classes,
                positive_class=str(cfg.get("positive_class", classes[-1])),
                preprocessing=Preprocessing(
                    patch_um=float(cfg["patch_um"]),
                    input_size=int(cfg["input_size"]),
                    mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
                    std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
                    greyscale=bool(cfg.get("greyscale", False)) or augment == "grey",
                ),
                calibration=Calibration(
                    temperature=float(cfg.get("temperature", 1.0)),
                    logit_bias=float(cfg.get("logit_bias", 0.0)),
                    threshold=float(cfg.get("threshold", 0.5)),
                ),
                head_trained=bool(cfg.get("head_trained", True)),
                name=cfg.get("name"),
                training=_frozen(training),
                metrics=_frozen(cfg.get("metrics") or {}),
                extra=_frozen({k: v for k, v in cfg.items() if k not in _TYPED_KEYS}),
                task=str(cfg.get("task", "classify")),
                arch=cfg.get("arch"),
            )
        except KeyError as e:
            raise KeyError(
                f"The model config lacks {e.args[0]!r}; a kgl model config has at least backbone, class_names, "
                f"patch_um and input_size. It has {sorted(cfg)}."
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON-able dict a checkpoint stores (:meth:`from_dict` reads it back equal)."""
        p, c = self.preprocessing, self.calibration
        out: dict[str, Any] = {
            "backbone": self.backbone,
            "weights": self.weights,
            "class_names": list(self.class_names),
            "positive_class": self.positive_class,
            "patch_um": float(p.patch_um),
            "input_size": int(p.input_size),
            "mean": list(p.mean),
            "std": list(p.std),
            "greyscale": bool(p.greyscale),
            "threshold": float(c.threshold),
            "temperature": float(c.temperature),
            "logit_bias": float(c.logit_bias),
            "head_trained": bool(self.head_trained),
        }
        if self.name is not None:
            out["name"] = self.name
        if self.task != "classify":
            out["task"] = self.task
        if self.arch is not None:
            out["arch"] = self.arch
        if self.training:
            out["training"] = _plain(self.training)
        if self.metrics:
            out["metrics"] = _plain(self.metrics)
        return {**out, **_plain(self.extra)}
