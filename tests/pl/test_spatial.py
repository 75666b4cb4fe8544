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


def test_spatial_glom_draws_the_map_under_the_spots_and_the_outlines(tmp_path):
    import matplotlib.pyplot as plt
    import shapely

    from _kgl_fixtures import make_visium, paint_disk, red_fraction_segmenter

    adata = make_visium(width=1200, height=1000, mpp=0.5, hires_scalef=0.5)
    paint_disk(adata, (300.0, 250.0), 90.0)
    model = red_fraction_segmenter()
    kgl.tl.classify_spots(adata, model, show_progress=False, precision="fp32")
    with pytest.raises(KeyError, match=r"No glomerulus map .glomerulus.*run kgl.tl.glomerulus_map"):
        kgl.pl.spatial_glom(adata, show_map=True)
    kgl.tl.glomerulus_map(adata, model, show_progress=False, precision="fp32")
    gdf = kgl.tl.glomeruli(adata)
    axes = kgl.pl.spatial_glom(adata, show_map=True, glomeruli=gdf, save=tmp_path / "map.png")
    assert (tmp_path / "map.png").stat().st_size > 0
    for ax in axes:
        overlay = ax.images[-1]
        x0, x1, _, _ = overlay.get_extent()
        sf = adata.uns["spatial"]["lib"]["scalefactors"]
        # the map spans its pixels' full-res extent, in the background image's pixels (hires: half of full-res)
        assert x0 == pytest.approx(-0.5 * 0.5) and x1 == pytest.approx(
            (overlay.get_array().shape[1] / sf["tissue_glomerulus_scalef"] - 0.5) * 0.5
        )
        assert overlay.get_zorder() < 1  # under the spots
        (line,) = ax.lines
        centre = shapely.Polygon(line.get_xydata()).centroid
        assert np.allclose((centre.x, centre.y), (300.0, 250.0), atol=2)  # the glomerulus' centre, in hires px
    plt.close("all")
