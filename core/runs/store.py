"""The run store: SQLite (WAL) plus one artifact folder per run.

It is the one source of truth for the pages and the CLI: a worker (a ``python -m core worker``
process, or the thread of a CLI ``train``) writes progress here while it trains, and readers (a
page's fragment, ``python -m core runs``) read it back, possibly from another process. Each call
opens its own short-lived connection so any thread may use the store.

It is also the queue of the worker processes: a queued run with no ``owner`` waits for any worker,
which claims it atomically (``claim_next``); the ``workers`` table holds each worker's heartbeat,
so a run whose worker died is marked ``interrupted`` (``recover_interrupted``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sqlite3
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NotRequired, TypedDict, Unpack, cast

from core.config import RunConfig, Status
from core.data.names import display_name
from core.errors import ConfigError, RunNotFoundError, StudioError, storage_error
from core.files import (
    atomic_write_text,
    set_aside_damaged,
    sqlite_backup,
    sqlite_damaged,
)
from core.paths import runs_root
from core.processes import owner_alive, pid_alive, process_token
from core.runs.split import RunSplit, read_split

__all__ = [
    "ACTIVE_STATUSES",
    "BACKUP_NAME",
    "DB_NAME",
    "HEARTBEAT_S",
    "HEARTBEAT_STALE_S",
    "HISTORY_KEYS",
    "JSON_COLUMNS",
    "MAX_RUN_NAME",
    "RECORD_FILE",
    "STARTING_GRACE_S",
    "UPDATABLE_COLUMNS",
    "BatchRecord",
    "EpochRecord",
    "History",
    "RunResult",
    "RunRow",
    "RunStore",
    "RunSummary",
    "RunUpdate",
    "StoreDamagedError",
    "WorkerRow",
    "clean_run_name",
    "default_run_name",
    "new_run_id",
    "saved_model_path",
]

# Aliases of the ``Status`` members: ``from core.runs.store import QUEUED`` and the like work.
QUEUED, RUNNING, COMPLETED = Status.QUEUED, Status.RUNNING, Status.COMPLETED
STOPPED, FAILED, INTERRUPTED = Status.STOPPED, Status.FAILED, Status.INTERRUPTED
ACTIVE_STATUSES: tuple[Status, ...] = (QUEUED, RUNNING)
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "phase")  # then "epoch"
DB_NAME = "runs.sqlite"
BACKUP_NAME = "runs.sqlite.bak"  # SQLite's online backup, refreshed after every finished run
RECORD_FILE = "record.json"  # each run folder's own copy of its row and epochs
MAX_RUN_NAME = 60  # a name must fit a selector, a chip and a table column
# Worker processes (``python -m core worker``): each writes a heartbeat about every second; a
# running run whose worker's heartbeat is older than this is taken for lost (``interrupted``).
HEARTBEAT_S = 1.0
HEARTBEAT_STALE_S = 10.0
# A worker being started (a ``starting`` row) counts as alive this long without a heartbeat:
# its interpreter and the core imports take a second or two, more on a busy machine.
STARTING_GRACE_S = 60.0
WORKER_STARTING, WORKER_IDLE, WORKER_RUNNING = "starting", "idle", "running"
# The runs columns holding JSON text: a damaged one must not hide the other runs.
JSON_COLUMNS = (
    "config_json", "class_names_json", "skipped_files_json", "dataset_json", "phases_json",
    "stage_json", "timings_json", "ray_json",
)  # fmt: skip

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    status TEXT NOT NULL,
    error TEXT,
    config_json TEXT NOT NULL,
    owner TEXT,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    class_names_json TEXT,
    train_images INTEGER,
    val_images INTEGER,
    skipped_files_json TEXT,
    dataset_json TEXT,
    phases_json TEXT,
    stage_json TEXT,
    timings_json TEXT,
    best_val_accuracy REAL,
    epochs_done INTEGER NOT NULL DEFAULT 0,
    planned_epochs INTEGER NOT NULL,
    duration_s REAL,
    model_path TEXT,
    model_bytes INTEGER,
    name TEXT,
    device TEXT,
    replicas INTEGER,
    ray_json TEXT
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    phase TEXT NOT NULL,
    phase_epoch INTEGER NOT NULL,
    loss REAL, accuracy REAL, val_loss REAL, val_accuracy REAL, lr REAL,
    images_per_s REAL, duration_s REAL, t REAL NOT NULL,
    PRIMARY KEY (run_id, epoch)
);
CREATE TABLE IF NOT EXISTS workers (
    token TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    device TEXT,
    runs_dir TEXT,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    run_id TEXT
);
CREATE TABLE IF NOT EXISTS batches (
    run_id TEXT NOT NULL,
    global_step INTEGER NOT NULL,
    phase TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    step INTEGER NOT NULL,
    steps_per_epoch INTEGER,
    loss REAL, accuracy REAL, lr REAL, images_per_s REAL, t REAL NOT NULL,
    PRIMARY KEY (run_id, global_step)
);
"""


# -- what the store returns -----------------------------------------------------------------
# TypedDicts, not classes: at run time they are the plain dicts the pages index and the CLI prints
# with ``json.dumps`` (``train --json``, ``runs --json`` and ``show --json`` are a public contract).


class WorkerRow(TypedDict):
    """A row of the ``workers`` table: one worker process serving this runs folder."""

    token: str  # ``process_token()`` of the worker ("starting:N" while it is being started)
    pid: int
    host: str
    device: str | None  # its ``--device`` (None: whatever TensorFlow finds)
    runs_dir: str | None
    state: str  # starting, idle or running
    started_at: float
    heartbeat_at: float
    run_id: str | None  # the run it holds (None while idle)


class RunRow(TypedDict):
    """A raw row of the ``runs`` table (``get_run``): ``*_json`` columns hold JSON text."""

    run_id: str
    seq: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    status: str
    error: str | None
    config_json: str
    owner: str | None
    stop_requested: int
    class_names_json: str | None
    train_images: int | None
    val_images: int | None
    skipped_files_json: str | None
    dataset_json: str | None
    phases_json: str | None
    stage_json: str | None
    timings_json: str | None
    best_val_accuracy: float | None
    epochs_done: int
    planned_epochs: int
    duration_s: float | None
    model_path: str | None
    model_bytes: int | None
    name: str | None  # the user's rename (None: the config's name, else a default)
    device: str | None  # where it trained, e.g. "CPU", "GPU:0", "2 x CPU:0-1 (mirrored)"
    replicas: int | None  # devices one step ran on (1 unless distribute=mirrored)


