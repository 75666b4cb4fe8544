"""Reading: Visium / SpatialData / whole-slide images / annotations."""

from kgl.io._image import SlideImage, write_tiff_pyramid
from kgl.io._visium import read_visium

__all__ = ["SlideImage", "read_visium", "write_tiff_pyramid"]
