"""Resolving a ``--data`` source into a checked, split list of labelled image files.

Sources: ``builtin:NAME``, a local folder (class subfolders, or ``train/`` plus ``val/``,
``validation/`` or ``test/``, possibly under a few wrapper folders), a ``.zip`` file (extracted
safely into the cache) and ``kaggle:OWNER/SLUG[/versions/N]`` (through kagglehub and its cache).

Every candidate file is checked with ``check_image`` up front, so training never meets a broken
file; what was left out and why is kept in ``DatasetIndex.skipped_files`` for the user to see.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from core.data.archives import read_zip_marker
from core.data.layout import (
    class_folders,
    find_layout,
    folder_entries,
    is_image_name,
    reason_summary,
    usable_files,
)
from core.data.sources import DATASET_SPLIT_PINS, parse_source, resolve_source
from core.errors import ConfigError, DataError

__all__ = [
    "DatasetIndex",
    "load_dataset",
    "stratified_split",
]


@dataclass
class DatasetIndex:
    """A resolved dataset: sorted class names and the labelled train/validation files."""

    source: str
    root: str
    class_names: list[str]
    train_paths: list[str]
    train_labels: list[int]
    val_paths: list[str]
    val_labels: list[int]
    skipped_files: list[dict] = field(default_factory=list)
    split: str = "random"

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Images per class in each split: ``{"train": {cls: n}, "val": {cls: n}}``."""
        counts: dict[str, dict[str, int]] = {}
        for split, labels in (("train", self.train_labels), ("val", self.val_labels)):
            per_label = Counter(labels)
            counts[split] = {name: per_label.get(i, 0) for i, name in enumerate(self.class_names)}
        return counts

    def paths_by_class(self) -> dict[str, list[str]]:
        """Each class's image paths, its training files first, then its validation files."""
        by_class: dict[str, list[str]] = {name: [] for name in self.class_names}
        for paths, labels in (
            (self.train_paths, self.train_labels),
            (self.val_paths, self.val_labels),
        ):
            for path, label in zip(paths, labels, strict=True):
                by_class[self.class_names[label]].append(path)
        return by_class

    def summary(self) -> dict:
        """JSON-able overview for run records, the CLI and the dashboard."""
        return {
            "source": self.source,
            "root": self.root,
            "class_names": list(self.class_names),
            "train_images": len(self.train_paths),
            "val_images": len(self.val_paths),
            "class_counts": self.class_counts(),
            "skipped_files": [dict(item) for item in self.skipped_files],
            "split": self.split,
        }


# --------------------------------------------------------------------------- sources


def _split_ok(labels: np.ndarray, val_idx: np.ndarray) -> bool:
    total = np.bincount(labels)
    in_val = np.bincount(labels[val_idx], minlength=len(total))
    big = total >= 2
    return bool(np.all(in_val[big] >= 1) and np.all(in_val[big] <= total[big] - 1))


def _val_count(n: int, val_split: float) -> int:
    """Validation images of a class of ``n``: at least one in each split once ``n >= 2``."""
    return 0 if n < 2 else min(max(round(n * val_split), 1), n - 1)


def stratified_split(
    labels: list[int],
    val_split: float,
    seed: int,
    keys: list[str] | None = None,
    pins: dict[int, str] | None = None,
) -> tuple[list, list]:
    """Split indices into (train, val): sklearn's stratified split, or per class for tiny classes.

    With ``keys`` (one stable name per image, e.g. a managed dataset's content-hash file names)
    the split is **stable under edits**: within each class the images are ranked by a seeded hash
    of their key and the first ones validate. Relabelling or excluding one image then moves at
    most one other image of each class it touches between the splits, so a run retrained after
    fixes is validated on (almost) the same images as the run it fixes. Either way each class
    with at least 2 images keeps at least one in each split.

    ``pins`` (with ``keys``: a managed dataset's): ``{index: "train" | "val"}``. An image pinned
    to training never validates, one pinned to validation always does; each class still
    validates on as many images as without pins, the first unpinned ones in the seeded order
    (so a pin moves at most one other image of its class across).
    """
    y = np.asarray(labels, dtype=np.int64)
    idx = np.arange(len(y))
    if keys is not None:
        import hashlib

        def rank(i: int) -> str:
            return hashlib.sha256(f"{seed}:{keys[i]}".encode()).hexdigest()

        pinned = pins or {}
        train_s: list[int] = []
        val_s: list[int] = []
        for label in np.unique(y):
            ranked = sorted(idx[y == label].tolist(), key=rank)
            n_val = _val_count(len(ranked), val_split)
            forced = [i for i in ranked if pinned.get(i) == "val"]
            free = [i for i in ranked if i not in pinned]
            chosen = set(forced + free[: max(n_val - len(forced), 0)])
            val_s.extend(i for i in ranked if i in chosen)
            train_s.extend(i for i in ranked if i not in chosen)
        return sorted(train_s), sorted(val_s)
    try:
        from sklearn.model_selection import train_test_split

        train_idx, val_idx = train_test_split(
            idx, test_size=val_split, stratify=y, random_state=seed
        )
        if _split_ok(y, np.asarray(val_idx)):
            return sorted(train_idx.tolist()), sorted(val_idx.tolist())
    except ValueError:  # a class with one image, or fewer val slots than classes
        pass
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for label in np.unique(y):
        members = rng.permutation(idx[y == label])
        n_val = _val_count(len(members), val_split)
        val.extend(members[:n_val].tolist())
        train.extend(members[n_val:].tolist())
    return sorted(train), sorted(val)


