"""µm/px from the spot lattice (kgl._geometry), the frame check and the cross-checks."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

import kgl
from _kgl_fixtures import make_visium
from kgl._geometry import COL_PITCH_UM, ROW_PITCH_UM, lattice_pitch_px, spot_lattice, spot_mpp


def _lattice(mpp: float, *, angle_deg: float = 0.0, n_rows: int = 12, n_cols: int = 24, seed: int = 0):
    """A Space Ranger-like capture area: array indices and full-res pixel centres at ``mpp``, rotated."""
    lat = spot_lattice(n_cols * COL_PITCH_UM, n_rows * ROW_PITCH_UM, (0.0, 0.0))
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    xy = (lat[["x_um", "y_um"]].to_numpy() / mpp) @ rot.T + 5000.0
    xy = np.round(xy)  # Space Ranger writes integer pixels
    return lat["array_row"].to_numpy(), lat["array_col"].to_numpy(), xy


@pytest.mark.parametrize("angle", [0.0, 90.0, 7.5, 180.0])
def test_lattice_pitch_recovers_mpp_under_rotation_and_missing_spots(angle):
    rng = np.random.default_rng(0)
    row, col, xy = _lattice(0.3, angle_deg=angle)
    keep = rng.random(len(xy)) > 0.4  # tissue detection drops 40 % of the spots
    xy_out = xy.copy()
    xy_out[rng.choice(len(xy), 5, replace=False)] += 700.0  # and a few wild outliers
    pitch, method, n = lattice_pitch_px(xy_out[keep], row[keep], col[keep])
    assert method == "array lattice" and n > 50
    assert 100.0 / pitch == pytest.approx(0.3, rel=0.01)
    pitch_nn, method_nn, _ = lattice_pitch_px(xy_out[keep])
    assert method_nn == "nearest-neighbour spacing"
    assert 100.0 / pitch_nn == pytest.approx(0.3, rel=0.02)


def test_too_few_spots_fall_back_to_the_diameter_with_a_warning(kgl_log):
    far = np.array([[0.0, 0.0], [1000.0, 0.0], [0.0, 3000.0]])  # three spots, no two neighbours
    sf = {"spot_diameter_fullres": 130.0}
    assert lattice_pitch_px(far, [0, 0, 40], [0, 20, 0]) is None
    res = spot_mpp(far, sf, array_row=[0, 0, 40], array_col=[0, 20, 0], where="tiny")
    assert res.source == "spot_diameter_fullres" and res.mpp == pytest.approx(0.5)
    assert "tiny has too few spots to measure the spot lattice" in kgl_log.text


def test_sources_cross_checked_and_named(kgl_log):
    row, col, xy = _lattice(0.5)
    ok = spot_mpp(xy, {"spot_diameter_fullres": 130.0}, array_row=row, array_col=col, image_mpp=0.5)
    assert ok.source == "array lattice" and ok.mpp == pytest.approx(0.5, rel=0.01)
    assert "disagreement" not in kgl_log.text
    # HEST-1k writes the diameter as 55 µm / px: not an error, said at info level
    hest = spot_mpp(xy, {"spot_diameter_fullres": 110.0}, array_row=row, array_col=col)
    assert hest.mpp == pytest.approx(0.5, rel=0.01) and "HEST-1k" in kgl_log.text
    assert "disagreement" not in kgl_log.text
    # a diameter that fits neither convention, and an image that says otherwise: warnings with every value
    spot_mpp(xy, {"spot_diameter_fullres": 200.0}, array_row=row, array_col=col, where="lib X")
    assert re.search(r"disagreement for lib X: the spot lattice .* gives 0\.5\d* µm/px.*0\.325 µm/px", kgl_log.text)
    spot_mpp(xy, {"spot_diameter_fullres": 130.0}, array_row=row, array_col=col, image_mpp=0.8, where="lib Y")
    assert re.search(r"disagreement for lib Y: image metadata says 0\.8 µm/px", kgl_log.text)


@pytest.mark.parametrize("res", ["hires", "lowres"])
def test_coordinates_in_a_downsampled_frame_are_an_error(res):
    adata = make_visium()
    sf = adata.uns["spatial"]["lib"]["scalefactors"]
    sf["tissue_hires_scalef"], sf["tissue_lowres_scalef"] = 0.2, 0.06
    good = kgl._utils.library_mpp(adata, "lib")
    assert good.mpp == pytest.approx(0.5, rel=0.01)
    adata.obsm["spatial"] = adata.obsm["spatial"] * sf[f"tissue_{res}_scalef"]
    with pytest.raises(ValueError, match=rf"look like {res} image pixels.*divide them by tissue_{res}_scalef"):
        kgl._utils.library_mpp(adata, "lib")


def test_classify_records_the_mpp_source(visium):
    from _kgl_fixtures import center_red_model

    kgl.tl.classify_spots(visium, center_red_model(), show_progress=False, precision="fp32")
    lib = visium.uns["glomerulus"]["params"]["libraries"]["lib"]
    assert lib["mpp_source"] == "nearest-neighbour spacing"  # make_visium has no array_row/array_col
    assert lib["mpp"] == pytest.approx(0.5, rel=0.01) and lib["mpp_diameter"] == pytest.approx(0.5)
    assert np.isnan(lib["mpp_metadata"]) and lib["img_mpp"] == pytest.approx(lib["mpp"])


@pytest.mark.realdata
def test_real_visium_lattice(shared_data):
    root = shared_data / "visium-mouse-kidney"
    adata = kgl.io.read_visium(root)
    res = kgl._utils.library_mpp(adata, "V1_Mouse_Kidney")
    assert res.source == "array lattice" and res.n_lattice > 1000
    # 100 µm between neighbouring spots; Space Ranger's 65-µm diameter agrees within 1 %
    assert res.mpp == pytest.approx(0.7246, abs=0.002)
    assert res.diameter == pytest.approx(res.mpp, rel=0.01)
    pos = pd.read_csv(root / "spatial" / "tissue_positions.csv")
    sf = json.loads((root / "spatial" / "scalefactors_json.json").read_text())
    hires = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float) * sf["tissue_hires_scalef"]
    with pytest.raises(ValueError, match="look like hires image pixels"):
        spot_mpp(hires, sf, array_row=pos["array_row"], array_col=pos["array_col"])
