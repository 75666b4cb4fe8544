"""Reading: Visium / SpatialData / whole-slide images / annotations."""

from kgl.io._annotations import mask_to_polygons, read_coco, read_geojson, read_mask, write_geojson
from kgl.io._color import to_rgb_uint8
from kgl.io._image import SlideImage, image_size, read_wsi
from kgl.io._review import REVIEW_COLUMNS, read_review, write_review
from kgl.io._tiff import write_tiff_pyramid
from kgl.io._visium import read_visium

__all__ = [
    "REVIEW_COLUMNS",
    "SlideImage",
    "image_size",
    "mask_to_polygons",
    "read_coco",
    "read_geojson",
    "read_mask",
    "read_review",
    "read_visium",
    "read_wsi",
    "to_rgb_uint8",
    "write_geojson",
    "write_review",
    "write_tiff_pyramid",
]
