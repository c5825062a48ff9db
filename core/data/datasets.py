"""Managed datasets: named collections of labelled images the studio owns and edits.

Each dataset lives in ``$TRANSFER_STUDIO_HOME/datasets/<NAME>/``:

* ``dataset.sqlite``: classes, images (content hash, class, excluded flag, original file name)
  and the edit history (WAL mode; every edit is one ``BEGIN IMMEDIATE`` transaction, so edits
  from two sessions are applied one after the other and both are kept);
* ``images/<class>/<id><ext>``: the images in use, a normal folder of class subfolders that
  the existing loader reads (``dataset:NAME`` resolves to it);
* ``excluded/<id><ext>``: images set aside (never deleted; ``restore`` brings them back);
* ``removed/<id><ext>``: copies taken out by undoing an addition (kept, never deleted).

An image can also be *pinned* to a split (``pin``: training or validation), an edit like the
others: the loader's split of ``dataset:NAME`` (``core.data.index.stratified_split``) never puts
an image pinned to training into validation (how a near-copy across the split is moved to one
side), and always validates on one pinned to validation.

Image ids are the first 12 hex digits of the image's SHA-256 (longer only on a collision), so
the same picture has the same id wherever it is added; an id names one image in one dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import stat
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.data.images import (
    IMAGE_EXTENSIONS,
    MAX_FILE_BYTES,
    NotRegularFileError,
    check_image,
    open_regular_file,
)
from core.data.layout import unsafe_name_characters
from core.data.names import bidi_controls, describe_character
from core.data.sources import (
    DATASET_REPAIRS,
    DATASET_SPLIT_PINS,
    MANAGED_BACKUP,
    MANAGED_DB,
    MANAGED_IMAGES_DIR,
    managed_dataset_folder,
    managed_dataset_names,
    managed_datasets_root,
    resolve_source,
)
from core.errors import DataError, StorageError, StudioError, storage_error
from core.files import (
    discard_folder,
    set_aside_damaged,
    sqlite_backup,
    sqlite_damaged,
)

DB_NAME = MANAGED_DB
IMAGES_DIR = MANAGED_IMAGES_DIR
EXCLUDED_DIR = "excluded"
REMOVED_DIR = "removed"
STAGING_DIR = ".staging"  # hidden: never mistaken for data
BACKUP_NAME = MANAGED_BACKUP  # SQLite's online backup of the index, refreshed after every edit
EDIT_MARKER = ".editing-"  # + a unique suffix: an edit that moves files is under way
REPAIR_LOCK = ".repair.lock"  # one session at a time sets a damaged index aside
STAGING_GRACE_S = 24 * 3600  # where no file lock tells a live add from a dead one
RENAME_PREFIX = ".rename-"  # a class folder on its way to a new name
LOCK_GRACE_S = 60  # a lock file with no staging folder is left alone this long (being set up)
ID_LENGTH = 12
MAX_NAME = 64
BUSY_TIMEOUT_MS = 30_000  # another session's edit holds the write lock for at most a few seconds
# Folder names the loader reads as a train/validation split, not as a class.
SPLITS = ("train", "val")  # what an image can be pinned to
_SPLIT_WORDS = {"train": "training", "val": "validation"}
RESERVED_CLASS_NAMES = frozenset({"train", "val", "validation", "test"})
_FORMAT_EXT = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp"}
_FORMAT_EXT["TIFF"] = ".tif"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS classes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS classes_live_name ON classes(name_key) WHERE deleted = 0;
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    class_id INTEGER NOT NULL REFERENCES classes(id),
    ext TEXT NOT NULL,
    original_name TEXT NOT NULL,
    excluded INTEGER NOT NULL DEFAULT 0,
    reviewed INTEGER NOT NULL DEFAULT 0,
    added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pins (
    id TEXT PRIMARY KEY,
    split TEXT NOT NULL CHECK (split IN ('train', 'val'))
);
CREATE TABLE IF NOT EXISTS edits (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    action TEXT NOT NULL,
    summary TEXT NOT NULL,
    undo TEXT NOT NULL,
    undone_at REAL
);
"""


# --------------------------------------------------------------------------- names


def datasets_root() -> Path:
    """Folder holding one sub-folder per managed dataset (created on demand)."""
    return managed_datasets_root()


def _check_name(name: object, what: str) -> str:
    """``name`` stripped, or a DataError saying what is wrong with it and how to fix it."""
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"The {what} name is empty. Type a name, e.g. 'cats'.")
    text = name.strip()
    problem = None
    if "/" in text or "\\" in text:
        problem = "contains a slash"
    elif text in (".", ".."):
        problem = "is a reserved folder name"
    elif text.startswith("."):
        problem = "starts with a dot (such folders are hidden)"
    elif unsafe_name_characters(text):
        problem = "contains a line break or control character"
    elif bidi_controls(text):
        shown = ", ".join(dict.fromkeys(map(describe_character, bidi_controls(text))))
        raise DataError(
            f"The {what} name {text!r} contains the invisible text-direction character {shown}, "
            "which makes a name read differently from what it is. Type the name again without "
            "it (it often comes with text copied from a web page or document), e.g. 'cats'."
        )
    elif len(text) > MAX_NAME:
        problem = f"is {len(text)} characters long (at most {MAX_NAME})"
    if problem is None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            problem = "is not valid text"
    if problem:
        raise DataError(
            f"The {what} name {text!r} {problem}. Use plain text on one line without '/', "
            "'\\' or a leading dot, e.g. 'cats'."
        )
    return text


def check_dataset_name(name: object) -> str:
    """A valid dataset name (stripped), else a DataError explaining the rule."""
    return _check_name(name, "dataset")


def check_class_name(name: object) -> str:
    """A valid class name (stripped), else a DataError explaining the rule."""
    text = _check_name(name, "class")
    if text.casefold() in RESERVED_CLASS_NAMES:
        raise DataError(
            f"The class name {text!r} is reserved: a folder called train, val, validation or "
            "test is read as a data split, not a class. Choose another name, e.g. "
            f"'{text}_images'."
        )
    return text


def suggest_name(source: str) -> str:
    """The dataset name a source suggests: ``photos.zip`` → ``photos``, ``builtin:pets`` →
    ``pets``, an uploaded zip → the name the user dropped (never ``upload-<hash>``)."""
    from core.data.names import display_name

    shown = display_name(source, escape=False)
    stem, ext = os.path.splitext(shown)
    if ext.lower() == ".zip":
        shown = stem
    shown = shown.replace("/", "-").replace("\\", "-").strip().lstrip(".").strip()
    bad = {*unsafe_name_characters(shown), *bidi_controls(shown)}
    shown = "".join(ch for ch in shown if ch not in bad)[:MAX_NAME].strip()
    return shown or "dataset"


def dataset_names() -> list[str]:
    """Names of the managed datasets, sorted case-insensitively."""
    return managed_dataset_names()


def dataset_path(name: str) -> Path:
    """The folder of an existing dataset ``name``; DataError listing the datasets if unknown.

    Only a new name must follow every rule: one stored before a rule existed still opens.
    """
    return managed_dataset_folder(name)


def images_folder(name: str) -> Path:
    """The class-subfolder folder of dataset ``name`` (what ``dataset:NAME`` trains on)."""
    return resolve_source(f"dataset:{dataset_path(name).name}")


# --------------------------------------------------------------------------- results


@dataclass
class ImageInfo:
    """One image of a dataset, as ``show``/``images`` report it."""

    id: str
    label: str
    path: str
    original_name: str
    excluded: bool
    reviewed: bool


