"""From glomerulus labels to glomerular genes: differential expression and a marker sanity check.

The statistics are the field's: scanpy's Wilcoxon rank-sum test per spot, and a pseudobulk
negative-binomial GLM across samples (decoupler sums counts per sample and group, PyDESeq2 fits
DESeq2's model). kgl only chooses the spots (reviewed labels win, see
:func:`kgl.tl.apply_review`), the data (counts vs. log-normalised) and the tidy output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kgl._docs import d
from kgl._logging import logger
from kgl._spatialdata import accepts_spatialdata
from kgl._types import DEMethod, options
from kgl._utils import reviewed_labels
from kgl._validators import check_int, check_key, save_data

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from spatialdata import SpatialData

__all__ = ["PODOCYTE_MARKERS", "glom_markers", "marker_check"]

#: Podocyte / glomerular markers checked by :func:`marker_check` (matched case-insensitively, so
#: the mouse symbols ``Nphs1``, ``Nphs2``, ... match too).
PODOCYTE_MARKERS = ("NPHS1", "NPHS2", "PODXL", "WT1", "PTPRO", "CLIC5")
_METHODS = options(DEMethod)


def _no_table_name(table_name: str | None) -> None:
    if table_name is not None:
        raise ValueError("table_name is only for a SpatialData object; adata is an AnnData.")


def _groups(adata: AnnData, key: str, group: str | None) -> tuple[pd.Series, str]:
    """Labels (reviewed ones win) and the tested group, validated."""
    labels = reviewed_labels(adata, key)
    cats = list(labels.cat.categories)
    group = cats[-1] if group is None else group  # classify_spots orders categories [other, glomerulus]
    if group not in cats:
        raise ValueError(f"group={group!r} is not a category of adata.obs[{key!r}]; categories are {cats}.")
    n_in = int((labels == group).sum())
    n_out = int((labels.notna() & (labels != group)).sum())
    if n_in == 0 or n_out == 0:
        raise ValueError(
            f"adata.obs[{key!r}] needs spots in and outside {group!r} to compare; it has {n_in} {group!r} spots and "
            f"{n_out} others (value counts: {labels.value_counts(dropna=False).to_dict()})."
        )
    return labels, group


def _matrix(adata: AnnData, layer: str | None) -> Any:
    if layer is None:
        return adata.X
    if layer not in adata.layers:
        raise KeyError(f"adata.layers[{layer!r}] not found; layers are {list(adata.layers)}.")
    return adata.layers[layer]


def _is_counts(x: Any) -> bool:
    """Whether a matrix holds non-negative integers (raw counts), checked on its stored values."""
    from scipy import sparse

    vals = x.data if sparse.issparse(x) else np.asarray(x)
    vals = vals[:1_000_000] if vals.ndim == 1 else vals.ravel()[:1_000_000]
    return bool(vals.size == 0 or ((vals >= 0).all() and np.equal(np.mod(vals, 1), 0).all()))


def _check_genes(adata: AnnData) -> None:
    if adata.n_vars == 0:
        raise ValueError(
            "adata has no genes: differential expression needs the sample's counts (e.g. kgl.io.read_visium with the "
            "count matrix, or kgl.datasets.pseudo_visium(..., simulate_counts=True) for a simulated test sample)."
        )


def _per_10k(x: Any, *, log1p: bool = False) -> Any:
    """Counts per 10,000 (scanpy's ``normalize_total``), optionally ``log1p``-ed, on a throw-away AnnData."""
    import anndata as ad
    import scanpy as sc

    tmp = ad.AnnData(X=x.astype(np.float32, copy=True))
    sc.pp.normalize_total(tmp, target_sum=1e4)
    if log1p:
        sc.pp.log1p(tmp)
    return tmp.X


def _wilcoxon(adata: AnnData, labels: pd.Series, group: str, layer: str | None, min_spots: int) -> pd.DataFrame:
    import anndata as ad
    import scanpy as sc

    n_in = int((labels == group).sum())
    if n_in < min_spots:
        logger.warning("Only %d %r spots (min_spots=%d): the test has little power.", n_in, group, min_spots)
    keep = labels.notna().to_numpy()
    x = _matrix(adata, layer)[keep]
    expressed = np.asarray((x != 0).sum(axis=0)).ravel() > 0
    if not expressed.all():  # as in the pseudobulk path: genes never detected in these spots are not tested
        logger.info("%d genes without counts in the compared spots are not tested.", int((~expressed).sum()))
    var_names = adata.var_names[expressed]
    x = x[:, expressed]
    if _is_counts(x):
        logger.info("The expression data are raw counts: log1p of counts per 10,000 for the Wilcoxon test.")
        x = _per_10k(x, log1p=True)
    grp = np.where(labels[keep].to_numpy() == group, "in", "out")
    tmp = ad.AnnData(X=x, obs=pd.DataFrame({"g": pd.Categorical(grp)}, index=adata.obs_names[keep]))
    tmp.var_names = var_names
    tmp.uns["log1p"] = {"base": None}
    sc.tl.rank_genes_groups(tmp, "g", groups=["in"], reference="out", method="wilcoxon", tie_correct=True, pts=True)
    res = sc.get.rank_genes_groups_df(tmp, group="in")
    pct = tmp.uns["rank_genes_groups"]["pts"]  # fraction of spots expressing each gene, per group
    genes = res["names"].astype(str)
    out = pd.DataFrame(
        {
            "gene": genes.to_numpy(),
            "log2fc": res["logfoldchanges"].to_numpy(np.float64),
            "score": res["scores"].to_numpy(np.float64),
            "pvalue": res["pvals"].to_numpy(np.float64),
            "padj": res["pvals_adj"].to_numpy(np.float64),
            "pct_group": pct["in"].loc[genes].to_numpy(np.float64),
            "pct_rest": pct["out"].loc[genes].to_numpy(np.float64),
        }
    )
    return out


def _n_spots(pdata: Any) -> pd.Series:
    """Spots summed into each pseudobulk profile (decoupler's QC column)."""
    for col in ("psbulk_cells", "psbulk_n_cells"):
        if col in pdata.obs:
            return pdata.obs[col]
    raise KeyError(f"decoupler's pseudobulk returned no spot counts; obs has {list(pdata.obs.columns)}.")


def _pseudobulk(
    adata: AnnData,
    labels: pd.Series,
    group: str,
    layer: str | None,
    library_key: str,
    min_spots: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    import anndata as ad
    import decoupler as dc
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.default_inference import DefaultInference
    from pydeseq2.ds import DeseqStats

    if library_key not in adata.obs:
        raise KeyError(
            f"adata.obs[{library_key!r}] not found: pseudobulk DE compares samples and needs a sample column "
            f"(pass library_key=; obs has {list(adata.obs.columns)}), or use method='wilcoxon' for one sample."
        )
    x = _matrix(adata, layer)
    if not _is_counts(x):
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        hint = " (adata.layers['counts'] holds counts: pass layer='counts')" if "counts" in adata.layers else ""
        raise ValueError(
            f"{where} is not raw counts (non-integer or negative values): pseudobulk DE sums counts per sample{hint}."
        )
    keep = labels.notna().to_numpy()
    grp = np.where(labels[keep].to_numpy() == group, "glom", "rest")
    samples = adata.obs[library_key][keep].astype(str).to_numpy()
    tmp = ad.AnnData(
        X=x[keep],
        obs=pd.DataFrame({"sample": samples, "group": grp}, index=adata.obs_names[keep]),
        var=pd.DataFrame(index=adata.var_names),
    )
    pdata = dc.pp.pseudobulk(tmp, sample_col="sample", groups_col="group", mode="sum")
    pdata = pdata[_n_spots(pdata).to_numpy() >= min_spots].copy()
    both = pdata.obs.groupby("sample", observed=True)["group"].nunique()
    paired = sorted(both.index[both == 2])
    pdata = pdata[pdata.obs["sample"].isin(paired).to_numpy()].copy()
    if len(paired) < 2:
        counts = pd.crosstab(samples, grp)
        raise ValueError(
            f"Pseudobulk DE needs at least 2 samples with >= {min_spots} spots in both groups; got {len(paired)}. "
            f"Spots per sample and group:\n{counts.to_string()}\nUse method='wilcoxon' for a single sample, or lower "
            "min_spots."
        )
    counts = pd.DataFrame(
        np.rint(np.asarray(pdata.X.todense() if hasattr(pdata.X, "todense") else pdata.X)).astype(np.int64),
        index=pdata.obs_names.astype(str),
        columns=pdata.var_names.astype(str),
    )
    counts = counts.loc[:, counts.sum(axis=0) > 0]
    meta = pdata.obs[["sample", "group"]].astype(str)
    meta.index = counts.index
    inference = DefaultInference(n_cpus=1)
    dds = DeseqDataSet(
        counts=counts,
        metadata=meta,
        design="~sample + group",  # paired: each sample is its own control
        refit_cooks=True,
        inference=inference,
        quiet=True,
    )
    dds.deseq2()
    stats = DeseqStats(dds, contrast=["group", "glom", "rest"], inference=inference, quiet=True)
    stats.summary()
    res = stats.results_df
    out = pd.DataFrame(
        {
            "gene": res.index.astype(str).to_numpy(),
            "log2fc": res["log2FoldChange"].to_numpy(np.float64),
            "score": res["stat"].to_numpy(np.float64),
            "pvalue": res["pvalue"].to_numpy(np.float64),
            "padj": res["padj"].to_numpy(np.float64),
            "base_mean": res["baseMean"].to_numpy(np.float64),
            "lfc_se": res["lfcSE"].to_numpy(np.float64),
        }
    )
    out = out.sort_values("score", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    design = pdata.obs[["sample", "group"]].copy()
    design["n_spots"] = _n_spots(pdata).to_numpy()
    design["group"] = design["group"].map({"glom": group, "rest": "rest"})
    return out, design.reset_index(drop=True)


@accepts_spatialdata("table")
@d.dedent
def glom_markers(
    adata: AnnData | SpatialData,
    key: str = "glomerulus",
    *,
    method: DEMethod = "wilcoxon",
    group: str | None = None,
    layer: str | None = None,
    library_key: str = "library_id",
    min_spots: int = 10,
    key_added: str | None = None,
    inplace: bool = True,
    table_name: str | None = None,
) -> pd.DataFrame:
    """Genes that differ between glomerulus spots and the other spots.

    Spots are grouped by ``obs[key]`` from :func:`kgl.tl.classify_spots`; where a reviewer set a
    label (``obs[f"{key}_reviewed"]``, :func:`kgl.tl.apply_review`) it wins. Spots without a label
    (e.g. outside the image) are left out.

    Parameters
    ----------
    adata
        Spots × genes. For ``"wilcoxon"``: log-normalised expression, or raw counts (then log1p of
        counts per 10,000 is used, as :func:`scanpy.pp.normalize_total` + :func:`scanpy.pp.log1p`).
        For ``"pseudobulk"``: raw counts.
    key
        The label column of ``adata.obs``.
    method
        ``"wilcoxon"``: :func:`scanpy.tl.rank_genes_groups` (Wilcoxon rank-sum, tie-corrected,
        Benjamini–Hochberg) over spots — spots of one section are not independent replicates, so
        read its p-values as a ranking; with several samples it pools their spots, so genes that
        differ between samples show up when samples contribute different shares of glomerulus
        spots (tutorial 3 shows this). ``"pseudobulk"``: counts summed per sample and group
        (:func:`decoupler.pp.pseudobulk`) and DESeq2's negative-binomial GLM (PyDESeq2) with the
        paired design ``~ sample + group``: the test across samples (``obs[library_key]``, at
        least 2 with both groups).
    group
        The tested category; the last category of ``obs[key]`` (``"glomerulus"``) by default. It
        is compared to every other labelled spot.
    layer
        Use ``adata.layers[layer]`` instead of ``adata.X``.
    library_key
        Sample column for ``"pseudobulk"``.
    min_spots
        ``"pseudobulk"``: pseudobulk profiles of fewer spots are dropped. ``"wilcoxon"``: a
        warning when fewer spots are in ``group``.
    key_added
        ``adata.uns`` key of the results; ``f"{key}_markers"`` by default.
    inplace
        Store the results in ``adata.uns[key_added]`` and return ``None`` (scanpy's convention);
        ``False`` stores nothing and returns the table.
    %(table_name)s

    Returns
    -------
    With ``inplace=False``, a tidy :class:`~pandas.DataFrame` (otherwise ``None``), one row per gene,
    most up-regulated in ``group`` first:
    ``gene``, ``log2fc``, ``score`` (Wilcoxon z-score / Wald statistic), ``pvalue``, ``padj``
    (Benjamini–Hochberg) and, for ``"wilcoxon"``, ``pct_group`` / ``pct_rest`` (fraction of spots
    expressing the gene), for ``"pseudobulk"``, ``base_mean`` / ``lfc_se``. With ``inplace=True`` the
    table is stored in ``adata.uns[key_added]["results"]`` with ``["params"]`` (and, for pseudobulk,
    ``["design"]``: the profiles that entered the model).

    """
    _no_table_name(table_name)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {list(_METHODS)}, got {method!r}.")
    check_int(min_spots, "min_spots")
    _check_genes(adata)
    if layer is not None:
        _matrix(adata, layer)
    labels, group = _groups(adata, key, group)
    key_added = f"{key}_markers" if key_added is None else key_added
    check_key(key_added)
    reviewed = f"{key}_reviewed" in adata.obs
    if method == "wilcoxon":
        table, design = _wilcoxon(adata, labels, group, layer, int(min_spots)), None
    else:
        table, design = _pseudobulk(adata, labels, group, layer, library_key, int(min_spots))
    table.insert(1, "method", method)
    n_sig = int((table["padj"] < 0.05).sum())
    logger.info(
        "%s: %d genes, %d with padj < 0.05 (%d up in %r).",
        method,
        len(table),
        n_sig,
        int(((table["padj"] < 0.05) & (table["log2fc"] > 0)).sum()),
        group,
    )
    params = {
        "key": key,
        "method": method,
        "group": group,
        "reference": "rest",
        "layer": layer,
        "library_key": library_key if method == "pseudobulk" else None,
        "min_spots": int(min_spots),
        "used_reviewed_labels": bool(reviewed),
        "n_group": int((labels == group).sum()),
        "n_rest": int((labels.notna() & (labels != group)).sum()),
    }
    if "simulated_counts" in adata.uns:
        logger.info("adata.uns['simulated_counts'] is set: these are SIMULATED counts, not measured expression.")
        params["simulated_counts"] = True
    if inplace:
        entry: dict[str, Any] = {"params": params, "results": table.copy()}
        if design is not None:
            entry["design"] = design
        save_data(adata, attr="uns", key=key_added, data=entry)
        return None
    return table


def _match_genes(adata: AnnData, genes: Sequence[str], gene_symbols: str | None) -> dict[str, int | None]:
    """Column index of each gene, matched case-insensitively (human ``NPHS1`` = mouse ``Nphs1``)."""
    if gene_symbols is None:
        names = adata.var_names.astype(str)
    else:
        if gene_symbols not in adata.var:
            raise KeyError(f"adata.var[{gene_symbols!r}] not found; var columns are {list(adata.var.columns)}.")
        names = pd.Index(adata.var[gene_symbols].astype(str))
    lookup: dict[str, int] = {}
    for i, nm in enumerate(names.str.upper()):
        lookup.setdefault(nm, i)
    return {g: lookup.get(str(g).upper()) for g in genes}


@accepts_spatialdata("table")
@d.dedent
def marker_check(
    adata: AnnData | SpatialData,
    key: str = "glomerulus",
    *,
    markers: Sequence[str] | None = None,
    group: str | None = None,
    layer: str | None = None,
    gene_symbols: str | None = None,
    table_name: str | None = None,
) -> pd.DataFrame:
    """How well known glomerular markers separate the image-based labels: an independent check from the transcriptome.

    For each marker gene, the AUROC of its expression for telling ``group`` spots
    (``"glomerulus"``) from the others (:func:`sklearn.metrics.roc_auc_score`; 0.5 = no
    information, 1 = every glomerulus spot expresses it more than every other spot). Podocyte
    genes well above 0.5 confirm the classifier from data it never saw. Reviewed labels
    (``obs[f"{key}_reviewed"]``) win.

    Parameters
    ----------
    adata
        Spots × genes. Raw counts are scaled to counts per 10,000 first (AUROC only depends on
        each gene's ranking across spots, so a log transform would not change it).
    key
        The label column of ``adata.obs``.
    markers
        Gene symbols; :data:`PODOCYTE_MARKERS` (NPHS1, NPHS2, PODXL, WT1, PTPRO, CLIC5) by
        default. Matched case-insensitively, so mouse symbols (``Nphs1``) are found too.
    group
        The positive category; the last category of ``obs[key]`` by default.
    layer
        Use ``adata.layers[layer]`` instead of ``adata.X``.
    gene_symbols
        Column of ``adata.var`` with gene symbols when ``var_names`` are not symbols (e.g. Ensembl IDs).
    %(table_name)s

    Returns
    -------
    One row per requested marker: ``gene`` (as requested), ``var_name`` (matched, or missing),
    ``found``, ``auroc``, ``mean_group`` / ``mean_rest`` (mean expression, per 10,000 counts for
    raw counts), ``pct_group`` / ``pct_rest`` (fraction of spots with expression > 0),
    ``n_group`` / ``n_rest``. Missing genes get ``found=False`` and NaN values, and are listed in
    a warning: not an error.

    """
    from scipy import sparse
    from sklearn.metrics import roc_auc_score

    _no_table_name(table_name)
    _check_genes(adata)
    markers = list(PODOCYTE_MARKERS if markers is None else markers)
    if not markers or not all(isinstance(g, str) and g for g in markers):
        raise ValueError(f"markers must be a non-empty list of gene symbols, got {markers!r}.")
    labels, group = _groups(adata, key, group)
    x = _matrix(adata, layer)
    keep = labels.notna().to_numpy()
    y = (labels[keep] == group).to_numpy()
    match = _match_genes(adata, markers, gene_symbols)
    found_idx = sorted({i for i in match.values() if i is not None})
    cols: dict[int, np.ndarray] = {}
    if found_idx:
        sub = x[keep]
        if _is_counts(sub):
            sub = _per_10k(sub)
        block = sub[:, found_idx]
        block = (block.toarray() if sparse.issparse(block) else np.asarray(block)).astype(np.float64)
        cols = {i: block[:, k] for k, i in enumerate(found_idx)}
    rows = []
    for g in markers:
        i = match[g]
        row: dict[str, Any] = {"gene": g, "var_name": None, "found": i is not None}
        if i is None:
            row.update(auroc=np.nan, mean_group=np.nan, mean_rest=np.nan, pct_group=np.nan, pct_rest=np.nan)
        else:
            v = cols[i]
            row.update(
                var_name=str(adata.var_names[i]),
                auroc=float(roc_auc_score(y, v)),
                mean_group=float(v[y].mean()),
                mean_rest=float(v[~y].mean()),
                pct_group=float((v[y] > 0).mean()),
                pct_rest=float((v[~y] > 0).mean()),
            )
        row.update(n_group=int(y.sum()), n_rest=int((~y).sum()))
        rows.append(row)
    missing = [g for g in markers if match[g] is None]
    if missing:
        logger.warning("Marker genes not in adata (case-insensitive): %s.", missing)
    table = pd.DataFrame(rows)
    if "simulated_counts" in adata.uns:
        logger.info("adata.uns['simulated_counts'] is set: these are SIMULATED counts, not measured expression.")
    return table
