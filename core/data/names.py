"""Names a person recognises for a data source (what the pages and tables show).

A run's config keeps the exact source (``/home/me/.transfer_studio/data/uploads/upload-5b46….zip``);
people know it as ``photos.zip``, ``pets`` or ``cat-and-dog``. ``display_name`` turns one into the
other from the text alone (plus, for uploads, a few bytes of sidecar written by ``save_upload``):
no scanning, never an exception, so any table may call it per row.
"""

from __future__ import annotations

import json
import os
import re

__all__ = [
    "MAX_NAME",
    "SIDECAR_SUFFIX",
    "UPLOADS_FOLDER",
    "UPLOAD_PREFIX",
    "display_name",
    "upload_sidecar",
    "uploaded_name",
]

UPLOAD_PREFIX = "upload-"  # save_upload's hash-named files: upload-<hash>.zip
UPLOADS_FOLDER = "uploads"
SIDECAR_SUFFIX = ".json"  # upload-<hash>.zip.json: {"original_name": "photos.zip", ...}
MAX_NAME = 60

_KAGGLE_PREFIXES = ("kaggle:", "https://www.kaggle.com/datasets/", "https://kaggle.com/datasets/")
_KAGGLE_VERSION = re.compile(r"^(?P<handle>.+?)/versions/(?P<version>[0-9]+)$")


def upload_sidecar(path: str | os.PathLike[str]) -> str:
    """Where ``save_upload`` records the name the user gave an upload stored at ``path``."""
    return os.fspath(path) + SIDECAR_SUFFIX


def uploaded_name(path: str | os.PathLike[str]) -> str | None:
    """The file name the user gave the upload stored at ``path`` (None when not recorded)."""
    try:
        with open(upload_sidecar(path), encoding="utf-8") as fh:
            name = json.load(fh).get("original_name")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(name, str) or not name.strip():
        return None
    return _short(os.path.basename(name.strip().replace("\\", "/")))


def _short(text: str) -> str:
    return text if len(text) <= MAX_NAME else text[: MAX_NAME - 1] + "…"


def _kaggle_name(handle: str) -> str:
    handle = handle.strip().strip("/")
    version = None
    match = _KAGGLE_VERSION.match(handle)
    if match:
        handle, version = match.group("handle"), match.group("version")
    slug = handle.rsplit("/", 1)[-1] or handle
    return _short(slug + (f" v{version}" if version else ""))


def display_name(source: object) -> str:
    """The name a person recognises for the data source ``source`` (never raises).

    ``builtin:photos`` → ``photos``; a folder ``/x/y/pets/`` → ``pets``; ``/x/cats.zip`` →
    ``cats.zip``; an upload stored by ``save_upload`` → the file name the user dropped;
    ``kaggle:owner/slug/versions/3`` → ``slug v3``; anything else → its last path part.
    """
    try:
        if not isinstance(source, str) or not source.strip():
            return "no data"
        text = source.strip()
        lower = text.lower()
        for prefix in ("builtin:", "dataset:"):  # a managed dataset is known by its name
            if lower.startswith(prefix):
                return _short(text[len(prefix) :].strip() or text)
        for prefix in _KAGGLE_PREFIXES:
            if lower.startswith(prefix):
                return _kaggle_name(text[len(prefix) :])
        trimmed = text.replace("\\", "/").rstrip("/")
        base = trimmed.rsplit("/", 1)[-1]
        if not base:  # "/" itself
            return text
        parent = trimmed.rsplit("/", 2)[-2] if trimmed.count("/") >= 1 else ""
        if parent == UPLOADS_FOLDER and base.startswith(UPLOAD_PREFIX):
            given = uploaded_name(os.path.expanduser(trimmed))
            if given:
                return given
            digest, _, ext = base[len(UPLOAD_PREFIX) :].partition(".")
            return f"upload {digest[:8]}" + (f".{ext}" if ext else "")
        return _short(base)
    except Exception:  # a name for display must never break a page
        return str(source)[-MAX_NAME:]
