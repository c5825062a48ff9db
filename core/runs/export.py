"""Export a finished run's model in the formats people deploy to, and verify each in its runtime.

Formats: ``.keras``, TF SavedModel, TFLite (float32, optionally dynamic-range quantized; float16
weights; full-integer int8 with uint8 input/output), ONNX and OpenVINO IR. Every export is written
to a staging folder, then loaded by the runtime a user would deploy it with (plain Keras,
TensorFlow, ``ai_edge_litert``, ``onnxruntime``, ``openvino``) in a separate Python process that
cannot import this package (``verify_export.py``), and its predictions on validation images are
compared with the live model's. Only verified exports are moved into place; a disagreement beyond
the format's tolerance raises ``ExportVerificationError`` (a ``StudioError``), never a warning.

The exported model has stock Keras layers only: the studio's ``PixelNormalize`` is replaced by
``Rescaling`` (and a fixed channel-swap ``Dense`` for BGR backbones), so ``model.keras`` loads
with ``keras.saving.load_model`` alone. All formats take raw 0-255 RGB pixels (float32; the int8
TFLite file takes them as uint8). Next to the model go ``labels.txt`` (one class per line, in
output order), ``config.json`` (the run's config) and ``model_card.md``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.config import RunConfig
from core.data.images import to_array
from core.errors import ConfigError, DataError, StudioError
from core.paths import blocking_file
from core.runs.store import RunStore

FORMATS = ("keras", "savedmodel", "tflite", "tflite-fp16", "tflite-int8", "onnx", "openvino")
_ALIASES = {
    "keras": "keras",
    ".keras": "keras",
    "savedmodel": "savedmodel",
    "saved_model": "savedmodel",
    "tf_saved_model": "savedmodel",
    "tflite": "tflite",
    "litert": "tflite",
    "tflite-fp16": "tflite-fp16",
    "tflite_fp16": "tflite-fp16",
    "tflite-int8": "tflite-int8",
    "tflite_int8": "tflite-int8",
    "onnx": "onnx",
    "openvino": "openvino",
}
ARTIFACT_NAMES = {
    "keras": "model.keras",
    "savedmodel": "saved_model",
    "tflite": "model.tflite",
    "tflite-fp16": "model_fp16.tflite",
    "tflite-int8": "model_int8.tflite",
    "onnx": "model.onnx",
    "openvino": "model.xml",
}
# Files written beside an artifact (OpenVINO IR: the graph in model.xml, the weights in model.bin).
COMPANION_FILES = {"openvino": ("model.bin",)}
# What each format's converter or runtime needs beyond our requirements' core (pip names).
FORMAT_PACKAGES = {
    "onnx": ("tf2onnx", "onnx", "onnxruntime"),
    "tflite-int8": ("ai_edge_litert",),
    "openvino": ("openvino",),
}
FORMAT_RUNTIMES = {
    "keras": "keras",
    "savedmodel": "tensorflow (tf.saved_model)",
    "tflite": "ai_edge_litert",
    "tflite-fp16": "ai_edge_litert",
    "tflite-int8": "ai_edge_litert",
    "onnx": "onnxruntime",
    "openvino": "openvino",
}
QUANTIZED_TFLITE_NAME = "model_dynamic_range.tflite"
LABELS_FILE, CONFIG_FILE, CARD_FILE = "labels.txt", "config.json", "model_card.md"
# Validation images each export is verified on (spread over the split): enough for a meaningful
# agreement percentage, small enough that the inputs file stays a few tens of MB at 224 px.
VERIFY_IMAGES = 64
REPRESENTATIVE_IMAGES = 100  # training images calibrating int8 activation ranges
LATENCY_RUNS = 20  # single-image calls timed per format (after 3 warm-up calls)
# Float exports compute the same function: probabilities must match closely, not just top-1.
FLOAT_ATOL = 1e-3
# float16 weights move probabilities by up to about a percent; top-1 must still agree.
FP16_ATOL = 0.02
# A top-1 difference is tolerated only where the live model itself has a near-tie between the two
# classes (argmax is then decided by rounding). Dynamic-range int8 weights move probabilities by
# about a percent, so the quantized tolerance is wider.
NEAR_TIE_FLOAT = 1e-4
NEAR_TIE_FP16 = 0.01
NEAR_TIE_QUANTIZED = 0.02
# Full-integer int8: top-1 must agree with the live model on at least this share of the verified
# images where the live model is not at a near-tie (uint8 outputs have a resolution of 1/256).
INT8_MIN_AGREEMENT = 0.97
VERIFY_TIMEOUT_S = 600
_SEED = 1234
_TF_LOCK = threading.RLock()  # SavedModel export and TFLite conversion are not re-entrant-safe


# Every file Keras' SavedModel export writes, relative to saved_model/: even with overwrite on, an
# existing saved_model/ holding anything else is not replaced (that would delete a user's file).
_SAVEDMODEL_FILES = re.compile(
    r"(saved_model\.pb(?:txt)?|fingerprint\.pb|keras_metadata\.pb"
    r"|variables/variables\.index|variables/variables\.data-\d+-of-\d+)"
)


class ExportVerificationError(StudioError):
    """The exported artifact does not reproduce the live model's predictions."""


