"""Plots."""

from kgl.pl._spatial import spatial_glom

__all__ = ["spatial_glom"]
