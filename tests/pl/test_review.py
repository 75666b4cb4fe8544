import json
import pickle

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import kgl
from _kgl_fixtures import classified_visium, two_library_visium

MARKED = [2, 11, 25, 30]


@pytest.fixture
def classified():
    return classified_visium(MARKED)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _review(adata, tmp_path, changes):
    path = kgl.io.write_review(adata, tmp_path / "review.geojson")
    data = json.loads(path.read_text())
    for f in data["features"]:
        if f["properties"]["name"] in changes:
            f["properties"]["classification"]["name"] = changes[f["properties"]["name"]]
    path.write_text(json.dumps(data))
    kgl.tl.apply_review(adata, path)


def _rows(fig, n):
    """Per gallery row: its label and the barcodes of its tiles."""
    axes = np.asarray(fig.axes).reshape(-1, n)
    return [(row[0].get_ylabel(), [a.get_title().split("\n")[0] for a in row if a.get_title()]) for row in axes]


def test_review_gallery_png_and_pdf(classified, tmp_path):
    axes = kgl.pl.review_gallery(classified, n=5, save=tmp_path / "gallery.png")
    assert axes.shape[1] == 5 and all(isinstance(a, matplotlib.axes.Axes) for a in axes.flat)  # as plt.subplots
    img = np.asarray(Image.open(tmp_path / "gallery.png"))
    assert img.shape[0] > 600 and img.shape[1] > 800 and img[..., :3].std() > 10
    # the red markers of the confident glomeruli are in the picture
    rgb = img[..., :3].astype(int)
    assert ((rgb[..., 0] > 200) & (rgb[..., 1] < 30) & (rgb[..., 2] < 30)).sum() > 500
    kgl.pl.review_gallery(classified, n=5, save=tmp_path / "gallery.pdf")
    pdf = (tmp_path / "gallery.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery.pdf", "gallery.png"]


def test_review_gallery_rows(classified):
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, classified.n_obs).astype(np.float32)
    classified.obs["glomerulus_proba"] = p
    classified.obs["glomerulus"] = pd.Categorical(
        np.where(p > 0.5, "glomerulus", "other"), categories=["other", "glomerulus"]
    )
    n = 4
    fig = kgl.pl.review_gallery(classified, n=n)[0, 0].figure
    rows = _rows(fig, n)
    assert [r[0] for r in rows] == [
        "most confident\nglomerulus",
        "most uncertain\nglomerulus",
        "most confident\nother",
        "most uncertain\nother",
    ]
    names = classified.obs_names.to_numpy()
    glom, other = p > 0.5, p <= 0.5
    assert rows[0][1] == list(names[glom][np.argsort(-p[glom], kind="stable")][:n])
    assert rows[1][1] == list(names[glom][np.argsort(p[glom], kind="stable")][:n])
    assert rows[2][1] == list(names[other][np.argsort(p[other], kind="stable")][:n])
    assert rows[3][1] == list(names[other][np.argsort(-p[other], kind="stable")][:n])
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    i = list(names).index(rows[0][1][0])
    assert titles[0] == f"{names[i]}\np = {p[i]:.3f}"


def test_review_gallery_small_classes_and_defaults(classified):
    # 4 glomeruli, n=3: 2 confident + 2 uncertain, never the same spot twice
    fig = kgl.pl.review_gallery(classified, n=3)[0, 0].figure
    rows = _rows(fig, 3)
    assert len(rows[0][1]) == 2 and len(rows[1][1]) == 2 and not set(rows[0][1]) & set(rows[1][1])
    assert set(rows[0][1]) | set(rows[1][1]) == set(classified.obs_names[MARKED])
    assert "60-µm tiles" in fig._suptitle.get_text()  # the classifier's patch_um
    assert "threshold 0.5" in fig._suptitle.get_text()
    del classified.uns["glomerulus"]
    fig = kgl.pl.review_gallery(classified, n=3, spots=classified.obs_names[MARKED])[0, 0].figure
    assert "110-µm tiles" in fig._suptitle.get_text()
    rows = _rows(fig, 3)
    assert rows[2][1] == rows[3][1] == []  # no "other" chosen
    assert any(t.get_text() == "no spots" for t in fig.axes[6].texts)