class ExportTargetError(StudioError):
    """The export folder holds files the export would overwrite or delete."""


def normalize_format(fmt: str) -> str:
    """Canonical format name; accepts a few common spellings (``saved_model``, ``litert``)."""
    key = str(fmt).strip().lower()
    if key not in _ALIASES:
        raise ConfigError(
            f"Unknown export format {fmt!r}. Available: {', '.join(FORMATS)} "
            "(tflite can also be dynamic-range quantized)."
        )
    return _ALIASES[key]


# --------------------------------------------------------------------------- loading artifacts


def litert_interpreter_class() -> type:
    """The TFLite interpreter: LiteRT's (``ai_edge_litert``) if installed, else ``tf.lite``'s.

    ``tf.lite.Interpreter`` still works in TF 2.21 but warns that it is deprecated in favour of
    the ``ai-edge-litert`` package, so that is preferred.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter


def _make_interpreter(path: Path) -> Any:
    cls = litert_interpreter_class()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite's deprecation notice, when it is the fallback
        try:
            return cls(model_path=str(path), num_threads=min(2, os.cpu_count() or 1))
        except ValueError as exc:
            raise StudioError(f"Cannot load TFLite model {path}: {exc}") from exc


@dataclass
class _Runner:
    """An exported artifact loaded back: its input size and a batch → probabilities function."""

    image_size: int
    predict: Callable[[np.ndarray], np.ndarray]
    keep_alive: Any = None  # SavedModel signatures only hold weak references to their object


def _load_keras(path: Path) -> _Runner:
    import keras

    import core.models.layers  # noqa: F401  registers PixelNormalize for deserialisation

    model = keras.saving.load_model(path, safe_mode=True)
    return _Runner(
        int(model.inputs[0].shape[1]),
        lambda x: np.asarray(model(x, training=False)),
        model,
    )


def _load_savedmodel(path: Path) -> _Runner:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    if "serve" not in loaded.signatures:
        raise StudioError(
            f"{path} has no 'serve' signature (found: {', '.join(loaded.signatures)}). "
            "Export it again with Transfer Studio."
        )
    serve = loaded.signatures["serve"]
    (name, spec), *more = serve.structured_input_signature[1].items()
    if more:
        raise StudioError(f"{path}: expected one input, found {len(more) + 1}.")

    def predict(x: np.ndarray) -> np.ndarray:
        outputs = serve(**{name: tf.constant(x, dtype=spec.dtype)})
        (value,) = outputs.values()
        return value.numpy()

    return _Runner(int(spec.shape[1]), predict, loaded)


def _load_tflite(path: Path) -> _Runner:
    interpreter = _make_interpreter(path)
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    lock = threading.Lock()  # an interpreter holds tensor state: one invocation at a time

    def predict(x: np.ndarray) -> np.ndarray:
        with lock:
            # The batch dimension is dynamic (-1 in shape_signature): resize to the batch given.
            interpreter.resize_tensor_input(inp["index"], list(x.shape))
            interpreter.allocate_tensors()
            if np.issubdtype(inp["dtype"], np.integer):  # full-integer model: quantize pixels
                scale, zero = inp["quantization"]
                info = np.iinfo(inp["dtype"])
                x = np.clip(np.round(x / scale + zero), info.min, info.max)
            interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
            interpreter.invoke()
            y = np.array(interpreter.get_tensor(out["index"]))
            if np.issubdtype(out["dtype"], np.integer):
                scale, zero = out["quantization"]
                y = (y.astype(np.float32) - zero) * scale
            return y

    return _Runner(int(inp["shape"][1]), predict, interpreter)


def _load_onnx(path: Path) -> _Runner:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise StudioError(
            "Running an ONNX model needs the onnxruntime package, which is not installed. "
            "Install it (pip install onnxruntime) and try again."
        ) from exc
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    return _Runner(
        int(inp.shape[1]), lambda x: np.asarray(session.run(None, {inp.name: x})[0]), session
    )


def _load_openvino(path: Path) -> _Runner:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    size = int(compiled.inputs[0].get_partial_shape()[1].get_length())
    return _Runner(size, lambda x: np.asarray(compiled(x)[0]), compiled)


_LOADERS = {
    "keras": _load_keras,
    "savedmodel": _load_savedmodel,
    "tflite": _load_tflite,
    "tflite-fp16": _load_tflite,
    "tflite-int8": _load_tflite,
    "onnx": _load_onnx,
    "openvino": _load_openvino,
}


def as_batch(images: Any, size: int) -> np.ndarray:
    """A float32 ``(N, size, size, 3)`` batch of raw 0-255 pixels from an array or image list."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        if images.shape[1:] == (size, size, 3):
            return images.astype(np.float32)
        images = list(images)
    if isinstance(images, (str, Path, bytes, np.ndarray)):
        images = [images]
    return np.stack([to_array(image, size) for image in images]).astype(np.float32)


