import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import kgl


def _patch_table(tmp_path, seed=0):
    """One slide: a red disk on pink noise; three patch centres on it (label 1), three off it (label 0)."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal((225, 185, 210), 10, (200, 200, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:200, :200]
    img[(xx - 60) ** 2 + (yy - 60) ** 2 <= 40**2] = (150, 30, 60)
    Image.fromarray(img).save(tmp_path / "slide.png")
    xy = [(60, 60, 1), (65, 55, 1), (55, 64, 1), (150, 150, 0), (40, 160, 0), (160, 40, 0)]
    df = pd.DataFrame(xy, columns=["x", "y", "label"])
    return df.assign(path=str(tmp_path / "slide.png"), slide="s0", group="s0", mpp=1.0, patch_um=60.0)


def test_augmentations_are_seeded_and_shape_preserving(tmp_path):
    table = _patch_table(tmp_path)
    i = int(np.flatnonzero(table["label"] == 0)[0])  # a noisy background patch
    for aug in kgl.im.AUGMENTATIONS:
        ds = kgl.im.PatchDataset(table, size=32, augment=aug, seed=3)
        a, la = ds[i]
        b, _ = ds[i]
        assert a.shape == (32, 32, 3) and a.dtype == np.uint8 and la == 0
        np.testing.assert_array_equal(a, b)  # same (seed, epoch, index): same patch
        ds.set_epoch(1)
        assert not np.array_equal(ds[i][0], a)  # another epoch: another draw (scale jitter at least)
    grey = kgl.im.PatchDataset(table, size=32, augment="grey", train=False)[i][0]
    assert (grey[..., 0] == grey[..., 1]).all()
    with pytest.raises(ValueError, match="augment"):
        kgl.im.build_transform("sepia")
    with pytest.raises(KeyError, match="sample_patches"):
        kgl.im.PatchDataset(table.drop(columns="mpp"), size=32)


def test_collate_stacks_a_batch(tmp_path):
    import torch

    from kgl.im import collate_patches

    ds = kgl.im.PatchDataset(_patch_table(tmp_path), size=16, train=False)
    x, y = collate_patches([ds[0], ds[4]])
    assert x.shape == (2, 16, 16, 3) and x.dtype == torch.uint8 and y.tolist() == [1, 0]


def test_kgl_tl_names_stay_the_kgl_im_ones():
    assert kgl.tl.PatchDataset is kgl.im.PatchDataset
    assert kgl.tl.build_transform is kgl.im.build_transform
    assert kgl.tl.AUGMENTATIONS is kgl.im.AUGMENTATIONS
    names = {"PatchDataset", "build_transform", "AUGMENTATIONS"}
    assert names <= set(kgl.im.__all__) and not names & set(kgl.tl.__all__)  # documented once, in kgl.im


def test_import_kgl_im_loads_neither_torch_nor_albumentations():
    code = "import sys, kgl.im; bad = {'torch', 'albumentations'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)
