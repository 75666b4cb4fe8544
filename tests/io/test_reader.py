"""The one reader: one factory for every caller, one per-process handle base, the µm read, the old name."""

import pickle

import numpy as np
import pytest
import tifffile
from PIL import Image

from kgl.io import SlideImage, read_wsi, write_tiff_pyramid
from kgl.io._lazy import _FileImage
from kgl.io._tiff import _TiffImage
from kgl.io._wsi import _TiffSlideImage

_APERIO = "Aperio Image Library v12.0.15 \n{w}x{h} [0,0 {w}x{h}] (256x256) RAW/RGB|AppMag = 20|MPP = 0.2520"


def _write(path, img):
    """The same pixels as a tiled TIFF (``.tif``) or an Aperio-like SVS with a reduced level (``.svs``)."""
    if path.suffix == ".svs":
        with tifffile.TiffWriter(path) as tw:
            for arr in (img, np.ascontiguousarray(img[::2, ::2])):
                h, w = arr.shape[:2]
                tw.write(arr, photometric="rgb", tile=(256, 256), description=_APERIO.format(w=w, h=h), metadata=None)
    else:
        write_tiff_pyramid(path, img, mpp=0.252, tile=128, min_size=128)
    return path


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(7).integers(0, 256, (500, 600, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def files(image, tmp_path_factory):
    d = tmp_path_factory.mktemp("reader")
    return {s: _write(d / f"slide{s}", image) for s in (".tif", ".svs")}


@pytest.mark.parametrize(("suffix", "backend"), [(".tif", _TiffImage), (".svs", _TiffSlideImage)])
def test_one_factory_for_every_caller(files, image, suffix, backend):
    path = files[suffix]
    for reader in (SlideImage.open(path), read_wsi(path), SlideImage.open(str(path), mpp=None)):
        assert type(reader) is backend and isinstance(reader, _FileImage)
        assert reader.mpp == pytest.approx(0.252)
        assert reader.shape == image.shape[:2]
        patch, inside = reader.read_centered((300, 250), 41, 41, level=0)
        assert inside == 1.0
        assert np.array_equal(patch, image[230:271, 280:321])
    # downsample= means the same for both backends: spot-frame px per file px
    half = SlideImage.open(path, downsample=2.0)
    assert half.levels[0].downsample == 2.0 and half.shape == (1000, 1200)
    assert half.mpp == pytest.approx(0.126)


def test_tif_and_svs_read_the_same_pixels(files):
    tif, svs = SlideImage.open(files[".tif"]), SlideImage.open(files[".svs"])
    centers = np.array([[0.0, 0.0], [123.4, 56.7], [599.0, 499.0], [300.0, 250.0]])
    a, ia = tif.read_regions(centers, 65, 65, level=0)
    b, ib = svs.read_regions(centers, 65, 65, level=0)
    assert np.array_equal(a, b) and np.array_equal(ia, ib)


def test_unsupported_suffix_is_refused_by_the_one_factory(tmp_path):
    gif = tmp_path / "snap.gif"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(gif)
    for opener in (SlideImage.open, read_wsi):
        with pytest.raises(ValueError, match=r"Unsupported image format '\.gif'.*Supported: .*\.svs"):
            opener(gif)


@pytest.mark.parametrize("suffix", [".tif", ".svs"])
def test_pickled_reader_reads_after_unpickling(files, suffix):
    reader = SlideImage.open(files[suffix])
    before = reader.read_regions([(100.0, 100.0), (420.5, 380.0)], 90, 30)
    clone = pickle.loads(pickle.dumps(reader))  # the handle is open: it is not pickled
    assert clone._handle is None and clone._pid is None
    after = clone.read_regions([(100.0, 100.0), (420.5, 380.0)], 90, 30)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert clone._handle is not None  # reopened on first read, in this process
    clone.close()
    assert np.array_equal(clone.read_centered((100.0, 100.0), 90, 30)[0], before[0][0])  # reopens


@pytest.mark.parametrize("suffix", [".tif", ".svs"])
def test_read_centered_um_equals_px_read(files, suffix):
    reader = SlideImage.open(files[suffix])
    for center, size_um, out in [((300.0, 250.0), 20.0, 32), ((10.0, 490.0), 55.5, 24), ((311.3, 97.8), 80.0, 16)]:
        px = reader.read_centered(center, size_um / reader.mpp, out, fill=0)
        um = reader.read_centered_um(center, size_um, out, fill=0)
        assert np.array_equal(px[0], um[0]) and px[1] == um[1]
        # an mpp from elsewhere (spot lattice, slide table) overrides the file's
        px = reader.read_centered(center, size_um / 0.4, out)
        um = reader.read_centered_um(center, size_um, out, mpp=0.4)
        assert np.array_equal(px[0], um[0]) and px[1] == um[1]


def test_read_centered_um_needs_an_mpp(tmp_path):
    png = tmp_path / "snap.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(png)
    snap = SlideImage.open(png)
    assert snap.mpp is None
    with pytest.raises(ValueError, match="µm/px"):
        snap.read_centered_um((10, 10), 5.0, 8)
    assert snap.read_centered_um((10, 10), 5.0, 8, mpp=0.5)[0].shape == (8, 8, 3)


def test_read_region_is_a_deprecated_alias(image):
    reader = SlideImage.from_array(image)
    with pytest.warns(FutureWarning, match="read_centered"):
        old = reader.read_region((300.0, 250.0), 40, 20, fill=0)
    new = reader.read_centered((300.0, 250.0), 40, 20, fill=0)
    assert np.array_equal(old[0], new[0]) and old[1] == new[1]
