import numpy as np
import pytest

import kgl
from _kgl_fixtures import make_visium, plant_markers
from kgl.io import write_tiff_pyramid


def _red_centre(patches: np.ndarray) -> np.ndarray:
    """Per patch: is the central pixel block red (planted marker)?"""
    h = patches.shape[1] // 2
    c = patches[:, h - 1 : h + 1, h - 1 : h + 1].astype(int).mean(axis=(1, 2))
    return (c[:, 0] > 150) & (c[:, 1] < 80)


def test_markers_land_in_patch_centres(visium):
    marked = [3, 17, 29]
    plant_markers(visium, marked, radius_um=10)
    idx, patches, _ = zip(*kgl.im.spot_patches(visium, patch_um=60, size=32, batch_size=16), strict=True)
    idx, patches = np.concatenate(idx), np.concatenate(patches)
    assert patches.shape[1:] == (32, 32, 3) and patches.dtype == np.uint8
    np.testing.assert_array_equal(idx, np.arange(visium.n_obs))
    assert np.flatnonzero(_red_centre(patches)).tolist() == marked


@pytest.mark.parametrize("scalef", [0.5, 0.25])
def test_markers_through_downsampled_hires(scalef):
    adata = make_visium(hires_scalef=scalef)
    marked = [5, 22]
    plant_markers(adata, marked, radius_um=12)
    patches = np.concatenate([p for _, p, _ in kgl.im.spot_patches(adata, patch_um=60, size=16)])
    assert np.flatnonzero(_red_centre(patches)).tolist() == marked


def test_markers_through_fullres_tiff_pyramid(visium, tmp_path):
    marked = [8, 30]
    plant_markers(visium, marked, radius_um=10)
    lib = "lib"
    img = visium.uns["spatial"][lib]["images"].pop("hires")
    write_tiff_pyramid(tmp_path / "full.tif", img, mpp=0.5, tile=128, min_size=128)
    visium.uns["spatial"][lib]["metadata"]["source_image_path"] = str(tmp_path / "full.tif")
    img_, key = kgl.im.spot_image(visium)
    assert key == "fullres" and len(img_.levels) >= 3
    # 120 µm at 0.5 µm/px is 240 full-res px; 30 output px -> the 4x level is read
    ds = kgl.im.SpotPatchDataset(kgl.im.spot_sets(visium)[0], patch_um=120, size=30)
    assert img_.levels[ds.level].downsample == pytest.approx(4.0, rel=0.01)
    patches = np.stack([ds[i][0] for i in range(len(ds))])
    assert np.flatnonzero(_red_centre(patches)).tolist() == marked


def test_patch_size_in_um(visium):
    """A 100-µm black square frame fills a 100-µm patch edge to edge, and half of a 200-µm patch."""
    lib = visium.uns["spatial"]["lib"]
    img = lib["images"]["hires"]
    img[:] = 255
    x, y = visium.obsm["spatial"][20]
    half = 100 / 0.5 / 2  # 100 µm at 0.5 µm/px
    x0, x1, y0, y1 = round(x - half), round(x + half), round(y - half), round(y + half)
    img[y0:y1, x0:x1] = 0
    sets = kgl.im.spot_sets(visium)
    assert sets[0].mpp == pytest.approx(0.5)
    p100 = kgl.im.SpotPatchDataset(sets[0], patch_um=100, size=50)[20][0]
    p200 = kgl.im.SpotPatchDataset(sets[0], patch_um=200, size=50)[20][0]
    assert (p100 < 20).mean() > 0.97
    dark = (p200[..., 0] < 128).mean()
    assert dark == pytest.approx(0.25, abs=0.03)


def test_off_image_spots_are_padded_and_flagged(visium):
    visium.obsm["spatial"][0] = (0.0, 0.0)  # corner: a quarter of the patch is inside
    visium.obsm["spatial"][1] = (visium.uns["spatial"]["lib"]["images"]["hires"].shape[1] + 5000.0, 10.0)
    _, patches, inside = next(kgl.im.spot_patches(visium, patch_um=100, size=20, batch_size=4))
    assert inside[0] == pytest.approx(0.25, abs=0.03)
    assert inside[1] == 0.0 and (patches[1] == 255).all()
    assert inside[2] == 1.0


def test_mpp_disagreement_warns(visium, tmp_path, kgl_log):
    img = visium.uns["spatial"]["lib"]["images"].pop("hires")
    write_tiff_pyramid(tmp_path / "full.tif", img, mpp=0.8)  # scalefactors say 0.5
    visium.uns["spatial"]["lib"]["metadata"]["source_image_path"] = str(tmp_path / "full.tif")
    kgl.im.spot_sets(visium)
    assert "µm/px disagreement" in kgl_log.text


def test_bad_arguments(visium):
    with pytest.raises(ValueError, match="patch_um"):
        next(kgl.im.spot_patches(visium, patch_um=0))
    with pytest.raises(ValueError, match="batch_size"):
        next(kgl.im.spot_patches(visium, batch_size=0))
    with pytest.raises(KeyError, match=r"Available: \['lib'\]"):
        next(kgl.im.spot_patches(visium, library_id="nope"))
    with pytest.raises(KeyError, match="Available"):
        kgl.im.spot_image(visium, img_key="lowres")
    del visium.uns["spatial"]
    with pytest.raises(KeyError, match="uns\\['spatial'\\]"):
        next(kgl.im.spot_patches(visium))


@pytest.mark.parametrize("mode", ["rgba", "grey", "uint16", "float"])
def test_image_modes_are_handled_explicitly(visium, mode):
    marked = [6, 19]
    plant_markers(visium, marked, radius_um=10)
    lib = visium.uns["spatial"]["lib"]
    rgb = lib["images"]["hires"]
    if mode == "rgba":
        img = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
        img[:100, :100, 3] = 0  # transparent corner reads as white
    elif mode == "grey":
        img = rgb[..., 1].copy()  # the red marker is dark in the green channel
    elif mode == "uint16":
        img = rgb.astype(np.uint16) * 257
    else:
        img = rgb.astype(np.float32) / 255.0
    lib["images"]["hires"] = img
    patches = np.concatenate([p for _, p, _ in kgl.im.spot_patches(visium, patch_um=60, size=16)])
    assert patches.dtype == np.uint8 and patches.shape[-1] == 3
    if mode == "grey":
        c = patches[:, 7:9, 7:9, 0].mean(axis=(1, 2))
        assert np.flatnonzero(c < 80).tolist() == marked
    else:
        assert np.flatnonzero(_red_centre(patches)).tolist() == marked
    if mode == "rgba":
        assert (kgl.im.spot_image(visium)[0].read_centered((20, 20), 20, 4)[0] == 255).all()
