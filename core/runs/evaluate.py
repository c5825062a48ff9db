"""Evaluation of a finished run on its validation split: confusion matrix, per-class metrics and
per-image predictions (for the misclassification gallery).

The validation images are the ones the run recorded (``split.json``, ``core.runs.split``), so it
is the exact split the run was validated on (a run from before splits were recorded: rebuilt
with ``core.data.load_dataset`` from its config, same source, ``val_split`` and ``seed``). The
result
is cached as ``evaluation.json`` in the run folder and recomputed when the model file changes.
Per image it keeps the top ``TOP_K`` classes and the true class's probability; the full
``(images, classes)`` probability matrix is kept beside it as ``evaluation_probabilities.npy``
(at 200 classes every probability as JSON would be tens of MB that every page parses), and
inline as ``probabilities`` only for runs of up to ``INLINE_MAX_CLASSES`` classes. Readers go
through ``class_probability`` and ``probability_matrix``, which also read older files (every
probability inline, no array file).
The training worker writes it as a run completes (``core.training.trainer``), so the Run page
only reads it; a run that was not evaluated then (an older run, an evaluation that failed) is
evaluated when the page first asks.

Every evaluation also fits the run's temperature on the validation probabilities
(``core.runs.calibration``): ``calibration`` and the ``reliability`` bins before and after are in
the result, and ``calibration.json`` (the temperature and the conformal scores Predict uses) is
written beside it. ``tta_report`` measures test-time augmentation on the same images.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

import numpy as np

from core.config import RunConfig
from core.errors import StudioError
from core.files import atomic_path, atomic_write_text
from core.runs.store import RunStore

if TYPE_CHECKING:
    from core.data import DatasetIndex

__all__ = [
    "ClassMetrics",
    "ClassRow",
    "Evaluation",
    "ImagePrediction",
    "TopClass",
    "EVALUATION_FILE",
    "EVALUATION_VERSION",
    "INLINE_MAX_CLASSES",
    "MATRIX_KEY",
    "MAX_BATCH",
    "PROBABILITIES_FILE",
    "TOP_K",
    "ProgressFn",
    "class_probability",
    "TTA_FILE",
    "TTA_VERSION",
    "evaluate_run",
    "image_entry",
    "misclassified",
    "predict_paths",
    "probability_matrix",
    "write_evaluation",
    "tta_report",
    "tta_verdict",
]

EVALUATION_FILE = "evaluation.json"
PROBABILITIES_FILE = "evaluation_probabilities.npy"  # (images, classes) float32, images in order
TOP_K = 5  # classes kept per image in the JSON
INLINE_MAX_CLASSES = 10  # up to this many classes, every probability is also kept inline
MATRIX_KEY = "probability_matrix"  # the loaded array file in a returned evaluation (not JSON)
# Bump when the evaluation's content or meaning changes, so older cached files are recomputed.
EVALUATION_VERSION = 2
MAX_BATCH = 64
ProgressFn = Callable[[int, int], None]  # progress(done, total)
TTA_FILE = "tta.json"
TTA_VERSION = 1


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
    name = data.get("probabilities_file")
    if name:  # the array must be the one written with this file: same images, same classes
        try:
            matrix = np.load(path.parent / str(name), mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        shape = (len(data.get("images") or []), len(data.get("class_names") or []))
        if matrix.shape != shape:
            return None
        data[MATRIX_KEY] = matrix
    return data


def image_entry(
    path: str, class_names: list[str], true: int, probs: np.ndarray, top_k: int = TOP_K
) -> ImagePrediction:
    """One validation image as ``evaluation.json`` stores it: path, true and predicted class,
    the ``top_k`` most probable classes (``[{label, probability}]``, most probable first), the
    true class's probability and, for few classes, every probability (``probabilities``)."""
    order = np.argsort(-probs, kind="stable")[: max(1, top_k)]
    entry: ImagePrediction = {
        "path": path,
        "true": class_names[true],
        "predicted": class_names[int(order[0])],
        "top": [
            {"label": class_names[int(i)], "probability": round(float(probs[i]), 6)} for i in order
        ],
        "true_probability": round(float(probs[true]), 6),
    }
    if len(class_names) <= INLINE_MAX_CLASSES:
        entry["probabilities"] = [round(float(v), 6) for v in probs]
    return entry


