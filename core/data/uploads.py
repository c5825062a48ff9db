"""Uploaded archives: stored under the data cache by content hash, never by the user's name.

The name the user gave the file is only recorded, in a sidecar next to it
(``upload-<hash>.zip.json``), so the pages can say ``photos.zip`` (``core.data.names``).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from core.data.names import MAX_NAME, upload_sidecar
from core.errors import DataError
from core.files import atomic_write_bytes, atomic_write_text
from core.paths import data_cache_dir

__all__ = [
    "MAX_UPLOAD_BYTES",
    "MAX_UPLOAD_NAME_HASH",
    "save_upload",
]

MAX_UPLOAD_NAME_HASH = 16
# Same cap as .streamlit/config.toml's server.maxUploadSize (MB), enforced here too in case the
# server is started with a larger one.
MAX_UPLOAD_BYTES = 200 * 1024 * 1024


def save_upload(data: bytes, suffix: str = ".zip", original_name: str | None = None) -> Path:
    """Store uploaded bytes under ``<data cache>/uploads/`` with a name made from their hash.

    The user's file name is never used on disk; the same upload maps to the same file.
    ``original_name`` (the name the user dropped, e.g. ``photos.zip``) is recorded in a sidecar
    so ``display_name`` can show it; the latest name given to the same bytes wins.
    """
    if suffix not in (".zip",):
        raise DataError(f"Unsupported upload type {suffix!r}: only .zip archives are accepted.")
    if not data:
        raise DataError("The uploaded file is empty.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise DataError(
            f"The upload is {len(data) / 2**20:.0f} MB, above the {MAX_UPLOAD_BYTES // 2**20} MB "
            "limit. Unzip it and choose the folder as a local path instead."
        )
    folder = data_cache_dir() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()[:MAX_UPLOAD_NAME_HASH]
    target = folder / f"upload-{digest}{suffix}"
    if not target.is_file() or target.stat().st_size != len(data):
        atomic_write_bytes(target, data)
    if original_name:
        _record_name(target, original_name)
    return target


def _record_name(target: Path, original_name: str) -> None:
    """Write the sidecar holding the user's file name (only its last part, capped)."""
    name = original_name.replace("\\", "/").rsplit("/", 1)[-1].strip()[:MAX_NAME]
    if not name:
        return
    sidecar = Path(upload_sidecar(target))
    try:
        if sidecar.is_file() and json.loads(sidecar.read_text()).get("original_name") == name:
            return
    except (OSError, ValueError, AttributeError):
        pass  # unreadable: rewrite it
    try:
        atomic_write_text(sidecar, json.dumps({"original_name": name}) + "\n")
    except OSError as exc:  # only a label is lost; the upload itself is stored
        print(f"warning: could not record the upload's name in {sidecar}: {exc}", file=sys.stderr)
