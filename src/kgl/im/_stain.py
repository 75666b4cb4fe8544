"""Macenko stain normalisation of a sample's patches, with the stains estimated once per sample."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from kgl._types import StainNorm, options

__all__ = ["STAIN_NORMS", "MacenkoNormalizer"]

#: Stain normalisations :func:`kgl.tl.classify_spots` accepts (``stain_norm=``).
STAIN_NORMS = options(StainNorm)


class MacenkoNormalizer:
    """Macenko et al. (2009) stain normalisation, fitted on a whole sample rather than per patch.

    :meth:`fit` estimates the sample's two stain vectors and their 99th-percentile concentrations
    once, with torchstain's ``TorchMacenkoNormalizer`` on a mosaic of (a spread subsample of) the
    sample's patches; calling the normaliser then maps every patch's concentrations onto the
    reference stains (torchstain's default H&E reference unless ``reference`` is given). torchstain
    re-estimates the stains of every image it normalises; a 110-µm patch holds too little of each
    stain for a stable estimate (and a patch of tubules alone shifts it), so only the
    per-pixel mapping (three lines: least squares on the sample's stain matrix, rescaling, and
    re-colouring with the reference's) is written here.

    Parameters
    ----------
    Io
        Transmitted light intensity (background brightness), as in torchstain.
    alpha
        Percentile of the stain-angle distribution that defines the two stain vectors.
    beta
        Optical density below which a pixel counts as background (left out of the estimate).
    reference
        ``(HE, maxC)``: a ``(3, 2)`` stain matrix and ``(2,)`` concentrations to map onto; by
        default torchstain's H&E reference (from Macenko's original implementation).

    Attributes
    ----------
    stain_matrix, max_concentrations
        The sample's estimate (after :meth:`fit`).

    """

    def __init__(
        self, *, Io: float = 240.0, alpha: float = 1.0, beta: float = 0.15, reference: tuple[Any, Any] | None = None
    ) -> None:
        import torch
        from torchstain.torch.normalizers import TorchMacenkoNormalizer

        self.Io, self.alpha, self.beta = float(Io), float(alpha), float(beta)
        ref = TorchMacenkoNormalizer()
        he, maxc = reference if reference is not None else (ref.HERef, ref.maxCRef)
        self.reference = (torch.as_tensor(he, dtype=torch.float32), torch.as_tensor(maxc, dtype=torch.float32))
        if self.reference[0].shape != (3, 2) or self.reference[1].shape != (2,):
            raise ValueError("reference must be a (3, 2) stain matrix and 2 maximal concentrations.")
        self.stain_matrix: Any = None
        self.max_concentrations: Any = None
        self.n_patches = 0

    def fit(self, patches: Iterable[Any], *, max_patches: int = 256) -> MacenkoNormalizer:
        """Estimate the sample's stains from its ``uint8`` RGB patches (batches ``(B, H, W, 3)``).

        At most ``max_patches`` patches, evenly spread over all of them, form the mosaic.
        """
        import torch
        from torchstain.torch.normalizers import TorchMacenkoNormalizer

        batches = [np.asarray(b) for b in patches]
        if not batches or not sum(len(b) for b in batches):
            raise ValueError("Macenko stain normalisation needs the sample's patches; none were given.")
        allp = np.concatenate(batches)
        if allp.dtype != np.uint8 or allp.ndim != 4 or allp.shape[-1] != 3:
            raise ValueError(f"patches must be uint8 RGB (B, H, W, 3), got {allp.dtype} {allp.shape}.")
        take = np.unique(np.linspace(0, len(allp) - 1, min(max_patches, len(allp))).round().astype(int))
        mosaic = torch.from_numpy(np.ascontiguousarray(allp[take].reshape(-1, allp.shape[2], 3)))
        od = self._optical_density(mosaic)
        n_tissue = int((~torch.any(od < self.beta, dim=1)).sum())
        if n_tissue < 1000:
            raise ValueError(
                f"Macenko stain normalisation needs stained tissue: only {n_tissue} of the sample's "
                f"{od.shape[0]:,} patch pixels have an optical density above beta={self.beta} in all channels. "
                "Classify without stain_norm, or check that the image holds tissue under the spots."
            )
        est = TorchMacenkoNormalizer()
        est.fit(mosaic.permute(2, 0, 1), Io=self.Io, alpha=self.alpha, beta=self.beta)
        he, maxc = est.HERef.float(), est.maxCRef.float()
        if not (torch.isfinite(he).all() and torch.isfinite(maxc).all() and (maxc > 0).all()):
            raise ValueError("Macenko stain normalisation could not estimate the sample's stains (degenerate tissue).")
        self.stain_matrix, self.max_concentrations, self.n_patches = he, maxc, len(take)
        return self

    def _optical_density(self, rgb: Any) -> Any:
        """Per-pixel optical density ``(M, 3)`` of uint8 RGB pixels, as torchstain computes it."""
        import torch

        return -torch.log((rgb.reshape(-1, 3).float() + 1) / self.Io)

    def __call__(self, x: Any) -> Any:
        """Normalise ``uint8`` RGB patches ``(B, H, W, 3)`` (tensor or array; the same type comes back)."""
        import torch

        if self.stain_matrix is None:
            raise RuntimeError("MacenkoNormalizer.fit must run on the sample's patches first.")
        is_np = isinstance(x, np.ndarray)
        t = torch.from_numpy(x) if is_np else x
        shape = t.shape
        with torch.autocast(t.device.type, enabled=False):  # fp32 even inside classify_spots' bf16 autocast
            od = self._optical_density(t)  # (M, 3)
            conc = torch.linalg.lstsq(self.stain_matrix.to(od.device), od.T).solution  # (2, M)
            conc *= (self.reference[1].to(od.device) / self.max_concentrations.to(od.device)).unsqueeze(-1)
            out = self.Io * torch.exp(-(self.reference[0].to(od.device) @ conc))
            out = out.T.clamp_(0, 255).round_().to(torch.uint8).reshape(shape)
        return out.numpy() if is_np else out

    def as_params(self) -> dict[str, Any]:
        """The estimate, JSON-ready (for ``uns[key]["params"]``)."""
        return {
            "method": "macenko",
            "stain_matrix": self.stain_matrix.tolist() if self.stain_matrix is not None else None,
            "max_concentrations": self.max_concentrations.tolist() if self.max_concentrations is not None else None,
            "n_patches": self.n_patches,
        }
