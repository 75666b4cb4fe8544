"""Reading: Visium / SpatialData / whole-slide images / annotations."""

from kgl.io._annotations import mask_to_polygons, read_coco, read_geojson, read_mask
from kgl.io._image import SlideImage, write_tiff_pyramid
from kgl.io._review import read_review, write_review
from kgl.io._visium import read_visium
from kgl.io._wsi import read_wsi

__all__ = [
    "SlideImage",
    "mask_to_polygons",
    "read_coco",
    "read_geojson",
    "read_mask",
    "read_review",
    "read_visium",
    "read_wsi",
    "write_review",
    "write_tiff_pyramid",
]