@dataclass
class AddResult:
    """What ``add_images`` did: ids added, exact duplicates and files skipped, with reasons."""

    added: list[str] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (CLI ``--json``, pages)."""
        return asdict(self)


@dataclass
class _Staged:
    file: Path
    sha: str
    ext: str
    original: str  # the file name kept with the image
    source: str  # where it came from, for messages


# --------------------------------------------------------------------------- the dataset


class Dataset:
    """One managed dataset opened on its own SQLite connection (one per session or thread)."""

    def __init__(self, name: str) -> None:
        self.folder = dataset_path(name)
        self.name = self.folder.name
        self._moved: list[tuple[Path, Path]] = []  # (to, from) of this edit's file moves
        self._marker: Path | None = None  # this session's edit-under-way marker
        # What was wrong with the dataset and what was done about it, for the pages to show
        # (the CLI prints the same lines on stderr as they happen).
        self.notices: list[str] = []
        self._repair: tuple[str, Path | None, bool] = ("", None, False)  # see _open_index
        self._db, repaired = self._open_index()
        try:
            self._recover(repaired)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ opening

    def _open_index(self) -> tuple[sqlite3.Connection, str | None]:
        """The index's connection, and why it had to be restored or rebuilt (None if sound).

        A damaged, emptied or lost index is kept aside as ``dataset.sqlite.damaged-<time>``
        and replaced by its backup if that is sound, else by a new one that ``_recover``
        fills from the images folder.
        """
        path = self.folder / DB_NAME
        try:
            lock = _hold_lock(self.folder / REPAIR_LOCK)
        except OSError:  # a read-only folder: nothing could be repaired in it anyway
            lock = None
        try:
            problem = _index_problem(path)
            if problem is None:
                try:
                    return _connect_checked(path), None
                except sqlite3.DatabaseError as exc:
                    if not sqlite_damaged(exc):
                        raise _db_error(exc, self.folder, "open") from exc
                    problem = f"damaged: {exc}"
            try:
                kept, restored = set_aside_damaged(path, self.folder / BACKUP_NAME, "images")
            except OSError as exc:
                raise _db_error(exc, self.folder, "open") from exc
            self._repair = (problem, kept, restored)
            return _connect(path), problem
        finally:
            _release_lock(lock)

    def _recover(self, repaired: str | None) -> None:
        """Put right what a kill or a lost index left: files the index does not expect where
        they are (an edit cut short: its moves are undone, an interrupted add's files are
        added), and copies of an interrupted add left in ``.staging``. Says what it did."""
        if repaired is not None or self._stale_markers():
            with self._edit() as db:  # holding the write lock: no edit can start meanwhile
                stale = self._stale_markers()
                if repaired is not None or stale:
                    report = self._reconcile(db, rebuilt=repaired is not None)
                else:
                    report = None
                for marker in stale:
                    marker.unlink(missing_ok=True)
            if repaired is not None:
                self._say_repaired(report or {})
            elif report and any(report.values()):
                self._notice(
                    f"dataset {self.name!r}: an edit was cut short (the studio was stopped "
                    f"mid-edit); {_recovery_summary(report)}."
                )
        swept = self._sweep_staging()
        if swept:
            self._notice(
                f"dataset {self.name!r}: removed the {swept} staged cop"
                f"{'y' if swept == 1 else 'ies'} of images that an add cut short left in "
                f"{STAGING_DIR} (they were never part of the dataset)."
            )

    def _stale_markers(self) -> list[Path]:
        """Markers of edits whose session died mid-edit (a live one holds a lock on its own)."""
        stale = []
        for marker in self.folder.glob(f"{EDIT_MARKER}*"):
            if marker == self._marker:
                continue
            lock = _try_lock(marker, create=False)
            if lock is not None:
                stale.append(marker)
                _release_lock(lock)
        return stale

    def _say_repaired(self, report: dict[str, int]) -> None:
        problem, kept, restored = self._repair
        kept_note = f"kept it as {kept.name} and " if kept is not None else ""
        if restored:
            what = (
                f"{kept_note}restored its last backup ({BACKUP_NAME}, refreshed after every edit)"
            )
            extra = _recovery_summary(report)
            self._notice(
                f"the index of dataset {self.name!r} was {problem}; {what}"
                + (f"; {extra}" if any(report.values()) else "")
                + ". Nothing needs doing."
            )
            return
        if kept is None and not report.get("added"):
            return  # a dataset being created: nothing was lost
        set_aside = report.get("unindexed_excluded", 0)
        self._notice(
            f"the index of dataset {self.name!r} was {problem} and there was no sound backup: "
            f"{kept_note}rebuilt it from the images folder "
            f"({_count(report.get('added', 0), 'image')} in "
            f"{_count(report.get('classes', 0), 'class')}). Its edit history is lost"
            + (
                f", and {_count(set_aside, 'image')} set aside in {EXCLUDED_DIR}/ "
                f"{'is' if set_aside == 1 else 'are'} not in it (the class was only in the index)"
                if set_aside
                else ""
            )
            + "."
        )

    def _reconcile(self, db: sqlite3.Connection, rebuilt: bool) -> dict[str, int]:
        """Make the folders agree with the index (inside an edit, holding the write lock).

        Each indexed image's file is moved back to where the index says (from another class
        folder, ``excluded/``, ``removed/`` or a class rename cut short); a usable image in a
        class folder that the index does not know (an add cut short, or a rebuilt index) is
        added to it as one edit per class, which ``undo`` takes back; anything else found
        there is set aside in ``removed/`` (never deleted).
        """
        report = {"put_back": 0, "added": 0, "set_aside": 0, "classes": 0}
        images_root = self.folder / IMAGES_DIR
        images_root.mkdir(exist_ok=True)
        found: dict[str, list[Path]] = {}
        class_dirs = sorted(
            d
            for d in images_root.iterdir()
            if d.is_dir()
            and not d.is_symlink()
            and (not d.name.startswith(".") or d.name.startswith(RENAME_PREFIX))
        )
        places = [*class_dirs, self.folder / EXCLUDED_DIR, self.folder / REMOVED_DIR]
        for place in places:
            for file in _regular_files(place):
                found.setdefault(file.name, []).append(file)
        rows = db.execute(
            "SELECT i.id, i.ext, i.excluded, c.name FROM images i "
            "JOIN classes c ON c.id = i.class_id"
        ).fetchall()
        claimed: set[Path] = set()
        for image_id, ext, excluded, label in rows:
            expected = self._path(image_id, ext, label, bool(excluded))
            if expected.is_file():
                claimed.add(expected)
                continue
            elsewhere = [p for p in found.get(expected.name, []) if p not in claimed]
            if elsewhere:
                self._move(elsewhere[0], expected)
                claimed.update((expected, elsewhere[0]))
                report["put_back"] += 1
        added: dict[str, list[str]] = {}
        for folder in class_dirs:
            for file in _regular_files(folder):
                if file in claimed:
                    continue
                label = self._adopt(db, folder.name, file, report, added)
                if label is None:
                    self._set_aside(file)
                    report["set_aside"] += 1
        for label, ids in added.items():
            n = len(ids)
            what = (
                f"{'rebuilt the index with' if rebuilt else 'finished an interrupted add of'} "
                f"{n} image{'s' if n != 1 else ''} in class {label!r}"
            )
            self._record(db, "add_images", what, {"ids": ids})
        if rebuilt:
            known = {f"{r[0]}{r[1]}" for r in db.execute("SELECT id, ext FROM images")}
            report["unindexed_excluded"] = sum(
                1 for f in _regular_files(self.folder / EXCLUDED_DIR) if f.name not in known
            )
        return report

    def _adopt(
        self,
        db: sqlite3.Connection,
        folder_name: str,
        file: Path,
        report: dict[str, int],
        added: dict[str, list[str]],
    ) -> str | None:
        """Index ``file`` (found in class folder ``folder_name``); its class, or None if it
        cannot be (not an image, a duplicate, a folder that is no class)."""
        try:
            label = check_class_name(folder_name)
        except DataError:
            return None
        if label != folder_name:
            return None
        try:
            with open_regular_file(file) as fh:
                data = fh.read(MAX_FILE_BYTES + 1)
        except OSError:
            return None
        stream = io.BytesIO(data)
        ext = file.suffix.lower()
        if check_image(stream) is not None:
            return None
        if ext not in IMAGE_EXTENSIONS:
            ext = _sniff_ext(data) or ""
            if not ext:
                return None
        sha = hashlib.sha256(data).hexdigest()
        if db.execute("SELECT 1 FROM images WHERE sha256 = ?", (sha,)).fetchone():
            return None  # the same picture is in the dataset already
        row = db.execute(
            "SELECT id, name FROM classes WHERE name_key = ? AND deleted = 0", (label.casefold(),)
        ).fetchone()
        if row is None:
            cur = db.execute(
                "INSERT INTO classes (name, name_key) VALUES (?, ?)", (label, label.casefold())
            )
            self._record(db, "add_class", f"added class {label!r}", {"class_id": cur.lastrowid})
            row = (cur.lastrowid, label)
            report["classes"] += 1
        elif row[1] != label:
            return None  # differs only in case from a class: not the folder the loader reads
        image_id = self._new_id(db, sha)
        db.execute(
            "INSERT INTO images (id, sha256, class_id, ext, original_name, added_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (image_id, sha, row[0], ext, file.name, time.time()),
        )
        self._move(file, self._path(image_id, ext, label, False))
        added.setdefault(label, []).append(image_id)
        report["added"] += 1
        return label

    def _set_aside(self, file: Path) -> None:
        """Move a file the index cannot take into ``removed/`` (kept, under a free name)."""
        target = self.folder / REMOVED_DIR / file.name
        if target.exists():
            target = target.with_name(f"{uuid.uuid4().hex[:8]}-{file.name}")
        self._move(file, target)

    def _sweep_staging(self) -> int:
        """Remove copies that an add killed mid-way left in ``.staging``; returns how many
        files they held.

        A live add holds a lock on ``<folder>.lock`` (taken before the folder is made), so
        only a folder whose lock is free is stale; without file locks, only old ones are.
        """
        root = self.folder / STAGING_DIR
        swept = 0
        try:
            entries = sorted(root.iterdir())
        except OSError:
            return 0
        for entry in entries:
            if not entry.is_dir():
                if entry.suffix == ".lock" and not entry.with_suffix("").exists():
                    with contextlib.suppress(OSError):  # an add that died while tidying up
                        if time.time() - entry.stat().st_mtime > LOCK_GRACE_S:
                            _release_lock(_try_lock(entry, create=False), remove=True)
                continue
            lock_file = entry.with_name(entry.name + ".lock")
            if fcntl is None:
                with contextlib.suppress(OSError):
                    if time.time() - entry.stat().st_mtime < STAGING_GRACE_S:
                        continue
            lock = _try_lock(lock_file) if lock_file.exists() else None
            if lock_file.exists() and lock is None:
                continue  # an add under way
            swept += len(_regular_files(entry))
            shutil.rmtree(entry, ignore_errors=True)
            _release_lock(lock, remove=True)
        with contextlib.suppress(OSError):
            root.rmdir()  # only when empty
        return swept

    # ------------------------------------------------------------------ reading

    def classes(self) -> list[str]:
        """Live class names, in the order they were created."""
        rows = self._db.execute("SELECT name FROM classes WHERE deleted = 0 ORDER BY id")
        return [r[0] for r in rows]

    def images(self, include_excluded: bool = True) -> list[ImageInfo]:
        """Every image (with its current path), excluded ones too unless told otherwise."""
        rows = self._db.execute(
            "SELECT i.id, c.name, i.ext, i.original_name, i.excluded, i.reviewed, c.deleted "
            "FROM images i JOIN classes c ON c.id = i.class_id ORDER BY c.id, i.added_at, i.id"
        ).fetchall()
        out = []
        for image_id, label, ext, original, excluded, reviewed, _deleted in rows:
            if excluded and not include_excluded:
                continue
            path = self._path(image_id, ext, label, bool(excluded))
            out.append(
                ImageInfo(image_id, label, str(path), original, bool(excluded), bool(reviewed))
            )
        return out

    def image_id(self, path: str | os.PathLike[str]) -> str | None:
        """The id of the image stored at ``path`` (a training path of ``dataset:NAME``)."""
        stem = Path(path).stem
        row = self._db.execute("SELECT id FROM images WHERE id = ?", (stem,)).fetchone()
        return row[0] if row else None

    def shas(self) -> dict[str, str]:
        """``{image id: full SHA-256}`` of every image, excluded ones too."""
        return dict(self._db.execute("SELECT id, sha256 FROM images").fetchall())

    def pins(self) -> dict[str, str]:
        """``{image id: "train" | "val"}`` of every image pinned to a split."""
        return dict(self._db.execute("SELECT id, split FROM pins").fetchall())

    def meta(self, key: str) -> str | None:
        """A value of the dataset's meta table (e.g. ``copied_from``), or None."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Set a value of the dataset's meta table (not an edit: nothing to undo)."""
        with self._edit() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def images_at(self, when: float) -> list[ImageInfo]:
        """The images in use at time ``when`` (a run's start), with their labels then.

        Rebuilt from today's rows by taking back every edit made after ``when`` and replaying
        every edit undone after it. ``path`` is where each file is now (files are never
        deleted, only moved). An addition undone since cannot be replayed (its row is gone).
        """
        rows = self._db.execute(
            "SELECT id, class_id, ext, original_name, excluded, reviewed FROM images"
        ).fetchall()
        state = {r[0]: [int(r[1]), bool(r[4])] for r in rows}
        present = set(state)
        classes = self._db.execute("SELECT id, name, deleted FROM classes").fetchall()
        names = {int(c): str(n) for c, n, _d in classes}
        gone = {int(c): bool(d) for c, _n, d in classes}
        events = []
        for seq, at, action, raw, undone_at in self._db.execute(
            "SELECT seq, at, action, undo, undone_at FROM edits"
        ):
            data = json.loads(raw)
            if at > when:
                events.append((at, seq, action, data, False))  # made since: take it back
            if undone_at is not None and undone_at > when:
                events.append((undone_at, seq, action, data, True))  # undone since: redo it
        events.sort(key=lambda e: (e[0], e[1]), reverse=True)  # newest first
        for _t, _seq, action, data, redo in events:
            _replay(action, data, redo, state, present, names, gone)
        now_names = {int(c): str(n) for c, n, _d in classes}
        out = []
        for image_id, class_now, ext, original, excluded_now, reviewed in rows:
            class_id, excluded = state[image_id]
            if image_id not in present or excluded or gone.get(class_id, True):
                continue
            path = self._path(image_id, ext, now_names[int(class_now)], bool(excluded_now))
            out.append(
                ImageInfo(image_id, names[class_id], str(path), original, False, bool(reviewed))
            )
        return sorted(out, key=lambda i: (i.label, Path(i.path).name))

    def edits(self) -> list[dict[str, Any]]:
        """The edit history, oldest first: seq, time, action, summary, undone."""
        rows = self._db.execute(
            "SELECT seq, at, action, summary, undone_at FROM edits ORDER BY seq"
        )
        return [
            {"seq": s, "at": at, "action": a, "summary": m, "undone": u is not None}
            for s, at, a, m, u in rows
        ]

    def missing(self) -> list[ImageInfo]:
        """Images whose file is gone from the dataset's folder (removed outside the studio)."""
        return [i for i in self.images() if not os.path.isfile(i.path)]

    def show(self) -> dict[str, Any]:
        """Classes with counts, the excluded count and the edit history (JSON-able).

        Counts are of the files on disk (what training reads); ``missing`` lists the images
        whose file was removed outside the studio (``forget_missing`` drops them)."""
        counts: dict[str, int] = {c: 0 for c in self.classes()}
        excluded = 0
        missing = []
        for info in self.images():
            if not os.path.isfile(info.path):
                missing.append(
                    {k: getattr(info, k) for k in ("id", "label", "original_name", "path")}
                )
            elif info.excluded:
                excluded += 1
            elif info.label in counts:
                counts[info.label] += 1
        pinned = dict.fromkeys(SPLITS, 0)
        for split in self.pins().values():
            pinned[split] = pinned.get(split, 0) + 1
        return {
            "name": self.name,
            "source": f"dataset:{self.name}",
            "folder": str(self.folder / IMAGES_DIR),
            "classes": [{"name": c, "images": n} for c, n in counts.items()],
            "images": sum(counts.values()),
            "excluded": excluded,
            "pinned": pinned,
            "missing": missing,
            "edits": self.edits(),
        }

    # ------------------------------------------------------------------ classes

    def add_class(self, name: str) -> str:
        """Add an (empty) class; DataError if the name is invalid or taken."""
        text = check_class_name(name)
        with self._edit() as db:
            self._refuse_taken(db, text)
            cur = db.execute(
                "INSERT INTO classes (name, name_key) VALUES (?, ?)", (text, text.casefold())
            )
            self._record(db, "add_class", f"added class {text!r}", {"class_id": cur.lastrowid})
        return text

    def rename_class(self, old: str, new: str) -> str:
        """Rename a class (its images follow); DataError if ``old`` is unknown or ``new`` taken."""
        text = check_class_name(new)
        with self._edit() as db:
            class_id, old_name = self._class(db, old)
            if text == old_name:
                return text
            if text.casefold() != old_name.casefold():
                self._refuse_taken(db, text)
            self._rename(db, class_id, old_name, text)
            undo = {"class_id": class_id, "name": old_name, "to": text}
            self._record(db, "rename_class", f"renamed class {old_name!r} to {text!r}", undo)
        return text

    def delete_class(self, name: str) -> int:
        """Delete a class: its images are set aside with it (kept, restorable by ``undo``).

        Returns how many images were set aside. Runs trained on it keep their own model and
        labels, so they stay usable.
        """
        with self._edit() as db:
            class_id, label = self._class(db, name)
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM images WHERE class_id = ? AND excluded = 0", (class_id,)
                )
            ]
            self._set_excluded(db, ids, True)
            db.execute("UPDATE classes SET deleted = 1 WHERE id = ?", (class_id,))
            undo = {"class_id": class_id, "excluded": ids}
            what = f"deleted class {label!r}" + (f" ({len(ids)} images set aside)" if ids else "")
            self._record(db, "delete_class", what, undo)
        return len(ids)

    # ------------------------------------------------------------------ images

    def add_images(
        self,
        label: str,
        items: Iterable[str | os.PathLike[str] | tuple[str, bytes]],
        create_class: bool = False,
    ) -> AddResult:
        """Add image files, folders of them (searched recursively) or ``(file name, bytes)``
        uploads to class ``label``. Each image is checked as a dataset scan checks it; unusable
        files are skipped with their reason, exact duplicates (same content) are reported and
        not added twice. ``create_class`` adds the class first if it does not exist.
        """
        if create_class and check_class_name(label).casefold() not in {
            c.casefold() for c in self.classes()
        }:
            with contextlib.suppress(DataError):  # another session may have added it meanwhile
                self.add_class(label)
        with self._edit() as db:  # fail early on an unknown class, before copying anything
            self._class(db, label)
        result = AddResult()
        staging = self.folder / STAGING_DIR / uuid.uuid4().hex
        lock = _hold_lock(staging.with_name(staging.name + ".lock"))  # before the folder: see
        try:  # _sweep_staging
            staging.mkdir(parents=True)
            # Checking and copying happen outside the write lock: another session is not
            # blocked while a large folder is read.
            staged = self._stage(items, staging, result)
            with self._edit() as db:
                class_id, label_name = self._class(db, label)
                seen: dict[str, str] = {}
                for item in staged:
                    row = db.execute(
                        "SELECT i.id, c.name, i.excluded FROM images i "
                        "JOIN classes c ON c.id = i.class_id WHERE i.sha256 = ?",
                        (item.sha,),
                    ).fetchone()
                    if row or item.sha in seen:
                        dup_id, dup_class, dup_excluded = row or (seen[item.sha], label_name, 0)
                        where = f"class {dup_class!r}" + (" (excluded)" if dup_excluded else "")
                        reason = f"same picture as image {dup_id} already in {where}"
                        result.duplicates.append(
                            {
                                "path": item.source,
                                "id": dup_id,
                                "class": dup_class,
                                "reason": reason,
                            }
                        )
                        continue
                    image_id = self._new_id(db, item.sha)
                    db.execute(
                        "INSERT INTO images (id, sha256, class_id, ext, original_name, added_at)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (image_id, item.sha, class_id, item.ext, item.original, time.time()),
                    )
                    target = self._path(image_id, item.ext, label_name, False)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(item.file, target)
                    self._moved.append((target, item.file))
                    seen[item.sha] = image_id
                    result.added.append(image_id)
                if result.added:
                    n = len(result.added)
                    what = f"added {n} image{'s' if n != 1 else ''} to class {label_name!r}"
                    self._record(db, "add_images", what, {"ids": result.added})
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            _release_lock(lock, remove=True)
        return result

    def relabel(self, ids: Sequence[str], to_class: str) -> list[str]:
        """Move images to class ``to_class``; DataError naming the classes if it does not exist,
        or naming any id that is not in this dataset. Returns the ids moved."""
        with self._edit() as db:
            class_id, label = self._class(db, to_class)
            rows = self._lookup(db, ids)
            before = {r[0]: r[1] for r in rows if r[1] != class_id}
            # Relabelling marks an image reviewed; undo gives back the mark it had.
            unreviewed = [
                i
                for i in before
                if not db.execute("SELECT reviewed FROM images WHERE id = ?", (i,)).fetchone()[0]
            ]
            for image_id, old_class, ext, excluded in rows:
                if old_class == class_id:
                    continue
                if not excluded:
                    old_label = self._class_name(db, old_class)
                    self._move(
                        self._path(image_id, ext, old_label, False),
                        self._path(image_id, ext, label, False),
                    )
                db.execute(
                    "UPDATE images SET class_id = ?, reviewed = 1 WHERE id = ?",
                    (class_id, image_id),
                )
            if before:
                n = len(before)
                what = f"relabelled {n} image{'s' if n != 1 else ''} to {label!r}"
                # "to": what redoing it means (a run's view of the dataset at its start time
                # replays edits undone since, see ``images_at``).
                undo = {"before": before, "to": class_id, "unreviewed": unreviewed}
                self._record(db, "relabel", what, undo)
        return list(before)

    def exclude(self, ids: Sequence[str]) -> list[str]:
        """Set images aside (moved to ``excluded/``, never deleted). Returns the ids changed."""
        return self._toggle(ids, True)

    def restore(self, ids: Sequence[str]) -> list[str]:
        """Bring excluded images back to their class. Returns the ids changed."""
        return self._toggle(ids, False)

    def mark_reviewed(self, ids: Sequence[str]) -> list[str]:
        """Mark images as reviewed and kept as they are (review's "keep")."""
        with self._edit() as db:
            rows = self._lookup(db, ids)
            changed = [
                r[0]
                for r in rows
                if not db.execute("SELECT reviewed FROM images WHERE id = ?", (r[0],)).fetchone()[0]
            ]
            db.executemany("UPDATE images SET reviewed = 1 WHERE id = ?", [(i,) for i in changed])
            if changed:
                n = len(changed)
                what = f"kept {n} image{'s' if n != 1 else ''} as labelled"
                self._record(db, "keep", what, {"ids": changed})
        return changed

    def pin(self, ids: Sequence[str], split: str | None) -> list[str]:
        """Pin images to split ``split`` ("train" or "val"; ``None`` unpins them), one edit
        (``undo`` gives back the pins they had). Returns the ids whose pin changed."""
        if split is not None and split not in SPLITS:
            raise DataError(
                f"Unknown split {split!r}: an image is pinned to 'train' or 'val' (or unpinned)."
            )
        with self._edit() as db:
            rows = self._lookup(db, ids)
            before: dict[str, str | None] = {}
            for image_id, *_rest in rows:
                row = db.execute("SELECT split FROM pins WHERE id = ?", (image_id,)).fetchone()
                if (row[0] if row else None) != split:
                    before[image_id] = row[0] if row else None
            if split is None:
                db.executemany("DELETE FROM pins WHERE id = ?", [(i,) for i in before])
            else:
                db.executemany(
                    "INSERT OR REPLACE INTO pins (id, split) VALUES (?, ?)",
                    [(i, split) for i in before],
                )
            if before:
                n = len(before)
                images = f"{n} image{'s' if n != 1 else ''}"
                to = f" to {_SPLIT_WORDS[split]}" if split else ""
                what = f"pinned {images}{to}" if split else f"unpinned {images}"
                self._record(db, "pin", what, {"before": before, "to": split})
        return list(before)

    def forget_missing(self) -> list[str]:
        """Drop the images whose file was removed outside the studio (one edit: ``undo`` brings
        the entries back, still missing until their files are put back). Returns their ids."""
        with self._edit() as db:
            rows = db.execute(
                "SELECT i.id, i.sha256, i.class_id, i.ext, i.original_name, i.excluded, "
                "i.reviewed, i.added_at, c.name FROM images i JOIN classes c ON c.id = i.class_id"
            ).fetchall()
            gone = [r[:8] for r in rows if not self._path(r[0], r[3], r[8], bool(r[5])).is_file()]
            db.executemany("DELETE FROM images WHERE id = ?", [(r[0],) for r in gone])
            if gone:
                n = len(gone)
                what = f"forgot {n} missing image{'s' if n != 1 else ''}"
                self._record(db, "forget_missing", what, {"rows": [list(r) for r in gone]})
        return [r[0] for r in gone]

    def undo(self) -> dict[str, Any] | None:
        """Revert the last edit not yet undone; returns it, or None if there is nothing to undo."""
        with self._edit() as db:
            row = db.execute(
                "SELECT seq, action, summary, undo FROM edits WHERE undone_at IS NULL "
                "ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            seq, action, summary, raw = row
            data = json.loads(raw)
            if action == "add_class":
                db.execute("UPDATE classes SET deleted = 1 WHERE id = ?", (data["class_id"],))
            elif action == "rename_class":
                (current,) = db.execute(
                    "SELECT name FROM classes WHERE id = ?", (data["class_id"],)
                ).fetchone()
                self._refuse_taken(db, data["name"], but=data["class_id"])
                self._rename(db, data["class_id"], current, data["name"])
            elif action == "delete_class":
                (old,) = db.execute(
                    "SELECT name FROM classes WHERE id = ?", (data["class_id"],)
                ).fetchone()
                self._refuse_taken(db, old)
                db.execute("UPDATE classes SET deleted = 0 WHERE id = ?", (data["class_id"],))
                self._set_excluded(db, _present(db, data["excluded"]), False, missing_ok=True)
            elif action == "add_images":
                # Images forgotten since (their files were gone) have nothing left to take out.
                known = [
                    i
                    for i in data["ids"]
                    if db.execute("SELECT 1 FROM images WHERE id = ?", (i,)).fetchone()
                ]
                for image_id, _cls, ext, excluded in self._lookup(db, known) if known else []:
                    label = self._class_name(db, _cls)
                    self._move(
                        self._path(image_id, ext, label, bool(excluded)),
                        self.folder / REMOVED_DIR / f"{image_id}{ext}",
                        missing_ok=True,
                    )
                    db.execute("DELETE FROM images WHERE id = ?", (image_id,))
            elif action == "relabel":
                for image_id, old_class in data["before"].items():
                    row = db.execute(
                        "SELECT ext, excluded, class_id FROM images WHERE id = ?", (image_id,)
                    ).fetchone()
                    if row is None:  # forgotten since: its file was gone
                        continue
                    (ext, excluded, now) = row
                    if not excluded:
                        self._move(
                            self._path(image_id, ext, self._class_name(db, now), False),
                            self._path(image_id, ext, self._class_name(db, old_class), False),
                            missing_ok=True,
                        )
                    db.execute("UPDATE images SET class_id = ? WHERE id = ?", (old_class, image_id))
                db.executemany(
                    "UPDATE images SET reviewed = 0 WHERE id = ?",
                    [(i,) for i in data.get("unreviewed", [])],
                )
            elif action in ("exclude", "restore"):
                ids = _present(db, data["ids"])
                self._set_excluded(db, ids, action == "restore", missing_ok=True)
            elif action == "forget_missing":
                db.executemany(
                    "INSERT OR IGNORE INTO images (id, sha256, class_id, ext, original_name, "
                    "excluded, reviewed, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [tuple(r) for r in data["rows"]],
                )
            elif action == "keep":
                db.executemany(
                    "UPDATE images SET reviewed = 0 WHERE id = ?", [(i,) for i in data["ids"]]
                )
            elif action == "pin":
                for image_id, was in data["before"].items():
                    if was is None:
                        db.execute("DELETE FROM pins WHERE id = ?", (image_id,))
                    else:
                        db.execute(
                            "INSERT OR REPLACE INTO pins (id, split) VALUES (?, ?)",
                            (image_id, was),
                        )
            db.execute("UPDATE edits SET undone_at = ? WHERE seq = ?", (time.time(), seq))
        return {"seq": seq, "action": action, "summary": summary}

    # ------------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _edit(self) -> Iterator[sqlite3.Connection]:
        """One edit: a write transaction; files moved in it are moved back if it fails."""
        self._moved = []
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise _db_error(exc, self.folder, "busy") from exc
        committed = False
        marker_lock = None
        changes = self._db.total_changes
        try:
            # Files move before the index commits: a kill in between leaves files where the
            # index does not expect them. This marker (removed once the edit is over) makes
            # the next session to open the dataset put them right (``_recover``).
            self._marker = self.folder / f"{EDIT_MARKER}{uuid.uuid4().hex}"
            marker_lock = _hold_lock(self._marker)  # held while the edit lives
            yield self._db
            self._db.execute("COMMIT")
            committed = True
        except BaseException as exc:
            self._db.execute("ROLLBACK")
            for moved_to, moved_from in reversed(self._moved):
                with contextlib.suppress(OSError):
                    moved_from.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(moved_to, moved_from)
            if isinstance(exc, (sqlite3.Error, OSError)):
                disk = storage_error(exc, self.folder)
                if disk is not None:
                    raise disk from exc
            raise
        finally:
            self._moved = []
            self._tidy()
            if self._marker is not None:
                _release_lock(marker_lock, remove=True)
                self._marker = None
        if committed and self._db.total_changes != changes:  # a look-only edit changes nothing
            self._backup()

    def _backup(self) -> None:
        """Refresh the index's rolling backup (a failure is said, never fatal: the edit is in)."""
        try:
            sqlite_backup(self._db, self.folder / BACKUP_NAME)
        except (sqlite3.Error, OSError) as exc:
            self._notice(f"could not back up dataset {self.name!r}'s index: {exc}")

    def _notice(self, text: str) -> None:
        self.notices.append(text)
        print(f"warning: {text}", file=sys.stderr)

    def _tidy(self) -> None:
        """Remove class folders left empty, so the loader never meets an empty class."""
        images = self.folder / IMAGES_DIR
        with contextlib.suppress(OSError):
            for sub in images.iterdir():
                if sub.is_dir():
                    with contextlib.suppress(OSError):
                        sub.rmdir()  # only succeeds when empty

    def _record(self, db: sqlite3.Connection, action: str, summary: str, undo: dict) -> None:
        db.execute(
            "INSERT INTO edits (at, action, summary, undo) VALUES (?, ?, ?, ?)",
            (time.time(), action, summary, json.dumps(undo)),
        )

    def _path(self, image_id: str, ext: str, label: str, excluded: bool) -> Path:
        if excluded:
            return self.folder / EXCLUDED_DIR / f"{image_id}{ext}"
        return self.folder / IMAGES_DIR / label / f"{image_id}{ext}"

    def _move(self, src: Path, dst: Path, missing_ok: bool = False) -> None:
        """Move one file or folder as part of this edit (moved back if the edit fails).

        ``missing_ok``: a file removed outside the studio is left missing (an undo changes
        the index all the same, so it never dead-ends on a file that is gone)."""
        if src == dst:
            return
        if not src.exists():
            if missing_ok:
                return
            raise DataError(
                f"The file of image {src.stem} is missing from dataset {self.name!r} ({src}); "
                "it was moved or deleted outside the studio. Put it back, or forget the "
                "dataset's missing images (Forget missing images on the Data page, or "
                f"'dataset forget-missing {self.name}'); undo brings them back."
            )
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        self._moved.append((dst, src))

    def _class(self, db: sqlite3.Connection, name: str) -> tuple[int, str]:
        key = name.strip().casefold() if isinstance(name, str) else ""
        row = db.execute(
            "SELECT id, name FROM classes WHERE name_key = ? AND deleted = 0", (key,)
        ).fetchone()
        if row is None:
            live = [r[0] for r in db.execute("SELECT name FROM classes WHERE deleted = 0")]
            listed = ", ".join(repr(c) for c in live) if live else "none yet"
            raise DataError(
                f"Dataset {self.name!r} has no class {name!r} (classes: {listed}). Pick one of "
                "those, or add the class first."
            )
        return int(row[0]), str(row[1])

    def _class_name(self, db: sqlite3.Connection, class_id: int) -> str:
        return str(db.execute("SELECT name FROM classes WHERE id = ?", (class_id,)).fetchone()[0])

    def _refuse_taken(self, db: sqlite3.Connection, name: str, but: int | None = None) -> None:
        row = db.execute(
            "SELECT id, name FROM classes WHERE name_key = ? AND deleted = 0", (name.casefold(),)
        ).fetchone()
        if row and row[0] != but:
            raise DataError(
                f"Dataset {self.name!r} already has a class {row[1]!r}"
                + (f" (names differ only in case from {name!r})" if row[1] != name else "")
                + ". Choose another name."
            )

    def _rename(self, db: sqlite3.Connection, class_id: int, old: str, new: str) -> None:
        src = self.folder / IMAGES_DIR / old
        if src.is_dir():
            tmp = src.with_name(f"{RENAME_PREFIX}{uuid.uuid4().hex}")  # case-only renames hop
            self._move(src, tmp)
            self._move(tmp, self.folder / IMAGES_DIR / new)
        db.execute(
            "UPDATE classes SET name = ?, name_key = ? WHERE id = ?",
            (new, new.casefold(), class_id),
        )

    def _lookup(
        self, db: sqlite3.Connection, ids: Sequence[str]
    ) -> list[tuple[str, int, str, int]]:
        """(id, class_id, ext, excluded) of each id; DataError naming ids not in this dataset."""
        if isinstance(ids, str):
            ids = [ids]
        if not ids:
            raise DataError("No image ids given. Name at least one image, e.g. 3f2a9c01b7de.")
        rows, unknown = [], []
        for raw in dict.fromkeys(str(i).strip() for i in ids):
            row = db.execute(
                "SELECT id, class_id, ext, excluded FROM images WHERE id = ?", (raw,)
            ).fetchone()
            if row is None and len(raw) >= 8 and all(c in "0123456789abcdef" for c in raw):
                found = db.execute(
                    "SELECT id, class_id, ext, excluded FROM images WHERE sha256 LIKE ? LIMIT 2",
                    (raw + "%",),
                ).fetchall()
                row = found[0] if len(found) == 1 else None
            if row is None:
                unknown.append(raw)
            else:
                rows.append(tuple(row))
        if unknown:
            raise DataError(_unknown_ids(self.name, unknown))
        return rows  # type: ignore[return-value]

    def _set_excluded(
        self, db: sqlite3.Connection, ids: Sequence[str], excluded: bool, missing_ok: bool = False
    ) -> None:
        for image_id, class_id, ext, was in self._lookup(db, ids) if ids else []:
            if bool(was) == excluded:
                continue
            label = self._class_name(db, class_id)
            self._move(
                self._path(image_id, ext, label, bool(was)),
                self._path(image_id, ext, label, excluded),
                missing_ok,
            )
            db.execute("UPDATE images SET excluded = ? WHERE id = ?", (int(excluded), image_id))

    def _toggle(self, ids: Sequence[str], excluded: bool) -> list[str]:
        with self._edit() as db:
            rows = self._lookup(db, ids)
            changed = [r[0] for r in rows if bool(r[3]) != excluded]
            # An image set aside with its deleted class has no class folder to go back to.
            deleted = [
                r[0]
                for r in rows
                if not excluded
                and r[3]
                and db.execute("SELECT deleted FROM classes WHERE id = ?", (r[1],)).fetchone()[0]
            ]
            if deleted:
                raise DataError(
                    f"Image(s) {', '.join(deleted)} belonged to a class that was deleted. Add "
                    "the class again and relabel them to it, or undo the class's deletion."
                )
            self._set_excluded(db, changed, excluded)
            if changed:
                n = len(changed)
                verb = "excluded" if excluded else "restored"
                self._record(
                    db,
                    "exclude" if excluded else "restore",
                    f"{verb} {n} image{'s' if n != 1 else ''}",
                    {"ids": changed},
                )
        return changed

    def _new_id(self, db: sqlite3.Connection, sha: str) -> str:
        for length in range(ID_LENGTH, len(sha) + 1, 4):
            candidate = sha[:length]
            if db.execute("SELECT 1 FROM images WHERE id = ?", (candidate,)).fetchone() is None:
                return candidate
        return sha

    def _stage(
        self,
        items: Iterable[str | os.PathLike[str] | tuple[str, bytes]],
        staging: Path,
        result: AddResult,
    ) -> list[_Staged]:
        staged: list[_Staged] = []
        for original, opener in _expand(items, result):
            ext = os.path.splitext(original)[1].lower()
            try:
                with opener() as fh:
                    # One byte over the cap is enough for the check to say "too large".
                    data = fh.read(MAX_FILE_BYTES + 1)
            except NotRegularFileError as exc:  # swapped for a FIFO since the walk looked
                result.skipped.append(
                    {"path": original, "reason": f"not a regular file ({exc.kind})"}
                )
                continue
            except OSError as exc:
                result.skipped.append(
                    {"path": original, "reason": f"unreadable ({exc.strerror or exc})"}
                )
                continue
            stream = io.BytesIO(data)
            stream.name = original  # type: ignore[attr-defined]  # for messages only
            reason = check_image(stream)
            if reason is None and ext not in IMAGE_EXTENSIONS:
                ext = _sniff_ext(data) or ""
                if not ext:
                    reason = "not an image"
            if reason:
                result.skipped.append({"path": original, "reason": reason})
                continue
            sha = hashlib.sha256(data).hexdigest()
            file = staging / f"{len(staged)}{ext}"
            file.write_bytes(data)
            staged.append(_Staged(file, sha, ext, os.path.basename(original) or original, original))
        return staged


def _replay(
    action: str,
    data: dict[str, Any],
    redo: bool,
    state: dict[str, list[Any]],
    present: set[str],
    names: dict[int, str],
    gone: dict[int, bool],
) -> None:
    """Apply one edit (``redo``) or take it back, on ``images_at``'s in-memory picture."""

    def exclude(ids: Iterable[str], flag: bool) -> None:
        for image_id in ids:
            if image_id in state:
                state[image_id][1] = flag

    if action == "add_class":
        gone[data["class_id"]] = not redo
    elif action == "rename_class":
        if not redo:
            names[data["class_id"]] = data["name"]
        elif "to" in data:
            names[data["class_id"]] = data["to"]
    elif action == "delete_class":
        gone[data["class_id"]] = redo
        exclude(data["excluded"], redo)
    elif action == "add_images":
        for image_id in data["ids"]:
            if redo and image_id in state:
                present.add(image_id)
            elif not redo:
                present.discard(image_id)
    elif action == "relabel":
        for image_id, old_class in data["before"].items():
            if image_id not in state:
                continue
            if not redo:
                state[image_id][0] = int(old_class)
            elif "to" in data:
                state[image_id][0] = int(data["to"])
    elif action in ("exclude", "restore"):
        exclude(data["ids"], (action == "exclude") == redo)


def _sniff_ext(data: bytes) -> str | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return _FORMAT_EXT.get(str(im.format))
    except Exception:  # any plugin error: not an image we store
        return None


def _expand(
    items: Iterable[str | os.PathLike[str] | tuple[str, bytes]], result: AddResult
) -> Iterator[tuple[str, Any]]:
    """(name, opener) of every file to add: files, image files under folders, uploads."""
    for item in [items] if isinstance(items, (str, os.PathLike)) else items:
        if isinstance(item, tuple):
            name, data = item
            yield str(name), (lambda data=data: contextlib.nullcontext(io.BytesIO(data)))
            continue
        path = os.path.expanduser(os.fspath(item))
        if os.path.isdir(path):
            found = False
            for folder, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for fname in sorted(files):
                    if fname.startswith("."):
                        continue
                    full = os.path.join(folder, fname)
                    if os.path.splitext(fname)[1].lower() not in IMAGE_EXTENSIONS:
                        result.skipped.append({"path": full, "reason": "not an image file"})
                        continue
                    # A FIFO, socket or device named like an image would block a plain open()
                    # forever: only regular files are read (and opened without blocking).
                    kind = _special_kind(full)
                    if kind:
                        result.skipped.append(
                            {"path": full, "reason": f"not a regular file ({kind})"}
                        )
                        continue
                    found = True
                    yield full, (lambda full=full: _open_file(full))
            if not found:
                result.skipped.append({"path": path, "reason": "folder holds no image files"})
        elif os.path.exists(path):
            yield path, (lambda path=path: _open_file(path))
        else:
            result.skipped.append({"path": path, "reason": "not found"})


def _special_kind(path: str) -> str | None:
    """What ``path`` is when it is not a regular file (``"FIFO"``...), else None."""
    from core.data.images import file_kind

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # vanished or unreadable: opening it says why
    return None if stat.S_ISREG(mode) else file_kind(mode)


def _open_file(path: str) -> Any:
    from core.data.images import open_regular_file

    return open_regular_file(path)


def _unknown_ids(name: str, unknown: list[str]) -> str:
    owners = []
    for other in dataset_names():
        if other == name:
            continue
        with contextlib.suppress(sqlite3.Error, OSError):
            db = sqlite3.connect(f"file:{datasets_root() / other / DB_NAME}?mode=ro", uri=True)
            try:
                marks = ",".join("?" * len(unknown))
                if db.execute(f"SELECT 1 FROM images WHERE id IN ({marks})", unknown).fetchone():
                    owners.append(other)
            finally:
                db.close()
    listed = ", ".join(unknown[:5]) + ("…" if len(unknown) > 5 else "")
    where = f" (they belong to dataset {', '.join(map(repr, owners))})" if owners else ""
    return (
        f"Image id(s) {listed} are not in dataset {name!r}{where}. Use the ids that "
        f"'dataset show' or review list for {name!r}."
    )


def _present(db: sqlite3.Connection, ids: Iterable[str]) -> list[str]:
    """The ids of ``ids`` still in the index (an undo skips images forgotten since)."""
    return [i for i in ids if db.execute("SELECT 1 FROM images WHERE id = ?", (i,)).fetchone()]


def _regular_files(folder: Path) -> list[Path]:
    """The regular files directly in ``folder`` (none if it does not exist)."""
    try:
        with os.scandir(folder) as it:
            return sorted(
                Path(e.path) for e in it if e.is_file(follow_symlinks=False) and e.name[0] != "."
            )
    except OSError:
        return []


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 'es' if word.endswith('s') else 's'}"


