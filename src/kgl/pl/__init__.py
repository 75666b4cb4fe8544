"""Plots."""

from kgl.pl._eval import confusion, reliability, roc_pr, training_curves
from kgl.pl._review import review_gallery
from kgl.pl._spatial import spatial_glom

__all__ = ["confusion", "reliability", "review_gallery", "roc_pr", "spatial_glom", "training_curves"]
