import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kgl.tl import check_no_leakage, split_by_group


def _table(n_groups=30, seed=0, stains=("Masson", "PASM", "PAS")):
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        for stain in rng.choice(stains, size=rng.integers(1, 3), replace=False):
            rows += [{"group": f"b{g:03d}", "stain": stain}] * int(rng.integers(5, 60))
    return pd.DataFrame(rows)


def test_split_whole_groups_and_fractions():
    df = _table()
    split = split_by_group(df, seed=0)
    assert split.name == "split" and list(split.cat.categories) == ["train", "val", "test"]
    assert split.index.equals(df.index)
    check_no_leakage(df, split, "group")
    frac = split.value_counts(normalize=True)
    assert frac["train"] == pytest.approx(0.7, abs=0.05)
    assert frac["val"] == pytest.approx(0.15, abs=0.05)
    assert frac["test"] == pytest.approx(0.15, abs=0.05)
    # seeded
    pd.testing.assert_series_equal(split, split_by_group(df, seed=0))
    assert not split.equals(split_by_group(df, seed=1))


def test_split_stratified_by_stain():
    df = _table(n_groups=20, seed=3)
    split = split_by_group(df, stratify_key="stain", seed=0)
    check_no_leakage(df.assign(split=split))
    tab = pd.crosstab(split, df["stain"], normalize="columns")
    assert (tab > 0).all().all()  # every split has every stain
    assert np.allclose(tab.loc["train"], 0.7, atol=0.12)


def test_split_options_and_errors():
    df = pd.DataFrame({"group": ["a", "a", "b", "c"], "x": range(4)})
    two = split_by_group(df, fractions=(0.5, 0.5))
    assert set(two) == {"train", "test"} and list(two.cat.categories) == ["train", "test"]
    no_val = split_by_group(df, fractions=(0.8, 0.0, 0.2))
    assert "val" not in set(no_val)
    with pytest.raises(ValueError, match="cannot fill 3 splits"):
        split_by_group(df.iloc[:3])  # two groups
    with pytest.raises(ValueError, match="sum to 1"):
        split_by_group(df, fractions=(0.7, 0.2, 0.2))
    with pytest.raises(ValueError, match="train, val, test"):
        split_by_group(df, fractions=(0.25,) * 4)
    with pytest.raises(KeyError, match="patient"):
        split_by_group(df, group_key="patient")
    with pytest.raises(ValueError, match="no 'group'"):
        split_by_group(df.assign(group=["a", None, "b", "c"]))


def test_leakage_check_catches_planted_leak():
    df = _table(n_groups=10)
    split = split_by_group(df)
    check_no_leakage(df, split)
    leaky = split.copy()
    victim = df["group"].iloc[0]
    idx = df.index[df["group"] == victim][0]
    leaky[idx] = "test" if split[idx] != "test" else "train"
    with pytest.raises(ValueError, match=victim):
        check_no_leakage(df, leaky, "group")
    with pytest.raises(ValueError, match="1 'group' group"):
        check_no_leakage(df.assign(split=leaky))
    with pytest.raises(KeyError):
        check_no_leakage(df, "nope")
    with pytest.raises(ValueError, match="values for"):
        check_no_leakage(df, leaky.iloc[:-1].to_numpy())


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=3, max_size=30),
    seed=st.integers(0, 2**16),
    train=st.floats(0.4, 0.8),
)
def test_split_never_leaks(sizes, seed, train):
    groups = np.repeat([f"g{i}" for i in range(len(sizes))], sizes)
    df = pd.DataFrame({"group": groups}).sample(frac=1.0, random_state=seed % 1000)
    rest = (1.0 - train) / 2
    split = split_by_group(df, fractions=(train, rest, 1.0 - train - rest), seed=seed)
    assert split.notna().all()
    check_no_leakage(df, split, "group")
    assert set(split) == {"train", "val", "test"}  # every split gets a group when there are enough
