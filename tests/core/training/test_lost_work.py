"""Nothing lost, nothing hangs: a killed final save, a full or read-only disk, a lost index."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

from core.errors import StorageError
from core.runs.store import COMPLETED, FAILED, INTERRUPTED, RUNNING, RunStore
from core.training.jobs import JobQueue
from tests.helpers import TINY

ROOT = Path(__file__).resolve().parents[3]


# -- 1. a killed final save -------------------------------------------------------------------
def _weights(model: keras.Model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def _checkpointed_model(store: RunStore, run_id: str, classes: int) -> keras.Model:
    from core.training.model import build_model

    built = build_model(store.config(run_id), classes)
    built.model.load_weights(store.run_dir(run_id) / "checkpoint.weights.h5")
    return built.model


@pytest.mark.slow
def test_resume_after_a_kill_during_the_final_save_keeps_the_trained_weights(
    tmp_path, monkeypatch
) -> None:
    import core.training.trainer as training
    from core.training.model import build_model

    queue = JobQueue(tmp_path)
    config = TINY.with_changes(epochs=2, augment=False, feature_cache="off")
    # A kill during the final save comes before a completed run's checkpoint is deleted: keep
    # it for this first attempt, as the kill would have.
    monkeypatch.setattr(training, "remove_checkpoint", lambda *args: None)
    run_id = queue.submit(config)
    assert queue.wait(run_id, timeout=300) == COMPLETED
    monkeypatch.undo()
    folder = queue.store.run_dir(run_id)
    classes = len(queue.store.result(run_id)["class_names"])
    trained = _weights(_checkpointed_model(queue.store, run_id, classes))

    # The moment of the kill: every epoch checkpointed, `tmp-model.keras` half written.
    (folder / "model.keras").unlink()
    (folder / "tmp-model.keras").write_bytes(b"PK\x03\x04 half a zip")
    queue.store.update(run_id, status=INTERRUPTED)

    queue.resume(run_id)
    assert queue.wait(run_id, timeout=300) == COMPLETED
    assert not (folder / "tmp-model.keras").exists(), "the half-written file is cleaned up"
    saved = _weights(keras.models.load_model(folder / "model.keras"))
    fresh = _weights(build_model(config, classes).model)
    assert all(np.array_equal(a, b) for a, b in zip(saved, trained, strict=True))
    assert max(float(np.abs(a - b).max()) for a, b in zip(saved, fresh, strict=True)) > 0, (
        "the saved model must be the trained one, not a fresh build"
    )
    assert queue.store.result(run_id)["history"]["epoch"] == [1, 2], "no epoch redone"
    assert not (folder / "checkpoint.json").exists(), "completed: the checkpoint is deleted"


def test_a_checkpoint_restores_the_optimizer_state(tmp_path) -> None:
    from core.training.checkpoint import restore_optimizer, save_checkpoint

    store = RunStore(tmp_path)
    run_id = store.create_run(TINY)

    def compiled() -> keras.Model:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        return model

    trained = compiled()
    trained.fit(np.random.rand(16, 4), np.arange(16) % 3, epochs=2, verbose=0)
    save_checkpoint(store, run_id, trained, {"epoch": 2, "phase": "head"}, trained.optimizer)
    meta = json.loads((store.run_dir(run_id) / "checkpoint.json").read_text())

    resumed = compiled()
    assert restore_optimizer(store, run_id, resumed, meta)
    before = [keras.ops.convert_to_numpy(v) for v in trained.optimizer.variables]
    after = [keras.ops.convert_to_numpy(v) for v in resumed.optimizer.variables]
    assert int(after[0]) == 2, "the step count continues"
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert any(float(np.abs(a).max()) > 0 for a in after[2:]), "Adam's moments are not zero"


# -- 2. a full or read-only disk ----------------------------------------------------------------
@contextlib.contextmanager
def small_disk(folder: Path, size_mb: int) -> Iterator[Path]:
    """A real filesystem of ``size_mb`` MB at ``folder`` (tmpfs; needs root, else skips)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path, leave_mb: float) -> Path:
    """Fill ``folder``'s filesystem up to ``leave_mb`` MB free."""
    filler = folder / "filler.bin"
    free = shutil.disk_usage(folder).free - int(leave_mb * 1e6)
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(free, 0))
    return filler