# --------------------------------------------------------------------------- load


def _split_pins(source: str, paths: list[str]) -> dict[int, str]:
    """The managed dataset's split pins, by index into ``paths`` (an image's id is its file
    name's stem)."""
    name = parse_source(source)[1]
    pins: dict[str, str] = {}
    for read in DATASET_SPLIT_PINS:
        pins.update(read(name))
    if not pins:
        return {}
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    return {i: pins[stem] for i, stem in enumerate(stems) if stem in pins}


def _validate_split_args(val_split: float, seed: int) -> None:
    if isinstance(val_split, bool) or not isinstance(val_split, (int, float)):
        raise ConfigError(f"val_split must be a number in (0, 0.9], got {val_split!r}.")
    if not 0 < val_split <= 0.9:
        raise ConfigError(
            f"val_split must be in (0, 0.9], got {val_split}; e.g. 0.2 keeps 20% for validation."
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an integer, got {seed!r}.")


def _no_classes_error(folder: str, root_real: str) -> DataError:
    _, files = folder_entries(folder, root_real, None)
    images = [f for f in files if is_image_name(f)]
    if images:
        return DataError(
            f"Found {len(images)} images directly in {folder} but no class subfolders; put the "
            f"images of each class in their own subfolder, e.g. {folder}/cats and {folder}/dogs."
        )
    return DataError(
        f"No images found in {folder}: expected one subfolder per class, e.g. {folder}/cats and "
        f"{folder}/dogs."
    )


def load_dataset(
    source: str,
    val_split: float = 0.2,
    seed: int = 42,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetIndex:
    """Resolve ``source``, check every image and split it into train and validation files.

    Data shipped with its own ``val``/``validation``/``test`` folder keeps that split
    (``split="given:<dir>"``); otherwise a seeded stratified split of ``val_split`` is made.
    ``progress(done, total)``: image files checked so far (the training folders', then the
    validation folder's).
    """
    _validate_split_args(val_split, seed)
    root_path = resolve_source(source)
    root = str(root_path)
    root_real = os.path.realpath(root)
    skipped: list[dict] = []
    source_kind = parse_source(source)[0]
    if source_kind == "zip":  # members refused at extraction are skipped files too
        skipped.extend((read_zip_marker(root_path) or {}).get("skipped", []))

    layout = find_layout(root, root_real)
    train_dirs = class_folders(layout.train_dir, root_real, skipped)
    if not train_dirs:
        raise _no_classes_error(layout.train_dir, root_real)
    if len(train_dirs) == 1:
        (only,) = train_dirs
        folder = layout.train_dir
        raise DataError(
            f"Found 1 class {only!r} in {folder}; need at least 2 class subfolders, "
            f"e.g. {folder}/cats and {folder}/dogs."
        )
    val_dirs: dict[str, str] = {}
    if layout.val_dir:
        val_dirs = class_folders(layout.val_dir, root_real, skipped)
        extra = sorted(set(val_dirs) - set(train_dirs))
        if extra:
            raise DataError(
                f"Class folder(s) {', '.join(map(repr, extra))} in {layout.val_dir} have no "
                f"counterpart in {layout.train_dir}; the validation classes must be the training "
                f"classes ({', '.join(sorted(train_dirs))})."
            )

    class_names = sorted(train_dirs)
    claimed: dict[str, str] = {}  # real path -> the one path it is used under
    train_files, train_skips = usable_files(train_dirs, root, root_real, skipped, claimed, progress)
    val_files, _ = usable_files(val_dirs, root, root_real, skipped, claimed, progress)
    usable_total = sum(map(len, train_files.values())) + sum(map(len, val_files.values()))
    if usable_total == 0:
        detail = f" ({len(skipped)} files skipped: {reason_summary(skipped)})" if skipped else ""
        raise DataError(f"No usable images found in {root}{detail}.")
    for name in class_names:
        if not train_files[name]:
            own = train_skips[name]
            why = f"{len(own)} files skipped: {reason_summary(own)}" if own else "it is empty"
            raise DataError(
                f"Class folder {name!r} ({train_dirs[name]}) has no usable image: {why}."
            )

    label_of = {name: i for i, name in enumerate(class_names)}
    paths = [p for name in class_names for p in train_files[name]]
    labels = [label_of[name] for name in class_names for _ in train_files[name]]
    if layout.val_dir:
        train_paths, train_labels = paths, labels
        val_paths = [p for name in class_names for p in val_files.get(name, [])]
        val_labels = [label_of[name] for name in class_names for _ in val_files.get(name, [])]
    else:
        # A managed dataset is edited between runs: its split must not reshuffle on each edit.
        keys = [os.path.basename(p) for p in paths] if source_kind == "dataset" else None
        pins = _split_pins(source, paths) if source_kind == "dataset" else None
        train_idx, val_idx = stratified_split(labels, float(val_split), int(seed), keys, pins)
        train_paths = [paths[i] for i in train_idx]
        train_labels = [labels[i] for i in train_idx]
        val_paths = [paths[i] for i in val_idx]
        val_labels = [labels[i] for i in val_idx]

    return DatasetIndex(
        source=source,
        root=root,
        class_names=class_names,
        train_paths=train_paths,
        train_labels=train_labels,
        val_paths=val_paths,
        val_labels=val_labels,
        skipped_files=skipped,
        split=layout.split,
    )
