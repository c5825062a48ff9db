"""`python -m core` end to end, as a user runs it (subprocesses, a fresh runs folder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, cli, last_json

TRAIN = [
    "train", "--data", "builtin:textures", "--backbone", "mobilenet_v2", "--weights", "none",
    "--image-size", "64", "--batch-size", "16",
]  # fmt: skip


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("cli-runs"))


@pytest.fixture(scope="module")
def feature_run(runs_dir: str) -> dict:
    proc = cli(
        *TRAIN, "--mode", "feature_extraction", "--epochs", "2", "--runs-dir", runs_dir, "--json"
    )
    progress = [line for line in proc.stderr.splitlines() if line.startswith("epoch ")]
    assert len(progress) == 2 and progress[0].startswith("epoch 1/2 [head]")
    return last_json(proc)


@pytest.mark.slow
def test_train_json_has_the_documented_keys(feature_run: dict) -> None:
    result = feature_run
    assert result["status"] == "completed"
    for key in (
        "run_id", "status", "config", "history", "best_val_accuracy", "class_names",
        "train_images", "val_images", "skipped_files", "duration_s",
    ):  # fmt: skip
        assert key in result, key
    assert len(result["history"]["val_accuracy"]) == 2
    assert set(result["history"]) >= {"loss", "accuracy", "val_loss", "val_accuracy", "phase"}
    assert result["config"]["backbone"] == "mobilenet_v2"
    assert result["best_val_accuracy"] == max(result["history"]["val_accuracy"])


@pytest.mark.slow
def test_runs_show_and_predict(feature_run: dict, runs_dir: str) -> None:
    run_id = feature_run["run_id"]
    runs = last_json(cli("runs", "--runs-dir", runs_dir, "--json"))
    row = next(r for r in runs if r["run_id"] == run_id)
    assert row["status"] == "completed" and row["epochs_done"] == 2
    assert row["best_val_accuracy"] == feature_run["best_val_accuracy"]
    shown = last_json(cli("show", run_id, "--runs-dir", runs_dir, "--json"))
    assert shown["history"] == feature_run["history"]

    image = Path(feature_run["dataset"]["root"]) / "brick" / "brick_000.png"
    preds = last_json(cli("predict", "--runs-dir", runs_dir, "--run", run_id, str(image), "--json"))
    probabilities = [p["probability"] for p in preds[0]["predictions"]]
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
    assert {p["label"] for p in preds[0]["predictions"]} == {"brick", "grass", "gravel"}


@pytest.mark.slow
def test_the_run_records_its_split_and_show_json_carries_it(feature_run: dict, runs_dir: str):
    """The trainer writes the images it trained and validated on (relative path, label, content
    hash) into the run folder; ``train --json`` and ``show --json`` carry them as ``split``."""
    run_id = feature_run["run_id"]
    shown = last_json(cli("show", run_id, "--runs-dir", runs_dir, "--json"))
    split = shown["split"]
    assert split == feature_run["split"]
    assert len(split["train"]) == feature_run["train_images"]
    assert len(split["val"]) == feature_run["val_images"]
    root = Path(feature_run["dataset"]["root"]).resolve()
    for row in split["train"] + split["val"]:
        assert row["label"] == Path(row["path"]).parent.name  # class folders: the label
        assert (root / row["path"]).is_file() and len(row["sha256"]) == 64
    trained = {r["path"] for r in split["train"]}
    assert not trained & {r["path"] for r in split["val"]}
    text = cli("show", run_id, "--runs-dir", runs_dir).stdout
    assert "sha256" not in text  # the text view leaves the split out


@pytest.mark.slow
def test_fine_tuning_records_two_phases_with_different_trainable_counts(runs_dir: str) -> None:
    proc = cli(
        *TRAIN, "--mode", "fine_tuning", "--epochs", "1", "--fine-tune-epochs", "1",
        "--runs-dir", runs_dir, "--json",
    )  # fmt: skip
    result = last_json(proc)
    assert result["history"]["phase"] == ["head", "fine_tune"]
    head, tune = result["phases"]
    assert tune["trainable_params"] > head["trainable_params"]
    assert result["history"]["lr"][1] == pytest.approx(1e-5)


@pytest.mark.slow
def test_errors_are_one_line_with_non_zero_exit(runs_dir: str) -> None:
    proc = cli("train", "--backbone", "vgg61", "--runs-dir", runs_dir, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Unknown backbone 'vgg61'. Available: efficientnet_lite0" in lines[0]
    proc = cli("predict", "--runs-dir", runs_dir, "--run", "nope", "x.jpg", check=False)
    assert proc.returncode == 1 and "No run 'nope'" in proc.stderr


def test_listings(runs_dir: str) -> None:
    backbones = last_json(cli("backbones", "--json"))
    lite0 = next(b for b in backbones if b["name"] == "efficientnet_lite0")
    assert lite0["weights_status"] == "bundled" and lite0["offline"] is True
    assert {b["name"] for b in backbones} >= {
        "vgg16", "vgg19", "resnet50", "resnet101", "resnet152", "inception_v3",
        "efficientnet_b0", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    }  # fmt: skip
    datasets = last_json(cli("datasets", "--json"))
    assert {d["source"] for d in datasets} >= {"builtin:faces", "builtin:textures"}
    assert "--fine-tune-lr" in cli("train", "--help").stdout


@pytest.mark.slow
def test_classify_offline_sees_a_cat(tmp_path) -> None:
    from PIL import Image
    from skimage import data

    path = tmp_path / "cat.jpg"
    Image.fromarray(data.chelsea()).save(path)
    result = last_json(cli("classify", "--backbone", "efficientnet_lite0", str(path), "--json"))
    top = result[0]["predictions"][0]
    assert 281 <= top["class_index"] <= 285, top


@pytest.mark.slow
def test_evaluate_json_matrix_sums_to_the_validation_images(
    feature_run: dict, runs_dir: str
) -> None:
    ev = last_json(
        cli("evaluate", "--runs-dir", runs_dir, "--run", feature_run["run_id"], "--json")
    )
    n = len(ev["class_names"])
    assert len(ev["confusion_matrix"]) == n and all(len(row) == n for row in ev["confusion_matrix"])
    assert sum(map(sum, ev["confusion_matrix"])) == feature_run["val_images"]
    assert {c["class"] for c in ev["per_class"]} == set(feature_run["class_names"])


@pytest.mark.slow
def test_evaluate_shows_its_progress_on_stderr_and_keeps_stdout_json(
    feature_run: dict, runs_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = ["evaluate", "--runs-dir", runs_dir, "--run", feature_run["run_id"], "--force", "--json"]
    monkeypatch.setenv("TRANSFER_STUDIO_PROGRESS_AFTER_S", "0")  # every stage shows
    proc = cli(*run)
    n = feature_run["val_images"]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("evaluating ")]
    assert lines and lines[-1].startswith(f"evaluating validation images {n}/{n} (100%)")
    assert "took" in lines[-1]
    assert sum(map(sum, last_json(proc)["confusion_matrix"])) == n  # stdout: only the JSON


def test_core_names_settings_and_the_cli_adds_their_flags(tmp_path) -> None:
    from core.cli.flags import setting_flags
    from core.config import RunConfig
    from core.errors import StudioError

    bad = [
        {"image_size": 0}, {"batch_size": 0}, {"epochs": 0}, {"fine_tune_lr": 0.0},
        {"val_split": 2.0}, {"feature_cache": "maybe"}, {"mode": "magic"}, {"dropout": 3.0},
        {"backbone": "inception_v3", "image_size": 64},
    ]  # fmt: skip
    for change in bad:
        with pytest.raises(StudioError) as info:
            RunConfig(**change).validate()  # type: ignore[arg-type]
        assert "--" not in str(info.value), info.value  # what the dashboard shows
        assert info.value.settings, change
    assert setting_flags(("image_size", "augment")) == "--image-size, --augment/--no-augment"
    proc = cli("train", "--backbone", "inception_v3", "--image-size", "64", "--weights", "none",
               "--runs-dir", str(tmp_path), check=False)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith("[--image-size]"), proc.stderr


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--data", "/nonexistent/photos"], "Data source '/nonexistent/photos' not found"),
        (["--data", "/nonexistent/photos.zip"], "not found"),
        (["--data", "builtin:nope"], "Unknown built-in dataset 'nope'"),
        (["--epochs", "0"], "Epochs 0 is invalid"),
    ],
)
def test_train_refuses_a_bad_source_or_config_before_loading_tensorflow(
    tmp_path, flags: list[str], expected: str
) -> None:
    """Fast failures: nothing heavy is imported, no run is recorded for a run that cannot start."""
    code = (
        "import sys\n"
        "from core.cli import main\n"
        f"rc = main(['train', *{flags!r}, '--runs-dir', {str(tmp_path)!r}, '--json'])\n"
        "print(rc, 'tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.split() == ["1", "False", "False"], proc.stdout + proc.stderr
    assert expected in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def _recorded_runs(folder: Path, count: int) -> list[str]:
    """Completed runs recorded straight into the store (no training: the CLI only lists them)."""
    from core.config import RunConfig
    from core.runs.store import COMPLETED, RunStore

    store = RunStore(folder)
    ids = []
    for _ in range(count):
        run_id = store.create_run(RunConfig(data="builtin:textures", epochs=1))
        store.mark_running(run_id)
        store.add_epoch(run_id, {"epoch": 1, "phase": "head", "phase_epoch": 1})
        store.mark_finished(run_id, COMPLETED)
        (store.run_dir(run_id) / "model.keras").write_bytes(b"m" * 2_000_000)
        ids.append(run_id)
    return ids


def test_runs_lists_names_and_the_disk_space_used(tmp_path) -> None:
    first, second = _recorded_runs(tmp_path, 2)
    listed = cli("runs", "--runs-dir", str(tmp_path)).stdout.splitlines()
    assert [line.split()[:4] for line in listed[:2]] == [
        [second, "completed", "textures", "#2"],
        [first, "completed", "textures", "#1"],
    ]
    assert listed[-1].startswith("2 runs, 4.") and f"MB on disk in {tmp_path}" in listed[-1]
    rows = last_json(cli("runs", "--runs-dir", str(tmp_path), "--json"))
    assert [r["name"] for r in rows] == ["textures #2", "textures #1"]
    assert set(rows[0]) >= {"run_id", "status", "name", "backbone", "mode", "data", "epochs_done"}


def test_rename_names_a_run_everywhere(tmp_path) -> None:
    (run_id,) = _recorded_runs(tmp_path, 1)
    proc = cli("rename", run_id, "  cats vs dogs  ", "--runs-dir", str(tmp_path))
    assert proc.stdout.strip() == f"{run_id} is now named 'cats vs dogs'"
    assert last_json(cli("show", run_id, "--runs-dir", str(tmp_path), "--json"))["name"] == (
        "cats vs dogs"
    )
    summary = last_json(cli("rename", run_id, "final", "--runs-dir", str(tmp_path), "--json"))
    assert summary["name"] == "final" and summary["run_id"] == run_id
    proc = cli("rename", run_id, " ", "--runs-dir", str(tmp_path), check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("error: A run name cannot be empty")
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = cli("rename", "nope", "x", "--runs-dir", str(tmp_path), check=False)
    assert proc.returncode == 1 and "No run 'nope'" in proc.stderr


def test_delete_asks_for_a_confirmation_and_refuses_without_one(tmp_path) -> None:
    from core.config import RunConfig
    from core.runs.store import RunStore

    keep, gone = _recorded_runs(tmp_path, 2)
    proc = cli("delete", gone, "--runs-dir", str(tmp_path), check=False)  # stdin: not a TTY
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "without a confirmation" in proc.stderr and proc.stderr.strip().endswith(
        "--yes to confirm."
    )
    assert (tmp_path / "runs" / gone).is_dir()
    done = last_json(cli("delete", gone, "--yes", "--runs-dir", str(tmp_path), "--json"))
    assert done["deleted"] is True and done["bytes_freed"] > 2_000_000
    assert not (tmp_path / "runs" / gone).exists()
    assert [r["run_id"] for r in last_json(cli("runs", "--runs-dir", str(tmp_path), "--json"))] == [
        keep
    ]
    queued = RunStore(tmp_path, recover=False).create_run(RunConfig())
    # The queued run's process (this one) is alive: the CLI must refuse to delete it.
    proc = cli("delete", queued, "--yes", "--runs-dir", str(tmp_path), check=False)
    assert proc.returncode == 1 and "is queued, so it cannot be deleted" in proc.stderr
    assert (tmp_path / "runs" / queued).is_dir()


def test_help_documents_rename_and_delete() -> None:
    top = cli("--help").stdout
    assert "rename" in top and "delete" in top
    assert "--yes" in cli("delete", "--help").stdout
    assert "at most 60 characters" in " ".join(cli("rename", "--help").stdout.split())


def test_the_worker_command_builds_only_its_own_parser(tmp_path) -> None:
    """``python -m core worker`` (the process the dashboard starts) reaches the job loop through
    its own family module: no other command's module is imported, no other parser is built."""
    code = f"""
import argparse, json, sys
from core.training import jobs
seen = {{}}
def run_worker(options, progress_for):
    seen.update(once=options.once, runs_dir=options.runs_dir)
    return 0
jobs.run_worker = run_worker
built = []
add_parser = argparse._SubParsersAction.add_parser
def spy(self, name, **kw):
    built.append(name)
    return add_parser(self, name, **kw)
argparse._SubParsersAction.add_parser = spy
from core.cli import main
rc = main(["worker", "--once", "--runs-dir", {str(tmp_path)!r}])
print(json.dumps({{"rc": rc, "seen": seen, "parsers": built,
                  "cli": sorted(m for m in sys.modules if m.startswith("core.cli"))}}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["rc"] == 0 and facts["seen"] == {"once": True, "runs_dir": str(tmp_path)}
    assert facts["parsers"] == ["worker"]
    assert facts["cli"] == ["core.cli", "core.cli.output", "core.cli.worker"]


def test_stop_cancels_a_queued_run_and_leaves_an_ended_one_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from core import cli as core_cli
    from core.config import RunConfig
    from core.runs.store import RunStore

    store = RunStore(tmp_path)
    runs = ["--runs-dir", str(tmp_path)]
    queued = store.create_run(RunConfig(), claimed=False)  # waiting for a worker
    assert core_cli.main(["stop", queued, *runs]) == 0
    assert "cancelled" in capsys.readouterr().err
    assert store.get_run(queued)["status"] == "stopped"  # at once: no worker needed
    # Not a dead end: the cancelled run can be deleted (or resumed).
    assert core_cli.main(["delete", queued, "--yes", *runs]) == 0
    capsys.readouterr()
    done = store.create_run(RunConfig())
    store.mark_finished(done, "completed", error=None)
    assert core_cli.main(["stop", done, *runs]) == 0
    err = capsys.readouterr().err
    assert f"{done} has already ended (completed): nothing to stop" in err
    assert store.get_run(done)["status"] == "completed"
    assert not store.stop_requested(done)


@pytest.mark.parametrize(
    "flags",
    [["--steps", "0"], ["--steps", "1"], ["--max-lr", "inf"], ["--max-lr", "nan"],
     ["--min-lr", "-1"], ["--min-lr", "0"], ["--min-lr", "1", "--max-lr", "0.5"]],
)  # fmt: skip
def test_lr_find_refuses_a_bad_range_in_one_line(
    flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from core import cli as core_cli

    code = core_cli.main(["lr-find", "--data", "builtin:textures", *flags])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("error: Learning-rate finder range") and "is invalid" in err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signals", "when"),
    [(("SIGINT", "SIGINT"), "epoch "), (("SIGTERM",), "epoch "), (("SIGTERM",), "run ")],
)
def test_ctrl_c_twice_or_sigterm_stops_train_cleanly(
    tmp_path: Path, signals: tuple, when: str
) -> None:
    """A terminal's Ctrl+C (pressed twice) and a service manager's SIGTERM end the run
    ``stopped`` within a batch, while it trains or still prepares its inputs (``run ``: just
    started): no traceback, no temporary file, nothing left ``running``."""
    import signal
    import time

    from core.runs.store import RunStore
    from core.training.checkpoint import TEMP_PATTERNS

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    # Just started: a feature-extraction run's one-off pass (the augmented views) comes first.
    mode = "scratch" if when == "epoch " else "feature_extraction"
    proc = subprocess.Popen(
        [sys.executable, "-m", "core", *TRAIN, "--image-size", "32", "--batch-size", "4",
         "--mode", mode, "--epochs", "200", "--runs-dir", str(tmp_path)],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        lines = []
        while not any(line.startswith(when) for line in lines):
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        for name in signals:
            proc.send_signal(getattr(signal, name))
            time.sleep(0.05)
        started = time.monotonic()
        _, err = proc.communicate(timeout=120)
        stopped_in = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines) + err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "stopping after the current batch" in err
    assert proc.returncode == 130, err
    assert stopped_in < 60, stopped_in
    (run,) = RunStore(tmp_path).list_runs()
    assert run["status"] == "stopped" and run["epochs_done"] < 200
    assert run["epochs_done"] >= (1 if when == "epoch " else 0)
    folder = tmp_path / "runs" / run["run_id"]
    assert not [p for pattern in TEMP_PATTERNS for p in folder.rglob(pattern)]