@pytest.mark.slow
def test_a_full_disk_fails_the_run_cleans_up_and_keeps_the_worker(tmp_path) -> None:
    with small_disk(tmp_path / "disk", 48) as disk:
        runs = disk / "runs"
        queue = JobQueue(runs)
        filler = _fill(disk, leave_mb=1.5)  # room for the index, not for a checkpoint
        config = TINY.with_changes(augment=False, feature_cache="off")
        run_id = queue.submit(config)
        assert queue.wait(run_id, timeout=300) == FAILED  # returns: nothing hangs
        run = queue.store.get_run(run_id)
        assert run["error"].startswith("disk full: "), run["error"]
        assert str(runs) in run["error"]
        leftovers = [p.name for p in queue.store.run_dir(run_id).iterdir() if "tmp" in p.name]
        assert leftovers == [], "temp files are removed from the full disk"

        filler.unlink()  # room again: the same worker trains the next run
        second = queue.submit(config)
        assert queue.wait(second, timeout=300) == COMPLETED


def test_when_even_the_error_log_cannot_be_written_the_run_still_ends_failed(
    tmp_path, monkeypatch
) -> None:
    import core.training.trainer as training

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(training, "_train", no_space)
    queue = JobQueue(tmp_path)
    run_id = queue.submit(TINY)
    queue.store.run_dir(run_id).joinpath("error.log").mkdir()  # writing it fails too
    assert queue.wait(run_id, timeout=60) == FAILED
    assert queue.store.get_run(run_id)["error"].startswith("disk full: ")
    assert queue._worker.is_alive()


def test_wait_returns_when_the_store_cannot_record_the_end(tmp_path, monkeypatch) -> None:
    import core.training.trainer as training

    def broken_disk(*args: object, **kwargs: object) -> None:
        raise StorageError("disk full: 0.0 MB free in /somewhere.")

    monkeypatch.setattr(training, "_train", lambda *a, **k: "completed")
    monkeypatch.setattr(RunStore, "mark_finished", broken_disk)
    queue = JobQueue(tmp_path)
    run_id = queue.submit(TINY)
    assert queue.wait(run_id, timeout=30) == FAILED
    assert queue.store.status(run_id) == RUNNING  # the store could not say it; wait still returns
    assert queue._worker.is_alive()


def test_wait_returns_only_after_the_worker_let_go_of_a_completed_run(
    tmp_path, monkeypatch
) -> None:
    """A CLI exits when ``wait`` returns: not between "completed" and the checkpoint's removal."""
    import threading
    import time

    import core.training.trainer as training

    removed = threading.Event()

    def slow_remove(store: RunStore, run_id: str) -> None:
        time.sleep(1.0)  # the store already says completed
        removed.set()

    monkeypatch.setattr(training, "_train", lambda *a, **k: "completed")
    monkeypatch.setattr(training, "remove_checkpoint", slow_remove)
    queue = JobQueue(tmp_path)
    run_id = queue.submit(TINY)
    assert queue.wait(run_id, timeout=30) == COMPLETED
    assert removed.is_set(), "wait returned before the worker removed the checkpoint"


def test_wait_on_a_run_cancelled_while_queued_returns(tmp_path, monkeypatch) -> None:
    import threading

    import core.training.trainer as training

    release = threading.Event()
    monkeypatch.setattr(training, "_train", lambda *a, **k: release.wait(30) and "completed")
    queue = JobQueue(tmp_path)
    first = queue.submit(TINY)
    second = queue.submit(TINY.with_changes(seed=TINY.seed + 1))
    queue.stop(second)  # cancelled while the first one holds the worker
    assert queue.wait(second, timeout=5) == "stopped"
    release.set()
    assert queue.wait(first, timeout=30) == COMPLETED


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _one_clear_line(done: subprocess.CompletedProcess[str], starts: str) -> None:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "OperationalError" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {starts}"), done.stderr


def test_a_read_only_home_gives_one_clear_line(tmp_path) -> None:
    with small_disk(tmp_path / "disk", 5) as disk:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        _one_clear_line(_cli("runs", "--runs-dir", str(disk / "runs")), "read-only: ")


def test_a_full_home_gives_one_clear_line(tmp_path) -> None:
    with small_disk(tmp_path / "disk", 5) as disk:
        (disk / "runs").mkdir()
        _fill(disk, leave_mb=0)
        _one_clear_line(_cli("runs", "--runs-dir", str(disk / "runs")), "disk full: ")


