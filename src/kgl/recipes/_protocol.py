"""The evaluation protocol every recipe choice is made with: seeds × held-out sets × adaptations.

For a recipe (:data:`kgl.recipes.DEFAULT_RECIPE` plus ``he_repeat``), train with several seeds and
measure, per seed, on data never trained on:

- the held-out multistain biopsies (patch level; the split is by biopsy);
- the PAS tiles of another site (:func:`kgl.datasets.pas_tiles_visium`, spot level);
- H&E **leave one case out** (:func:`kgl.datasets.he_biopsy_visium`, spot level): a recipe that
  trains on H&E (``he_repeat > 0``) is trained twice per seed, once without each case (with the
  other case's patches repeated ``he_repeat`` times) and tested on the case left out; a recipe
  without H&E is trained once and tested on both cases.

Each spot set is classified as is, with AdaBN (:func:`kgl.tl.adapt_batchnorm`) and with Macenko
stain normalisation per sample (:class:`kgl.im.MacenkoNormalizer`), and called
with the validation threshold, the sample's expected-F1 threshold and EM prior-shift + expected-F1
(:mod:`kgl.tl._adapt`). Thresholds and calibration are fitted on the multistain validation split
only, never on a test case.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kgl._logging import logger
from kgl._types import Precision

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

__all__ = ["HE_CASES", "TTA_VARIANTS", "evaluate_recipe", "rescore_protocol", "summarise_protocol"]

#: The H&E biopsy cases (``kgl.datasets.he_biopsy_slides()["group"]``).
HE_CASES = ("C002", "C004")
_METRICS = ("roc_auc", "pr_auc", "f1", "precision", "recall", "ece")


#: Test-time variants of the protocol: ``tta`` value → :func:`kgl.tl.classify_spots` arguments.
TTA_VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "adabn": {"adapt_bn": True},
    "macenko": {"stain_norm": "macenko"},
}


def _spot_rows(
    model: Any,
    adata: AnnData,
    *,
    device: Any,
    tta: Sequence[str] = ("plain",),
    base: dict[str, Any],
    allow_upsampling: bool = False,
) -> list[dict[str, Any]]:
    """Classify a pseudo-Visium with each test-time variant and score each threshold rule against its coverage."""
    from kgl.tl import apply_threshold_rule, classify_spots, evaluate

    cov = adata.obs["glomerulus_coverage"].to_numpy(dtype=float)
    keep = (cov >= 0.5) | (cov == 0)  # ambiguous spots (0 < coverage < 0.5) are left out
    y = (cov[keep] >= 0.5).astype(int)
    spec = model.spec
    rows = []
    for variant in tta:
        out = classify_spots(
            adata,
            model,
            copy=True,
            show_progress=False,
            device=device,
            uncertain=None,
            allow_upsampling=allow_upsampling,
            **TTA_VARIANTS[variant],
        )
        p_all = out.obs["glomerulus_proba"].to_numpy(dtype=np.float64)
        for rule in ("validation", "expected-f1", "prior-shift"):
            q, thr, extra = apply_threshold_rule(p_all, rule, spec)  # from every spot: no labels involved
            m = evaluate(y, q[keep], threshold=thr)
            rows.append({**base, "tta": variant, "threshold_rule": rule, "threshold": thr, "n": len(y),
                         "n_pos": int(y.sum()), **{k: m[k] for k in _METRICS}, **extra})  # fmt: skip
    return rows


def evaluate_recipe(
    recipe: dict[str, Any] | None = None,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    out_dir: str | os.PathLike | None = None,
    max_patches_per_split: int | None = None,
    adabn: bool = True,
    stain_norm: bool = True,
    resume: bool = False,
    allow_upsampling: bool = False,
    device: Any = "auto",
    precision: Precision = "auto",
    show_progress: bool = False,
) -> pd.DataFrame:
    """Train ``recipe`` with each seed and score it on every held-out set (see the module docstring).

    Parameters
    ----------
    recipe
        Entries overriding :data:`kgl.recipes.DEFAULT_RECIPE`; its ``he_repeat`` says how many times
        the training case's H&E patches are repeated in the training split (0: no H&E in training;
        default: the default recipe's).
    seeds
        Seeds of patch sampling, split and training (≥ 3 for a claim).
    out_dir
        Where each run's checkpoints and history go (``<out_dir>/seed<k>-<fold>``), and the rows as
        ``protocol.csv``; a temporary folder when ``None``.
    max_patches_per_split
        Subsample each multistain split and the H&E training patches (class balance kept) for quick runs.
    adabn
        Also score every spot set with AdaBN.
    stain_norm
        Also score every spot set with Macenko stain normalisation.
    resume
        Continue each training from its ``last.pt`` in ``out_dir`` when there is one (a protocol run that
        was interrupted; see ``resume`` of :func:`kgl.tl.train`); a finished training is only scored again.
        Its ``seconds`` are then those of the epochs run now.
    allow_upsampling
        Passed to :func:`kgl.tl.classify_spots` for every spot set: a recipe whose input needs more
        pixels per µm than a test image has (e.g. 224 px over the recipe's patch on the 1.08 µm/px
        H&E case C004) is refused otherwise. Upsampled scores are scores of an interpolated image:
        say so next to them.
    device, precision, show_progress
        As in :func:`kgl.tl.train` (``precision="auto"``: bf16 autocast on CPUs with native bf16, fp32
        elsewhere; the rows' ``train_precision`` says which ran).

    Returns
    -------
    One row per (seed, held-out case, test set, adaptation, threshold rule): ``seed``, ``fold``
    (the H&E case left out of training, ``"none"`` when no H&E is trained on), ``set``
    (``multistain-test``, ``pas-spots``, ``he-spots``), ``case``, ``tta``, ``threshold_rule``,
    ``threshold``, ``n``, ``n_pos`` and the metrics of :func:`kgl.tl.evaluate`; plus ``seconds``
    (training time) and ``train_precision`` (the autocast it trained in: ``fp32``, ``bfloat16``, ...).
    ``attrs["recipe"]`` holds the recipe.

    """
    import tempfile

    import kgl
    from kgl.recipes._train import DEFAULT_RECIPE, _split_patches, _with_he
    from kgl.tl import evaluate_patches, train

    recipe = dict(recipe or {})
    he_repeat = int(recipe.pop("he_repeat", DEFAULT_RECIPE["he_repeat"]))
    unknown = set(recipe) - set(DEFAULT_RECIPE)
    if unknown:
        raise TypeError(
            f"Unknown recipe entries {sorted(unknown)}; the recipe has {sorted(DEFAULT_RECIPE)} + he_repeat."
        )
    if he_repeat < 0:
        raise ValueError(f"he_repeat must be >= 0, got {he_repeat}.")
    if not len(seeds):
        raise ValueError("seeds must name at least one seed.")
    if resume and out_dir is None:
        raise ValueError("resume=True needs the out_dir of the interrupted run.")
    full = {**DEFAULT_RECIPE, **recipe, "he_repeat": he_repeat}
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="kgl-protocol-")
        out_dir = tmp.name
    out = Path(out_dir)
    slides = kgl.datasets.multistain_slides()
    he_slides = kgl.datasets.he_biopsy_slides()
    pas = kgl.datasets.pas_tiles_visium()
    he_spots = {case: kgl.datasets.he_biopsy_visium(cases=case) for case in HE_CASES}
    folds: list[str | None] = list(HE_CASES) if he_repeat > 0 else [None]
    tta = ("plain", *(["adabn"] if adabn else []), *(["macenko"] if stain_norm else []))
    kw = {"device": device, "tta": tta, "allow_upsampling": allow_upsampling}  # how every spot set is scored
    rows: list[dict[str, Any]] = []
    train_kw = {k: v for k, v in full.items() if k not in ("patch_um", "he_repeat")}
    try:
        for seed in seeds:
            patches = _split_patches(
                slides, patch_um=full["patch_um"], seed=seed, max_patches_per_split=max_patches_per_split
            )
            test = patches[patches["split"] == "test"]
            for held_out in folds:
                table = patches
                if held_out is not None:
                    train_cases = [c for c in HE_CASES if c != held_out]
                    table, _ = _with_he(
                        patches,
                        he_slides[he_slides["group"].isin(train_cases)],
                        patch_um=full["patch_um"],
                        seed=seed,
                        repeat=he_repeat,
                        max_patches=max_patches_per_split,
                    )
                trained_cases = set(table.loc[table["split"].isin(["train", "val"]), "group"])
                test_cases = [held_out] if held_out is not None else list(HE_CASES)
                leaked = trained_cases & set(test_cases)
                if leaked:  # the protocol's promise: no case both trained on and tested on
                    raise RuntimeError(f"H&E case(s) {sorted(leaked)} are in training and in the test.")
                fold = held_out or "none"
                run_dir = out / f"seed{seed}-{fold}"
                t0 = time.perf_counter()
                res = train(
                    table,
                    out_dir=run_dir,
                    resume=resume and (run_dir / "last.pt").is_file(),
                    name=f"protocol-seed{seed}-{fold}",
                    seed=seed,
                    device=device,
                    precision=precision,
                    show_progress=show_progress,
                    **train_kw,
                )
                seconds = time.perf_counter() - t0
                model = res.model
                base = {"seed": int(seed), "fold": fold, "seconds": seconds, "best_epoch": res.best_epoch,
                        "train_precision": model.config["training"]["precision"]}  # fmt: skip
                p, y = evaluate_patches(model, test, device=device)
                thr = model.spec.calibration.threshold
                m = kgl.tl.evaluate(y, p, threshold=thr)
                rows.append({**base, "set": "multistain-test", "case": "", "tta": "plain",
                             "threshold_rule": "validation", "threshold": thr,
                             "n": len(y), "n_pos": int(y.sum()), **{k: m[k] for k in _METRICS}})  # fmt: skip
                rows += _spot_rows(model, pas, **kw, base={**base, "set": "pas-spots", "case": ""})
                for case in test_cases:
                    rows += _spot_rows(model, he_spots[case], **kw, base={**base, "set": "he-spots", "case": case})
                if tmp is None:  # after every training: an interrupted protocol keeps what it measured
                    _write_rows(rows, out / "protocol.csv")
                logger.info(
                    "protocol seed %d fold %s: trained in %.0f s; %s",
                    seed,
                    fold,
                    seconds,
                    "; ".join(
                        f"{r['set']} {r['case']} AUC {r['roc_auc']:.3f} F1 {r['f1']:.3f}"
                        for r in rows
                        if r["seed"] == seed
                        and r["fold"] == fold
                        and r["tta"] == "plain"
                        and r["threshold_rule"] == "validation"
                    ),
                )
    finally:
        if tmp is not None:
            tmp.cleanup()
    df = pd.DataFrame(rows)
    df.attrs["recipe"] = full
    if tmp is None:
        _write_rows(rows, out / "protocol.csv")
    return df


def rescore_protocol(
    out_dir: str | os.PathLike,
    tta: Sequence[str] = ("macenko",),
    *,
    allow_upsampling: bool = False,
    device: Any = "auto",
) -> pd.DataFrame:
    """Score the checkpoints of a finished :func:`evaluate_recipe` run with more test-time variants.

    Each ``<out_dir>/seed<k>-<fold>/best.pt`` is classified again on the same held-out spot sets
    (the PAS tiles, and the H&E case(s) its fold did not train on) with each variant of ``tta``
    (:data:`TTA_VARIANTS`); the rows replace any earlier ones of those variants in
    ``<out_dir>/protocol.csv``, which is returned. No training, and no test case is added.
    ``allow_upsampling`` as in :func:`evaluate_recipe`.
    """
    import kgl
    from kgl.models import load_checkpoint

    out = Path(out_dir)
    unknown = set(tta) - set(TTA_VARIANTS)
    if unknown:
        raise ValueError(f"Unknown test-time variants {sorted(unknown)}; known: {sorted(TTA_VARIANTS)}.")
    path = out / "protocol.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist: rescore_protocol reads a finished evaluate_recipe run.")
    old = pd.read_csv(path, keep_default_na=False, na_values=[""]).fillna({"case": ""})
    run_cols = ["seed", "fold", "seconds", "best_epoch"] + [c for c in ("train_precision",) if c in old.columns]
    runs = old[run_cols].drop_duplicates(["seed", "fold"])
    pas = kgl.datasets.pas_tiles_visium()
    he_spots = {case: kgl.datasets.he_biopsy_visium(cases=case) for case in HE_CASES}
    kw = {"device": device, "tta": tta, "allow_upsampling": allow_upsampling}  # how every spot set is scored
    rows: list[dict[str, Any]] = []
    for r in runs.itertuples(index=False):
        model = load_checkpoint(out / f"seed{r.seed}-{r.fold}" / "best.pt")
        base = {**r._asdict(), "seed": int(r.seed)}
        rows += _spot_rows(model, pas, **kw, base={**base, "set": "pas-spots", "case": ""})
        for case in [r.fold] if r.fold in HE_CASES else HE_CASES:
            rows += _spot_rows(model, he_spots[case], **kw, base={**base, "set": "he-spots", "case": case})
    keep = old[~(old["tta"].isin(tta) & old["set"].isin(["pas-spots", "he-spots"]))]  # only spot sets are re-scored
    df = pd.concat([keep, pd.DataFrame(rows)], ignore_index=True)
    _write_rows(df.to_dict("records"), path)
    return df


def _write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    from kgl._files import atomic_path

    with atomic_path(path) as f:
        pd.DataFrame(rows).to_csv(f, index=False)


def summarise_protocol(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd over seeds per (set, adaptation, threshold rule); H&E first averaged over its cases per seed."""
    per_seed = rows.groupby(["set", "tta", "threshold_rule", "seed"])[list(_METRICS)].mean()
    agg = per_seed.groupby(["set", "tta", "threshold_rule"]).agg(["mean", "std"])
    agg.columns = [f"{m}_{s}" for m, s in agg.columns]
    agg["n_seeds"] = per_seed.groupby(["set", "tta", "threshold_rule"]).size()
    return agg.reset_index()
