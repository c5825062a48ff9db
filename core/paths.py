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

from core.errors import StorageError, storage_error

__all__ = [
    "DEFAULT_HOME",
    "HOME_ENV",
    "blocking_file",
    "data_cache_dir",
    "ensure_folder",
    "runs_root",
    "studio_home",
    "weights_cache_dir",
]

HOME_ENV = "TRANSFER_STUDIO_HOME"
DEFAULT_HOME = Path("~/.transfer_studio")


def blocking_file(folder: Path) -> Path | None:
    """The file standing where ``folder`` or one of its parents should be a folder."""
    for path in (folder, *folder.parents):
        if path.exists() and not path.is_dir():
            return path
    return None


def ensure_folder(folder: Path, what: str, fix: str) -> Path:
    """Create ``folder`` (and parents); a file in the way or an unwritable disk is one clear
    ``StorageError``, not an OSError: ``what`` names the folder ("The runs folder /x"), ``fix``
    says what to do."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = blocking_file(folder)
        if blocker is not None:
            where = "is a file" if blocker == folder else f"lies under {blocker}, which is a file"
            raise StorageError(f"{what} {where}, not a folder. {fix}") from exc
        raise storage_error(exc, folder) or StorageError(
            f"Cannot create {what[:1].lower()}{what[1:]}: {exc.strerror or exc}. {fix}"
        ) from exc
    return folder


def studio_home() -> Path:
    """The studio's home folder (created on demand)."""
    raw = os.environ.get(HOME_ENV)
    home = Path(raw).expanduser() if raw else DEFAULT_HOME.expanduser()
    fix = (
        f"Set {HOME_ENV} to a folder (it is created if missing), or unset it to use {DEFAULT_HOME}."
        if raw
        else f"Move that file away, or set {HOME_ENV} to another folder."
    )
    what = f"The studio's home {home}" + (f" (set by {HOME_ENV})" if raw else "")
    return ensure_folder(home, what, fix).resolve()


def runs_root(runs_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder holding ``runs.sqlite`` and one sub-folder per run."""
    if not runs_dir:
        return studio_home()
    root = Path(runs_dir).expanduser()
    fix = "Choose a folder for the runs (it is created if missing)."
    return ensure_folder(root, f"The runs folder {root}", fix).resolve()


def data_cache_dir() -> Path:
    """Folder for generated built-in datasets and extracted archives."""
    path = studio_home() / "data"
    return ensure_folder(path, f"The data folder {path}", "Move that file away, or delete it.")


def weights_cache_dir() -> Path:
    """Folder for weights the studio converts itself (e.g. the offline EfficientNet-Lite0)."""
    path = studio_home() / "weights"
    return ensure_folder(path, f"The weights folder {path}", "Move that file away, or delete it.")
