"""Leakage between a run's training and validation images: near-copies on both sides of the split.

A validation image with a near-twin in training (a burst of phone photos, the same picture
re-saved, cropped or resized) is scored on what the model memorised, not on what it learnt. This
module finds such pairs from what the caller already has, pure numpy:

* the SHA-256 of each file (exact duplicates),
* perceptual hashes of each picture and of its crops (``core.data.phash``): re-encodings,
  resizes, small crops,
* the run's embeddings (cosine similarity of the pooled features the model's head sees, centred
  on their mean).

A validation image and a training image are twins when their files are identical, or their hashes
differ in at most ``HASH_BITS`` bits, or their embeddings' cosine similarity is at least
``COSINE`` (with hashes at most ``COSINE_MAX_BITS`` apart), or both are close: at most
``HASH_BITS_WITH_COSINE`` bits and a cosine of at least ``COSINE_WITH_HASH``; and in every case
their mean colours differ by at most ``COLOR_TOLERANCE`` per channel. The thresholds
were chosen by measurement on planted twins (``scripts/leakage_thresholds.py``, numbers in
``docs/leakage.md``). A pair under two labels is the same picture labelled twice.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.data.phash import CROPS, Color, Hashes, color_distance_pairs, crop_distance
from core.files import atomic_write_text

__all__ = [
    "CHUNK_CELLS",
    "COSINE",
    "COSINE_MAX_BITS",
    "COSINE_WITH_HASH",
    "COLOR_TOLERANCE",
    "HASH_BITS",
    "HASH_BITS_WITH_COSINE",
    "LEAKAGE_FILE",
    "LEAKAGE_VERSION",
    "MAX_TWINS_PER_IMAGE",
    "describe",
    "find_twins",
    "leakage_summary",
    "read_leakage",
    "relative",
    "SplitImages",
    "write_leakage",
]

LEAKAGE_FILE = "leakage.json"
LEAKAGE_VERSION = 1
# Chosen on planted twins (docs/leakage.md): re-encodings and resizes always caught, crops of a
# few pixels mostly; about 2 false pairs in 10,000 pairs of distinct pictures.
COSINE = 0.99
COSINE_MAX_BITS = 16  # ... unless the pictures' hashes disagree this much (a random-weight
# network's embeddings of two plain pictures can be as close as twins')
HASH_BITS = 6
# Weaker evidence of both kinds together (a crop moves the hash and the embedding a little each).
HASH_BITS_WITH_COSINE = 10
COSINE_WITH_HASH = 0.8
# Whatever the rule, twins' mean colours differ by at most this much in every channel (0-255).
COLOR_TOLERANCE = 12.0
MAX_TWINS_PER_IMAGE = 3  # a validation image's closest training twins listed (all are counted)
CHUNK_CELLS = 4_000_000  # similarity cells computed at once (memory: 8 bytes each)


@dataclass
class SplitImages:
    """One side of the split: files, labels and what the check compares."""

    paths: list[str]
    labels: list[int]
    shas: list[str]
    hashes: list[Hashes | None]  # crop hashes; None for a file that could not be read
    features: np.ndarray | None = None  # (n, width) embeddings, or None (hashes only)
    colors: list[Color | None] | None = None  # mean colours; None: not compared


@functools.lru_cache(maxsize=64)
def _plain_prefix(root: str) -> str | None:
    """``root`` and a separator when it is absolute and normalised, else None."""
    bare = root.rstrip(os.sep)
    plain = bare and os.path.isabs(root) and os.path.normpath(bare) == bare
    return bare + os.sep if plain else None


def relative(path: str, root: str) -> str:
    """``path`` relative to the data root, with forward slashes (the path itself if outside)."""
    # The usual case, a normalised absolute path under the root, by its prefix: ``relpath``
    # resolves both every time (0.3 s over 50,000 files on the Data page).
    prefix = _plain_prefix(root)
    if prefix and path.startswith(prefix) and os.path.normpath(path) == path:
        return path[len(prefix) :].replace(os.sep, "/")
    try:
        rel = os.path.relpath(path, root)
    except ValueError:  # another drive on Windows
        return path.replace(os.sep, "/")
    return path.replace(os.sep, "/") if rel.startswith("..") else rel.replace(os.sep, "/")


def _unit(features: np.ndarray, mean: np.ndarray) -> np.ndarray:
    f = np.asarray(features, np.float32) - mean
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    return f / np.maximum(norms, 1e-12)


def _hash_array(hashes: list[Hashes | None]) -> tuple[np.ndarray, np.ndarray]:
    known = np.asarray([h is not None for h in hashes], bool)
    rows = [h if h is not None else (0,) * len(CROPS) for h in hashes]
    return np.asarray(rows, np.uint64).reshape(len(hashes), len(CROPS)), known


def _color_array(colors: list[Color | None] | None, n: int) -> tuple[np.ndarray | None, np.ndarray]:
    if colors is None:
        return None, np.zeros(n, bool)
    known = np.asarray([c is not None for c in colors], bool)
    rows = [c if c is not None else (0.0, 0.0, 0.0) for c in colors]
    return np.asarray(rows, np.float32).reshape(n, 3), known


def find_twins(
    val: SplitImages,
    train: SplitImages,
    class_names: list[str],
    root: str,
    cosine: float = COSINE,
    hash_bits: int = HASH_BITS,
) -> list[dict[str, Any]]:
    """Every validation image's training twins, closest first (at most ``MAX_TWINS_PER_IMAGE``
    each): ``{val, train, similarity, same_label, exact, hash_distance, val_label, train_label}``
    with paths relative to ``root``; ``similarity`` is the embeddings' cosine (1.0 for identical
    files, ``None`` without embeddings)."""
    if not val.paths or not train.paths:
        return []
    vf = tf = None
    if val.features is not None and train.features is not None:
        # Centred first: pooled ReLU features share a large common part (every image's cosine
        # to every other is high); what tells two pictures apart is the rest.
        mean = np.concatenate([val.features, train.features]).mean(axis=0)
        vf, tf = _unit(val.features, mean), _unit(train.features, mean)
    vh, vknown = _hash_array(val.hashes)
    th, tknown = _hash_array(train.hashes)
    vc, vcknown = _color_array(val.colors, len(val.paths))
    tc, tcknown = _color_array(train.colors, len(train.paths))
    sha_rows: dict[str, list[int]] = {}
    for j, sha in enumerate(train.shas):
        sha_rows.setdefault(sha, []).append(j)
    pairs: list[dict[str, Any]] = []
    step = max(1, CHUNK_CELLS // len(train.paths))
    for start in range(0, len(val.paths), step):
        rows = range(start, min(start + step, len(val.paths)))
        sims = vf[rows.start : rows.stop] @ tf.T if vf is not None and tf is not None else None
        bits = crop_distance(vh[rows.start : rows.stop], th)
        both = vknown[rows.start : rows.stop, None] & tknown[None, :]
        near = both & (bits <= hash_bits)
        if sims is not None:
            near |= (sims >= cosine) & (~both | (bits <= COSINE_MAX_BITS))
            near |= both & (bits <= HASH_BITS_WITH_COSINE) & (sims >= COSINE_WITH_HASH)
        if vc is not None and tc is not None:
            # A twin keeps its colours: flat pictures of two colours hash alike, and a weak
            # network can map them alike too. Compared for the candidate pairs only (a few
            # per image): the full matrix took 14 s at 10,000 x 40,000 images.
            pair_rows, pair_cols = np.nonzero(near)
            v, t = rows.start + pair_rows, pair_cols
            apart = color_distance_pairs(vc[v], tc[t]) > COLOR_TOLERANCE
            drop = vcknown[v] & tcknown[t] & apart
            near[pair_rows[drop], pair_cols[drop]] = False
        for r, i in enumerate(rows):
            hits = set(np.flatnonzero(near[r]).tolist()) | set(sha_rows.get(val.shas[i], []))
            if not hits:
                continue
            exact = set(sha_rows.get(val.shas[i], []))
            row_sims = sims[r] if sims is not None else None
            # Closest first: identical files, then the most similar embeddings, then hashes.
            ranked = sorted(
                hits,
                key=lambda j: (
                    j in exact,
                    float(row_sims[j]) if row_sims is not None else 0.0,
                    -int(bits[r, j]),
                ),
                reverse=True,
            )
            for j in ranked[:MAX_TWINS_PER_IMAGE]:
                same = j in exact
                sim = 1.0 if same else (float(row_sims[j]) if row_sims is not None else None)
                pairs.append(
                    {
                        "val": relative(val.paths[i], root),
                        "train": relative(train.paths[j], root),
                        "similarity": None if sim is None else round(min(sim, 1.0), 4),
                        "same_label": val.labels[i] == train.labels[j],
                        "exact": same,
                        "hash_distance": int(bits[r, j]) if both[r, j] else None,
                        "val_label": class_names[val.labels[i]],
                        "train_label": class_names[train.labels[j]],
                    }
                )
    return pairs


def leakage_summary(
    pairs: list[dict[str, Any]], val_paths: list[str], correct: list[bool] | None, root: str
) -> dict[str, Any]:
    """The public ``leakage`` object: the pairs, how many validation images have a training twin,
    and the accuracy on the others (``correct[i]``: whether ``val_paths[i]`` was predicted right;
    ``None`` before any model, or when every validation image has a twin)."""
    twins = {p["val"] for p in pairs}
    correct = correct or []
    kept = [c for p, c in zip(val_paths, correct, strict=False) if relative(p, root) not in twins]
    return {
        "pairs": pairs,
        "val_images_with_train_twin": len(twins),
        "val_images": len(val_paths),
        "accuracy": round(float(np.mean(correct)), 4) if correct else None,
        "accuracy_without_twins": round(float(np.mean(kept)), 4) if kept else None,
        "exact_duplicates": sum(1 for p in pairs if p["exact"]),
        "different_labels": sum(1 for p in pairs if not p["same_label"]),
        "thresholds": {
            "cosine": COSINE,
            "hash_bits": HASH_BITS,
            "cosine_max_bits": COSINE_MAX_BITS,
            "hash_bits_with_cosine": HASH_BITS_WITH_COSINE,
            "cosine_with_hash": COSINE_WITH_HASH,
            "color_tolerance": COLOR_TOLERANCE,
        },
    }


def describe(leakage: dict[str, Any]) -> str:
    """The check in one sentence, as the Run page says it."""
    n, total = leakage["val_images_with_train_twin"], leakage["val_images"]
    if n == 0:
        return (
            f"None of the {total} validation images has a near-copy in training: the validation "
            "score measures images the model never saw."
        )
    without, acc = leakage.get("accuracy_without_twins"), leakage.get("accuracy")
    text = f"{n} of {total} validation images have a near-copy in training"
    if n == total:
        text += "; every validation image has one, so the validation score measures memory."
    elif without is not None and acc is not None:
        text += f"; without them accuracy is {without:.2f}, not {acc:.2f}."
    else:  # before any model (the Data page): no accuracy to compare
        text += ": a validation score on them would measure memory, not learning."
    labels = leakage.get("different_labels", 0)
    if labels:
        text += f" {labels} pair(s) carry different labels: the same picture labelled twice."
    return text


def write_leakage(folder: Path, leakage: dict[str, Any], model_key: dict[str, Any]) -> None:
    """``leakage.json`` in the run folder, tied to the model file it was computed with."""
    record = {**leakage, "cache_key": {**model_key, "version": LEAKAGE_VERSION}}
    atomic_write_text(folder / LEAKAGE_FILE, json.dumps(record))


def read_leakage(folder: Path, model_key: dict[str, Any]) -> dict[str, Any] | None:
    """The stored check for this model file, or ``None``."""
    try:
        data = json.loads((folder / LEAKAGE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("cache_key") != {
        **model_key,
        "version": LEAKAGE_VERSION,
    }:
        return None
    return {k: v for k, v in data.items() if k != "cache_key"}
