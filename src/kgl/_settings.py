"""Package-wide settings: where shared data and the model cache live."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["settings"]


def _default_cachedir() -> Path:
    env = os.environ.get("KGL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("kgl"))


@dataclass
class _Settings:
    """Settings of :mod:`kgl`.

    Attributes
    ----------
    cachedir
        Where downloaded/trained models and derived data (e.g. pseudo-Visium full-resolution
        TIFFs) are cached. ``$KGL_CACHE_DIR`` overrides the platform cache folder.
    datadir
        Explicit location of the development data (``$KGL_DATA_DIR``); ``None`` searches for a
        ``shared/data`` folder next to the working directory or the source checkout.
    data_url
        A mirror of the data sets laid out like the data folder (``$KGL_DATA_URL``); ``None``
        downloads missing data sets from their public GitHub repositories at pinned commits
        (:func:`kgl.datasets.fetch_dataset`).
    source_url
        The raw-content host in front of ``/<repository>/<commit>/<source_path>`` for those
        downloads (``$KGL_SOURCE_URL``); ``None`` is GitHub's, ``https://raw.githubusercontent.com``.
        Checksums are those of the public files either way.
    show_progress
        Progress bars where a function's own ``show_progress`` is not given (data downloads);
        ``kgl ... --quiet`` turns them off.

    """

    cachedir: Path = field(default_factory=_default_cachedir)
    datadir: Path | None = field(
        default_factory=lambda: Path(os.environ["KGL_DATA_DIR"]) if "KGL_DATA_DIR" in os.environ else None
    )
    data_url: str | None = field(default_factory=lambda: os.environ.get("KGL_DATA_URL") or None)
    source_url: str | None = field(default_factory=lambda: os.environ.get("KGL_SOURCE_URL") or None)
    show_progress: bool = True

    def data_candidates(self) -> list[Path]:
        """Folders searched, in order, for the development data."""
        if self.datadir is not None:
            return [Path(self.datadir).expanduser()]
        env = os.environ.get("KGL_DATA_DIR")
        if env:
            return [Path(env).expanduser()]
        cands: list[Path] = []
        for start in (Path.cwd(), Path(__file__).resolve().parent):
            for parent in (start, *start.parents):
                cands.append(parent / "shared" / "data")
                cands.append(parent.parent / "shared" / "data")
        seen: set[Path] = set()
        return [c for c in cands if not (c in seen or seen.add(c))]

    def find_data(self, name: str) -> Path:
        """Return ``<datadir>/<name>``; raise :class:`FileNotFoundError` listing where it looked."""
        cands = self.data_candidates()
        for c in cands:
            if (c / name).is_dir():
                return c / name
        looked = "\n  ".join(str(c / name) for c in cands[:8])
        raise FileNotFoundError(
            f"Could not find the data folder {name!r}. Looked in:\n  {looked}\n"
            "Set KGL_DATA_DIR to the folder that contains it (e.g. KGL_DATA_DIR=../shared/data)."
        )


settings = _Settings()
