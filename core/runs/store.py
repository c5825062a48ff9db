"""The run store: SQLite (WAL) plus one artifact folder per run.

It is the one source of truth for the pages and the CLI: a worker thread writes progress here
while it trains, and readers (a page's fragment, ``python -m core runs``) read it back, possibly
from another process. Each call opens its own short-lived connection so any thread may use the
store.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict, cast

from core.config import RunConfig, Status
from core.errors import RunNotFoundError, StudioError, storage_error
from core.files import atomic_path, atomic_write_text
from core.paths import runs_root

# Aliases of the ``Status`` members: ``from core.runs.store import QUEUED`` and the like work.
QUEUED, RUNNING, COMPLETED = Status.QUEUED, Status.RUNNING, Status.COMPLETED
STOPPED, FAILED, INTERRUPTED = Status.STOPPED, Status.FAILED, Status.INTERRUPTED
ACTIVE_STATUSES: tuple[Status, ...] = (QUEUED, RUNNING)
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "phase")  # then "epoch"
DB_NAME = "runs.sqlite"
BACKUP_NAME = "runs.sqlite.bak"  # SQLite's online backup, refreshed after every finished run
RECORD_FILE = "record.json"  # each run folder's own copy of its row and epochs

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
    model_bytes INTEGER
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
    run_dir: str


# Keeps the runs row's summary columns in step with its epochs.
_REFRESH_SUMMARY = (
    "UPDATE runs SET epochs_done = (SELECT COUNT(*) FROM epochs WHERE run_id = ?),"
    " best_val_accuracy = (SELECT MAX(val_accuracy) FROM epochs WHERE run_id = ?)"
    " WHERE run_id = ?"
)


def _process_token(pid: int | None = None) -> str:
    """Identify a live process robustly: pid plus its start time (guards against pid reuse)."""
    pid = os.getpid() if pid is None else pid
    start = ""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            # Field 22 is starttime; field 2 (the command) may hold spaces, so split after ')'.
            start = fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        pass
    return f"{pid}:{start}"


def _owner_alive(owner: str | None) -> bool:
    if not owner:
        return False
    pid_text, _, _ = owner.partition(":")
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return _process_token(pid) == owner


def _is_damaged(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite says the file itself is no database (as opposed to busy or unwritable)."""
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


def _valid_database(path: Path) -> bool:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return db.execute("PRAGMA quick_check").fetchone()[0] == "ok" and bool(
                db.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone()
            )
        finally:
            db.close()
    except sqlite3.Error:
        return False


