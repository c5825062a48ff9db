"""Evaluation of a finished run on its validation split: confusion matrix, per-class metrics and
per-image predictions (for the misclassification gallery).

The validation images are the ones the run recorded (``split.json``, ``core.runs.split``), so it
is the exact split the run was validated on (a run from before splits were recorded: rebuilt
with ``core.data.load_dataset`` from its config, same source, ``val_split`` and ``seed``). The
result
is cached as ``evaluation.json`` in the run folder and recomputed when the model file changes.
The training worker writes it as a run completes (``core.training.trainer``), so the Run page
only reads it; a run that was not evaluated then (an older run, an evaluation that failed) is
evaluated when the page first asks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import numpy as np

from core.config import RunConfig
from core.errors import StudioError
from core.files import atomic_write_text
from core.runs.store import RunStore

if TYPE_CHECKING:
    from core.data import DatasetIndex

__all__ = [
    "ClassMetrics",
    "ClassRow",
    "Evaluation",
    "ImagePrediction",
    "EVALUATION_FILE",
    "EVALUATION_VERSION",
    "MAX_BATCH",
    "evaluate_run",
    "misclassified",
    "predict_paths",
]

EVALUATION_FILE = "evaluation.json"
# Bump when the evaluation's content or meaning changes, so older cached files are recomputed.
EVALUATION_VERSION = 1
MAX_BATCH = 64


def _model_fingerprint(model_path: Path) -> dict[str, Any]:
    """What makes a cached evaluation stale: another model file (mtime or size changed)."""
    st = model_path.stat()
    return {
        "version": EVALUATION_VERSION,
        "model_path": str(model_path),
        "model_mtime_ns": st.st_mtime_ns,
        "model_bytes": st.st_size,
    }


def _read_cache(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing or half-written by a crashed process: just recompute
    if not isinstance(data, dict) or data.get("cache_key") != fingerprint:
        return None
    return data


def predict_paths(model: Any, paths: list[str], image_size: int, batch_size: int) -> np.ndarray:
    """Class probabilities for image files, in batches through a tf.data pipeline."""
    from core.data.pipeline import image_errors, make_dataset

    if not paths:
        return np.zeros((0, int(model.outputs[0].shape[-1])), dtype=np.float32)
    dataset = make_dataset(paths, [0] * len(paths), image_size, batch_size, training=False)
    # Labels are dummies: predict() only looks at the images.
    with image_errors():  # a file that changed since the scan: a DataError naming it
        probs = model.predict(dataset.map(lambda x, _y: x), verbose=0)
    return np.asarray(probs, dtype=np.float32)


class ClassMetrics(TypedDict):
    """Precision, recall and F1 of one class on the validation images."""

    precision: float
    recall: float
    f1: float


# One class's row of ``per_class``: its name, metrics and ``support`` (its validation images).
# Functional syntax: ``class`` is a Python keyword.
ClassRow = TypedDict(
    "ClassRow", {"class": str, "precision": float, "recall": float, "f1": float, "support": int}
)


class ImagePrediction(TypedDict):
    """One validation image: its file, true and predicted class, and every class's probability."""

    path: str
    true: str
    predicted: str
    probabilities: list[float]


class Evaluation(TypedDict):
    """A run's evaluation (``evaluate --json`` prints a subset; ``evaluation.json`` holds it)."""

    run_id: str
    accuracy: float
    class_names: list[str]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted
    per_class: list[ClassRow]
    macro_avg: ClassMetrics
    val_images: int
    images: list[ImagePrediction]
    duration_s: float
    evaluated_at: float
    cache_key: dict[str, Any]
    from_cache: NotRequired[bool]


