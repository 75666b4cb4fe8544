"""Device and precision selection for inference and training."""

from __future__ import annotations

from typing import Any

from kgl._types import Precision, options

__all__ = ["autocast_dtype", "normalise_uint8", "normaliser", "resolve_device"]


def resolve_device(device: Any = "auto") -> Any:
    """``"auto"`` → CUDA when available, else CPU; an explicit device must exist."""
    import torch

    if isinstance(device, torch.device):
        dev = device
    elif device is None or device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} but CUDA is not available on this machine; use device='auto' or 'cpu'."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist.")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} but MPS is not available; use device='auto' or 'cpu'.")
    return dev


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 matmul (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(c()) for c in checks if c is not None)


def autocast_dtype(device: Any, precision: Precision = "auto") -> Any:
    """Autocast dtype for ``precision`` on ``device`` (``None``: fp32).

    ``"auto"``: fp16 AMP on CUDA (bf16 where the GPU supports it), bf16 on CPUs with native bf16,
    fp32 otherwise.
    """
    import torch

    if precision not in options(Precision):
        raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}.")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def normaliser(preprocessing: Any, device: Any) -> tuple[Any, Any]:
    """The ``mean``/``std`` of a :class:`kgl.models.Preprocessing` as ``(1, 3, 1, 1)`` tensors (uint8 scale)."""
    import torch

    mean = torch.tensor(preprocessing.mean, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(preprocessing.std, device=device).view(1, 3, 1, 1) * 255.0
    return mean, std


def normalise_uint8(x: Any, mean: Any, std: Any, *, greyscale: bool = False) -> Any:
    """uint8 NHWC patches (already on the device: 4x less to transfer than float) → normalised NCHW, channels_last.

    ``greyscale`` converts to grey replicated over 3 channels first (weights of albumentations'
    ``ToGray``), for models trained on grey patches.
    """
    import torch

    x = x.permute(0, 3, 1, 2).to(torch.float32, copy=True)  # NHWC read as NCHW = channels_last; a copy
    if greyscale:
        w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
        x = (x * w).sum(dim=1, keepdim=True).round().expand(-1, 3, -1, -1)
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)
    # (x - mean) / std as one in-place multiply-add on the fresh float copy: 2.6x faster than
    # two out-of-place passes on a 2-core CPU (0.36 vs 0.93 ms per 224-px patch)
    return x.mul_(1.0 / std).add_(-mean / std)
