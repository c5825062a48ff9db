"""Prediction without TensorFlow: a feature-extraction run's frozen base through its converted
LiteRT runtime, then its head (the Dense layers after ``avg_pool``) in numpy; any other run
through its whole model, converted and checked by the worker as the run completed
(``core.training.predict_runtime``: ``predict.tflite`` in the run's folder).

A feature-extraction run trains only a head on the frozen base's pooled features, and its
feature pass converts that base to LiteRT and checks it against Keras (``core.training.litert``,
cosine >= 0.999 on real images). The run's ``model.keras`` holds the head's weights. Together
they compute the model's probabilities with LiteRT and numpy alone: the first prediction in a
fresh process (the dashboard's Predict page) skips TensorFlow's import and the Keras model load,
seconds on a laptop.

``lite_run`` is None whenever that does not hold (random weights, the runtime turned off, not
converted or rejected, a head of other layers, weights of other shapes, a model file replaced
since its conversion): the caller loads the Keras model (``core.runs.predict.load_run``).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.config import Mode
from core.errors import StudioError
from core.runs.calibration import model_key, read_calibration
from core.runs.litert_runtime import LiteRTExtractor, runtime_dir, runtime_key
from core.runs.store import RunStore, saved_model_path

__all__ = [
    "PREDICT_RUNTIME_FILE",
    "PREDICT_RUNTIME_RECORD",
    "HeadLayer",
    "LiteRun",
    "lite_run",
    "read_head",
]

RUNTIME_ENV = "TRANSFER_STUDIO_FEATURE_RUNTIME"  # ``keras``: never LiteRT (core.training.litert)
POOL_LAYER = "avg_pool"
PREDICT_RUNTIME_FILE = "predict.tflite"  # a trained base's whole model, converted
PREDICT_RUNTIME_RECORD = "predict-runtime.json"  # its check against Keras, and for which file


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "softmax": _softmax,
}


@dataclass(frozen=True)
class HeadLayer:
    """One Dense layer of a run's head."""

    kernel: np.ndarray  # (inputs, units)
    bias: np.ndarray  # (units,)
    activation: str  # a key of ``ACTIVATIONS``


@dataclass
class LiteRun:
    """A run ready to predict with LiteRT and numpy (``LoadedRun``'s prediction interface,
    without test-time augmentation): ``base`` is a feature-extraction run's converted base and
    ``head`` its Dense layers, or ``base`` a trained base's whole converted model and ``head``
    empty."""

    run_id: str
    class_names: list[str]
    image_size: int
    base: LiteRTExtractor
    head: list[HeadLayer]
    temperature: float = 1.0
    scores: list[float] | None = None
    runtime: str = "litert"

    def __call__(self, batch: np.ndarray, tta: bool = False) -> np.ndarray:
        """Probabilities for a float32 batch of raw 0-255 pixels."""
        if tta:
            raise ValueError("test-time augmentation runs on the Keras model (load_run)")
        x = self.base(batch)
        for layer in self.head:
            x = ACTIVATIONS[layer.activation](x @ layer.kernel + layer.bias)
        return np.asarray(x, np.float32)


def read_head(model_path: Path) -> list[HeadLayer] | None:
    """The Dense layers after ``avg_pool`` in a saved ``model.keras`` (Dropout skipped: it does
    nothing at inference), or None when the head holds any other layer or cannot be read.

    Keras 3 stores a model's layers' weights under ``layers/<class name>[_<n>]``, numbered in
    the model's layer order, so the k-th Dense layer's are ``dense`` then ``dense_<k>``.
    """
    import h5py

    try:
        with zipfile.ZipFile(model_path) as archive:
            config = json.loads(archive.read("config.json"))
            layers = config["config"]["layers"]
            names = [layer["config"]["name"] for layer in layers]
            after = layers[names.index(POOL_LAYER) + 1 :]
            dense_order = [
                layer["config"]["name"] for layer in layers if layer["class_name"] == "Dense"
            ]
            outputs = config["config"]["output_layers"]
            if outputs and isinstance(outputs[0], str):  # one output: ``[name, 0, 0]``
                outputs = [outputs]
            if not after or len(outputs) != 1 or outputs[0][0] != names[-1]:
                return None
            head: list[HeadLayer] = []
            with archive.open("model.weights.h5") as raw, h5py.File(raw, "r") as weights:
                for layer in after:
                    kind, cfg = layer["class_name"], layer["config"]
                    if kind == "Dropout":
                        continue
                    if kind != "Dense" or cfg.get("activation") not in ACTIVATIONS:
                        return None
                    k = dense_order.index(cfg["name"])
                    group = weights[f"layers/{'dense' if k == 0 else f'dense_{k}'}/vars"]
                    kernel = np.asarray(group["0"], np.float32)
                    bias = (
                        np.asarray(group["1"], np.float32)
                        if cfg.get("use_bias", True)
                        else np.zeros(kernel.shape[1], np.float32)
                    )
                    if int(cfg["units"]) != kernel.shape[1] or bias.shape != (kernel.shape[1],):
                        return None
                    head.append(HeadLayer(kernel, bias, str(cfg["activation"])))
    except (OSError, KeyError, ValueError, TypeError, IndexError, zipfile.BadZipFile):
        return None
    chained = all(a.kernel.shape[1] == b.kernel.shape[0] for a, b in itertools.pairwise(head))
    return head if head and chained and head[-1].activation == "softmax" else None


