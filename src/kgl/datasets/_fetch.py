"""Where the public training/test sets come from: a local copy, else a sha256-checked download.

Each data set is looked for locally first (:meth:`kgl.settings.find_data`: ``$KGL_DATA_DIR`` or a
``shared/data`` folder near the working directory). When it is not there, its files are fetched
with :mod:`pooch` into ``<settings.cachedir>/data/<name>`` from the public GitHub repositories at
the commits pinned in ``_sources.tsv`` (one row per file: repository, commit, path, sha256), each
checked against its sha256, and reused from then on.

``$KGL_DATA_URL`` (:attr:`kgl.settings.data_url`) names a mirror laid out like the data folder
(``<url>/<name>/<file>``), checked against the sha256 of that layout; the tests serve the shared
data folder that way on 127.0.0.1.
"""

from __future__ import annotations

import csv
import json
import os
from functools import cache
from importlib import resources
from pathlib import Path

from kgl._logging import logger
from kgl._settings import settings

__all__ = ["DATASETS", "data_dir", "fetch_dataset", "source_url"]

#: The data sets kgl can fetch, with what each is.
DATASETS = {
    "glomeruli-multistain": "105 Masson/PASM/PAS renal biopsy snapshots, COCO glomerulus polygons (Jiang et al. 2021)",
    "glomeruli-pas-tiles": "24 PAS 20x tiles with binary glomerulus masks (AIDPATH, CC BY 4.0)",
    "glomeruli-he-biopsy": "9 H&E renal biopsy screenshots of 2 cases with QuPath GeoJSON glomeruli",
    "visium-mouse-kidney": "10x Visium V1_Mouse_Kidney spatial/ folder (CC BY-SA 4.0)",
}
_GITHUB_RAW = "https://raw.githubusercontent.com"


@cache
def _manifest() -> dict[str, list[dict[str, str]]]:
    text = resources.files("kgl.datasets").joinpath("_sources.tsv").read_text(encoding="utf-8")
    out: dict[str, list[dict[str, str]]] = {}
    for row in csv.DictReader(text.splitlines(), delimiter="\t"):
        out.setdefault(row["dataset"], []).append(row)
    return out


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

    pooch_download(url, sha256, dest, what=what, fallback="point KGL_DATA_DIR at a local copy of the data folder")


def fetch_dataset(name: str, *, base_url: str | None = None) -> Path:
    """Download a data set into ``<settings.cachedir>/data/<name>`` (sha256-checked) and return that folder.

    Parameters
    ----------
    name
        One of :data:`DATASETS`.
    base_url
        A mirror laid out like the data folder (``<base_url>/<name>/<file>``); default
        :attr:`kgl.settings.data_url`, else the pinned GitHub URLs (:func:`source_url`).

    Notes
    -----
    Files already in the cache with the right sha256 are not downloaded again. The H&E biopsy
    screenshots are published with the viewer's overlays (scale bar, overview inset, cursor box);
    from GitHub they are fetched as published and a copy with those rectangles painted white is
    written next to them, as in kgl's development data. The rectangles and the µm/px of each
    screenshot are in that set's ``mpp.json``, which kgl's maintainers derived and which is not
    published upstream: it comes only from a local copy of the data folder or a mirror.

    """
    rows = _rows(name)
    base_url = base_url if base_url is not None else settings.data_url
    dest = Path(settings.cachedir) / "data" / name
    # derived files (no upstream path, e.g. the H&E set's mpp.json) first: without them nothing else is usable
    rows = sorted(rows, key=lambda r: r["source_path"] != "-")
    for row in rows:
        target = dest / row["file"]
        what = f"{name}/{row['file']}"
        if base_url is not None:
            _retrieve(f"{base_url.rstrip('/')}/{name}/{row['file']}", row["shared_sha256"], target, what)
        elif row["source_path"] == "-":  # not published upstream: only a local copy or a mirror has it
            if not target.is_file():
                raise FileNotFoundError(
                    f"{what} is derived by kgl's maintainers (not published in {row['repository']}), so it cannot be "
                    f"downloaded from there. Point KGL_DATA_DIR at a copy of the data folder, KGL_DATA_URL at a mirror "
                    f"of it, or put the file at {str(target)!r}."
                )
        elif row["source_sha256"] == row["shared_sha256"]:
            _retrieve(source_url(row), row["source_sha256"], target, what)
        else:  # published with overlays: keep the download under source/, paint a copy where kgl reads it
            raw = dest / "source" / row["file"]
            _retrieve(source_url(row), row["source_sha256"], raw, what)
            if not target.exists():
                meta = json.loads((dest / "mpp.json").read_text(encoding="utf-8"))
                _paint_white(raw, target, meta[Path(row["file"]).stem]["painted_white"])
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
