import pickle

import numpy as np
import pytest
import tifffile
from PIL import Image

from kgl.io import SlideImage, image_size, read_wsi, write_tiff_pyramid
from kgl.io._wsi import _level0_coordinate

_APERIO = "Aperio Image Library v12.0.15 \n{w}x{h} [0,0 {w}x{h}] (256x256) RAW/RGB|AppMag = 20|MPP = 0.2520"


def _write_svs(path, img, factor=3):
    """An Aperio-like SVS: tiled baseline, stripped thumbnail, tiled reduced level (every ``factor``-th pixel)."""
    low = np.ascontiguousarray(img[::factor, ::factor])
    thumb = np.ascontiguousarray(img[::10, ::10])
    with tifffile.TiffWriter(path) as tw:
        for arr, tiled in ((img, True), (thumb, False), (low, True)):
            h, w = arr.shape[:2]
            kw = {"tile": (256, 256)} if tiled else {}
            tw.write(arr, photometric="rgb", description=_APERIO.format(w=w, h=h), metadata=None, **kw)
    return low


@pytest.fixture(scope="module")
def svs(tmp_path_factory):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (600, 700, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("wsi") / "slide.svs"
    low = _write_svs(path, img)
    return path, img, low


def test_svs_levels_mpp_and_pixels(svs):
    path, img, low = svs
    s = read_wsi(path)
    assert isinstance(s, SlideImage)
    assert s.mpp == pytest.approx(0.252)
    assert s.vendor == "aperio"
    assert s.shape == (600, 700)
    assert [lv.shape for lv in s.levels] == [(600, 700), low.shape[:2]]
    assert s.levels[1].downsample == pytest.approx(3.0, rel=0.01)  # non-integer: 700 / 234
    # level slices are exact, also at odd offsets on the non-integer-downsample level
    assert np.array_equal(s.levels[0].array[17:41, 300:333], img[17:41, 300:333])
    for y, x in [(0, 0), (5, 7), (101, 177), (190, 220)]:
        assert np.array_equal(s.levels[1].array[y : y + 9, x : x + 11], low[y : y + 9, x : x + 11])
    # read_centered at full resolution equals the numpy source
    patch, inside = s.read_centered((350, 300), 65, 65)
    assert inside == 1.0
    assert np.array_equal(patch, img[300 - 32 : 300 + 33, 350 - 32 : 350 + 33])
    # a coarse request reads the reduced level
    assert s.select_level(3.0) == 1
    # outside the image: white padding, fraction inside reported
    patch, inside = s.read_centered((0, 0), 65, 65)
    assert inside == pytest.approx((33 / 65) ** 2)
    assert (patch[:10, :10] == 255).all()


def test_svs_mpp_override_and_pickle(svs):
    path, img, _ = svs
    s = read_wsi(path, mpp=0.5)
    assert s.mpp == 0.5
    assert s.metadata_mpp == pytest.approx(0.252)
    s2 = pickle.loads(pickle.dumps(s))
    assert np.array_equal(s2.levels[0].array[5:9, 7:10], img[5:9, 7:10])
    s.close()
    assert np.array_equal(s.levels[0].array[0:2, 0:2], img[0:2, 0:2])  # reopens
    assert image_size(path) == (700, 600)


def test_level0_coordinate_inverts_tiffslide_mapping():
    for ds in (1.0, 2.0, 2.9947, 3.0003, 4.0, 7.5):
        for i in range(0, 500, 7):
            assert int(_level0_coordinate(i, ds) / ds) == i


def test_tiff_and_snapshots(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    tif = write_tiff_pyramid(tmp_path / "a.ome.tif", img, mpp=0.8, min_size=64)
    t = read_wsi(tif)
    assert t.mpp == pytest.approx(0.8)
    assert len(t.levels) > 1
    assert np.array_equal(t.read_centered((200, 150), 21, 21)[0], img[140:161, 190:211])
    png = tmp_path / "snap.PNG"
    Image.fromarray(img).save(png)
    p = read_wsi(png)
    assert p.mpp is None  # snapshots have no µm/px: the caller decides
    assert read_wsi(png, mpp=0.3).mpp == 0.3
    assert np.array_equal(p.read_centered((10, 10), 5, 5)[0], img[8:13, 8:13])
    assert image_size(png) == (400, 300)
    jpg = tmp_path / "snap.jpg"
    Image.fromarray(img).save(jpg)
    assert read_wsi(jpg).shape == (300, 400)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_wsi(tmp_path / "missing.svs")
    with pytest.raises(FileNotFoundError):
        image_size(tmp_path / "missing.png")
    odd = tmp_path / "slide.xyz"
    odd.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"Supported: .*\.svs.*\.ndpi.*\.jpg"):
        read_wsi(odd)
    mrxs = tmp_path / "slide.mrxs"
    mrxs.write_bytes(b"x")
    with pytest.raises(ValueError, match="OpenSlide"):
        read_wsi(mrxs)
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match="tiffslide"):
        read_wsi(broken)
    png = tmp_path / "ok.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png)
    with pytest.raises(ValueError, match="mpp"):
        read_wsi(png, mpp=-1)
