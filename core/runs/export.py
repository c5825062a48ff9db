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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import numpy as np

from core.config import RunConfig
from core.data.images import to_array
from core.errors import ConfigError, DataError, StudioError
from core.paths import blocking_file
from core.runs.formats import (
    ARTIFACT_NAMES,
    EXPORT_FORMATS,
    FORMATS,
    INT8_MIN_AGREEMENT,
    NEAR_TIE_FLOAT,
    NEAR_TIE_QUANTIZED,
    QUANTIZED_TFLITE_NAME,
    TOLERANCES,
    WriteOptions,
    export_format,
    litert_interpreter_class,
    missing_packages,
    normalize_format,
)
from core.runs.store import RunStore

__all__ = [
    "ExportProgressFn",
    "ExportRow",
    "ExportStep",
    "Verification",
    # the format table's views, re-exported: what callers of the export need
    "ARTIFACT_NAMES",
    "FORMATS",
    "INT8_MIN_AGREEMENT",
    "NEAR_TIE_FLOAT",
    "NEAR_TIE_QUANTIZED",
    "litert_interpreter_class",
    "missing_packages",
    "normalize_format",
    # the export itself
    "LATENCY_RUNS",
    "REPRESENTATIVE_IMAGES",
    "VERIFY_IMAGES",
    "VERIFY_SCRIPT",
    "VERIFY_TIMEOUT_S",
    "ExportTargetError",
    "ExportVerificationError",
    "as_batch",
    "compare_predictions",
    "export_all",
    "export_run",
    "labels_text",
    "portable_model",
    "predict_with_export",
    "representative_images",
    "verification_images",
    "verification_set",
    "verify_in_runtime",
]

LABELS_FILE, CONFIG_FILE, CARD_FILE = "labels.txt", "config.json", "model_card.md"
# Validation images each export is verified on (spread over the split): enough for a meaningful
# agreement percentage, small enough that the inputs file stays a few tens of MB at 224 px.
VERIFY_IMAGES = 64
REPRESENTATIVE_IMAGES = 100  # training images calibrating int8 activation ranges
LATENCY_RUNS = 20  # single-image calls timed per format (after 3 warm-up calls)
VERIFY_TIMEOUT_S = 600
_SEED = 1234


# Every file Keras' SavedModel export writes, relative to saved_model/: even with overwrite on, an
# existing saved_model/ holding anything else is not replaced (that would delete a user's file).
_SAVEDMODEL_FILES = re.compile(
    r"(saved_model\.pb(?:txt)?|fingerprint\.pb|keras_metadata\.pb"
    r"|variables/variables\.index|variables/variables\.data-\d+-of-\d+)"
)


class Verification(TypedDict):
    """How an export's predictions compare with the live model's (``compare_predictions``)."""

    top1_agreement: float
    near_ties: int  # top-1 differences where the live model itself had a near-tie
    max_abs_diff: float
    tolerance: str
    clear_agreement: NotRequired[float]  # int8: agreement on the images without a near-tie


class ExportRow(Verification):
    """One exported format: what ``export --json`` lists under ``formats`` (and the table)."""

    format: str
    quantized: bool
    file: str
    bytes: int
    runtime: str
    latency_ms_p50: float
    accuracy: float | None
    accuracy_drop: float | None
    path: NotRequired[str]  # where it was placed


class ExportVerificationError(StudioError):
    """The exported artifact does not reproduce the live model's predictions."""


class ExportTargetError(StudioError):
    """The export folder holds files the export would overwrite or delete."""


# --------------------------------------------------------------------------- loading artifacts


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
    runner = export_format(fmt).loader(Path(path))
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


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- verification


def _validation_items(
    store: RunStore, run_id: str, config: RunConfig
) -> tuple[list[str], list[int] | None]:
    """Validation image paths and labels: from a cached evaluation if any (cheap), else the
    split the run recorded (a run without one: rebuilt from its config)."""
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
    recorded = store.split(run_id)
    if recorded is not None:
        return recorded.labelled("val", list(store.result(run_id)["class_names"]))
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

    result = store.result(run_id)
    config = RunConfig.from_dict(result["config"])
    recorded = store.split(run_id)
    if recorded is not None:
        paths = recorded.labelled("train", list(result["class_names"]))[0]
    else:  # a run that recorded no split: rebuilt from its config
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


