"""Evaluation plots: reliability diagram, confusion matrix, ROC / PR curves and training curves (matplotlib)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from kgl.pl._utils import save_figure

__all__ = ["confusion", "reliability", "roc_pr", "training_curves"]

_POS_COLOR = "#d62728"  # the "glomerulus" colour of classify_spots / spatial_glom
_TRAIN_COLOR = "#1f77b4"
_VAL_COLOR = "#d62728"


def _new_figure(figsize: tuple[float, float], **kwargs: Any) -> Any:
    import matplotlib.pyplot as plt

    return plt.figure(figsize=figsize, layout="constrained", **kwargs)


def reliability(
    y_true: Any,
    proba: Any,
    *,
    n_bins: int = 10,
    ax: Any = None,
    save: str | os.PathLike | None = None,
    title: str | None = None,
    figsize: tuple[float, float] = (4.5, 5.0),
    dpi: int = 150,
) -> Any:
    """Reliability diagram: observed frequency of glomeruli against the predicted probability.

    Parameters
    ----------
    y_true
        True labels, 1 (or ``True``) for glomerulus.
    proba
        Predicted probability of glomerulus.
    n_bins
        Equal-width probability bins (as in :func:`kgl.tl.calibration_table`).
    ax
        Axes to draw into; the bin counts then go on a twin y axis. Without it a new figure has the
        diagram on top and the counts histogram (log scale) underneath.
    save
        Write the figure there (PNG/PDF by suffix), atomically.
    title
        Title; the ECE is appended.
    figsize, dpi
        Size of a new figure and resolution of the saved one.

    Returns
    -------
    The reliability :class:`~matplotlib.axes.Axes`.

    """
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter

    from kgl._metrics import calibration_table, check_inputs, ece

    y, p = check_inputs(y_true, proba)
    table = calibration_table(y, p, n_bins=n_bins)
    ece_value = ece(y, p, n_bins)
    if ax is None:
        fig = _new_figure(figsize)
        ax, ax_hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        twin = False
    else:
        fig, ax_hist, twin = ax.figure, ax.twinx(), True
    width = table["upper"] - table["lower"]
    filled = table["count"] > 0
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
    ax.bar(
        table["lower"][filled],
        table["frac_pos"][filled],
        width=width[filled],
        align="edge",
        color=_POS_COLOR,
        alpha=0.25,
        edgecolor=_POS_COLOR,
        lw=0.8,
        label="observed frequency",
    )
    ax.plot(
        table["mean_proba"][filled],
        table["frac_pos"][filled],
        "o-",
        color=_POS_COLOR,
        ms=4,
        lw=1.2,
        label="mean proba vs. observed",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_aspect("auto")
    ax.set_ylabel("observed fraction of glomeruli")
    ax.legend(loc="upper left", fontsize="small", frameon=False)
    stats = f"ECE = {ece_value:.3f}, n = {len(y):,}"
    full_title = f"{title}\n{stats}" if title else f"Reliability ({stats})"
    ax.set_title(full_title, fontsize="medium")
    hist_kw = {"width": width, "align": "edge", "color": "0.6", "edgecolor": "0.4", "lw": 0.5}
    if twin:
        ax_hist.bar(table["lower"], table["count"], alpha=0.3, **hist_kw)
        ax_hist.set_ylabel("count", color="0.4", loc="bottom")
        top = max(int(table["count"].max()), 1)
        ax_hist.set_ylim(0, top * 4)  # keep the bars in the lower quarter, ticks only up to the largest bin
        ax_hist.set_yticks([t for t in MaxNLocator(3, integer=True).tick_values(0, top) if t <= top])
        ax.set_zorder(ax_hist.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.set_xlabel("predicted probability of glomerulus")
    else:
        ax_hist.bar(table["lower"], table["count"], **hist_kw)
        ax_hist.set_yscale("log")
        ax_hist.set_ylim(0.7, max(int(table["count"].max()), 1) * 1.5)
        ax_hist.yaxis.set_major_locator(LogLocator(numticks=4))
        ax_hist.yaxis.set_minor_formatter(NullFormatter())
        ax_hist.set_ylabel("count")
        ax_hist.set_xlabel("predicted probability of glomerulus")
        ax.tick_params(labelbottom=False)
    save_figure(fig, save, dpi=dpi)
    return ax


def _confusion_matrix(cm: Any, y_pred: Any) -> np.ndarray:
    if y_pred is not None:
        pairs = (cm, y_pred)
    elif isinstance(cm, tuple):
        if len(cm) != 2:
            raise ValueError(f"A tuple is read as (y_true, y_pred); got a tuple of {len(cm)} elements.")
        pairs = cm
    else:
        if isinstance(cm, Mapping):
            if "confusion_matrix" not in cm:
                raise KeyError(f"A dict must be a kgl.tl.evaluate result with 'confusion_matrix'; keys: {list(cm)}.")
            cm = cm["confusion_matrix"]
        m = np.asarray(cm)
        if m.shape != (2, 2):
            raise ValueError(
                f"cm must be a 2x2 matrix [[tn, fp], [fn, tp]], got shape {m.shape}; pass (y_true, y_pred) as a "
                "tuple or y_pred= for labels."
            )
        return m.astype(float)
    from sklearn.metrics import confusion_matrix

    yt = np.asarray(pairs[0]).astype(int)
    yp = np.asarray(pairs[1]).astype(int)
    if yt.shape != yp.shape:
        raise ValueError(f"y_true and y_pred have different shapes: {yt.shape} and {yp.shape}.")
    return confusion_matrix(yt, yp, labels=[0, 1]).astype(float)


def confusion(
    cm: Any,
    y_pred: Any = None,
    *,
    labels: Sequence[str] = ("other", "glomerulus"),
    ax: Any = None,
    save: str | os.PathLike | None = None,
    title: str | None = None,
    cmap: str = "Blues",
    figsize: tuple[float, float] = (3.8, 3.4),
    dpi: int = 150,
) -> Any:
    """Confusion matrix with counts and row percentages (rows: truth, columns: prediction).

    Parameters
    ----------
    cm
        A 2x2 matrix ``[[tn, fp], [fn, tp]]`` (nested lists or array, as in
        ``kgl.tl.evaluate(...)["confusion_matrix"]``), an :func:`~kgl.tl.evaluate` result dict, or a
        **tuple** ``(y_true, y_pred)`` of 0/1 labels. With ``y_pred=`` given, ``cm`` is ``y_true``.
    y_pred
        Predicted 0/1 labels, when ``cm`` holds the true labels.
    labels
        Names of class 0 and class 1.
    ax
        Axes to draw into; a new figure by default.
    save
        Write the figure there (PNG/PDF by suffix), atomically.
    title
        Axes title.
    cmap
        Colour map of the row-normalised cells.
    figsize, dpi
        Size of a new figure and resolution of the saved one.

    Returns
    -------
    The :class:`~matplotlib.axes.Axes`.

    """
    m = _confusion_matrix(cm, y_pred)
    if len(labels) != 2:
        raise ValueError(f"labels must name the 2 classes, got {list(labels)}.")
    if ax is None:
        fig = _new_figure(figsize)
        ax = fig.add_subplot()
    fig = ax.figure
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    ax.imshow(frac, cmap=cmap, vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            txt = f"{int(m[i, j]):,}\n({100 * frac[i, j]:.1f}%)" if rows[i, 0] > 0 else f"{int(m[i, j]):,}"
            ax.text(
                j, i, txt, ha="center", va="center", fontsize="medium", color="white" if frac[i, j] > 0.6 else "black"
            )
    ax.set_xticks([0, 1], labels=list(labels))
    ax.set_yticks([0, 1], labels=list(labels), rotation=90, va="center")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"Confusion matrix (n = {int(m.sum()):,})", fontsize="medium")
    save_figure(fig, save, dpi=dpi)
    return ax


def _curves(y_true: Any, proba: Any) -> dict[str, tuple[Any, Any]]:
    if isinstance(y_true, Mapping):
        if proba is not None:
            raise ValueError("With a dict of curves {name: (y_true, proba)}, do not pass proba separately.")
        if not y_true:
            raise ValueError("The dict of curves is empty.")
        out = {}
        for name, pair in y_true.items():
            if not isinstance(pair, Sequence) or len(pair) != 2:
                raise ValueError(f"Curve {name!r} must be a (y_true, proba) pair.")
            out[str(name)] = (pair[0], pair[1])
        return out
    if proba is None:
        raise ValueError("proba is required (or pass a dict {name: (y_true, proba)} as the first argument).")
    return {"": (y_true, proba)}


def roc_pr(
    y_true: Any,
    proba: Any = None,
    *,
    axes: Sequence[Any] | None = None,
    save: str | os.PathLike | None = None,
    title: str | None = None,
    figsize: tuple[float, float] = (9.0, 4.2),
    dpi: int = 150,
) -> list[Any]:
    """ROC and precision-recall curves side by side, with ROC AUC and average precision in the legends.

    Parameters
    ----------
    y_true
        True labels (1 = glomerulus), or a dict ``{name: (y_true, proba)}`` to overlay several curves
        (splits, stains, models).
    proba
        Predicted probability of glomerulus (omit with a dict).
    axes
        Two axes (ROC, PR) to draw into; a new figure by default.
    save
        Write the figure there (PNG/PDF by suffix), atomically.
    title
        Figure title.
    figsize, dpi
        Size of a new figure and resolution of the saved one.

    Returns
    -------
    ``[roc_ax, pr_ax]``.

    """
    from kgl._logging import logger
    from kgl._metrics import check_inputs, roc_pr_curves

    curves = {name: check_inputs(*pair) for name, pair in _curves(y_true, proba).items()}
    if axes is None:
        fig = _new_figure(figsize)
        ax_roc, ax_pr = fig.subplots(1, 2)
    else:
        ax_roc, ax_pr = axes
        fig = ax_roc.figure
    ax_roc.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1)
    colors = [f"C{i}" for i in range(10)]
    single = len(curves) == 1
    for i, (name, (y, p)) in enumerate(curves.items()):
        color = _POS_COLOR if single else colors[i % 10]

        def label(stat: str, value: float, name: str = name) -> str:
            return f"{name} ({stat} = {value:.3f})" if name else f"{stat} = {value:.3f}"

        if y.min() == y.max():
            logger.warning("Curve %r has a single class: no ROC/PR curve drawn.", name or "curve")
            continue
        c = roc_pr_curves(y, p)
        ax_roc.plot(c["fpr"], c["tpr"], color=color, lw=1.6, label=label("AUC", c["roc_auc"]))
        ax_pr.step(
            c["recall"], c["precision"], where="post", color=color, lw=1.6, label=label("AP", c["average_precision"])
        )
        ax_pr.axhline(c["prevalence"], color=color, ls=":", lw=1, alpha=0.7)
    ax_roc.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    ax_roc.set_title("ROC", fontsize="medium")
    ax_pr.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="recall", ylabel="precision")
    ax_pr.set_title("Precision-recall (dotted: prevalence)", fontsize="medium")
    for a, loc in ((ax_roc, "lower right"), (ax_pr, "lower left")):
        a.set_aspect("equal")
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(loc=loc, fontsize="small")
    if title:
        fig.suptitle(title)
    save_figure(fig, save, dpi=dpi)
    return [ax_roc, ax_pr]


_LOSS = (("train_loss", "train"), ("val_loss", "val"))
_SCORES = (
    ("train_acc", "train accuracy", _TRAIN_COLOR, "-"),
    ("val_acc", "val accuracy", _VAL_COLOR, "-"),
    ("train_auroc", "train AUROC", _TRAIN_COLOR, "--"),
    ("val_auroc", "val AUROC", _VAL_COLOR, "--"),
)


def training_curves(
    history: Any,
    *,
    best_epoch: int | None = None,
    save: str | os.PathLike | None = None,
    title: str | None = None,
    figsize: tuple[float, float] = (9.0, 3.6),
    dpi: int = 150,
) -> list[Any]:
    """Loss and accuracy / AUROC per epoch, train against validation.

    Parameters
    ----------
    history
        A :class:`~pandas.DataFrame`, list of per-epoch dicts or dict of lists with any of the columns
        ``epoch``, ``train_loss``, ``val_loss``, ``train_acc``, ``val_acc``, ``train_auroc``,
        ``val_auroc`` and ``best`` (bool: the checkpoint kept). Missing columns and NaN values are
        skipped; without ``epoch`` rows count from 1.
    best_epoch
        Epoch to mark; by default the last row whose ``best`` is true, if there is that column.
    save
        Write the figure there (PNG/PDF by suffix), atomically.
    title
        Figure title.
    figsize, dpi
        Size of the figure and resolution of the saved one.

    Returns
    -------
    ``[loss_ax, score_ax]``.

    """
    df = history.copy() if isinstance(history, pd.DataFrame) else pd.DataFrame(history)
    if df.empty:
        raise ValueError("history is empty: no epoch to plot.")
    known = [c for c, _ in _LOSS] + [c for c, *_ in _SCORES]
    if not any(c in df for c in known):
        raise ValueError(f"history has none of the columns {known}; it has {list(df.columns)}.")
    epoch = pd.to_numeric(df["epoch"]) if "epoch" in df else pd.Series(np.arange(1, len(df) + 1), index=df.index)
    if best_epoch is None and "best" in df:
        best = df["best"].fillna(False).astype(bool).to_numpy()
        if best.any():
            best_epoch = epoch.to_numpy()[np.flatnonzero(best)[-1]]
    fig = _new_figure(figsize)
    ax_loss, ax_score = fig.subplots(1, 2, sharex=True)
    marker = "o" if len(df) <= 30 else None

    def _line(ax: Any, col: str, label: str, color: str, ls: str) -> bool:
        if col not in df:
            return False
        v = pd.to_numeric(df[col], errors="coerce")
        ok = v.notna().to_numpy()
        if not ok.any():
            return False
        ax.plot(epoch[ok], v[ok], ls=ls, color=color, marker=marker, ms=3, lw=1.4, label=label)
        return True

    drew_loss = any(
        [_line(ax_loss, c, lab, col, "-") for (c, lab), col in zip(_LOSS, (_TRAIN_COLOR, _VAL_COLOR), strict=True)]
    )
    drew_score = any([_line(ax_score, c, lab, col, ls) for c, lab, col, ls in _SCORES])
    ax_loss.set(xlabel="epoch", ylabel="loss")
    ax_loss.set_title("Loss", fontsize="medium")
    ax_score.set(xlabel="epoch", ylabel="accuracy / AUROC")
    ax_score.set_title("Accuracy and AUROC", fontsize="medium")
    for a, drew in ((ax_loss, drew_loss), (ax_score, drew_score)):
        a.grid(alpha=0.3)
        if not drew:
            a.text(0.5, 0.5, "not recorded", transform=a.transAxes, ha="center", va="center", color="0.5")
    if best_epoch is not None:
        for a in (ax_loss, ax_score):
            a.axvline(best_epoch, color="0.3", ls=":", lw=1.2, label=f"best epoch ({best_epoch:g})")
    from matplotlib.ticker import MaxNLocator

    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    for a in (ax_loss, ax_score):
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize="small", loc="best")
    if title:
        fig.suptitle(title)
    save_figure(fig, save, dpi=dpi)
    return [ax_loss, ax_score]
