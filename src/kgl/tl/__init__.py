"""Tools: classify and embed spots, the glomerulus map, train and evaluate models, glomerular DE."""

# moved to kgl.im (documented there); still importable from kgl.tl, outside __all__
from kgl.im import AUGMENTATIONS, PatchDataset, build_transform  # noqa: F401
from kgl.tl._adapt import adapt_batchnorm, expected_f1_threshold, prior_shift
from kgl.tl._calibration import calibrated_proba, fit_calibration
from kgl.tl._classify import apply_threshold_rule, classify_spots
from kgl.tl._de import PODOCYTE_MARKERS, glom_markers, marker_check
from kgl.tl._embed import embed_spots
from kgl.tl._evaluate import calibration_table, choose_threshold, evaluate, evaluate_spots
from kgl.tl._glomeruli import glomeruli, glomerulus_expression
from kgl.tl._map import glomerulus_map
from kgl.tl._predict import evaluate_patches
from kgl.tl._review import apply_review
from kgl.tl._split import check_no_leakage, split_by_group
from kgl.tl._train import SELECT_RULES, TrainResult, train
from kgl.tl._train_map import MapTrainConfig, train_map

__all__ = [
    "PODOCYTE_MARKERS",
    "SELECT_RULES",
    "MapTrainConfig",
    "TrainResult",
    "adapt_batchnorm",
    "apply_review",
    "apply_threshold_rule",
    "calibrated_proba",
    "calibration_table",
    "check_no_leakage",
    "choose_threshold",
    "classify_spots",
    "embed_spots",
    "evaluate",
    "evaluate_patches",
    "evaluate_spots",
    "expected_f1_threshold",
    "fit_calibration",
    "glom_markers",
    "glomeruli",
    "glomerulus_expression",
    "glomerulus_map",
    "marker_check",
    "prior_shift",
    "split_by_group",
    "train",
    "train_map",
]


#: Moved to :mod:`kgl.recipes` (application code, which drives datasets + tl + pl): still readable here.
_MOVED = {"DEFAULT_RECIPE", "evaluate_recipe", "rescore_protocol", "summarise_protocol", "train_default_model"}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib
        import warnings

        warnings.warn(
            f"kgl.tl.{name} moved to kgl.recipes.{name}; the kgl.tl name goes in a later release.",
            FutureWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module("kgl.recipes"), name)
    raise AttributeError(f"module 'kgl.tl' has no attribute {name!r}")
