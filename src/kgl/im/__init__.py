"""Image operations: patches around spots, in µm."""

from kgl.im._spots import SpotPatchDataset, SpotSet, spot_image, spot_patches, spot_sets

__all__ = ["SpotPatchDataset", "SpotSet", "spot_image", "spot_patches", "spot_sets"]
