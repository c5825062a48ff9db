"""Where the studio keeps its files.

Everything the studio writes lands under one home folder so that deleting it resets the studio:

* ``TRANSFER_STUDIO_HOME`` if set, else ``~/.transfer_studio``;
* ``<home>/data``: built-in datasets, extracted zips;
* ``<home>/weights``: converted offline weights;
* the run store: ``--runs-dir`` if given, else the home folder itself.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "TRANSFER_STUDIO_HOME"
DEFAULT_HOME = Path("~/.transfer_studio")


def studio_home() -> Path:
    """The studio's home folder (created on demand)."""
    raw = os.environ.get(HOME_ENV)
    home = Path(raw).expanduser() if raw else DEFAULT_HOME.expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home.resolve()


def runs_root(runs_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding ``runs.sqlite`` and one sub-folder per run."""
    root = Path(runs_dir).expanduser() if runs_dir else studio_home()
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def data_cache_dir() -> Path:
    """Folder for generated built-in datasets and extracted archives."""
    path = studio_home() / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path


def weights_cache_dir() -> Path:
    """Folder for weights the studio converts itself (e.g. the offline EfficientNet-Lite0)."""
    path = studio_home() / "weights"
    path.mkdir(parents=True, exist_ok=True)
    return path