class EpochRecord(TypedDict):
    """One finished epoch (``epochs``)."""

    run_id: str
    epoch: int
    phase: str
    phase_epoch: int
    loss: float | None
    accuracy: float | None
    val_loss: float | None
    val_accuracy: float | None
    lr: float | None
    images_per_s: float | None
    duration_s: float | None
    t: float


class BatchRecord(TypedDict):
    """One training batch (``batches``)."""

    run_id: str
    global_step: int
    phase: str
    epoch: int
    step: int
    steps_per_epoch: int | None
    loss: float | None
    accuracy: float | None
    lr: float | None
    images_per_s: float | None
    t: float


class History(TypedDict):
    """Per-epoch metrics as parallel lists (the ``history`` of a result)."""

    loss: list[float | None]
    accuracy: list[float | None]
    val_loss: list[float | None]
    val_accuracy: list[float | None]
    lr: list[float | None]
    phase: list[str]
    epoch: list[int]


class RunSummary(TypedDict):
    """One line of ``list_runs`` (and ``runs --json``)."""

    run_id: str
    status: Status
    name: str
    backbone: str | None
    mode: str | None
    data: str | None
    epochs_done: int
    planned_epochs: int
    best_val_accuracy: float | None
    created_at: float
    duration_s: float | None
    error: str | None


class RunResult(RunSummary):
    """Everything about a run: ``result``, the object ``train --json`` and ``show --json`` print."""

    config: dict[str, Any]
    history: History
    class_names: list[str]
    train_images: int | None
    val_images: int | None
    skipped_files: list[dict[str, Any]]
    dataset: dict[str, Any] | None
    phases: list[dict[str, Any]]
    stage: dict[str, Any] | None
    timings: dict[str, float] | None  # seconds per training stage (scan, build, fit...)
    started_at: float | None
    finished_at: float | None
    model_path: str | None
    model_bytes: int | None
    device: str | None
    replicas: int | None
    ray: dict[str, Any] | None  # where a Ray cluster computed or trained it (None: here)
    run_dir: str
    # ``{"root", "train": [{path, label, sha256}], "val": [...]}`` (``core.runs.split``); only
    # when asked for (``result(run_id, split=True)``: ``show``/``train --json``), ``None`` for a
    # run that recorded none.
    split: NotRequired[dict[str, Any] | None]


class RunUpdate(TypedDict, total=False):
    """The columns ``RunStore.update`` may set (lists and dicts go to their ``*_json`` column):
    keyword names are checked against these, so none becomes an arbitrary SQL column."""

    status: str
    error: str | None
    owner: str | None
    started_at: float | None
    finished_at: float | None
    duration_s: float | None
    stop_requested: int
    name: str | None
    class_names: list[str]
    train_images: int | None
    val_images: int | None
    skipped_files: list[dict[str, Any]]
    dataset: dict[str, Any] | None
    phases: list[dict[str, Any]]
    stage: dict[str, Any] | None
    timings: dict[str, float] | None
    model_path: str | None
    model_bytes: int | None
    device: str | None
    replicas: int | None
    ray: dict[str, Any] | None  # where a Ray cluster computed or trained the run


UPDATABLE_COLUMNS = frozenset(RunUpdate.__annotations__)


# Keeps the runs row's summary columns in step with its epochs.
_REFRESH_SUMMARY = (
    "UPDATE runs SET epochs_done = (SELECT COUNT(*) FROM epochs WHERE run_id = ?),"
    " best_val_accuracy = (SELECT MAX(val_accuracy) FROM epochs WHERE run_id = ?)"
    " WHERE run_id = ?"
)


def _loads_ok(text: object, must_be_object: bool = False) -> bool:
    """Whether a ``*_json`` column's text parses (NULL does)."""
    if text is None:
        return not must_be_object
    try:
        value = json.loads(str(text))
    except ValueError:
        return False
    return isinstance(value, dict) or not must_be_object


def new_run_id() -> str:
    """Sortable, readable and unique: ``20261121-210501-3fa2c1``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def _cap(text: str, limit: int = MAX_RUN_NAME) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def default_run_name(data: object, seq: int) -> str:
    """A run's name when nobody gave one: the data's recognisable name and the run's number."""
    return _cap(f"{display_name(data)} #{seq}")


def clean_run_name(name: object) -> str:
    """A user's run name, trimmed and capped; ConfigError for an empty one."""
    text = " ".join(name.split()) if isinstance(name, str) else ""
    if not text:
        raise ConfigError(
            f"A run name cannot be empty (received {name!r}). Type a few words, e.g. "
            "'cats vs dogs, fine-tuned'."
        )
    return _cap(text)


class StoreDamagedError(StudioError):
    """The run store's file (or one of its rows) cannot be read."""


def _recovery_advice() -> str:
    return (
        f"Nothing in the run folders is lost: each keeps its config.json and record.json, and "
        f"{BACKUP_NAME} (refreshed after every finished run) is a copy of the index."
    )


def _folder_size(path: Path) -> int:
    """Bytes of the files under ``path`` (symlinks not followed; vanishing files skipped)."""
    total = 0
    try:
        entries = list(os.scandir(path))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += _folder_size(Path(entry.path))
            else:
                total += entry.stat(follow_symlinks=False).st_size
        except OSError:  # removed meanwhile: a run finishing or a checkpoint replaced
            continue
    return total


