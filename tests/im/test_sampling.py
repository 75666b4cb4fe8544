import numpy as np
import pandas as pd
import pytest
import shapely
from PIL import Image

from kgl.im import LABEL_NAMES, patch_counts, read_patch, sample_patches, write_patches
from kgl.im._sampling import _safe_name

MPP = 0.5
PINK = (230, 190, 215)
RED = (200, 30, 30)
# glomerulus: a disk of radius 80 µm (160 px) centred at (300, 400) px on a 1000 x 800 px image
CX, CY, R_PX = 300.0, 400.0, 160.0


def _slide(tmp_path, name="s1", *, group="g1", size=(1000, 800), centre=(CX, CY), radius=R_PX):
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    img[...] = PINK
    yy, xx = np.mgrid[:h, :w]
    img[(xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2] = RED
    path = tmp_path / f"{name}.png"
    Image.fromarray(img).save(path)
    poly = shapely.Point(centre).buffer(radius, quad_segs=64)
    return {"slide": name, "path": str(path), "group": group, "mpp": MPP, "polygons": [poly], "stain": "PAS"}


@pytest.fixture
def slides(tmp_path):
    return pd.DataFrame([_slide(tmp_path, "s1"), _slide(tmp_path, "s2", group="g2", centre=(600, 300))])


def _dist_to_centre(df):
    return np.hypot(df["x"] - CX, df["y"] - CY)


def test_labels_follow_disk_coverage(slides):
    df = sample_patches(slides.iloc[:1], keep_ambiguous=True, hard_negatives=0, jitter_um=40.0, pitch_um=30.0)
    assert set(df["label"]) == {-1, 0, 1}
    spot_r = 27.5 / MPP  # 55-µm disk radius in px
    d = _dist_to_centre(df)
    # well inside: fully covered; well outside: untouched; across the outline: partly covered
    assert (df.loc[d < R_PX - spot_r - 1, "coverage"] > 0.999).all()
    assert (df.loc[d < R_PX - spot_r - 1, "label"] == 1).all()
    assert (df.loc[d > R_PX + spot_r + 1, ["coverage", "label"]] == 0).all().all()
    edge = (d > R_PX - spot_r + 1) & (d < R_PX + spot_r - 1)
    assert ((df.loc[edge, "coverage"] > 0) & (df.loc[edge, "coverage"] < 1)).all()
    # label rule
    assert ((df["coverage"] >= 0.5) == (df["label"] == 1)).all()
    assert ((df["coverage"] == 0) == (df["label"] == 0)).all()
    # the centre point itself: a row placed there by hand reads coverage 1 through the same function
    from kgl._geometry import spot_coverage

    assert spot_coverage(np.array([[CX, CY]]), slides.iloc[0]["polygons"], spot_r)[0] == pytest.approx(1.0)
    # dropping ambiguous
    kept = sample_patches(slides.iloc[:1], hard_negatives=0, jitter_um=40.0, pitch_um=30.0)
    assert set(kept["label"]) == {0, 1}
    assert len(kept) == (df["label"] != -1).sum()
    assert kept.attrs["class_counts"]["grid"]["ambiguous"] == (df["label"] == -1).sum() > 0
    # a higher threshold moves partly covered patches from glomerulus to ambiguous
    strict = sample_patches(slides.iloc[:1], hard_negatives=0, jitter_um=40.0, pitch_um=30.0, pos_threshold=0.99)
    assert (strict["label"] == 1).sum() < (kept["label"] == 1).sum()
    assert (strict.loc[strict["label"] == 1, "coverage"] >= 0.99).all()


def test_hard_negatives_in_ring_with_zero_coverage(slides):
    df = sample_patches(slides, hard_negatives=5)
    hard = df[df["kind"] == "hard_negative"]
    assert hard.groupby("slide").size().to_dict() == {"s1": 5, "s2": 5}
    assert (hard["coverage"] == 0).all() and (hard["label"] == 0).all()
    for slide, grp in hard.groupby("slide"):
        poly = slides.set_index("slide").loc[slide, "polygons"][0]
        d_um = shapely.distance(shapely.points(grp[["x", "y"]].to_numpy()), poly) * MPP
        # inside the ring, and beyond the 27.5-µm disk radius (zero coverage)
        assert (d_um >= 27.5).all() and (d_um <= 120.0).all()
    assert df.attrs["class_counts"]["hard_negative"] == {"glomerulus": 0, "other": 10, "ambiguous": 0}
    none = sample_patches(slides, hard_negatives=0)
    assert (none["kind"] == "grid").all()


def test_lattice_pitch_and_jitter(slides):
    kw = {"hard_negatives": 0, "keep_ambiguous": True, "min_inside": 0.0}
    exact = sample_patches(slides.iloc[:1], jitter_um=0.0, **kw)
    xy = exact[["x", "y"]].to_numpy()
    d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    assert np.allclose(d.min(axis=1) * MPP, 100.0)  # Visium pitch, in µm
    interior = (xy[:, 0] > 300) & (xy[:, 0] < 700) & (xy[:, 1] > 300) & (xy[:, 1] < 500)
    assert interior.any()
    assert ((np.abs(d[interior] * MPP - 100.0) < 1e-6).sum(axis=1) == 6).all()  # hexagonal: six neighbours
    # the image is covered: every pixel within one pitch of a lattice point
    assert len(exact) >= (1000 * 800 * MPP**2) / (100.0**2 * np.sqrt(3) / 2)
    jit = sample_patches(slides.iloc[:1], jitter_um=25.0, **kw)
    assert len(jit) == len(exact)  # same seed → same lattice offset; jitter moves each point ±25 µm
    delta = (jit[["x", "y"]].to_numpy() - xy) * MPP
    assert np.abs(delta).max() <= 25.0 and np.abs(delta).max() > 10.0
    other = sample_patches(slides.iloc[:1], pitch_um=50.0, jitter_um=0.0, **kw)
    on = [((d["x"] >= 0) & (d["x"] < 1000) & (d["y"] >= 0) & (d["y"] < 800)).sum() for d in (other, exact)]
    area = 1000 * 800 * MPP**2  # µm², one lattice point per pitch² · √3/2
    assert on[0] == pytest.approx(area / (50.0**2 * np.sqrt(3) / 2), rel=0.15)
    assert on[1] == pytest.approx(area / (100.0**2 * np.sqrt(3) / 2), rel=0.3)


def test_min_inside_and_columns(slides):
    df = sample_patches(slides, min_inside=1.0)
    side = df["patch_um"] / df["mpp"]
    assert (df["x"] - side / 2 >= -0.5 - 1e-9).all() and (df["x"] + side / 2 <= 1000 - 0.5 + 1e-9).all()
    assert np.allclose(df["in_image"], 1.0)
    half = sample_patches(slides)
    assert (half["in_image"] >= 0.5).all() and (half["in_image"] < 1).any()
    assert list(half.columns[:11]) == [
        "slide",
        "path",
        "group",
        "x",
        "y",
        "mpp",
        "patch_um",
        "coverage",
        "label",
        "kind",
        "in_image",
    ]
    assert "stain" in half.columns and "polygons" not in half.columns
    assert (half["stain"] == "PAS").all()
    assert set(half["kind"]) == {"grid", "hard_negative"}
    assert half.attrs["params"]["patch_um"] == 110.0


def test_seed_determinism_and_slide_independence(slides):
    a = sample_patches(slides, seed=3)
    b = sample_patches(slides, seed=3)
    pd.testing.assert_frame_equal(a, b)
    c = sample_patches(slides, seed=4)
    assert not np.allclose(a["x"].to_numpy()[:10], c["x"].to_numpy()[:10])
    alone = sample_patches(slides.iloc[1:], seed=3).reset_index(drop=True)
    pd.testing.assert_frame_equal(alone, a[a["slide"] == "s2"].reset_index(drop=True))


def test_size_from_header_or_columns(slides):
    with_size = slides.assign(width=1000, height=800)
    pd.testing.assert_frame_equal(
        sample_patches(with_size).drop(columns=["width", "height"]), sample_patches(slides), check_like=True
    )


def test_errors(slides):
    with pytest.raises(KeyError, match="polygons"):
        sample_patches(slides.drop(columns="polygons"))
    with pytest.raises(ValueError, match="µm/px"):
        sample_patches(slides.assign(mpp=[0.5, np.nan]))
    with pytest.raises(ValueError, match="unique"):
        sample_patches(pd.concat([slides, slides]))
    with pytest.raises(ValueError, match="pos_threshold"):
        sample_patches(slides, pos_threshold=0.0)
    with pytest.raises(ValueError, match="ring"):
        sample_patches(slides, hard_negative_ring_um=(50.0, 20.0))
    with pytest.raises(TypeError, match="shapely"):
        sample_patches(slides.assign(polygons=[[1, 2], []]))
    with pytest.raises(FileNotFoundError):
        sample_patches(slides.assign(path=["/nonexistent/a.png", "/nonexistent/b.png"]))


def test_patch_counts(slides):
    df = sample_patches(slides)
    counts = patch_counts(df)
    assert list(counts.columns) == ["stain", "kind", "label", "n"]
    assert counts["n"].sum() == len(df)
    df["split"] = np.where(df["slide"] == "s1", "train", "test")
    by = patch_counts(df, by=["split", "label"])
    assert set(by["split"]) == {"train", "test"} and by["n"].sum() == len(df)
    with pytest.raises(KeyError):
        patch_counts(df, by=["nope"])


def test_read_patch_centre_scale_and_cache(slides):
    row = pd.Series({"path": slides.loc[0, "path"], "x": CX, "y": CY, "mpp": MPP, "patch_um": 100.0})
    patch = read_patch(row, size=32)
    assert patch.shape == (32, 32, 3) and patch.dtype == np.uint8
    assert (patch == RED).all()  # a 200-px square inside the 160-px-radius disk
    wide = read_patch(row, size=32, scale=2.5)  # 250 µm: corners on the pink background
    assert tuple(wide[0, 0]) == PINK and tuple(wide[16, 16]) == RED
    cache = {}
    read_patch(row, size=8, cache=cache)
    img = cache[row["path"]]
    read_patch(row.to_dict(), size=8, cache=cache)
    assert cache[row["path"]] is img and len(cache) == 1
    tup = next(pd.DataFrame([row]).itertuples(index=False))
    assert np.array_equal(read_patch(tup, size=32), patch)
    with pytest.raises(ValueError, match="scale"):
        read_patch(row, size=8, scale=0)


def test_write_patches_round_trip(tmp_path, slides):
    df = sample_patches(slides, keep_ambiguous=True)
    df.loc[df["slide"] == "s2", "slide"] = "../../evil/s2"  # sanitised: nothing escapes out_dir
    out = tmp_path / "patches"
    index = write_patches(df, out, size=48)
    assert len(index) == len(df)
    files = sorted(p for p in tmp_path.rglob("*.png") if out in p.parents)
    assert len(files) == len(df)
    assert not [p for p in tmp_path.rglob("*.png") if out not in p.parents and p.parent != tmp_path]
    assert {p.parent.name for p in files} <= set(LABEL_NAMES.values())
    assert not list(out.rglob(".*.tmp"))
    for name in ("index.csv", "index.parquet"):
        back = pd.read_csv(out / name) if name.endswith("csv") else pd.read_parquet(out / name)
        assert list(back["png"]) == list(index["png"])
        assert {"slide", "x", "y", "mpp", "patch_um", "coverage", "label", "group", "png"} <= set(back.columns)
    # PNGs of positives at the glomerulus centre are red in the middle; far negatives are pink
    pos = index[(index["label"] == 1)]
    assert len(pos)
    for rel in pos["png"]:
        arr = np.asarray(Image.open(out / rel))
        assert arr.shape == (48, 48, 3)
        assert tuple(arr[24, 24]) == RED
    neg = index[(index["label"] == 0) & (index["slide"] == "s1")]
    on_image = (neg["x"] > 20) & (neg["x"] < 980) & (neg["y"] > 20) & (neg["y"] < 780)
    far = neg[(np.hypot(neg["x"] - CX, neg["y"] - CY) > R_PX + 150) & on_image]
    assert len(far)
    for rel in far["png"]:
        assert tuple(np.asarray(Image.open(out / rel))[24, 24]) == PINK
    amb = index[index["label"] == -1]
    assert all(p.startswith("ambiguous/") for p in amb["png"])
    assert _safe_name("../../evil/s2") == "_.._evil_s2"
    assert _safe_name("...") == "slide"


@pytest.mark.realdata
def test_real_multistain_patches():
    from kgl._settings import settings
    from kgl.datasets import multistain_slides

    try:
        settings.find_data("glomeruli-multistain")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    slides = multistain_slides()
    df = sample_patches(slides)
    counts = patch_counts(df, by=["stain", "label"])
    assert (counts.groupby("stain")["label"].nunique() == 2).all()  # positives and negatives for every stain
    cc = df.attrs["class_counts"]
    assert cc["grid"]["glomerulus"] > 300 and cc["grid"]["other"] > 1000
    assert cc["hard_negative"]["other"] > 250  # ~2 per glomerulus, 167 glomeruli
    assert (df.loc[df["kind"] == "hard_negative", "coverage"] == 0).all()
    assert set(df["group"]) <= set(slides["group"])
    # a positive patch read back is tissue (not blank background)
    row = df[df["label"] == 1].iloc[0]
    patch = read_patch(row, size=64)
    assert patch.std() > 5
