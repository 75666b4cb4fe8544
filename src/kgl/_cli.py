"""Command line: ``kgl classify`` and ``kgl demo``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kgl._settings import settings
from kgl.models import DEFAULT_MODEL

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

_DESCRIPTION = """\
kgl finds kidney glomeruli in Visium sections. For every spot it writes a glomerulus/other label,
a probability and a CNN embedding into the AnnData (obs/obsm), the same as kgl.tl.classify_spots.

  kgl classify <visium folder | data.h5ad | data.zarr> --out result.h5ad
  kgl classify IN1 IN2 ... --out-dir results/ [--workers 2]   # many samples, one task each
  kgl train                        # train kgl's default glomerulus model (kgl-glom-v2; minutes on 2 CPU cores)
  kgl evaluate-recipe --out runs/  # the evaluation protocol: seeds x held-out sets (multistain, PAS, H&E)
  kgl demo --out kgl-demo          # classify the PAS-tiles and H&E pseudo-Visium, report, plot
"""


#: kgl.tl.SELECT_RULES, spelled out: importing kgl.tl would cost the CLI's start-up ~1.7 s.
_SELECT_RULES = ("val_auroc", "val_loss")
_PRECISIONS = ("auto", "fp32", "bf16")
_PRECISION_HELP = "training autocast: auto = bf16 on CPUs with native bf16 (AMX, AVX512-BF16), CUDA AMP, else fp32"


def _add_model_args(p: argparse.ArgumentParser, default_model: str | None) -> None:
    p.add_argument(
        "--model",
        default=default_model,
        help="kgl checkpoint (.pt), registered model name, or torchvision backbone with ImageNet weights "
        "(e.g. resnet50, mobilenet_v2:IMAGENET1K_V1; untrained head). Default: %(default)s.",
    )
    p.add_argument("--patch-um", type=float, default=None, help="patch side in µm (default: the model's)")
    p.add_argument("--batch-size", type=int, default=64, help="patches per forward pass (default: %(default)s)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N (default: %(default)s)")
    p.add_argument("--key-added", default="glomerulus", help="obs/obsm/uns key for the results (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_classify_parser(sub: Any) -> None:
    """``kgl classify``: one sample (``--out``) or many (``--out-dir``, optionally on a dask cluster)."""
    c = sub.add_parser(
        "classify",
        help="call glomerulus spots in a Visium sample",
        description="Call every spot of a Visium sample glomerulus/other from its tissue image and write the "
        "annotated data (obs[KEY], obs[KEY_proba], obs[KEY_in_image], obsm[X_KEY], uns[KEY]).",
    )
    c.add_argument(
        "input",
        nargs="+",
        help="Space Ranger output folder (with spatial/), an .h5ad file or a SpatialData .zarr; several with "
        "--out-dir, or a sample sheet .csv (columns: input, optionally fullres_image)",
    )
    c.add_argument("--out", default=None, help="output .h5ad (or .zarr for SpatialData input) of a single input")
    c.add_argument(
        "--out-dir",
        default=None,
        help="folder for many inputs: <input stem>.h5ad (.zarr for SpatialData) each, written atomically",
    )
    c.add_argument("--workers", type=int, default=None, help="with --out-dir: run samples on a local dask cluster")
    c.add_argument("--scheduler", default=None, help="with --out-dir: address of a running dask.distributed scheduler")
    c.add_argument("--fullres-image", default=None, help="full-resolution tissue image (TIFF) for a Visium folder")
    c.add_argument("--library-id", default=None, help="sample to classify (default: all)")
    c.add_argument(
        "--table-name", default=None, help="SpatialData table to annotate, e.g. square_008um for Visium HD bins"
    )
    c.add_argument("--img-key", default=None, help="fullres, hires or lowres (default: highest resolution available)")
    c.add_argument("--plot", default=None, help="also write kgl.pl.spatial_glom to this PNG")
    c.add_argument(
        "--allow-upsampling",
        action="store_true",
        help="classify even when the image is more than 2x coarser than the model needs (by default an error)",
    )
    _add_model_args(c, None)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kgl", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    _add_classify_parser(sub)

    t = sub.add_parser(
        "train",
        help="train one of kgl's glomerulus models (its registered recipe) and install it in the model cache",
        description="Train the glomerulus model named by --name with its registered recipe (kgl.models.REGISTRY; "
        "kgl-glom-v2: the patch classifier, kgl-glom-map-v1: the dense glomerulus map; both on the multistain biopsy "
        "set split by biopsy plus the H&E biopsy cases), evaluate it on held-out "
        "biopsies and on the PAS tiles of another site, write the "
        "checkpoint, training curves and model card, and install it where classify_spots(model=NAME) finds it.",
    )
    t.add_argument("--out", default=None, help="working folder for checkpoints/curves/card (default: in the cache)")
    t.add_argument(
        "--name", default=DEFAULT_MODEL, help="registry name of the model, whose recipe is used (default: %(default)s)"
    )
    t.add_argument("--backbone", default=None, help="torchvision backbone (default: the recipe's, mobilenet_v2)")
    t.add_argument("--weights", default=None, help="weights enum member (default: the recipe's, IMAGENET1K_V1)")
    t.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: the recipe's, 6)")
    t.add_argument("--input-size", type=int, default=None, help="model input side in px (default: the recipe's)")
    t.add_argument("--patch-um", type=float, default=None, help="patch side in µm (default: the recipe's, 110)")
    t.add_argument("--batch-size", type=int, default=None, help="patches per step (default: the recipe's, 48)")
    t.add_argument(
        "--augment",
        default=None,
        help="one of kgl.tl.AUGMENTATIONS, e.g. hed+color, randstain+strong (default: the recipe's, hed+color)",
    )
    t.add_argument(
        "--he-repeat", type=int, default=None, help="H&E patches repeated N times in training (default: the recipe's)"
    )
    t.add_argument("--select", default=None, choices=_SELECT_RULES, help="epoch kept (default: the recipe's)")
    t.add_argument("--max-patches-per-split", type=int, default=None, help="subsample for a quick run")
    t.add_argument("--no-external", action="store_true", help="skip the PAS-tiles evaluation")
    t.add_argument("--no-install", action="store_true", help="do not copy the model into the cache")
    t.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: %(default)s)")
    t.add_argument("--precision", default="auto", choices=_PRECISIONS, help=_PRECISION_HELP)
    t.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default: %(default)s)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")

    e = sub.add_parser(
        "evaluate-recipe",
        help="train a recipe with several seeds and score it on every held-out set (the protocol)",
        description="Train the default recipe (with the overrides given) once per seed and score it on the held-out "
        "multistain biopsies (patches), the PAS tiles of another site (spots) and H&E leave-one-case-out (spots), "
        "as is, with AdaBN and with Macenko stain normalisation, with the validation / expected-F1 / prior-shift "
        "thresholds. Writes protocol.csv and "
        "summary.csv into --out and prints mean ± sd over seeds.",
    )
    e.add_argument("--out", required=True, help="working folder (runs, protocol.csv, summary.csv)")
    e.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: %(default)s)")
    e.add_argument(
        "--he-repeat",
        type=int,
        default=None,
        help="H&E training patches repeated N times (0: no H&E; default: the recipe's)",
    )
    for flag, typ, what in (
        ("--backbone", str, "torchvision backbone"),
        ("--weights", str, "weights enum member"),
        ("--epochs", int, "maximum epochs"),
        ("--input-size", int, "model input side in px"),
        ("--patch-um", float, "patch side in µm"),
        ("--batch-size", int, "patches per step"),
        ("--augment", str, "augmentation recipe (kgl.tl.AUGMENTATIONS)"),
        ("--select", str, "epoch kept: val_auroc or val_loss"),
    ):
        choices = _SELECT_RULES if flag == "--select" else None
        e.add_argument(flag, type=typ, default=None, choices=choices, help=f"{what} (default: the default recipe's)")
    e.add_argument("--max-patches-per-split", type=int, default=None, help="subsample for a quick run")
    e.add_argument("--no-adabn", action="store_true", help="do not score the AdaBN variant")
    e.add_argument("--no-stain-norm", action="store_true", help="do not score the Macenko stain-normalised variant")
    e.add_argument("--resume", action="store_true", help="continue the trainings of an interrupted run in --out")
    e.add_argument(
        "--allow-upsampling",
        action="store_true",
        help="score spot sets whose image has fewer px per µm than the model's input needs (interpolated)",
    )
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: %(default)s)")
    e.add_argument("--precision", default="auto", choices=_PRECISIONS, help=_PRECISION_HELP)

    d = sub.add_parser(
        "demo",
        help="train kgl's model if needed, classify the PAS-tiles and H&E pseudo-Visium, report and plot",
        description="Use kgl's trained glomerulus model (training it first with `kgl train` if it is not cached), "
        "build the semi-synthetic Visium from the PAS tiles (kgl.datasets.pas_tiles_visium, another site and stain "
        "than the training data), classify its spots, print spot-level metrics against the ground truth and write "
        "the plot and the annotated .h5ad; then the same report for the H&E biopsy pseudo-Visium "
        "(kgl.datasets.he_biopsy_visium), with the recipe's held-out H&E results when the model trained on it.",
    )
    d.add_argument("--out", default="kgl-demo", help="output folder (default: %(default)s)")
    _add_model_args(d, DEFAULT_MODEL)
    return parser


def _read_input(path: Path, fullres: str | None) -> Any:
    from kgl.recipes import read_sample

    try:
        return read_sample(path, fullres)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"kgl: error: {e}") from None


def _write(data: Any, out: Path) -> None:
    from kgl.recipes import write_sample

    try:
        write_sample(data, out)  # atomically, .zarr too
    except ValueError as e:
        raise SystemExit(f"kgl: error: {e}") from None


def _check_out(inp: Path, out: Path) -> None:
    """Fail before any work when the output cannot be written (kind, folder, permissions)."""
    from kgl._files import ensure_dir

    if out.resolve() == inp.resolve():
        raise SystemExit("kgl: error: --out must differ from the input (kgl never overwrites your data).")
    want = ".zarr" if inp.suffix == ".zarr" else ".h5ad"
    if out.suffix != want:
        raise SystemExit(
            f"kgl: error: --out must end in {want} for {'SpatialData' if want == '.zarr' else 'AnnData'} output."
        )
    if out.is_dir() and want == ".h5ad":
        raise SystemExit(f"kgl: error: --out {str(out)!r} is an existing folder; give a file name ending in .h5ad.")
    ensure_dir(out.parent, what=f"output {out.name!r}", create=False)


def _classify_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": args.model,
        "patch_um": args.patch_um,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "device": args.device,
        "key_added": args.key_added,
        "show_progress": not args.quiet,
    }


def _summary(adata: AnnData, key: str, seconds: float) -> str:
    n = int(adata.obs[key].notna().sum())
    calls = adata.obs[key].value_counts().to_dict()
    p = adata.uns[key]["params"]
    lines = [
        f"spots classified: {n} in {seconds:.1f} s ({n / seconds:.1f} spots/s, device {p['device']}, {p['precision']})",
        f"calls: {', '.join(f'{k}={v}' for k, v in calls.items())}",
        f"model: {p['model']} (weights {p['weights']}, head trained: {p['head_trained']}), "
        + (
            f"a glomerulus map ({p['arch']}) at {p['map_mpp']:g} µm/px; obs[{key + '_fraction'!r}]: each spot's share"
            if p.get("task") == "segment"
            else f"patch {p['patch_um']:g} µm -> {p['input_size']} px"
        ),
    ]
    return "\n".join(lines)


def _inputs(args: argparse.Namespace) -> tuple[list[str], list[str | None]]:
    """The inputs and their full-res images: the paths given, or a sample sheet's rows."""
    if len(args.input) == 1 and args.input[0].endswith(".csv"):
        import pandas as pd

        sheet = pd.read_csv(args.input[0])
        if "input" not in sheet:
            cols = list(sheet.columns)
            raise SystemExit(f"kgl: error: sample sheet {args.input[0]!r} has no 'input' column (it has {cols}).")
        if args.fullres_image is not None:
            raise SystemExit("kgl: error: with a sample sheet, give each input's image in its 'fullres_image' column.")
        here = Path(args.input[0]).parent  # the sheet's paths are relative to the sheet
        fullres = sheet["fullres_image"] if "fullres_image" in sheet else [None] * len(sheet)
        return [str(here / p) for p in sheet["input"]], [None if pd.isna(f) else str(here / f) for f in fullres]
    if args.fullres_image is not None and len(args.input) > 1:
        raise SystemExit("kgl: error: --fullres-image is for one input; for several, use a sample sheet .csv.")
    return list(args.input), [args.fullres_image] * len(args.input)


