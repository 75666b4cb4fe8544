"""Datasets: semi-synthetic Visium samples with ground truth, built from annotated histology."""

from kgl.datasets._counts import GLOMERULAR_MARKERS, TUBULAR_MARKERS, simulate_counts
from kgl.datasets._fetch import DATASETS, data_dir, fetch_dataset, image_facts
from kgl.datasets._multistain import he_biopsy_slides, multistain_slides, pas_tiles_slides
from kgl.datasets._pseudo_visium import he_biopsy_visium, pas_tiles_visium, pseudo_visium
from kgl.datasets._pseudo_visium_hd import pseudo_visium_hd

__all__ = [
    "DATASETS",
    "GLOMERULAR_MARKERS",
    "TUBULAR_MARKERS",
    "data_dir",
    "fetch_dataset",
    "he_biopsy_slides",
    "he_biopsy_visium",
    "image_facts",
    "multistain_slides",
    "pas_tiles_slides",
    "pas_tiles_visium",
    "pseudo_visium",
    "pseudo_visium_hd",
    "simulate_counts",
]
