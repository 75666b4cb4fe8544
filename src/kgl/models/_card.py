"""Markdown model cards (Hugging Face / torchvision style) from a kgl model config."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kgl._files import atomic_path

__all__ = ["model_card", "write_model_card"]

#: Metric rows of the evaluation table, in this order (other scalar keys follow).
_METRIC_ROWS = (
    ("n", "samples"),
    ("n_pos", "glomeruli"),
    ("n_neg", "other"),
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("precision", "precision"),
    ("recall", "recall (sensitivity)"),
    ("specificity", "specificity"),
    ("f1", "F1"),
    ("roc_auc", "ROC AUC"),
    ("pr_auc", "PR AUC (average precision)"),
    ("brier", "Brier score"),
    ("ece", "ECE"),
    ("threshold", "threshold"),
)
_SKIP_METRICS = {"confusion_matrix", "n_bins", "key", "truth_key"}
_TRAINING_KNOWN = {
    "data",
    "class_counts",
    "recipe",
    "hyperparameters",
    "epochs",
    "epochs_run",
    "best_epoch",
    "seconds",
    "total_seconds",
}


def _fmt(v: Any) -> str:
    """A table cell: floats with 4 significant digits, ints with separators, NaN/None as 'n/a'."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:,.0f}" if v.is_integer() and abs(v) >= 1000 else f"{v:.4g}"
    if isinstance(v, list | tuple) and v and all(isinstance(x, float) for x in v):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"  # e.g. an µm/px range: 4 digits, not 17
    if isinstance(v, Mapping | list | tuple):
        return _cell(json.dumps(v, default=str, ensure_ascii=False))
    return _cell(str(v))


def _metric(v: Any) -> str:
    """A metric value: floats with exactly 3 decimals (so columns line up), the rest as :func:`_fmt`."""
    if isinstance(v, float) and not math.isnan(v) and not (v.is_integer() and abs(v) >= 1000):
        return f"{v:.3f}"
    return _fmt(v)


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(_cell(str(h)) for h in header) + " |", "|" + " --- |" * len(header)]
    out += ["| " + " | ".join(_cell(c) if isinstance(c, str) else _fmt(c) for c in r) + " |" for r in rows]
    return out


def _kv_table(d: Mapping[str, Any]) -> list[str]:
    return _table(("", ""), [(f"**{k}**", _fmt(v)) for k, v in d.items()])


def _duration(seconds: Any) -> str:
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        return str(seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, int | float | str | bool)


def _model_section(c: Mapping[str, Any]) -> list[str]:
    rows: list[tuple[str, Any]] = []
    if "name" in c:
        rows.append(("name", c["name"]))
    if c.get("task") == "segment":
        rows.append(("architecture", f"segmentation-models-pytorch `{c.get('arch')}` (a dense map)"))
        if "backbone" in c:
            rows.append(("encoder", f"torchvision `{c['backbone']}`"))
    elif "backbone" in c:
        rows.append(("backbone", f"torchvision `{c['backbone']}`"))
    if "weights" in c:
        rows.append(("pretrained weights", c["weights"] or "none (random initialisation)"))
    if "head_trained" in c:
        rows.append(("head trained", bool(c["head_trained"])))
    if "num_features" in c:
        rows.append(("embedding size", int(c["num_features"])))
    if "class_names" in c:
        names = list(c["class_names"])
        rows.append(("classes", ", ".join(names)))
        rows.append(("positive class", c.get("positive_class", names[-1] if names else None)))
    if "input_size" in c:
        rows.append(("input size (px)", f"{int(c['input_size'])} x {int(c['input_size'])}"))
    if "patch_um" in c:
        rows.append(("patch side (µm)", float(c["patch_um"])))
    mpp = c.get("training_mpp", c.get("mpp"))
    if mpp is not None:
        rows.append(("training resolution (µm/px)", float(mpp)))
    if "patch_um" in c and "input_size" in c:
        rows.append(("model input resolution (µm/px)", float(c["patch_um"]) / float(c["input_size"])))
    for k in ("mean", "std"):
        if k in c:
            rows.append((f"normalisation {k} (RGB, [0, 1] scale)", ", ".join(f"{float(x):.3f}" for x in c[k])))
    if "threshold" in c:
        rows.append(("decision threshold", float(c["threshold"])))
    if c.get("temperature") is not None:
        rows.append(("calibration (T, b)", f"{float(c['temperature']):.3g}, {float(c.get('logit_bias', 0.0)):.3g}"))
    if "kgl_version" in c:
        rows.append(("kgl version", c["kgl_version"]))
    if not rows:
        return []
    out = ["## Model", ""]
    if c.get("head_trained") is False:
        out += [
            "> **Warning:** the classification head is untrained: every probability is 0.5 and the calls are "
            "meaningless. Only the embeddings are usable.",
            "",
        ]
    return out + _table(("", ""), [(f"**{k}**", v if isinstance(v, str) else _fmt(v)) for k, v in rows]) + [""]


