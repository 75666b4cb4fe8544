"""Where the public training/test sets come from: a local copy, else a sha256-checked download.

Each data set is looked for locally first (:meth:`kgl.settings.find_data`: ``$KGL_DATA_DIR`` or a
``shared/data`` folder near the working directory). When it is not there, its files are fetched
with :mod:`pooch` into ``<settings.cachedir>/data/<name>`` from the public GitHub repositories at
the commits pinned in ``_sources.tsv`` (one row per file: repository, commit, path, sha256), each
checked against its sha256, and reused from then on.

``$KGL_DATA_URL`` (:attr:`kgl.settings.data_url`) names a mirror laid out like the data folder
(``<url>/<name>/<file>``), checked against the sha256 of that layout; the tests serve the shared
data folder that way on 127.0.0.1.

What upstream does not publish but kgl needs is kgl's own reading of the public images, a few
hundred bytes that ship in the package (``_image_facts.tsv``, read by :func:`image_facts`): the
µm/px of each H&E screenshot, read from its scale bar, its size, and the viewer's overlays (scale
bar, overview inset, cursor box) to paint white, as PIL-inclusive ``x0,y0,x1,y1`` rectangles.
"""

from __future__ import annotations

import csv
import os
from functools import cache
from importlib import resources
from pathlib import Path

from kgl._logging import logger
from kgl._settings import settings

__all__ = ["DATASETS", "data_dir", "fetch_dataset", "image_facts", "source_url"]

#: The data sets kgl can fetch, with what each is.
DATASETS = {
    "glomeruli-multistain": "105 Masson/PASM/PAS renal biopsy snapshots, COCO glomerulus polygons (Jiang et al. 2021)",
    "glomeruli-pas-tiles": "24 PAS 20x tiles with binary glomerulus masks (AIDPATH, CC BY 4.0)",
    "glomeruli-he-biopsy": "9 H&E renal biopsy screenshots of 2 cases with QuPath GeoJSON glomeruli",
    "visium-mouse-kidney": "10x Visium V1_Mouse_Kidney spatial/ folder (CC BY-SA 4.0)",
}
_GITHUB_RAW = "https://raw.githubusercontent.com"


def _packaged_rows(resource: str) -> list[dict[str, str]]:
    """The rows of one of kgl's packaged tables (a TSV in :mod:`kgl.datasets`)."""
    text = resources.files("kgl.datasets").joinpath(resource).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines(), delimiter="\t"))


@cache
def _manifest() -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for row in _packaged_rows("_sources.tsv"):
        out.setdefault(row["dataset"], []).append(row)
    return out


@cache
def _image_facts() -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for row in _packaged_rows("_image_facts.tsv"):
        out.setdefault(row["dataset"], {})[row["image"]] = {
            "mpp": float(row["mpp"]),
            "width": int(row["width"]),
            "height": int(row["height"]),
            "painted_white": [[int(v) for v in r.split(",")] for r in row["painted_white"].split()],
        }
    return out


def image_facts(name: str) -> dict[str, dict]:
    """The readings kgl made of a data set's images that upstream does not publish, by image name.

    Each value has ``mpp`` (µm/px read from the screenshot's scale bar), ``width``, ``height`` and
    ``painted_white`` (the viewer's overlays as PIL-inclusive ``[x0, y0, x1, y1]`` rectangles). They
    ship in the package, so a download needs nothing else.

    Raises
    ------
    KeyError
        kgl holds no such readings for ``name``; the message lists the sets it holds them for.

    """
    facts = _image_facts()
    if name not in facts:
        raise KeyError(f"kgl holds no image readings for data set {name!r}; it holds them for: {sorted(facts)}.")
    return {k: {**v, "painted_white": [list(r) for r in v["painted_white"]]} for k, v in facts[name].items()}


def _rows(name: str) -> list[dict[str, str]]:
    man = _manifest()
    if name not in man:
        raise KeyError(f"Unknown data set {name!r}. kgl can fetch: {sorted(man)}.")
    return man[name]


def source_url(row: dict[str, str]) -> str:
    """The pinned public URL of one manifest row: ``<host>/<repository>/<commit>/<source_path>``.

    The host is :attr:`kgl.settings.source_url` (``$KGL_SOURCE_URL``), GitHub's raw-content host by default.
    """
    host = (settings.source_url or _GITHUB_RAW).rstrip("/")
    return f"{host}/{row['repository']}/{row['commit']}/{row['source_path']}"