def compare_predictions(
    live: np.ndarray, exported: np.ndarray, quantized: bool = False, kind: str | None = None
) -> Verification:
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
    tolerance = TOLERANCES[kind]
    tie = tolerance.near_tie
    bad = np.flatnonzero((live_top != export_top) & (gap > tie))
    max_diff = float(np.abs(live - exported).max()) if live.size else 0.0
    summary: Verification = {
        "top1_agreement": float(np.mean(live_top == export_top)) if len(live) else 1.0,
        "near_ties": int(np.sum((live_top != export_top) & (gap <= tie))),
        "max_abs_diff": max_diff,
        "tolerance": tolerance.text(),
    }
    if tolerance.min_agreement is not None:
        ordered = np.sort(live, axis=1)
        clear = ordered[:, -1] - ordered[:, -2] > tie if live.shape[1] > 1 else rows >= 0
        agreement = float(np.mean((live_top == export_top)[clear])) if clear.any() else 1.0
        summary["clear_agreement"] = agreement
        if agreement < tolerance.min_agreement:
            raise ExportVerificationError(
                f"Export verification failed: the int8 model agrees with the live model's top-1 "
                f"on {agreement:.1%} of {int(clear.sum())} images (at least "
                f"{tolerance.min_agreement:.0%} required), so quantization costs too much accuracy "
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
    atol = tolerance.atol
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
    runtime = EXPORT_FORMATS[fmt].runtime
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
                f"Loading the {fmt} export in {runtime} took over "
                f"{VERIFY_TIMEOUT_S} s; the artifact was not kept."
            ) from exc
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    if proc.returncode == 2:
        raise StudioError(
            f"The {fmt} export cannot be checked: its runtime {runtime} is not "
            f"installed ({errors[-1][7:] if errors else 'import failed'}). Install it (pip "
            f"install {runtime.split()[0].replace('_', '-')}) and export again."
        )
    if proc.returncode != 0:
        detail = errors[-1][7:] if errors else (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise ExportVerificationError(
            f"The {fmt} export does not load in {runtime} without this package "
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
            known = EXPORT_FORMATS.get(self.format)
            runtime = known.runtime if known else "its runtime"
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
    companions = [name for fmt, _ in jobs for name in EXPORT_FORMATS[fmt].companions]
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
        rows: list[ExportRow] = []
        for index, ((fmt, quantize), artifact) in enumerate(zip(jobs, artifacts, strict=True), 1):
            target = staging / artifact
            say(ExportStep("converting", fmt, index, total))
            options = WriteOptions(
                quantize=quantize,
                calibration=lambda: representative_images(store, run_id, run.image_size),
            )
            EXPORT_FORMATS[fmt].writer(portable, target, options)
            say(ExportStep("verifying", fmt, index, total))
            ran = verify_in_runtime(target, fmt, batch)
            kind = "dynamic" if quantize else EXPORT_FORMATS[fmt].tolerance.kind
            check = compare_predictions(live, ran["probabilities"], kind=kind)
            accuracy = _accuracy(ran["probabilities"], truth)
            rows.append(
                {
                    "format": fmt,
                    "quantized": quantize,
                    "file": artifact,
                    "bytes": _size_of(target)
                    + sum(_size_of(staging / c) for c in EXPORT_FORMATS[fmt].companions),
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
    progress: ExportProgressFn | None = None,
) -> dict[str, Any]:
    """Export run ``run_id``'s model as ``fmt`` into ``out_dir`` and verify it in its runtime
    (``progress`` hears each step, as in ``export_all``).

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
    done = _export(store, run_id, [(fmt, quantize)], out_dir, overwrite, folder, (), progress)
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
