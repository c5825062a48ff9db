"""The SQLite run store: persistence, summaries, interrupted-marking."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import replace

import pytest

from core.config import Phase, RunConfig, Status
from core.errors import ConfigError, RunNotFoundError, StudioError
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


# -- names, renames, disk use, deletion ----------------------------------------------------------


def _finished(store: RunStore, config: RunConfig | None = None, batches: int = 0) -> str:
    """A completed run recorded without training (one epoch, ``batches`` batch rows)."""
    run_id = store.create_run(config or RunConfig(data="builtin:textures", epochs=1))
    store.mark_running(run_id)
    store.add_epoch(run_id, {"epoch": 1, "phase": "head", "phase_epoch": 1, "val_accuracy": 0.5})
    if batches:
        rows = [{"global_step": s, "phase": "head", "epoch": 1, "step": s, "loss": 1.0}
                for s in range(1, batches + 1)]  # fmt: skip
        store.add_batches(run_id, rows)
    store.mark_finished(run_id, COMPLETED)
    return run_id


def test_every_run_has_a_short_readable_name(tmp_path) -> None:
    store = RunStore(tmp_path)
    first = _finished(store)
    upload = str(tmp_path / "data" / "uploads" / "upload-5b4636be56106d53.zip")
    second = _finished(store, RunConfig(data=upload))
    named = _finished(store, RunConfig(name="x" * 100))
    names = {r["run_id"]: r["name"] for r in store.list_runs()}
    assert names[first] == "textures #1"
    assert names[second] == "upload 5b4636be.zip #2"  # no sidecar: a short form of the hash
    assert names[named] == "x" * 59 + "…"  # the config's name, capped
    assert store.result(first)["name"] == "textures #1"


def test_a_rename_is_trimmed_kept_and_survives_a_rebuilt_index(tmp_path) -> None:
    store = RunStore(tmp_path)
    run_id = _finished(store)
    assert store.rename(run_id, "  cats   vs dogs \n") == "cats vs dogs"
    assert store.list_runs()[0]["name"] == "cats vs dogs"
    assert store.config(run_id).name == ""  # the config stays what was trained
    record = json.loads((store.run_dir(run_id) / "record.json").read_text())
    assert record["run"]["name"] == "cats vs dogs"
    store.db_path.unlink()  # the index is lost: rebuilt from the run folders
    for side in ("-wal", "-shm"):
        store.db_path.with_name(store.db_path.name + side).unlink(missing_ok=True)
    (tmp_path / "runs.sqlite.bak").unlink()
    assert RunStore(tmp_path).result(run_id)["name"] == "cats vs dogs"
    long = RunStore(tmp_path).rename(run_id, "y" * 80)
    assert len(long) == 60 and long.endswith("…")


@pytest.mark.parametrize("name", ["", "   ", "\n\t", None])
def test_an_empty_name_is_refused(tmp_path, name) -> None:
    store = RunStore(tmp_path)
    run_id = _finished(store)
    with pytest.raises(ConfigError, match="A run name cannot be empty"):
        store.rename(run_id, name)
    assert store.list_runs()[0]["name"] == "textures #1"
    with pytest.raises(RunNotFoundError):
        store.rename("nope", "a name")


def test_disk_usage_counts_every_run_folder_and_the_index(tmp_path) -> None:
    store = RunStore(tmp_path)
    run_id = _finished(store)
    (store.run_dir(run_id) / "model.keras").write_bytes(b"m" * 10_000)
    nested = store.run_dir(run_id) / "exports" / "tflite"
    nested.mkdir(parents=True)
    (nested / "model.tflite").write_bytes(b"t" * 5_000)
    assert 15_000 < store.run_bytes(run_id) < 20_000
    index = sum(p.stat().st_size for p in tmp_path.glob("runs.sqlite*"))
    used = store.disk_usage()
    assert used == store.run_bytes(run_id) + index
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.bin").write_bytes(b"d" * 50_000)  # the studio's, not the runs'
    assert store.disk_usage() == used


def test_delete_refuses_an_active_run_and_removes_a_finished_one(tmp_path) -> None:
    store = RunStore(tmp_path)
    done = _finished(store)
    queued = store.create_run(RunConfig())
    with pytest.raises(StudioError, match="is queued, so it cannot be deleted. Stop it first"):
        store.delete_run(queued)
    store.mark_running(queued)
    with pytest.raises(StudioError, match="is running"):
        store.delete_run(queued)
    assert (tmp_path / "runs" / queued).is_dir()
    store.delete_run(done)
    assert not (tmp_path / "runs" / done).exists()
    assert [r["run_id"] for r in store.list_runs()] == [queued]


# -- a damaged index -----------------------------------------------------------------------------


def test_the_backup_is_refreshed_after_every_finished_run(tmp_path) -> None:
    store = RunStore(tmp_path)
    backup = tmp_path / "runs.sqlite.bak"
    first = _finished(store)
    with sqlite3.connect(backup) as db:
        assert [r[0] for r in db.execute("SELECT run_id FROM runs")] == [first]
    second = _finished(store)
    with sqlite3.connect(backup) as db:
        assert {r[0] for r in db.execute("SELECT run_id FROM runs")} == {first, second}


def _checkpointed(path) -> None:
    with sqlite3.connect(path) as db:  # everything in the main file: no WAL to fall back on
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "emptied"])
def test_a_damaged_file_is_set_aside_and_restored_with_a_notice(tmp_path, damage, capsys) -> None:
    store = RunStore(tmp_path)
    runs = {_finished(store, batches=2000) for _ in range(3)}
    _checkpointed(store.db_path)
    if damage == "garbage":
        with open(store.db_path, "r+b") as fh:
            fh.write(b"\x13garbage" * 512)
    elif damage == "emptied":
        os.truncate(store.db_path, 0)  # SQLite itself would take it for a new, empty index
    else:
        os.truncate(store.db_path, store.db_path.stat().st_size // 2)
    reopened = RunStore(tmp_path)
    assert {r["run_id"] for r in reopened.list_runs()} == runs
    (notice,) = reopened.notices
    assert str(store.db_path) in notice and "restored the last backup" in notice
    assert "refreshed after every finished run" in notice
    assert list(tmp_path.glob("runs.sqlite.damaged-*"))
    assert "warning: the run store" in capsys.readouterr().err


def test_a_new_store_whose_file_is_still_empty_is_no_damage(tmp_path) -> None:
    """Another process has just created the file and not yet its tables: nothing was lost."""
    (tmp_path / "runs.sqlite").touch()
    store = RunStore(tmp_path)
    assert store.notices == [] and store.list_runs() == []
    assert not list(tmp_path.glob("runs.sqlite.damaged-*"))


def test_a_row_with_broken_json_is_rebuilt_from_its_folder(tmp_path) -> None:
    store = RunStore(tmp_path)
    runs = [_finished(store) for _ in range(3)]
    store.rename(runs[1], "kept name")
    with sqlite3.connect(store.db_path) as db:
        db.execute("UPDATE runs SET config_json = '{', phases_json = '[' WHERE run_id = ?",
                   (runs[1],))  # fmt: skip
    reopened = RunStore(tmp_path)
    assert [r["run_id"] for r in reopened.list_runs()] == runs[::-1]
    result = reopened.result(runs[1])
    assert result["name"] == "kept name" and result["config"]["data"] == "builtin:textures"
    (notice,) = reopened.notices
    assert runs[1] in notice and "config_json is not valid JSON" in notice
    assert "rebuilt it from" in notice and "record.json" in notice


def test_a_broken_row_hides_no_other_run_and_says_which_file(tmp_path) -> None:
    store = RunStore(tmp_path)
    runs = [_finished(store) for _ in range(3)]
    shutil.rmtree(tmp_path / "runs" / runs[0])  # nothing to rebuild it from
    with sqlite3.connect(store.db_path) as db:
        db.execute("UPDATE runs SET config_json = 'not json' WHERE run_id = ?", (runs[0],))
    reopened = RunStore(tmp_path)
    assert reopened.notices == []  # said when the list meets it, once however often listed
    (problem,) = reopened.problems()  # what a page shows before it lists anything
    assert runs[0] in problem and "cannot be rebuilt" in problem
    for _ in range(2):
        assert [r["run_id"] for r in reopened.list_runs()] == runs[:0:-1]
    (notice,) = reopened.notices
    assert runs[0] in notice and "cannot be rebuilt" in notice and str(store.db_path) in notice
    with pytest.raises(StudioError) as err:
        reopened.result(runs[0])
    assert str(reopened.db_path) in str(err.value) and "not valid JSON" in str(err.value)
    # Damage arriving while a process already has the store open: listed out, said once.
    with sqlite3.connect(store.db_path) as db:
        db.execute("UPDATE runs SET dataset_json = '{' WHERE run_id = ?", (runs[1],))
    assert [r["run_id"] for r in store.list_runs()] == [runs[2], runs[1]]  # summary is fine
    assert [p for p in store.problems() if runs[1] in p]
    with pytest.raises(StudioError, match=r"dataset_json is not valid JSON\). Close the studio"):
        store.result(runs[1])


def test_a_rebuilt_index_keeps_the_runs_numbers_and_default_names(tmp_path) -> None:
    store = RunStore(tmp_path)
    runs = [_finished(store) for _ in range(4)]
    store.delete_run(runs[1])  # numbers are not reused: #3 stays #3
    names = {r["run_id"]: r["name"] for r in store.list_runs()}
    assert sorted(names.values()) == ["textures #1", "textures #3", "textures #4"]
    for path in tmp_path.glob("runs.sqlite*"):
        path.unlink()
    rebuilt = RunStore(tmp_path)
    assert {r["run_id"]: r["name"] for r in rebuilt.list_runs()} == names
    assert [r["run_id"] for r in rebuilt.list_runs()] == [runs[3], runs[2], runs[0]]


def test_update_sets_only_run_columns(tmp_path) -> None:
    """``update``'s keyword names are the ``RunUpdate`` columns: anything else (a typo, or a
    name that would be spliced into the SQL) is refused before the database is touched."""
    from core.runs.store import UPDATABLE_COLUMNS

    store = RunStore(tmp_path)
    run_id = store.create_run(RunConfig(data="builtin:textures"))
    with pytest.raises(TypeError, match="not run columns"):
        store.update(run_id, **{"status = 'x', name": "y"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config_json"):
        store.update(run_id, config_json="{}")  # type: ignore[call-arg]
    assert store.status(run_id) == QUEUED
    assert {"status", "stage", "model_path", "device"} <= UPDATABLE_COLUMNS
    assert "config_json" not in UPDATABLE_COLUMNS and "run_id" not in UPDATABLE_COLUMNS


def test_a_recorded_split_round_trips_and_sees_changes(tmp_path) -> None:
    from core.data.index import load_dataset
    from core.runs.split import read_split, record_split
    from tests.helpers import write_pngs

    data = tmp_path / "data"
    for label in ("a", "b"):
        write_pngs(data / label, 5)
    index = load_dataset(str(data), val_split=0.2, seed=1)
    store = RunStore(tmp_path / "runs")
    run_id = store.create_run(RunConfig(data=str(data)))
    assert store.split(run_id) is None and store.result(run_id, split=True)["split"] is None
    written = record_split(store.run_dir(run_id), index)
    assert read_split(store.run_dir(run_id)) == written == store.split(run_id)
    assert [written.absolute(i) for i in written.train] == [
        os.path.realpath(p) for p in index.train_paths
    ]
    assert {i.label for i in written.val} == {"a", "b"} and written.changes().changed == []
    # Its digests, training then validation files, are the files' own (a run's feature key).
    from core.data.scan_cache import content_hashes

    assert written.digests() == content_hashes([*index.train_paths, *index.val_paths])
    assert replace(written, val=(replace(written.val[0], sha256=""),)).digests() is None
    document = store.result(run_id, split=True)["split"]
    assert document is not None and len(document["train"]) == len(index.train_paths)
    assert "split" not in store.result(run_id)  # the pages' polls do not read it
    first = written.train[0]
    with open(written.absolute(first), "ab") as fh:
        fh.write(b"more")
    os.remove(written.absolute(written.val[0]))
    changes = written.changes()
    assert changes.changed == [first.path] and changes.missing == [written.val[0].path]
    (store.run_dir(run_id) / "split.json").write_text("{not json")
    assert store.split(run_id) is None  # a damaged file reads as none recorded


def test_the_split_resolves_paths_per_folder_as_realpath_does_per_file(tmp_path) -> None:
    from pathlib import Path

    from core.runs.split import _relative_paths
    from tests.helpers import write_pngs

    outside = tmp_path / "elsewhere"
    write_pngs(outside / "x", 2, side=12)
    root = tmp_path / "data"
    write_pngs(root / "cat", 2, side=12)
    (root / "dog").symlink_to(outside / "x", target_is_directory=True)  # a linked class folder
    (root / "cat" / "linked.png").symlink_to(outside / "x" / "0.png")  # a linked file
    paths = [
        *(str(p) for p in sorted((root / "cat").iterdir())),
        *(str(p) for p in sorted((root / "dog").iterdir())),
        str(root / "cat" / ".." / "cat" / "0.png"),  # not normalised
        str(root / "top.png"),  # in the root folder itself
        str(outside / "x" / "1.png"),  # outside the root
    ]
    (root / "top.png").write_bytes((root / "cat" / "0.png").read_bytes())
    real_root = os.path.realpath(root)
    expected = [Path(os.path.relpath(os.path.realpath(p), real_root)).as_posix() for p in paths]
    assert _relative_paths(paths, real_root) == expected
    assert expected[-2:] == ["top.png", "../elsewhere/x/1.png"]