def predict_with_export(path: str | os.PathLike[str], fmt: str, images: Any) -> np.ndarray:
    """Class probabilities ``(N, classes)`` from an exported artifact for raw 0-255 images.

    ``images`` is a ``(N, S, S, 3)`` array or a list of paths / bytes / HxWx3 arrays (resized to
    the artifact's input size). ``path`` is the ``.keras`` / ``.tflite`` file or SavedModel folder.
    """
    runner = _LOADERS[normalize_format(fmt)](Path(path))
    return np.asarray(runner.predict(as_batch(images, runner.image_size)), dtype=np.float32)


# --------------------------------------------------------------------------- writing artifacts


def portable_model(model: Any) -> Any:
    """The same classifier built from stock Keras layers only, sharing the live model's weights.

    ``PixelNormalize`` becomes ``Rescaling`` (per-channel scale and offset), preceded for BGR
    backbones by a frozen ``Dense`` whose kernel swaps the channels: both are stock layers, so
    the saved ``.keras`` file loads with plain ``keras.saving.load_model`` in safe mode, without
    this package. Every other layer (the backbone, the head) is reused as is.
    """
    import keras

    from core.models.layers import PixelNormalize, normalization_constants

    if not any(isinstance(layer, PixelNormalize) for layer in model.layers):
        return model
    shape = tuple(model.inputs[0].shape[1:])
    inputs = keras.Input(shape, name=model.inputs[0].name.split(":")[0] or "image")
    x = inputs
    for layer in model.layers[1:]:
        if isinstance(layer, PixelNormalize):
            mean, std, to_bgr = normalization_constants(layer.mode)
            if to_bgr:
                swap = keras.layers.Dense(3, use_bias=False, trainable=False, name="rgb_to_bgr")
                x = swap(x)
                swap.set_weights([np.eye(3, dtype=np.float32)[::-1]])
                mean, std = mean[::-1], std[::-1]
            # Rescaling, not Normalization: its constants live in the config, whereas
            # Normalization's mean/variance become free graph inputs in the ONNX export.
            scale = [1.0 / s for s in std]
            offset = [-m / s for m, s in zip(mean, std, strict=True)]
            x = keras.layers.Rescaling(scale=scale, offset=offset, name=layer.name)(x)
        else:
            # The functional graph is a chain (input → preprocess → base → pooling → head).
            x = layer(x)
    rebuilt = keras.Model(inputs, x, name=model.name)
    # Keras' ONNX export refuses a model that was never called; one zero image builds it.
    rebuilt(np.zeros((1, *shape), np.float32), training=False)
    return rebuilt


def _write_keras(model: Any, target: Path) -> None:
    model.save(str(target))


