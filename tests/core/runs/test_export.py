"""Exports to .keras, SavedModel and TFLite: files, verified predictions, tampering caught.

(The newer formats, runtimes and the model card: tests/core/runs/test_export_formats.py.)"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import core.runs.export as export_mod
from core.config import RunConfig
from core.data import load_dataset
from core.data.images import load_rgb
from core.errors import ConfigError, StudioError
from core.runs.export import (
    NEAR_TIE_FLOAT,
    NEAR_TIE_QUANTIZED,
    ExportVerificationError,
    export_run,
    predict_with_export,
)
from core.runs.predict import predict_images
from tests.helpers import off_by_one_class

# VGG16 has few layers, so SavedModel tracing and TFLite conversion take seconds, not tens of
# seconds as for the MobileNets; random weights are fine for checking that formats agree.
CONFIG = RunConfig(
    backbone="vgg16",
    weights="none",
    data="builtin:textures",
    image_size=32,
    epochs=4,
    dense_units=32,
)
CASES = [
    ("keras", False),
    ("savedmodel", False),
    ("tflite", False),
    ("tflite", True),
    ("onnx", False),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from core.training.jobs import JobQueue

    root = tmp_path_factory.mktemp("export-runs")
    queue = JobQueue(root)
    run_id = queue.submit(CONFIG)
    assert queue.wait(run_id, timeout=300) == "completed", queue.store.result(run_id)["error"]
    yield queue.store, run_id
    # VGG16 artifacts are 60-120 MB each: don't leave them in pytest's kept temp folders.
    shutil.rmtree(queue.store.run_dir(run_id), ignore_errors=True)


@pytest.fixture
def out(tmp_path):
    folder = tmp_path / "export"
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def val_paths():
    paths = load_dataset(CONFIG.data, val_split=CONFIG.val_split, seed=CONFIG.seed).val_paths
    return paths[:: max(1, len(paths) // 6)][:6]


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "quantize"), CASES, ids=[f"{f}{'-q' * q}" for f, q in CASES])
def test_export_writes_files_and_matches_live_predictions(run, val_paths, out, fmt, quantize):
    store, run_id = run
    result = store.result(run_id)
    names = result["class_names"]
    info = export_run(store, run_id, fmt, out, quantize=quantize)

    assert info["format"] == fmt and info["quantized"] is quantize
    assert info["verified_images"] == min(export_mod.VERIFY_IMAGES, result["val_images"])
    assert info["verified_on"] == "validation"
    assert info["bytes"] > 0
    artifact = Path(info["path"])
    assert artifact.parent == out and artifact.exists()
    # Exactly these entries: no staging leftovers.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [artifact.name, "labels.txt", "config.json", "model_card.md", "confusion_matrix.png"]
    )
    assert (out / "labels.txt").read_text().splitlines() == names
    assert json.loads((out / "config.json").read_text()) == result["config"]

    exported = predict_with_export(info["path"], fmt, val_paths)
    live = predict_images(store, run_id, val_paths, top_k=len(names))
    live_probs = np.array(
        [[{p["label"]: p["probability"] for p in r["predictions"]}[n] for n in names] for r in live]
    )
    assert exported.shape == live_probs.shape
    # Top-1 must agree wherever the live model is not itself at a near-tie.
    ordered = np.sort(live_probs, axis=1)
    clear = ordered[:, -1] - ordered[:, -2] > (NEAR_TIE_QUANTIZED if quantize else NEAR_TIE_FLOAT)
    assert clear.sum() >= len(val_paths) // 2
    assert (exported.argmax(1) == live_probs.argmax(1))[clear].all()
    np.testing.assert_allclose(exported, live_probs, atol=0.03 if quantize else 1e-4)
    if fmt == "tflite":
        # Without ai-edge-litert, tf.lite's (deprecated) interpreter runs the same file.
        with pytest.MonkeyPatch.context() as mp:
            mp.setitem(sys.modules, "ai_edge_litert.interpreter", None)
            assert "tensorflow" in export_mod.litert_interpreter_class().__module__
            fallback = predict_with_export(info["path"], fmt, val_paths)
        np.testing.assert_allclose(fallback, exported, atol=1e-5)


@pytest.mark.slow
def test_predict_with_export_takes_raw_pixels_of_any_size(run, val_paths):
    store, run_id = run
    info = export_run(store, run_id, "keras")  # default folder: inside the run's folder
    assert Path(info["path"]) == store.run_dir(run_id) / "exports" / "keras" / "model.keras"
    batch = np.stack([load_rgb(p, 32) for p in val_paths]).astype(np.float32)
    from_batch = predict_with_export(info["path"], "keras", batch)
    from_paths = predict_with_export(info["path"], "keras", val_paths)
    np.testing.assert_allclose(from_batch, from_paths, atol=1e-6)
    big = load_rgb(val_paths[0], 64)  # resized to the model's 32 px on the way in
    classes = len(store.result(run_id)["class_names"])
    assert predict_with_export(info["path"], "keras", [big]).shape == (1, classes)


@pytest.mark.slow
def test_tampered_export_is_rejected_and_not_kept(run, out, monkeypatch):
    store, run_id = run
    real = export_mod.verify_in_runtime

    def shifted(path, fmt, images, latency_runs=1):  # a "loaded model" with classes off by one
        ran = real(path, fmt, images, latency_runs=1)
        ran["probabilities"] = off_by_one_class(ran["probabilities"])
        return ran

    monkeypatch.setattr(export_mod, "verify_in_runtime", shifted)
    with pytest.raises(ExportVerificationError) as excinfo:
        export_run(store, run_id, "keras", out)
    assert isinstance(excinfo.value, StudioError)
    assert list(out.iterdir()) == []  # the unverified artifact was discarded


def test_slightly_off_export_is_rejected_even_when_top1_agrees():
    live = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], dtype=np.float32)
    off = live + np.array([[-0.05, 0.05, 0.0], [0.0, -0.05, 0.05]], dtype=np.float32)
    with pytest.raises(ExportVerificationError, match="probabilities differ"):
        export_mod.compare_predictions(live, off, quantized=False)
    assert export_mod.compare_predictions(live, off, quantized=True)["top1_agreement"] == 1.0


def test_near_ties_may_flip_only_within_tolerance():
    live = np.array([[0.50, 0.49, 0.01], [0.1, 0.8, 0.1]], dtype=np.float32)
    flipped = np.array([[0.49, 0.50, 0.01], [0.1, 0.8, 0.1]], dtype=np.float32)
    check = export_mod.compare_predictions(live, flipped, quantized=True)
    assert check["near_ties"] == 1 and check["top1_agreement"] == 0.5
    with pytest.raises(ExportVerificationError, match="top-1 differs"):
        export_mod.compare_predictions(live, flipped, quantized=False)
    with pytest.raises(ExportVerificationError, match="shape"):
        export_mod.compare_predictions(live, live[:, :2], quantized=False)


@pytest.mark.slow
def test_bad_arguments(run, tmp_path):
    store, run_id = run
    with pytest.raises(ConfigError, match="Unknown export format"):
        export_run(store, run_id, "tensorrt", tmp_path)
    with pytest.raises(ConfigError, match="only applies to tflite"):
        export_run(store, run_id, "keras", tmp_path, quantize=True)
