"""Load one exported model in the runtime a user deploys it with and predict: a standalone script.

Run as ``python -I verify_export.py FORMAT MODEL_PATH INPUTS.npy [LATENCY_RUNS]`` from a folder
outside the project: it must not (and cannot, with ``-I``) import Transfer Studio's ``core``, so a
file that only loads with our package installed fails here, as it would for a user. It imports
only the format's runtime (plain ``keras``, ``tensorflow``'s SavedModel loader, ``ai_edge_litert``,
``onnxruntime`` or ``openvino``) and numpy.

``INPUTS.npy`` holds a float32 ``(N, S, S, 3)`` batch of raw 0-255 RGB pixels (preprocessing is
inside every exported model). Prints one JSON object on stdout: ``probabilities`` (N x classes),
``latency_ms_p50`` (one image, after a warm-up), ``runtime`` (name and version),
``imported_core`` and ``core_importable`` (both must be false; the parent checks them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "LOADERS",
    "Predict",
    "main",
    "run",
]

Predict = Callable[[np.ndarray], np.ndarray]


def _keras(path: str) -> tuple[Predict, str]:
    import keras

    # safe_mode stays on: a stock-layer model needs neither our package nor unsafe deserialisation.
    model = keras.saving.load_model(path)
    return (lambda x: np.asarray(model.predict_on_batch(x))), f"keras {keras.__version__}"


def _savedmodel(path: str) -> tuple[Predict, str]:
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serve"]
    (name, spec), *_ = serve.structured_input_signature[1].items()

    def predict(x: np.ndarray) -> np.ndarray:
        (value,) = serve(**{name: tf.constant(x, dtype=spec.dtype)}).values()
        return np.asarray(value.numpy())

    predict.keep_alive = loaded  # type: ignore[attr-defined]  # signatures hold weak references
    return predict, f"tensorflow {tf.__version__} (tf.saved_model)"


def _tflite(path: str) -> tuple[Predict, str]:
    try:
        from ai_edge_litert import interpreter as litert

        runtime = "ai_edge_litert"
        cls: Any = litert.Interpreter
    except ImportError:  # tf.lite's interpreter runs the same file (deprecated in TF 2.21)
        import tensorflow as tf

        runtime, cls = f"tensorflow {tf.__version__} (tf.lite)", tf.lite.Interpreter
    interpreter = cls(model_path=path, num_threads=min(2, os.cpu_count() or 1))
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()

    def predict(x: np.ndarray) -> np.ndarray:
        interpreter.resize_tensor_input(inp["index"], list(x.shape))
        interpreter.allocate_tensors()
        if np.issubdtype(inp["dtype"], np.integer):  # full-integer model: quantize the pixels
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

    if runtime == "ai_edge_litert":
        from importlib.metadata import PackageNotFoundError, version

        try:
            runtime += " " + version("ai-edge-litert")
        except PackageNotFoundError:  # the version is only shown, never needed
            pass
    return predict, runtime


def _onnx(path: str) -> tuple[Predict, str]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = min(2, os.cpu_count() or 1)
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: x})[0])

    return predict, f"onnxruntime {ort.__version__}"


def _openvino(path: str) -> tuple[Predict, str]:
    import openvino as ov

    # f32 precision: the CPU plugin may otherwise pick bf16 on CPUs that have it.
    config = {
        "INFERENCE_NUM_THREADS": min(2, os.cpu_count() or 1),
        "INFERENCE_PRECISION_HINT": "f32",
    }
    compiled = ov.Core().compile_model(path, "CPU", config)

    def predict(x: np.ndarray) -> np.ndarray:
        return np.asarray(compiled(x)[0])

    from importlib.metadata import version

    return predict, f"openvino {version('openvino')}"


LOADERS = {
    "keras": _keras,
    "savedmodel": _savedmodel,
    "tflite": _tflite,
    "tflite-fp16": _tflite,
    "tflite-int8": _tflite,
    "onnx": _onnx,
    "openvino": _openvino,
}


def run(fmt: str, path: str, inputs: str, latency_runs: int = 20) -> dict[str, Any]:
    """Predict ``inputs`` with the exported model and time single-image calls."""
    batch = np.load(inputs).astype(np.float32)
    predict, runtime = LOADERS[fmt](path)
    # One image at a time, as a deployed model is usually called, also for the predictions.
    probs = np.concatenate([predict(batch[i : i + 1]) for i in range(len(batch))])
    times = []
    for i in range(latency_runs + 3):
        start = time.perf_counter()
        predict(batch[i % len(batch) : i % len(batch) + 1])
        if i >= 3:  # warm-up calls (allocation, tracing) are not what a user waits for
            times.append((time.perf_counter() - start) * 1000)
    return {
        "probabilities": probs.astype(float).tolist(),
        "latency_ms_p50": float(np.median(times)) if times else None,
        "runtime": runtime,
        "imported_core": "core" in sys.modules,
        # Whether this process *could* import the studio: it must not (a user would not have it).
        "core_importable": importlib.util.find_spec("core") is not None,
    }


def main(argv: list[str]) -> int:
    """Entry point: prints the JSON result, or one ``error:`` line and exit code 1."""
    fmt, path, inputs = argv[:3]
    runs = int(argv[3]) if len(argv) > 3 else 20
    try:
        result = run(fmt, path, inputs, runs)
    except ImportError as exc:
        print(f"error: missing runtime: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the parent turns this into a user-facing error
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