def _cmd_classify_many(args: argparse.Namespace, inputs: list[str], fullres: list[str | None]) -> int:
    """``kgl classify IN1 IN2 ... --out-dir DIR [--workers N | --scheduler ADDRESS]``: one row per sample."""
    import kgl

    if args.out is not None or args.plot:
        raise SystemExit("kgl: error: --out and --plot are for one input; --out-dir takes many.")
    if args.workers is not None and args.scheduler is not None:
        raise SystemExit("kgl: error: give --workers (a local cluster) or --scheduler (a running one), not both.")
    kwargs = {**_classify_kwargs(args), "library_id": args.library_id, "img_key": args.img_key,
              "allow_upsampling": args.allow_upsampling, "table_name": args.table_name}  # fmt: skip
    show = kwargs.pop("show_progress")
    t0 = time.perf_counter()
    if args.workers is None and args.scheduler is None:
        table = kgl.recipes.classify_files(inputs, args.out_dir, fullres_images=fullres, show_progress=show, **kwargs)
    else:
        from distributed import Client, LocalCluster

        if args.scheduler is not None:
            with Client(args.scheduler) as client:
                table = kgl.recipes.classify_files(inputs, args.out_dir, client=client, fullres_images=fullres,
                                                   show_progress=show, **kwargs)  # fmt: skip
        else:
            with LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None) as cluster, \
                    Client(cluster) as client:  # fmt: skip
                table = kgl.recipes.classify_files(inputs, args.out_dir, client=client, fullres_images=fullres,
                                                   show_progress=show, **kwargs)  # fmt: skip
    for _, r in table.iterrows():
        what = f"{r['n_glomerulus']} glomerulus / {r['n_spots']} spots" if r["status"] == "ok" else r["error"]
        print(f"{r['status']:6} {r['input']} -> {r['output'] if r['status'] == 'ok' else '-'}: {what} "
              f"({r['seconds']:.1f} s, {r['worker']})")  # fmt: skip
    failed = table[table["status"] != "ok"]
    print(
        f"{len(table) - len(failed)} of {len(table)} samples written to {args.out_dir} in "
        f"{time.perf_counter() - t0:.1f} s" + (f"; failed: {', '.join(failed['input'])}" if len(failed) else "")
    )
    return 1 if len(failed) else 0