def _write_savedmodel(model: Any, target: Path) -> None:
    # Keras 3's own export: a "serve" endpoint calling the model with training=False.
    with _TF_LOCK:
        model.export(str(target), format="tf_saved_model", verbose=False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unsupported_ops(message: str) -> list[str]:
    """Op names a converter error complains about (``'tf.Foo' op is neither ...``)."""
    return sorted(set(re.findall(r"'((?:tf|tfl)\.\w+)'", message)))


def _write_tflite(
    model: Any,
    target: Path,
    quantize: bool | str = False,
    representative: np.ndarray | None = None,
) -> None:
    """Convert to TFLite. ``quantize``: False (float32), True / "dynamic" (int8 weights, float
    activations), "fp16" (float16 weights), "int8" (full-integer, uint8 input and output,
    calibrated on ``representative`` raw 0-255 images)."""
    import tensorflow as tf

    mode = "dynamic" if quantize is True else (quantize or "float")
    # TF 2.21's supported Keras 3 path: SavedModel first, then the converter (Keras' own
    # format="litert" does the same but also allows SELECT_TF_OPS, which plain LiteRT runtimes
    # cannot run; builtin ops only keeps the file portable).
    with tempfile.TemporaryDirectory(prefix="savedmodel-", dir=target.parent) as tmp:
        _write_savedmodel(model, Path(tmp) / "sm")
        with _TF_LOCK:
            converter = tf.lite.TFLiteConverter.from_saved_model(
                str(Path(tmp) / "sm"), signature_keys=["serve"]
            )
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            if mode != "float":
                # Without a representative dataset this is dynamic-range quantization (int8
                # weights, float activations): the input stays float32 0-255.
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            if mode == "fp16":
                converter.target_spec.supported_types = [tf.float16]
            if mode == "int8":
                if representative is None or not len(representative):
                    raise StudioError("int8 quantization needs representative images; none given.")
                samples = representative.astype(np.float32)  # a copy: the caller's stays
                # One black and one white pixel make the calibrated input range exactly 0-255,
                # so the uint8 input has scale 1 and zero point 0: raw pixels go in unchanged.
                # (Without them a dim dataset gives e.g. scale 225/255, and a user feeding raw
                # pixels would get wrong answers.) Two pixels barely move deeper ranges.
                samples[0, 0, 0, :], samples[0, 0, -1, :] = 0.0, 255.0

                def calibration() -> Any:
                    for i in range(len(samples)):
                        yield [samples[i : i + 1]]

                converter.representative_dataset = calibration
                # Integer ops only (no float fallback, no Flex): runs on int8-only accelerators.
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                # Raw 0-255 pixels calibrate to scale 1, zero point 0: uint8 pixels go in as is.
                converter.inference_input_type = tf.uint8
                converter.inference_output_type = tf.uint8
            try:
                flatbuffer = converter.convert()
            except Exception as exc:  # the converter raises ConverterError and plain errors
                ops = _unsupported_ops(str(exc))
                named = f" (unsupported: {', '.join(ops)})" if ops else ""
                if mode == "int8":
                    raise StudioError(
                        f"Full-integer int8 conversion failed{named}: {_first_line(exc)}. The "
                        "model uses an operation that has no int8 kernel; export tflite-fp16 or "
                        "tflite (optionally quantized to dynamic range) instead."
                    ) from exc
                raise StudioError(
                    f"TFLite conversion failed{named} ({type(exc).__name__}: {_first_line(exc)}). "
                    "The model uses an operation TFLite's builtin op set lacks; export as "
                    "savedmodel, onnx or keras."
                ) from exc
    target.write_bytes(flatbuffer)


def missing_packages(fmt: str) -> list[str]:
    """The pip packages ``fmt`` needs that are not installed (empty when it can be exported)."""
    import importlib.util

    return [
        name for name in FORMAT_PACKAGES.get(normalize_format(fmt), ())
        if importlib.util.find_spec(name) is None
    ]  # fmt: skip


def _write_onnx(model: Any, target: Path) -> None:
    missing = missing_packages("onnx")
    if missing:
        raise StudioError(
            f"The onnx export needs {', '.join(missing)}, which is not installed. Install it "
            f"(pip install {' '.join(n.replace('_', '-') for n in missing)}) and export again; "
            "the other formats work without it."
        )
    with _TF_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf2onnx's numpy deprecation notices
        try:
            model.export(str(target), format="onnx", verbose=False)
        except Exception as exc:  # tf2onnx raises plain errors naming the op
            raise StudioError(
                f"ONNX conversion failed ({type(exc).__name__}: {_first_line(exc)}). Export as "
                "savedmodel or tflite instead."
            ) from exc


def _write_openvino(model: Any, target: Path) -> None:
    # Keras converts through OpenVINO's own TensorFlow frontend: model.xml plus model.bin.
    with _TF_LOCK:
        try:
            model.export(str(target), format="openvino", verbose=False)
        except Exception as exc:
            raise StudioError(
                f"OpenVINO conversion failed ({type(exc).__name__}: {_first_line(exc)}). Export "
                "as onnx instead (OpenVINO's runtime reads ONNX files too)."
            ) from exc


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- verification


def _validation_items(
    store: RunStore, run_id: str, config: RunConfig
) -> tuple[list[str], list[int] | None]:
    """Validation image paths and labels: from a cached evaluation if any (cheap), else the
    rebuilt split."""
    from core.runs.evaluate import EVALUATION_FILE

    try:
        cached = json.loads((store.run_dir(run_id) / EVALUATION_FILE).read_text("utf-8"))
        names = list(cached["class_names"])
        paths = [img["path"] for img in cached["images"]]
        labels = [names.index(img["true"]) for img in cached["images"]]
        if paths and all(os.path.isfile(p) for p in paths[:VERIFY_IMAGES]):
            return paths, labels
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from core.data import load_dataset

    data = load_dataset(config.data, val_split=config.val_split, seed=config.seed)
    return list(data.val_paths), list(data.val_labels)


def _spread(n: int, count: int) -> np.ndarray:
    """Up to ``count`` indices spread evenly over ``range(n)`` (classes are contiguous)."""
    return np.unique(np.linspace(0, n - 1, min(count, n)).astype(int))


def verification_set(
    store: RunStore, run_id: str, image_size: int, count: int = VERIFY_IMAGES
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """``(images, labels, source)``: up to ``count`` validation images spread over the split.

    Falls back to seeded random images (labels None) when the data is no longer available: the
    comparison then still proves the export computes the same function.
    """
    from core.data.images import load_rgb

    config = RunConfig.from_dict(store.result(run_id)["config"])
    try:
        paths, labels = _validation_items(store, run_id, config)
        if paths:
            picks = _spread(len(paths), count)
            images = np.stack([load_rgb(paths[i], image_size) for i in picks])
            chosen = None if labels is None else np.asarray([labels[i] for i in picks])
            return images, chosen, "validation"
    except DataError:
        pass
    rng = np.random.default_rng(_SEED)
    random = rng.integers(0, 256, (count, image_size, image_size, 3), dtype=np.uint8)
    return random, None, "random"


def verification_images(
    store: RunStore, run_id: str, image_size: int, count: int = VERIFY_IMAGES
) -> tuple[np.ndarray, str]:
    """Up to ``count`` validation images spread over the split, and where they came from."""
    images, _, source = verification_set(store, run_id, image_size, count)
    return images, source


def representative_images(
    store: RunStore, run_id: str, image_size: int, count: int = REPRESENTATIVE_IMAGES
) -> np.ndarray:
    """Up to ``count`` of the run's own training images (raw 0-255), spread over its classes.

    int8 calibration needs images like the ones the model will see; the run's training split is
    exactly that. Raises a StudioError when the data is gone (random pixels would calibrate the
    activation ranges wrongly and the export would fail its verification anyway).
    """
    from core.data import load_dataset
    from core.data.images import load_rgb

    config = RunConfig.from_dict(store.result(run_id)["config"])
    try:
        data = load_dataset(config.data, val_split=config.val_split, seed=config.seed)
    except DataError as exc:
        raise StudioError(
            f"The int8 export calibrates on the run's training images, but its data "
            f"{config.data!r} cannot be read any more ({exc}). Restore the data, or export "
            "tflite-fp16 or tflite (dynamic range), which need no images."
        ) from exc
    paths = list(data.train_paths)
    if not paths:
        raise StudioError(f"Run {run_id}'s data {config.data!r} has no training images left.")
    return np.stack([load_rgb(paths[i], image_size) for i in _spread(len(paths), count)])


_KINDS = {"keras": "float", "savedmodel": "float", "tflite": "float", "onnx": "float",
          "openvino": "float", "tflite-fp16": "fp16", "tflite-int8": "int8"}  # fmt: skip


def tolerance_text(kind: str) -> str:
    """The stated tolerance of a format kind, for tables and the model card."""
    if kind == "int8":
        return f"top-1 ≥ {INT8_MIN_AGREEMENT:.0%} (near-ties of {NEAR_TIE_QUANTIZED} excluded)"
    if kind == "dynamic":
        return f"top-1 100 % (near-ties of {NEAR_TIE_QUANTIZED} excluded)"
    if kind == "fp16":
        return f"top-1 100 %, |Δp| ≤ {FP16_ATOL}"
    return f"top-1 100 %, |Δp| ≤ {FLOAT_ATOL}"


def compare_predictions(
    live: np.ndarray, exported: np.ndarray, quantized: bool = False, kind: str | None = None
) -> dict[str, Any]:
    """Top-1 agreement and probability differences; raises ExportVerificationError on mismatch.

    ``kind``: "float" (default), "fp16", "dynamic" (what ``quantized=True`` means) or "int8".
    Float kinds must agree on every image except near-ties and stay within their probability
    tolerance; int8 must agree on ``INT8_MIN_AGREEMENT`` of the images that are not near-ties.
    """
    kind = kind or ("dynamic" if quantized else "float")
    if exported.shape != live.shape:
        raise ExportVerificationError(
            f"The exported model outputs shape {exported.shape}, the live model {live.shape}."
        )
    rows = np.arange(len(live))
    live_top, export_top = live.argmax(axis=1), exported.argmax(axis=1)
    # How much lower the live model scores the exported top-1 than its own top-1.
    gap = live[rows, live_top] - live[rows, export_top]
    tie = {"float": NEAR_TIE_FLOAT, "fp16": NEAR_TIE_FP16}.get(kind, NEAR_TIE_QUANTIZED)
    bad = np.flatnonzero((live_top != export_top) & (gap > tie))
    max_diff = float(np.abs(live - exported).max()) if live.size else 0.0
    summary = {
        "top1_agreement": float(np.mean(live_top == export_top)) if len(live) else 1.0,
        "near_ties": int(np.sum((live_top != export_top) & (gap <= tie))),
        "max_abs_diff": max_diff,
        "tolerance": tolerance_text(kind),
    }
    if kind == "int8":
        ordered = np.sort(live, axis=1)
        clear = ordered[:, -1] - ordered[:, -2] > tie if live.shape[1] > 1 else rows >= 0
        agreement = float(np.mean((live_top == export_top)[clear])) if clear.any() else 1.0
        summary["clear_agreement"] = agreement
        if agreement < INT8_MIN_AGREEMENT:
            raise ExportVerificationError(
                f"Export verification failed: the int8 model agrees with the live model's top-1 "
                f"on {agreement:.1%} of {int(clear.sum())} images (at least "
                f"{INT8_MIN_AGREEMENT:.0%} required), so quantization costs too much accuracy "
                "for this model. The artifact was not kept; export tflite-fp16 or tflite "
                "(dynamic range) instead."
            )
        return summary
    if len(bad):
        i = int(bad[0])
        raise ExportVerificationError(
            f"Export verification failed: top-1 differs from the live model on {len(bad)} of "
            f"{len(live)} images (e.g. image {i}: live class {live_top[i]} "
            f"p={live[i, live_top[i]]:.3f}, export class {export_top[i]}). The artifact was not "
            "kept; re-export, or report a bug if it persists."
        )
    atol = {"float": FLOAT_ATOL, "fp16": FP16_ATOL}.get(kind)
    if atol is not None and max_diff > atol:
        raise ExportVerificationError(
            f"Export verification failed: probabilities differ from the live model by up to "
            f"{max_diff:.4f} (allowed {atol}) although top-1 agrees, so the export does not "
            "compute the same function. The artifact was not kept."
        )
    return summary


VERIFY_SCRIPT = Path(__file__).with_name("verify_export.py")


def verify_in_runtime(
    path: str | os.PathLike[str], fmt: str, images: np.ndarray, latency_runs: int = LATENCY_RUNS
) -> dict[str, Any]:
    """Predict ``images`` with an exported file in its runtime, in a separate Python process.

    The child runs ``verify_export.py`` with ``python -I`` from a temporary folder, so neither the
    project folder nor ``PYTHONPATH`` is on its path: it loads the file the way a user without
    this package would. Returns ``{probabilities (array), latency_ms_p50, runtime}``.
    """
    fmt = normalize_format(fmt)
    with tempfile.TemporaryDirectory(prefix="verify-export-") as tmp:
        inputs = Path(tmp) / "inputs.npy"
        np.save(inputs, np.asarray(images, dtype=np.float32))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        cmd = [sys.executable, "-I", str(VERIFY_SCRIPT), fmt, str(Path(path).resolve()),
               str(inputs), str(latency_runs)]  # fmt: skip
        try:
            proc = subprocess.run(
                cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=VERIFY_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as exc:
            raise ExportVerificationError(
                f"Loading the {fmt} export in {FORMAT_RUNTIMES[fmt]} took over "
                f"{VERIFY_TIMEOUT_S} s; the artifact was not kept."
            ) from exc
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    if proc.returncode == 2:
        raise StudioError(
            f"The {fmt} export cannot be checked: its runtime {FORMAT_RUNTIMES[fmt]} is not "
            f"installed ({errors[-1][7:] if errors else 'import failed'}). Install it (pip "
            f"install {FORMAT_RUNTIMES[fmt].split()[0].replace('_', '-')}) and export again."
        )
    if proc.returncode != 0:
        detail = errors[-1][7:] if errors else (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise ExportVerificationError(
            f"The {fmt} export does not load in {FORMAT_RUNTIMES[fmt]} without this package "
            f"({detail}). The artifact was not kept; report a bug if it persists."
        )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result.get("imported_core") or result.get("core_importable"):
        raise ExportVerificationError(  # a bug of ours: the check would prove nothing
            "The verification process could import Transfer Studio, so it does not load the "
            "export the way a user without it would; report a bug."
        )
    result["probabilities"] = np.asarray(result["probabilities"], dtype=np.float32)
    return result


# --------------------------------------------------------------------------- public entry point


def labels_text(class_names: Sequence[str]) -> str:
    """``labels.txt``'s content: one class per line, in output order.

    Refuses names with a line break or control character (possible in runs from before the
    dataset scan rejected them): the file would then have more lines than the model has outputs.
    """
    from core.data import unsafe_name_characters

    for name in class_names:
        bad = unsafe_name_characters(name)
        if bad:
            shown = ", ".join(dict.fromkeys(repr(ch) for ch in bad))
            raise StudioError(
                f"Class name {name!r} contains a line break or control character ({shown}), so "
                f"labels.txt (one class per line) would not match the model's "
                f"{len(class_names)} outputs; nothing was exported. Rename that class folder "
                "without those characters and train the run again."
            )
    return "".join(f"{name}\n" for name in class_names)


def _foreign_files(folder: Path) -> list[str]:
    """Paths under an existing ``saved_model/`` that a SavedModel export does not write."""
    foreign = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel_dir = Path(dirpath).relative_to(folder)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            rel = (rel_dir / name).as_posix()
            if not _SAVEDMODEL_FILES.fullmatch(rel) or os.path.islink(os.path.join(dirpath, name)):
                foreign.append(rel)
    return sorted(foreign)


def _shown(names: Sequence[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check_target(
    out: Path, names: Sequence[str], dir_names: Sequence[str], overwrite: bool, ignore: str = ""
) -> None:
    """Refuse an export folder where writing ``names`` would destroy something not ours.

    Without ``overwrite`` the folder must be new or empty. With it, only entries named like the
    export's own files are replaced, and only when they are what the export writes: a folder
    where a file goes (or the reverse), or a ``saved_model/`` holding other files, is refused.
    """
    if not (out.exists() or out.is_symlink()):
        blocker = blocking_file(out)
        if blocker is not None:  # mkdir would fail with NotADirectoryError
            raise ExportTargetError(
                f"The export folder {out} lies under {blocker}, which is a file, not a folder. "
                "Choose a folder path (a missing folder is created)."
            )
        return
    if not out.is_dir():
        raise ExportTargetError(
            f"The export folder {out} is a file, not a folder. Choose a folder path (a missing "
            "folder is created)."
        )
    present = sorted(p.name for p in out.iterdir() if p.name != ignore)
    if present and not overwrite:
        raise ExportTargetError(
            f"The export folder {out} is not empty (it holds {_shown(present)}). Export writes "
            f"{', '.join(names)} and never overwrites or deletes files it did not write, so "
            "nothing was changed. Choose an empty or new folder, or turn on overwrite to replace "
            "just those files (everything else in the folder is left alone)."
        )
    for name in names:
        target = out / name
        if target.is_symlink() or not target.exists():
            continue  # replacing a symlink never touches what it points to
        want_dir = name in dir_names
        if target.is_dir() != want_dir:
            what, writes = ("a folder", "a file") if target.is_dir() else ("a file", "a folder")
            raise ExportTargetError(
                f"{target} is {what}, but the export writes {writes} under that name; even with "
                "overwrite on it is not replaced, so nothing was changed. Move or rename it, or "
                "choose another export folder."
            )
        foreign = _foreign_files(target) if want_dir else []
        if foreign:
            raise ExportTargetError(
                f"{target} holds files a SavedModel export does not write ({_shown(foreign)}); "
                "replacing the folder would delete them, so even with overwrite on nothing was "
                f"changed. Move those files out of {target}, or choose another export folder."
            )


def _place(staging: Path, out_dir: Path, names: Sequence[str]) -> list[Path]:
    """Move the verified files from ``staging`` into place, replacing same-named ones."""
    placed = []
    for name in names:
        target = out_dir / name
        if target.exists() or target.is_symlink():
            # Step the old entry aside into staging (deleted with it): nothing is lost if the
            # move below fails, and a folder is never deleted in place.
            os.replace(target, staging / f"replaced-{name}")
        os.replace(staging / name, target)
        placed.append(target)
    return placed


def _artifact(fmt: str, quantize: bool) -> str:
    return QUANTIZED_TFLITE_NAME if quantize else ARTIFACT_NAMES[fmt]


def _live_probabilities(model: Any, images: np.ndarray) -> np.ndarray:
    chunks = [
        np.asarray(model(images[i : i + 32].astype(np.float32), training=False))
        for i in range(0, len(images), 32)
    ]
    return np.concatenate(chunks).astype(np.float32)


def _accuracy(probs: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None or not len(labels):
        return None
    return float(np.mean(probs.argmax(axis=1) == labels))


@dataclass(frozen=True)
class ExportStep:
    """Where an export is, for a progress display: ``step`` is "preparing" (loading the model
    and the verification images), "converting" or "verifying" (loading the file in its runtime,
    checking its predictions and timing it) format ``index`` of ``total``, or "done" with that
    format's finished ``row`` (the row ``export_all`` returns, without its final ``path``)."""

    step: str
    format: str
    index: int
    total: int
    row: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        """One line: ``Converting onnx (6/7)…``."""
        where = f"{self.format} ({self.index}/{self.total})"
        if self.step == "preparing":
            return "Loading the model and the verification images…"
        if self.step == "converting":
            return f"Converting {where}…"
        if self.step == "verifying":
            runtime = FORMAT_RUNTIMES.get(self.format, "its runtime")
            return f"Verifying and benchmarking {where} in {runtime}…"
        return f"Done: {where}"


ExportProgressFn = Callable[[ExportStep], None]


def _export(
    store: RunStore,
    run_id: str,
    jobs: Sequence[tuple[str, bool]],
    out_dir: str | os.PathLike[str] | None,
    overwrite: bool,
    default_folder: str,
    skipped: Sequence[dict[str, str]] = (),
    progress: ExportProgressFn | None = None,
) -> dict[str, Any]:
    """Write, verify in their runtimes and place the artifacts of ``jobs`` (format, quantize),
    with labels, config and the model card, in one folder; ``progress`` hears each step."""
    say = progress or (lambda step: None)
    from core.runs.model_card import CONFUSION_IMAGE, write_card
    from core.runs.predict import load_run

    artifacts = [_artifact(fmt, q) for fmt, q in jobs]
    companions = [name for fmt, _ in jobs for name in COMPANION_FILES.get(fmt, ())]
    names = [*artifacts, *companions, LABELS_FILE, CONFIG_FILE, CARD_FILE, CONFUSION_IMAGE]
    dir_names = [a for a, (fmt, _) in zip(artifacts, jobs, strict=True) if fmt == "savedmodel"]
    if out_dir is not None:  # a wrong folder is refused before the model loads (seconds)
        store.get_run(run_id)  # an unknown run is named first
        _check_target(Path(out_dir).expanduser(), names, dir_names, overwrite)
    run = load_run(store, run_id)  # raises a StudioError for runs without a model
    labels = labels_text(run.class_names)
    result_row = store.result(run_id)
    if out_dir is None:  # the run's own folder: a re-export replaces the previous one
        out, overwrite = store.run_dir(run_id) / "exports" / default_folder, True
    else:
        out = Path(out_dir).expanduser()
    _check_target(out, names, dir_names, overwrite)  # before anything is written
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    except PermissionError as exc:
        raise ExportTargetError(
            f"The export folder {out} is not writable ({exc.strerror}). Choose a folder you can "
            "write to."
        ) from exc
    try:
        total = len(jobs)
        say(ExportStep("preparing", jobs[0][0], 0, total))
        portable = portable_model(run.model)
        images, truth, source = verification_set(store, run_id, run.image_size)
        batch = images.astype(np.float32)
        live = _live_probabilities(run.model, batch)
        live_accuracy = _accuracy(live, truth)
        rows = []
        for index, ((fmt, quantize), artifact) in enumerate(zip(jobs, artifacts, strict=True), 1):
            target = staging / artifact
            say(ExportStep("converting", fmt, index, total))
            if fmt == "keras":
                _write_keras(portable, target)
            elif fmt == "savedmodel":
                _write_savedmodel(portable, target)
            elif fmt == "onnx":
                _write_onnx(portable, target)
            elif fmt == "openvino":
                _write_openvino(portable, target)
            elif fmt == "tflite-int8":
                calibration = representative_images(store, run_id, run.image_size)
                _write_tflite(portable, target, "int8", calibration)
            else:
                _write_tflite(portable, target, "fp16" if fmt == "tflite-fp16" else quantize)
            say(ExportStep("verifying", fmt, index, total))
            ran = verify_in_runtime(target, fmt, batch)
            kind = "dynamic" if quantize else _KINDS[fmt]
            check = compare_predictions(live, ran["probabilities"], kind=kind)
            accuracy = _accuracy(ran["probabilities"], truth)
            rows.append(
                {
                    "format": fmt,
                    "quantized": quantize,
                    "file": artifact,
                    "bytes": _size_of(target)
                    + sum(_size_of(staging / c) for c in COMPANION_FILES.get(fmt, ())),
                    "runtime": ran["runtime"],
                    "latency_ms_p50": ran["latency_ms_p50"],
                    **check,
                    "accuracy": accuracy,
                    "accuracy_drop": None
                    if accuracy is None or live_accuracy is None
                    else live_accuracy - accuracy,
                }
            )
            say(ExportStep("done", fmt, index, total, dict(rows[-1])))
        (staging / LABELS_FILE).write_text(labels, encoding="utf-8")
        (staging / CONFIG_FILE).write_text(
            json.dumps(result_row["config"], indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        summary = {
            "verified_images": int(len(images)),
            "verified_on": source,
            "live_accuracy": live_accuracy,
            "skipped_formats": list(skipped),
        }
        write_card(store, run_id, staging, rows, summary, model=run.model)

        # Again, just before writing: the folder may have changed during the verification.
        _check_target(out, names, dir_names, overwrite, ignore=staging.name)
        files = _place(staging, out, names)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for row in rows:
        row["path"] = str(out / row["file"])
    return {
        "run_id": run_id,
        "path": str(out),
        "files": [str(f) for f in files],
        "formats": rows,
        "card": str(out / CARD_FILE),
        **summary,
    }


def export_run(
    store: RunStore,
    run_id: str,
    fmt: str,
    out_dir: str | os.PathLike[str] | None = None,
    quantize: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export run ``run_id``'s model as ``fmt`` into ``out_dir`` and verify it in its runtime.

    ``out_dir`` defaults to ``<run folder>/exports/<fmt>``. Writes the artifact
    (``model.keras``, ``saved_model/``, ``model.tflite``, ``model_dynamic_range.tflite``,
    ``model_fp16.tflite``, ``model_int8.tflite``, ``model.onnx`` or ``model.xml`` with
    ``model.bin``), ``labels.txt``,
    ``config.json``, ``model_card.md`` and ``confusion_matrix.png``. Returns ``{format, path,
    files, verified_images, top1_agreement, accuracy, latency_ms_p50, bytes, ...}``; raises
    ``ExportVerificationError`` if the artifact, loaded in its runtime in a separate process,
    disagrees with the live model beyond the format's tolerance.

    A given ``out_dir`` must be new or empty unless ``overwrite`` is on; then only the files
    named above are replaced, never anything else (``ExportTargetError`` otherwise). The default
    folder belongs to the run, so exporting there again always replaces the previous export.
    """
    fmt = normalize_format(fmt)
    if quantize and fmt != "tflite":
        raise ConfigError(
            f"Dynamic-range quantization only applies to tflite exports, not {fmt!r}. "
            "Choose the tflite format, or turn quantization off."
        )
    missing = missing_packages(fmt)
    if missing:
        raise StudioError(
            f"The {fmt} export needs {', '.join(missing)}, which is not installed. Install it "
            f"(pip install {' '.join(n.replace('_', '-') for n in missing)}) and export again."
        )
    folder = fmt + ("_dynamic_range" if quantize else "")
    done = _export(store, run_id, [(fmt, quantize)], out_dir, overwrite, folder)
    (row,) = done.pop("formats")
    return {**done, **row, "folder": done["path"], "path": row["path"]}


def export_all(
    store: RunStore,
    run_id: str,
    out_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    formats: Sequence[str] = FORMATS,
    progress: ExportProgressFn | None = None,
) -> dict[str, Any]:
    """Export every format (default ``FORMATS``) into one folder, each verified in its runtime.

    ``progress`` is called with an ``ExportStep`` as each format is converted, verified and
    done (with its row): a page shows where the export is and each row as it finishes.

    Defaults to ``<run folder>/exports/all``. A format whose converter is not installed is left
    out and listed in ``skipped_formats`` with what to install; any other failure is an error.
    Returns ``{path, files, formats: [per-format row], card, live_accuracy, ...}``: each row has
    ``file, bytes, runtime, latency_ms_p50, top1_agreement, accuracy, accuracy_drop``.
    """
    jobs, skipped = [], []
    for fmt in dict.fromkeys(normalize_format(f) for f in formats):
        missing = missing_packages(fmt)
        if missing:
            skipped.append(
                {"format": fmt, "reason": f"needs {', '.join(missing)} (pip install "
                 f"{' '.join(n.replace('_', '-') for n in missing)})"}
            )  # fmt: skip
        else:
            jobs.append((fmt, False))
    if not jobs:
        raise StudioError("No export format can be written here: " + "; ".join(
            f"{s['format']} {s['reason']}" for s in skipped))  # fmt: skip
    return _export(store, run_id, jobs, out_dir, overwrite, "all", skipped, progress)
