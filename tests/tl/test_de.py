import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import kgl
from kgl.datasets import GLOMERULAR_MARKERS


def _sample(seed: int, n: int = 500, species: str = "human") -> ad.AnnData:
    rng = np.random.default_rng(100 + seed)
    cov = np.zeros(n)
    k = n // 8
    cov[:k] = rng.uniform(0.6, 1.0, k)
    cov[k : 2 * k] = rng.uniform(0.0, 0.3, k)
    a = ad.AnnData(obs=pd.DataFrame({"glomerulus_coverage": cov}, index=[f"s{seed}-{i}" for i in range(n)]))
    a = kgl.datasets.simulate_counts(a, seed=seed, species=species, n_background=200)
    a.obs["library_id"] = f"sample{seed}"
    a.obs["glomerulus"] = pd.Categorical(
        np.where(cov >= 0.5, "glomerulus", "other"), categories=["other", "glomerulus"]
    )
    return a


@pytest.fixture(scope="module")
def one_sample() -> ad.AnnData:
    return _sample(0)


@pytest.fixture(scope="module")
def three_samples() -> ad.AnnData:
    return ad.concat([_sample(s) for s in range(3)], merge="same", uns_merge="first")


def _roles(a: ad.AnnData, table: pd.DataFrame) -> pd.Series:
    return a.var["simulated_role"].reindex(table["gene"]).reset_index(drop=True)


def _check_recovery(a: ad.AnnData, table: pd.DataFrame) -> None:
    roles = _roles(a, table)
    n = len(GLOMERULAR_MARKERS)
    # the planted glomerular markers are the top of the ranking, significant and up
    assert (roles[:n] == "glomerular").all()
    top = table.iloc[:n]
    assert (top["padj"] < 0.01).all() and (top["log2fc"] > 1.5).all()
    # tubular markers go down
    assert (table.loc[roles == "tubular", "log2fc"] < 0).all()
    # unplanted genes are not called: at most 5 % false discoveries at padj < 0.05
    bg = table[roles == "background"]
    assert (bg["padj"] < 0.05).mean() <= 0.05


def test_wilcoxon_recovers_planted_markers(one_sample):
    a = one_sample.copy()
    assert kgl.tl.glom_markers(a) is None  # inplace: stored, as scanpy's tools
    table = a.uns["glomerulus_markers"]["results"]
    assert list(table.columns[:2]) == ["gene", "method"] and (table["method"] == "wilcoxon").all()
    assert {"log2fc", "score", "pvalue", "padj", "pct_group", "pct_rest"} <= set(table.columns)
    assert len(table) == (np.asarray(a.X.sum(axis=0)).ravel() > 0).sum()
    _check_recovery(a, table)
    x = a[:, table["gene"].to_numpy()].X.toarray()
    inside = (a.obs["glomerulus"] == "glomerulus").to_numpy()
    np.testing.assert_allclose(table["pct_group"], (x[inside] != 0).mean(axis=0))
    np.testing.assert_allclose(table["pct_rest"], (x[~inside] != 0).mean(axis=0))
    entry = a.uns["glomerulus_markers"]
    pd.testing.assert_frame_equal(entry["results"], table)
    assert (
        entry["params"]["group"] == "glomerulus"
        and entry["params"]["n_group"] == (a.obs.glomerulus == "glomerulus").sum()
    )


def test_wilcoxon_counts_and_lognormalised_agree(one_sample):
    import scanpy as sc

    a = one_sample.copy()
    raw = kgl.tl.glom_markers(a, inplace=False)
    b = a.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    logn = kgl.tl.glom_markers(b, inplace=False)
    pd.testing.assert_series_equal(raw["gene"], logn["gene"])
    np.testing.assert_allclose(raw["score"], logn["score"], rtol=1e-5)
    assert "glomerulus_markers" not in a.uns  # inplace=False


def test_pseudobulk_recovers_planted_markers(three_samples):
    a = three_samples.copy()
    kgl.tl.glom_markers(a, method="pseudobulk", key_added="pb")
    table = a.uns["pb"]["results"]
    assert (table["method"] == "pseudobulk").all() and {"base_mean", "lfc_se"} <= set(table.columns)
    _check_recovery(a, table)
    design = a.uns["pb"]["design"]
    assert len(design) == 6 and set(design["sample"]) == {"sample0", "sample1", "sample2"}
    assert set(design["group"]) == {"glomerulus", "rest"}
    assert design["n_spots"].sum() == a.n_obs


def test_pseudobulk_uses_counts_layer(three_samples):
    import scanpy as sc

    a = three_samples.copy()
    a.layers["counts"] = a.X.copy()
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    with pytest.raises(ValueError, match="layer='counts'"):
        kgl.tl.glom_markers(a, method="pseudobulk")
    table = kgl.tl.glom_markers(a, method="pseudobulk", layer="counts", inplace=False)
    assert (_roles(a, table)[: len(GLOMERULAR_MARKERS)] == "glomerular").all()


def test_reviewed_labels_win(one_sample):
    a = one_sample.copy()
    glom = np.flatnonzero(a.obs["glomerulus"] == "glomerulus")
    reviewed = pd.Categorical([np.nan] * a.n_obs, categories=["other", "glomerulus"])
    reviewed[glom[:10]] = "other"
    a.obs["glomerulus_reviewed"] = reviewed
    kgl.tl.glom_markers(a)
    params = a.uns["glomerulus_markers"]["params"]
    assert params["used_reviewed_labels"] is True
    assert params["n_group"] == len(glom) - 10
    check = kgl.tl.marker_check(a)
    assert (check["n_group"] == len(glom) - 10).all()


