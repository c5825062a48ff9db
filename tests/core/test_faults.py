"""Faults for real: a training process killed with SIGKILL, then `resume`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.runs.store import COMPLETED, INTERRUPTED, RunStore

ROOT = Path(__file__).resolve().parents[2]


def _core(*args: str) -> list[str]:
    return [sys.executable, "-m", "core", *args]


@pytest.mark.slow
def test_kill_9_keeps_finished_epochs_and_resume_finishes_the_run(tmp_path) -> None:
    runs = str(tmp_path / "runs")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    train = _core(
        "train", "--data", "builtin:textures", "--backbone", "mobilenet_v2", "--weights", "none",
        "--image-size", "32", "--batch-size", "8", "--mode", "fine_tuning", "--epochs", "2",
        "--fine-tune-epochs", "8", "--runs-dir", runs,
    )  # fmt: skip
    proc = subprocess.Popen(
        train, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        store = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (Path(runs) / "runs.sqlite").exists():
                store = store or RunStore(runs, recover=False)
                active = store.list_runs()
                if active and active[0]["epochs_done"] >= 3:
                    break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        else:
            pytest.fail("the run never reached epoch 3")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()

    assert store is not None
    run_id = store.list_runs()[0]["run_id"]
    before = store.epochs(run_id)
    assert len(before) >= 3

    reopened = RunStore(runs)  # "the next start": a dead owner's running run is interrupted
    assert reopened.status(run_id) == INTERRUPTED
    assert reopened.epochs(run_id)[: len(before)] == before, "finished epochs survive the kill"

    done = subprocess.run(
        _core("resume", run_id, "--runs-dir", runs, "--json"),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == COMPLETED
    assert result["history"]["epoch"] == list(range(1, 11)), "no epoch repeated or missing"
    assert result["history"]["phase"] == ["head"] * 2 + ["fine_tune"] * 8
    after = RunStore(runs).epochs(run_id)
    # Completed: the model is saved and the checkpoint, never resumed again, is deleted.
    folder = Path(runs) / "runs" / run_id
    assert (folder / "model.keras").is_file()
    for name in ("checkpoint.weights.h5", "checkpoint.json", "checkpoint.optimizer.npz"):
        assert not (folder / name).exists(), name
    # Epochs finished before the kill keep their metrics (at most the one whose checkpoint was
    # being written at the kill is redone).
    kept = [e for e in before if e["epoch"] <= len(before) - 1]
    assert after[: len(kept)] == kept
    assert result["model_path"] and Path(result["model_path"]).is_file()


def test_only_stopped_interrupted_or_failed_runs_resume(tmp_path) -> None:
    from core.config import RunConfig
    from core.errors import StudioError
    from core.training.jobs import JobQueue

    queue = JobQueue(tmp_path)
    run_id = queue.store.create_run(RunConfig())
    queue.store.mark_finished(run_id, COMPLETED)
    with pytest.raises(StudioError, match="only stopped, interrupted, failed runs can be resumed"):
        queue.resume(run_id)
