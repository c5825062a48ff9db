"""Uploaded archives: stored under the data cache by content hash, never by the user's name."""

from __future__ import annotations

import hashlib
from pathlib import Path

from core.errors import DataError
from core.files import atomic_write_bytes
from core.paths import data_cache_dir

MAX_UPLOAD_NAME_HASH = 16
# Same cap as .streamlit/config.toml's server.maxUploadSize (MB), enforced here too in case the
# server is started with a larger one.
MAX_UPLOAD_BYTES = 200 * 1024 * 1024


def save_upload(data: bytes, suffix: str = ".zip") -> Path:
    """Store uploaded bytes under ``<data cache>/uploads/`` with a name made from their hash.

    The user's file name is never used on disk; the same upload maps to the same file.
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
    return target
