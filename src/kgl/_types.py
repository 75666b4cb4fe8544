"""The closed sets of string options as ``Literal`` aliases (as scanpy's ``_Method``), one place each.

The runtime checks compare against ``typing.get_args`` of the same alias, so the type and the
error message cannot drift apart.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["Augment", "Balance", "DEMethod", "Precision", "Select", "StainNorm", "ThresholdRule", "options"]

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Augment = Literal["none", "color", "hed", "hed+color", "grey", "strong", "randstain", "randstain+strong"]
Balance = Literal["sampler", "weights"]
Select = Literal["val_auroc", "val_loss"]
DEMethod = Literal["wilcoxon", "pseudobulk"]
StainNorm = Literal["macenko"]
ThresholdRule = Literal["expected-f1", "prior-shift"]


def options(alias: object) -> tuple[str, ...]:
    """The allowed strings of a ``Literal`` alias, in order."""
    return tuple(get_args(alias))
