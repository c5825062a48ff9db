"""File primitives the engine shares: atomic writes, SHA-256 of a file, marker-finished folders.

A write that a kill, a full disk or a crash interrupts must never leave half a file where a
finished one is expected: every writer here writes a temporary sibling and renames it over the
target (``os.replace`` is atomic on one filesystem), and removes the temporary on failure.
Folders are built the same way (``build_folder``): in a temporary sibling, with a completion
marker written last, then renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "CHUNK",
    "FOLDER_MODE",
    "TEMP_PREFIX",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "build_folder",
    "discard_folder",
    "read_json",
    "read_marker",
    "real_paths",
    "sha256_file",
    "sha256_files",
    "sqlite_damaged",
    "sound_database",
    "sqlite_backup",
    "set_aside_damaged",
    "try_write_json",
]

CHUNK = 1 << 20  # bytes read at a time when hashing
TEMP_PREFIX = "tmp-"  # how every temporary written by ``atomic_path`` is named: tmp-*-<name>
FOLDER_MODE = 0o755  # a built folder is an ordinary folder, not mkdtemp's private one


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of a file's contents, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_files(paths: Sequence[str], threads: int = 4) -> list[str | None]:
    """The SHA-256 of each file (None: unreadable), in ``paths``' order, on ``threads`` threads
    (hashlib releases the GIL). ``core.data.scan_cache.file_hashes`` remembers them."""

    def some(chunk: Sequence[str]) -> list[str | None]:
        out: list[str | None] = []
        for path in chunk:
            try:
                out.append(sha256_file(path))
            except OSError:
                out.append(None)
        return out

    if not paths:
        return []
    # One task per thread, not per file: at 50,000 small files a future each costs more than
    # the hashing.
    n = max(1, min(threads, len(paths)))
    with ThreadPoolExecutor(max_workers=n) as pool:
        parts = list(pool.map(some, [paths[i::n] for i in range(n)]))
    out: list[str | None] = [None] * len(paths)
    for i, part in enumerate(parts):
        out[i::n] = part
    return out


def real_paths(paths: list[str]) -> list[str]:
    """``os.path.realpath`` of each path, resolving each folder once (``realpath`` walks every
    component: at 50,000 files in a few folders that was seconds); a path that is itself a
    symlink is still resolved in full."""
    folders: dict[str, str] = {}
    out: list[str] = []
    for path in paths:
        folder, base = os.path.split(os.path.abspath(path))
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        real = os.path.join(folders[folder], base)
        out.append(os.path.realpath(real) if os.path.islink(real) else real)
    return out


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike[str], prefix: str = TEMP_PREFIX) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it replaces ``path``.

    The temporary's name starts with ``prefix`` (what a clean-up after a kill looks for, e.g.
    ``tmp-*``), is unique to this process and thread (concurrent writers of one target never
    share it) and ends with ``path``'s name (Keras and h5py choose the format from the suffix).
    It is removed if the write fails, leaving any previous ``path`` untouched.
    """
    target = Path(path)
    unique = f"{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(4)}"
    tmp = target.with_name(f"{prefix}{unique}-{target.name}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike[str]) -> Any:
    """``path``'s JSON, or ``None`` when it is missing or not JSON (a state or cache file that
    is simply not there yet)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def try_write_json(path: str | os.PathLike[str], value: Any) -> bool:
    """Write ``value`` as JSON atomically; ``False`` when it cannot be written (a state or cache
    file its writer simply writes again at the next update)."""
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(value))
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- marker folders


def read_marker(
    folder: str | os.PathLike[str],
    marker_name: str,
    version: int,
    identity: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The completion marker of ``folder`` if it says the folder is finished, else ``None``.

    A marker counts when it is a JSON object whose ``version`` is ``version`` and which holds
    every item of ``identity`` (it may hold more, e.g. what the build reported).
    """
    try:
        marker = json.loads((Path(folder) / marker_name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("version") != version:
        return None
    for key, value in (identity or {}).items():
        if marker.get(key) != value:
            return None
    return marker


def discard_folder(folder: str | os.PathLike[str]) -> None:
    """Move ``folder`` aside (one atomic rename), then delete it; no error if it is gone.

    Readers never see a half-deleted folder: it leaves its place at once.
    """
    folder = Path(folder)
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.stale-", dir=folder.parent))
    try:
        with contextlib.suppress(FileNotFoundError):  # another process already removed it
            os.replace(folder, trash / "old")
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def build_folder(
    target: str | os.PathLike[str],
    build: Callable[[Path], Mapping[str, Any] | None],
    marker_name: str,
    version: int,
    identity: Mapping[str, Any] | None = None,
) -> Path:
    """``target``, built by ``build`` unless a finished build is already there.

    A folder counts as finished when its marker passes ``read_marker``. Otherwise any folder at
    ``target`` (an old version, or a build a crash cut short) is discarded and ``build(tmp)`` fills
    a new temporary sibling ``tmp``; the marker, ``{**returned, **identity, "version": version}``
    as JSON, is written after ``build`` returns, and the folder is then renamed to ``target``. If
    another process finished the same build first, its folder is kept and this one dropped. When
    ``build`` raises, the temporary is removed and nothing appears at ``target``.
    """
    target = Path(target)
    identity = dict(identity or {})
    if read_marker(target, marker_name, version, identity) is not None:
        return target
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        discard_folder(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    try:
        tmp.chmod(FOLDER_MODE)
        marker = {**dict(build(tmp) or {}), **identity, "version": version}
        # Written last: its presence means everything before it is complete.
        (tmp / marker_name).write_text(json.dumps(marker, sort_keys=True), encoding="utf-8")
        for attempt in range(2):
            try:
                os.rename(tmp, target)
                break
            except OSError:
                if read_marker(target, marker_name, version, identity) is not None:
                    break  # a concurrent build finished first: use its folder
                if attempt or not target.exists():
                    raise
                discard_folder(target)  # an unfinished folder appeared meanwhile
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- SQLite indexes
# The run store and every managed dataset keep an SQLite index beside files that can rebuild it;
# both keep a rolling backup and set a damaged index aside the same way.


def sqlite_damaged(exc: BaseException) -> bool:
    """Whether SQLite says the file itself is no database (as opposed to busy or unwritable)."""
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


def sound_database(path: str | os.PathLike[str], table: str) -> bool:
    """Whether ``path`` is an SQLite file that passes a quick check and has ``table``."""
    import sqlite3

    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return False
    try:
        db = sqlite3.connect(f"file:{os.fspath(path)}?mode=ro", uri=True)
        try:
            return db.execute("PRAGMA quick_check").fetchone()[0] == "ok" and bool(
                db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchone()
            )
        finally:
            db.close()
    except sqlite3.Error:
        return False


def sqlite_backup(db: Any, target: str | os.PathLike[str]) -> Path:
    """Copy the open database ``db`` to ``target`` with SQLite's online backup (atomically: a
    kill mid-copy leaves the previous backup)."""
    import sqlite3

    with atomic_path(target) as tmp:
        copy = sqlite3.connect(tmp)
        try:
            db.backup(copy)
        finally:
            copy.close()
    return Path(target)


def set_aside_damaged(
    db_path: str | os.PathLike[str], backup: str | os.PathLike[str], table: str
) -> tuple[Path | None, bool]:
    """Keep a damaged SQLite index for inspection and restore ``backup`` in its place if sound.

    The index (with its ``-wal``/``-shm`` files, which belong to it and not to the backup) is
    renamed ``<name>.damaged-<time>``. Returns (that name, or None if there was no file; whether
    the backup was restored). Without a sound backup nothing is left at ``db_path``.
    """
    import time

    path = Path(db_path)
    kept = None
    if path.exists():
        kept = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, kept)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            if kept is not None:
                os.replace(side, kept.with_name(kept.name + suffix))
            else:
                side.unlink(missing_ok=True)
    restored = sound_database(backup, table)
    if restored:
        shutil.copyfile(backup, path)
    return kept, restored
