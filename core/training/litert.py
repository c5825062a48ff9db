"""A converted LiteRT (TFLite + XNNPACK) runtime for the frozen base's feature pass.

Feature extraction runs the frozen base once per image (``core.training.embeddings``). On a CPU
the same trunk converted to a float32 TFLite file and run by LiteRT's XNNPACK delegate computes
the same features about twice as fast as Keras' compiled call. Conversion takes seconds, so each
converted trunk is kept on disk (``<home>/cache/runtimes``, safe to delete), keyed by the model's
identity and the TensorFlow / Keras / LiteRT versions.

Nothing is trusted unchecked: on first use per process, the runtime's features for a sample of
real images must match Keras' (per-image cosine similarity ``>= MIN_COSINE``), otherwise the
caller gets ``None`` and stays on Keras. A failed check (or a conversion the builtin op set cannot
express) is recorded next to the cache entry, so later runs fall back without reconverting.
``TRANSFER_STUDIO_FEATURE_RUNTIME=keras`` turns the runtime off. It is a CPU float32 runtime, so
a pass on a GPU, in mixed precision or split over a mirrored run's replicas stays on Keras
(``core.training.embeddings``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import numpy as np

from core.errors import ConfigError, StudioError
from core.files import TEMP_PREFIX, atomic_path, atomic_write_text
from core.paths import studio_home
from core.runs.formats import EXPORT_FORMATS, WriteOptions
from core.training.interpreter import RUN_BATCH, LiteRTExtractor

__all__ = [
    "CONVERTER_VERSION",
    "KERAS_BATCH",
    "MIN_COSINE",
    "RUNTIME_CHOICES",
    "RUNTIME_ENV",
    "RUN_BATCH",
    "SAMPLE_LIMIT",
    "LiteRTExtractor",
    "StageFn",
    "convert",
    "measure_rates",
    "min_cosine",
    "runtime_choice",
    "runtime_dir",
    "runtime_extractor",
    "runtime_key",
]

CONVERTER_VERSION = 1  # bump when ``convert`` changes what it writes
MIN_COSINE = 0.999
RUNTIME_ENV = "TRANSFER_STUDIO_FEATURE_RUNTIME"
RUNTIME_CHOICES = ("auto", "keras")
KERAS_BATCH = 32  # ``embeddings.FEATURE_BATCH``: the Keras pass ``measure_rates`` compares with
SAMPLE_LIMIT = 32  # at most this many sample images are checked
StageFn = Callable[[str], None]

# Verdict of the check, per cached file, for this process: the info dict ``runtime_extractor``
# returned. Dropped whenever the file is (re)converted.
_verdicts: dict[str, dict[str, Any]] = {}
_lock = threading.RLock()


def runtime_dir() -> Path:
    """Folder of the converted runtimes (safe to delete)."""
    path = studio_home() / "cache" / "runtimes"
    path.mkdir(parents=True, exist_ok=True)
    return path


def runtime_choice() -> str:
    """``auto`` (LiteRT when it checks out, the default) or ``keras`` (never LiteRT)."""
    raw = os.environ.get(RUNTIME_ENV, "").strip().lower() or "auto"
    if raw not in RUNTIME_CHOICES:
        raise ConfigError(
            f"{RUNTIME_ENV}={raw!r} is not one of {', '.join(RUNTIME_CHOICES)}: use auto (the "
            "converted runtime when its features match Keras') or keras (always Keras)."
        )
    return raw


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def runtime_key(identity: dict[str, object]) -> str:
    """Cache key of the runtime converted from the model ``identity`` describes."""
    import tensorflow as tf

    parts = {
        "identity": identity,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "ai_edge_litert": _version("ai-edge-litert"),
        "converter": CONVERTER_VERSION,
    }
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def convert(model: keras.Model, target: Path) -> None:
    """Write ``model`` as a float32 TFLite file (builtin ops, dynamic batch), atomically.

    Raises ``StudioError`` when the builtin op set cannot express the model.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    # The tflite format's writer exports the SavedModel into a temporary folder next to its
    # target and removes it; the flatbuffer lands in atomic_path's temporary, renamed over
    # ``target``.
    with atomic_path(target) as tmp:
        EXPORT_FORMATS["tflite"].writer(model, tmp, WriteOptions())


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity (1.0 where both rows are zero; NaN stays NaN)."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.sum(a * b, axis=1) / (na * nb)
    both_zero = (na == 0) & (nb == 0)
    return np.where(both_zero, 1.0, cos)


