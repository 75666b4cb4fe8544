"""The glomerulus map's recipe: the slides it trains on, training, and installation in the model cache."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kgl._logging import logger
from kgl._types import Precision
from kgl.models import REGISTRY

__all__ = [
    "MAP_MODEL",
    "map_training_slides",
    "object_scores",
    "score_map_model",
    "score_map_protocol",
    "summarise_map_protocol",
    "train_map_model",
    "train_model",
]

#: Registry name of kgl's glomerulus map.
MAP_MODEL = "kgl-glom-map-v1"
#: Recipe entries that are not :func:`kgl.tl.train_map` settings.
_NOT_SETTINGS = ("task", "patch_um", "he_repeat")


def map_training_slides(
    *, seed: int = 0, he_cases: Sequence[str] | None = None, he_repeat: int = 3
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The map's slide table: the multistain biopsies split by biopsy (stratified by stain), plus H&E cases.

    The H&E slides of ``he_cases`` (all by default; ``()`` none) join the **training** split
    ``he_repeat`` times; a case left out is a fair test (leave one case out). The PAS tiles are never
    trained on. Returns the table (``split`` column) and a JSON-able summary for the model config.
    """
    import kgl

    slides = kgl.datasets.multistain_slides()
    slides["split"] = kgl.tl.split_by_group(slides, group_key="group", stratify_key="stain", seed=seed).to_numpy()
    summary: dict[str, Any] = {
        "dataset": "glomeruli-multistain (Jiang et al. 2021), 105 snapshots of human renal biopsies, Masson/PASM/PAS",
        "biopsies_per_split": {s: int(g["group"].nunique()) for s, g in slides.groupby("split")},
        "test_biopsies": sorted(slides.loc[slides["split"] == "test", "group"].unique().tolist()),
    }
    if he_repeat > 0 and (he_cases is None or len(he_cases)):
        he = kgl.datasets.he_biopsy_slides()
        if he_cases is not None:
            he = he[he["group"].isin(list(he_cases))]
        he = he.assign(split="train")
        slides = pd.concat([slides, *[he] * he_repeat], ignore_index=True)
        summary["he_biopsy"] = {"cases": sorted(he["group"].unique().tolist()), "slides": len(he), "repeat": he_repeat}
    return slides, summary


def train_map_model(
    out_dir: str | os.PathLike | None = None,
    *,
    name: str = MAP_MODEL,
    install: bool = True,
    seed: int = 0,
    he_cases: Sequence[str] | None = None,
    device: Any = "auto",
    precision: Precision = "auto",
    show_progress: bool = True,
    **overrides: Any,
) -> Path:
    """Train kgl's glomerulus map with its registered recipe, evaluate it on the PAS tiles, and install it.

    1. Slides: :func:`map_training_slides` (multistain split by biopsy; H&E cases ``he_cases`` in training).
    2. :func:`kgl.tl.train_map` (fraction calibration and call threshold on validation spots).
    3. The PAS tiles of another site as pseudo-Visium (:func:`kgl.datasets.pas_tiles_visium`, never
       trained on): :func:`kgl.tl.classify_spots` with the map, :func:`kgl.tl.evaluate_spots`.
    4. Checkpoint, curves and model card in ``out_dir``; with ``install``, the model cache, where
       ``classify_spots(adata, model=name)`` finds it.

    Parameters
    ----------
    out_dir
        Working folder; default ``<cachedir>/training/<name>``.
    name
        Registry name; its recipe (:attr:`kgl.models.ModelEntry.recipe`) is the starting point.
    install
        Copy the checkpoint to the model cache.
    seed
        Seed of the split and the training.
    he_cases
        H&E cases to train on (all by default; leave one out to test on it).
    device, precision, show_progress
        As in :func:`kgl.tl.train_map`.
    overrides
        Replace entries of the recipe.

    Returns
    -------
    Path of the installed (or, without ``install``, the trained) checkpoint.

    """
    import matplotlib.pyplot as plt

    import kgl
    from kgl._settings import settings
    from kgl.pl import training_curves

    entry = REGISTRY.get(name)  # "DEFAULT" is the map's entry, trained under its real name
    if entry is not None and entry.recipe.get("task") != "segment":
        raise ValueError(f"{name!r} is a patch classifier: train it with kgl.recipes.train_default_model.")
    name = entry.name if entry is not None else name
    base = dict(entry.recipe if entry is not None else REGISTRY[MAP_MODEL].recipe)
    unknown = set(overrides) - set(base)
    if unknown:
        raise TypeError(f"Unknown recipe entries {sorted(unknown)}; the map recipe has {sorted(base)}.")
    recipe = {**base, **overrides}
    out = Path(out_dir) if out_dir is not None else Path(settings.cachedir) / "training" / name
    t0 = time.perf_counter()
    slides, summary = map_training_slides(seed=seed, he_cases=he_cases, he_repeat=int(recipe["he_repeat"]))
    settings_ = {k: v for k, v in recipe.items() if k not in _NOT_SETTINGS}
    result = kgl.tl.train_map(
        slides,
        out_dir=out,
        name=name,
        seed=seed,
        device=device,
        precision=precision,
        show_progress=show_progress,
        extra_config={"training_data": summary},
        **settings_,
    )
    axes = training_curves(result.history, save=out / "curves.png")
    plt.close(axes[0].figure)
    model = result.model
    metrics = dict(model.config["metrics"])
    try:
        pas = kgl.datasets.pas_tiles_visium(seed=seed)
    except FileNotFoundError as e:
        logger.warning("skipping the external PAS-tiles evaluation: %s", e)
    else:
        kgl.tl.classify_spots(pas, model, device=device, precision=precision, show_progress=False)
        metrics["pas_tiles_visium (other site, spots)"] = kgl.tl.evaluate_spots(pas)
    model.config["metrics"] = metrics
    if entry is not None and entry.protocol and recipe == dict(entry.recipe) and he_cases is None:
        from kgl.recipes._train import _jsonable

        model.config["protocol"] = _jsonable(entry.protocol)  # the recipe's held-out evaluation, for the card
    model.config["training"]["total_seconds"] = time.perf_counter() - t0
    model.config["limitations"] = [
        "H&E in training: 2 biopsy cases only (9 screenshots); its H&E accuracy comes from the leave-one-case-out "
        "protocol (docs/training.md), not from this run.",
        "Multistain µm/px is estimated from glomerulus size (200 µm median diameter); scale jitter ±25 %.",
        "Research use only; not a diagnostic device.",
    ]
    from kgl.recipes._train import save_and_install

    path = save_and_install(model, out, name, install=install)
    logger.info("trained %s in %.0f s", name, time.perf_counter() - t0)
    return path


