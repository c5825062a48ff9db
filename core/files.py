"""File primitives the engine shares: atomic writes, SHA-256 of a file.

A write that a kill, a full disk or a crash interrupts must never leave half a file where a
finished one is expected: every writer here writes a temporary sibling and renames it over the
target (``os.replace`` is atomic on one filesystem), and removes the temporary on failure.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHUNK = 1 << 20  # bytes read at a time when hashing


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of a file's contents, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_path(path: str | os.PathLike[str], prefix: str = "tmp-") -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it replaces ``path``.

    The temporary keeps ``path``'s suffix (Keras and h5py choose the format from it) and is
    removed if the write fails.
    """
    target = Path(path)
    tmp = target.with_name(f"{prefix}{target.name}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, prefix=".tmp-") as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
