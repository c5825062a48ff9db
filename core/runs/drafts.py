"""The dashboard's draft: the Train form and the chosen data, kept per runs folder.

A browser refresh starts a new Streamlit session and a server restart forgets every session:
without a draft the next Launch would silently train the defaults on the default data. The
draft is one small JSON file in the runs folder, written atomically on every change; a missing,
damaged or older-format file reads as "no draft" (the defaults), never as an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from core.config import RunConfig
from core.errors import StudioError
from core.files import atomic_write_text

__all__ = [
    "DRAFT_FILE",
    "DRAFT_VERSION",
    "draft_path",
    "load_chosen_data",
    "load_draft",
    "save_chosen_data",
    "save_draft",
]

DRAFT_FILE = "draft.json"
DRAFT_VERSION = 1


def draft_path(root: str | os.PathLike[str]) -> Path:
    """Where the draft of runs folder ``root`` lives."""
    return Path(root) / DRAFT_FILE


def _read(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The draft file's object, or ``{}`` if it is absent, unreadable or of another version."""
    try:
        data = json.loads(draft_path(root).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, binary, half-written by another tool
        return {}
    if not isinstance(data, dict) or data.get("version") != DRAFT_VERSION:
        return {}
    return data


def _write(root: str | os.PathLike[str], **values: Any) -> None:
    """Merge ``values`` into the draft; a folder that cannot be written only loses the draft."""
    data = {**_read(root), **values, "version": DRAFT_VERSION}
    try:
        atomic_write_text(draft_path(root), json.dumps(data, indent=2, sort_keys=True))
    except OSError:
        pass  # a read-only runs folder: the form still works, it only is not remembered


def save_draft(root: str | os.PathLike[str], config: RunConfig) -> None:
    """Keep ``config`` as the runs folder's last Train form (validated or not)."""
    _write(root, config=config.to_dict())


def load_draft(root: str | os.PathLike[str]) -> RunConfig | None:
    """The last Train form kept for ``root``; ``None`` if there is none or it is unusable.

    A draft that no longer validates (a backbone since removed, a wrong type edited in by
    hand) is ignored rather than shown: the form falls back to its defaults.
    """
    raw = _read(root).get("config")
    if not isinstance(raw, dict):
        return None
    try:
        config = RunConfig.from_dict(raw)
        config.validate()
    except (StudioError, TypeError, ValueError, AttributeError):
        return None
    return config


def save_chosen_data(root: str | os.PathLike[str], source: str) -> None:
    """Keep the data source chosen on the Data page; it becomes the Train form's data too
    (choosing data and then training on the previous data would be a silent surprise)."""
    values: dict[str, Any] = {"chosen_data": source}
    raw = _read(root).get("config")
    if isinstance(raw, dict):
        values["config"] = {**raw, "data": source}
    _write(root, **values)


def load_chosen_data(root: str | os.PathLike[str]) -> str | None:
    """The data source last chosen on the Data page for ``root``, if any."""
    source = _read(root).get("chosen_data")
    return source if isinstance(source, str) and source.strip() else None
