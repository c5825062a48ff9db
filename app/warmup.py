"""Imports the engine's heavy libraries in the background once the first page has rendered.

A fresh server imports scikit-learn the first time a page splits a folder (the Data page with a
folder in use): about a second, spent while the user waits. Started after the first page's
script, the import runs while the user reads that page instead; a page that needs the library
sooner waits for the import in progress, as it would for its own.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence

__all__ = ["MODULES", "start", "started"]

MODULES = ("sklearn.model_selection",)  # the split of a folder's images (core.data.index)

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _import_all(modules: Sequence[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # the page that needs it reports the error itself
            pass


def start(modules: Sequence[str] | None = None) -> threading.Thread | None:
    """Once per process: a daemon thread importing ``modules`` (default ``MODULES``); None when
    already started."""
    global _thread
    with _lock:
        if _thread is not None:
            return None
        _thread = threading.Thread(
            target=_import_all,
            args=(tuple(MODULES if modules is None else modules),),
            name="warm-imports",
            daemon=True,
        )
        _thread.start()
        return _thread


def started() -> bool:
    """Whether this process has started the background imports."""
    return _thread is not None
