"""One markdown row per recipe from `kgl evaluate-recipe` output folders (the finalist tables of docs/training.md).

    python scripts/protocol_table.py "224 px=RUN_A,RUN_B" "112 px=RUN_C"

Each argument is ``label=folder[,folder...]``: the folders' protocol.csv rows are pooled (seeds run in
separate invocations). Columns are mean ± sd over seeds, with the as-is scores (``tta="plain"``) at the
validation threshold; H&E leave-one-case-out is averaged over its two held-out cases within each seed
first, and so is every set scored once per fold (PAS, multistain), as kgl.recipes.summarise_protocol does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def _ms(x: pd.Series) -> str:
    return f"{x.mean():.3f} ± {x.std():.3f}" if len(x) > 1 else f"{x.mean():.3f}"


def row(label: str, folders: list[str]) -> str:
    """The markdown row of one recipe: its runs' protocol.csv pooled, mean ± sd over seeds per column."""
    rows = pd.concat([pd.read_csv(Path(f) / "protocol.csv") for f in folders], ignore_index=True)
    rows = rows[(rows["tta"] == "plain") & (rows["threshold_rule"] == "validation")]
    if rows.duplicated(["seed", "fold", "set", "case"]).any():
        raise ValueError(f"{label}: a (seed, fold, set, case) appears twice in {folders}")
    per_seed = rows.groupby(["set", "seed"])[["roc_auc", "f1", "ece"]].mean()
    cases = rows[rows["set"] == "he-spots"].groupby(["case", "seed"])["f1"].mean()

    def col(s: str, m: str) -> pd.Series:
        return per_seed.loc[s, m]

    both = (per_seed.loc["pas-spots"] + per_seed.loc["he-spots"]) / 2
    seconds = rows.drop_duplicates(["seed", "fold"])["seconds"]
    seeds = ", ".join(str(s) for s in sorted(rows["seed"].unique()))
    cells = [
        label,
        seeds,
        f"{_ms(col('multistain-test', 'roc_auc'))} / {_ms(col('multistain-test', 'f1'))}",
        f"{_ms(col('pas-spots', 'roc_auc'))} / {_ms(col('pas-spots', 'f1'))}",
        f"{_ms(col('he-spots', 'roc_auc'))} / {_ms(col('he-spots', 'f1'))}",
        " / ".join(f"{cases.loc[c].mean():.3f}" for c in sorted(cases.index.get_level_values(0).unique())),
        _ms(col("he-spots", "ece")),
        f"{_ms(both['roc_auc'])} / {_ms(both['f1'])}",
        f"{seconds.mean():.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str]) -> None:
    """Print the table header and one row per ``label=folder[,folder...]`` argument."""
    print(
        "| recipe | seeds | multistain ROC-AUC / F1 | PAS spots ROC-AUC / F1 | H&E LOCO ROC-AUC / F1 | C002 / C004 F1 "
        "| H&E ECE | PAS+H&E mean ROC-AUC / F1 | train s per fold |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for arg in argv:
        label, _, folders = arg.partition("=")
        print(row(label, folders.split(",")))


if __name__ == "__main__":
    main(sys.argv[1:])
