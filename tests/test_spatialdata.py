"""SpatialData input: one decorator binds the real signature, so no keyword is dropped on the way."""

from __future__ import annotations

import inspect

import pytest

import kgl
from _kgl_fixtures import center_red_model, plant_markers


def _public_functions():
    for room in (kgl.io, kgl.im, kgl.tl, kgl.pl, kgl.datasets):
        for name in room.__all__:
            obj = getattr(room, name)
            if inspect.isfunction(obj):
                yield f"{room.__name__}.{name}", obj


SPATIALDATA_FUNCTIONS = [
    (name, f) for name, f in _public_functions() if "table_name" in inspect.signature(f).parameters
]


def test_every_function_with_table_name_is_bound_by_the_decorator():
    names = [n for n, _ in SPATIALDATA_FUNCTIONS]
    assert {"kgl.tl.classify_spots", "kgl.tl.glom_markers", "kgl.pl.spatial_glom"} <= set(names)
    undecorated = [n for n, f in SPATIALDATA_FUNCTIONS if not hasattr(f, "__kgl_spatialdata__")]
    assert undecorated == []


@pytest.fixture
def sdata(visium):
    from spatialdata_io.experimental import from_legacy_anndata

    return from_legacy_anndata(visium.copy())


@pytest.mark.parametrize("name,func", SPATIALDATA_FUNCTIONS, ids=[n for n, _ in SPATIALDATA_FUNCTIONS])
def test_every_parameter_reaches_the_anndata_path(name, func, sdata, monkeypatch):
    """Call with a distinct value for every parameter; the AnnData implementation must receive each one."""
    seen: dict = {}

    def spy(adata, **kw):
        seen["adata"], seen["kw"] = adata, kw

    params = list(inspect.signature(func).parameters.items())[1:]  # before the spy replaces __wrapped__
    monkeypatch.setattr(func, "__wrapped__", spy)
    sent: dict = {}
    for pname, p in params:
        if pname in ("table_name", "copy"):  # consumed by the SpatialData side (table choice, deep copy)
            continue
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            sent["some_plot_kwarg"] = object()
        elif pname == "img_key":
            sent[pname] = next(iter(sdata.images))  # must name a real image: it picks the view's image
        elif pname == "library_key":
            sent[pname] = "my_library_key"
        else:
            sent[pname] = object()
    func(sdata, **sent)
    kw = seen["kw"]
    missing = [k for k, v in sent.items() if kw.get(k) is not v]
    assert missing == [], f"{name}: not forwarded: {missing}"
    assert kw.get("table_name") is None and type(seen["adata"]).__name__ == "AnnData"


def test_classify_spatialdata_honours_uncertain_none(visium):
    from spatialdata_io.experimental import from_legacy_anndata

    plant_markers(visium, [3])
    sdata = from_legacy_anndata(visium.copy())
    kgl.tl.classify_spots(sdata, center_red_model(), uncertain=None, show_progress=False, precision="fp32")
    table = sdata.tables["table"]
    assert "glomerulus" in table.obs and "glomerulus_uncertain" not in table.obs
    kgl.tl.classify_spots(sdata, center_red_model(), uncertain=(0.0, 1.0), show_progress=False, precision="fp32")
    assert table.obs["glomerulus_uncertain"].all()


def test_multiscale_image_levels_finest_first():
    """A multiscale image element reads as spatialdata orders its pyramid: finest first, with its downsample."""
    import numpy as np
    from spatialdata.models import Image2DModel

    from kgl._spatialdata import _image_levels

    arr = np.random.default_rng(0).integers(0, 255, (3, 64, 96), dtype=np.uint8)
    levels = _image_levels(Image2DModel.parse(arr, dims=("c", "y", "x"), scale_factors=[2, 2]))
    assert [(a.shape, d) for a, d in levels] == [((64, 96, 3), 1.0), ((32, 48, 3), 2.0), ((16, 24, 3), 4.0)]
    assert np.array_equal(np.asarray(levels[0][0]), arr.transpose(1, 2, 0))


def test_view_maps_spots_into_the_image_pixels_through_the_shared_system(sdata):
    """Spot centres go to the image's pixels through the coordinate system both share; a rotation is refused."""
    import numpy as np
    from spatialdata.transformations import Affine, Scale, Sequence, get_transformation, set_transformation

    from kgl._spatialdata import spatialdata_view

    view, _ = spatialdata_view(sdata)
    base = np.asarray(view.obsm["spatial"], dtype=float)
    images = list(sdata.images.values())
    for image in images:  # every image's pixels become 2x finer: image pixel p sits where 0.5 p sat
        for cs, t in get_transformation(image, get_all=True).items():
            set_transformation(image, Sequence([Scale([0.5, 0.5], axes=("x", "y")), t]), cs)
    finer, _ = spatialdata_view(sdata)
    assert np.allclose(np.asarray(finer.obsm["spatial"], dtype=float), 2 * base, rtol=1e-9, atol=1e-6)
    turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    for image in images:
        for cs in get_transformation(image, get_all=True):
            set_transformation(image, Affine(turn, input_axes=("x", "y"), output_axes=("x", "y")), cs)
    with pytest.raises(NotImplementedError, match="rotation/shear"):
        spatialdata_view(sdata)
