"""Predict without TensorFlow for a run whose base was trained: the whole model, converted once.

A feature-extraction run predicts through its frozen base's converted LiteRT runtime and its
head in numpy (``core.runs.lite_predict``). A fine-tuned, fully fine-tuned or scratch run has
no such shared base: its own weights are the model. So the worker converts the run's final
model to a float32 LiteRT file in the run's folder as the run completes, and checks it against
the Keras model on validation images with the export's float tolerance
(``core.runs.export.compare_predictions``: the same top-1, probabilities within 1e-3). The
Predict page then opens the run without importing TensorFlow (seconds and ~500 MB of the
dashboard's process at first use). A rejected or failed conversion is recorded with its reason;
Predict then loads the Keras model, as before.

``TRANSFER_STUDIO_FEATURE_RUNTIME=keras`` turns this off with the feature runtime.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from core.config import Mode
from core.errors import StudioError
from core.files import atomic_write_text
from core.runs.calibration import model_key
from core.runs.export import compare_predictions, portable_model, verification_set
from core.runs.lite_predict import PREDICT_RUNTIME_FILE, PREDICT_RUNTIME_RECORD
from core.runs.litert_runtime import LiteRTExtractor
from core.runs.store import RunStore, saved_model_path
from core.training.litert import convert, runtime_choice

__all__ = ["VERIFY_IMAGES", "convert_for_predict"]

VERIFY_IMAGES = 32  # validation images the converted model must agree with Keras on


def convert_for_predict(store: RunStore, run_id: str, model: Any) -> dict[str, Any] | None:
    """Convert and check a completed run's model for Predict (see the module docstring); the
    record written beside it, or None when the run needs none (feature extraction: its base's
    runtime serves) or the runtime is turned off. Never raises for a model that does not
    convert or check out: the record says why, and Predict stays on Keras."""
    config = store.config(run_id)
    if config.mode == Mode.FEATURE_EXTRACTION or runtime_choice() == "keras":
        return None
    folder = store.run_dir(run_id)
    target, record_path = folder / PREDICT_RUNTIME_FILE, folder / PREDICT_RUNTIME_RECORD
    started = time.perf_counter()
    record: dict[str, Any] = {**model_key(saved_model_path(store, run_id)), "accepted": False}
    try:
        size = config.resolved_image_size()
        images, _, source = verification_set(store, run_id, size, VERIFY_IMAGES)
        batch = images.astype(np.float32)
        live = np.asarray(model.predict(batch, verbose=0), np.float32)
        convert(portable_model(model), target)
        got = LiteRTExtractor(target, num_threads=min(2, os.cpu_count() or 1))(batch)
        check = compare_predictions(live, got)
        record.update(accepted=True, images=len(batch), source=source, **check)
    except (StudioError, OSError, ValueError, RuntimeError) as exc:
        # ExportVerificationError is a StudioError: a model that computes another function
        # in LiteRT is never used; neither is one the converter could not express.
        target.unlink(missing_ok=True)
        record["reason"] = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    record["seconds"] = round(time.perf_counter() - started, 2)
    atomic_write_text(record_path, json.dumps(record, indent=2, sort_keys=True))
    return record
