"""Benchmark figure 11: review finds deliberately swapped labels, and fixing them does not hurt.

Measured on real photos (``core.bench.fast.photo_dataset``: views of four scikit-image photos,
4 classes): a managed dataset is built with 10 % of its *training*
labels swapped to another class (which images land in training is known in advance: the split
is a function of the labels and file names, simulated here with the loader's own function);
a run trains on it (EfficientNet-Lite0, feature extraction); ``review --top 2N`` (N swapped
images) should contain at least 80 % of them (the recall); the swapped images it found are
relabelled to their true class through the dataset API, and the same config retrains on the
edited dataset (``retrain_config``): its best validation accuracy should not be lower.

The dataset is the benchmark's own (a unique name, removed at the end).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.bench.common import ProgressCb
from core.config import RunConfig

__all__ = [
    "PER_CLASS",
    "SWAP_FRACTION",
    "SWAP_SEED",
    "TARGET_RECALL",
    "ProgressCb",
    "choose_swaps",
    "format_line",
    "review_figure",
]

SWAP_FRACTION = 0.10
TARGET_RECALL = 0.80
SWAP_SEED = 14
PER_CLASS = 50  # 200 photos, 160 training images, 16 swapped


def _val_ids(labels: dict[str, str], names: dict[str, str], val_split: float, seed: int) -> set:
    """Ids the loader will put in validation for ``labels`` ({id: class}), before any run
    trains on them: classes sorted, files by name within a class (a managed dataset's layout),
    then the loader's stable split."""
    from core.data.index import stratified_split

    classes = sorted(set(labels.values()))
    order = sorted(labels, key=lambda i: (classes.index(labels[i]), names[i]))
    y = [classes.index(labels[i]) for i in order]
    _train, val = stratified_split(y, val_split, seed, [names[i] for i in order])
    return {order[i] for i in val}


def _validated(store: Any, run_id: str) -> set[str]:
    """Ids (content hashes) of the images run ``run_id`` validated on, as it recorded them."""
    split = store.split(run_id)
    if split is None:
        raise RuntimeError(f"run {run_id} recorded no split")
    return {image.sha256[:12] for image in split.val}


def choose_swaps(
    truth: dict[str, str], names: dict[str, str], val_split: float, seed: int, fraction: float
) -> dict[str, str]:
    """``{id: wrong class}`` for ``fraction`` of the training images, all of which stay in the
    training split once swapped (swaps that the new labels move to validation are replaced)."""
    rng = np.random.default_rng(SWAP_SEED)
    classes = sorted(set(truth.values()))
    train = sorted(set(truth) - _val_ids(truth, names, val_split, seed))
    want = max(1, round(fraction * len(train)))
    swaps: dict[str, str] = {}
    for _ in range(100):
        labels = {**truth, **swaps}
        val = _val_ids(labels, names, val_split, seed)
        swaps = {i: c for i, c in swaps.items() if i not in val}
        if len(swaps) == want:
            return swaps
        pool = [i for i in sorted(set(truth) - val) if i not in swaps]
        for i in rng.choice(pool, size=min(want - len(swaps), len(pool)), replace=False):
            swaps[str(i)] = str(rng.choice([c for c in classes if c != truth[str(i)]]))
    raise RuntimeError(f"could not place {want} swapped labels in the training split")


def review_figure(
    jobs: Any,
    out: Path,
    per_class: int = PER_CLASS,
    config: RunConfig | None = None,
    progress: ProgressCb | None = None,
) -> dict[str, Any]:
    """Figure 11 (see the module docstring): recall of ``review --top 2N`` and best validation
    accuracy before and after relabelling what it found; a JSON-able dict."""
    from core.bench.fast import photo_dataset
    from core.data import datasets
    from core.files import sha256_file
    from core.training.review import retrain_config, review_run

    say = progress or (lambda _msg: None)
    photos = photo_dataset(out / f"photos-4x{per_class}", per_class)
    config = config or RunConfig(epochs=10, augment=False)
    root = Path(photos["root"])
    files = sorted(root.glob("*/*.jpg"))
    truth = {sha256_file(f)[:12]: f.parent.name for f in files}
    path_of = {sha256_file(f)[:12]: f for f in files}
    names = {i: f"{i}{path_of[i].suffix.lower()}" for i in truth}  # the managed file names
    swaps = choose_swaps(truth, names, config.val_split, config.seed, SWAP_FRACTION)
    n = len(swaps)
    name = f"bench-review-{os.getpid()}-{int(time.time())}"
    say(f"figure 11: {len(files)} photos, {n} training labels swapped, dataset {name!r}")
    try:
        with datasets.create(name) as ds:
            for label in sorted(set(truth.values())):
                mine = [path_of[i] for i in sorted(truth) if swaps.get(i, truth[i]) == label]
                ds.add_images(label, mine, create_class=True)
        before = config.with_changes(data=f"dataset:{name}", name="review figure: swapped")
        first = _train(jobs, before, say, "with swapped labels")
        started = time.perf_counter()
        review = review_run(jobs.store, first["run_id"], top=2 * n)
        review_s = time.perf_counter() - started
        started = time.perf_counter()
        everything = review_run(jobs.store, first["run_id"])  # from the cache: every image
        again_s = time.perf_counter() - started
        ranks = [k for k, s in enumerate(everything.suspects, 1) if s.image in swaps]
        found = [s.image for s in review.suspects if s.image in swaps]
        recall = len(found) / n
        say(f"figure 11: review --top {2 * n} found {len(found)} of {n} ({recall:.0%})")
        with datasets.open_dataset(name) as ds:
            for label in sorted({truth[i] for i in found}):
                ds.relabel([i for i in found if truth[i] == label], label)
        second = _train(jobs, retrain_config(jobs.store, first["run_id"]), say, "relabelled")
        # The two runs validate on different images (relabelling changes the split): compare
        # them also on the images both held out, against their true labels.
        common = sorted(
            _validated(jobs.store, first["run_id"]) & _validated(jobs.store, second["run_id"])
        )
        with datasets.open_dataset(name) as ds:
            where = {i.id: i.path for i in ds.images()}
        common_acc = [
            _accuracy(
                jobs.store, run["run_id"], [where[i] for i in common], [truth[i] for i in common]
            )
            for run in (first, second)
        ]
    finally:
        shutil.rmtree(datasets.datasets_root() / name, ignore_errors=True)
    top_false = [s.image for s in review.suspects if s.image not in swaps]
    result = {
        "data": {**photos, "classes": len(set(truth.values())), "images": len(files)},
        "train_images": first["train_images"],
        "val_images": first["val_images"],
        "swapped": n,
        "top": 2 * n,
        "found": len(found),
        "recall": round(recall, 4),
        "found_in_top_n": sum(1 for r in ranks if r <= n),
        "swapped_ranks": ranks,
        "other_suspects_in_top": len(top_false),
        "before_best_val_accuracy": first["best_val_accuracy"],
        "after_best_val_accuracy": second["best_val_accuracy"],
        "common_val_images": len(common),
        "before_common_val_accuracy": common_acc[0],
        "after_common_val_accuracy": common_acc[1],
        "before_best_val_loss": first["best_val_loss"],
        "after_best_val_loss": second["best_val_loss"],
        "runs_s": [first["duration_s"], second["duration_s"]],
        "review_s": round(review_s, 3),
        "second_review_s": round(again_s, 4),
        "method": review.method,
        "config": {k: v for k, v in before.to_dict().items() if k in _SHOWN},
        "target_recall": TARGET_RECALL,
    }
    result["met"] = bool(
        recall >= TARGET_RECALL
        and (second["best_val_accuracy"] or 0.0) >= (first["best_val_accuracy"] or 0.0)
    )
    return result


_SHOWN = ("backbone", "mode", "image_size", "epochs", "augment", "batch_size", "val_split", "seed")


def _train(jobs: Any, config: RunConfig, say: ProgressCb, what: str) -> dict[str, Any]:
    from core.errors import StudioError

    say(f"figure 11: training {what} ({config.backbone}, {config.epochs} epochs)")
    run_id = jobs.submit(config)
    status = jobs.wait(run_id)
    result = jobs.store.result(run_id)
    if status != "completed":
        raise StudioError(f"figure 11's run {run_id} ended {status}: {result.get('error')}")
    return {
        "run_id": run_id,
        "best_val_accuracy": result["best_val_accuracy"],
        "best_val_loss": min(
            (v for v in result["history"]["val_loss"] if v is not None), default=None
        ),
        "train_images": result["train_images"],
        "val_images": result["val_images"],
        "duration_s": result["duration_s"],
    }


def _accuracy(store: Any, run_id: str, paths: list[str], labels: list[str]) -> float | None:
    """A run's saved model's accuracy on ``paths`` with their true ``labels``."""
    from core.runs.evaluate import predict_paths
    from core.runs.predict import load_run

    if not paths:
        return None
    run = load_run(store, run_id)
    probs = predict_paths(run.model, paths, run.image_size, 32)
    right = sum(run.class_names[int(k)] == y for k, y in zip(probs.argmax(1), labels, strict=True))
    return round(right / len(paths), 4)


def format_line(d: dict[str, Any]) -> str:
    """The figure's line in ``format_bench``."""
    met = "met" if d["met"] else "MISSED"
    return (
        f"11. review: top {d['top']} held {d['found']} of {d['swapped']} swapped training "
        f"labels (recall {d['recall']:.0%}; {d['found_in_top_n']} in the top {d['swapped']}); "
        f"best val acc {d['before_best_val_accuracy']:.3f} before, "
        f"{d['after_best_val_accuracy']:.3f} after relabelling them (best val loss "
        f"{_num(d['before_best_val_loss'])} → {_num(d['after_best_val_loss'])}; on the "
        f"{d['common_val_images']} images both held out {_num(d['before_common_val_accuracy'])} "
        f"→ {_num(d['after_common_val_accuracy'])}); review "
        f"{d['review_s']:.1f} s, again {d['second_review_s'] * 1000:.0f} ms — target recall ≥ "
        f"{d['target_recall']:.0%} and accuracy not lower: {met}"
    )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
