import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
from PIL import Image

import kgl
from _kgl_fixtures import center_red_model, plant_markers


def test_spatial_glom_writes_png(visium, tmp_path):
    plant_markers(visium, [4, 12])
    kgl.tl.classify_spots(visium, center_red_model(), show_progress=False)
    out = tmp_path / "glom.png"
    axes = kgl.pl.spatial_glom(visium, save=out)
    assert len(axes) == 2
    assert [a.get_title() for a in axes] == ["glomerulus", "glomerulus_proba"]
    img = np.asarray(Image.open(out))
    assert img.shape[0] > 200 and img.shape[1] > 400
    # the red "glomerulus" colour appears in the picture
    rgb = img[..., :3].astype(int)
    assert ((abs(rgb[..., 0] - 0xD6) < 20) & (abs(rgb[..., 1] - 0x27) < 20) & (abs(rgb[..., 2] - 0x28) < 20)).sum() > 20
    ax = kgl.pl.spatial_glom(visium, color="glomerulus_proba", scalebar=False)
    assert ax.get_title() == "glomerulus_proba"


def test_spatial_glom_errors(visium):
    with pytest.raises(KeyError, match="classify_spots"):
        kgl.pl.spatial_glom(visium)
    with pytest.raises(KeyError, match="Cannot colour"):
        kgl.pl.spatial_glom(visium, color="nope")


def test_spatial_glom_spatialdata(visium, tmp_path):
    from spatialdata_io.experimental import from_legacy_anndata

    plant_markers(visium, [4, 12])
    sdata = from_legacy_anndata(visium)
    kgl.tl.classify_spots(sdata, center_red_model(), show_progress=False)
    axes = kgl.pl.spatial_glom(sdata, save=tmp_path / "sd.png")
    assert len(axes) == 2 and (tmp_path / "sd.png").stat().st_size > 1000
