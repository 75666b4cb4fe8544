"""Test helpers: tiny synthetic Visium data and tiny real models (imported by conftest and tests)."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from kgl._utils import SPOT_DIAMETER_FULLRES_UM

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _setup_torch_home() -> None:
    """Offline ImageNet weights: link the shared torchvision checkpoint into a private TORCH_HOME."""
    weights = SHARED / "weights"
    if "TORCH_HOME" in os.environ or not weights.is_dir():
        return
    home = Path(__file__).resolve().parents[1] / ".pytest_cache" / "torch"
    ckpt = home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    for f in weights.glob("*.pth"):
        if not (ckpt / f.name).exists():
            (ckpt / f.name).symlink_to(f)
    os.environ["TORCH_HOME"] = str(home)


_setup_torch_home()


def has_mobilenet_weights() -> bool:
    home = Path(os.environ.get("TORCH_HOME", "~/.cache/torch")).expanduser()
    return (home / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth").exists()


def hex_grid(width: float, height: float, pitch: float) -> np.ndarray:
    """Visium-like hexagonal spot centres (x, y) covering a width x height frame."""
    pts = []
    dy = pitch * np.sqrt(3) / 2
    for r, y in enumerate(np.arange(pitch / 2, height, dy)):
        for x in np.arange(pitch / 2 + (pitch / 2) * (r % 2), width, pitch):
            pts.append((x, y))
    return np.asarray(pts, dtype=float)


def make_visium(
    *,
    width: int = 1200,
    height: int = 1000,
    mpp: float = 0.5,
    library_id: str = "lib",
    seed: int = 0,
    hires_scalef: float = 1.0,
) -> ad.AnnData:
    """A hex-grid Visium AnnData (100 µm pitch) over a noisy pink image, in the squidpy layout."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[...] = (230, 190, 215)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    xy = hex_grid(width, height, 100.0 / mpp)
    names = [f"{library_id}-s{i:04d}" for i in range(len(xy))]
    adata = ad.AnnData(obs=pd.DataFrame({"in_tissue": 1}, index=names))
    adata.obsm["spatial"] = xy
    if hires_scalef != 1.0:
        import cv2

        img = cv2.resize(img, (round(width * hires_scalef), round(height * hires_scalef)), interpolation=cv2.INTER_AREA)
    adata.uns["spatial"] = {
        library_id: {
            "images": {"hires": img},
            "scalefactors": {
                "tissue_hires_scalef": hires_scalef,
                "spot_diameter_fullres": SPOT_DIAMETER_FULLRES_UM / mpp,
            },
            "metadata": {},
        }
    }
    return adata


