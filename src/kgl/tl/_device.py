"""Device and precision selection for inference and training."""

from __future__ import annotations

from typing import Any

__all__ = ["autocast_dtype", "resolve_device"]


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


def autocast_dtype(device: Any, precision: str = "auto") -> Any:
    """Autocast dtype for ``precision`` on ``device`` (``None``: fp32).

    ``"auto"``: fp16 AMP on CUDA (bf16 where the GPU supports it), bf16 on CPUs with native bf16,
    fp32 otherwise.
    """
    import torch

    if precision not in {"auto", "fp32", "bf16", "fp16"}:
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
