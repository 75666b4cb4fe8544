import anndata as ad
import numpy as np
import pandas as pd
import pytest

import kgl
from kgl.datasets import GLOMERULAR_MARKERS, TUBULAR_MARKERS


def coverage_spots(n: int = 600, seed: int = 0, frac_glom: float = 0.12) -> ad.AnnData:
    """Spots without genes, with a ground-truth coverage: ~12 % inside glomeruli, some partial."""
    rng = np.random.default_rng(seed)
    cov = np.zeros(n)
    k = int(n * frac_glom)
    cov[:k] = rng.uniform(0.6, 1.0, k)
    cov[k : 2 * k] = rng.uniform(0.0, 0.3, k)
    obs = pd.DataFrame({"glomerulus_coverage": cov}, index=[f"s{seed}-{i}" for i in range(n)])
    a = ad.AnnData(obs=obs)
    a.obsm["spatial"] = rng.uniform(0, 1000, (n, 2))
    return a


def test_simulated_counts_are_flagged_and_follow_coverage():
    a = coverage_spots()
    out = kgl.datasets.simulate_counts(a, seed=1)
    assert a.n_vars == 0  # the input is not changed
    assert out.n_obs == a.n_obs and out.n_vars == len(GLOMERULAR_MARKERS) + len(TUBULAR_MARKERS) + 300
    meta = out.uns["simulated_counts"]
    assert meta["simulated"] is True and "SIMULATED" in meta["note"]
    assert out.var["simulated_role"].value_counts()["glomerular"] == len(GLOMERULAR_MARKERS)
    x = out.X.toarray()
    assert np.array_equal(x, np.round(x)) and (x >= 0).all()
    cov = a.obs["glomerulus_coverage"].to_numpy()
    glom = out.var["simulated_role"].to_numpy() == "glomerular"
    tub = out.var["simulated_role"].to_numpy() == "tubular"
    share_g = x[:, glom].sum(1) / x.sum(1)
    share_t = x[:, tub].sum(1) / x.sum(1)
    assert np.corrcoef(cov, share_g)[0, 1] > 0.6
    assert np.corrcoef(cov, share_t)[0, 1] < -0.6
    np.testing.assert_allclose(np.median(x.sum(1)), 3000, rtol=0.15)
    np.testing.assert_array_equal(out.obsm["spatial"], a.obsm["spatial"])


def test_simulated_counts_seeded_and_mouse_symbols():
    a = coverage_spots(n=100)
    x1 = kgl.datasets.simulate_counts(a, seed=3).X.toarray()
    x2 = kgl.datasets.simulate_counts(a, seed=3).X.toarray()
    x3 = kgl.datasets.simulate_counts(a, seed=4).X.toarray()
    np.testing.assert_array_equal(x1, x2)
    assert not np.array_equal(x1, x3)
    m = kgl.datasets.simulate_counts(a, species="mouse")
    assert "Nphs1" in m.var_names and "NPHS1" not in m.var_names


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"species": "zebrafish"}, ValueError, "species"),
        ({"coverage_key": "nope"}, KeyError, "nope"),
        ({"glomerular_fold": 0.5}, ValueError, "glomerular_fold"),
        ({"n_background": -1}, ValueError, "n_background"),
    ],
)
def test_simulate_counts_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        kgl.datasets.simulate_counts(coverage_spots(n=20), **kwargs)


def test_simulate_counts_refuses_samples_with_genes():
    a = kgl.datasets.simulate_counts(coverage_spots(n=20))
    with pytest.raises(ValueError, match="already has"):
        kgl.datasets.simulate_counts(a)


@pytest.mark.realdata
def test_pas_tiles_visium_with_counts(shared_data, tmp_path):
    a = kgl.datasets.pas_tiles_visium(simulate_counts=True, counts_kwargs={"n_background": 50})
    assert a.n_vars == len(GLOMERULAR_MARKERS) + len(TUBULAR_MARKERS) + 50
    assert a.uns["pseudo_visium"]["params"]["simulate_counts"] is True
    assert a.uns["simulated_counts"]["seed"] == 0
    a.write_h5ad(tmp_path / "a.h5ad")  # uns flags survive the round trip
    b = ad.read_h5ad(tmp_path / "a.h5ad")
    assert bool(b.uns["simulated_counts"]["simulated"])
    with pytest.raises(ValueError, match="simulate_counts=True"):
        kgl.datasets.pas_tiles_visium(counts_kwargs={"n_background": 5})