def _cmd_classify(args: argparse.Namespace) -> int:
    import kgl

    inputs, fullres = _inputs(args)
    if args.out_dir is not None:
        return _cmd_classify_many(args, inputs, fullres)
    if args.out is None or len(inputs) != 1:
        raise SystemExit("kgl: error: give --out for one input, or --out-dir for several.")
    if args.workers is not None or args.scheduler is not None:
        raise SystemExit("kgl: error: --workers / --scheduler run many inputs: use --out-dir.")
    args.input, args.fullres_image = inputs[0], fullres[0]
    inp, out = Path(args.input), Path(args.out)
    _check_out(inp, out)
    data = _read_input(inp, args.fullres_image)
    t0 = time.perf_counter()
    kgl.tl.classify_spots(
        data,
        library_id=args.library_id,
        img_key=args.img_key,
        allow_upsampling=args.allow_upsampling,
        table_name=args.table_name,
        **_classify_kwargs(args),
    )
    dt = time.perf_counter() - t0
    _write(data, out)
    from kgl._spatialdata import annotated_table

    print(_summary(annotated_table(data, args.table_name), args.key_added, dt))
    if args.plot:
        kgl.pl.spatial_glom(data, key=args.key_added, save=args.plot)
        print(f"plot: {args.plot}")
    print(f"written: {out}")
    return 0


