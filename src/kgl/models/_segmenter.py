"""Glomerulus segmenters: segmentation-models-pytorch architectures on torchvision ImageNet encoders.

A :class:`GlomSegmenter` maps an RGB tile to one glomerulus logit per pixel (the dense map). It
carries the same JSON config as :class:`~kgl.models.GlomClassifier`, with ``task="segment"`` and the
smp architecture and encoder names, so a checkpoint rebuilds it by name (``smp.create_model``) and
every caller reads one typed record (:class:`~kgl.models.ModelConfig`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kgl.models._config import ModelConfig
from kgl.models._model import CLASS_NAMES, DEFAULT_WEIGHTS, _pretrained, _resolve_weights, model_config, seeded

__all__ = ["MAP_ARCHS", "GlomSegmenter", "build_segmenter"]

#: segmentation-models-pytorch architectures kgl builds (``smp.create_model(arch, ...)``): those whose
#: encoder keeps stride 32, which the map's tiles and pooled features assume (DeepLabV3+ dilates to 16).
MAP_ARCHS = ("Unet", "FPN", "UnetPlusPlus", "Linknet")
#: Encoders whose smp class subclasses the torchvision network, so torchvision's weights load as they are.
_TORCHVISION_ENCODERS = ("mobilenet_v2", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class GlomSegmenter(nn.Module):
    """A segmentation network giving one glomerulus logit per pixel, with kgl's model config.

    ``net`` maps ``(B, 3, H, W)`` to ``(B, 1, H, W)`` logits; ``net.encoder(x)[-1]`` (an smp
    encoder's deepest features) gives :meth:`forward_features`, the embedding pooled per spot.
    """

    def __init__(self, net: nn.Module, config: dict[str, Any]) -> None:
        super().__init__()
        self.net = net
        self.config = dict(config)
        self.config["task"] = "segment"

    @property
    def spec(self) -> ModelConfig:
        """The typed record of :attr:`config` (:class:`kgl.models.ModelConfig`)."""
        return ModelConfig.from_dict(self.config)

    @property
    def mpp(self) -> float:
        """µm per pixel of the map (and of the model's input)."""
        return self.spec.mpp

    @property
    def feature_channels(self) -> int:
        """Channels of :meth:`forward_with_features`' features (the encoder's deepest stage)."""
        channels = getattr(self.net.encoder, "out_channels", None)  # smp encoders say it
        if channels is not None:
            return int(channels[-1])
        p = next(self.parameters(), None)
        x = torch.zeros(1, 3, 32, 32, device=None if p is None else p.device)
        with torch.inference_mode():
            return int(self.forward_with_features(x)[1].shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Glomerulus logits ``(B, 1, H, W)`` (``H``, ``W`` multiples of 32)."""
        return self.net(x)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, 1, H, W)`` and the encoder's deepest features ``(B, C, H/32, W/32)``, in one pass."""
        net = self.net
        if hasattr(net, "decoder") and hasattr(net, "segmentation_head"):  # smp: run the encoder once
            feats = net.encoder(x)
            return net.segmentation_head(net.decoder(feats)), feats[-1]
        return net(x), net.encoder(x)[-1]


def build_segmenter(
    arch: str = "Unet",
    encoder: str = "mobilenet_v2",
    weights: str | None = "DEFAULT",
    *,
    mpp: float = 2.0,
    input_size: int = 256,
    threshold: float = 0.5,
    seed: int = 0,
    **config: Any,
) -> GlomSegmenter:
    """Build an smp segmenter by name with torchvision's ImageNet weights in its encoder.

    Parameters
    ----------
    arch
        segmentation-models-pytorch architecture, one of :data:`MAP_ARCHS`.
    encoder
        A torchvision-derived smp encoder (``mobilenet_v2``, ``resnet50``, ...): smp's class
        subclasses the torchvision network, so the weights load the standard torchvision way
        (``$TORCH_HOME``, sha256-checked, ``weights_only=True``; :func:`kgl.models.build_model`).
    weights
        Member of the encoder's torchvision weights enum, ``"DEFAULT"`` (kgl's choice,
        :data:`kgl.models.DEFAULT_WEIGHTS`) or ``None`` (random encoder).
    mpp
        µm per pixel the model sees (the map's resolution).
    input_size
        Side in px of the training crops (a multiple of 32); ``patch_um = mpp * input_size`` is
        the field of view.
    threshold
        Call threshold on the calibrated spot probability (fitted on validation spots by training).
    seed
        Seeds the decoder's initialisation.
    config
        Extra JSON-able entries stored in ``model.config``.

    """
    import segmentation_models_pytorch as smp

    if arch not in MAP_ARCHS:
        raise ValueError(f"Unknown map architecture {arch!r}; use one of {MAP_ARCHS}.")
    if encoder.startswith("timm:"):
        return _build_timm_segmenter(arch, encoder, weights, mpp=mpp, input_size=input_size, threshold=threshold,
                                     seed=seed, **config)  # fmt: skip
    if encoder not in _TORCHVISION_ENCODERS:
        raise ValueError(
            f"Encoder {encoder!r} is not one whose ImageNet weights kgl loads through torchvision; use one of "
            f"{_TORCHVISION_ENCODERS}, or a timm encoder as 'timm:<name>'."
        )
    if int(input_size) % 32 or input_size < 32:
        raise ValueError(f"input_size must be a positive multiple of 32 px (the encoder's stride), got {input_size!r}.")
    if not (float(mpp) > 0):
        raise ValueError(f"mpp must be a positive µm/px, got {mpp!r}.")
    if weights == "DEFAULT":
        weights = DEFAULT_WEIGHTS.get(encoder, "DEFAULT")
    w = _resolve_weights(encoder, weights)
    with seeded(seed):
        net = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=3, classes=1)
        norm: dict[str, Any] = {}
        if w is not None:
            tv = _pretrained(encoder, w)  # weights_only=True, as the classifiers
            net.encoder.load_state_dict(tv.state_dict())  # smp's encoder drops the classifier keys itself
            t = w.transforms()
            norm = {"mean": list(t.mean), "std": list(t.std)}
    cfg = model_config(
        encoder,
        weights=None if w is None else w.name,
        class_names=CLASS_NAMES,
        patch_um=float(mpp) * int(input_size),
        input_size=int(input_size),
        threshold=threshold,
        task="segment",
        arch=arch,
        **{**norm, **config},
    )
    return GlomSegmenter(net, cfg)


def rebuild_segmenter(config: dict[str, Any]) -> GlomSegmenter:
    """An untrained :class:`GlomSegmenter` of a stored config's architecture (no weights downloaded)."""
    import segmentation_models_pytorch as smp

    arch, encoder = config.get("arch"), str(config.get("backbone"))
    if arch not in MAP_ARCHS:
        raise ValueError(f"unknown map architecture {arch!r} (known: {MAP_ARCHS})")
    name = "tu-" + encoder[len("timm:") :] if encoder.startswith("timm:") else encoder
    net = smp.create_model(arch, encoder_name=name, encoder_weights=None, in_channels=3, classes=1)
    return GlomSegmenter(net, dict(config))


def _build_timm_segmenter(arch: str, encoder: str, weights: str | None, *, mpp: float, input_size: int,
                          threshold: float, seed: int, **config: Any) -> GlomSegmenter:  # fmt: skip
    """:func:`build_segmenter` on a timm encoder: smp's ``tu-<name>`` (timm's ``features_only`` network).

    Pretrained weights (``weights`` not ``None``) load inside smp through :func:`timm.create_model`, timm's
    standard way; preprocessing (mean, std) is the timm model's pretrained config.
    """
    import segmentation_models_pytorch as smp
    import timm
    from timm.data import resolve_data_config

    name = encoder[len("timm:") :]
    if int(input_size) % 32 or input_size < 32:
        raise ValueError(f"input_size must be a positive multiple of 32 px (the encoder's stride), got {input_size!r}.")
    with seeded(seed):
        net = smp.create_model(arch, encoder_name=f"tu-{name}", encoder_weights=None if weights is None else "imagenet",
                               in_channels=3, classes=1)  # fmt: skip
    timm_net = getattr(net.encoder, "model", None)  # smp's TimmUniversalEncoder wraps the timm network
    if timm_net is not None:
        dc = resolve_data_config({}, model=timm_net)
    else:
        dc = {"mean": timm.data.IMAGENET_DEFAULT_MEAN, "std": timm.data.IMAGENET_DEFAULT_STD}
    norm = {"mean": list(dc["mean"]), "std": list(dc["std"])}
    cfg = model_config(encoder, weights=None if weights is None else "timm:pretrained", class_names=CLASS_NAMES,
                       patch_um=float(mpp) * int(input_size), input_size=int(input_size), threshold=threshold,
                       task="segment", arch=arch, **{**norm, **config})  # fmt: skip
    return GlomSegmenter(net, cfg)
