"""The one base class of file-backed readers: a per-process file handle, a lock, pickling without it."""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from kgl.io._image import SlideImage


class _FileImage(SlideImage):
    """A :class:`SlideImage` read from a file through a handle that each process opens for itself.

    Subclasses implement :meth:`_open_handle` (return an object with ``close()``) and
    :meth:`_read_level`, and call :meth:`_init_handle` before their first read. The handle is
    (re)opened lazily, under a lock, in every process that reads, and dropped when pickled, so the
    reader can be sent to DataLoader worker processes. Decoding errors name the file.
    """

    _what = "image"  # in error messages: "Could not decode <_what> '<path>'"

    def _init_handle(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._handle: Any = None

    def _open_handle(self) -> Any:
        raise NotImplementedError

    def _handle_here(self) -> Any:
        """The open handle of the calling process, opened on first use."""
        with self._lock:
            if self._pid != os.getpid() or self._handle is None:
                self._handle = self._open_handle()
                self._pid = os.getpid()
            return self._handle

    def _read_level(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        raise NotImplementedError

    def _read_block(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        try:
            return np.asarray(self._read_level(level, y0, y1, x0, x1))
        except Exception as e:
            raise ValueError(f"Could not decode {self._what} {str(self.path)!r} (corrupt or truncated?): {e}") from e

    def close(self) -> None:
        """Close the file handle (reopened on next access)."""
        with self._lock:
            if self._handle is not None:
                self._handle.close()
            self._handle, self._pid = None, None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_lock=None, _handle=None, _pid=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _scaled(mpp: float | None, downsample: float) -> float | None:
    return None if mpp is None else mpp / downsample