def _print_metrics(metrics: dict[str, dict[str, Any]]) -> None:
    keys = ["n", "roc_auc", "pr_auc", "f1", "precision", "recall", "accuracy", "ece"]
    order = ("val", "test", "pas")  # validation, held-out biopsies, other site
    names = sorted(metrics, key=lambda k: (next((i for i, o in enumerate(order) if k.startswith(o)), len(order)), k))
    width = max(len(k) for k in metrics) + 2
    print(f"{'':{width}}" + "".join(f"{k:>10}" for k in keys))
    for split in names:
        m = metrics[split]
        cells = "".join(f"{m.get(k, float('nan')):>10.3f}" if k != "n" else f"{int(m.get(k, 0)):>10d}" for k in keys)
        print(f"{split:{width}}{cells}")


def _print_protocol(proto: dict[str, Any]) -> None:
    """The recipe's held-out results over seeds (model config ``protocol``), as mean ± sd."""
    results = proto.get("results") or {}
    if not results:
        return
    seeds = proto.get("seeds") or []
    print(f"held out, the recipe over {len(seeds)} seeds (docs/training.md; {proto.get('machine', '')}):")
    width = max(len(k) for k in results) + 2
    print(f"{'':{width}}" + "".join(f"{k:>18}" for k in ("roc_auc", "f1", "ece")))
    for name, r in results.items():
        cells = "".join(
            f"{r[k][0]:.3f} ± {r[k][1]:.3f}".rjust(18) if k in r else f"{'–':>18}" for k in ("roc_auc", "f1", "ece")
        )
        print(f"{name:{width}}{cells}")


