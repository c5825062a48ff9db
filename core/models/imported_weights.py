"""The index of imported weights files: what ``weights=NAME`` resolves and what is here.

The files and ``index.json`` live in ``<studio home>/weights/imported``. Checking and importing a
file is ``core.models.weights_store``'s job; this module only records and finds them, so the
backbone registry can ask what was imported without importing the checks.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.files import atomic_path, atomic_write_text, sha256_file
from core.paths import weights_cache_dir

__all__ = [
    "ImportedWeights",
    "KIND_CUSTOM",
    "KIND_IMAGENET",
    "WEIGHT_SUFFIXES",
    "copy_into",
    "find_imported",
    "imported_for",
    "imported_names",
    "keep_file",
    "list_imported",
    "record",
    "resolve_weights",
    "store_dir",
]

KIND_IMAGENET = "imagenet"  # one of Keras' ImageNet files, placed in Keras' cache
KIND_CUSTOM = "custom"  # any other weights file for a registry backbone
WEIGHT_SUFFIXES = (".weights.h5", ".h5", ".keras")
_INDEX_LOCK = threading.Lock()


@dataclass(frozen=True)
class ImportedWeights:
    """One imported file, as ``weights import --json`` prints it and the index stores it."""

    name: str  # what ``--weights NAME`` resolves (Keras' file name for ImageNet files)
    backbone: str
    kind: str  # KIND_IMAGENET or KIND_CUSTOM
    verified: bool  # the bytes match a hash Keras pins (custom files: never)
    sha256: str
    path: str  # where the studio keeps it now
    source: str  # the file that was imported
    imported_at: float
    note: str  # what was checked, in words

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record."""
        return asdict(self)


def store_dir() -> Path:
    """``<studio home>/weights/imported``: the imported files and their index."""
    path = weights_cache_dir() / "imported"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _index_path() -> Path:
    return store_dir() / "index.json"


def list_imported() -> list[ImportedWeights]:
    """Every imported file still present, oldest first."""
    try:
        rows = json.loads(_index_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    out: list[ImportedWeights] = []
    for row in rows if isinstance(rows, list) else []:
        try:
            item = ImportedWeights(**row)
        except TypeError:
            continue  # a record written by another version: ignore it rather than fail
        if Path(item.path).is_file():
            out.append(item)
    return out


def _save_index(items: list[ImportedWeights]) -> None:
    atomic_write_text(_index_path(), json.dumps([i.to_dict() for i in items], indent=2))


def find_imported(name: str) -> ImportedWeights | None:
    """The imported weights called ``name`` (the latest import wins)."""
    matches = [i for i in list_imported() if i.name == name]
    return matches[-1] if matches else None


def imported_for(backbone: str) -> list[ImportedWeights]:
    """The imported files for ``backbone``."""
    return [i for i in list_imported() if i.backbone == backbone]


def imported_names(backbone: str) -> list[str]:
    """Names of the custom weights imported for ``backbone`` (what ``weights=NAME`` takes)."""
    return [i.name for i in imported_for(backbone) if i.kind == KIND_CUSTOM]


def resolve_weights(weights: str) -> str:
    """``weights`` as a builder takes it: an imported name becomes its file's path."""
    if weights in ("imagenet", "none") or Path(weights).expanduser().is_file():
        return weights
    found = find_imported(weights)
    return found.path if found is not None else weights


def copy_into(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` atomically (a reader never sees half a file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def record(item: ImportedWeights) -> ImportedWeights:
    """Add ``item`` to the index (it replaces an import of the same name)."""
    with _INDEX_LOCK:
        items = [i for i in list_imported() if i.name != item.name]  # a new import replaces
        _save_index([*items, item])
    return item


def keep_file(path: Path, backbone: str, name: str, source: str, note: str) -> ImportedWeights:
    """Copy an already checked weights file into the store and record it under ``name``."""
    sha = sha256_file(path)
    suffix = next((s for s in WEIGHT_SUFFIXES if path.name.endswith(s)), path.suffix)
    target = store_dir() / f"{sha[:16]}-{backbone}{suffix}"
    if not target.is_file():
        copy_into(path, target)
    return record(
        ImportedWeights(
            name=name,
            backbone=backbone,
            kind=KIND_CUSTOM,
            verified=False,
            sha256=sha,
            path=str(target),
            source=source,
            imported_at=time.time(),
            note=note,
        )
    )
