"""Recipes: kgl's shipped training recipe, the protocol that chose it, and classifying many samples.

Application code over the rooms, as torchvision's ``references/``, but importable: it drives
:mod:`kgl.datasets` (the training and test sets), :mod:`kgl.tl` (training, classification,
metrics) and :mod:`kgl.pl` (the figures of a run). No room imports it; ``kgl train`` and
``kgl evaluate-recipe`` call it.
"""

from kgl.recipes._cohort import classify_file, classify_files, read_sample, write_sample
from kgl.recipes._map import (
    MAP_MODEL,
    map_training_slides,
    object_scores,
    score_map_model,
    score_map_protocol,
    summarise_map_protocol,
    train_map_model,
    train_model,
)
from kgl.recipes._protocol import HE_CASES, TTA_VARIANTS, evaluate_recipe, rescore_protocol, summarise_protocol
from kgl.recipes._train import DEFAULT_RECIPE, train_default_model

__all__ = [
    "DEFAULT_RECIPE",
    "HE_CASES",
    "MAP_MODEL",
    "TTA_VARIANTS",
    "classify_file",
    "classify_files",
    "evaluate_recipe",
    "map_training_slides",
    "object_scores",
    "read_sample",
    "rescore_protocol",
    "score_map_model",
    "score_map_protocol",
    "summarise_map_protocol",
    "summarise_protocol",
    "train_default_model",
    "train_map_model",
    "train_model",
    "write_sample",
]