def write_evaluation(run_dir: Path, result: Mapping[str, Any], probs: np.ndarray) -> dict[str, Any]:
    """Write ``result`` as ``evaluation.json`` and ``probs`` as the array file beside it.

    The array goes first and both are written then renamed, so a reader sees either the old
    pair, or a new array with the old JSON (rejected by its shape or fingerprint: recomputed),
    or the new pair. Returns ``result`` with ``probabilities_file`` set (and the array attached
    under ``MATRIX_KEY``, which is not written to the JSON).
    """
    matrix = np.asarray(probs, dtype=np.float32)
    with atomic_path(run_dir / PROBABILITIES_FILE) as tmp, open(tmp, "wb") as handle:
        np.save(handle, matrix, allow_pickle=False)
    stored = {k: v for k, v in result.items() if k != MATRIX_KEY}
    stored["probabilities_file"] = PROBABILITIES_FILE
    atomic_write_text(run_dir / EVALUATION_FILE, json.dumps(stored))
    return {**stored, MATRIX_KEY: matrix}


def probability_matrix(evaluation: Mapping[str, Any]) -> np.ndarray:
    """Every validation image's class probabilities, ``(images, classes)``: the array file of
    an evaluation, or the inline lists of an older one."""
    matrix = evaluation.get(MATRIX_KEY)
    if matrix is not None:
        return np.asarray(matrix, dtype=np.float32)
    images = evaluation.get("images") or []
    classes = len(evaluation["class_names"])
    if images and all("probabilities" in img for img in images):
        return np.asarray([img["probabilities"] for img in images], dtype=np.float32)
    raise StudioError(
        f"Run {evaluation.get('run_id')}'s evaluation keeps only the top classes of its "
        f"{len(images)} images and its {PROBABILITIES_FILE} is missing; evaluate it again to "
        f"get every one of the {classes} classes' probabilities."
    )


def class_probability(evaluation: Mapping[str, Any], image: Mapping[str, Any], name: str) -> float:
    """The probability of class ``name`` for one image of ``evaluation["images"]``, from what it
    holds: every probability (few classes, older files), its top classes or the true class's
    (always there for the predicted and the true class); 0.0 for a class outside its top ones
    (below the top ``TOP_K``, so at most the last top probability)."""
    if "probabilities" in image:
        return float(image["probabilities"][evaluation["class_names"].index(name)])
    if name == image.get("true") and "true_probability" in image:
        return float(image["true_probability"])
    for item in image.get("top") or []:
        if item["label"] == name:
            return float(item["probability"])
    return 0.0


