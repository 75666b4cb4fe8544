"""kgl: find kidney glomeruli in Visium sections.

Rooms by verb, as in squidpy: :mod:`kgl.io` (read), :mod:`kgl.im` (patches), :mod:`kgl.tl`
(classify), :mod:`kgl.pl` (plots), :mod:`kgl.models` (backbones, checkpoints) and
:mod:`kgl.datasets`; :mod:`kgl.recipes` (the shipped training recipe and its evaluation
protocol) drives them. Sub-packages load on first access, so ``import kgl`` stays cheap and never
imports torch.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from kgl._settings import settings

try:  # one source of truth: pyproject.toml's version, as installed
    __version__ = version("kgl-spatial")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = ["datasets", "im", "io", "models", "pl", "recipes", "settings", "tl"]

_SUBMODULES = {"datasets", "im", "io", "models", "pl", "recipes", "tl"}

if TYPE_CHECKING:  # pragma: no cover
    from kgl import datasets, im, io, models, pl, recipes, tl


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"kgl.{name}")
    raise AttributeError(f"module 'kgl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