@pytest.mark.parametrize(
    ("change", "kwargs", "exc", "match"),
    [
        (lambda a: a.obs.drop(columns="glomerulus", inplace=True), {}, KeyError, "classify_spots"),
        (None, {"group": "tubule"}, ValueError, "categories are"),
        (None, {"method": "t-test"}, ValueError, "method must be"),
        (None, {"layer": "nope"}, KeyError, "layers"),
        (None, {"min_spots": 0}, ValueError, "min_spots"),
        (None, {"method": "pseudobulk"}, ValueError, "at least 2 samples"),
        (lambda a: a.obs.drop(columns="library_id", inplace=True), {"method": "pseudobulk"}, KeyError, "library_key"),
        (
            lambda a: a.obs.__setitem__(
                "glomerulus", pd.Categorical(["other"] * a.n_obs, categories=["other", "glomerulus"])
            ),
            {},
            ValueError,
            "in and outside",
        ),
    ],
)
def test_glom_markers_bad_input_writes_nothing(one_sample, change, kwargs, exc, match):
    a = one_sample.copy()
    if change is not None:
        change(a)
    uns_before = set(a.uns)
    with pytest.raises(exc, match=match):
        kgl.tl.glom_markers(a, **kwargs)
    assert set(a.uns) == uns_before


def test_no_genes_is_a_clear_error(visium):
    visium.obs["glomerulus"] = pd.Categorical(
        ["other", "glomerulus"] * (visium.n_obs // 2) + ["other"] * (visium.n_obs % 2)
    )
    for f in (kgl.tl.glom_markers, kgl.tl.marker_check):
        with pytest.raises(ValueError, match="no genes"):
            f(visium)


def test_marker_check_planted_vs_background(one_sample):
    a = one_sample.copy()
    bg = [g for g in a.var_names if g.startswith("Sim")][:20]
    check = kgl.tl.marker_check(a, markers=[*kgl.tl.PODOCYTE_MARKERS, *bg])
    assert list(check.columns[:4]) == ["gene", "var_name", "found", "auroc"]
    pod = check.iloc[: len(kgl.tl.PODOCYTE_MARKERS)]
    assert pod["found"].all() and (pod["auroc"] > 0.7).all() and pod["auroc"].median() > 0.9
    assert (pod["mean_group"] > pod["mean_rest"]).all()
    assert check.iloc[len(kgl.tl.PODOCYTE_MARKERS) :]["auroc"].between(0.3, 0.7).all()


def test_marker_check_missing_genes_reported(one_sample, kgl_log):
    check = kgl.tl.marker_check(one_sample, markers=["NPHS1", "NOT_A_GENE"])
    row = check.set_index("gene").loc["NOT_A_GENE"]
    assert not row["found"] and np.isnan(row["auroc"]) and row["var_name"] is None
    assert "NOT_A_GENE" in kgl_log.text


def test_marker_check_mouse_case_and_gene_symbols():
    a = _sample(5, species="mouse")
    check = kgl.tl.marker_check(a)  # human symbols match the mouse genes
    assert check["found"].all() and check.loc[0, "var_name"] == "Nphs1"
    assert (check["auroc"] > 0.7).all()
    # Ensembl-style var_names with symbols in a column
    a.var["symbol"] = a.var_names
    a.var_names = [f"ENSMUSG{i:011d}" for i in range(a.n_vars)]
    by_symbol = kgl.tl.marker_check(a, gene_symbols="symbol")
    np.testing.assert_allclose(by_symbol["auroc"], check["auroc"])
    with pytest.raises(KeyError, match="symbol_col"):
        kgl.tl.marker_check(a, gene_symbols="symbol_col")


def test_marker_check_dense_lognormalised_matches_counts(one_sample):
    import scanpy as sc

    a = one_sample.copy()
    raw = kgl.tl.marker_check(a)
    a.X = sparse.csr_matrix(a.X).toarray()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    np.testing.assert_allclose(kgl.tl.marker_check(a)["auroc"], raw["auroc"], rtol=1e-9)


def test_spatialdata_table_gives_the_same_results():
    from spatialdata_io.experimental import from_legacy_anndata

    from _kgl_fixtures import make_visium

    base = make_visium()
    rng = np.random.default_rng(0)
    base.obs["glomerulus_coverage"] = np.where(rng.random(base.n_obs) < 0.3, 0.9, 0.0)
    a = kgl.datasets.simulate_counts(base, n_background=20)
    a.obs["glomerulus"] = pd.Categorical(
        np.where(a.obs["glomerulus_coverage"] >= 0.5, "glomerulus", "other"), categories=["other", "glomerulus"]
    )
    sdata = from_legacy_anndata(a.copy())
    expected = kgl.tl.glom_markers(a, inplace=False)
    kgl.tl.glom_markers(sdata)
    got = sdata.tables["table"].uns["glomerulus_markers"]["results"]
    pd.testing.assert_frame_equal(got, expected)
    assert "glomerulus_markers" in sdata.tables["table"].uns
    pd.testing.assert_frame_equal(kgl.tl.marker_check(sdata), kgl.tl.marker_check(a))
    with pytest.raises(ValueError, match="only for a SpatialData"):
        kgl.tl.marker_check(a, table_name="table")
