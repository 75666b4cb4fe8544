"""Datasets: semi-synthetic Visium samples with ground truth, built from annotated histology."""

from kgl.datasets._pseudo_visium import pas_tiles_visium, pseudo_visium

__all__ = ["pas_tiles_visium", "pseudo_visium"]