def _cmd_train(args: argparse.Namespace) -> int:
    import kgl

    overrides = {
        k: v
        for k, v in {
            "backbone": args.backbone,
            "weights": args.weights,
            "epochs": args.epochs,
            "input_size": args.input_size,
            "patch_um": args.patch_um,
            "batch_size": args.batch_size,
            "augment": args.augment,
            "he_repeat": args.he_repeat,
            "select": args.select,
        }.items()
        if v is not None
    }
    t0 = time.perf_counter()
    path = kgl.recipes.train_model(  # the map's recipe for a map model (kgl-glom-map-v1), else the patch recipe
        args.name,
        args.out,
        install=not args.no_install,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        num_workers=args.num_workers,
        max_patches_per_split=args.max_patches_per_split,
        external=not args.no_external,
        show_progress=not args.quiet,
        **overrides,
    )
    model = kgl.models.load_checkpoint(path)
    cfg = model.config
    spec = model.spec
    what = (
        f"{spec.arch} on {spec.backbone}, a map at {spec.mpp:g} µm/px"
        if spec.task == "segment"
        else f"{cfg['backbone']}, {cfg['input_size']} px, {cfg['patch_um']:g} µm"
    )
    print(
        f"trained {cfg['name']} ({what}) in "
        f"{time.perf_counter() - t0:.0f} s; best epoch {cfg['training']['best_epoch']} of "
        f"{cfg['training']['epochs_run']}; threshold {cfg['threshold']:.3f}, "
        f"calibration T={cfg['temperature']:.2f} b={cfg.get('logit_bias', 0.0):+.2f}"
    )
    _print_metrics(cfg["metrics"])
    print(f"model: {path}")
    return 0


