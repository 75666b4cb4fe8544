"""Image operations: patches around spots, in µm; training patches as a dataset, with augmentation."""

from kgl.im._dataset import AUGMENTATIONS, PatchDataset, build_transform, collate_patches
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
    "AUGMENTATIONS",
    "LABEL_NAMES",
    "STAIN_NORMS",
    "MacenkoNormalizer",
    "PatchDataset",
    "SpotChunkDataset",
    "SpotPatchDataset",
    "SpotSet",
    "build_transform",
    "check_resolution",
    "collate_patches",
    "patch_counts",
    "read_patch",
    "sample_patches",
    "spot_image",
    "spot_patches",
    "spot_sets",
    "write_patches",
]
