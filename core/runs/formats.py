"""The export formats, one row each: name, file, converter, loader, tolerance, what it needs.

``EXPORT_FORMATS`` is the one table ``core.runs.export`` (and the LiteRT feature runtime) reads:
each ``ExportFormat`` names the artifact it writes, how to write it from a Keras model, how to load
it back in this process, the runtime a user deploys it with (where it is verified), the
tolerance its predictions must meet against the live model, and the pip packages its converter
or runtime needs beyond the requirements' core.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError, StudioError

__all__ = [
    "ARTIFACT_NAMES",
    "EXPORT_FORMATS",
    "FORMATS",
    "FP16_ATOL",
    "FLOAT_ATOL",
    "INT8_MIN_AGREEMENT",
    "NEAR_TIE_FLOAT",
    "NEAR_TIE_FP16",
    "NEAR_TIE_QUANTIZED",
    "QUANTIZED_TFLITE_NAME",
    "TOLERANCES",
    "ExportFormat",
    "Runner",
    "Tolerance",
    "WriteOptions",
    "export_format",
    "litert_interpreter_class",
    "missing_packages",
    "normalize_format",
    "tolerance_text",
    "unsupported_ops",
    "write_savedmodel",
    "write_tflite",
]

QUANTIZED_TFLITE_NAME = "model_dynamic_range.tflite"  # tflite with dynamic-range weights
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


@dataclass(frozen=True)
class Tolerance:
    """How closely an export must reproduce the live model's probabilities.

    Top-1 must agree except where the live model has a near-tie (its two best classes within
    ``near_tie``); float kinds must also keep every probability within ``atol``; full-integer
    int8 must agree on ``min_agreement`` of the images that are not near-ties."""

    kind: str  # float, fp16, dynamic (tflite with int8 weights) or int8 (full-integer)
    near_tie: float
    atol: float | None = None
    min_agreement: float | None = None

    def text(self) -> str:
        """The stated tolerance, for tables and the model card."""
        if self.min_agreement is not None:
            return f"top-1 ≥ {self.min_agreement:.0%} (near-ties of {self.near_tie} excluded)"
        if self.atol is None:
            return f"top-1 100 % (near-ties of {self.near_tie} excluded)"
        return f"top-1 100 %, |Δp| ≤ {self.atol}"


TOLERANCES = {
    "float": Tolerance("float", NEAR_TIE_FLOAT, FLOAT_ATOL),
    "fp16": Tolerance("fp16", NEAR_TIE_FP16, FP16_ATOL),
    "dynamic": Tolerance("dynamic", NEAR_TIE_QUANTIZED),
    "int8": Tolerance("int8", NEAR_TIE_QUANTIZED, min_agreement=INT8_MIN_AGREEMENT),
}


def tolerance_text(kind: str) -> str:
    """The stated tolerance of a format kind (``TOLERANCES``), for tables and the model card."""
    return TOLERANCES[kind].text()


_TF_LOCK = threading.RLock()  # SavedModel export and TFLite conversion are not re-entrant-safe


# --------------------------------------------------------------------------- loading


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
class Runner:
    """An exported artifact loaded back: its input size and a batch → probabilities function."""

    image_size: int
    predict: Callable[[np.ndarray], np.ndarray]
    keep_alive: Any = None  # SavedModel signatures only hold weak references to their object


def _load_keras(path: Path) -> Runner:
    import keras

    import core.models.layers  # noqa: F401  registers PixelNormalize for deserialisation

    model = keras.saving.load_model(path, safe_mode=True)
    return Runner(
        int(model.inputs[0].shape[1]),
        lambda x: np.asarray(model(x, training=False)),
        model,
    )


def _load_savedmodel(path: Path) -> Runner:
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

    return Runner(int(spec.shape[1]), predict, loaded)


def _load_tflite(path: Path) -> Runner:
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

    return Runner(int(inp["shape"][1]), predict, interpreter)


def _load_onnx(path: Path) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise StudioError(
            "Running an ONNX model needs the onnxruntime package, which is not installed. "
            "Install it (pip install onnxruntime) and try again."
        ) from exc
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    return Runner(
        int(inp.shape[1]), lambda x: np.asarray(session.run(None, {inp.name: x})[0]), session
    )


def _load_openvino(path: Path) -> Runner:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    size = int(compiled.inputs[0].get_partial_shape()[1].get_length())
    return Runner(size, lambda x: np.asarray(compiled(x)[0]), compiled)


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class WriteOptions:
    """What a writer may need beyond the model: tflite's dynamic-range switch, and the
    calibration images of full-integer int8 (raw 0-255, fetched only when that format is
    written)."""

    quantize: bool = False
    calibration: Callable[[], np.ndarray] | None = None


def _write_keras(model: Any, target: Path, options: WriteOptions) -> None:
    model.save(str(target))


def write_savedmodel(model: Any, target: Path, options: WriteOptions | None = None) -> None:
    """A TF SavedModel folder with Keras 3's ``serve`` endpoint."""
    # Keras 3's own export: a "serve" endpoint calling the model with training=False.
    with _TF_LOCK:
        model.export(str(target), format="tf_saved_model", verbose=False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unsupported_ops(message: str) -> list[str]:
    """Op names a converter error complains about (``'tf.Foo' op is neither ...``)."""
    return sorted(set(re.findall(r"'((?:tf|tfl)\.\w+)'", message)))


def write_tflite(
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
        write_savedmodel(model, Path(tmp) / "sm")
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
                ops = unsupported_ops(str(exc))
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


def _write_onnx(model: Any, target: Path, options: WriteOptions) -> None:
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


def _write_openvino(model: Any, target: Path, options: WriteOptions) -> None:
    # Keras converts through OpenVINO's own TensorFlow frontend: model.xml plus model.bin.
    with _TF_LOCK:
        try:
            model.export(str(target), format="openvino", verbose=False)
        except Exception as exc:
            raise StudioError(
                f"OpenVINO conversion failed ({type(exc).__name__}: {_first_line(exc)}). Export "
                "as onnx instead (OpenVINO's runtime reads ONNX files too)."
            ) from exc


def _write_tflite_float(model: Any, target: Path, options: WriteOptions) -> None:
    write_tflite(model, target, options.quantize)


def _write_tflite_fp16(model: Any, target: Path, options: WriteOptions) -> None:
    write_tflite(model, target, "fp16")


def _write_tflite_int8(model: Any, target: Path, options: WriteOptions) -> None:
    if options.calibration is None:
        raise StudioError("int8 quantization needs representative images; none given.")
    write_tflite(model, target, "int8", options.calibration())


# --------------------------------------------------------------------------- the table

Writer = Callable[[Any, Path, WriteOptions], None]
Loader = Callable[[Path], Runner]


@dataclass(frozen=True)
class ExportFormat:
    """One export format."""

    name: str
    artifact: str  # the file (or folder) written: its suffix says the format
    runtime: str  # what a user loads it with; the export is verified there
    tolerance: Tolerance
    writer: Writer
    loader: Loader
    packages: tuple[str, ...] = ()  # pip names its converter or runtime needs beyond ours
    companions: tuple[str, ...] = ()  # files written beside the artifact
    aliases: tuple[str, ...] = field(default=())  # other spellings ``normalize_format`` accepts

    @property
    def suffix(self) -> str:
        """The artifact's suffix (``""`` for the SavedModel folder)."""
        return Path(self.artifact).suffix


EXPORT_FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("keras", "model.keras", "keras", TOLERANCES["float"], _write_keras,
                     _load_keras, aliases=(".keras",)),
        ExportFormat("savedmodel", "saved_model", "tensorflow (tf.saved_model)",
                     TOLERANCES["float"], write_savedmodel, _load_savedmodel,
                     aliases=("saved_model", "tf_saved_model")),
        ExportFormat("tflite", "model.tflite", "ai_edge_litert", TOLERANCES["float"],
                     _write_tflite_float, _load_tflite, aliases=("litert",)),
        ExportFormat("tflite-fp16", "model_fp16.tflite", "ai_edge_litert", TOLERANCES["fp16"],
                     _write_tflite_fp16, _load_tflite, aliases=("tflite_fp16",)),
        ExportFormat("tflite-int8", "model_int8.tflite", "ai_edge_litert", TOLERANCES["int8"],
                     _write_tflite_int8, _load_tflite, packages=("ai_edge_litert",),
                     aliases=("tflite_int8",)),
        ExportFormat("onnx", "model.onnx", "onnxruntime", TOLERANCES["float"], _write_onnx,
                     _load_onnx, packages=("tf2onnx", "onnx", "onnxruntime")),
        ExportFormat("openvino", "model.xml", "openvino", TOLERANCES["float"], _write_openvino,
                     _load_openvino, packages=("openvino",), companions=("model.bin",)),
    )
}  # fmt: skip
# Views of the table, for callers that want one column.
FORMATS = tuple(EXPORT_FORMATS)
ARTIFACT_NAMES = {f.name: f.artifact for f in EXPORT_FORMATS.values()}
_ALIASES = {alias: f.name for f in EXPORT_FORMATS.values() for alias in (f.name, *f.aliases)}


def normalize_format(fmt: str) -> str:
    """Canonical format name; accepts a few common spellings (``saved_model``, ``litert``)."""
    key = str(fmt).strip().lower()
    if key not in _ALIASES:
        raise ConfigError(
            f"Unknown export format {fmt!r}. Available: {', '.join(FORMATS)} "
            "(tflite can also be dynamic-range quantized)."
        )
    return _ALIASES[key]


def export_format(fmt: str) -> ExportFormat:
    """The table's row of ``fmt`` (any accepted spelling)."""
    return EXPORT_FORMATS[normalize_format(fmt)]


def missing_packages(fmt: str) -> list[str]:
    """The pip packages ``fmt`` needs that are not installed (empty when it can be exported)."""
    import importlib.util

    return [
        name for name in export_format(fmt).packages if importlib.util.find_spec(name) is None
    ]  # fmt: skip
