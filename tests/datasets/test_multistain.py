import numpy as np
import pytest
import shapely

from kgl._settings import settings
from kgl.datasets import multistain_slides, pas_tiles_slides
from kgl.datasets._multistain import SLIDE_COLUMNS, _estimate_mpp, _stain


def _skip_without(name):
    try:
        settings.find_data(name)
    except FileNotFoundError as e:
        pytest.skip(str(e))


def test_stain_from_name():
    assert _stain("20181462-PAS-0200-2") == "PAS"
    assert _stain("20180022-Masson") == "Masson"
    assert _stain("20171220-PASM-2") == "PASM"
    assert _stain("S17204-masson") == "Masson"
    assert _stain("20171220") is None


def test_mpp_estimate_uses_whole_glomeruli():
    # 400-px glomeruli at 200 µm → 0.5 µm/px; a glomerulus cut by the border is left out of the median
    whole = [shapely.Point(x, 500).buffer(200, quad_segs=64) for x in (300, 800)]
    cut = shapely.Point(1300, 500).buffer(200, quad_segs=64).intersection(shapely.box(-0.5, -0.5, 1359.5, 1023.5))
    assert _estimate_mpp([*whole, cut], 1360, 1024, 200.0) == pytest.approx(0.5, rel=0.01)
    assert _estimate_mpp(whole, 1360, 1024, 150.0) == pytest.approx(0.375, rel=0.01)
    assert _estimate_mpp([cut], 1360, 1024, 200.0) > 0.5  # only a cut one: used anyway


@pytest.mark.realdata
def test_real_multistain_slides():
    _skip_without("glomeruli-multistain")
    df = multistain_slides()
    assert list(df.columns) == SLIDE_COLUMNS
    assert len(df) == 105 and df["slide"].is_unique
    assert df["n_glomeruli"].sum() == 167 == sum(len(p) for p in df["polygons"])
    assert df["stain"].value_counts().to_dict() == {"Masson": 44, "PASM": 39, "PAS": 22}
    assert (df["group"] == df["slide"].str.split("-").str[0]).all()
    assert {"20181462", "S17204", "2018116"} <= set(df["group"])
    assert all(isinstance(p, shapely.Polygon) for ps in df["polygons"] for p in ps)
    assert (df["mpp_source"] == "estimated").all()
    assert df["path"].map(lambda p: __import__("os").path.isabs(p) and __import__("os").path.isfile(p)).all()
    assert ((df["width"] == 1360) & (df["height"] == 1024)).all()
    # plausible µm/px: 10 %–90 % within 0.2–1.0, all within 0.15–1.5 (high-magnification snapshots of
    # one glomerulus that fills the frame go slightly below 0.2)
    mpp = df["mpp"].to_numpy()
    assert np.isfinite(mpp).all() and 0.15 < mpp.min() and mpp.max() < 1.5
    assert 0.2 < np.percentile(mpp, 10) and np.percentile(mpp, 90) < 1.0
    # the file names of biopsies 20181462/71/72 give the magnification: 400× images must come out
    # at about half the µm/px of 200× ones
    x400 = df["slide"].str.contains(r"-0?400-")
    x200 = df["slide"].str.contains(r"-0?200(?:-|$)")
    ratio = df.loc[x200, "mpp"].median() / df.loc[x400, "mpp"].median()
    assert 1.6 < ratio < 2.8
    # the assumed glomerulus diameter scales the estimate linearly
    assert np.allclose(multistain_slides(target_glom_diameter_um=100.0)["mpp"], mpp / 2)
    with pytest.raises(ValueError):
        multistain_slides(target_glom_diameter_um=0)


@pytest.mark.realdata
def test_real_pas_tiles_slides():
    _skip_without("glomeruli-pas-tiles")
    df = pas_tiles_slides()
    assert list(df.columns) == SLIDE_COLUMNS
    assert len(df) == 24 and df["group"].is_unique
    assert (df["mpp"] == 0.5).all() and (df["mpp_source"] == "given").all() and (df["stain"] == "PAS").all()
    assert df["n_glomeruli"].sum() > 0
    assert ((df["width"] == 1024) & (df["height"] == 1024)).all()
