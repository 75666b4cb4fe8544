"""Slide tables of the annotated glomerulus image sets, the input of :func:`kgl.im.sample_patches`.

A *slide table* has one row per image: ``slide`` (name), ``path`` (absolute file path),
``group`` (the unit that must not be split across train/val/test: biopsy, patient),
``stain``, ``polygons`` (shapely glomerulus polygons in the image's pixel frame, pixel centres
at integers), ``n_glomeruli``, ``mpp`` (µm per pixel), ``mpp_source`` and the image's
``width``/``height`` in pixels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kgl._logging import logger
from kgl.datasets._fetch import data_dir, image_facts

__all__ = ["he_biopsy_slides", "multistain_slides", "pas_tiles_slides"]

_STAINS = {"masson": "Masson", "pasm": "PASM", "pas": "PAS"}
SLIDE_COLUMNS = ["slide", "path", "group", "stain", "polygons", "n_glomeruli", "mpp", "mpp_source", "width", "height"]


def _stain(stem: str) -> str | None:
    for field in stem.split("-")[1:]:
        s = _STAINS.get(field.lower())
        if s is not None:
            return s
    return None


def _equivalent_diameter(poly: Any) -> float:
    return 2.0 * math.sqrt(float(poly.area) / math.pi)


def _touches_border(poly: Any, width: int, height: int, margin: float = 2.0) -> bool:
    x0, y0, x1, y1 = poly.bounds
    return x0 < margin - 0.5 or y0 < margin - 0.5 or x1 > width - 0.5 - margin or y1 > height - 0.5 - margin


def _estimate_mpp(polys: list[Any], width: int, height: int, target_um: float) -> float:
    """µm/px from the median equivalent-circle diameter of whole (not border-cut) glomeruli."""
    whole = [p for p in polys if not _touches_border(p, width, height)]
    d = np.median([_equivalent_diameter(p) for p in (whole or polys)])
    return float(target_um / d)


def multistain_slides(*, target_glom_diameter_um: float = 200.0) -> pd.DataFrame:
    """Slide table of ``glomeruli-multistain``: 105 snapshots of human renal biopsies, three stains.

    The images (``images/<name>``) and their COCO polygons (``annotations.json``; every category —
    ``gl``, ``gn``, ``gm``, ``gs`` — is a glomerulus) are found locally
    (:meth:`kgl.settings.find_data`) or downloaded (:func:`kgl.datasets.fetch_dataset`).

    The pixel size of these snapshots is not published and varies (glomerulus bounding boxes
    span ~200–840 px), but kgl's patches are defined in µm, as Visium spots are: the classifier
    will see a fixed number of µm per patch on a Visium image whose µm/px is known. So the scale
    of each image is *estimated*: µm/px = ``target_glom_diameter_um`` / the median
    equivalent-circle diameter (``2·sqrt(area/π)``) of that image's glomeruli. Glomeruli cut by
    the image border are left out of the median when the image has uncut ones. Images without
    glomeruli get the median µm/px of their biopsy's other images (else of all images). A human
    glomerulus is ~150–250 µm across, so the estimate is off by up to ~±25 % per image (and it
    equalises glomerulus size, which is real biology); scale jitter during training
    (:func:`kgl.im.read_patch` ``scale=``) covers that error.

    Parameters
    ----------
    target_glom_diameter_um
        Assumed equivalent-circle diameter of a glomerulus in µm.

    Returns
    -------
    :class:`pandas.DataFrame`, one row per image, with columns ``slide`` (file stem), ``path``
    (absolute), ``group`` (biopsy id: the first ``-``-separated field of the file name),
    ``stain`` (``Masson``, ``PASM`` or ``PAS``), ``polygons`` (list of shapely polygons, pixel
    frame), ``n_glomeruli``, ``mpp`` (estimated µm/px), ``mpp_source`` (``"estimated"``),
    ``width`` and ``height`` (px). ``attrs["target_glom_diameter_um"]`` records the assumption.

    """
    from kgl.io import read_coco

    if not (np.isfinite(target_glom_diameter_um) and target_glom_diameter_um > 0):
        raise ValueError(f"target_glom_diameter_um must be a positive number, got {target_glom_diameter_um!r}.")
    root = data_dir("glomeruli-multistain")
    ann_path = root / "annotations.json"
    image_dir = root / "images"
    coco = json.loads(ann_path.read_text(encoding="utf-8"))
    anns = read_coco(coco, image_dir=image_dir)
    by_image: dict[str, list[Any]] = {}
    for geom, image in zip(anns["geometry"], anns["image"], strict=True):
        by_image.setdefault(image, []).append(geom)  # one glomerulus per annotation

    rows = []
    for im in sorted(coco["images"], key=lambda im: Path(str(im["file_name"]).replace("\\", "/")).name):
        name = Path(str(im["file_name"]).replace("\\", "/")).name
        stem = Path(name).stem
        polys = by_image.get(name, [])
        width, height = int(im["width"]), int(im["height"])
        rows.append(
            {
                "slide": stem,
                "path": str((image_dir / name).resolve()),
                "group": stem.split("-")[0],
                "stain": _stain(stem),
                "polygons": polys,
                "n_glomeruli": len(polys),
                "mpp": _estimate_mpp(polys, width, height, target_glom_diameter_um) if polys else np.nan,
                "mpp_source": "estimated",
                "width": width,
                "height": height,
            }
        )
    df = pd.DataFrame(rows, columns=SLIDE_COLUMNS)
    missing = df["mpp"].isna()
    if missing.any():
        overall = float(df["mpp"].median())
        by_group = df.groupby("group")["mpp"].median()
        df.loc[missing, "mpp"] = [
            float(by_group[g]) if np.isfinite(by_group[g]) else overall for g in df.loc[missing, "group"]
        ]
        logger.info(
            "multistain_slides: %d image(s) without glomeruli got their biopsy's median µm/px.", int(missing.sum())
        )
    if df["stain"].isna().any():
        logger.warning("multistain_slides: no stain in the names of %s.", list(df.loc[df["stain"].isna(), "slide"]))
    df.attrs["target_glom_diameter_um"] = float(target_glom_diameter_um)
    return df


def pas_tiles_slides() -> pd.DataFrame:
    """Slide table of ``glomeruli-pas-tiles``: 24 PAS tiles at 0.5 µm/px, an independent test set.

    Tiles ``images/<id>.png`` and binary masks ``masks/<id>.png`` (glomerulus > 0, converted with
    :func:`kgl.io.read_mask`) are found locally (:meth:`kgl.settings.find_data`) or downloaded
    (:func:`kgl.datasets.fetch_dataset`). Each tile is its own
    ``group`` (the tiles' slides are not published).

    Returns
    -------
    :class:`pandas.DataFrame` with the columns of :func:`multistain_slides`; ``stain`` is ``PAS``,
    ``mpp`` 0.5 and ``mpp_source`` ``"given"``.

    """
    from PIL import Image

    from kgl.io import read_mask

    root = data_dir("glomeruli-pas-tiles")
    imgs = sorted((root / "images").glob("*.png"))
    if not imgs:
        raise FileNotFoundError(f"No PNG tiles in {str(root / 'images')!r}.")
    rows = []
    for p in imgs:
        mask = root / "masks" / p.name
        if not mask.is_file():
            raise FileNotFoundError(f"Tile {p.name} has no mask {str(mask)!r}.")
        polys = read_mask(mask)
        with Image.open(p) as im:
            width, height = im.size
        rows.append(
            {
                "slide": p.stem,
                "path": str(p.resolve()),
                "group": p.stem,
                "stain": "PAS",
                "polygons": polys,
                "n_glomeruli": len(polys),
                "mpp": 0.5,
                "mpp_source": "given",
                "width": int(width),
                "height": int(height),
            }
        )
    return pd.DataFrame(rows, columns=SLIDE_COLUMNS)


def he_biopsy_slides() -> pd.DataFrame:
    """Slide table of ``glomeruli-he-biopsy``: 9 **H&E** renal biopsy screenshots of 2 cases.

    The stain of Visium sections. Images ``images/<name>.png`` (1514 × 951 px; the viewer's
    overlays painted white), QuPath GeoJSON ``annotations/<name>.geojson`` (polygons classified
    ``glomerulus``, read with :func:`kgl.io.read_geojson`) are found locally or downloaded
    (:func:`kgl.datasets.fetch_dataset`); the µm/px of each screenshot (read from its scale bar,
    0.52–1.08) is kgl's own reading and ships in the package (:func:`kgl.datasets.image_facts`),
    checked against a local copy's ``mpp.json`` where there is one. Some images show the same glomeruli at two
    magnifications, so ``group`` is the **case** (``C002``, ``C004``: the file name's first
    ``_``-separated field): split by it, never by image.

    Returns
    -------
    :class:`pandas.DataFrame` with the columns of :func:`multistain_slides`; ``stain`` is ``H&E``
    and ``mpp_source`` ``"scale bar"``.

    """
    from kgl.io import read_geojson

    root = data_dir("glomeruli-he-biopsy")
    meta = image_facts("glomeruli-he-biopsy")
    _check_local_readings(root / "mpp.json", meta)
    rows = []
    for stem in sorted(meta):
        path = root / "images" / f"{stem}.png"
        ann = root / "annotations" / f"{stem}.geojson"
        if not path.is_file() or not ann.is_file():
            raise FileNotFoundError(f"{root}: {stem} lacks its image or annotation ({path.name}, {ann.name}).")
        polys = list(read_geojson(ann, classes="glomerulus")["geometry"])
        rows.append(
            {
                "slide": stem,
                "path": str(path.resolve()),
                "group": stem.split("_")[0],
                "stain": "H&E",
                "polygons": polys,
                "n_glomeruli": len(polys),
                "mpp": float(meta[stem]["mpp"]),
                "mpp_source": "scale bar",
                "width": int(meta[stem]["width"]),
                "height": int(meta[stem]["height"]),
            }
        )
    return pd.DataFrame(rows, columns=SLIDE_COLUMNS)


def _check_local_readings(path: Path, meta: dict[str, dict]) -> None:
    """A local copy's ``mpp.json`` must say what kgl's packaged readings say (another copy would be other data)."""
    if not path.is_file():
        return
    fix = "Point KGL_DATA_DIR at an unmodified copy of the data folder, or remove it to download the published set."
    local = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(local, dict) or sorted(local) != sorted(meta):
        listed = sorted(local) if isinstance(local, dict) else type(local).__name__
        raise ValueError(
            f"{path} lists images {listed}, kgl's readings of glomeruli-he-biopsy list {sorted(meta)}: "
            f"this folder is not the published set. {fix}"
        )
    for stem, facts in meta.items():
        entry = local[stem]
        if not isinstance(entry, dict) or not set(facts) <= set(entry):
            raise ValueError(f"{path}: {stem} should have {sorted(facts)}, it has {entry!r}. {fix}")
        for key in ("mpp", "width", "height"):
            if not np.isclose(float(entry[key]), facts[key], rtol=1e-4, atol=0):
                raise ValueError(f"{path}: {stem} has {key} {entry[key]}, kgl's reading is {facts[key]}. {fix}")
        if [list(map(int, r)) for r in entry["painted_white"]] != facts["painted_white"]:
            raise ValueError(
                f"{path}: {stem}'s painted overlays {entry['painted_white']} are not kgl's "
                f"{facts['painted_white']}. {fix}"
            )
