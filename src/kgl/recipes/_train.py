"""kgl's default training recipe: the model ``classify_spots`` finds by name."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from kgl._logging import logger
from kgl._types import Precision
from kgl.models import PATCH_MODEL, REGISTRY
from kgl.tl import evaluate_patches

__all__ = ["DEFAULT_RECIPE", "train_default_model"]

#: The recipe of kgl's patch classifier (:data:`kgl.models.PATCH_MODEL`, ``kgl-glom-v2``; the default model is
#: now the dense map, :func:`kgl.recipes.train_map_model`; each registry entry carries its own recipe,
#: :attr:`kgl.models.ModelEntry.recipe`): MobileNet_V2 ImageNet weights (the ones
#: available offline; ``backbone="resnet50", weights="IMAGENET1K_V2"`` is the recipe for GPUs/online),
#: 110-µm patches at 112 px, stain + colour augmentation, class-balanced sampling, 1 head-only epoch
#: then 3 fine-tuning epochs, the epoch with the lowest validation loss kept, and the H&E biopsy
#: patches (:func:`kgl.datasets.he_biopsy_slides`) repeated ``he_repeat`` = 3 times in the training
#: split. Chosen with :func:`kgl.recipes.evaluate_recipe` (leave one H&E case out, PAS tiles of another
#: site, held-out biopsies; 3 seeds): see docs/training.md.
DEFAULT_RECIPE: dict[str, Any] = dict(REGISTRY[PATCH_MODEL].recipe)


def _evaluation_plots(out: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], test_metrics: dict) -> None:
    """ROC/PR curves, reliability diagram and confusion matrix of the held-out test split into ``out``."""
    import matplotlib.pyplot as plt

    from kgl.pl import confusion, reliability, roc_pr

    roc_pr(curves, save=out / "roc_pr.png")
    y, p = curves["test (held-out biopsies)"]
    reliability(y, p, save=out / "reliability_test.png", title="held-out biopsies")
    confusion(
        test_metrics,
        save=out / "confusion_test.png",
        title=f"held-out biopsies (threshold {test_metrics['threshold']:.2f})",
    )
    plt.close("all")


def _split_patches(
    slides: pd.DataFrame, *, patch_um: float, seed: int, max_patches_per_split: int | None = None
) -> pd.DataFrame:
    """The recipe's multistain patch table: sampled, split by biopsy (stratified by stain), optionally subsampled."""
    import kgl

    patches = kgl.im.sample_patches(slides, patch_um=patch_um, seed=seed)
    patches["split"] = kgl.tl.split_by_group(patches, group_key="group", stratify_key="stain", seed=seed).to_numpy()
    return _subsample(patches, max_patches_per_split, seed) if max_patches_per_split else patches