def object_scores(pred: Sequence[Any], truth: Sequence[Any], *, iou: float = 0.5) -> dict[str, float]:
    """Object detection F1 (a prediction matches one truth polygon at IoU ≥ ``iou``, greedily by IoU) and Dice.

    Dice is ``2 |P ∩ T| / (|P| + |T|)`` of the unions of the predicted and true polygons (areas).
    """
    import shapely

    pred, truth = list(pred), list(truth)
    pairs = []
    if pred and truth:
        tree = shapely.STRtree(truth)
        for i, p in enumerate(pred):
            for j in tree.query(p, predicate="intersects"):
                t = truth[int(j)]
                inter = p.intersection(t).area
                union = p.area + t.area - inter
                if union > 0 and inter / union >= iou:
                    pairs.append((inter / union, i, int(j)))
    used_p, used_t = set(), set()
    for _, i, j in sorted(pairs, reverse=True):
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
    tp = len(used_p)
    prec = tp / len(pred) if pred else float("nan")
    rec = tp / len(truth) if truth else float("nan")
    f1 = 2 * tp / (len(pred) + len(truth)) if pred or truth else float("nan")
    up = shapely.union_all(pred) if pred else shapely.Polygon()
    ut = shapely.union_all(truth) if truth else shapely.Polygon()
    denom = up.area + ut.area
    dice = 2 * up.intersection(ut).area / denom if denom > 0 else float("nan")
    return {"object_precision": prec, "object_recall": rec, "object_f1": f1, "n_objects": len(truth),
            "n_predicted": len(pred), "dice": dice}  # fmt: skip


def score_map_model(model: Any, adata: Any, *, device: Any = "auto", precision: Precision = "auto") -> dict[str, Any]:
    """Spot, fraction and object scores of a map model on a pseudo-Visium sample (:func:`kgl.datasets.pseudo_visium`).

    Spot metrics as :func:`kgl.tl.evaluate_spots` (coverage ≥ 0.5 positive, 0 negative, the model's
    validation threshold); ``fraction_mae`` over the spots that touch a glomerulus (coverage > 0);
    object F1 / Dice of :func:`kgl.tl.glomeruli` against the placed polygons
    (``uns["pseudo_visium"]["glomeruli_wkt"]``).
    """
    import shapely

    import kgl

    out = kgl.tl.classify_spots(adata, model, copy=True, show_progress=False, device=device, precision=precision)
    kgl.tl.glomerulus_map(out, model, show_progress=False, device=device, precision=precision)
    m = kgl.tl.evaluate_spots(out)
    cov = out.obs["glomerulus_coverage"].to_numpy(dtype=float)
    frac = out.obs["glomerulus_fraction"].to_numpy(dtype=float)
    touch = cov > 0
    truth = [shapely.from_wkt(w) for w in out.uns["pseudo_visium"]["glomeruli_wkt"]]
    gdf = kgl.tl.glomeruli(out)
    row = {k: m[k] for k in ("n", "n_pos", "roc_auc", "pr_auc", "f1", "precision", "recall", "ece")}
    row["fraction_mae"] = float(np.mean(np.abs(frac[touch] - cov[touch]))) if touch.any() else float("nan")
    row["n_touching"] = int(touch.sum())
    row.update(object_scores(list(gdf.geometry), truth))
    return row