def _cmd_evaluate_recipe(args: argparse.Namespace) -> int:
    import kgl
    from kgl._files import atomic_path, ensure_dir

    out = ensure_dir(args.out, what="protocol outputs")
    names = ("backbone", "weights", "epochs", "input_size", "patch_um", "batch_size", "augment", "select")
    names += ("he_repeat",)
    recipe = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    t0 = time.perf_counter()
    rows = kgl.recipes.evaluate_recipe(
        recipe,
        seeds=args.seeds,
        out_dir=out,
        max_patches_per_split=args.max_patches_per_split,
        adabn=not args.no_adabn,
        stain_norm=not args.no_stain_norm,
        resume=args.resume,
        allow_upsampling=args.allow_upsampling,
        device=args.device,
        precision=args.precision,
    )
    summary = kgl.recipes.summarise_protocol(rows)
    with atomic_path(out / "summary.csv") as f:
        summary.to_csv(f, index=False)
    print(f"recipe: {rows.attrs['recipe']}")
    print(f"seeds: {list(args.seeds)}; {time.perf_counter() - t0:.0f} s in all")
    cols = ["roc_auc", "f1", "precision", "recall", "ece"]
    print(f"{'set':<16}{'tta':<9}{'threshold':<13}" + "".join(f"{c:>16}" for c in cols))
    for _, r in summary.iterrows():
        cells = "".join(f"{r[c + '_mean']:.3f} ± {r[c + '_std']:.3f}".rjust(16) for c in cols)
        print(f"{r['set']:<16}{r['tta']:<9}{r['threshold_rule']:<13}{cells}")
    print(f"rows: {out / 'protocol.csv'}; summary: {out / 'summary.csv'}")
    return 0


def _print_fraction_error(adata: Any, key: str) -> None:
    """A map model's fraction error against the true coverage, on the spots that touch a glomerulus."""
    if f"{key}_fraction" not in adata.obs or "glomerulus_coverage" not in adata.obs:
        return
    cov = adata.obs["glomerulus_coverage"].to_numpy(dtype=float)
    frac = adata.obs[f"{key}_fraction"].to_numpy(dtype=float)
    touch = cov > 0
    print(
        f"glomerulus fraction of each 55-µm spot (the map's mean over the disk): mean absolute error "
        f"{abs(frac[touch] - cov[touch]).mean():.3f} on the {int(touch.sum())} spots that touch a glomerulus"
    )


def _map_report(adata: Any, args: argparse.Namespace, out: Path) -> None:
    """The map and glomerulus polygons of a sample: counts, QuPath GeoJSON and a plot."""
    import kgl

    kgl.tl.glomerulus_map(adata, args.model, key_added=args.key_added, device=args.device, show_progress=False)
    gloms = kgl.tl.glomeruli(adata, key=args.key_added)
    truth = len(adata.uns["pseudo_visium"]["glomeruli_wkt"]) if "pseudo_visium" in adata.uns else None
    print(
        f"glomeruli outlined by the map: {len(gloms)}"
        + (f" (annotated: {truth})" if truth is not None else "")
        + (f", median diameter {gloms['diameter_um'].median():.0f} µm" if len(gloms) else "")
    )
    geojson = kgl.io.write_geojson(gloms, out / "he_glomeruli.geojson")
    png = out / "he_map.png"
    kgl.pl.spatial_glom(adata, key=args.key_added, color=[args.key_added, f"{args.key_added}_fraction"],
                        show_map=True, glomeruli=gloms, size=0.8, wspace=0.35, save=png)  # fmt: skip
    print(f"map plot: {png}; polygons for QuPath: {geojson}")


