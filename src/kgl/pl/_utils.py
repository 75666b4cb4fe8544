"""What every kgl plot shares: saving a figure."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["save_figure"]


def save_figure(fig: Any, save: str | os.PathLike | None, *, dpi: int) -> None:
    """Write ``fig`` to ``save`` atomically (nothing when ``None``); the format follows the suffix, PNG without one."""
    if save is None:
        return
    from kgl._files import atomic_path

    save = Path(save)
    fmt = save.suffix.lstrip(".").lower() or "png"
    with atomic_path(save) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=fmt)