def _intended_use(c: Mapping[str, Any]) -> list[str]:
    patch = f"{float(c['patch_um']):g}-µm" if "patch_um" in c else "square"
    how = f"from a {patch} image patch centred on the spot"
    if c.get("task") == "segment" and "patch_um" in c and "input_size" in c:
        mpp = float(c["patch_um"]) / float(c["input_size"])
        how = (
            f"from a dense glomerulus map at {mpp:g} µm/px (the spot's fraction is the map's mean over its 55-µm "
            "disk), which also gives glomerulus polygons (`kgl.tl.glomeruli`)"
        )
    return [
        "## Intended use",
        "",
        f"Research use: call each 10x Visium spot of an H&E- or PAS-stained kidney section *glomerulus* or "
        f"*other* {how}, to annotate spots for spatial "
        "transcriptomics analyses (with scanpy / squidpy). The probability, the call and the CNN embedding are "
        "written to the AnnData.",
        "",
        "**Not for diagnosis** or any clinical decision. Not validated beyond the data listed under Training "
        "data and Evaluation (other organs, species, stains, preparations or spatial platforms).",
        "",
    ]


def _training_section(t: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    data = t.get("data")
    counts = t.get("class_counts")
    if data or counts:
        out += ["## Training data", ""]
        if isinstance(data, str):
            out += [data, ""]
        elif isinstance(data, Mapping):
            out += [*_kv_table(data), ""]
        elif isinstance(data, Sequence):
            out += [*(f"- {_cell(str(d))}" for d in data), ""]
        if isinstance(counts, Mapping) and counts:
            classes: list[str] = []
            for v in counts.values():
                for k in v if isinstance(v, Mapping) else []:
                    if k not in classes:
                        classes.append(str(k))
            rows = []
            for split, v in counts.items():
                v = v if isinstance(v, Mapping) else {}
                vals = [v.get(k) for k in classes]
                total = sum(int(x) for x in vals if isinstance(x, int | float) and not isinstance(x, bool))
                rows.append([f"**{split}**", *vals, total])
            out += ["Samples per class and split:", "", *_table(("split", *classes, "total"), rows), ""]
    recipe = t.get("recipe", t.get("hyperparameters"))
    rows2: dict[str, Any] = {}
    if "epochs_run" in t or "epochs" in t:
        rows2["epochs run"] = t.get("epochs_run", t.get("epochs"))
    if "best_epoch" in t:
        rows2["best epoch (checkpoint kept)"] = t["best_epoch"]
    if "seconds" in t:  # kgl.tl.train's epochs; kgl.recipes.train_default_model adds the patch preparation
        rows2["training time"] = _duration(t["seconds"])
    if "total_seconds" in t:
        rows2["training time with data preparation"] = _duration(t["total_seconds"])
    rows2.update({k: v for k, v in t.items() if k not in _TRAINING_KNOWN})
    if recipe or rows2:
        out += ["## Training procedure", ""]
        if isinstance(recipe, Mapping) and recipe:
            out += [*_kv_table(recipe), ""]
        elif isinstance(recipe, str):
            out += [recipe, ""]
        if rows2:
            out += [*_kv_table(rows2), ""]
    return out


def _evaluation_section(metrics: Mapping[str, Mapping[str, Any]]) -> list[str]:
    splits = [s for s, m in metrics.items() if isinstance(m, Mapping)]
    if not splits:
        return []
    keys = [k for k, _ in _METRIC_ROWS if any(k in metrics[s] for s in splits)]
    names = dict(_METRIC_ROWS)
    for s in splits:
        for k, v in metrics[s].items():
            if k not in keys and k not in _SKIP_METRICS and _is_scalar(v):
                keys.append(k)
    rows = [[names.get(k, k), *(_metric(metrics[s][k]) if k in metrics[s] else "–" for s in splits)] for k in keys]
    out = ["## Evaluation", "", *_table(("metric", *splits), rows), ""]
    cms = [(s, metrics[s]["confusion_matrix"]) for s in splits if "confusion_matrix" in metrics[s]]
    if cms:
        out += ["Confusion matrices (rows: true other / glomerulus; columns: predicted other / glomerulus):", ""]
        for s, cm in cms:
            try:
                (tn, fp), (fn, tp) = cm
                out.append(
                    f"- **{_cell(s)}**: TN {_fmt(int(tn))}, FP {_fmt(int(fp))}, FN {_fmt(int(fn))}, TP {_fmt(int(tp))}"
                )
            except (TypeError, ValueError):
                out.append(f"- **{_cell(s)}**: {_fmt(cm)}")
        out.append("")
    return out


def _calibration_section(c: Mapping[str, Any], metrics: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    if "threshold" in c:
        how = c.get("threshold_selection") or (c.get("training") or {}).get("threshold_selection")
        lines.append(
            f"A spot is called glomerulus when its probability exceeds **{float(c['threshold']):g}**"
            + (f" ({_cell(str(how))})." if how else ".")
            + " A threshold must be chosen on validation data only (`kgl.tl.choose_threshold`), never on the test "
            "split."
        )
    if c.get("temperature") is not None:
        if lines:
            lines.append("")
        lines.append(
            f"Probabilities are calibrated on validation data: p = sigmoid((l_glom - l_other) / T + b) with "
            f"T = {float(c['temperature']):.3g} and b = {float(c.get('logit_bias', 0.0)):.3g} (Platt scaling of the "
            "logit margin; b undoes the 50/50 prior of class-balanced sampling)."
        )
    cal = [
        (s, m.get("ece"), m.get("brier"))
        for s, m in metrics.items()
        if isinstance(m, Mapping) and ("ece" in m or "brier" in m)
    ]
    if cal:
        if lines:
            lines.append("")
        lines += [
            "Expected calibration error (ECE, equal-width bins weighted by counts) and Brier score; lower is better:",
            "",
            *_table(("split", "ECE", "Brier"), [(f"**{s}**", _metric(e), _metric(b)) for s, e, b in cal]),
        ]
    return ["## Calibration & threshold", "", *lines, ""] if lines else []


def _stain_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = [r for r in rows if isinstance(r, Mapping)]
    if not rows:
        return []
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    cells = [[_metric(r[k]) if k in r else "–" for k in cols] for r in rows]
    return ["### By stain", "", *_table(cols, cells), ""]


def _protocol_section(proto: Mapping[str, Any]) -> list[str]:
    """The recipe's leave-one-case-out evaluation: one row per held-out set, mean ± sd over seeds."""
    results = proto.get("results") if isinstance(proto, Mapping) else None
    if not isinstance(results, Mapping) or not results:
        return []
    metrics = [("roc_auc", "ROC AUC"), ("f1", "F1"), ("ece", "ECE")]

    def cell(v: Any) -> str:
        try:
            mean, sd = v
            return f"{float(mean):.3f} ± {float(sd):.3f}"
        except (TypeError, ValueError):
            return _metric(v)

    rows = [
        [f"**{s}**", *(cell(r.get(k, "–")) for k, _ in metrics)] for s, r in results.items() if isinstance(r, Mapping)
    ]
    seeds = proto.get("seeds")
    intro = (
        "The recipe, not this run: trained once per seed with each H&E case left out in turn and tested on data "
        "never trained on (`kgl.recipes.evaluate_recipe`); mean ± sd over "
        + (f"{len(seeds)} seeds ({', '.join(str(x) for x in seeds)})" if isinstance(seeds, Sequence) else "seeds")
        + (f", {_cell(str(proto['machine']))}" if proto.get("machine") else "")
        + ". Validation threshold and calibration; spots with 0 < coverage < 0.5 left out."
    )
    return ["### Held-out evaluation of the recipe (several seeds)", "", intro, "",
            *_table(("held-out set", *(n for _, n in metrics)), rows), ""]  # fmt: skip


_GENERIC_LIMITATIONS = (
    "A Visium capture spot is 55 µm across while the model sees a larger patch around it: a spot next to a "
    "glomerulus can be called glomerulus although its transcripts come mostly from tubules.",
    "Stain, scanner and section-thickness shifts change the input distribution; check calibration on your own "
    "data before trusting the probabilities.",
)


def model_card(config: Mapping[str, Any]) -> str:
    """A markdown model card from a kgl model config (as stored in a checkpoint).

    Sections appear only when the config has what they need; a bare config still gives a valid card.

    Parameters
    ----------
    config
        A model config (``model.config`` / :func:`kgl.models.model_config`) with any of: ``name``,
        ``backbone``, ``weights``, ``head_trained``, ``input_size``, ``patch_um``, ``mpp`` or
        ``training_mpp``, ``mean``/``std``, ``threshold`` (and ``threshold_selection``, how it was
        chosen), ``class_names``, ``training`` (dict: ``data`` (str, dict or list), ``class_counts``
        (split → class → count), ``recipe`` or ``hyperparameters`` (dict), ``epochs_run``,
        ``best_epoch``, ``seconds`` (the epochs) and ``total_seconds`` (with data preparation); other
        keys are listed as they are; ``training_data``
        at the top level is read as ``training["data"]``), ``temperature``, ``metrics`` (split name →
        :func:`kgl.tl.evaluate` / :func:`kgl.tl.evaluate_spots` dict), ``stain_comparison`` (list of
        dicts, one table row each), ``protocol`` (the recipe's held-out evaluation over seeds:
        ``results`` (set → metric → ``(mean, sd)``), ``seeds``, ``machine``; see
        :attr:`kgl.models.ModelEntry.protocol`), ``limitations`` (list of str) and ``sha256``.

    Returns
    -------
    The card as markdown text.

    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict (a model config), got {type(config).__name__}.")
    c = dict(config)
    name = c.get("name") or c.get("backbone") or "kgl glomerulus classifier"
    metrics = c.get("metrics") if isinstance(c.get("metrics"), Mapping) else {}
    training = dict(c["training"]) if isinstance(c.get("training"), Mapping) else {}
    if "training_data" in c and "data" not in training:
        training["data"] = c["training_data"]

    out = [f"# Model card: {name}", ""]
    summary = "Glomerulus / other classifier of Visium spots from the tissue image"
    if c.get("task") == "segment":
        summary = (
            f"Dense glomerulus map of the tissue image (segmentation-models-pytorch `{c.get('arch')}` on a torchvision "
            f"`{c.get('backbone')}` encoder): per-spot glomerulus fractions and calls, and glomerulus polygons"
        )
    elif "backbone" in c:
        summary += f": a torchvision `{c['backbone']}` backbone with a linear head"
    out += [summary + ", for `kgl.tl.classify_spots`.", ""]
    out += _model_section(c)
    out += _intended_use(c)
    out += _training_section(training)
    evaluation = _evaluation_section(metrics)
    stains = _stain_section(c.get("stain_comparison") or [])
    if stains and not evaluation:
        evaluation = ["## Evaluation", ""]
    protocol = _protocol_section(c.get("protocol") or {})
    if protocol and not evaluation:
        evaluation = ["## Evaluation", ""]
    out += evaluation + protocol + stains
    out += _calibration_section(c, metrics)

    limits = [str(x) for x in (c.get("limitations") or [])]
    if c.get("head_trained") is False:
        limits.insert(0, "The classification head is untrained: calls are meaningless (probability 0.5 everywhere).")
    out += ["## Limitations", "", *(f"- {_cell(x)}" for x in [*limits, *_GENERIC_LIMITATIONS]), ""]

    ref = c.get("name") or "path/to/model.pt"
    out += [
        "## How to use",
        "",
        "```python",
        "import kgl",
        "",
        'adata = kgl.io.read_visium("outs/", fullres_image_file="image.tif")',
        f"kgl.tl.classify_spots(adata, model={json.dumps(ref)})",
        'adata.obs["glomerulus"], adata.obs["glomerulus_proba"]',
        "```",
        "",
    ]
    if c.get("sha256"):
        out += [
            "## Checksum",
            "",
            f"SHA-256 of the parameters (`kgl.models.state_dict_sha256`): `{c['sha256']}`",
            "",
        ]
    return "\n".join(out).rstrip("\n") + "\n"


def write_model_card(config: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write :func:`model_card` of ``config`` to ``path`` (UTF-8 markdown), atomically; return the path."""
    path = Path(path)
    text = model_card(config)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