def score_map_protocol(
    out_dir: str | os.PathLike, *, device: Any = "auto", precision: Precision = "auto"
) -> pd.DataFrame:
    """Score every ``seed<S>-<case>/best.pt`` under ``out_dir`` (:func:`score_map_model`).

    Each checkpoint is scored on its held-out H&E case, the PAS tiles and the held-out multistain
    biopsies; the rows (one per checkpoint and test set) are also written to ``out_dir/rows.csv``.
    """
    import kgl
    from kgl.models import load_checkpoint

    out = Path(out_dir)
    rows = []
    ms_cache: dict[int, Any] = {}
    for ckpt in sorted(out.glob("seed*-*/best.pt")):
        seed_s, held = ckpt.parent.name.removeprefix("seed").split("-", 1)
        seed = int(seed_s)
        model = load_checkpoint(ckpt)
        t0 = time.perf_counter()
        sets = {"he-spots": kgl.datasets.he_biopsy_visium(cases=held, seed=seed),
                "pas-spots": kgl.datasets.pas_tiles_visium(seed=seed)}  # fmt: skip
        if seed not in ms_cache:
            ms_cache[seed] = _multistain_test_visium(seed)
        sets["multistain-spots"] = ms_cache[seed]
        for name, adata in sets.items():
            row = {"seed": seed, "fold": held, "set": name, **score_map_model(model, adata, device=device,
                                                                             precision=precision)}  # fmt: skip
            row["mpp"] = float(model.spec.mpp)
            row["train_s"] = float(model.config["training"]["seconds"])
            rows.append(row)
        logger.info("scored %s in %.0f s", ckpt.parent.name, time.perf_counter() - t0)
    df = pd.DataFrame(rows)
    df.to_csv(out / "rows.csv", index=False)
    return df


def _multistain_test_visium(seed: int) -> Any:
    """Pseudo-Visium of the multistain biopsies held out by ``seed``'s split (their estimated µm/px)."""
    import kgl

    slides, _ = map_training_slides(seed=seed, he_cases=(), he_repeat=0)
    test = slides[slides["split"] == "test"]
    return kgl.datasets.pseudo_visium(list(test["path"]), list(test["polygons"]), mpp=list(test["mpp"]),
                                      target_mpp=float(test["mpp"].median()), seed=seed, gap_um=20.0,
                                      library_id=f"multistain_test_{seed}")  # fmt: skip


_SUMMARY = ("roc_auc", "f1", "precision", "recall", "ece", "fraction_mae", "object_f1", "dice")


def summarise_map_protocol(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd over seeds per test set (H&E: the two held-out cases averaged within each seed first)."""
    per_seed = rows.groupby(["set", "seed"])[list(_SUMMARY)].mean()
    mean = per_seed.groupby("set").mean()
    sd = per_seed.groupby("set").std(ddof=1)
    out = mean.copy().astype(object)
    for c in _SUMMARY:
        out[c] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(mean[c], sd[c].fillna(0.0), strict=True)]
    out["seeds"] = per_seed.groupby("set").size()
    return out


#: :func:`train_default_model` settings that the map's recipe does not have (patch sampling, DataLoader workers).
_PATCH_ONLY = ("num_workers", "max_patches_per_split", "external")


def train_model(name: str | None = None, out_dir: str | os.PathLike | None = None, **kwargs: Any) -> Path:
    """Train a registered model by its own recipe: :func:`train_map_model` for a map, else :func:`train_default_model`.

    ``kgl train --name NAME`` and ``kgl demo`` call this. The patch-only settings (``num_workers``,
    ``max_patches_per_split``, ``external``) are refused for a map unless left at their defaults.
    """
    from kgl.models import DEFAULT_MODEL
    from kgl.recipes._train import train_default_model

    name = name or DEFAULT_MODEL
    entry = REGISTRY.get(name)  # "DEFAULT" resolves to the default model's entry
    if entry is None or entry.recipe.get("task", "classify") != "segment":
        return train_default_model(out_dir, name=name, **kwargs)
    defaults = {"num_workers": 0, "max_patches_per_split": None, "external": True}
    given = [k for k in _PATCH_ONLY if k in kwargs and kwargs[k] != defaults[k]]
    if given:
        raise TypeError(f"{name!r} is a map model; {given} are settings of the patch recipe (kgl-glom-v2) only.")
    return train_map_model(out_dir, name=name, **{k: v for k, v in kwargs.items() if k not in _PATCH_ONLY})