def _paint_white(src: Path, dest: Path, rects: list[list[int]]) -> None:
    """Copy an image with the given PIL-inclusive rectangles painted white (the viewer's overlays)."""
    import numpy as np
    from PIL import Image

    from kgl._files import atomic_path

    with Image.open(src) as im:
        arr = np.array(im.convert("RGB"))
    for x0, y0, x1, y1 in rects:
        arr[y0 : y1 + 1, x0 : x1 + 1] = 255
    with atomic_path(dest) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def _retrieve(url: str, sha256: str, dest: Path, what: str) -> None:
    from kgl._files import pooch_download

    pooch_download(
        url, sha256, dest, what=what, fallback="point KGL_DATA_DIR at a local copy of the data folder", quiet=True
    )


def _cached(path: Path, sha256: str) -> bool:
    import pooch

    return path.is_file() and pooch.file_hash(str(path), alg="sha256") == sha256


def fetch_dataset(name: str, *, base_url: str | None = None, show_progress: bool | None = None) -> Path:
    """Download a data set into ``<settings.cachedir>/data/<name>`` (sha256-checked) and return that folder.

    Parameters
    ----------
    name
        One of :data:`DATASETS`.
    base_url
        A mirror laid out like the data folder (``<base_url>/<name>/<file>``); default
        :attr:`kgl.settings.data_url`, else the pinned GitHub URLs (:func:`source_url`).
    show_progress
        A bar over the files being downloaded (in a terminal or notebook; not in a log file);
        default :attr:`kgl.settings.show_progress`.

    Notes
    -----
    Files already in the cache with the right sha256 are not downloaded again. The H&E biopsy
    screenshots are published with the viewer's overlays (scale bar, overview inset, cursor box);
    from GitHub they are fetched as published (sha256-checked, kept under ``source/``) and a copy
    with those rectangles painted white is written where kgl reads it, as in kgl's development
    data. The rectangles, like the µm/px of each screenshot, are kgl's own readings, shipped in the
    package (:func:`image_facts`).

    """
    from tqdm.auto import tqdm

    from kgl._logging import no_bar

    rows = _rows(name)
    base_url = base_url if base_url is not None else settings.data_url
    show_progress = settings.show_progress if show_progress is None else show_progress
    dest = Path(settings.cachedir) / "data" / name

    def painted(row: dict[str, str]) -> bool:  # published with overlays, painted white here
        return base_url is None and row["source_sha256"] != row["shared_sha256"]

    def done(row: dict[str, str]) -> bool:
        target = dest / row["file"]
        if _cached(target, row["shared_sha256"]):
            return True  # as in the development data (a painted copy too, where PNG encoding agrees)
        return painted(row) and target.is_file() and _cached(dest / "source" / row["file"], row["source_sha256"])

    todo = [row for row in rows if not done(row)]
    if not todo:
        logger.debug("data set %r is in %s (%d files, sha256-checked).", name, dest, len(rows))
        return dest
    host = base_url or settings.source_url or _GITHUB_RAW
    logger.info("downloading data set %r: %d of %d files from %s into %s.", name, len(todo), len(rows), host, dest)
    facts = _image_facts().get(name, {})  # overlays to paint, for sets published with them
    for row in tqdm(todo, desc=name, unit="file", disable=no_bar(show_progress)):
        target = dest / row["file"]
        what = f"{name}/{row['file']}"
        if base_url is not None:
            _retrieve(f"{base_url.rstrip('/')}/{name}/{row['file']}", row["shared_sha256"], target, what)
        elif not painted(row):
            _retrieve(source_url(row), row["source_sha256"], target, what)
        else:  # keep the download under source/, paint a copy where kgl reads it
            raw = dest / "source" / row["file"]
            _retrieve(source_url(row), row["source_sha256"], raw, what)
            _paint_white(raw, target, facts[Path(row["file"]).stem]["painted_white"])
    logger.info("data set %r is in %s (%d files, sha256-checked).", name, dest, len(rows))
    return dest


def data_dir(name: str) -> Path:
    """The folder of a data set: the local copy (:meth:`kgl.settings.find_data`), else :func:`fetch_dataset`.

    Raises
    ------
    FileNotFoundError
        Neither a local copy nor a download was possible; says where it looked and what failed.

    """
    try:
        return settings.find_data(name)
    except FileNotFoundError as local:
        if name not in _manifest():
            raise
        if os.environ.get("KGL_OFFLINE"):
            raise FileNotFoundError(f"{local} (KGL_OFFLINE is set: not downloading it).") from None
        try:
            return fetch_dataset(name)
        except (ConnectionError, ValueError, FileNotFoundError) as e:
            raise FileNotFoundError(f"{local}\nDownloading it failed too: {e}") from e
