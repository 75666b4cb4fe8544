"""Datasets: semi-synthetic Visium samples with ground truth, built from annotated histology."""

from kgl.datasets._counts import GLOMERULAR_MARKERS, TUBULAR_MARKERS, simulate_counts
from kgl.datasets._multistain import multistain_slides, pas_tiles_slides
from kgl.datasets._pseudo_visium import pas_tiles_visium, pseudo_visium

__all__ = [
    "GLOMERULAR_MARKERS",
    "TUBULAR_MARKERS",
    "multistain_slides",
    "pas_tiles_slides",
    "pas_tiles_visium",
    "pseudo_visium",
    "simulate_counts",
]
