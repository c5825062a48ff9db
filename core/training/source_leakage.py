"""The Data page's leakage check: near-copies across the split a run would use, before training.

The same test the worker runs on a finished run (``core.runs.leakage.find_twins``: identical
files, the same picture under two labels, near-twins by perceptual hash and embedding), on the
split of a source before any run, when the features of its files are already in the embedding
cache (a feature pass would cost what a page visit must not; without cached features the check
is skipped, and says so).

It never imports TensorFlow or Keras (the dashboard's server runs it): the cache entry is found
by ``core.training.feature_cache`` and read with numpy, and the perceptual hashes come from
``core.data.phash.cached_signatures`` (stored by content hash, so a second visit decodes nothing
it decoded before). Its result is stored in ``<home>/cache/leakage/`` under a key of everything
it depends on (the feature entry, which already names every file's content; the split and
labels; the test's version), so a visit to unchanged data reads one small file.

``plan_check`` says what a check would cost (the pictures not hashed yet); when that is more than
``INLINE_HASHES`` the page runs it as the background task ``TASK`` (``core.tasks``) and shows its
progress instead of holding the page.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.config import RunConfig
from core.data.phash import cached_signatures, uncached_count
from core.data.scan_cache import content_hashes
from core.files import atomic_write_text
from core.paths import studio_home
from core.runs.leakage import (
    LEAKAGE_VERSION,
    SplitImages,
    find_twins,
    leakage_summary,
    relative,
)
from core.tasks import TaskFn, UpdateFn, register_task, start_task
from core.training.feature_cache import embedding_cache_dir, read_features, source_features_key

if TYPE_CHECKING:
    from core.data import DatasetIndex

__all__ = [
    "INLINE_HASHES",
    "RESULT_VERSION",
    "TASK",
    "CheckPlan",
    "SourceLeakage",
    "check_task",
    "finished_check",
    "forget_check",
    "leakage_before_training",
    "leakage_results_dir",
    "plan_check",
    "run_check",
    "start_check",
]

INLINE_HASHES = 300  # pictures to hash a page visit does itself (~1 s of small images)
RESULT_VERSION = 1
TASK = "data_leakage"


@dataclass
class SourceLeakage:
    """The Data page's check: ``leakage`` is ``None`` when it was skipped (``reason`` says why)."""

    leakage: dict[str, Any] | None
    reason: str


@dataclass
class CheckPlan:
    """What a check of ``data`` under ``config``'s base needs: every file's content hash (train
    then validation), the embedding cache entry (``feature_key``; ``None``: random weights), the
    stored result's key, and how many pictures are not perceptually hashed yet."""

    config: RunConfig
    data: DatasetIndex
    shas: list[str]
    feature_key: str | None
    result_key: str
    to_hash: int

    @property
    def paths(self) -> list[str]:
        """Training then validation files (the order of the cached features)."""
        return [*self.data.train_paths, *self.data.val_paths]

    def features_cached(self) -> bool:
        """Whether the embedding cache holds this split's features."""
        return (
            self.feature_key is not None
            and (embedding_cache_dir() / f"{self.feature_key}.npy").is_file()
        )


def leakage_results_dir() -> Path:
    """Where the checks' results are kept (safe to delete: they are computed again)."""
    return studio_home() / "cache" / "leakage"


def plan_check(config: RunConfig, data: DatasetIndex) -> CheckPlan:
    """Hash every file of ``data``'s split (content only: cheap next to decoding) and find what
    the check would reuse."""
    paths = [*data.train_paths, *data.val_paths]
    shas = content_hashes(paths)  # the health check's digests, when it ran first
    feature_key = source_features_key(config, config.resolved_image_size(), shas)
    root = str(data.root)
    identity = {
        "version": RESULT_VERSION,
        "leakage": LEAKAGE_VERSION,
        "features": feature_key,
        "classes": list(data.class_names),
        "train": [
            [relative(p, root), y] for p, y in zip(data.train_paths, data.train_labels, strict=True)
        ],
        "val": [
            [relative(p, root), y] for p, y in zip(data.val_paths, data.val_labels, strict=True)
        ],
        "root": root,
    }
    result_key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    return CheckPlan(config, data, shas, feature_key, result_key, uncached_count(shas))


def _skipped(plan: CheckPlan) -> SourceLeakage:
    return SourceLeakage(
        None,
        f"no cached {plan.config.backbone} features of these files yet: the check runs after "
        "the first feature-extraction run on them",
    )