def _cmd_demo(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import kgl

    out = Path(args.out)
    from kgl._files import ensure_dir

    ensure_dir(out, what="demo outputs")
    if args.model in kgl.models.REGISTRY:
        try:
            kgl.models.fetch_model(args.model)
        except FileNotFoundError as e:
            why = "is cached from an older recipe" if "older recipe" in str(e) else "is not cached"
            print(f"model {args.model!r} {why}: training it first (kgl train --name {args.model})")
            kgl.recipes.train_model(args.model, show_progress=not args.quiet)
    t0 = time.perf_counter()
    adata = kgl.datasets.pas_tiles_visium()
    print(f"pseudo-Visium from the PAS tiles: {adata.n_obs} spots ({time.perf_counter() - t0:.1f} s)")
    t0 = time.perf_counter()
    kgl.tl.classify_spots(adata, **_classify_kwargs(args))
    dt = time.perf_counter() - t0
    print(_summary(adata, args.key_added, dt))
    m = kgl.tl.evaluate_spots(adata, key=args.key_added)
    print(
        f"ground truth: {m['n_pos']} glomerulus spots (coverage >= 0.5), {m['n_neg']} negative (coverage 0), "
        f"{m.get('n_ambiguous', 0)} ambiguous spots left out"
    )
    print("spot-level vs ground truth (another site and stain than the training data):")
    _print_metrics({"pas_tiles_visium": m})
    _print_fraction_error(adata, args.key_added)
    if not adata.uns[args.key_added]["params"]["head_trained"]:
        print(
            "note: the model's glomerulus head is untrained (ImageNet backbone only): these calls are not meaningful."
        )
    try:  # H&E: the stain of Visium sections
        he = kgl.datasets.he_biopsy_visium()
    except FileNotFoundError as e:
        print(f"H&E biopsies not available ({str(e).splitlines()[0]}): skipping the H&E report")
    else:
        kgl.tl.classify_spots(he, **_classify_kwargs(args))
        mh = kgl.tl.evaluate_spots(he, key=args.key_added)
        trained_on = (he.uns[args.key_added]["params"].get("training_he_cases")) or []
        print(f"H&E pseudo-Visium ({he.n_obs} spots of {he.obs['source_image'].nunique()} screenshots, 2 cases):")
        _print_metrics({"he_biopsy_visium": mh})
        _print_fraction_error(he, args.key_added)
        if f"{args.key_added}_fraction" in he.obs:  # a map model: the map and the glomeruli it outlines
            _map_report(he, args, out)
        if trained_on:
            print(
                f"note: this model was trained on H&E cases {trained_on}: these numbers are not a held-out test; "
                "see the recipe's leave-one-case-out protocol below (docs/training.md)."
            )
            _print_protocol(kgl.models.resolve_model(args.model).config.get("protocol") or {})
    png = out / "spatial_glom.png"
    kgl.pl.spatial_glom(
        adata, key=args.key_added, color=[args.key_added, f"{args.key_added}_proba", "glomerulus_coverage"], save=png
    )
    h5 = out / "pas_tiles_visium.h5ad"
    _write(adata, h5)
    print(f"plot: {png}\nannotated data: {h5}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kgl`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        from kgl import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    try:
        commands = {
            "classify": _cmd_classify,
            "train": _cmd_train,
            "evaluate-recipe": _cmd_evaluate_recipe,
            "demo": _cmd_demo,
        }
        quiet = getattr(args, "quiet", False)
        progress, settings.show_progress = settings.show_progress, settings.show_progress and not quiet
        try:
            return commands[args.command](args)
        finally:
            settings.show_progress = progress
    except (ValueError, KeyError, OSError, RuntimeError) as e:  # OSError: missing/unwritable paths, network
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"kgl: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
