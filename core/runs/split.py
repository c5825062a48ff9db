"""What a run trained on: its training and validation images, recorded in the run folder.

The trainer writes ``split.json`` once the data is scanned: the data's root folder, and for each
split the images (path relative to that root, label, SHA-256 of the content). Review, evaluate,
export and the benchmark read it instead of deriving the split again from the source, so a file
added, replaced or removed since the run trained is known as such (``changes``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.data.scan_cache import file_hashes
from core.files import atomic_write_text

if TYPE_CHECKING:
    from core.data.index import DatasetIndex

__all__ = [
    "SPLIT_FILE",
    "RunSplit",
    "SplitChanges",
    "SplitImage",
    "read_split",
    "record_split",
]

SPLIT_FILE = "split.json"
SPLIT_VERSION = 1
HASH_THREADS = 4  # hashlib releases the GIL: a few threads keep the disk busy


@dataclass(frozen=True)
class SplitImage:
    """One image a run trained or validated on."""

    path: str  # relative to the split's root (POSIX separators)
    label: str
    sha256: str  # of the file's content when the run scanned it

    def to_json(self) -> dict[str, str]:
        """``{"path", "label", "sha256"}``."""
        return {"path": self.path, "label": self.label, "sha256": self.sha256}


@dataclass(frozen=True)
class SplitChanges:
    """How the files at a split's paths differ from what the run trained on."""

    changed: list[str]  # relative paths whose content is not what the run saw
    missing: list[str]  # relative paths that are gone


@dataclass(frozen=True)
class RunSplit:
    """A run's training and validation images."""

    root: str  # the data's folder when the run trained (absolute)
    train: tuple[SplitImage, ...]
    val: tuple[SplitImage, ...]

    def images(self) -> list[tuple[str, SplitImage]]:
        """``(split, image)`` pairs: training images first, then validation images, each in
        the trainer's order."""
        return [("train", i) for i in self.train] + [("val", i) for i in self.val]

    def digests(self) -> list[str] | None:
        """Each image's content digest, training images first (``images``' order); ``None``
        when a file could not be read when the split was recorded."""
        shas = [image.sha256 for _, image in self.images()]
        return shas if all(shas) else None

    def absolute(self, image: SplitImage) -> str:
        """Where ``image`` is (or was) on disk."""
        return os.path.join(self.root, *image.path.split("/"))

    def labelled(self, which: str, class_names: list[str]) -> tuple[list[str], list[int]]:
        """Absolute paths and label indices (into ``class_names``) of split ``which`` ("train" or
        "val"), leaving out files that are gone and labels that are not in ``class_names``."""
        index = {name: i for i, name in enumerate(class_names)}
        paths: list[str] = []
        labels: list[int] = []
        for image in self.train if which == "train" else self.val:
            path = self.absolute(image)
            if image.label in index and os.path.isfile(path):
                paths.append(path)
                labels.append(index[image.label])
        return paths, labels

    def to_json(self) -> dict[str, Any]:
        """The file's content; ``train``/``val`` are also what ``show --json`` prints."""
        return {
            "version": SPLIT_VERSION,
            "root": self.root,
            "train": [i.to_json() for i in self.train],
            "val": [i.to_json() for i in self.val],
        }

    @classmethod
    def from_json(cls, data: Any) -> RunSplit:
        """The split a ``to_json`` document describes; ``ValueError`` if it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("root"), str):
            raise ValueError("not a run split")

        def images(key: str) -> tuple[SplitImage, ...]:
            rows = data.get(key)
            if not isinstance(rows, list):
                raise ValueError(f"{key} is not a list")
            return tuple(
                SplitImage(str(r["path"]), str(r["label"]), str(r["sha256"])) for r in rows
            )

        try:
            return cls(data["root"], images("train"), images("val"))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a malformed image row ({exc})") from exc

    def changes(self) -> SplitChanges:
        """Hash every recorded file again: which changed content, which are gone."""
        pairs = [(i.path, self.absolute(i), i.sha256) for _, i in self.images()]
        now = _hashes(p for _, p, _ in pairs)
        changed = [rel for (rel, _, sha), cur in zip(pairs, now, strict=True) if cur and cur != sha]
        missing = [rel for (rel, _, _), cur in zip(pairs, now, strict=True) if cur is None]
        return SplitChanges(changed, missing)


def _hashes(paths: Iterable[str]) -> list[str | None]:
    return file_hashes(list(paths), HASH_THREADS)


def _relative(path: str, root: str) -> str:
    """``path`` relative to ``root``, both real paths (absolute, normalised)."""
    prefix = root.rstrip(os.sep) + os.sep
    if path.startswith(prefix):  # the usual case: ``relpath`` would resolve both again
        return path[len(prefix) :].replace(os.sep, "/")
    return Path(os.path.relpath(path, root)).as_posix()


def _relative_paths(paths: Sequence[str], root: str) -> list[str]:
    """Each path's real path (``os.path.realpath``) relative to ``root`` (a real path), resolved
    once per folder: a file's own name is resolved only when its folder's listing says it is a
    symlink. (A ``realpath`` per file walked every component of 50,000 paths: a second of a
    run's start; splitting and joining each real path again took another 0.05 s.)"""
    from core.data.layout import folder_and_name, symlink_names

    # Per folder: the prefix of its plain files' relative paths, and its symlinks' names.
    folders: dict[str, tuple[str, set[str]]] = {}
    out: list[str] = []
    for path in paths:
        folder, name = folder_and_name(path)
        entry = folders.get(folder)
        if entry is None:
            real = os.path.realpath(folder)
            prefix = "" if real == root else _relative(real, root) + "/"
            entry = folders[folder] = (prefix, symlink_names(folder))
        prefix, links = entry
        if name and name not in links and name not in (os.curdir, os.pardir):
            out.append(prefix + name)
        else:
            out.append(_relative(os.path.realpath(path), root))
    return out


def record_split(run_dir: str | os.PathLike[str], data: DatasetIndex) -> RunSplit:
    """Write the split of ``data`` (the index a run trains on) into ``run_dir`` as
    ``split.json``, each file's content hashed; the split written."""
    root = os.path.realpath(data.root)
    rows: dict[str, tuple[SplitImage, ...]] = {}
    for key, paths, labels in (
        ("train", data.train_paths, data.train_labels),
        ("val", data.val_paths, data.val_labels),
    ):
        shas = _hashes(paths)
        names = data.class_names
        rows[key] = tuple(
            SplitImage(rel, names[y], sha or "")
            for rel, y, sha in zip(_relative_paths(paths, root), labels, shas, strict=True)
        )
    split = RunSplit(root, rows["train"], rows["val"])
    atomic_write_text(Path(run_dir) / SPLIT_FILE, json.dumps(split.to_json()))
    return split


def read_split(run_dir: str | os.PathLike[str]) -> RunSplit | None:
    """The split recorded in ``run_dir`` (``None``: a run from before splits were recorded, or
    one that stopped before its data was scanned, or a damaged file)."""
    try:
        return RunSplit.from_json(json.loads((Path(run_dir) / SPLIT_FILE).read_text("utf-8")))
    except (OSError, ValueError):
        return None