def _recovery_summary(report: dict[str, int]) -> str:
    parts = []
    if report.get("put_back"):
        parts.append(f"put {_count(report['put_back'], 'file')} back where the index has them")
    if report.get("added"):
        parts.append(
            f"added the {_count(report['added'], 'image')} it had moved in (undo takes them back)"
        )
    if report.get("set_aside"):
        parts.append(
            f"set {_count(report['set_aside'], 'file')} it could not use aside in {REMOVED_DIR}/"
        )
    return ", ".join(parts) or "nothing had to change"


try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]


def _hold_lock(path: Path) -> Any:
    """An open file holding an exclusive lock on ``path`` (created); waits for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+b")  # held until _release_lock
    if fcntl is not None:
        fcntl.flock(fh, fcntl.LOCK_EX)
    return fh


def _try_lock(path: Path, create: bool = True) -> Any:
    """Like ``_hold_lock`` but never waits: None if another process holds the lock (or, with
    ``create`` False, if there is no such file)."""
    try:
        fh = open(path, "a+b" if create else "r+b")  # held until _release_lock
    except OSError:
        return None
    if fcntl is not None:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return None
    return fh


def _release_lock(fh: Any, remove: bool = False) -> None:
    if fh is None:
        return
    if remove:  # still holding it: nobody can take a lock on the name in between
        with contextlib.suppress(OSError):
            os.unlink(fh.name)
    fh.close()


def _index_problem(path: Path) -> str | None:
    """Why the index at ``path`` cannot be opened as it is, or None if it looks whole."""
    if not path.exists():
        return "missing"
    if path.is_file() and path.stat().st_size == 0:
        # SQLite would take an empty file for a new, empty database: every image and edit gone.
        return "emptied (0 bytes)"
    return None


def _connect_checked(path: Path) -> sqlite3.Connection:
    """``_connect``, with every page of the file read once: a file cut short or overwritten
    in the middle opens fine and fails on the first read of a lost page, not here."""
    db = _connect_raw(path)
    try:
        verdict = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if verdict != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed ({verdict})")
    except BaseException:
        db.close()
        raise
    return db


def _db_error(exc: sqlite3.Error | OSError, folder: Path, context: str) -> StudioError:
    disk = storage_error(exc, folder)
    if disk is not None:
        return disk
    if "locked" in str(exc).lower() or "busy" in str(exc).lower():
        return StorageError(
            f"The dataset in {folder} is busy: another session has been editing it for over "
            f"{BUSY_TIMEOUT_MS // 1000} s. Wait a moment and try again."
        )
    return StorageError(f"The dataset file in {folder} cannot be used ({exc}).")


def _connect_raw(path: Path) -> sqlite3.Connection:
    # check_same_thread off: Streamlit may rerun a session's script on another thread;
    # a Dataset is still used by one thread at a time.
    db = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(_SCHEMA)
    except BaseException:
        db.close()
        raise
    return db


def _connect(path: Path) -> sqlite3.Connection:
    try:
        return _connect_raw(path)
    except sqlite3.Error as exc:
        raise _db_error(exc, path.parent, "open") from exc


# --------------------------------------------------------------------------- module API


def create(name: str, source: str | None = None) -> Dataset:
    """Create dataset ``name`` (empty, or imported once from ``source``: a folder, zip, builtin
    or Kaggle handle, checked by the usual loader). DataError if the name is taken or invalid.
    The caller closes the returned Dataset."""
    text = check_dataset_name(name)
    root = datasets_root()
    taken = [n for n in dataset_names() if n.casefold() == text.casefold()]
    if taken:
        raise DataError(f"A dataset named {taken[0]!r} already exists. Choose another name.")
    folder = root / text
    try:
        folder.mkdir()  # atomic: of two sessions creating the same name, one wins
    except FileExistsError:
        raise DataError(
            f"A dataset named {text!r} already exists (or a folder of that name is in "
            f"{root}). Choose another name."
        ) from None
    try:
        (folder / IMAGES_DIR).mkdir()
        _connect(folder / DB_NAME).close()
        dataset = Dataset(text)
        if source:
            _import(dataset, source)
        return dataset
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # a half-imported dataset must not remain
        raise


def _import(dataset: Dataset, source: str) -> None:
    from core.data.archives import extraction_folder
    from core.data.index import load_dataset
    from core.data.sources import parse_source

    # A zip is unpacked into the data cache to be read; once its images are copied into the
    # dataset that copy is dead weight (as large as the data), so an extraction this import
    # made is removed. One made earlier is left: a run on the zip itself may be reading it.
    kind, value = parse_source(source)
    made = None
    if kind == "zip":
        folder, finished = extraction_folder(value)
        made = None if finished else folder
    index = load_dataset(source)
    for name, files in index.paths_by_class().items():
        dataset.add_images(name, files, create_class=True)
    if made is not None:
        discard_folder(made)


COPIED_FROM = "copied_from"  # meta key: the source a dataset is the managed copy of
COPIED_FROM_KEY = "copied_from_key"  # ... in the canonical form ``source_key`` gives


def source_key(source: str) -> str:
    """A source in a form that compares equal however it was typed (a folder or zip by its
    real path, a builtin or Kaggle handle by kind and name)."""
    from core.data.sources import parse_source

    kind, value = parse_source(source)
    if kind in ("folder", "zip"):
        return f"{kind}:{os.path.realpath(value)}"
    return f"{kind}:{value.strip().lower() if kind == 'builtin' else value.strip()}"


def find_copy(source: str) -> str | None:
    """The name of the managed copy of ``source`` (see ``copy_of``), or None."""
    key = source_key(source)
    for name in dataset_names():
        with contextlib.suppress(sqlite3.Error, OSError):
            db = sqlite3.connect(f"file:{datasets_root() / name / DB_NAME}?mode=ro", uri=True)
            try:
                row = db.execute(
                    "SELECT value FROM meta WHERE key = ?", (COPIED_FROM_KEY,)
                ).fetchone()
            finally:
                db.close()
            if row and row[0] == key:
                return name
    return None


@contextlib.contextmanager
def _copy_lock() -> Iterator[None]:
    """One session at a time makes copies: two first edits at once make one copy, not two."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; a rare double copy is harmless
        yield
        return
    with open(datasets_root() / ".copies.lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def copy_of(source: str) -> tuple[str, bool]:
    """The managed copy of an unmanaged ``source`` (folder, zip, builtin, Kaggle), made on the
    first call: ``(name, made_now)``. Named after the source (``photos.zip`` → ``photos``; a
    taken name gets `` 2``, `` 3``...); the link is kept in its meta table, so every later call
    (from any run on the same source) finds the same copy. Image ids are content hashes, so
    the copy's ids are the ids review computed for the source's files."""
    with _copy_lock():
        found = find_copy(source)
        if found is not None:
            return found, False
        base = suggest_name(source)
        taken = {n.casefold() for n in dataset_names()}
        name, k = base, 1
        while name.casefold() in taken:
            k += 1
            name = f"{base[: MAX_NAME - len(str(k)) - 1]} {k}"
        dataset = create(name)
        try:
            dataset.set_meta(COPIED_FROM, source)
            dataset.set_meta(COPIED_FROM_KEY, source_key(source))
            _import(dataset, source)
        except BaseException:
            dataset.close()
            shutil.rmtree(dataset.folder, ignore_errors=True)
            raise
        dataset.close()
        return name, True


def open_dataset(name: str) -> Dataset:
    """Open existing dataset ``name`` (DataError listing the datasets if unknown)."""
    return Dataset(name)


def repair(name: str) -> None:
    """Open dataset ``name`` once: an edit cut short is finished or undone, a lost or damaged
    index restored or rebuilt (each said in a ``warning:`` line)."""
    Dataset(name).close()


def split_pins(name: str) -> dict[str, str]:
    """``{image id: "train" | "val"}``: the images of dataset ``name`` pinned to a split (what
    the loader's split honours)."""
    with Dataset(name) as ds:
        return ds.pins()


DATASET_SPLIT_PINS.append(split_pins)  # the loader asks for them without importing this module
DATASET_REPAIRS.append(repair)  # resolving ``dataset:NAME`` (the loader, training) repairs first


def list_datasets() -> list[dict[str, Any]]:
    """One row per dataset: name, source, classes, images, excluded, edits, plus ``missing``
    (images whose file was removed outside the studio) when there are any. A dataset that
    cannot be opened is listed with ``error`` (what is wrong) instead of hiding the others."""
    rows: list[dict[str, Any]] = []
    for name in dataset_names():
        try:
            with Dataset(name) as ds:
                info = ds.show()
        except (StudioError, sqlite3.Error, OSError) as exc:
            rows.append({"name": name, "source": f"dataset:{name}", "error": str(exc)})
            continue
        row = {
            "name": info["name"],
            "source": info["source"],
            "classes": len(info["classes"]),
            "images": info["images"],
            "excluded": info["excluded"],
            "edits": sum(1 for e in info["edits"] if not e["undone"]),
        }
        if info["missing"]:
            row["missing"] = len(info["missing"])
        rows.append(row)
    return rows


def show(name: str) -> dict[str, Any]:
    """Classes with counts, excluded count and edits of dataset ``name``."""
    with Dataset(name) as ds:
        return ds.show()


def parse_dataset_source(source: str) -> str | None:
    """The NAME of a ``dataset:NAME`` source, else None."""
    if isinstance(source, str) and source.strip().lower().startswith("dataset:"):
        return source.strip()[len("dataset:") :].strip()
    return None


__all__ = [
    "AddResult",
    "Dataset",
    "ImageInfo",
    "check_class_name",
    "check_dataset_name",
    "copy_of",
    "create",
    "dataset_names",
    "dataset_path",
    "datasets_root",
    "find_copy",
    "images_folder",
    "list_datasets",
    "open_dataset",
    "show",
    "SPLITS",
    "split_pins",
    "source_key",
    "suggest_name",
    "repair",
    "parse_dataset_source",
]
