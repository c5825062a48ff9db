"""The leakage check of a finished run: its validation images' near-copies in its training split.

``check_leakage`` gathers what ``core.runs.leakage.find_twins`` compares (file hashes, perceptual
hashes, embeddings) for the run's split and stores the result as ``leakage.json`` in the run folder.
The embeddings are the base's pooled features: from the embedding cache when a run on the same
backbone, weights, size and files filled it (then the check costs seconds), else one pass of the
saved model's base. The training worker runs it as a run completes, with the model and data still
in memory; ``evaluate`` runs it for older runs.

``leakage_before_training`` (``core.training.source_leakage``, without TensorFlow) is the Data
page's health check: the same test on a source before any run, when the features of its files
are already cached (else it says it was skipped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.config import RunConfig
from core.data.phash import cached_signatures
from core.data.scan_cache import content_hashes
from core.runs.calibration import model_key
from core.runs.evaluate import evaluate_run
from core.runs.leakage import (
    SplitImages,
    find_twins,
    leakage_summary,
    read_leakage,
    write_leakage,
)
from core.runs.predict import load_run, saved_model_path
from core.runs.store import RunStore
from core.training.source_leakage import SourceLeakage, leakage_before_training

if TYPE_CHECKING:
    from core.data import DatasetIndex

__all__ = [
    "check_leakage",
    "leakage_before_training",
    "run_split",
    "SourceLeakage",
    "SplitFiles",
]


@dataclass
class SplitFiles:
    """A run's (or a source's) training and validation files, absolute paths."""

    root: str
    class_names: list[str]
    train_paths: list[str]
    train_labels: list[int]
    val_paths: list[str]
    val_labels: list[int]

    @classmethod
    def of(cls, data: DatasetIndex) -> SplitFiles:
        """The split of a scanned source."""
        return cls(
            str(data.root),
            list(data.class_names),
            list(data.train_paths),
            list(data.train_labels),
            list(data.val_paths),
            list(data.val_labels),
        )


def run_split(store: RunStore, run_id: str, data: DatasetIndex | None = None) -> SplitFiles:
    """The run's training and validation images: the ``data`` the worker trained on, else the
    split the run recorded (``split.json``), else (a run from before splits were recorded) the
    split rebuilt from its config, as its evaluation does."""
    from core.data import load_dataset

    if data is not None:
        return SplitFiles.of(data)
    class_names = list(store.result(run_id)["class_names"])
    recorded = store.split(run_id)
    if recorded is not None:
        train_paths, train_labels = recorded.labelled("train", class_names)
        val_paths, val_labels = recorded.labelled("val", class_names)
        return SplitFiles(recorded.root, class_names, train_paths, train_labels, val_paths,
                          val_labels)  # fmt: skip
    config = store.config(run_id)
    return SplitFiles.of(load_dataset(config.data, val_split=config.val_split, seed=config.seed))


def _features(config: RunConfig, model: Any, paths: list[str], size: int) -> np.ndarray:
    """Pooled base features of ``paths``: cached ones if a pass of this base filled the cache,
    else one pass of ``model``'s own base (its layers up to ``avg_pool``)."""
    import keras

    from core.training.embeddings import cache_key, forward_once, load_cached

    pooled = model.get_layer("avg_pool").output
    key = cache_key(config, size, paths)  # the trainer's key: training then validation files
    if key is not None:
        cached = load_cached(key)
        if cached is not None and cached.shape == (len(paths), int(pooled.shape[-1])):
            return np.asarray(cached, np.float32)
    return forward_once(keras.Model(model.inputs, pooled), paths, size)


def _side(paths: list[str], labels: list[int], features: np.ndarray | None) -> SplitImages:
    # The digests the run's split recording computed (``file_hashes`` remembers them), and the
    # signatures by content from the cache the Data page's check fills: a picture decoded for
    # either check is not decoded again (50,000 pictures: 40 s of decoding, once).
    shas = content_hashes(list(paths))
    signatures = cached_signatures(list(paths), shas)
    return SplitImages(
        list(paths),
        list(labels),
        shas,
        [s[0] if s is not None else None for s in signatures],
        features,
        [s[1] if s is not None else None for s in signatures],
    )


def check_leakage(
    store: RunStore,
    run_id: str,
    *,
    model: Any = None,
    data: DatasetIndex | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """The run's ``leakage`` object (``core.runs.leakage.leakage_summary``), cached per model
    file in ``leakage.json``; ``force`` checks again."""
    model_path = saved_model_path(store, run_id)
    key = model_key(model_path)
    folder = store.run_dir(run_id)
    if not force:
        cached = read_leakage(folder, key)
        if cached is not None:
            return cached
    config = store.config(run_id)
    split = run_split(store, run_id, data)
    if model is None:
        model = load_run(store, run_id).model
    size = int(model.inputs[0].shape[1])
    paths = [*split.train_paths, *split.val_paths]
    try:
        features: np.ndarray | None = _features(config, model, paths, size)
    except ValueError:  # a model without the studio's avg_pool layer: hashes only
        features = None
    n = len(split.train_paths)
    train = _side(split.train_paths, split.train_labels, None if features is None else features[:n])
    val = _side(split.val_paths, split.val_labels, None if features is None else features[n:])
    root = str(split.root)
    pairs = find_twins(val, train, list(split.class_names), root)
    # The same validation images: the worker's data, else the recorded (or rebuilt) split.
    evaluation = evaluate_run(store, run_id, model=model, data=data)
    images = evaluation["images"]
    correct = [img["true"] == img["predicted"] for img in images]
    result = leakage_summary(pairs, [img["path"] for img in images], correct, root)
    result["embeddings"] = features is not None
    result["root"] = root  # where the pairs' relative paths start
    write_leakage(folder, result, key)
    return result
