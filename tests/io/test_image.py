import pickle

import numpy as np
import pytest

from kgl.io import SlideImage, to_rgb_uint8, write_tiff_pyramid


def test_to_rgb_modes_and_dtypes():
    grey = np.full((4, 4), 100, np.uint8)
    assert to_rgb_uint8(grey).shape == (4, 4, 3)
    assert (to_rgb_uint8(grey) == 100).all()
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255  # opaque red pixel; the others are transparent -> white
    out = to_rgb_uint8(rgba)
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[1, 1]) == (255, 255, 255)
    u16 = np.full((2, 2, 3), 65535, np.uint16)
    assert (to_rgb_uint8(u16) == 255).all()
    assert (to_rgb_uint8(np.full((2, 2, 3), 257 * 10, np.uint16)) == 10).all()
    fl = np.full((2, 2, 3), 0.5, np.float32)
    assert (to_rgb_uint8(fl) == 128).all()
    la = np.zeros((1, 1, 2), np.uint8)
    la[..., 0], la[..., 1] = 50, 255
    assert tuple(to_rgb_uint8(la)[0, 0]) == (50, 50, 50)
    cmyk = np.zeros((1, 1, 4), np.uint8)
    cmyk[..., 3] = 255  # full black
    assert tuple(to_rgb_uint8(cmyk, "CMYK")[0, 0]) == (0, 0, 0)
    with pytest.raises(ValueError, match="dtype"):
        to_rgb_uint8(np.zeros((2, 2, 3), np.int64))
    with pytest.raises(ValueError, match="channels"):
        to_rgb_uint8(np.zeros((2, 2, 5), np.uint8))


def test_float_image_out_of_range_rejected():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SlideImage.from_array(np.full((10, 10, 3), 200.0, np.float32))


def _marker_image(h=600, w=800):
    img = np.full((h, w, 3), 255, np.uint8)
    img[300:310, 400:410] = (255, 0, 0)  # 10x10 red square centred at (404.5, 304.5)
    return img


def test_read_centered_centre_and_padding():
    img = SlideImage.from_array(_marker_image())
    patch, inside = img.read_centered((404.5, 304.5), 10, 10)
    assert inside == 1.0
    assert (patch == (255, 0, 0)).all()
    # a region hanging over the top-left corner: a quarter inside, padded with white
    patch, inside = img.read_centered((0, 0), 100, 100)
    assert inside == pytest.approx(0.25, abs=0.02)
    assert (patch[:40, :40] == 255).all()
    patch, inside = img.read_centered((-500, -500), 50, 16)
    assert inside == 0.0
    assert (patch == 255).all()


def test_downsampled_level_maps_to_fullres_frame():
    import cv2

    full = _marker_image(1200, 1600)
    full[:] = 255
    full[600:640, 800:840] = (255, 0, 0)  # centred at (819.5, 619.5) full-res
    small = cv2.resize(full, (400, 300), interpolation=cv2.INTER_AREA)  # hires-like, scalef 0.25
    img = SlideImage.from_array(small, downsample=4.0)
    assert img.shape == (1200, 1600)
    patch, _ = img.read_centered((819.5, 619.5), 40, 10)
    assert patch[3:7, 3:7, 1].max() < 30  # red core, little green
    patch, _ = img.read_centered((819.5 + 100, 619.5), 40, 10)
    assert (patch == 255).all()


def test_tiff_pyramid_lazy_reads_match(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (1100, 1300, 3), dtype=np.uint8)
    path = write_tiff_pyramid(tmp_path / "img.tif", arr, mpp=0.25, tile=128, min_size=256)
    img = SlideImage.open(path)
    assert img.mpp == pytest.approx(0.25)
    assert [lv.downsample for lv in img.levels][:3] == pytest.approx([1.0, 2.0, 4.0], rel=0.01)
    a, inside = img.read_centered((650.0, 550.0), 64, 64, level=0)
    assert inside == 1.0
    np.testing.assert_array_equal(a, arr[518:582, 618:682])
    # coarser output selects a coarser level
    assert img.select_level(4.0) == 2
    assert img.select_level(1.0) == 0
    # picklable for DataLoader workers, reopens lazily
    img2 = pickle.loads(pickle.dumps(img))
    b, _ = img2.read_centered((650.0, 550.0), 64, 64, level=0)
    np.testing.assert_array_equal(a, b)


def test_corrupt_tiff_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(0)
    path = write_tiff_pyramid(tmp_path / "img.tif", rng.integers(0, 255, (600, 600, 3), dtype=np.uint8), tile=128)
    data = path.read_bytes()
    bad = tmp_path / "truncated.tif"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        SlideImage.open(bad)
    with pytest.raises(FileNotFoundError):
        SlideImage.open(tmp_path / "nope.tif")
