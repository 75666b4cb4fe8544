"""One module logger for the package, as in scanpy."""

from __future__ import annotations

import logging

logger = logging.getLogger("kgl")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(levelname)s [kgl] %(message)s"))
    logger.addHandler(_handler)
    if logger.level == logging.NOTSET:  # respect a level the user set before importing kgl
        logger.setLevel(logging.INFO)
    logger.propagate = False

__all__ = ["logger", "no_bar"]


def no_bar(show_progress: bool) -> bool | None:
    """Tqdm's ``disable=`` for ``show_progress``: ``None`` lets tqdm hide the bar when stderr is not a terminal.

    So a bar shows in a terminal and in a notebook (tqdm.notebook treats ``None`` as shown), and a log
    file or CI output (``kgl demo > log``) gets no carriage-return progress lines at all.
    """
    return None if show_progress else True
