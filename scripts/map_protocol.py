"""Leave-one-H&E-case-out protocol of the glomerulus map's recipe: train (per seed and held-out case), then score.

    python scripts/map_protocol.py train OUT --seeds 0 1 2 [--set mpp=1.0 input_size=256]
    python scripts/map_protocol.py score OUT            # OUT/rows.csv: one row per (seed, held-out case, test set)
    python scripts/map_protocol.py table OUT [OUT ...]  # docs/training.md rows from scored folders

``train`` writes OUT/seed<S>-<case>/best.pt with kgl.recipes.train_map_model (install=False), trained on the
multistain biopsies and the *other* H&E case; ``score`` evaluates every checkpoint found on the held-out case,
the PAS tiles of another site and the held-out multistain biopsies (kgl.recipes.score_map_model).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


def _value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def main() -> None:
    """Command line: train, score or tabulate."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["train", "score", "table"])
    p.add_argument("out", type=Path, nargs="+")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", nargs="*", default=[], help="recipe overrides KEY=VALUE (JSON values)")
    a = p.parse_args()
    import kgl.recipes as r

    if a.step == "table":
        for out in a.out:
            print(_markdown_row(out.name, pd.read_csv(out / "rows.csv")))
        return
    (root,) = a.out
    if a.step == "train":
        overrides = {k: _value(v) for k, v in (s.split("=", 1) for s in a.set)}
        for seed in a.seeds:
            for held in r.HE_CASES:
                out = root / f"seed{seed}-{held}"
                if (out / "MODEL_CARD.md").is_file():  # written last: the fold is complete
                    continue
                other = [c for c in r.HE_CASES if c != held]
                r.train_map_model(out, install=False, seed=seed, he_cases=other, show_progress=False, **overrides)
    else:
        rows = r.score_map_protocol(root)
        print(r.summarise_map_protocol(rows).to_string())


def _cell(x, col: str) -> str:
    """``mean ± sd`` over seeds of a column (H&E: the two held-out cases averaged within each seed first)."""
    per_seed = x.groupby("seed")[col].mean()
    return f"{per_seed.mean():.3f} ± {per_seed.std(ddof=1):.3f}" if len(per_seed) > 1 else f"{per_seed.mean():.3f}"


def _markdown_row(name: str, rows) -> str:
    """One table row: µm/px, seeds, H&E / PAS / multistain spot ROC-AUC / F1, PAS+H&E mean, fraction MAE, objects."""
    he, pas, ms = (rows[rows["set"] == s] for s in ("he-spots", "pas-spots", "multistain-spots"))
    both = pd.concat([he.groupby("seed")["f1"].mean(), pas.groupby("seed")["f1"].mean()], axis=1).mean(axis=1)
    both_auc = pd.concat([he.groupby("seed")["roc_auc"].mean(), pas.groupby("seed")["roc_auc"].mean()], axis=1)
    both_auc = both_auc.mean(axis=1)

    def sd(v: pd.Series) -> str:
        return f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else ""

    cases = " / ".join(f"{he[he['fold'] == c]['f1'].mean():.3f}" for c in sorted(he["fold"].unique()))
    cells = [
        f"{rows['mpp'].iloc[0]:g}",
        ", ".join(str(s) for s in sorted(rows["seed"].unique())),
        f"{_cell(he, 'roc_auc')} / {_cell(he, 'f1')}",
        cases,
        f"{_cell(he, 'precision')} / {_cell(he, 'recall')}",
        f"{_cell(pas, 'roc_auc')} / {_cell(pas, 'f1')}",
        f"{both_auc.mean():.3f}{sd(both_auc)} / {both.mean():.3f}{sd(both)}",
        f"{_cell(ms, 'roc_auc')} / {_cell(ms, 'f1')}",
        f"{_cell(he, 'ece')} / {_cell(pas, 'ece')}",
        f"{_cell(he, 'fraction_mae')} / {_cell(pas, 'fraction_mae')}",
        f"{_cell(he, 'object_f1')} / {_cell(pas, 'object_f1')}",
        f"{_cell(he, 'dice')} / {_cell(pas, 'dice')}",
        f"{rows['train_s'].mean():.0f}",
    ]
    return f"| {name} | " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
