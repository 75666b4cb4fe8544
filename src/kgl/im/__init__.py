"""Image operations: patches around spots, in µm; training patches as a dataset, with augmentation."""

from kgl.im._crops import MapCropDataset, collate_crops, rasterise_polygons, slide_at_mpp
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
from kgl.im._tiles import MapGrid, MapTiles, blend_block, blend_window, map_grid

__all__ = [
    "AUGMENTATIONS",
    "LABEL_NAMES",
    "STAIN_NORMS",
    "MacenkoNormalizer",
    "MapCropDataset",
    "MapGrid",
    "MapTiles",
    "PatchDataset",
    "SpotChunkDataset",
    "SpotPatchDataset",
    "SpotSet",
    "blend_block",
    "blend_window",
    "build_transform",
    "check_resolution",
    "collate_crops",
    "collate_patches",
    "map_grid",
    "patch_counts",
    "rasterise_polygons",
    "read_patch",
    "sample_patches",
    "slide_at_mpp",
    "spot_image",
    "spot_patches",
    "spot_sets",
    "write_patches",
]