def _with_he(
    patches: pd.DataFrame,
    he_slides: pd.DataFrame,
    *,
    patch_um: float,
    seed: int,
    repeat: int,
    max_patches: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``patches`` plus the H&E slides' patches in the training split, ``repeat`` times; and those H&E patches.

    ``max_patches`` subsamples the H&E patches (class balance kept) for quick runs, as
    ``max_patches_per_split`` does the multistain splits: they add at most ``max_patches`` rows
    with their repeats.
    """
    import kgl

    he = kgl.im.sample_patches(he_slides, patch_um=patch_um, seed=seed)
    he["split"] = "train"
    if max_patches:
        he = _subsample(he, max(1, max_patches // max(repeat, 1)), seed)
    return pd.concat([patches, *[he] * repeat], ignore_index=True), he


def _jsonable(x: Any) -> Any:
    """Plain dicts and lists (JSON) from mappings and tuples."""
    if isinstance(x, dict | MappingProxyType):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


def _subsample(patches: pd.DataFrame, max_per_split: int, seed: int) -> pd.DataFrame:
    """At most ``max_per_split`` rows per split, keeping each split's class balance."""
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for idx in patches.groupby("split").indices.values():
        frac = min(1.0, max_per_split / len(idx))
        for lab_idx in patches.iloc[idx].groupby("label").indices.values():
            rows = idx[lab_idx]
            keep.append(rng.choice(rows, max(1, round(frac * len(rows))), replace=False))
    return patches.iloc[np.sort(np.concatenate(keep))]


def _patch_recipe(name: str) -> tuple[Any, str, Any]:
    """``(registry entry or None, real name, recipe)`` of a patch classifier's name; a map's name is refused.

    A name not in the registry is the user's own, trained with :data:`DEFAULT_RECIPE`.
    """
    entry = REGISTRY.get(name)
    if entry is None:
        return None, name, DEFAULT_RECIPE
    if entry.recipe.get("task") == "segment":
        raise ValueError(f"{name!r} is a map model: train it with kgl.recipes.train_map_model (or train_model).")
    return entry, entry.name, entry.recipe  # "DEFAULT" would train (and install as) the real name


def train_default_model(
    out_dir: str | os.PathLike | None = None,
    *,
    name: str = PATCH_MODEL,
    install: bool = True,
    seed: int = 0,
    device: Any = "auto",
    precision: Precision = "auto",
    num_workers: int = 0,
    max_patches_per_split: int | None = None,
    external: bool = True,
    show_progress: bool = True,
    **overrides: Any,
) -> Path:
    """Train, evaluate and install one of kgl's patch classifiers with its registered recipe.

    (The map, kgl's default model, has its own: :func:`kgl.recipes.train_map_model`; ``kgl train`` picks
    the right one, :func:`kgl.recipes.train_model`.)

    1. Slides: :func:`kgl.datasets.multistain_slides` (Masson / PASM / PAS biopsy snapshots, µm/px
       estimated per image from glomerulus size).
    2. Patches: :func:`kgl.im.sample_patches` (Visium-like jittered lattice + hard negatives).
    3. Split by biopsy (:func:`kgl.tl.split_by_group`, stratified by stain): train / val / test.
    4. :func:`kgl.tl.train`; calibration (temperature + bias) and threshold fitted on validation.
    5. Held-out test biopsies (patch level) and, with ``external``, the PAS tiles of another site as
       pseudo-Visium (:func:`kgl.datasets.pas_tiles_visium`, spot level) and as patches.
    6. Checkpoint + model card in ``out_dir``; with ``install``, copied to the model cache where
       ``classify_spots(adata, model=name)`` (and ``model=None``) finds it.

    Parameters
    ----------
    out_dir
        Working folder (checkpoints, curves, history, card); default ``<cachedir>/training/<name>``.
    name
        Registry name of the model: its :attr:`~kgl.models.ModelEntry.recipe` is the starting point
        (a name not in the registry starts from :data:`DEFAULT_RECIPE`).
    install
        Copy the best checkpoint to the model cache.
    seed
        Seed of sampling, split and training.
    device, precision, num_workers, show_progress
        As in :func:`kgl.tl.train`.
    max_patches_per_split
        Subsample each split (class balance kept) for quick runs; ``None`` uses everything.
    external
        Evaluate on the PAS tiles (needs ``glomeruli-pas-tiles``).
    overrides
        Replace entries of the recipe.

    Returns
    -------
    Path of the installed (or, without ``install``, the trained) checkpoint.

    """
    import kgl
    from kgl._settings import settings
    from kgl.tl import evaluate, evaluate_spots, train

    unknown = set(overrides) - set(DEFAULT_RECIPE)
    if unknown:
        raise TypeError(f"Unknown recipe entries {sorted(unknown)}; the recipe has {sorted(DEFAULT_RECIPE)}.")
    entry, name, base = _patch_recipe(name)
    recipe = {**base, **overrides}
    out = Path(out_dir) if out_dir is not None else Path(settings.cachedir) / "training" / name
    t0 = time.perf_counter()
    slides = kgl.datasets.multistain_slides()
    patches = _split_patches(
        slides, patch_um=recipe["patch_um"], seed=seed, max_patches_per_split=max_patches_per_split
    )
    counts = patches.groupby(["split", "label"]).size().unstack(fill_value=0)
    logger.info("training patches (rows: split, columns: label 0 other / 1 glomerulus):\n%s", counts.to_string())
    summary = {
        "dataset": "glomeruli-multistain (Jiang et al. 2021), 105 snapshots of human renal biopsies, Masson/PASM/PAS",
        "n_slides": len(slides),
        "n_biopsies": int(slides["group"].nunique()),
        "biopsies_per_split": {s: int(g["group"].nunique()) for s, g in patches.groupby("split")},
        "mpp": "estimated per image: 200 µm / median glomerulus equivalent diameter",
        "mpp_range": [float(slides["mpp"].min()), float(slides["mpp"].max())],
        "train_biopsies": sorted(patches.loc[patches["split"] == "train", "group"].unique().tolist()),
        "val_biopsies": sorted(patches.loc[patches["split"] == "val", "group"].unique().tolist()),
        "test_biopsies": sorted(patches.loc[patches["split"] == "test", "group"].unique().tolist()),
    }
    he_repeat = int(recipe["he_repeat"])
    table = patches
    if he_repeat > 0:
        try:
            he_slides = kgl.datasets.he_biopsy_slides()
        except FileNotFoundError as e:  # before anything is written
            raise FileNotFoundError(
                f"The recipe of {name!r} trains on the H&E biopsy set (he_repeat={he_repeat}), which is not available "
                f"here:\n{e}\nProvide it (KGL_DATA_DIR, or KGL_DATA_URL for a mirror), or train without H&E: "
                "`kgl train --name kgl-glom-v1` (the Masson/PASM/PAS-only model; `kgl demo --model kgl-glom-v1`) "
                "or `--he-repeat 0`."
            ) from e
        table, he = _with_he(
            patches,
            he_slides,
            patch_um=recipe["patch_um"],
            seed=seed,
            repeat=he_repeat,
            max_patches=max_patches_per_split,
        )
        summary["he_biopsy"] = {
            "cases": sorted(he["group"].unique().tolist()),
            "patches": len(he),
            "repeat": he_repeat,
            "dataset": "glomeruli-he-biopsy (awke4/Kidney_Glom_seg_maskrcnn_TF2), 9 H&E screenshots of 2 cases",
        }
    train_kw = {k: v for k, v in recipe.items() if k not in ("patch_um", "he_repeat")}
    result = train(
        table,
        out_dir=out,
        name=name,
        seed=seed,
        device=device,
        precision=precision,
        num_workers=num_workers,
        show_progress=show_progress,
        extra_config={"training_data": summary},
        **train_kw,
    )
    import matplotlib.pyplot as plt

    from kgl.pl import training_curves

    axes = training_curves(result.history, save=out / "curves.png")  # kgl.tl.train itself draws nothing
    plt.close(axes[0].figure)  # only the file: an open figure would pop up in notebooks and accumulate
    model = result.model
    thr = float(model.config["threshold"])
    metrics = dict(model.config["metrics"])
    test = patches[patches["split"] == "test"]
    p, y = evaluate_patches(model, test, device=device, num_workers=num_workers)
    metrics["test (held-out biopsies, patches)"] = evaluate(y, p, threshold=thr)
    for stain, idx in test.groupby("stain").indices.items():
        metrics[f"test {stain}"] = evaluate(y[idx], p[idx], threshold=thr)
    curves = {"val": (result.val_labels, result.val_proba), "test (held-out biopsies)": (y, p)}
    if external:
        try:
            tiles = kgl.datasets.pas_tiles_slides()
        except FileNotFoundError as e:
            logger.warning("skipping the external PAS-tiles evaluation: %s", e)
        else:
            tp = kgl.im.sample_patches(tiles, patch_um=recipe["patch_um"], seed=seed)
            p2, y2 = evaluate_patches(model, tp, device=device, num_workers=num_workers)
            metrics["pas_tiles (other site, patches)"] = evaluate(y2, p2, threshold=thr)
            adata = kgl.datasets.pas_tiles_visium(seed=seed)
            kgl.tl.classify_spots(adata, model, device=device, show_progress=False)
            metrics["pas_tiles_visium (other site, spots)"] = evaluate_spots(adata)
            curves["pas_tiles (other site)"] = (y2, p2)
        if he_repeat == 0:  # never trained on H&E: both cases are a fair test
            try:
                he_adata = kgl.datasets.he_biopsy_visium(seed=seed)
            except FileNotFoundError as e:
                logger.warning("skipping the H&E evaluation: %s", e)
            else:
                kgl.tl.classify_spots(he_adata, model, device=device, show_progress=False)
                metrics["he_biopsy_visium (H&E, spots)"] = evaluate_spots(he_adata)
    _evaluation_plots(out, curves, metrics["test (held-out biopsies, patches)"])
    model.config["metrics"] = metrics
    if entry is not None and entry.protocol and recipe == dict(entry.recipe) and max_patches_per_split is None:
        model.config["protocol"] = _jsonable(entry.protocol)
    model.config["training"]["total_seconds"] = time.perf_counter() - t0
    stains = (
        "Trained on Masson/PASM/PAS snapshots only; no H&E in the training data: check calls on H&E Visium "
        "(kgl.tl.marker_check, manual review) before trusting them."
        if he_repeat == 0
        else "H&E in training: 2 biopsy cases only (9 screenshots); its H&E accuracy comes from the leave-one-case-out "
        "protocol (kgl evaluate-recipe, docs/training.md), not from this run, which trained on both cases."
    )
    model.config["limitations"] = [
        stains,
        "µm/px of the training images is estimated from glomerulus size (assumed 200 µm median diameter); "
        "scale jitter ±25 % covers part of that uncertainty.",
        "Snapshots are centred on glomeruli: cortex far from glomeruli and medulla are under-represented.",
        "Research use only; not a diagnostic device.",
    ]
    path = save_and_install(model, out, name, install=install)
    logger.info("trained %s in %.0f s; card: %s", name, time.perf_counter() - t0, out / "MODEL_CARD.md")
    return path


def save_and_install(model: Any, out: Path, name: str, *, install: bool) -> Path:
    """``best.pt`` and ``MODEL_CARD.md`` in ``out``; with ``install``, both in the model cache as ``<name>``.

    Returns the installed checkpoint (where ``classify_spots(model=name)`` finds it), else ``out/best.pt``.
    Every kgl recipe ends here (the patch classifiers' and the map's).
    """
    import json

    from kgl.models import REGISTRY, model_dir, save_checkpoint, write_model_card

    if name in REGISTRY:  # the registry's recipe as it was: a later kgl tells a model of an older recipe apart
        recipe = json.loads(json.dumps(dict(REGISTRY[name].recipe)))
        model.config.setdefault("training", {})["registry_recipe"] = recipe
    best = save_checkpoint(model, out / "best.pt")
    write_model_card(model.config, out / "MODEL_CARD.md")
    if not install:
        return best
    dest = model_dir() / f"{name}.pt"
    save_checkpoint(model, dest)
    write_model_card(model.config, dest.with_suffix(".md"))
    return dest
