"""The SQLite run store: persistence, summaries, interrupted-marking."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from core.config import Phase, RunConfig, Status
from core.errors import RunNotFoundError
from core.runs.store import (
    COMPLETED,
    HISTORY_KEYS,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    RunStore,
)


def test_run_round_trip_and_persistence(tmp_path) -> None:
    store = RunStore(tmp_path)
    config = RunConfig(backbone="mobilenet_v2", weights="none", epochs=2)
    run_id = store.create_run(config)
    assert store.status(run_id) == QUEUED
    assert (store.run_dir(run_id) / "config.json").read_text().strip() == config.to_json()
    store.mark_running(run_id)
    store.update(run_id, class_names=["a", "b"], train_images=8, val_images=2)
    for epoch, acc in ((1, 0.5), (2, 0.75)):
        store.add_epoch(
            run_id,
            {"epoch": epoch, "phase": "head", "phase_epoch": epoch, "loss": 1.0 / epoch,
             "accuracy": acc, "val_loss": 0.9, "val_accuracy": acc, "lr": 1e-3},
        )  # fmt: skip
    store.add_batches(
        run_id, [{"global_step": 1, "phase": "head", "epoch": 1, "step": 1, "loss": 2.0}]
    )
    store.mark_finished(run_id, COMPLETED)

    reopened = RunStore(tmp_path)  # a new process would see the same
    result = reopened.result(run_id)
    assert result["status"] == COMPLETED
    assert result["history"]["val_accuracy"] == [0.5, 0.75]
    assert result["history"]["phase"] == ["head", "head"]
    assert result["best_val_accuracy"] == 0.75
    assert result["epochs_done"] == 2
    assert result["class_names"] == ["a", "b"]
    assert RunConfig.from_dict(result["config"]) == config
    assert [b["loss"] for b in reopened.batches(run_id)] == [2.0]
    assert reopened.list_runs()[0]["run_id"] == run_id


def test_database_is_in_wal_mode(tmp_path) -> None:
    store = RunStore(tmp_path)
    store.create_run(RunConfig())
    with sqlite3.connect(store.db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_re_adding_an_epoch_replaces_it(tmp_path) -> None:
    store = RunStore(tmp_path)
    run_id = store.create_run(RunConfig())
    record = {"epoch": 1, "phase": "head", "phase_epoch": 1, "val_accuracy": 0.5}
    store.add_epoch(run_id, record)
    store.add_epoch(run_id, {**record, "val_accuracy": 0.6})
    assert [e["val_accuracy"] for e in store.epochs(run_id)] == [0.6]


def test_runs_of_a_dead_process_become_interrupted(tmp_path) -> None:
    # A real other process creates a running run and dies without finishing it.
    code = (
        "import sys; from core.runs.store import RunStore; from core.config import RunConfig;"
        f"s = RunStore({str(tmp_path)!r}); r = s.create_run(RunConfig()); s.mark_running(r);"
        "q = s.create_run(RunConfig()); print(r, q)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    running_id, queued_id = out.stdout.split()
    mine = RunStore(tmp_path, recover=False)
    alive_id = mine.create_run(RunConfig())
    mine.mark_running(alive_id)
    assert mine.status(running_id) == RUNNING

    recovered = RunStore(tmp_path).recover_interrupted()  # nothing left to do: done on open
    assert recovered == []
    assert mine.status(running_id) == INTERRUPTED
    assert mine.status(queued_id) == INTERRUPTED
    assert mine.status(alive_id) == RUNNING, "a run of a live process is left alone"
    assert "ended before it finished" in mine.result(running_id)["error"]


def test_unknown_run_id_says_how_to_list_runs(tmp_path) -> None:
    with pytest.raises(RunNotFoundError, match="python -m core runs"):
        RunStore(tmp_path).result("nope")


def test_a_store_from_an_older_version_gains_the_new_columns(tmp_path) -> None:
    store = RunStore(tmp_path)
    run_id = store.create_run(RunConfig())
    with sqlite3.connect(store.db_path) as db:
        db.execute("ALTER TABLE runs DROP COLUMN stage_json")
    reopened = RunStore(tmp_path)
    assert reopened.result(run_id)["stage"] is None
    reopened.update(run_id, stage={"stage": "features", "done": 1, "total": 2})
    assert reopened.result(run_id)["stage"]["done"] == 1


def test_typed_results_print_the_same_json_as_plain_dicts(tmp_path) -> None:
    store = RunStore(tmp_path)
    run_id = store.create_run(RunConfig(mode="fine_tuning", weights="none", epochs=1))
    store.mark_running(run_id)
    store.add_epoch(
        run_id,
        {"epoch": 1, "phase": Phase.HEAD, "phase_epoch": 1, "loss": 1.0, "accuracy": 0.5,
         "val_loss": 0.9, "val_accuracy": 0.5, "lr": 1e-3},
    )  # fmt: skip
    store.add_batches(run_id, [{"global_step": 1, "phase": Phase.HEAD, "epoch": 1, "step": 1}])
    store.mark_finished(run_id, Status.COMPLETED)

    result = store.result(run_id)
    assert result["status"] is Status.COMPLETED == COMPLETED
    assert store.status(run_id) is Status.COMPLETED
    assert store.epochs(run_id)[0]["phase"] == "head"
    assert store.batches(run_id)[0]["phase"] == "head"
    for typed in (result, store.list_runs()):
        text = json.dumps(typed, default=str)
        plain = json.loads(text)  # what `show --json` / `runs --json` users read back
        assert json.dumps(plain, default=str) == text
    plain = json.loads(json.dumps(result, default=str))
    assert plain["status"] == "completed" and type(plain["status"]) is str
    assert plain["history"]["phase"] == ["head"]
    assert plain["config"]["mode"] == "fine_tuning"
    assert list(plain) == list(result)  # same keys, same order
    assert list(plain["history"]) == [*HISTORY_KEYS, "epoch"]


def _rows(steps, phase="head"):
    return [
        {"global_step": g, "phase": phase, "epoch": g // 100 + 1, "step": g % 100 + 1,
         "steps_per_epoch": 100, "loss": 1.0 / g, "t": 1000.0 + g}
        for g in steps
    ]  # fmt: skip


def test_batch_sample_is_every_row_of_a_short_run(tmp_path) -> None:
    store = RunStore(tmp_path)
    run_id = store.create_run(RunConfig())
    assert store.batch_sample(run_id, 10, 5) == []
    store.add_batches(run_id, _rows(range(1, 16)))
    other = store.create_run(RunConfig())
    store.add_batches(other, _rows(range(1, 500)))  # another run's rows never leak in
    assert store.batch_sample(run_id, 10, 5) == store.batches(run_id)
    assert store.batch_sample(run_id, 100, 0) == store.batches(run_id)


def test_batch_sample_thins_evenly_and_keeps_the_last_rows_exact(tmp_path) -> None:
    store = RunStore(tmp_path)
    run_id = store.create_run(RunConfig())
    store.add_batches(run_id, _rows(range(1, 5001)))
    every = store.batches(run_id)
    sample = store.batch_sample(run_id, 100, 20)
    assert len(sample) <= 120
    steps = [b["global_step"] for b in sample]
    assert steps == sorted(set(steps))
    assert sample[0] == every[0] and sample[-20:] == every[-20:]
    gaps = [b - a for a, b in zip(steps[:-20], steps[1:-19], strict=True)]
    assert max(gaps) <= 2 * -(-5000 // 100)  # evenly spread, no hole in the curve
    assert set(sample[0]) == set(every[0])  # the same columns as ``batches``
    # What the progress summary reads each poll: the first row and the recent ones.
    assert store.batch_sample(run_id, 1, 50) == [every[0], *every[-50:]]
    assert store.batch_sample(run_id, 0, 3) == every[-3:]


def test_batch_sample_spreads_over_steps_when_rows_skip_steps(tmp_path) -> None:
    store = RunStore(tmp_path)
    run_id = store.create_run(RunConfig())
    # one row per 10 steps (several steps per callback), then a second phase
    store.add_batches(run_id, _rows(range(10, 3001, 10)) + _rows(range(3001, 3101), "fine_tune"))
    sample = store.batch_sample(run_id, 40, 1)
    assert len(sample) <= 41
    assert sample[0]["global_step"] == 10 and sample[-1]["global_step"] == 3100
    assert {b["phase"] for b in sample} == {"head", "fine_tune"}