def center_red_model(window: float = 0.25):
    """A real (tiny, hand-set) GlomClassifier: 'glomerulus' when the patch centre lacks green (red marker).

    Its backbone pools each channel over the central ``window`` fraction of the patch, so its
    calls reveal exactly where patches were cut.
    """
    import torch
    from torch import nn

    from kgl.models import GlomClassifier, model_config

    class CenterPool(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, w = x.shape[-2:]
            dh, dw = max(1, int(h * window / 2)), max(1, int(w * window / 2))
            return x[..., h // 2 - dh : h // 2 + dh, w // 2 - dw : w // 2 + dw].mean(dim=(-2, -1))

    cfg = model_config("center_pool", patch_um=60.0, input_size=32, head_trained=True)
    model = GlomClassifier(CenterPool(), 3, cfg)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.weight[1, 1] = -3.0  # low green -> glomerulus
    return model


def tiny_cnn(num_features: int = 8, seed: int = 0):
    """A tiny random conv net as a GlomClassifier (fast, deterministic)."""
    import torch
    from torch import nn

    from kgl.models import GlomClassifier, model_config

    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Conv2d(3, num_features, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    cfg = model_config("tiny_cnn", patch_um=110.0, input_size=32, head_trained=True)
    model = GlomClassifier(backbone, num_features, cfg)
    torch.manual_seed(seed + 1)
    nn.init.normal_(model.head.weight, std=0.5)
    return model


def plant_markers(adata: ad.AnnData, spots: list[int], radius_um: float = 15.0, img_key: str = "hires") -> None:
    """Paint red disks at the given spots' centres into the library's image (in place)."""
    lib = next(iter(adata.uns["spatial"]))
    meta = adata.uns["spatial"][lib]
    img = meta["images"][img_key]
    sf = meta["scalefactors"]
    scale = sf.get(f"tissue_{img_key}_scalef", 1.0)
    mpp = SPOT_DIAMETER_FULLRES_UM / sf["spot_diameter_fullres"]
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    for i in spots:
        x, y = adata.obsm["spatial"][i] * scale
        r = radius_um / mpp * scale
        img[(xx - x) ** 2 + (yy - y) ** 2 <= r**2] = (220, 0, 0)


def classified_visium(marked: list[int], **kw) -> ad.AnnData:
    """``make_visium(**kw)`` with red disks under ``marked``, classified by :func:`center_red_model`."""
    import kgl

    adata = make_visium(**kw)
    plant_markers(adata, marked, radius_um=12)
    kgl.tl.classify_spots(adata, center_red_model(), show_progress=False)
    return adata


def two_library_visium(marked: list[int]) -> ad.AnnData:
    """Two classified libraries ``A`` and ``B`` (``obs["library_id"]``) in one AnnData."""
    a, b = classified_visium(marked, library_id="A"), classified_visium(marked, library_id="B", seed=1)
    both = ad.concat({"A": a, "B": b}, label="library_id", uns_merge="unique")
    both.uns["glomerulus"] = a.uns["glomerulus"]
    return both


def red_fraction_segmenter(mpp: float = 2.0, input_size: int = 64):
    """A real (tiny, hand-set) GlomSegmenter whose map is the share of red in each map pixel.

    Its logit is ``logit(r)`` with ``r = (R - G - 40) / 180`` clipped to (0, 1): 1 on red (220, 0, 0),
    0 on :func:`make_visium`'s pink (230, 190, 215; noise aside), so a map pixel's probability is the
    fraction of it painted red and disk means of the map can be checked against exact disk coverage. Its
    ``encoder`` (a strided average) gives 3-channel features at 1/32 of the input.
    """
    import torch
    from torch import nn

    from kgl.models import GlomSegmenter, model_config

    class Encoder(nn.Module):
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [x, nn.functional.avg_pool2d(x, 32)]

    class RedFraction(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = Encoder()
            self.gain = nn.Parameter(torch.ones(1))  # a state dict to hash and save

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            red = ((x[:, 0:1] - x[:, 1:2] - 40 / 255) * 255 / 180 * self.gain).clamp(1e-6, 1 - 1e-6)  # x in [0, 1]
            return torch.log(red) - torch.log1p(-red)

    cfg = model_config("red_fraction", patch_um=mpp * input_size, input_size=input_size, mean=[0.0] * 3,
                       std=[1.0] * 3, head_trained=True, task="segment", arch="Unet")  # fmt: skip
    return GlomSegmenter(RedFraction(), cfg)


def paint_disk(adata: ad.AnnData, center_um: tuple[float, float], radius_um: float, img_key: str = "hires") -> None:
    """Paint one red disk (a 'glomerulus', (220, 0, 0)) into the library's image, centre and radius in µm."""
    lib = next(iter(adata.uns["spatial"]))
    meta = adata.uns["spatial"][lib]
    img = meta["images"][img_key]
    sf = meta["scalefactors"]
    scale = sf.get(f"tissue_{img_key}_scalef", 1.0)
    mpp = SPOT_DIAMETER_FULLRES_UM / sf["spot_diameter_fullres"]
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    cx, cy = (c / mpp * scale for c in center_um)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= (radius_um / mpp * scale) ** 2] = (220, 0, 0)
