"""Simulated spot counts for semi-synthetic Visium: glomerular markers follow glomerulus coverage.

No offline Visium kidney sample has both histology and expression, so differential expression is
tested on counts drawn from a negative binomial whose means follow the ground-truth glomerulus
coverage of each spot: glomerular (podocyte) markers rise with coverage, tubular markers fall,
every other gene is unaffected. The result is flagged as simulated in ``.uns`` and ``.var``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kgl._logging import logger
from kgl._validators import check_int

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

__all__ = ["GLOMERULAR_MARKERS", "TUBULAR_MARKERS", "simulate_counts"]

#: Podocyte / glomerular markers (human symbols): the classic podocyte genes first.
GLOMERULAR_MARKERS = ("NPHS1", "NPHS2", "PODXL", "WT1", "PTPRO", "CLIC5", "SYNPO", "MAFB", "PLA2R1", "CDKN1C")
#: Tubular markers (proximal tubule, loop of Henle, distal tubule), lower inside glomeruli.
TUBULAR_MARKERS = ("LRP2", "CUBN", "SLC34A1", "UMOD", "SLC12A1", "SLC12A3", "ALDOB", "KCNJ1")
# the base expression profile depends only on the gene panel (same genes, same profile in every sample)
_PROFILE_SEED = 20240617


def _symbol(gene: str, species: str) -> str:
    """Human symbols are upper case; mouse symbols capitalised (``NPHS1`` → ``Nphs1``)."""
    return gene if species == "human" else gene[:1] + gene[1:].lower()


def simulate_counts(
    adata: AnnData,
    *,
    coverage_key: str = "glomerulus_coverage",
    species: str = "human",
    n_background: int = 300,
    library_size: float = 3000.0,
    glomerular_fold: float = 8.0,
    tubular_fold: float = 4.0,
    dispersion: float = 0.1,
    sample_sd: float = 0.2,
    seed: int = 0,
) -> Any:
    """Attach simulated negative-binomial counts whose glomerular markers follow glomerulus coverage.

    For spot ``i`` with coverage ``c_i`` (``obs[coverage_key]``, in ``[0, 1]``) and gene ``g``
    with base proportion ``π_g``, the mean count is ``μ_gi = L_i · π_g · m_gi · s_g``:

    - ``L_i`` is a log-normal library size around ``library_size`` (σ = 0.35);
    - ``m_gi = 1 + (glomerular_fold - 1) · c_i`` for :data:`GLOMERULAR_MARKERS`,
      ``1 + (tubular_fold - 1) · (1 - c_i)`` for :data:`TUBULAR_MARKERS` (relative to a fully
      covered spot) and 1 for the ``n_background`` other genes (``Sim0001``, ... : not real genes);
    - ``s_g`` is a per-sample log-normal gene effect (σ = ``sample_sd``) drawn from ``seed``, so
      samples built with different seeds differ as real samples do.

    Counts are ``NB(μ, dispersion)`` (variance ``μ + dispersion · μ²``). The marker shares are
    balanced (glomerular markers gain about what tubular markers lose), so normalising by total
    counts leaves unplanted genes without a glomerulus effect.

    Parameters
    ----------
    adata
        Spots with ``obs[coverage_key]``, e.g. from :func:`kgl.datasets.pseudo_visium`. It must
        have no genes yet (``n_vars == 0``).
    coverage_key
        Column of ``adata.obs`` with the ground-truth glomerulus coverage in ``[0, 1]``.
    species
        ``"human"`` (``NPHS1``) or ``"mouse"`` (``Nphs1``) gene symbols.
    n_background
        Number of unaffected genes.
    library_size
        Median total counts per spot.
    glomerular_fold, tubular_fold
        Mean fold change of glomerular markers in a fully covered spot vs. an uncovered one, and of
        tubular markers in an uncovered spot vs. a fully covered one.
    dispersion
        Negative-binomial dispersion (0 gives Poisson).
    sample_sd
        Standard deviation of the per-sample log gene effects.
    seed
        Seed of :func:`numpy.random.default_rng`: the same seed gives the same counts.

    Returns
    -------
    A new :class:`~anndata.AnnData` (``adata`` is not changed: genes cannot be added to an
    AnnData in place) with ``adata``'s obs, obsm and uns. ``X`` holds the counts
    (sparse CSR, float32, integer values; what :func:`scanpy.read_visium` gives),
    ``var["simulated_role"]`` is ``glomerular`` / ``tubular`` / ``background`` and
    ``uns["simulated_counts"]`` records ``simulated=True``, the model and every parameter.

    """
    import anndata as ad
    from scipy import sparse

    if coverage_key not in adata.obs:
        raise KeyError(
            f"adata.obs[{coverage_key!r}] not found: simulate_counts needs the ground-truth glomerulus coverage "
            f"(kgl.datasets.pseudo_visium writes 'glomerulus_coverage'). obs has {list(adata.obs.columns)}."
        )
    if adata.n_vars:
        raise ValueError(
            f"adata already has {adata.n_vars} genes; simulate_counts attaches counts to a sample without "
            "expression (e.g. from kgl.datasets.pseudo_visium)."
        )
    if species not in ("human", "mouse"):
        raise ValueError(f"species must be 'human' or 'mouse', got {species!r}.")
    cov = pd.to_numeric(adata.obs[coverage_key], errors="coerce").to_numpy(np.float64)
    if not np.isfinite(cov).all() or (cov < 0).any() or (cov > 1).any():
        raise ValueError(f"adata.obs[{coverage_key!r}] must be finite and in [0, 1].")
    for name, v in (("glomerular_fold", glomerular_fold), ("tubular_fold", tubular_fold)):
        if not v >= 1:
            raise ValueError(f"{name} must be >= 1, got {v!r}.")
    if not dispersion >= 0 or not sample_sd >= 0 or not library_size > 0:
        raise ValueError("dispersion and sample_sd must be >= 0 and library_size > 0.")
    check_int(n_background, "n_background", minimum=0)

    glom = [_symbol(g, species) for g in GLOMERULAR_MARKERS]
    tub = [_symbol(g, species) for g in TUBULAR_MARKERS]
    bg = [f"Sim{i + 1:04d}" for i in range(int(n_background))]
    genes = glom + tub + bg
    role = np.array(["glomerular"] * len(glom) + ["tubular"] * len(tub) + ["background"] * len(bg))

    profile_rng = np.random.default_rng(_PROFILE_SEED)
    base = profile_rng.gamma(0.8, 1.0, size=len(genes))
    # markers' shares of an average spot: glomerular 0.5 % (x fold in glomeruli), tubular 4 %
    # (/ fold in glomeruli); the rest spread over the background genes
    shares = {"glomerular": 0.005, "tubular": 0.04}
    shares["background"] = 1.0 - sum(shares.values())
    for kind, share in shares.items():
        if (role == kind).any():
            base[role == kind] *= share / base[role == kind].sum()

    rng = np.random.default_rng(seed)
    n = adata.n_obs
    size = library_size * rng.lognormal(0.0, 0.35, size=n)
    sample = rng.lognormal(0.0, sample_sd, size=len(genes)) if sample_sd > 0 else np.ones(len(genes))
    mult = np.ones((n, len(genes)))
    mult[:, role == "glomerular"] = (1 + (glomerular_fold - 1) * cov)[:, None]
    mult[:, role == "tubular"] = ((1 + (tubular_fold - 1) * (1 - cov)) / tubular_fold)[:, None]
    mu = size[:, None] * base[None, :] * sample[None, :] * mult
    if dispersion > 0:
        r = 1.0 / dispersion
        counts = rng.negative_binomial(r, r / (r + mu))
    else:
        counts = rng.poisson(mu)

    var = pd.DataFrame(
        {
            "simulated_role": pd.Categorical(role, categories=["glomerular", "tubular", "background"]),
            "feature_types": "Gene Expression",
        },
        index=pd.Index(genes),
    )
    params = {
        "simulated": True,
        "note": "Counts are SIMULATED from glomerulus coverage (kgl.datasets.simulate_counts), not measured.",
        "model": "negative binomial: mean = library size x base proportion x sample effect x coverage effect",
        "coverage_key": coverage_key,
        "species": species,
        "glomerular_markers": glom,
        "tubular_markers": tub,
        "n_background": int(n_background),
        "library_size": float(library_size),
        "glomerular_fold": float(glomerular_fold),
        "tubular_fold": float(tubular_fold),
        "dispersion": float(dispersion),
        "sample_sd": float(sample_sd),
        "seed": int(seed),
    }
    out = ad.AnnData(
        X=sparse.csr_matrix(counts.astype(np.float32)),
        obs=adata.obs.copy(),
        var=var,
        obsm={k: v.copy() for k, v in adata.obsm.items()},
        uns={**adata.uns, "simulated_counts": params},
    )
    logger.info(
        "Simulated %d genes for %d spots (%s; %d glomerular, %d tubular markers planted; seed %d).",
        len(genes),
        n,
        species,
        len(glom),
        len(tub),
        seed,
    )
    return out
