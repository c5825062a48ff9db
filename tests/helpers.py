"""Constants shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
from PIL import Image

from core.config import RunConfig

# The smallest run that exercises the whole engine: random-weight MobileNetV2 at 32 px, 1 epoch.
TINY = RunConfig(
    backbone="mobilenet_v2",
    weights="none",
    data="builtin:textures",
    image_size=32,
    epochs=1,
    fine_tune_epochs=1,
    batch_size=32,
)


# The text patterns GFM renderers turn into links by themselves (autolink literals), as
# mdast-util-gfm-autolink-literal (Streamlit's Markdown) matches them in text nodes, after
# backslash escapes are resolved.
GFM_AUTOLINK = re.compile(r"(https?://|www(?=\.))([-.\w]+)([^ \t\r\n]*)", re.IGNORECASE)
GFM_EMAIL = re.compile(r"([-.\w+]+)@([-\w]+(?:\.[-\w]+)+)")


def write_pngs(folder: Path, n: int, side: int = 24) -> list[str]:
    """``n`` small PNGs of distinct colours in ``folder`` (created); their paths as strings."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.new("RGB", (side, side), (i * 30 % 256, 60, 90)).save(path)
        paths.append(str(path))
    return paths


def stop_studio_workers(home: str | os.PathLike[str], timeout: float = 15.0) -> None:
    """SIGTERM the worker processes serving ``home``'s runs (a dashboard server started them in
    their own session, so stopping the server leaves a run in progress training on)."""
    from core.runs.store import RunStore

    pids = {w["pid"] for w in RunStore(home, recover=False).workers() if w["pid"] > 0}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def off_by_one_class(probabilities: np.ndarray) -> np.ndarray:
    """What a tampered export would answer: certain of the class after each live top-1. (A roll of
    the probabilities changes nothing when a tiny model is unsure of everything.)"""
    classes = probabilities.shape[1]
    wrong = (probabilities.argmax(axis=1) + 1) % classes
    return np.eye(classes, dtype=probabilities.dtype)[wrong]