class RunStore:
    """SQLite run registry plus ``<root>/runs/<run_id>/`` artifact folders."""

    def __init__(self, root: str | os.PathLike[str] | None = None, recover: bool = True) -> None:
        try:
            self.root = runs_root(root)
            (self.root / "runs").mkdir(exist_ok=True)
        except OSError as exc:
            raise storage_error(exc, root or "the studio home") or StudioError(
                f"Cannot create the runs folder {root or 'in the studio home'}: {exc}."
            ) from exc
        self.db_path = self.root / DB_NAME
        # What went wrong with the store and what was done about it, for the pages to show
        # (the CLI prints the same lines on stderr as they happen).
        self.notices: list[str] = []
        try:
            if self._emptied():
                # SQLite would open an empty file as a new, empty index without a word.
                raise StoreDamagedError("the file is empty: 0 bytes")
            self._open_schema()
        except (sqlite3.DatabaseError, StoreDamagedError) as exc:
            if isinstance(exc, sqlite3.DatabaseError) and not sqlite_damaged(exc):
                raise self._storage_error(exc) from exc
            self._set_aside_damaged(exc)
            self._open_schema()
        self.reindex_folders()
        self.repair_rows()
        if recover:
            self.recover_interrupted()

    def _emptied(self) -> bool:
        """Whether the index was cut to 0 bytes after holding runs: a backup or a run folder
        exists. (A new store's file is empty for a moment while its first process creates it:
        with nothing recorded yet, that is no loss.)"""
        try:
            if self.db_path.stat().st_size > 0:
                return False
        except FileNotFoundError:
            return False
        if (self.root / BACKUP_NAME).is_file():
            return True
        return any((p / "config.json").is_file() for p in (self.root / "runs").iterdir())

    def _open_schema(self) -> None:
        with self._connect() as db:
            db.executescript(_SCHEMA)
            self._add_missing_columns(db)
            # A file cut short or overwritten in the middle opens fine and fails on the first
            # read of a lost page: check every page now (~40 ms for 20 MB), not mid-page.
            verdict = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if verdict != "ok":
            raise StoreDamagedError(f"database disk image is malformed ({verdict})")

    def _notice(self, text: str) -> None:
        self.notices.append(text)
        print(f"warning: {text}", file=sys.stderr)

    # -- plumbing -------------------------------------------------------------------------
    def _storage_error(self, exc: BaseException) -> StudioError:
        """One clear line for a store that cannot be read or written."""
        return storage_error(exc, self.root) or StudioError(
            f"The run store {self.db_path} cannot be used: {exc}. Check the folder's disk and "
            "permissions."
        )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.db_path, timeout=30.0)
        except sqlite3.Error as exc:
            raise self._storage_error(exc) from exc
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            with db:  # one transaction, committed on success
                yield db
        except sqlite3.DatabaseError as exc:
            # A full or read-only disk reaches every caller as one line, not a traceback.
            error = storage_error(exc, self.root)
            if error is not None:
                raise error from exc
            if sqlite_damaged(exc):
                raise StoreDamagedError(
                    f"The run store {self.db_path} is damaged ({exc}). Close the studio and "
                    "open it again (or run any `python -m core` command): it keeps the damaged "
                    f"file as {DB_NAME}.damaged-<time>, restores {BACKUP_NAME} and re-adds every "
                    f"run from its folder. {_recovery_advice()}"
                ) from exc
            raise
        finally:
            db.close()

    @staticmethod
    def _add_missing_columns(db: sqlite3.Connection) -> None:
        """Bring a store made by an older version up to the current schema (columns only)."""
        wanted = sqlite3.connect(":memory:")
        wanted.executescript(_SCHEMA)
        # (a table an older store lacks is made whole by the schema script: no columns here)
        for table in ("runs", "epochs", "batches", "workers"):
            have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
            for _, name, kind, *_ in wanted.execute(f"PRAGMA table_info({table})"):
                if name not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        wanted.close()

    def _set_aside_damaged(self, exc: Exception) -> None:
        """Keep a damaged index for inspection and start again from the backup, if sound.

        Runs the backup does not know are re-added from their folders by ``reindex_folders``.
        """
        kept_path, restored = set_aside_damaged(self.db_path, self.root / BACKUP_NAME, "runs")
        kept = kept_path or self.db_path
        reason = exc.__cause__ if isinstance(exc, StoreDamagedError) and exc.__cause__ else exc
        self._notice(
            f"the run store {self.db_path} was damaged ({reason}); kept it as {kept.name} "
            + (
                f"and restored the last backup ({BACKUP_NAME}, refreshed after every finished run)"
                if restored
                else "and started a new index (there was no sound backup)"
            )
            + ", then re-added every run from its folder. Nothing needs doing; the damaged "
            "copy may be deleted."
        )

    def reindex_folders(self) -> list[str]:
        """Add run folders the index does not know (a lost or damaged ``runs.sqlite``).

        Each run folder keeps ``config.json`` and ``record.json`` (its row and epochs); a run
        that was active when the index was lost comes back ``interrupted``, so it can be
        resumed. Returns the ids added.
        """
        folders = self.root / "runs"
        candidates = [
            p.name
            for p in sorted(folders.iterdir())
            if not p.name.startswith(".") and (p / "config.json").is_file()
        ]
        if not candidates:
            return []
        with self._connect() as db:
            known = {r[0] for r in db.execute("SELECT run_id FROM runs")}
        added = []
        missing = sorted((r for r in candidates if r not in known), key=self._record_order)
        for run_id in missing:
            try:
                self._import_folder(run_id)
            except (OSError, ValueError, StudioError) as exc:  # one bad folder hides no other
                print(f"warning: run folder {run_id} was not re-added: {exc}", file=sys.stderr)
                continue
            added.append(run_id)
        return added

    def _record_order(self, run_id: str) -> tuple[float, float, str]:
        """Sort key of a run folder to re-add: its recorded number, creation time, then id."""
        try:
            record = json.loads((self.root / "runs" / run_id / RECORD_FILE).read_text())
            run = record.get("run") or {}
            seq, created = run.get("seq"), run.get("created_at")
        except (OSError, ValueError, AttributeError):
            seq = created = None
        return (
            float(seq) if isinstance(seq, int) else float("inf"),
            float(created) if isinstance(created, (int, float)) else float("inf"),
            run_id,
        )

    def _damaged_rows(self, db: sqlite3.Connection) -> list[tuple[str, int, str]]:
        """(run_id, seq, column) of rows whose JSON text cannot be parsed (as the readers do)."""
        found = []
        for row in db.execute(f"SELECT run_id, seq, {', '.join(JSON_COLUMNS)} FROM runs"):
            for column in JSON_COLUMNS:
                if not _loads_ok(row[column], must_be_object=column == "config_json"):
                    found.append((row["run_id"], row["seq"], column))
                    break
        return found

    def repair_rows(self) -> list[str]:
        """Rebuild rows whose JSON is damaged from their run folders; returns the ids repaired.

        A row whose folder is gone stays as it is (``list_runs`` leaves it out and says so).
        """
        with self._connect() as db:
            damaged = self._damaged_rows(db)
        repaired = []
        for run_id, seq, column in damaged:
            folder = self.root / "runs" / run_id
            where = f"run {run_id}'s entry in {self.db_path} (its {column} is not valid JSON)"
            if not (folder / "config.json").is_file():
                continue  # nothing to rebuild it from: ``list_runs`` reports it
            try:
                with self._connect() as db:
                    for table in ("batches", "epochs", "runs"):
                        db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
                self._import_folder(run_id, seq=seq, trust_json=False)
            except (OSError, ValueError, StudioError) as exc:
                self._notice(f"{where} is damaged and could not be rebuilt from {folder}: {exc}")
                continue
            repaired.append(run_id)
            self._notice(f"{where} was damaged; rebuilt it from {folder / RECORD_FILE}.")
        return repaired

    def _import_folder(self, run_id: str, seq: int | None = None, trust_json: bool = True) -> None:
        folder = self.root / "runs" / run_id
        config = RunConfig.from_json((folder / "config.json").read_text())
        record_path = folder / RECORD_FILE
        record: dict[str, Any] = (
            json.loads(record_path.read_text()) if record_path.is_file() else {}
        )
        row = dict(record.get("run") or {})
        epochs: list[dict[str, Any]] = list(record.get("epochs") or [])
        model = folder / "model.keras"
        row.update(
            run_id=run_id,
            config_json=config.to_json(indent=None),
            planned_epochs=row.get("planned_epochs") or config.planned_epochs,
            created_at=row.get("created_at") or folder.stat().st_mtime,
            stop_requested=0,
        )
        if not row.get("status"):
            # No record (written before records existed): a saved model means a finished run.
            row["status"] = COMPLETED if model.is_file() else INTERRUPTED
        waiting = row["status"] == QUEUED and not row.get("owner")  # for any worker: it still can
        if row["status"] in ACTIVE_STATUSES and not waiting and not owner_alive(row.get("owner")):
            row["status"] = INTERRUPTED
            row["error"] = "The run index was rebuilt from the run folder before it finished."
        if model.is_file():
            row.update(model_path=str(model), model_bytes=model.stat().st_size)
        if not trust_json:  # the record may have copied a damaged row: drop what cannot parse
            row = {
                k: v
                for k, v in row.items()
                if k not in JSON_COLUMNS or k == "config_json" or _loads_ok(v)
            }
        with self._connect() as db:
            columns = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
            recorded = row.get("seq")
            row = {k: v for k, v in row.items() if k in columns and k != "seq"}
            taken = (
                isinstance(recorded, int)
                and db.execute("SELECT 1 FROM runs WHERE seq = ?", (recorded,)).fetchone()
            )
            if seq is None and isinstance(recorded, int) and recorded > 0 and not taken:
                seq = recorded  # the number it had: its default name ("photos #7") stays
            if seq is None:
                seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM runs").fetchone()[0]
            names = ["seq", *row]
            db.execute(
                f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                (seq, *row.values()),
            )
            for epoch in epochs:
                self._insert_epoch(db, run_id, epoch)
            db.execute(_REFRESH_SUMMARY, (run_id, run_id, run_id))

    def _write_record(self, run_id: str) -> None:
        """The run folder's own copy of its row and epochs (what a lost index is rebuilt from)."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            epochs = db.execute(
                "SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,)
            ).fetchall()
        if row is None:
            return
        run = {k: row[k] for k in row.keys() if k != "stage_json"}  # seq: keeps its name
        folder = self.root / "runs" / run_id
        if not folder.is_dir():
            return
        try:
            record = {"run": run, "epochs": [dict(e) for e in epochs]}
            atomic_write_text(folder / RECORD_FILE, json.dumps(record, default=str))
        except OSError as exc:  # a copy: the index itself is written; say so, go on
            print(f"warning: could not write {folder / RECORD_FILE}: {exc}", file=sys.stderr)

    def backup(self) -> Path:
        """Copy the index with SQLite's online backup to ``runs.sqlite.bak`` (atomically)."""
        with self._connect() as db:
            return sqlite_backup(db, self.root / BACKUP_NAME)

    def run_dir(self, run_id: str) -> Path:
        """The artifact folder of a run (created on demand)."""
        path = self.root / "runs" / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- writing --------------------------------------------------------------------------
    def create_run(self, config: RunConfig, status: str = QUEUED, claimed: bool = True) -> str:
        """Register a new run (its config is written to ``config.json`` too); returns its id.

        ``claimed``: the run belongs to this process (its in-process queue trains it; no worker
        takes it). ``claimed=False`` queues it for any worker process (``claim_next``).
        """
        run_id = new_run_id()
        with self._connect() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM runs").fetchone()[0]
            db.execute(
                "INSERT INTO runs (run_id, seq, created_at, status, config_json, owner,"
                " planned_epochs) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    seq,
                    time.time(),
                    status,
                    config.to_json(indent=None),
                    process_token() if claimed else None,
                    config.planned_epochs,
                ),
            )
        atomic_write_text(self.run_dir(run_id) / "config.json", config.to_json() + "\n")
        return run_id

    def update(self, run_id: str, **values: Unpack[RunUpdate]) -> None:
        """Set columns of a run (``RunUpdate``); lists/dicts go to their ``*_json`` column."""
        unknown = sorted(set(values) - UPDATABLE_COLUMNS)
        if unknown:
            raise TypeError(
                f"RunStore.update got {', '.join(unknown)}, which are not run columns it sets. "
                f"Expected some of: {', '.join(sorted(UPDATABLE_COLUMNS))}."
            )
        cols: list[str] = []
        params: list[Any] = []
        for key, value in values.items():
            if isinstance(value, (list, dict)):
                key, value = f"{key}_json", json.dumps(value)
            cols.append(f"{key} = ?")
            params.append(value)
        with self._connect() as db:
            cur = db.execute(
                f"UPDATE runs SET {', '.join(cols)} WHERE run_id = ?", (*params, run_id)
            )
            if cur.rowcount == 0:
                raise RunNotFoundError(self._not_found(run_id))
        if "status" in values:  # the folder's record follows every change of status
            self._write_record(run_id)

    def mark_running(self, run_id: str) -> None:
        """The worker picked the run up (in this process)."""
        self.update(
            run_id, status=RUNNING, started_at=time.time(), owner=process_token(), error=None
        )

    def mark_finished(self, run_id: str, status: str, error: str | None = None) -> None:
        """Final status; ``duration_s`` covers data loading, training and saving."""
        row = self.get_run(run_id)
        now = time.time()
        started = row["started_at"] or now
        before = row["duration_s"] or 0.0  # time of earlier segments of a resumed run
        duration = round(before + now - started, 3)
        self.update(run_id, status=status, error=error, finished_at=now, duration_s=duration)
        try:
            self.backup()
        except (OSError, StudioError) as exc:  # the index is written; its copies can wait
            print(f"warning: could not back up the run store: {exc}", file=sys.stderr)

    def request_stop(self, run_id: str) -> None:
        """Ask the run to stop (seen by the worker within one batch)."""
        self.update(run_id, stop_requested=1)

    _EPOCH_KEYS = (
        "epoch", "phase", "phase_epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr",
        "images_per_s", "duration_s",
    )  # fmt: skip

    @classmethod
    def _insert_epoch(cls, db: sqlite3.Connection, run_id: str, record: Mapping[str, Any]) -> None:
        keys = cls._EPOCH_KEYS
        db.execute(
            f"INSERT OR REPLACE INTO epochs (run_id, {', '.join(keys)}, t)"
            f" VALUES (?, {', '.join('?' * len(keys))}, ?)",
            (run_id, *(record.get(k) for k in keys), record.get("t") or time.time()),
        )

    def add_epoch(self, run_id: str, record: Mapping[str, Any]) -> None:
        """Store one finished epoch (idempotent per epoch number) and refresh the summary."""
        with self._connect() as db:
            self._insert_epoch(db, run_id, {**record, "t": None})
            db.execute(_REFRESH_SUMMARY, (run_id, run_id, run_id))
        self._write_record(run_id)

    def add_batches(self, run_id: str, records: Sequence[Mapping[str, Any]]) -> None:
        """Store several batches in one transaction (a commit per batch would cost ~10 ms)."""
        keys = (
            "global_step", "phase", "epoch", "step", "steps_per_epoch", "loss", "accuracy", "lr",
            "images_per_s",
        )  # fmt: skip
        now = time.time()
        with self._connect() as db:
            db.executemany(
                f"INSERT OR REPLACE INTO batches (run_id, {', '.join(keys)}, t)"
                f" VALUES (?, {', '.join('?' * len(keys))}, ?)",
                [(run_id, *(r.get(k) for k in keys), r.get("t", now)) for r in records],
            )

    def truncate_after(self, run_id: str, epoch: int) -> None:
        """Forget epochs (and their batches) after ``epoch``: a resume redoes them."""
        with self._connect() as db:
            db.execute("DELETE FROM epochs WHERE run_id = ? AND epoch > ?", (run_id, epoch))
            db.execute("DELETE FROM batches WHERE run_id = ? AND epoch > ?", (run_id, epoch))
            db.execute(
                _REFRESH_SUMMARY,
                (run_id, run_id, run_id),
            )

    def last_step(self, run_id: str) -> int:
        """The highest recorded batch step (0 when none)."""
        with self._connect() as db:
            row = db.execute(
                "SELECT COALESCE(MAX(global_step), 0) FROM batches WHERE run_id = ?", (run_id,)
            ).fetchone()
        return int(row[0])

    def requeue(self, run_id: str, claimed: bool = True) -> None:
        """Put a stopped/interrupted/failed run back in the queue: owned by this process, or
        with ``claimed=False`` waiting for any worker process."""
        with self._connect() as db:
            # An interrupted run never recorded its duration: count its finished epochs' time.
            spent = db.execute(
                "SELECT COALESCE(SUM(duration_s), 0) FROM epochs WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
        row = self.get_run(run_id)
        self.update(
            run_id, status=QUEUED, owner=process_token() if claimed else None,
            stop_requested=0, error=None,
            finished_at=None, duration_s=row["duration_s"] or spent,
        )  # fmt: skip

    def recover_interrupted(self) -> list[str]:
        """Mark runs whose process is gone as ``interrupted``; returns their ids.

        Gone: the owner process is dead (same host: pid and start time), or the owner is a
        worker whose heartbeat is older than ``HEARTBEAT_STALE_S``. A queued run nobody claimed
        (``owner`` NULL) waits for a worker, whoever submitted it. Rows of dead workers are
        removed. Cheap (two reads when nothing is wrong): workers call it while idle, the
        dashboard on its polls, every CLI command when it opens the store.
        """
        now = time.time()
        host = socket.gethostname()
        with self._connect() as db:
            rows = db.execute(
                "SELECT run_id, status, owner FROM runs WHERE status IN (?, ?)"
                " AND owner IS NOT NULL",
                ACTIVE_STATUSES,
            ).fetchall()
            workers = {
                r["token"]: cast(WorkerRow, dict(r)) for r in db.execute("SELECT * FROM workers")
            }
        gone_workers = [t for t, w in workers.items() if not self._worker_alive(w, now, host)]
        lost: list[str] = []
        for r in rows:
            worker = workers.get(r["owner"])
            if worker is not None:
                alive = r["owner"] not in gone_workers
            else:  # an in-process queue (CLI train, tests) or an older version: the pid says
                alive = owner_alive(r["owner"])
            if not alive:
                lost.append(r["run_id"])
        interrupted = []
        for run_id in lost:
            with self._connect() as db:
                # Only if nothing moved meanwhile: a run that just finished stays finished.
                cur = db.execute(
                    "UPDATE runs SET status = ?, error = ?, finished_at = ?"
                    " WHERE run_id = ? AND status IN (?, ?) AND owner = ?",
                    (
                        INTERRUPTED,
                        "The process running this run ended before it finished.",
                        now,
                        run_id,
                        *ACTIVE_STATUSES,
                        next(r["owner"] for r in rows if r["run_id"] == run_id),
                    ),
                )
            if cur.rowcount:
                interrupted.append(run_id)
                self._write_record(run_id)
        if gone_workers:
            with self._connect() as db:
                db.executemany(
                    "DELETE FROM workers WHERE token = ? AND heartbeat_at = ?",
                    [(t, workers[t]["heartbeat_at"]) for t in gone_workers],
                )
        return interrupted

    # -- the queue of worker processes ----------------------------------------------------
    @staticmethod
    def _worker_alive(worker: WorkerRow, now: float, host: str) -> bool:
        """Whether a ``workers`` row stands for a live worker (or one being started)."""
        here = worker["host"] == host
        if worker["state"] == WORKER_STARTING:
            if now - worker["started_at"] > STARTING_GRACE_S:
                return False
            return not here or not worker["pid"] or pid_alive(worker["pid"])
        if now - worker["heartbeat_at"] > HEARTBEAT_STALE_S:
            return False  # frozen, or on another machine and gone
        return not here or owner_alive(worker["token"])

    @contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken at its start (``BEGIN IMMEDIATE``): what it reads cannot
        change before it writes, in any process."""
        with self._connect() as db:
            db.isolation_level = None  # the transaction below is ours, not the module's
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def pending(self) -> list[str]:
        """Queued runs no process has claimed, in the order workers take them."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT run_id FROM runs WHERE status = ? AND owner IS NULL ORDER BY seq", (QUEUED,)
            ).fetchall()
        return [r[0] for r in rows]

    def claim_next(self, token: str) -> str | None:
        """Take the oldest unclaimed queued run for worker ``token``: it becomes ``running``,
        owned by the worker. Atomic across processes: two workers never take the same run.
        Returns its id, or None when nothing waits."""
        with self._connect() as db:  # a cheap read first: an idle worker polls this
            if not db.execute(
                "SELECT 1 FROM runs WHERE status = ? AND owner IS NULL LIMIT 1", (QUEUED,)
            ).fetchone():
                return None
        now = time.time()
        with self._immediate() as db:
            row = db.execute(
                "SELECT run_id FROM runs WHERE status = ? AND owner IS NULL ORDER BY seq LIMIT 1",
                (QUEUED,),
            ).fetchone()
            if row is None:
                return None
            run_id = str(row[0])
            cur = db.execute(
                "UPDATE runs SET status = ?, owner = ?, started_at = ?, error = NULL"
                " WHERE run_id = ? AND status = ? AND owner IS NULL",
                (RUNNING, token, now, run_id, QUEUED),
            )
            if cur.rowcount != 1:
                return None
            db.execute(
                "UPDATE workers SET state = ?, run_id = ?, heartbeat_at = ? WHERE token = ?",
                (WORKER_RUNNING, run_id, now, token),
            )
        self._write_record(run_id)
        return run_id

    def cancel_queued(self, run_id: str) -> bool:
        """Stop a run that is still queued and unclaimed (atomically); False if a process holds
        it already (then ``request_stop`` reaches it)."""
        with self._connect() as db:
            cur = db.execute(
                "UPDATE runs SET status = ?, stop_requested = 1, finished_at = ?"
                " WHERE run_id = ? AND status = ? AND owner IS NULL",
                (STOPPED, time.time(), run_id, QUEUED),
            )
        if cur.rowcount:
            self._write_record(run_id)
        return bool(cur.rowcount)

    def register_worker(
        self, token: str, device: str | None = None, replaces: str | None = None
    ) -> None:
        """Add this worker process's row, replacing the ``starting`` row its starter reserved
        (``replaces``, from ``reserve_worker_start``)."""
        now = time.time()
        pid = int(token.partition(":")[0])
        with self._connect() as db:
            db.execute(
                "DELETE FROM workers WHERE state = ? AND (pid = ? OR token = ?)",
                (WORKER_STARTING, pid, replaces),
            )
            db.execute(
                "INSERT OR REPLACE INTO workers (token, pid, host, device, runs_dir, state,"
                " started_at, heartbeat_at, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                (token, pid, socket.gethostname(), device, str(self.root), WORKER_IDLE, now, now),
            )

    def heartbeat(self, token: str) -> bool:
        """Say the worker is alive; False if its row is gone (removed as dead: register again)."""
        with self._connect() as db:
            cur = db.execute(
                "UPDATE workers SET heartbeat_at = ? WHERE token = ?", (time.time(), token)
            )
        return bool(cur.rowcount)

    def hold_run(self, token: str, run_id: str) -> None:
        """Record that worker ``token`` holds ``run_id`` (again, after re-registering)."""
        with self._connect() as db:
            db.execute(
                "UPDATE workers SET state = ?, run_id = ? WHERE token = ?",
                (WORKER_RUNNING, run_id, token),
            )

    def release_worker_run(self, token: str) -> None:
        """The worker let go of its run (recorded, checkpoint removed): it is idle again."""
        with self._connect() as db:
            db.execute(
                "UPDATE workers SET state = ?, run_id = NULL, heartbeat_at = ? WHERE token = ?",
                (WORKER_IDLE, time.time(), token),
            )

    def remove_worker(self, token: str) -> None:
        """Remove a worker's row (it exits, or it never started)."""
        with self._connect() as db:
            db.execute("DELETE FROM workers WHERE token = ?", (token,))

    def workers(self) -> list[WorkerRow]:
        """The rows of the ``workers`` table (live or not: see ``live_workers``)."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM workers ORDER BY started_at").fetchall()
        return [cast(WorkerRow, dict(r)) for r in rows]

    def live_workers(self) -> list[WorkerRow]:
        """Workers alive now (fresh heartbeat, live process), those being started included."""
        now, host = time.time(), socket.gethostname()
        return [w for w in self.workers() if self._worker_alive(w, now, host)]

    def worker_holds(self, run_id: str) -> bool:
        """Whether a live worker still holds the run (it may be cleaning up after finishing)."""
        now, host = time.time(), socket.gethostname()
        with self._connect() as db:
            rows = db.execute("SELECT * FROM workers WHERE run_id = ?", (run_id,)).fetchall()
        return any(self._worker_alive(cast(WorkerRow, dict(r)), now, host) for r in rows)

    def reserve_worker_start(self) -> str | None:
        """Reserve the start of a worker when no live worker (or one being started) serves this
        folder: a ``starting`` row, written atomically, so that two pages (or processes)
        polling at once start one worker, not two. Returns the row's token, else None."""
        now, host = time.time(), socket.gethostname()
        with self._immediate() as db:
            for r in db.execute("SELECT * FROM workers").fetchall():
                if self._worker_alive(cast(WorkerRow, dict(r)), now, host):
                    return None
            token = f"{WORKER_STARTING}:{secrets.token_hex(4)}"
            db.execute(
                "INSERT INTO workers (token, pid, host, device, runs_dir, state, started_at,"
                " heartbeat_at, run_id) VALUES (?, 0, ?, NULL, ?, ?, ?, ?, NULL)",
                (token, host, str(self.root), WORKER_STARTING, now, now),
            )
        return token

    def worker_started(self, token: str, pid: int) -> None:
        """The reserved worker's process exists: its pid (so a crash at start is seen)."""
        with self._connect() as db:
            db.execute("UPDATE workers SET pid = ? WHERE token = ?", (pid, token))

    def rename(self, run_id: str, name: str) -> str:
        """Give a run a name of the user's (trimmed, capped); returns the name stored.

        Kept in the ``name`` column and in the run folder's record, so a rebuilt index keeps it.
        """
        clean = clean_run_name(name)
        self.update(run_id, name=clean)
        self._write_record(run_id)
        return clean

    def delete_run(self, run_id: str) -> None:
        """Remove a finished run and its files; a queued or running run is refused."""
        status = self.get_run(run_id)["status"]
        if status in ACTIVE_STATUSES:
            raise StudioError(
                f"Run {run_id} is {status}, so it cannot be deleted. Stop it first and delete it "
                "once it shows as stopped."
            )
        folder = self.root / "runs" / run_id
        # Hide the folder first, so that no reader re-adds it from its files meanwhile.
        trash = folder.with_name(f".deleting-{run_id}")
        if folder.exists():
            os.replace(folder, trash)
        with self._connect() as db:
            for table in ("batches", "epochs", "runs"):
                db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
        shutil.rmtree(trash, ignore_errors=True)

    # -- reading --------------------------------------------------------------------------
    def _not_found(self, run_id: str) -> str:
        return (
            f"No run {run_id!r} in {self.root}: it was deleted, or it belongs to another runs "
            "folder. The runs of this folder are listed on the Home page and by "
            "`python -m core runs`."
        )

    def get_run(self, run_id: str) -> RunRow:
        """The raw row of a run as a dict."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(self._not_found(run_id))
        return cast(RunRow, dict(row))

    def config(self, run_id: str) -> RunConfig:
        """The run's config."""
        return RunConfig.from_json(self.get_run(run_id)["config_json"])

    def status(self, run_id: str) -> Status:
        """The run's status."""
        return Status(self.get_run(run_id)["status"])

    def stop_requested(self, run_id: str) -> bool:
        """Whether someone asked this run to stop."""
        return bool(self.get_run(run_id)["stop_requested"])

    def list_runs(self, statuses: tuple[str, ...] | None = None) -> list[RunSummary]:
        """Runs, newest first, as summaries (see ``RunSummary``).

        A row whose JSON is damaged is left out and reported in ``notices`` (once): one broken
        row must not hide the other runs.
        """
        query = "SELECT * FROM runs"
        params: tuple[str, ...] = ()
        if statuses:
            query += f" WHERE status IN ({', '.join('?' * len(statuses))})"
            params = tuple(statuses)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY seq DESC", params).fetchall()
        summaries = []
        for r in rows:
            try:
                summaries.append(self._summary(cast(RunRow, dict(r))))
            except StoreDamagedError as exc:
                if str(exc) not in self.notices:
                    self._notice(str(exc))
        return summaries

    def run_bytes(self, run_id: str) -> int:
        """Bytes a run's folder takes on disk (model, checkpoint, logs, exports)."""
        self.get_run(run_id)
        return _folder_size(self.root / "runs" / run_id)

    def disk_usage(self) -> int:
        """Bytes the runs take on disk: every run folder plus the index and its copies."""
        index = 0
        for path in self.root.glob(DB_NAME + "*"):  # the index, its WAL, backup, damaged copies
            try:
                index += path.stat().st_size
            except OSError:  # the WAL is checkpointed away meanwhile
                continue
        return _folder_size(self.root / "runs") + index

    def epochs(self, run_id: str) -> list[EpochRecord]:
        """Per-epoch metrics in order."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,)
            ).fetchall()
        return [cast(EpochRecord, dict(r)) for r in rows]

    def batches(self, run_id: str, after_step: int = 0) -> list[BatchRecord]:
        """Per-batch metrics with ``global_step > after_step``, in order."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM batches WHERE run_id = ? AND global_step > ? ORDER BY global_step",
                (run_id, after_step),
            ).fetchall()
        return [cast(BatchRecord, dict(r)) for r in rows]

    def batch_sample(self, run_id: str, points: int, tail: int = 0) -> list[BatchRecord]:
        """Per-batch metrics thinned for a live view, in order: at most ``points`` rows evenly
        spaced over the run's global steps (the first row always among them) plus the last
        ``tail`` rows, exactly; every row when the run has no more than ``points + tail``.

        What a page following a run reads instead of ``batches`` (which turns thousands of
        rows into dicts each poll): ``batch_sample(run_id, 1, ETA_WINDOW)`` is all the progress
        summary needs (the first row and the recent ones; this costs about the same however
        long the run), a few hundred evenly spaced rows are enough for a chart.
        """
        points, tail = max(points, 0), max(tail, 0)
        with self._connect() as db:
            lo, hi, count = db.execute(
                "SELECT MIN(global_step), MAX(global_step), COUNT(*) FROM batches WHERE run_id = ?",
                (run_id,),
            ).fetchone()
            if not count:
                return []
            if count <= points + tail:
                rows = db.execute(
                    "SELECT * FROM batches WHERE run_id = ? ORDER BY global_step", (run_id,)
                ).fetchall()
                return [cast(BatchRecord, dict(r)) for r in rows]
            if points == 1:
                spaced = db.execute(
                    "SELECT * FROM batches WHERE run_id = ? ORDER BY global_step LIMIT 1",
                    (run_id,),
                ).fetchall()
            elif points > 1:
                # One row per stretch of ``stride`` steps: the first of it (SQLite fills the
                # bare columns of a MIN() aggregate from the row holding the minimum). Steps,
                # not row numbers: a row may cover several steps, and the x axis is in steps.
                stride = -(-(hi - lo + 1) // points)
                spaced = db.execute(
                    "SELECT *, MIN(global_step) AS first_step FROM batches WHERE run_id = ?"
                    " GROUP BY (global_step - ?) / ?",
                    (run_id, lo, stride),
                ).fetchall()
            else:
                spaced = []
            last = db.execute(
                "SELECT * FROM batches WHERE run_id = ? ORDER BY global_step DESC LIMIT ?",
                (run_id, tail),
            ).fetchall()
        kept: dict[int, BatchRecord] = {}
        for row in (*spaced, *last):
            record = {k: row[k] for k in row.keys() if k != "first_step"}
            kept[record["global_step"]] = cast(BatchRecord, record)
        return [kept[step] for step in sorted(kept)]

    def problems(self) -> list[str]:
        """What a page should tell the user about the store, now: what was repaired or set
        aside when it opened, and each row that is still unreadable (with the way out)."""
        found = list(self.notices)
        with self._connect() as db:
            damaged = self._damaged_rows(db)
            for run_id, _seq, column in damaged:
                row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
                if row is not None:
                    text = str(self._damaged_row(cast(RunRow, dict(row)), column))
                    if text not in found:
                        found.append(text)
        return found

    def _damaged_row(self, row: RunRow, column: str) -> StoreDamagedError:
        run_id = row["run_id"]
        folder = self.root / "runs" / run_id
        what = f"run {run_id}'s entry in {self.db_path} is damaged (its {column} is not valid JSON)"
        if (folder / "config.json").is_file():
            return StoreDamagedError(
                f"{what}. Close the studio and open it again (or run any `python -m core` "
                f"command): it rebuilds the entry from {folder / RECORD_FILE}. "
                f"{_recovery_advice()}"
            )
        return StoreDamagedError(
            f"{what} and its folder {folder} is gone, so it cannot be rebuilt; the other runs are "
            f"fine. Delete it (`python -m core delete {run_id}`), or, with the studio closed, "
            f"copy {BACKUP_NAME} over {DB_NAME}."
        )

    def _loads(self, row: RunRow, column: str) -> Any:
        """A JSON column of ``row``; StoreDamagedError naming the file when it cannot parse."""
        text = cast(Mapping[str, Any], row).get(column)
        if not text:
            return None
        if not _loads_ok(text, must_be_object=column == "config_json"):
            raise self._damaged_row(row, column)
        return json.loads(text)

    def _summary(self, row: RunRow) -> RunSummary:
        config = self._loads(row, "config_json") or {}
        if not isinstance(config, dict):
            raise self._damaged_row(row, "config_json")
        name = row.get("name") or config.get("name")
        return {
            "run_id": row["run_id"],
            "status": Status(row["status"]),
            "name": _cap(str(name).strip())
            if name and str(name).strip()
            else default_run_name(config.get("data"), row["seq"]),
            "backbone": config.get("backbone"),
            "mode": config.get("mode"),
            "data": config.get("data"),
            "epochs_done": row["epochs_done"],
            "planned_epochs": row["planned_epochs"],
            "best_val_accuracy": row["best_val_accuracy"],
            "created_at": row["created_at"],
            "duration_s": row["duration_s"],
            "error": row["error"],
        }

    def split(self, run_id: str) -> RunSplit | None:
        """The training and validation images the run recorded (``None``: none recorded)."""
        self.get_run(run_id)  # an unknown run is named
        return read_split(self.run_dir(run_id))

    def result(self, run_id: str, split: bool = False) -> RunResult:
        """Everything about a run: the object ``train --json`` and ``show --json`` print;
        ``split``: with the images it trained and validated on (``split.json``)."""
        row = self.get_run(run_id)
        epochs = self.epochs(run_id)
        history: History = {  # the keys in HISTORY_KEYS order, then "epoch"
            "loss": [e["loss"] for e in epochs],
            "accuracy": [e["accuracy"] for e in epochs],
            "val_loss": [e["val_loss"] for e in epochs],
            "val_accuracy": [e["val_accuracy"] for e in epochs],
            "lr": [e["lr"] for e in epochs],
            "phase": [e["phase"] for e in epochs],
            "epoch": [e["epoch"] for e in epochs],
        }

        def loads(column: str) -> Any:
            return self._loads(row, column)

        out: RunResult = {
            **self._summary(row),
            "config": loads("config_json"),
            "history": history,
            "class_names": loads("class_names_json") or [],
            "train_images": row["train_images"],
            "val_images": row["val_images"],
            "skipped_files": loads("skipped_files_json") or [],
            "dataset": loads("dataset_json"),
            "phases": loads("phases_json") or [],
            "stage": loads("stage_json"),
            "timings": loads("timings_json"),
            "started_at": row["started_at"],
            "finished_at": row["finished_at"],
            "model_path": row["model_path"],
            "model_bytes": row["model_bytes"],
            "device": row.get("device"),
            "replicas": row.get("replicas"),
            "ray": loads("ray_json"),
            "run_dir": str(self.root / "runs" / run_id),
        }
        if split:
            recorded = read_split(self.run_dir(run_id))
            out["split"] = None if recorded is None else recorded.to_json()
        return out


def saved_model_path(store: RunStore, run_id: str) -> Path:
    """The run's ``model.keras``; a clear error when the run never saved one."""
    row = store.get_run(run_id)
    path = Path(row["model_path"] or "")
    if not row["model_path"] or not path.is_file():
        raise StudioError(
            f"Run {run_id} has no saved model (status: {row['status']}). Only runs that "
            "finished at least one epoch have one; pick a completed run."
        )
    return path
