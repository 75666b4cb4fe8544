"""Tools: classify spots (train, evaluate and DE follow)."""

from kgl.tl._classify import classify_spots

__all__ = ["classify_spots"]
