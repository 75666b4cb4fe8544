"""Files: output folders checked before the work, atomic writes, sha256-checked downloads, torch load errors."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "ensure_dir", "pooch_download", "torch_error_summary"]


def ensure_dir(folder: str | os.PathLike, *, what: str = "output", create: bool = True) -> Path:
    """Create ``folder`` (and parents) for writing, with errors that say what is in the way.

    With ``create=False`` only check that it could be created and written (fail early, before
    any work, without leaving an empty folder behind when the work fails).
    """
    folder = Path(folder)
    try:
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        is_file = existing is not None and not existing.is_dir()
    except PermissionError as e:  # a parent folder cannot even be looked into
        raise PermissionError(
            f"Cannot write the {what} into {str(folder)!r}: no permission to access it. Choose a writable folder."
        ) from e
    if is_file:
        raise NotADirectoryError(
            f"Cannot write the {what} into {str(folder)!r}: {str(existing)!r} is a file, not a folder. "
            "Choose another output path."
        )
    if not create:
        if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(
                f"Cannot write the {what} into {str(folder)!r}: {str(existing)!r} is read-only. Choose a writable "
                "folder."
            )
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:  # raced with another writer
        raise NotADirectoryError(
            f"Cannot write the {what} into {str(folder)!r}: a file is in the way. Choose another output path."
        ) from e
    except PermissionError as e:
        raise PermissionError(
            f"Cannot write the {what} into {str(folder)!r}: no permission to create it. Choose a writable folder."
        ) from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(
            f"Cannot write the {what} into {str(folder)!r}: the folder is read-only. Choose a writable folder."
        )
    return folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` only if the block succeeds.

    A crash (or any exception) inside the block leaves a previous ``path`` untouched and removes
    the temporary file; an unwritable destination fails before the block runs.
    """
    path = Path(path)
    ensure_dir(path.parent, what=f"file {path.name!r}")
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(f"Cannot write {str(path)!r}: it is an existing folder. Choose a file name.")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp)
            else:
                tmp.unlink()


_QUIET_POOCH: contextvars.ContextVar[bool] = contextvars.ContextVar("kgl_quiet_pooch", default=False)


class _QuietPooch(logging.Filter):
    """Drops pooch's INFO lines ("Downloading data from ...") inside a quiet :func:`pooch_download`.

    A filter read per call, not a changed logger level: pooch's logger is shared by every thread,
    and a level saved and restored around concurrent downloads could stay lowered.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not _QUIET_POOCH.get()


def pooch_download(
    url: str, sha256: str, dest: str | os.PathLike, *, what: str, fallback: str, quiet: bool = False
) -> Path:
    """Fetch ``url`` to ``dest`` with :func:`pooch.retrieve`, checked against ``sha256``; clear errors otherwise.

    A file already at ``dest`` with that hash is reused. A hash mismatch deletes the download and
    raises a :class:`ValueError`; a network failure raises a :class:`ConnectionError`. Both messages
    name ``what`` and the URL and end with ``fallback`` (what the user can do instead). ``quiet``
    drops pooch's line per file (a data set of a hundred files logs once, from its caller).
    """
    import pooch

    dest = Path(dest)
    plog = pooch.get_logger()
    if not any(isinstance(f, _QuietPooch) for f in plog.filters):
        plog.addFilter(_QuietPooch())
    token = _QUIET_POOCH.set(quiet)
    try:
        return Path(
            pooch.retrieve(url, known_hash=f"sha256:{sha256}", fname=dest.name, path=dest.parent, progressbar=False)
        )
    except ValueError as e:  # pooch: hash mismatch (the download is deleted)
        raise ValueError(
            f"The download of {what} from {url} failed its sha256 hash check (expected {sha256}); it was deleted and "
            f"nothing was cached. Retry (the download may be broken); if it fails again the published file changed: "
            f"update kgl or {fallback}. ({e})"
        ) from e
    except OSError as e:  # network errors (requests' exceptions are OSErrors)
        raise ConnectionError(f"Could not download {what} from {url}: {e}. Check the network, or {fallback}.") from e
    finally:
        _QUIET_POOCH.reset(token)


def torch_error_summary(e: BaseException) -> str:
    """One informative line of a torch load error (its detail, without torch's advice to load unsafely).

    Plain text handling (no torch import): shared by :mod:`kgl.models` and :mod:`kgl.tl`.
    """
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if m:
        pick = m.group(1).strip()
    elif len(lines) > 1 and lines[0].startswith("Error(s) in loading"):  # load_state_dict: details follow
        pick = lines[1]
    else:
        pick = lines[0] if lines else ""
    return f"{type(e).__name__}: {pick[:300]}"