# -- 4. a lost or damaged index -----------------------------------------------------------------
def _finished_runs(root: Path) -> tuple[RunStore, str, str]:
    store = RunStore(root)
    done = store.create_run(TINY.with_changes(name="kept", epochs=2))
    store.update(done, class_names=["a", "b"], train_images=8, val_images=4)
    for epoch, acc in ((1, 0.5), (2, 0.75)):
        store.add_epoch(done, {"epoch": epoch, "phase": "head", "phase_epoch": epoch,
                               "val_accuracy": acc, "loss": 1.0 / epoch})  # fmt: skip
    model = store.run_dir(done) / "model.keras"
    model.write_bytes(b"model")
    store.update(done, model_path=str(model), model_bytes=5)
    store.mark_running(done)
    store.mark_finished(done, COMPLETED)
    cut = store.create_run(TINY.with_changes(name="cut short", epochs=3))
    store.add_epoch(cut, {"epoch": 1, "phase": "head", "phase_epoch": 1, "val_accuracy": 0.5})
    store.update(cut, status=RUNNING, owner="999999999:0")  # its process is gone
    return store, done, cut


def _drop_wal(root: Path) -> None:
    for suffix in ("-wal", "-shm"):
        (root / f"runs.sqlite{suffix}").unlink(missing_ok=True)


def test_an_empty_index_is_rebuilt_from_the_run_folders(tmp_path) -> None:
    store, done, cut = _finished_runs(tmp_path)
    before = store.result(done)
    (tmp_path / "runs.sqlite").write_bytes(b"")
    (tmp_path / "runs.sqlite.bak").unlink()  # no backup either: the folders alone suffice
    _drop_wal(tmp_path)

    rebuilt = RunStore(tmp_path)
    runs = {r["run_id"]: r for r in rebuilt.list_runs()}
    assert set(runs) == {done, cut}
    assert runs[done]["status"] == COMPLETED and runs[done]["best_val_accuracy"] == 0.75
    assert runs[done]["name"] == "kept"
    after = rebuilt.result(done)
    for key in ("history", "class_names", "train_images", "model_path", "duration_s"):
        assert after[key] == before[key], key
    assert runs[cut]["status"] == INTERRUPTED, "an unfinished run comes back resumable"
    assert rebuilt.epochs(cut)[0]["val_accuracy"] == 0.5


def test_a_damaged_index_is_set_aside_and_restored(tmp_path, capsys) -> None:
    store, done, cut = _finished_runs(tmp_path)
    assert (tmp_path / "runs.sqlite.bak").is_file(), "a finished run refreshes the backup"
    (tmp_path / "runs.sqlite").write_bytes(b"this is not a database at all" * 300)
    _drop_wal(tmp_path)

    runs = {r["run_id"]: r["status"] for r in RunStore(tmp_path).list_runs()}
    assert runs == {done: COMPLETED, cut: INTERRUPTED}
    kept = list(tmp_path.glob("runs.sqlite.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"this is not")
    assert "damaged" in capsys.readouterr().err


def test_the_cli_lists_runs_after_the_index_was_emptied(tmp_path) -> None:
    _, done, _ = _finished_runs(tmp_path)
    (tmp_path / "runs.sqlite").write_bytes(b"")
    _drop_wal(tmp_path)
    listed = _cli("runs", "--runs-dir", str(tmp_path), "--json")
    assert listed.returncode == 0, listed.stderr
    assert done in {r["run_id"] for r in json.loads(listed.stdout)}


def test_a_deleted_run_is_not_brought_back(tmp_path) -> None:
    store, done, _ = _finished_runs(tmp_path)
    store.delete_run(done)
    assert done not in {r["run_id"] for r in RunStore(tmp_path).list_runs()}
    assert not (tmp_path / "runs" / done).exists()


# -- 8. a file that vanishes between the scan and training ------------------------------------
@pytest.mark.slow
def test_a_run_whose_image_vanishes_after_the_scan_fails_naming_the_file(
    tmp_path, monkeypatch
) -> None:
    import core.data
    from tests.helpers import write_pngs

    for name in ("red", "blue"):
        write_pngs(tmp_path / "data" / name, 6)
    real = core.data.load_dataset
    gone: list[str] = []

    def scan_then_lose_one(*args: object, **kwargs: object) -> core.data.DatasetIndex:
        index = real(*args, **kwargs)
        gone.append(index.train_paths[0])
        os.unlink(gone[0])
        return index

    monkeypatch.setattr(core.data, "load_dataset", scan_then_lose_one)
    queue = JobQueue(tmp_path / "runs")
    config = TINY.with_changes(data=str(tmp_path / "data"), feature_cache="off", batch_size=4)
    run_id = queue.submit(config)
    assert queue.wait(run_id, timeout=300) == FAILED
    error = queue.store.get_run(run_id)["error"]
    assert gone[0] in error and "disappeared" in error, error
    assert "Graph execution" not in error
