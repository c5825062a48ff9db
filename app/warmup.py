"""Imports the engine's heavy libraries and checks the data in use, in the background, once the
first page has rendered.

A fresh server imports scikit-learn the first time a page splits a folder (the Data page with a
folder in use): about a second, spent while the user waits. Checking every file of the data in
use (its index, health report and leakage plan) is another 1.5 s at 50,000 images. Started
after the first page's script, both run while the user reads that page instead; a page that
needs them sooner waits for the work in progress (Streamlit's cache computes a value once), as
it would for its own.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Sequence

__all__ = ["MODULES", "TASKS", "start", "started"]

MODULES = ("sklearn.model_selection",)  # the split of a folder's images (core.data.index)
# "module:function", called after the imports: the Data page's checks of the data in use.
TASKS = ("app.data.overview:prefetch_chosen",)

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _warm(modules: Sequence[str], tasks: Sequence[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # the page that needs it reports the error itself
            pass
    for task in tasks:
        module, _, function = task.partition(":")
        try:
            getattr(importlib.import_module(module), function)()
        except Exception:  # the page that needs it computes it again, and says what failed
            pass


def start(
    modules: Sequence[str] | None = None, tasks: Sequence[str] | None = None
) -> threading.Thread | None:
    """Once per process: a daemon thread importing ``modules`` (default ``MODULES``), then
    calling ``tasks`` (default ``TASKS``); None when already started."""
    global _thread
    with _lock:
        if _thread is not None:
            return None
        _thread = threading.Thread(
            target=_warm,
            args=(
                tuple(MODULES if modules is None else modules),
                tuple(TASKS if tasks is None else tasks),
            ),
            name="warm-up",
            daemon=True,
        )
        _thread.start()
        return _thread


def started() -> bool:
    """Whether this process has started the background imports."""
    return _thread is not None