def predict_paths(
    model: Any,
    paths: list[str],
    image_size: int,
    batch_size: int,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Class probabilities for image files, in batches through a tf.data pipeline;
    ``progress(done, total)`` after each batch."""
    import keras

    from core.data.pipeline import image_errors, make_dataset

    if not paths:
        return np.zeros((0, int(model.outputs[0].shape[-1])), dtype=np.float32)
    dataset = make_dataset(
        paths, [0] * len(paths), image_size, batch_size, training=False, cache=False
    )
    total = len(paths)

    class _Progress(keras.callbacks.Callback):
        def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if progress is not None:
                progress(min((batch + 1) * batch_size, total), total)

    # Labels are dummies: predict() only looks at the images.
    with image_errors():  # a file that changed since the scan: a DataError naming it
        probs = model.predict(dataset.map(lambda x, _y: x), verbose=0, callbacks=[_Progress()])
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


class TopClass(TypedDict):
    """One of an image's most probable classes."""

    label: str
    probability: float


class ImagePrediction(TypedDict):
    """One validation image: its file, true and predicted class, its top ``TOP_K`` classes and the
    true class's probability; every class's probability for runs of up to ``INLINE_MAX_CLASSES``
    classes (and in files written before the array file)."""

    path: str
    true: str
    predicted: str
    top: NotRequired[list[TopClass]]
    true_probability: NotRequired[float]
    probabilities: NotRequired[list[float]]


class Evaluation(TypedDict):
    """A run's evaluation (``evaluate --json`` prints a subset; ``evaluation.json`` holds it)."""

    run_id: str
    accuracy: float
    class_names: list[str]
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted
    per_class: list[ClassRow]
    macro_avg: ClassMetrics
    val_images: int
    calibration: dict[str, Any]  # the temperature and ECE before/after (``Calibration.summary``)
    reliability: dict[str, list[dict[str, Any]]]  # reliability bins, "before" and "after"
    images: list[ImagePrediction]
    duration_s: float
    evaluated_at: float
    cache_key: dict[str, Any]
    probabilities_file: NotRequired[str]  # the array file's name, in the run folder
    probability_matrix: NotRequired[np.ndarray]  # ``MATRIX_KEY``: the array file, loaded
    from_cache: NotRequired[bool]
    leakage: NotRequired[dict[str, Any]]  # added by the leakage check (``core.training.leakage``)
    tta: NotRequired[dict[str, Any]]  # added by ``tta_report`` when asked for


def evaluate_run(
    store: RunStore,
    run_id: str,
    force: bool = False,
    model: Any = None,
    data: DatasetIndex | None = None,
    progress: ProgressFn | None = None,
    probabilities: np.ndarray | None = None,
) -> Evaluation:
    """Evaluate a run on its validation split (cached in ``evaluation.json``); ``progress(done,
    total)`` follows the validation images through the model.

    Returns ``{run_id, accuracy, class_names, confusion_matrix, per_class, images, ...}`` where
    ``confusion_matrix[i][j]`` counts images of true class i predicted as class j, and each image
    is ``image_entry``'s ``{path, true, predicted, top, true_probability[, probabilities]}``; the
    full probability matrix is under ``MATRIX_KEY`` (see ``probability_matrix``).
    ``from_cache`` tells whether the stored result was reused; ``force`` recomputes it.

    The training worker passes the ``model`` it just saved and the ``data`` it trained on, so the
    run is evaluated once as it completes without loading the file or scanning the data again;
    a feature-extraction run also passes ``probabilities``, the model's on ``data``'s validation
    images (its head on their cached features), so none is read again.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from core.data import load_dataset
    from core.runs.calibration import (
        calibrate,
        diagram_bins,
        model_key,
        reliability,
        scale,
        write_calibration,
    )
    from core.runs.predict import load_run, saved_model_path

    model_path = saved_model_path(store, run_id)
    cache_path = store.run_dir(run_id) / EVALUATION_FILE
    fingerprint = _model_fingerprint(model_path)
    if not force:
        cached = _read_cache(cache_path, fingerprint)
        if cached is not None:
            return cast(Evaluation, {**cached, "from_cache": True})

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

    if probabilities is not None:
        if data is None or probabilities.shape != (len(val_paths), len(class_names)):
            raise ValueError(
                f"evaluate_run got probabilities of shape {probabilities.shape} for "
                f"{len(val_paths)} validation images of {len(class_names)} classes "
                f"({'with' if data is not None else 'without'} the run's data)."
            )
        probs = np.asarray(probabilities, np.float32)
        if progress is not None:
            progress(len(val_paths), len(val_paths))
    else:
        batch = min(config.batch_size, MAX_BATCH)
        probs = predict_paths(model, val_paths, image_size, batch, progress)
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
    calibration = calibrate(probs, y_true, seed=int(config.seed))
    calibration.model_key = model_key(model_path)
    write_calibration(store.run_dir(run_id), calibration)
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
        "calibration": calibration.summary(),
        "reliability": {
            "before": reliability(probs, y_true, diagram_bins(total)),
            "after": reliability(
                scale(probs, calibration.temperature), y_true, diagram_bins(total)
            ),
        },
        "images": [
            image_entry(path, class_names, int(t), row)
            for path, t, row in zip(val_paths, y_true, probs, strict=True)
        ],
        "duration_s": round(time.perf_counter() - started, 3),
        "evaluated_at": time.time(),
        "cache_key": fingerprint,
    }
    # Write-then-rename: a page reading concurrently never sees a truncated file.
    written = write_evaluation(cache_path.parent, result, probs)
    return cast(Evaluation, {**written, "from_cache": False})


def tta_report(store: RunStore, run_id: str, force: bool = False) -> dict[str, Any]:
    """Validation accuracy with and without test-time augmentation, and what it costs per image
    (cached as ``tta.json`` for this model file; ``force`` measures again).

    ``{views, images, accuracy, accuracy_tta, gain, ms_per_image, ms_per_image_tta, slowdown,
    worth_it, verdict}``: worth it when it gets at least two more images and one point more
    right (less is within what a reshuffled split changes).
    """
    from core.data import load_dataset
    from core.data.pipeline import image_errors, make_dataset
    from core.runs.calibration import model_key
    from core.runs.predict import TTA_VIEWS, load_run, saved_model_path

    model_path = saved_model_path(store, run_id)
    key = {**model_key(model_path), "version": TTA_VERSION}
    path = store.run_dir(run_id) / TTA_FILE
    if not force:
        cached = _read_cache(path, key)
        if cached is not None:
            return {k: v for k, v in cached.items() if k != "cache_key"}
    config = RunConfig.from_dict(store.result(run_id)["config"])
    run = load_run(store, run_id)
    recorded = store.split(run_id)
    if recorded is not None:  # the images the run was validated on
        val_paths, val_labels = recorded.labelled("val", list(run.class_names))
    else:  # a run that recorded no split: rebuilt from its config
        data = load_dataset(config.data, val_split=config.val_split, seed=config.seed)
        val_paths, val_labels = list(data.val_paths), list(data.val_labels)
    if not val_paths:
        raise StudioError(f"Run {run_id}'s data {config.data!r} has no validation images.")
    labels = np.asarray(val_labels, np.int64)
    batch = min(config.batch_size, MAX_BATCH)
    dataset = make_dataset(
        val_paths, val_labels, run.image_size, batch, training=False, cache=False
    )
    plain, tta, plain_s, tta_s = [], [], 0.0, 0.0
    with image_errors():
        for i, (x, _y) in enumerate(dataset):
            pixels = np.asarray(x)
            if i == 0:  # untimed: the first call of each batch shape traces the graph
                run(pixels)
                run(pixels, tta=True)
            started = time.perf_counter()
            plain.append(run(pixels))
            plain_s += time.perf_counter() - started
            started = time.perf_counter()
            tta.append(run(pixels, tta=True))
            tta_s += time.perf_counter() - started
    n = len(labels)
    acc = float((np.concatenate(plain).argmax(1) == labels).mean())
    acc_tta = float((np.concatenate(tta).argmax(1) == labels).mean())
    gain = acc_tta - acc
    ms, ms_tta = plain_s * 1000 / n, tta_s * 1000 / n
    slowdown = ms_tta / ms if ms > 0 else float(TTA_VIEWS)
    worth = gain >= max(0.01, 2.0 / n)
    result = {
        "views": TTA_VIEWS,
        "images": n,
        "accuracy": round(acc, 4),
        "accuracy_tta": round(acc_tta, 4),
        "gain": round(gain, 4),
        "ms_per_image": round(ms, 3),
        "ms_per_image_tta": round(ms_tta, 3),
        "slowdown": round(slowdown, 2),
        "worth_it": worth,
        "verdict": tta_verdict(gain, slowdown, worth, n),
        "cache_key": key,
    }
    atomic_write_text(path, json.dumps(result))
    return {k: v for k, v in result.items() if k != "cache_key"}


def tta_verdict(gain: float, slowdown: float, worth: bool, images: int) -> str:
    """Whether test-time augmentation is worth it for this run, in one sentence."""
    points = f"{gain * 100:+.1f} points"
    cost = f"{slowdown:.1f}x the prediction time"
    if worth:
        return f"Worth it if you can afford {cost}: {points} of validation accuracy."
    if gain > 0:
        return (
            f"Not clearly worth it: {points} on {images} validation images is within noise, "
            f"for {cost}."
        )
    return f"Not worth it: {points} of validation accuracy for {cost}."


def _class_name(evaluation: Mapping[str, Any], cls: str | int) -> str:
    names = evaluation["class_names"]
    if isinstance(cls, (int, np.integer)) and not isinstance(cls, bool):
        if not 0 <= int(cls) < len(names):
            raise StudioError(f"Class index {cls} is out of range 0..{len(names) - 1}.")
        return names[int(cls)]
    if cls not in names:
        raise StudioError(f"Unknown class {cls!r}. Classes: {', '.join(names)}.")
    return str(cls)


def misclassified(
    evaluation: Mapping[str, Any], true_class: str | int, predicted_class: str | int
) -> list[dict[str, Any]]:
    """The images of one confusion-matrix cell (true row, predicted column), most confident first.

    Classes may be given by name or index. With ``true_class == predicted_class`` this is the
    diagonal cell (correct predictions).
    """
    true_name = _class_name(evaluation, true_class)
    pred_name = _class_name(evaluation, predicted_class)
    cell = [
        img
        for img in evaluation["images"]
        if img["true"] == true_name and img["predicted"] == pred_name
    ]
    # Confident mistakes are the most instructive ones to look at first.
    return sorted(cell, key=lambda img: -class_probability(evaluation, img, pred_name))
