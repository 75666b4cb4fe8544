"""Property-based tests (hypothesis) of kgl's geometry, for random scalefactors, images and grids.

- µm ↔ px conversions round-trip (scalefactors → µm/px → patch sides, hires ↔ full-res frame);
- ground-truth coverage fractions lie in [0, 1] and grow with the annotated area;
- patch centres map back to spot centres: a single marked pixel under a spot lands at the
  centre of that spot's patch, through :meth:`kgl.io.SlideImage.read_centered` and through
  :func:`kgl.im.spot_patches` on a Visium AnnData;
- the pseudo-Visium lattice is the Visium hexagonal 100-µm lattice wherever it is laid.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kgl
from kgl._utils import SPOT_DIAMETER_FULLRES_UM, SPOT_PITCH_UM, library_mpp, mpp_from_scalefactors, scalefactors
from kgl.datasets._pseudo_visium import spot_coverage, spot_lattice
from kgl.io import SlideImage

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ODD = st.integers(0, 12).map(lambda k: 2 * k + 1)  # odd windows have a centre pixel


def _adata(img: np.ndarray, xy: np.ndarray, spot_diameter: float, scalef: float) -> ad.AnnData:
    adata = ad.AnnData(obs=pd.DataFrame(index=[f"s{i}" for i in range(len(xy))]))
    adata.obsm["spatial"] = np.asarray(xy, dtype=np.float64)
    adata.uns["spatial"] = {
        "lib": {
            "images": {"hires": img},
            "scalefactors": {"spot_diameter_fullres": spot_diameter, "tissue_hires_scalef": scalef},
            "metadata": {},
        }
    }
    return adata


# ---------------------------------------------------------------------------------------------
# µm <-> px
# ---------------------------------------------------------------------------------------------
@FAST
@given(
    spot_diameter=st.floats(5.0, 2000.0),
    scalef=st.floats(0.01, 1.0),
    um=st.floats(1e-3, 1e5),
    x=st.floats(-1e5, 1e5),
)
def test_um_px_round_trip(spot_diameter, scalef, um, x):
    adata = _adata(np.zeros((4, 4, 3), np.uint8), np.zeros((1, 2)), spot_diameter, scalef)
    sf = scalefactors(adata, "lib")
    mpp = mpp_from_scalefactors(sf)
    assert mpp * spot_diameter == pytest.approx(SPOT_DIAMETER_FULLRES_UM, rel=1e-12)
    # µm -> full-res px -> µm, as SpotSet.patch_size_px converts patch sides
    spots = kgl.im.SpotSet("lib", np.arange(1), np.zeros((1, 2)), None, "hires", mpp)
    assert spots.patch_size_px(um) * mpp == pytest.approx(um, rel=1e-12)
    # full-res px -> hires px -> full-res px, as SlideImage levels map coordinates (pixel centres at integers)
    image, key = kgl.im.spot_image(adata)
    d = image.levels[0].downsample
    assert key == "hires" and d * scalef == pytest.approx(1.0, rel=1e-12)
    u = (x + 0.5) / d - 0.5
    assert (u + 0.5) * d - 0.5 == pytest.approx(x, rel=1e-9, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# coverage fractions
# ---------------------------------------------------------------------------------------------
_coord = st.floats(-300.0, 300.0)
_polygon = st.one_of(
    st.tuples(_coord, _coord, st.floats(1.0, 200.0), st.floats(1.0, 200.0)).map(
        lambda t: shapely.box(t[0], t[1], t[0] + t[2], t[1] + t[3])
    ),
    st.tuples(_coord, _coord, st.floats(0.5, 150.0)).map(lambda t: shapely.Point(t[0], t[1]).buffer(t[2])),
    st.lists(st.tuples(_coord, _coord), min_size=3, max_size=12)
    .map(lambda pts: shapely.MultiPoint(pts).convex_hull)
    .filter(lambda g: g.geom_type == "Polygon" and g.area > 1e-3),
)


@FAST
@given(
    polys=st.lists(_polygon, min_size=0, max_size=6),
    xy=st.lists(st.tuples(_coord, _coord), min_size=1, max_size=30),
    radius=st.floats(0.5, 120.0),
)
def test_coverage_in_unit_interval_and_monotone(polys, xy, radius):
    xy = np.asarray(xy)
    cov = spot_coverage(xy, polys, radius)
    assert cov.shape == (len(xy),) and ((cov >= 0.0) & (cov <= 1.0)).all()
    if polys:  # more annotated area never lowers coverage
        fewer = spot_coverage(xy, polys[:-1], radius)
        assert (cov >= fewer - 1e-9).all()
        union = shapely.union_all(polys)
        far = shapely.distance(shapely.points(xy), union) > radius
        assert (cov[far] == 0.0).all()
        inside = shapely.contains(union, shapely.buffer(shapely.points(xy), radius * 1.01, quad_segs=16))
        assert np.allclose(cov[inside], 1.0, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# patch centres map back to spot centres
# ---------------------------------------------------------------------------------------------
@FAST
@given(
    data=st.data(),
    h=st.integers(1, 80),
    w=st.integers(1, 80),
    downsample=st.one_of(st.sampled_from([1.0, 2.0, 4.0, 0.5]), st.floats(0.25, 8.0)),
    n=ODD,
    k=st.sampled_from([1, 3]),
    grey=st.booleans(),
)
def test_read_region_centre_is_the_requested_point(data, h, w, downsample, n, k, grey):
    """A single bright pixel anywhere; the region around its full-res centre has it at the patch centre."""
    i, j = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
    img = np.zeros((h, w) if grey else (h, w, 3), np.uint8)
    img[i, j] = 255
    slide = SlideImage.from_array(img, downsample=downsample)
    x, y = (j + 0.5) * downsample - 0.5, (i + 0.5) * downsample - 0.5  # that pixel's centre, full-res frame
    m = n * k  # window of m level pixels, shrunk k-fold to n output pixels (block averages)
    patch, inside = slide.read_centered((x, y), m * downsample, n, fill=0)
    assert patch.shape == (n, n, 3)
    c = n // 2
    assert (patch[c, c] == round(255 / k**2)).all()
    patch[c, c] = 0
    assert not patch.any()  # nothing else lit: the pixel is exactly at the centre
    assert 0.0 < inside <= 1.0


@FAST
@given(
    data=st.data(),
    diameter_jitter=st.floats(0.95, 1.05),
    scalef=st.floats(0.05, 1.0),
    n=st.integers(4, 12).map(lambda k: 2 * k + 1),  # patch side (odd, >= 9 px) in hires pixels
    rows=st.integers(1, 4),
    cols=st.integers(1, 4),
)
def test_spot_patches_are_centred_on_spots(data, diameter_jitter, scalef, n, rows, cols):
    """Random scalefactors and a random spot grid: every spot's patch has its own marked pixel at the centre."""
    pitch = n + data.draw(st.integers(0, 5))  # patches do not overlap: each sees only its spot's mark
    # the grid is the 100-µm spot pitch; the diameter (65 µm) agrees with it to within 5 %
    spot_diameter = 0.65 * pitch / scalef * diameter_jitter
    i0, j0 = data.draw(st.integers(0, pitch)), data.draw(st.integers(0, pitch))
    h, w = i0 + rows * pitch + data.draw(st.integers(0, 10)), j0 + cols * pitch + data.draw(st.integers(0, 10))
    img = np.full((h, w, 3), 255, np.uint8)
    ij = np.array([(i0 + r * pitch, j0 + c * pitch) for r in range(rows) for c in range(cols)])
    img[ij[:, 0], ij[:, 1]] = 0
    xy = (ij[:, ::-1] + 0.5) / scalef - 0.5  # those hires pixels' centres in full-resolution (x, y)
    adata = _adata(img, xy, spot_diameter, scalef)
    # µm/px of the spot frame as kgl measures it: here from the grid spacing (or the diameter, for < 5 spots)
    mpp = library_mpp(adata, next(iter(adata.uns["spatial"]))).mpp
    patch_um = n / scalef * mpp  # n hires pixels
    idx, patches, inside = (
        np.concatenate(p) for p in zip(*kgl.im.spot_patches(adata, patch_um=patch_um, size=n), strict=True)
    )
    np.testing.assert_array_equal(idx, np.arange(len(xy)))
    c = n // 2
    assert (patches[:, c, c] == 0).all()
    patches[:, c, c] = 255
    assert (patches == 255).all()
    assert ((inside > 0) & (inside <= 1)).all()


# ---------------------------------------------------------------------------------------------
# the Visium lattice
# ---------------------------------------------------------------------------------------------
@FAST
@given(
    width=st.floats(150.0, 1500.0),
    height=st.floats(150.0, 1500.0),
    ox=st.floats(0.0, SPOT_PITCH_UM),
    oy=st.floats(0.0, SPOT_PITCH_UM * np.sqrt(3) / 2),
)
def test_lattice_is_hexagonal_with_100um_pitch(width, height, ox, oy):
    from scipy.spatial import cKDTree

    spots = spot_lattice(width, height, (ox, oy))
    xy = spots[["x_um", "y_um"]].to_numpy()
    assert ((xy[:, 0] <= width + 1e-9) & (xy[:, 1] <= height + 1e-9)).all() and (xy >= 0).all()
    assert ((spots["array_row"] + spots["array_col"]) % 2 == 0).all()
    if len(xy) > 1:
        d, _ = cKDTree(xy).query(xy, k=2)
        np.testing.assert_allclose(d[:, 1], SPOT_PITCH_UM, rtol=1e-9)
