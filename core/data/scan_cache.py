"""Remembers which image files passed ``check_image``, so re-scanning a dataset is near-free, and
each file's SHA-256 (``file_hashes``: the Data page's health check, its leakage plan and a run's
split check hash the same files).

A dataset scan fully decodes every file to catch truncated or corrupt images (about a
millisecond each, so a second or more per run on a few thousand photos). The verdict only
changes when the file does, so it is stored in ``<home>/cache/scan.sqlite`` keyed by the file's
path and ``os.stat`` identity (size, modification and change times in nanoseconds, inode) and by
the checking rules in force (``images`` limits and ``RULES_VERSION``). Any write to a file
changes its ctime, which nobody can set back, so a changed file is always checked again.

The cache is an optimisation only: it is safe to delete, and if SQLite fails (read-only home,
locked or corrupt file) files are simply checked again. Paths are stored as bytes, so file
names that are not valid UTF-8 work too.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from core.files import sha256_file, sha256_files
from core.paths import studio_home

__all__ = [
    "PROGRESS_EVERY",
    "RULES_VERSION",
    "Checker",
    "Progress",
    "cache_db",
    "check_all",
    "content_hashes",
    "file_hashes",
    "select_in",
]

RULES_VERSION = 1  # bump when check_image's verdicts change for the same file
_CHUNK = 500  # paths per SELECT (SQLite's variable limit is 32766; stay well below)
Checker = Callable[[str], str | None]
Progress = Callable[[int, int], None]  # (files checked, files to check)
PROGRESS_EVERY = 50  # files between progress calls


def _rules() -> str:
    from core.data import images

    limits = (images.MAX_IMAGE_PIXELS, images.MAX_FILE_BYTES, images.MIN_IMAGE_SIDE)
    return f"{RULES_VERSION}:" + ":".join(map(str, limits))


def _identity(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # the checker reports it as unreadable
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


@contextlib.contextmanager
def cache_db(file_name: str, *schema: str) -> Iterator[sqlite3.Connection]:
    """A connection to ``<home>/cache/<file_name>`` with ``schema`` (CREATE ... IF NOT EXISTS)
    applied, in one transaction (committed on success), always closed."""
    folder = studio_home() / "cache"
    folder.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(folder / file_name, timeout=5.0)
    try:
        with conn:
            for statement in schema:
                conn.execute(statement)
            yield conn
    finally:
        conn.close()


def select_in(
    conn: sqlite3.Connection, query: str, keys: Sequence[object], params: Sequence[object] = ()
) -> Iterator[tuple]:
    """The rows of ``query`` (ending in ``IN``) for ``keys``, ``_CHUNK`` keys per SELECT;
    ``params`` bind before the keys."""
    for start in range(0, len(keys), _CHUNK):
        chunk = list(keys[start : start + _CHUNK])
        yield from conn.execute(f"{query} ({','.join('?' * len(chunk))})", [*params, *chunk])


def _connect() -> contextlib.AbstractContextManager[sqlite3.Connection]:
    return cache_db(
        "scan.sqlite",
        "CREATE TABLE IF NOT EXISTS checks (path BLOB PRIMARY KEY, size INTEGER, "
        "mtime_ns INTEGER, ctime_ns INTEGER, ino INTEGER, rules TEXT, reason TEXT)",
        "CREATE TABLE IF NOT EXISTS hashes (path BLOB PRIMARY KEY, size INTEGER, "
        "mtime_ns INTEGER, ctime_ns INTEGER, ino INTEGER, sha256 TEXT)",
    )


def _remember(table: str, rows: list[tuple]) -> None:
    """``rows`` into ``table`` of ``scan.sqlite`` (replacing a path's older row); a failed write
    costs only the work again later."""
    if not rows:
        return
    try:
        with _connect() as conn:
            marks = ", ".join("?" * len(rows[0]))
            conn.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", rows)
    except sqlite3.Error:
        pass


def _check_parallel(
    paths: Sequence[str], check: Checker, progress: Progress | None = None, offset: int = 0
) -> list[str | None]:
    if not paths:
        return []
    # Decoders release the GIL, so threads overlap disk reads and decoding.
    workers = min(16, 2 * (os.cpu_count() or 1), len(paths))
    results: list[str | None] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for reason in pool.map(check, paths, chunksize=1):
            results.append(reason)
            if progress and (len(results) % PROGRESS_EVERY == 0 or len(results) == len(paths)):
                progress(offset + len(results), offset + len(paths))
    return results


def check_all(
    paths: Sequence[str], check: Checker, progress: Progress | None = None
) -> list[str | None]:
    """``check(path)`` for every path (``None`` = usable), reusing verdicts of unchanged files.

    ``progress(done, total)`` is called as files are checked (known ones count as done at once).
    """
    if not paths:
        return []
    rules = _rules()
    identities = [_identity(p) for p in paths]
    # Paths as bytes: file names need not be valid UTF-8 (surrogate escapes can't be stored).
    keys = [os.fsencode(p) for p in paths]
    known: dict[bytes, tuple] = {}
    try:
        with _connect() as conn:
            # With each verdict, the file's stored digest: a run records its split (every
            # file's digest) right after its scan, and finds them in memory then, not in a
            # second query (0.15 s at 50,000 files).
            query = (
                "SELECT c.path, c.size, c.mtime_ns, c.ctime_ns, c.ino, c.rules, c.reason, "
                "h.size, h.mtime_ns, h.ctime_ns, h.ino, h.sha256 FROM checks c "
                "LEFT JOIN hashes h ON h.path = c.path WHERE c.path IN"
            )
            known.update((bytes(row[0]), row[1:]) for row in select_in(conn, query, keys))
    except sqlite3.Error:
        known = {}
    results: list[str | None] = [None] * len(paths)
    todo: list[int] = []
    digests: list[tuple[str, tuple[int, int, int, int], str]] = []
    for i, (key, ident) in enumerate(zip(keys, identities, strict=True)):
        row = known.get(key)
        if ident is not None and row is not None and (*ident, rules) == tuple(row[:5]):
            results[i] = row[5]
        else:
            todo.append(i)
        if ident is not None and row is not None and row[10] is not None and ident == row[6:10]:
            digests.append((paths[i], ident, row[10]))
    _memorise(digests)
    if progress:
        progress(len(paths) - len(todo), len(paths))
    fresh = _check_parallel([paths[i] for i in todo], check, progress, len(paths) - len(todo))
    for i, reason in zip(todo, fresh, strict=True):
        results[i] = reason
    remember = [
        (keys[i], *ident, rules, results[i]) for i in todo if (ident := identities[i]) is not None
    ]
    _remember("checks", remember)  # not stored: the next scan checks these files again
    return results


# The hashes this process knows, by path: (identity, digest). Bounded (about 250 bytes an entry);
# past the bound it starts again (the database still has them).
_HASHES: dict[str, tuple[tuple[int, int, int, int], str]] = {}
_HASHES_MAX = 400_000
_HASHES_LOCK = threading.Lock()
# Timestamps tick coarsely (milliseconds): a file rewritten within one tick at the same size could
# keep its identity, so a file changed this recently is hashed again every time.
SETTLED_NS = 2_000_000_000


def _settled(identity: tuple[int, int, int, int], now_ns: int) -> bool:
    return now_ns - max(identity[1], identity[2]) >= SETTLED_NS


def file_hashes(paths: Sequence[str], threads: int = 4) -> list[str | None]:
    """The SHA-256 of each file (None: unreadable), in ``paths``' order. A file unchanged since
    it was hashed (same ``os.stat`` identity) is not read again: its digest comes from this
    process's memory, else from ``scan.sqlite``; the others are hashed on ``threads`` threads."""
    if not paths:
        return []
    identities = [_identity(p) for p in paths]
    out: list[str | None] = [None] * len(paths)
    missing: list[int] = []
    for i, (path, ident) in enumerate(zip(paths, identities, strict=True)):
        known = _HASHES.get(path)
        if ident is not None and known is not None and known[0] == ident:
            out[i] = known[1]
        elif ident is not None:
            missing.append(i)
    if not missing:
        return out
    keys = {i: os.fsencode(paths[i]) for i in missing}
    stored: dict[bytes, tuple] = {}
    try:
        with _connect() as conn:
            query = "SELECT path, size, mtime_ns, ctime_ns, ino, sha256 FROM hashes "
            rows = select_in(conn, query + "WHERE path IN", [keys[i] for i in missing])
            stored.update((bytes(row[0]), row[1:]) for row in rows)
    except sqlite3.Error:
        stored = {}
    todo: list[int] = []
    for i in missing:
        row = stored.get(keys[i])
        if row is not None and tuple(row[:4]) == identities[i]:
            out[i] = row[4]
        else:
            todo.append(i)
    fresh = sha256_files([paths[i] for i in todo], threads)
    now_ns = time.time_ns()
    remember = []
    for i, digest in zip(todo, fresh, strict=True):
        out[i] = digest
        ident = identities[i]
        if digest is not None and ident is not None and _settled(ident, now_ns):
            remember.append((keys[i], *ident, digest))
    _remember("hashes", remember)  # not stored: hashed again next time
    _memorise(
        (paths[i], ident, digest)
        for i in missing
        if (ident := identities[i]) is not None
        and (digest := out[i]) is not None
        and _settled(ident, now_ns)
    )
    return out


def _memorise(digests: Iterable[tuple[str, tuple[int, int, int, int], str]]) -> None:
    """``(path, identity, digest)`` triples into this process's memory (``_HASHES``)."""
    rows = list(digests)
    with _HASHES_LOCK:
        if len(_HASHES) + len(rows) > _HASHES_MAX:
            _HASHES.clear()
        _HASHES.update((path, (ident, digest)) for path, ident, digest in rows)


def content_hashes(paths: Sequence[str]) -> list[str]:
    """``file_hashes`` for a caller that needs every digest: an unreadable file raises the
    ``OSError`` reading it gives, naming the file. Digests this process computed a moment
    ago (a run's split recording) cost a ``stat`` each, not a read."""
    known = file_hashes(paths)
    return [sha if sha is not None else sha256_file(p) for p, sha in zip(paths, known, strict=True)]