def test_review_gallery_marks_reviewed(classified, tmp_path):
    names = classified.obs_names
    _review(classified, tmp_path, {names[2]: "other"})
    fig = kgl.pl.review_gallery(classified, n=8)[0, 0].figure
    notes = [t.get_text() for a in fig.axes for t in a.texts]
    assert notes.count("changed → other") == 1
    assert notes.count("reviewed: glomerulus") == 3 and "reviewed: other" in notes
    assert f"{classified.n_obs} reviewed" in fig._suptitle.get_text()


def _two_libraries():
    return two_library_visium(MARKED)


def test_review_gallery_library(tmp_path):
    both = _two_libraries()
    with pytest.raises(ValueError, match=r"several libraries \['A', 'B'\]"):
        kgl.pl.review_gallery(both)
    fig = kgl.pl.review_gallery(both, library_id="B", n=2)[0, 0].figure
    barcodes = [b for _, row in _rows(fig, 2) for b in row]
    assert barcodes and all(b.startswith("B-") for b in barcodes)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n": 0}, ValueError, "positive integer"),
        ({"key": "g"}, KeyError, r"classify_spots\(adata, key_added='g'\)"),
        ({"library_id": "nope"}, KeyError, r"Available: \['lib'\]"),
        ({"patch_um": -1}, ValueError, "patch_um"),
        ({"spots": ["nope"]}, KeyError, "not barcodes"),
    ],
)
def test_review_gallery_errors(classified, tmp_path, kwargs, exc, match):
    before = pickle.dumps((classified.obs, dict(classified.uns)))
    with pytest.raises(exc, match=match):
        kgl.pl.review_gallery(classified, save=tmp_path / "g.png", **kwargs)
    assert pickle.dumps((classified.obs, dict(classified.uns))) == before and not list(tmp_path.iterdir())


def test_review_gallery_save_under_a_file(classified, tmp_path):
    (tmp_path / "blocker").write_text("a file")
    with pytest.raises(NotADirectoryError, match="is a file"):
        kgl.pl.review_gallery(classified, save=tmp_path / "blocker" / "g.png")
    assert [p.name for p in tmp_path.iterdir()] == ["blocker"]


# ---------------------------------------------------------------------------------------------
# spatial_glom shows reviewed labels
# ---------------------------------------------------------------------------------------------
def _red_spots(ax):
    spots = max(ax.collections, key=lambda c: len(c.get_facecolors()))  # not the legend's one-point scatters
    colors = spots.get_facecolors()[:, :3]
    return int((np.abs(colors - np.array([0xD6, 0x27, 0x28]) / 255).max(axis=1) < 0.02).sum())


def test_spatial_glom_shows_reviewed_labels(classified, tmp_path):
    axes = kgl.pl.spatial_glom(classified)
    assert [a.get_title() for a in axes] == ["glomerulus", "glomerulus_proba"]
    assert _red_spots(axes[0]) == len(MARKED)
    names = classified.obs_names
    _review(classified, tmp_path, {names[2]: "other", names[11]: "other", names[0]: "glomerulus"})
    snap = pickle.dumps((classified.obs, dict(classified.obsm), dict(classified.uns)))
    axes = kgl.pl.spatial_glom(classified, save=tmp_path / "s.png")
    assert [a.get_title() for a in axes] == [f"glomerulus ({classified.n_obs} reviewed)", "glomerulus_proba"]
    assert _red_spots(axes[0]) == len(MARKED) - 1
    assert pickle.dumps((classified.obs, dict(classified.obsm), dict(classified.uns))) == snap  # plotted, not written
    assert (tmp_path / "s.png").stat().st_size > 1000
    ax = kgl.pl.spatial_glom(classified, color="glomerulus", title="mine")
    assert ax.get_title() == "mine"
    ax = kgl.pl.spatial_glom(classified, color="glomerulus_proba")
    assert ax.get_title() == "glomerulus_proba"
