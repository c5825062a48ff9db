"""Prediction with a finished run's saved model.

``predict_images`` gives the model's own probabilities by default. With ``calibrated=True`` the
run's temperature (``core.runs.calibration``, fitted when the run was evaluated) is applied and
each result carries the conformal prediction set for the asked ``coverage``: the classes that
together hold the true label that often ("cat or lynx" instead of a confident wrong "cat").
``tta=True`` averages the probabilities over ``TTA_VIEWS`` (the image, its mirror and small
crops): test-time augmentation, a few times the latency for what can be a steadier answer.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.data.images import to_array
from core.errors import StudioError
from core.runs.calibration import (
    DEFAULT_COVERAGE,
    check_coverage,
    conformal_threshold,
    model_key,
    prediction_set,
    read_calibration,
    scale,
)
from core.runs.store import RunStore, saved_model_path

if TYPE_CHECKING:
    from core.runs.lite_predict import LiteRun

__all__ = [
    "ImageInput",
    "LoadedRun",
    "TTA_CROPS",
    "TTA_VIEWS",
    "load_run",
    "predict_images",
    "saved_model_path",
    "set_text",
    "tta_views",
]

ImageInput = str | Path | bytes | np.ndarray
# Test-time views: the image, its mirror, and three crops keeping 90 % of each side (centre, top
# left, bottom right), each resized back to the model's input. Boxes are (y0, x0, y1, x1).
TTA_CROPS = ((0.05, 0.05, 0.95, 0.95), (0.0, 0.0, 0.9, 0.9), (0.1, 0.1, 1.0, 1.0))
TTA_VIEWS = 2 + len(TTA_CROPS)


@dataclass
class LoadedRun:
    """A run's model ready to predict."""

    run_id: str
    model: Any
    class_names: list[str]
    image_size: int
    forward: Any = None  # compiled model call; an eager call is ~7x slower per image
    temperature: float = 1.0  # the run's calibration (1.0: none stored)
    scores: list[float] | None = None  # conformal scores of its validation images, if stored
    runtime: str = "keras"  # what computes its predictions (``LiteRun``'s: "litert")

    def __call__(self, batch: np.ndarray, tta: bool = False) -> np.ndarray:
        """Probabilities for a float32 batch of raw 0-255 pixels (averaged over the test-time
        views with ``tta``)."""
        if not tta:
            return np.asarray(self.forward(batch) if self.forward else self.model(batch))
        views = tta_views(batch)
        probs = np.asarray(self.forward(views) if self.forward else self.model(views))
        return probs.reshape(TTA_VIEWS, len(batch), -1).mean(axis=0)


def tta_views(batch: np.ndarray) -> np.ndarray:
    """The ``TTA_VIEWS`` views of every image of an (n, s, s, 3) batch, view-major: rows
    ``v * n + i`` are view v of image i."""
    import tensorflow as tf

    x = tf.convert_to_tensor(np.asarray(batch, np.float32))
    n, size = int(x.shape[0]), int(x.shape[1])
    boxes = tf.constant([box for box in TTA_CROPS for _ in range(n)], tf.float32)
    index = tf.constant([i for _ in TTA_CROPS for i in range(n)], tf.int32)
    crops = tf.image.crop_and_resize(x, boxes, index, (size, size))
    return np.asarray(tf.concat([x, tf.image.flip_left_right(x), crops], axis=0))


_CACHE: dict[tuple[str, str, float], LoadedRun] = {}
_CACHE_LOCK = threading.Lock()


def load_run(store: RunStore, run_id: str) -> LoadedRun:
    """Load (once per process, until the file changes) a run's ``model.keras``."""
    path = saved_model_path(store, run_id)  # every call: one row read, no epochs
    key = (str(store.root), run_id, path.stat().st_mtime)
    with _CACHE_LOCK:
        if key not in _CACHE:
            import keras

            import core.models.layers  # noqa: F401  registers PixelNormalize for deserialisation

            try:
                model = keras.saving.load_model(path, safe_mode=True)
            except Exception as exc:
                raise StudioError(
                    f"Could not load the model of run {run_id} from {path}: {exc}. "
                    "The file may be corrupt; re-run the training."
                ) from exc
            size = int(model.inputs[0].shape[1])
            import tensorflow as tf

            forward = tf.function(
                lambda x: model(x, training=False),
                input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)],
            )
            forward(np.zeros((1, size, size, 3), np.float32))  # trace now, not on first upload
            class_names = list(store.result(run_id)["class_names"])
            stored = read_calibration(store.run_dir(run_id), model_key(path))
            _CACHE[key] = LoadedRun(
                run_id, model, class_names, size, forward,
                temperature=stored.temperature if stored else 1.0,
                scores=stored.scores if stored else None,
            )  # fmt: skip
        return _CACHE[key]


def predict_images(
    store: RunStore,
    run_id: str,
    images: list[ImageInput],
    top_k: int = 5,
    *,
    calibrated: bool = False,
    coverage: float = DEFAULT_COVERAGE,
    tta: bool = False,
) -> list[dict[str, Any]]:
    """Per image: ``{"predictions": [{label, probability}...], "latency_ms", "runtime"}``,
    best first; ``runtime`` is "litert" when a feature-extraction run predicted through its
    converted base and a numpy head (``core.runs.lite_predict``), else "keras".

    With ``calibrated`` the probabilities are temperature-scaled and each result also has
    ``set`` (the conformal prediction set's labels, most probable first; ``None`` when the run
    has no stored calibration), ``coverage`` and ``temperature``. ``tta`` averages the
    test-time views (``tta: true`` in each result).
    """
    # Without test-time views, a feature-extraction run predicts through its converted base
    # and a numpy head: no TensorFlow import or model load (seconds) in a fresh process.
    run: LoadedRun | LiteRun | None = None
    if not tta:
        from core.runs.lite_predict import lite_run

        run = lite_run(store, run_id)
    if run is None:
        run = load_run(store, run_id)
    coverage = check_coverage(coverage)
    k = max(1, min(top_k, len(run.class_names)))
    qhat = conformal_threshold(run.scores, coverage) if run.scores is not None else None
    results = []
    for image in images:
        start = time.perf_counter()
        batch = to_array(image, run.image_size, np.float32)[None]
        probs = run(batch, tta=tta)[0]
        latency = (time.perf_counter() - start) * 1000.0
        if calibrated:
            probs = scale(probs[None], run.temperature)[0]
        order = np.argsort(probs)[::-1][:k]
        result: dict[str, Any] = {
            "image": str(image) if isinstance(image, (str, Path)) else "<upload>",
            "predictions": [
                {"label": run.class_names[i], "probability": float(probs[i])} for i in order
            ],
            "latency_ms": round(latency, 2),
            "runtime": run.runtime,
        }
        if tta:
            result["tta"] = True
        if calibrated:
            chosen = prediction_set(probs, qhat) if qhat is not None else None
            result.update(
                set=[run.class_names[i] for i in chosen] if chosen is not None else None,
                coverage=coverage,
                temperature=round(run.temperature, 4),
            )
        results.append(result)
    return results


def set_text(labels: list[str] | None) -> str:
    """A prediction set in words: "cat", "cat or lynx", "cat, lynx or fox"."""
    if not labels:
        return ""
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " or " + labels[-1]