def min_cosine(expected: np.ndarray, got: np.ndarray) -> float:
    """The lowest per-image cosine similarity of ``got`` to ``expected``.

    ``-1.0`` when the shapes differ; NaN when either side holds NaN (fails any ``>=`` test).
    """
    if got.shape != expected.shape:
        return -1.0
    return float(np.min(_cosines(expected, got))) if len(got) else 1.0


def _fallback(reason: str, min_cosine: float | None = None) -> dict[str, Any]:
    return {"runtime": "keras", "reason": reason, "min_cosine": min_cosine}


def _read_rejection(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("runtime") != "keras":
        return None
    return _fallback(str(record.get("reason", "rejected earlier")), record.get("min_cosine"))


def _reject(tflite: Path, rejected: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Record a deterministic failure so that later runs fall back without reconverting."""
    try:
        atomic_write_text(rejected, json.dumps(info, sort_keys=True))
        tflite.unlink(missing_ok=True)
    except OSError:
        pass  # not remembered: the next process checks again
    return info


def _load(path: Path) -> LiteRTExtractor | None:
    """The extractor of a cached file; ``None`` (and the file removed) if it does not load."""
    if not path.is_file():
        return None
    try:
        return LiteRTExtractor(path)
    except Exception:  # not a valid flatbuffer, tensors cannot be allocated…
        path.unlink(missing_ok=True)
        return None


def runtime_extractor(
    model: keras.Model,
    identity: dict[str, object],
    sample: np.ndarray,
    stage: StageFn | None = None,
) -> tuple[LiteRTExtractor | None, dict[str, Any]]:
    """The converted runtime of ``model`` if its features match Keras' on ``sample``, and why.

    ``identity`` must determine ``model``'s function (backbone, weights id, image size,
    preprocessing): the cached file is found by it alone, so never use this with random weights.
    ``sample``: a few real images (float32 raw pixels; 8 are plenty, at most ``SAMPLE_LIMIT``
    are used): Keras runs eagerly on them, ~0.1 s an image at 224 px on 2 cores.
    ``stage("converting")`` is called before a conversion.

    Returns ``(extractor, {"runtime": "litert", "min_cosine", "converted", "convert_s"})``, or
    ``(None, {"runtime": "keras", "reason", "min_cosine"})`` when the runtime is turned off or
    missing, cannot convert the model, or disagrees with Keras. Never raises, except
    ``ConfigError`` for a bad ``TRANSFER_STUDIO_FEATURE_RUNTIME``.
    """
    if runtime_choice() == "keras":
        return None, _fallback(f"{RUNTIME_ENV}=keras")
    try:
        key = runtime_key(identity)
        folder = runtime_dir()
    except Exception as exc:  # e.g. an unwritable home
        return None, _fallback(f"no runtime cache ({type(exc).__name__}: {exc})")
    path, rejected = folder / f"{key}.tflite", folder / f"{key}.rejected.json"
    with _lock:
        known = _verdicts.get(str(path)) or _read_rejection(rejected)
        if known is not None and known["runtime"] == "keras":
            _verdicts[str(path)] = known
            return None, dict(known)
        extractor = _load(path)
        if extractor is not None and known is not None:  # checked already in this process
            return extractor, {**known, "converted": False, "convert_s": 0.0}
        converted, convert_s = False, 0.0
        try:
            x = np.asarray(sample[:SAMPLE_LIMIT], dtype=np.float32)
            with warnings.catch_warnings():  # a bare array for a one-input list: fine
                warnings.filterwarnings("ignore", "The structure of `inputs`", UserWarning)
                expected = np.asarray(model(x, training=False), dtype=np.float32)
        except Exception as exc:  # not the runtime's fault: nothing to remember
            return None, _fallback(f"Keras features of the sample: {type(exc).__name__}: {exc}")
        try:
            while True:
                if extractor is None:
                    _verdicts.pop(str(path), None)
                    if stage:
                        stage("converting")
                    start = time.perf_counter()
                    convert(model, path)
                    convert_s += time.perf_counter() - start
                    converted = True
                    extractor = LiteRTExtractor(path)
                try:
                    lowest = min_cosine(expected, extractor(x))
                except Exception:
                    if converted:
                        raise
                    lowest = float("nan")  # a cached file that cannot run: convert afresh
                if lowest >= MIN_COSINE:
                    break
                if converted:
                    info = _fallback(
                        f"converted features differ from Keras' (lowest cosine {lowest:.6f}, "
                        f"need {MIN_COSINE})",
                        lowest,
                    )
                    _verdicts[str(path)] = _reject(path, rejected, info)
                    return None, dict(info)
                path.unlink(missing_ok=True)  # a cached file that disagrees: maybe damaged
                extractor = None
        except (OSError, MemoryError) as exc:  # may be transient: remembered by this process only
            _verdicts[str(path)] = _fallback(f"{type(exc).__name__}: {exc}")
            return None, dict(_verdicts[str(path)])
        except Exception as exc:  # conversion failed, or its result cannot run here
            what = "conversion failed" if isinstance(exc, StudioError) else type(exc).__name__
            info = _fallback(f"{what}: {exc}")
            _verdicts[str(path)] = _reject(path, rejected, info)
            return None, dict(info)
        info = {
            "runtime": "litert",
            "min_cosine": lowest,
            "converted": converted,
            "convert_s": round(convert_s, 3),
        }
        _verdicts[str(path)] = info
        return extractor, dict(info)


def measure_rates(
    model: keras.Model,
    images: np.ndarray,
    reps: int = 3,
    extractor: LiteRTExtractor | None = None,
) -> dict[str, Any]:
    """Feature-pass images/s of Keras' compiled call and of the LiteRT runtime, same images.

    Keras in batches of ``KERAS_BATCH`` (as ``forward_once``), LiteRT in its own; after one
    warm-up pass each, ``reps`` passes alternate between the two; each rate is the median pass's
    (``*_best_*``: the fastest pass's). Without ``extractor`` the model is converted into a
    temporary folder first (``convert_s``, not part of the rates).
    """
    import tensorflow as tf

    x = np.ascontiguousarray(images, dtype=np.float32)
    forward = tf.function(lambda t: model(t, training=False), reduce_retracing=True)

    def keras_pass() -> np.ndarray:
        return np.concatenate(
            [
                forward(tf.constant(x[i : i + KERAS_BATCH])).numpy()
                for i in range(0, len(x), KERAS_BATCH)
            ]
        )

    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX, dir=runtime_dir()) as tmp:
        convert_s = 0.0
        if extractor is None:
            start = time.perf_counter()
            convert(model, Path(tmp) / "model.tflite")
            convert_s = time.perf_counter() - start
            extractor = LiteRTExtractor(Path(tmp) / "model.tflite")
        runners: dict[str, Callable[[np.ndarray], np.ndarray]] = {
            "keras": lambda _: keras_pass(),
            "litert": extractor,
        }
        outputs = {name: run(x) for name, run in runners.items()}  # warm-up (tracing, allocation)
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(max(1, reps)):
            for name, run in runners.items():
                start = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - start)
    rates = {name: len(x) / float(np.median(t)) for name, t in times.items()}
    best = {name: len(x) / min(t) for name, t in times.items()}  # the least disturbed pass
    return {
        "images": len(x),
        "reps": max(1, reps),
        "keras_batch": KERAS_BATCH,
        "litert_batch": extractor.batch,
        "litert_threads": extractor.num_threads,
        "keras_images_per_s": round(rates["keras"], 2),
        "litert_images_per_s": round(rates["litert"], 2),
        "ratio": round(rates["litert"] / rates["keras"], 3),
        "keras_best_images_per_s": round(best["keras"], 2),
        "litert_best_images_per_s": round(best["litert"], 2),
        "min_cosine": min_cosine(outputs["keras"], outputs["litert"]),
        "convert_s": round(convert_s, 3),
    }
