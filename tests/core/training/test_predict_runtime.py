"""A completed run whose base was trained is converted for Predict by the worker
(core.training.predict_runtime); the conversion and its check are in tests/core/runs/
test_lite_predict.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import RunConfig
from core.runs.lite_predict import PREDICT_RUNTIME_RECORD, lite_run
from core.runs.store import COMPLETED
from core.training.jobs import JobQueue


@pytest.mark.slow
def test_a_completed_scratch_run_predicts_through_its_converted_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRANSFER_STUDIO_FEATURE_RUNTIME", raising=False)  # the user's default
    queue = JobQueue(tmp_path / "runs")
    config = RunConfig(backbone="mobilenet_v2", weights="none", data="builtin:textures",
                       image_size=32, batch_size=8, epochs=1, mode="scratch")  # fmt: skip
    run_id = queue.submit(config)
    assert queue.wait(run_id, timeout=300) == COMPLETED
    record = json.loads((queue.store.run_dir(run_id) / PREDICT_RUNTIME_RECORD).read_text())
    assert record["accepted"] and record["source"] == "validation", record
    assert record["max_abs_diff"] < 1e-3
    assert queue.store.result(run_id)["timings"]["predict_runtime"] > 0
    converted = lite_run(queue.store, run_id)
    assert converted is not None and converted.head == [] and converted.image_size == 32
