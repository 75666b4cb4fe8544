"""Tools: classify spots (train, evaluate and DE follow)."""

from kgl.tl._classify import classify_spots
from kgl.tl._evaluate import calibration_table, choose_threshold, evaluate, evaluate_spots
from kgl.tl._recipe import DEFAULT_RECIPE, evaluate_patches, train_default_model
from kgl.tl._split import check_no_leakage, split_by_group
from kgl.tl._train import (
    AUGMENTATIONS,
    PatchDataset,
    TrainResult,
    build_transform,
    calibrated_proba,
    fit_calibration,
    train,
)

__all__ = [
    "AUGMENTATIONS",
    "DEFAULT_RECIPE",
    "PatchDataset",
    "TrainResult",
    "build_transform",
    "calibrated_proba",
    "calibration_table",
    "check_no_leakage",
    "choose_threshold",
    "classify_spots",
    "evaluate",
    "evaluate_patches",
    "evaluate_spots",
    "fit_calibration",
    "split_by_group",
    "train",
    "train_default_model",
]
