"""Leave-one-H&E-case-out protocol of the glomerulus map's recipe: train (per seed and held-out case), then score.

    python scripts/map_protocol.py train OUT --seeds 0 1 2 [--set mpp=1.0 input_size=256]
    python scripts/map_protocol.py score OUT            # OUT/rows.csv: one row per (seed, held-out case, test set)

``train`` writes OUT/seed<S>-<case>/best.pt with kgl.recipes.train_map_model (install=False), trained on the
multistain biopsies and the *other* H&E case; ``score`` evaluates every checkpoint found on the held-out case,
the PAS tiles of another site and the held-out multistain biopsies (kgl.recipes.score_map_model).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["train", "score"])
    p.add_argument("out", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", nargs="*", default=[], help="recipe overrides KEY=VALUE (JSON values)")
    a = p.parse_args()
    import kgl.recipes as r

    if a.step == "train":
        overrides = {k: _value(v) for k, v in (s.split("=", 1) for s in a.set)}
        for seed in a.seeds:
            for held in r.HE_CASES:
                out = a.out / f"seed{seed}-{held}"
                if (out / "best.pt").is_file():
                    continue
                other = [c for c in r.HE_CASES if c != held]
                r.train_map_model(out, install=False, seed=seed, he_cases=other, show_progress=False, **overrides)
    else:
        rows = r.score_map_protocol(a.out)
        print(r.summarise_map_protocol(rows).to_string())


if __name__ == "__main__":
    main()
