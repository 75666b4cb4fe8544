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

__all__ = ["logger"]