def new_run_id() -> str:
    """Sortable, readable and unique: ``20261121-210501-3fa2c1``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


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
        try:
            self._open_schema()
        except sqlite3.DatabaseError as exc:
            if not _is_damaged(exc):
                raise self._storage_error(exc) from exc
            self._set_aside_damaged(exc)
            self._open_schema()
        self.reindex_folders()
        if recover:
            self.recover_interrupted()

    def _open_schema(self) -> None:
        with self._connect() as db:
            db.executescript(_SCHEMA)
            self._add_missing_columns(db)

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
        except sqlite3.OperationalError as exc:
            # A full or read-only disk reaches every caller as one line, not a traceback.
            error = storage_error(exc, self.root)
            if error is None:
                raise
            raise error from exc
        finally:
            db.close()

    @staticmethod
    def _add_missing_columns(db: sqlite3.Connection) -> None:
        """Bring a store made by an older version up to the current schema (columns only)."""
        wanted = sqlite3.connect(":memory:")
        wanted.executescript(_SCHEMA)
        for table in ("runs", "epochs", "batches"):
            have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
            for _, name, kind, *_ in wanted.execute(f"PRAGMA table_info({table})"):
                if name not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        wanted.close()

    def _set_aside_damaged(self, exc: sqlite3.DatabaseError) -> None:
        """Keep a damaged index for inspection and start again from the backup, if sound.

        Runs the backup does not know are re-added from their folders by ``reindex_folders``.
        """
        stamp = time.strftime("%Y%m%d-%H%M%S")
        kept = self.db_path.with_name(f"{DB_NAME}.damaged-{stamp}")
        os.replace(self.db_path, kept)
        for suffix in ("-wal", "-shm"):  # they belong to the damaged file, not to the backup
            side = self.db_path.with_name(DB_NAME + suffix)
            if side.exists():
                os.replace(side, kept.with_name(kept.name + suffix))
        backup = self.root / BACKUP_NAME
        restored = _valid_database(backup)
        if restored:
            shutil.copyfile(backup, self.db_path)
        print(
            f"warning: the run store {self.db_path} was damaged ({exc}); kept it as {kept.name} "
            + ("and restored the last backup" if restored else "and started a new index")
            + ", then re-added runs from their folders.",
            file=sys.stderr,
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
        for run_id in candidates:
            if run_id in known:
                continue
            try:
                self._import_folder(run_id)
            except (OSError, ValueError, StudioError) as exc:  # one bad folder hides no other
                print(f"warning: run folder {run_id} was not re-added: {exc}", file=sys.stderr)
                continue
            added.append(run_id)
        return added

    def _import_folder(self, run_id: str) -> None:
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
        if row["status"] in ACTIVE_STATUSES and not _owner_alive(row.get("owner")):
            row["status"] = INTERRUPTED
            row["error"] = "The run index was rebuilt from the run folder before it finished."
        if model.is_file():
            row.update(model_path=str(model), model_bytes=model.stat().st_size)
        with self._connect() as db:
            columns = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
            row = {k: v for k, v in row.items() if k in columns and k != "seq"}
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
        run = {k: row[k] for k in row.keys() if k not in ("seq", "stage_json")}
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
        target = self.root / BACKUP_NAME
        with atomic_path(target) as tmp, self._connect() as db:
            copy = sqlite3.connect(tmp)
            try:
                db.backup(copy)
            finally:
                copy.close()
        return target

    def run_dir(self, run_id: str) -> Path:
        """The artifact folder of a run (created on demand)."""
        path = self.root / "runs" / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- writing --------------------------------------------------------------------------
    def create_run(self, config: RunConfig, status: str = QUEUED) -> str:
        """Register a new run (its config is written to ``config.json`` too); returns its id."""
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
                    _process_token(),
                    config.planned_epochs,
                ),
            )
        atomic_write_text(self.run_dir(run_id) / "config.json", config.to_json() + "\n")
        return run_id

    def update(self, run_id: str, **values: Any) -> None:
        """Set columns of a run; lists/dicts go to their ``*_json`` column."""
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
            run_id, status=RUNNING, started_at=time.time(), owner=_process_token(), error=None
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

    def requeue(self, run_id: str) -> None:
        """Put a stopped/interrupted/failed run back in the queue (owned by this process)."""
        with self._connect() as db:
            # An interrupted run never recorded its duration: count its finished epochs' time.
            spent = db.execute(
                "SELECT COALESCE(SUM(duration_s), 0) FROM epochs WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
        row = self.get_run(run_id)
        self.update(
            run_id, status=QUEUED, owner=_process_token(), stop_requested=0, error=None,
            finished_at=None, duration_s=row["duration_s"] or spent,
        )  # fmt: skip

    def recover_interrupted(self) -> list[str]:
        """Mark runs left queued/running by a dead process as ``interrupted``; returns their ids."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT run_id, owner FROM runs WHERE status IN (?, ?)", ACTIVE_STATUSES
            ).fetchall()
        dead = [r["run_id"] for r in rows if not _owner_alive(r["owner"])]
        for run_id in dead:
            self.update(
                run_id,
                status=INTERRUPTED,
                error="The process running this run ended before it finished.",
                finished_at=time.time(),
            )
        return dead

    def delete_run(self, run_id: str) -> None:
        """Remove a finished run and its artifacts."""
        self.get_run(run_id)
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
        """Runs, newest first, as summaries (see ``RunSummary``)."""
        query = "SELECT * FROM runs"
        params: tuple[str, ...] = ()
        if statuses:
            query += f" WHERE status IN ({', '.join('?' * len(statuses))})"
            params = tuple(statuses)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY seq DESC", params).fetchall()
        return [self._summary(cast(RunRow, dict(r))) for r in rows]

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

    def _summary(self, row: RunRow) -> RunSummary:
        config = json.loads(row["config_json"])
        return {
            "run_id": row["run_id"],
            "status": Status(row["status"]),
            "name": config.get("name") or "",
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

    def result(self, run_id: str) -> RunResult:
        """Everything about a run: the object ``train --json`` and ``show --json`` print."""
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

        def loads(text: str | None) -> Any:
            return json.loads(text) if text else None

        return {
            **self._summary(row),
            "config": json.loads(row["config_json"]),
            "history": history,
            "class_names": loads(row["class_names_json"]) or [],
            "train_images": row["train_images"],
            "val_images": row["val_images"],
            "skipped_files": loads(row["skipped_files_json"]) or [],
            "dataset": loads(row["dataset_json"]),
            "phases": loads(row["phases_json"]) or [],
            "stage": loads(row["stage_json"]),
            "timings": loads(row["timings_json"]),
            "started_at": row["started_at"],
            "finished_at": row["finished_at"],
            "model_path": row["model_path"],
            "model_bytes": row["model_bytes"],
            "run_dir": str(self.root / "runs" / run_id),
        }
