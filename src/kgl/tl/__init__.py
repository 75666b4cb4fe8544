"""Tools: classify spots, train and evaluate the classifier, glomerular differential expression."""

from kgl.im._dataset import AUGMENTATIONS, PatchDataset, build_transform  # re-exported: they were kgl.tl's first
from kgl.tl._adapt import adapt_batchnorm, expected_f1_threshold, prior_shift
from kgl.tl._calibration import calibrated_proba, fit_calibration
from kgl.tl._classify import classify_spots
from kgl.tl._de import PODOCYTE_MARKERS, glom_markers, marker_check
from kgl.tl._evaluate import calibration_table, choose_threshold, evaluate, evaluate_spots
from kgl.tl._predict import evaluate_patches
from kgl.tl._protocol import evaluate_recipe, rescore_protocol, summarise_protocol
from kgl.tl._recipe import DEFAULT_RECIPE, train_default_model
from kgl.tl._split import check_no_leakage, split_by_group
from kgl.tl._train import SELECT_RULES, TrainResult, train

__all__ = [
    "AUGMENTATIONS",
    "DEFAULT_RECIPE",
    "PODOCYTE_MARKERS",
    "SELECT_RULES",
    "PatchDataset",
    "TrainResult",
    "adapt_batchnorm",
    "build_transform",
    "calibrated_proba",
    "calibration_table",
    "check_no_leakage",
    "choose_threshold",
    "classify_spots",
    "evaluate",
    "evaluate_patches",
    "evaluate_recipe",
    "evaluate_spots",
    "expected_f1_threshold",
    "fit_calibration",
    "glom_markers",
    "marker_check",
    "prior_shift",
    "rescore_protocol",
    "split_by_group",
    "summarise_protocol",
    "train",
    "train_default_model",
]
