"""The glomerulus map on Dask: the same map as the serial loop, on threads and on a distributed cluster."""

import numpy as np
import pytest

import kgl
from _kgl_fixtures import make_visium, paint_disk, red_fraction_segmenter


def _sample():
    adata = make_visium(width=1400, height=1200, mpp=0.5)
    paint_disk(adata, (300.0, 250.0), 90.0)
    return adata


def _maps(adata, net, **kw):
    from kgl.im import spot_sets
    from kgl.tl._device import resolve_device
    from kgl.tl._map import library_map

    (spots,) = spot_sets(adata)
    kw = dict(tile_size=128, halo=32, device=resolve_device("cpu"), amp=None, features=True) | kw
    return library_map(net, spots, **kw), library_map(net, spots, use_dask=True, **kw)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_dask_map_equals_serial_map(batch_size):
    # a run of 3 tiles per task leaves a shorter last run in each tile row: blocks of unequal widths
    serial, lazy = _maps(_sample(), red_fraction_segmenter(), batch_size=batch_size)
    assert serial.proba.shape == lazy.proba.shape and serial.proba.max() > 0.9  # the painted disk is there
    np.testing.assert_array_equal(lazy.proba, serial.proba)
    np.testing.assert_array_equal(lazy.features, serial.features)


def test_dask_graph_carries_the_file_not_the_image(tmp_path):
    # a file-backed image enters the graph as its path: the graph is tiny next to the image
    import cloudpickle

    from kgl.im import MapTiles, map_grid
    from kgl.io import read_wsi, write_tiff_pyramid
    from kgl.tl._device import resolve_device
    from kgl.tl._map import dask_map_arrays

    img = np.full((3000, 3000, 3), (230, 190, 215), dtype=np.uint8)  # 27 MB
    image = read_wsi(write_tiff_pyramid(tmp_path / "big.tif", img, mpp=0.5))
    grid = map_grid(image, image_mpp=0.5, model_mpp=2.0)
    tiles = MapTiles(image, grid, size=128, halo=32)
    proba, _ = dask_map_arrays(red_fraction_segmenter(), tiles, tiles.runs(2), device=resolve_device("cpu"),
                               amp=None, features=False)  # fmt: skip
    assert proba.shape == grid.shape and proba.npartitions > 16
    assert len(cloudpickle.dumps(dict(proba.__dask_graph__()))) < img.nbytes / 100
    assert float(proba.max().compute()) < 0.05  # all pink: no glomerulus


def test_glomerulus_map_on_a_distributed_cluster():
    distributed = pytest.importorskip("distributed")
    adata = _sample()
    net = kgl.models.build_segmenter("Unet", "resnet18", weights=None, mpp=2.0, input_size=64)
    kw = dict(tile_size=128, halo=32, batch_size=2, precision="fp32", show_progress=False)
    serial = kgl.tl.glomerulus_map(adata, net, copy=True, **kw)
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as c,
        distributed.Client(c),
    ):
        lazy = kgl.tl.glomerulus_map(adata, net, copy=True, use_dask=True, **kw)
    lib = next(iter(adata.uns["spatial"]))
    a, b = (x.uns["spatial"][lib]["images"]["glomerulus"] for x in (serial, lazy))
    assert a.shape == b.shape and a.std() > 0
    np.testing.assert_array_equal(b, a)
    assert lazy.uns["glomerulus_map"]["params"]["use_dask"] is True


def test_dask_needs_tiles_four_halos_wide():
    with pytest.raises(ValueError, match="at least 4 × halo"):
        _maps(_sample(), red_fraction_segmenter(), batch_size=2, tile_size=160, halo=64)