def _found(plan: CheckPlan, leakage: dict[str, Any]) -> SourceLeakage:
    return SourceLeakage(leakage, f"from the cached {plan.config.backbone} features")


def finished_check(plan: CheckPlan) -> SourceLeakage | None:
    """The check's answer without computing anything: skipped (no cached features), or the
    stored result; ``None`` when it has still to run."""
    if not plan.features_cached():
        return _skipped(plan)
    try:
        stored = json.loads(
            (leakage_results_dir() / f"{plan.result_key}.json").read_text(encoding="utf-8")
        )
    except (OSError, ValueError):
        return None
    return _found(plan, stored) if isinstance(stored, dict) else None


def forget_check(plan: CheckPlan) -> None:
    """Drop the stored result (the page's "Check again")."""
    (leakage_results_dir() / f"{plan.result_key}.json").unlink(missing_ok=True)


def run_check(plan: CheckPlan, progress: Callable[[int, int], None] | None = None) -> SourceLeakage:
    """Run the check (``progress(done, total)``: pictures hashed) and store its result."""
    if not plan.features_cached() or plan.feature_key is None:
        return _skipped(plan)
    data, paths = plan.data, plan.paths
    features = read_features(plan.feature_key)
    if features is None or features.ndim != 2 or len(features) != len(paths):
        return _skipped(plan)  # evicted meanwhile, or an entry of another file list
    signatures = cached_signatures(paths, plan.shas, progress)
    n = len(data.train_paths)

    def side(lo: int, hi: int, labels: list[int]) -> SplitImages:
        sigs = signatures[lo:hi]
        return SplitImages(
            paths[lo:hi],
            list(labels),
            plan.shas[lo:hi],
            [s[0] if s is not None else None for s in sigs],
            np.asarray(features[lo:hi], np.float32),
            [s[1] if s is not None else None for s in sigs],
        )

    train = side(0, n, data.train_labels)
    val = side(n, len(paths), data.val_labels)
    root = str(data.root)
    pairs = find_twins(val, train, list(data.class_names), root)
    leakage = leakage_summary(pairs, list(data.val_paths), None, root)
    leakage["root"] = root
    folder = leakage_results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{plan.result_key}.json", json.dumps(leakage))
    return _found(plan, leakage)


def leakage_before_training(
    config: RunConfig, data: DatasetIndex, progress: Callable[[int, int], None] | None = None
) -> SourceLeakage:
    """The leakage test on ``data``'s split before training, from cached features only (hashes
    alone are not enough to say the test ran, so without cached features it is skipped); the
    stored result when nothing changed since the last check."""
    plan = plan_check(config, data)
    return finished_check(plan) or run_check(plan, progress)


def start_check(
    root: str | Path,
    config: RunConfig,
    source: str,
    val_split: float,
    seed: int,
    result_key: str | None = None,
) -> bool:
    """Run the check of ``source`` (split by ``val_split`` and ``seed``) as background task
    ``TASK`` of runs folder ``root``; ``False`` if one already runs there. ``result_key``: the
    plan's (``plan_check``), for a page to know the task is its own before the task says so."""
    initial = {
        "result_key": result_key,
        "source": source,
        "val_split": val_split,
        "seed": seed,
        "backbone": config.backbone,
        "weights": config.weights,
        "image_size": config.image_size,
        "done": 0,
        "total": 0,
    }
    return start_task(root, TASK, None, initial)


def check_task(initial: dict[str, Any]) -> TaskFn:
    """The background task's work: load the source, run the check, say which result it made."""

    def work(update: UpdateFn, _should_stop: Callable[[], bool]) -> dict[str, Any]:
        from core.data import load_dataset

        config = RunConfig(
            data=str(initial["source"]),
            backbone=str(initial["backbone"]),
            weights=str(initial["weights"]),
            image_size=initial.get("image_size"),
        )
        data = load_dataset(config.data, float(initial["val_split"]), int(initial["seed"]))
        plan = plan_check(config, data)
        update({"result_key": plan.result_key, "total": plan.to_hash})
        found = run_check(plan, lambda done, total: update({"done": done, "total": total}))
        pairs = len(found.leakage["pairs"]) if found.leakage is not None else None
        return {"result_key": plan.result_key, "pairs": pairs}

    return work


register_task(TASK, check_task)
