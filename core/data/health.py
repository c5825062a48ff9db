"""Dataset health checks shown on the Data page, before anyone spends CPU time training.

``health_report`` looks at a ``DatasetIndex`` and returns plain ``{"level", "message"}`` dicts:
class imbalance, near-empty classes, the same image in train and validation (by SHA-256 of the
file content), very small images (from a sample) and files that were skipped.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from typing import Any

from PIL import Image

from core.data import DatasetIndex
from core.data.images import open_regular_file
from core.data.scan_cache import file_hashes

__all__ = [
    "IMBALANCE_RATIO",
    "MAX_HASHED_FILES",
    "MIN_CLASS_IMAGES",
    "MIN_SIDE",
    "SIZE_SAMPLE",
    "duplicates_across_splits",
    "health_report",
    "sample_images",
    "skipped_table",
    "small_images",
    "total_counts",
]

WARNING, INFO = "warning", "info"
IMBALANCE_RATIO = 3.0  # largest / smallest class above this is worth a warning
MIN_CLASS_IMAGES = 5  # fewer images than this in a class: near-empty
MIN_SIDE = 32  # images whose smaller side is below this are "very small"
SIZE_SAMPLE = 200  # images whose size is read for the small-image check
MAX_HASHED_FILES = 50_000  # beyond this, the duplicate check is skipped (and says so)


HASH_THREADS = 4


def _hashes(paths: list[str]) -> dict[str, str]:
    """Each readable file's SHA-256, in the order given (hashed once per process while the file
    is unchanged: the leakage plan and the split check hash the same files)."""
    digests = file_hashes(paths, HASH_THREADS)
    return {p: d for p, d in zip(paths, digests, strict=True) if d is not None}


def total_counts(index: DatasetIndex) -> dict[str, int]:
    """Images per class over train and validation together."""
    counts = index.class_counts()
    return {
        name: counts["train"].get(name, 0) + counts["val"].get(name, 0)
        for name in index.class_names
    }


def duplicates_across_splits(index: DatasetIndex) -> list[tuple[str, str]]:
    """``(train_path, val_path)`` pairs whose files have identical content."""
    train_hashes = _hashes(list(index.train_paths))
    by_hash: dict[str, str] = {}
    for path, digest in train_hashes.items():
        by_hash.setdefault(digest, path)
    pairs = []
    for path, digest in _hashes(list(index.val_paths)).items():
        if digest in by_hash:
            pairs.append((by_hash[digest], path))
    return pairs


def small_images(
    index: DatasetIndex, min_side: int = MIN_SIDE, sample: int = SIZE_SAMPLE, seed: int = 0
) -> tuple[list[tuple[str, int, int]], int]:
    """Images (from a seeded sample) whose smaller side is below ``min_side``.

    Returns ``([(path, width, height)...], number_checked)``; only headers are read.
    """
    paths = list(index.train_paths) + list(index.val_paths)
    if len(paths) > sample:
        paths = random.Random(seed).sample(paths, sample)
    found = []
    checked = 0
    for path in paths:
        try:
            # Never a plain open: a file swapped for a FIFO since the scan would block it.
            with open_regular_file(path) as fh, Image.open(fh) as im:
                width, height = im.size
        except Exception:  # unreadable files are the scanner's business
            continue
        checked += 1
        if min(width, height) < min_side:
            found.append((path, width, height))
    return found, checked


def _names(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def health_report(
    index: DatasetIndex,
    *,
    imbalance_ratio: float = IMBALANCE_RATIO,
    min_class_images: int = MIN_CLASS_IMAGES,
    min_side: int = MIN_SIDE,
    size_sample: int = SIZE_SAMPLE,
    max_hashed_files: int = MAX_HASHED_FILES,
    seed: int = 0,
) -> list[dict[str, str]]:
    """Warnings (``level="warning"``) and notes (``"info"``) about a dataset, worst first."""
    report: list[dict[str, str]] = []
    counts = total_counts(index)

    nonzero = {k: v for k, v in counts.items() if v > 0}
    if len(nonzero) >= 2:
        big = max(nonzero, key=nonzero.__getitem__)
        small = min(nonzero, key=nonzero.__getitem__)
        ratio = nonzero[big] / nonzero[small]
        if ratio > imbalance_ratio:
            report.append(
                {
                    "level": WARNING,
                    "message": f"Class imbalance: '{big}' has {nonzero[big]} images but "
                    f"'{small}' only {nonzero[small]} ({ratio:.1f}x). Accuracy will favour the "
                    "large class; collect more of the small one or compare per-class results.",
                }
            )

    sparse = sorted((name for name, n in counts.items() if n < min_class_images), key=str)
    if sparse:
        detail = _names([f"'{n}' ({counts[n]})" for n in sparse])
        report.append(
            {
                "level": WARNING,
                "message": f"Near-empty class{'es' if len(sparse) > 1 else ''}: {detail}. "
                f"Fewer than {min_class_images} images cannot teach or measure a class; "
                "add more images.",
            }
        )

    n_files = len(index.train_paths) + len(index.val_paths)
    if n_files > max_hashed_files:
        report.append(
            {
                "level": INFO,
                "message": f"Duplicate check skipped: {n_files} files is more than the "
                f"{max_hashed_files} hashed here.",
            }
        )
    else:
        pairs = duplicates_across_splits(index)
        if pairs:
            examples = _names(
                [f"{os.path.basename(t)} = {os.path.basename(v)}" for t, v in pairs], 3
            )
            verb = "images are" if len(pairs) > 1 else "image is"
            report.append(
                {
                    "level": WARNING,
                    "message": f"{len(pairs)} validation {verb}"
                    f" identical to training images ({examples}). Validation accuracy will look "
                    "better than it is; remove the copies from one split.",
                }
            )

    tiny, checked = small_images(index, min_side=min_side, sample=size_sample, seed=seed)
    if tiny:
        w, h = tiny[0][1], tiny[0][2]
        report.append(
            {
                "level": WARNING,
                "message": f"Very small images: {len(tiny)} of {checked} checked have a side "
                f"under {min_side} px (e.g. {os.path.basename(tiny[0][0])} is {w}x{h}). They are "
                "upscaled to the model's input size and lose detail.",
            }
        )

    if index.skipped_files:
        reasons = Counter(str(item.get("reason", "?")) for item in index.skipped_files)
        summary = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common(3))
        report.append(
            {
                "level": INFO,
                "message": f"{len(index.skipped_files)} file(s) skipped ({summary}); "
                "see the table below.",
            }
        )
    return report


def sample_images(index: DatasetIndex, per_class: int = 6, seed: int = 0) -> dict[str, list[str]]:
    """Up to ``per_class`` image paths per class (training files first), seeded."""
    by_class = index.paths_by_class()
    rng = random.Random(seed)
    out: dict[str, list[str]] = {}
    for name, paths in by_class.items():
        out[name] = sorted(rng.sample(paths, per_class)) if len(paths) > per_class else paths
    return out


def skipped_table(index: DatasetIndex) -> list[dict[str, Any]]:
    """The skipped files as table rows: file name, reason, full path."""
    return [
        {
            "file": os.path.basename(str(item.get("path", ""))),
            "reason": item.get("reason", ""),
            "path": item.get("path", ""),
        }
        for item in index.skipped_files
    ]
