"""Export a finished run's model as ``.keras``, TF SavedModel or TFLite, and verify the artifact.

Every export is written to a staging folder, reloaded the way a user would load it and compared
with the live model on a few validation images; only a verified export is moved into place. A
disagreement raises ``ExportVerificationError`` (a ``StudioError``), never a warning: a silently
wrong export is worse than none.

All formats take raw 0-255 RGB float32 pixels, because preprocessing (``PixelNormalize``) is part
of the model. Next to the model go ``labels.txt`` (one class per line, in output order) and
``config.json`` (the run's config).
"""

from __future__ import annotations

import json
import os
import re
import shutil
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

FORMATS = ("keras", "savedmodel", "tflite")
_ALIASES = {
    "keras": "keras",
    ".keras": "keras",
    "savedmodel": "savedmodel",
    "saved_model": "savedmodel",
    "tf_saved_model": "savedmodel",
    "tflite": "tflite",
    "litert": "tflite",
}
ARTIFACT_NAMES = {"keras": "model.keras", "savedmodel": "saved_model", "tflite": "model.tflite"}
QUANTIZED_TFLITE_NAME = "model_dynamic_range.tflite"
LABELS_FILE, CONFIG_FILE = "labels.txt", "config.json"
VERIFY_IMAGES = 8
# Float exports compute the same function: probabilities must match closely, not just top-1.
FLOAT_ATOL = 1e-3
# A top-1 difference is tolerated only where the live model itself has a near-tie between the two
# classes (argmax is then decided by rounding). Dynamic-range int8 weights move probabilities by
# about a percent, so the quantized tolerance is wider.
NEAR_TIE_FLOAT = 1e-4
NEAR_TIE_QUANTIZED = 0.02
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
            "(tflite can be dynamic-range quantized with quantize=True)."
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
            interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
            interpreter.invoke()
            return np.array(interpreter.get_tensor(out["index"]))

    return _Runner(int(inp["shape"][1]), predict, interpreter)


_LOADERS = {"keras": _load_keras, "savedmodel": _load_savedmodel, "tflite": _load_tflite}


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


def _write_savedmodel(model: Any, target: Path) -> None:
    # Keras 3's own export: a "serve" endpoint calling the model with training=False.
    with _TF_LOCK:
        model.export(str(target), format="tf_saved_model", verbose=False)


def _write_tflite(model: Any, target: Path, quantize: bool) -> None:
    import tensorflow as tf

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
            if quantize:
                # No representative dataset: dynamic-range quantization (int8 weights, float
                # activations), so the input stays float32 0-255 like the other formats.
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            try:
                flatbuffer = converter.convert()
            except Exception as exc:  # the converter raises ConverterError and plain errors
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise StudioError(
                    f"TFLite conversion failed ({type(exc).__name__}: {first}). The model uses an "
                    "operation TFLite's builtin op set lacks; export as savedmodel or keras."
                ) from exc
    target.write_bytes(flatbuffer)


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- verification


def _validation_paths(store: RunStore, run_id: str, config: RunConfig) -> list[str]:
    """Validation image paths: from a cached evaluation if any (cheap), else the rebuilt split."""
    from core.runs.evaluate import EVALUATION_FILE

    try:
        cached = json.loads((store.run_dir(run_id) / EVALUATION_FILE).read_text("utf-8"))
        paths = [img["path"] for img in cached["images"]]
        if paths and all(os.path.isfile(p) for p in paths[:VERIFY_IMAGES]):
            return paths
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from core.data import load_dataset

    return load_dataset(config.data, val_split=config.val_split, seed=config.seed).val_paths


def verification_images(
    store: RunStore, run_id: str, image_size: int, count: int = VERIFY_IMAGES
) -> tuple[np.ndarray, str]:
    """Up to ``count`` validation images spread over the split (classes are contiguous in it).

    Falls back to seeded random images when the data is no longer available: the comparison then
    still proves the export computes the same function.
    """
    from core.data.images import load_rgb

    config = RunConfig.from_dict(store.result(run_id)["config"])
    try:
        paths = _validation_paths(store, run_id, config)
        if paths:
            picks = np.unique(np.linspace(0, len(paths) - 1, min(count, len(paths))).astype(int))
            return np.stack([load_rgb(paths[i], image_size) for i in picks]), "validation"
    except DataError:
        pass
    rng = np.random.default_rng(_SEED)
    return rng.integers(0, 256, (count, image_size, image_size, 3), dtype=np.uint8), "random"


