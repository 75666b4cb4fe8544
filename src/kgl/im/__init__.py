"""Image operations: patches around spots, in µm."""

from kgl.im._sampling import LABEL_NAMES, patch_counts, read_patch, sample_patches, write_patches
from kgl.im._spots import (
    SpotChunkDataset,
    SpotPatchDataset,
    SpotSet,
    check_resolution,
    spot_image,
    spot_patches,
    spot_sets,
)
from kgl.im._stain import STAIN_NORMS, MacenkoNormalizer

__all__ = [
    "LABEL_NAMES",
    "STAIN_NORMS",
    "MacenkoNormalizer",
    "SpotChunkDataset",
    "SpotPatchDataset",
    "SpotSet",
    "check_resolution",
    "patch_counts",
    "read_patch",
    "sample_patches",
    "spot_image",
    "spot_patches",
    "spot_sets",
    "write_patches",
]