def evaluate_run(
    store: RunStore,
    run_id: str,
    force: bool = False,
    model: Any = None,
    data: DatasetIndex | None = None,
) -> dict[str, Any]:
    """Evaluate a run on its validation split (cached in ``evaluation.json``).

    Returns ``{run_id, accuracy, class_names, confusion_matrix, per_class, images, ...}`` where
    ``confusion_matrix[i][j]`` counts images of true class i predicted as class j, and each image
    is ``{path, true, predicted, probabilities}`` (class names and one probability per class).
    ``from_cache`` tells whether the stored result was reused; ``force`` recomputes it.

    The training worker passes the ``model`` it just saved and the ``data`` it trained on, so the
    run is evaluated once as it completes without loading the file or scanning the data again.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from core.data import load_dataset
    from core.runs.predict import load_run, saved_model_path

    model_path = saved_model_path(store, run_id)
    cache_path = store.run_dir(run_id) / EVALUATION_FILE
    fingerprint = _model_fingerprint(model_path)
    if not force:
        cached = _read_cache(cache_path, fingerprint)
        if cached is not None:
            return {**cached, "from_cache": True}

    started = time.perf_counter()
    stored = store.result(run_id)
    config = RunConfig.from_dict(stored["config"])
    if model is None:
        run = load_run(store, run_id)
        model, class_names, image_size = run.model, list(run.class_names), run.image_size
    else:
        class_names, image_size = list(stored["class_names"]), int(model.inputs[0].shape[1])
    recorded = store.split(run_id) if data is None else None
    if recorded is not None:
        val_paths, val_labels = recorded.labelled("val", class_names)
    else:
        if data is None:  # a run that recorded no split: rebuilt from its config
            data = load_dataset(config.data, val_split=config.val_split, seed=config.seed)
        if list(data.class_names) != class_names:
            raise StudioError(
                f"The data source {config.data!r} now has classes {data.class_names}, but run "
                f"{run_id} was trained on {class_names}; the validation split cannot be rebuilt. "
                "Restore the original data or train a new run on the current data."
            )
        val_paths, val_labels = list(data.val_paths), list(data.val_labels)
    if not val_paths:
        raise StudioError(f"Run {run_id}'s data {config.data!r} has no validation images.")

    probs = predict_paths(model, val_paths, image_size, min(config.batch_size, MAX_BATCH))
    y_true = np.asarray(val_labels, dtype=np.int64)
    y_pred = probs.argmax(axis=1)
    labels = list(range(len(class_names)))
    # labels= keeps the matrix N x N even when a class is absent from the split or the predictions.
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    # Arrays indexed by label (not classification_report's dict keyed by name, where a class
    # called "accuracy" or "macro avg" would collide with the summary rows).
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    macro = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    per_class: list[ClassRow] = [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]
    total = int(matrix.sum())
    result: Evaluation = {
        "run_id": run_id,
        "accuracy": float(np.trace(matrix) / total) if total else 0.0,
        "class_names": class_names,
        "confusion_matrix": matrix.astype(int).tolist(),
        "per_class": per_class,
        "macro_avg": {
            "precision": float(macro[0]),
            "recall": float(macro[1]),
            "f1": float(macro[2]),
        },
        "val_images": total,
        "images": [
            {
                "path": path,
                "true": class_names[t],
                "predicted": class_names[p],
                "probabilities": [round(float(v), 6) for v in row],
            }
            for path, t, p, row in zip(val_paths, y_true, y_pred, probs, strict=True)
        ],
        "duration_s": round(time.perf_counter() - started, 3),
        "evaluated_at": time.time(),
        "cache_key": fingerprint,
    }
    # Write-then-rename: a page reading concurrently never sees a truncated file.
    atomic_write_text(cache_path, json.dumps(result))
    return {**result, "from_cache": False}  # an ``Evaluation`` (the pages take it as a dict)


def _class_name(evaluation: dict[str, Any], cls: str | int) -> str:
    names = evaluation["class_names"]
    if isinstance(cls, (int, np.integer)) and not isinstance(cls, bool):
        if not 0 <= int(cls) < len(names):
            raise StudioError(f"Class index {cls} is out of range 0..{len(names) - 1}.")
        return names[int(cls)]
    if cls not in names:
        raise StudioError(f"Unknown class {cls!r}. Classes: {', '.join(names)}.")
    return str(cls)


def misclassified(
    evaluation: dict[str, Any], true_class: str | int, predicted_class: str | int
) -> list[dict[str, Any]]:
    """The images of one confusion-matrix cell (true row, predicted column), most confident first.

    Classes may be given by name or index. With ``true_class == predicted_class`` this is the
    diagonal cell (correct predictions).
    """
    true_name = _class_name(evaluation, true_class)
    pred_name = _class_name(evaluation, predicted_class)
    pred_index = evaluation["class_names"].index(pred_name)
    cell = [
        img
        for img in evaluation["images"]
        if img["true"] == true_name and img["predicted"] == pred_name
    ]
    # Confident mistakes are the most instructive ones to look at first.
    return sorted(cell, key=lambda img: -img["probabilities"][pred_index])