def compare_predictions(live: np.ndarray, exported: np.ndarray, quantized: bool) -> dict[str, Any]:
    """Top-1 agreement and probability differences; raises ExportVerificationError on mismatch."""
    if exported.shape != live.shape:
        raise ExportVerificationError(
            f"The exported model outputs shape {exported.shape}, the live model {live.shape}."
        )
    rows = np.arange(len(live))
    live_top, export_top = live.argmax(axis=1), exported.argmax(axis=1)
    # How much lower the live model scores the exported top-1 than its own top-1.
    gap = live[rows, live_top] - live[rows, export_top]
    tie = NEAR_TIE_QUANTIZED if quantized else NEAR_TIE_FLOAT
    bad = np.flatnonzero((live_top != export_top) & (gap > tie))
    max_diff = float(np.abs(live - exported).max()) if live.size else 0.0
    summary = {
        "top1_agreement": float(np.mean(live_top == export_top)) if len(live) else 1.0,
        "near_ties": int(np.sum((live_top != export_top) & (gap <= tie))),
        "max_abs_diff": max_diff,
    }
    if len(bad):
        i = int(bad[0])
        raise ExportVerificationError(
            f"Export verification failed: top-1 differs from the live model on {len(bad)} of "
            f"{len(live)} images (e.g. image {i}: live class {live_top[i]} "
            f"p={live[i, live_top[i]]:.3f}, export class {export_top[i]}). The artifact was not "
            "kept; re-export, or report a bug if it persists."
        )
    if not quantized and max_diff > FLOAT_ATOL:
        raise ExportVerificationError(
            f"Export verification failed: probabilities differ from the live model by up to "
            f"{max_diff:.4f} (allowed {FLOAT_ATOL}) although top-1 agrees, so the export does not "
            "compute the same function. The artifact was not kept."
        )
    return summary


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


def export_run(
    store: RunStore,
    run_id: str,
    fmt: str,
    out_dir: str | os.PathLike[str] | None = None,
    quantize: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export run ``run_id``'s model as ``fmt`` into ``out_dir`` and verify it.

    ``out_dir`` defaults to ``<run folder>/exports/<fmt>``. Writes the artifact
    (``model.keras``, ``saved_model/``, ``model.tflite`` or ``model_dynamic_range.tflite``),
    ``labels.txt`` and ``config.json``. Returns ``{format, path, files, verified_images,
    top1_agreement, bytes, ...}``; raises ``ExportVerificationError`` if the reloaded artifact
    disagrees with the live model.

    A given ``out_dir`` must be new or empty unless ``overwrite`` is on; then only the files
    named above are replaced, never anything else (``ExportTargetError`` otherwise). The default
    folder belongs to the run, so exporting there again always replaces the previous export.
    """
    from core.runs.predict import load_run, saved_model_path

    fmt = normalize_format(fmt)
    if quantize and fmt != "tflite":
        raise ConfigError(
            f"quantize=True only applies to tflite exports, not {fmt!r}. "
            "Use fmt='tflite' or quantize=False."
        )
    artifact = QUANTIZED_TFLITE_NAME if quantize else ARTIFACT_NAMES[fmt]
    names = [artifact, LABELS_FILE, CONFIG_FILE]
    dir_names = [artifact] if fmt == "savedmodel" else []
    if out_dir is not None:  # a wrong folder is refused before the model loads (seconds)
        store.get_run(run_id)  # an unknown run is named first
        _check_target(Path(out_dir).expanduser(), names, dir_names, overwrite)
    run = load_run(store, run_id)  # raises a StudioError for runs without a model
    labels = labels_text(run.class_names)
    result_row = store.result(run_id)
    suffix = "_dynamic_range" if quantize else ""
    if out_dir is None:  # the run's own folder: a re-export replaces the previous one
        out, overwrite = store.run_dir(run_id) / "exports" / (fmt + suffix), True
    else:
        out = Path(out_dir).expanduser()
    _check_target(out, names, dir_names, overwrite)  # before anything is written
    out.mkdir(parents=True, exist_ok=True)

    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        if fmt == "keras":
            shutil.copy2(saved_model_path(store, run_id), staging / artifact)
        elif fmt == "savedmodel":
            _write_savedmodel(run.model, staging / artifact)
        else:
            _write_tflite(run.model, staging / artifact, quantize)
        (staging / LABELS_FILE).write_text(labels, encoding="utf-8")
        (staging / CONFIG_FILE).write_text(
            json.dumps(result_row["config"], indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )

        images, source = verification_images(store, run_id, run.image_size)
        batch = images.astype(np.float32)
        live = np.asarray(run.model(batch, training=False), dtype=np.float32)
        exported = predict_with_export(staging / artifact, fmt, batch)
        check = compare_predictions(live, exported, quantized=quantize)

        # Again, just before writing: the folder may have changed during the verification.
        _check_target(out, names, dir_names, overwrite, ignore=staging.name)
        files = _place(staging, out, names)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    path = out / artifact
    return {
        "run_id": run_id,
        "format": fmt,
        "quantized": quantize,
        "path": str(path),
        "files": [str(f) for f in files],
        "verified_images": int(len(images)),
        "verified_on": source,
        **check,
        "bytes": _size_of(path),
    }