def _base_runtime(store: RunStore, run_id: str) -> tuple[Path, int] | None:
    """The converted runtime of the run's frozen base and its input size, if there is one."""
    from core.models.backbones import get_backbone, weights_identity

    if os.environ.get(RUNTIME_ENV, "").strip().lower() == "keras":
        return None
    config = store.config(run_id)
    if config.mode != Mode.FEATURE_EXTRACTION:
        return None  # a fine-tuned base is not the converted one
    spec = get_backbone(config.backbone)
    weights = weights_identity(config.backbone, config.weights)
    if weights is None:
        return None  # random weights: nothing was converted for them
    size = config.resolved_image_size()
    identity = {  # ``core.training.embeddings.runtime_identity``'s
        "backbone": spec.name,
        "weights": weights,
        "image_size": size,
        "preprocessing": spec.preprocessing,
        "output": POOL_LAYER,
    }
    key = runtime_key(identity)
    folder = runtime_dir()
    path = folder / f"{key}.tflite"
    if not path.is_file() or (folder / f"{key}.rejected.json").exists():
        return None
    return path, size


_CACHE: dict[tuple[str, str, float], LiteRun | None] = {}
_LOCK = threading.Lock()


def lite_run(store: RunStore, run_id: str) -> LiteRun | None:
    """The run ready to predict without TensorFlow (once per process, until its model file
    changes), or None: see the module docstring."""
    path = saved_model_path(store, run_id)
    key = (str(store.root), run_id, path.stat().st_mtime)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(store, run_id, path)
        return _CACHE[key]


def _whole_model(store: RunStore, run_id: str, path: Path) -> Path | None:
    """The run's converted whole model, if it was accepted for this very model file."""
    if os.environ.get(RUNTIME_ENV, "").strip().lower() == "keras":
        return None
    folder = store.run_dir(run_id)
    try:
        record = json.loads((folder / PREDICT_RUNTIME_RECORD).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    same_file = all(record.get(k) == v for k, v in model_key(path).items())
    converted = folder / PREDICT_RUNTIME_FILE
    return converted if record.get("accepted") and same_file and converted.is_file() else None


def _load(store: RunStore, run_id: str, path: Path) -> LiteRun | None:
    if store.config(run_id).mode != Mode.FEATURE_EXTRACTION:
        return _load_whole(store, run_id, path)
    try:
        found = _base_runtime(store, run_id)
        if found is None:
            return None
        head = read_head(path)
        if head is None:
            return None
        base = LiteRTExtractor(found[0], num_threads=min(2, os.cpu_count() or 1), batch=8)
    except (StudioError, OSError, ValueError, RuntimeError):
        return None
    class_names = list(store.result(run_id)["class_names"])
    width = head[0].kernel.shape[0]
    if base.feature_shape != (width,) or head[-1].kernel.shape[1] != len(class_names):
        return None
    stored = read_calibration(store.run_dir(run_id), model_key(path))
    return LiteRun(
        run_id, class_names, found[1], base, head,
        temperature=stored.temperature if stored else 1.0,
        scores=stored.scores if stored else None,
    )  # fmt: skip


def _load_whole(store: RunStore, run_id: str, path: Path) -> LiteRun | None:
    """A trained base's run through its whole converted model (probabilities out: no head)."""
    try:
        converted = _whole_model(store, run_id, path)
        if converted is None:
            return None
        model = LiteRTExtractor(converted, num_threads=min(2, os.cpu_count() or 1), batch=8)
    except (StudioError, OSError, ValueError, RuntimeError):
        return None
    class_names = list(store.result(run_id)["class_names"])
    size = store.config(run_id).resolved_image_size()
    if model.feature_shape != (len(class_names),) or model.input_shape[1:3] != (size, size):
        return None
    stored = read_calibration(store.run_dir(run_id), model_key(path))
    return LiteRun(
        run_id, class_names, size, model, [],
        temperature=stored.temperature if stored else 1.0,
        scores=stored.scores if stored else None,
    )  # fmt: skip
