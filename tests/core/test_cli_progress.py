"""CLI progress on stderr: n/N, rate and ETA lines, throttled; a run's stage record as a line."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from core.cli.progress import (
    AFTER_ENV,
    ProgressLine,
    StageWatcher,
    after_s,
    duration_text,
    export_progress,
    progress_text,
    stage_text,
)


def test_progress_text_has_counts_rate_and_time_left() -> None:
    assert progress_text("evaluating", 0, 10_000, 0.0) == "evaluating 0/10,000 (0%)"
    assert progress_text("evaluating", 2_500, 10_000, 10.0) == (
        "evaluating 2,500/10,000 (25%), 250 img/s, ETA 30 s"
    )
    assert progress_text("scoring", 3, 40, 2.0, unit="fold") == (
        "scoring 3/40 (8%), 1.5 fold/s, ETA 25 s"
    )
    assert progress_text("evaluating", 50, 50, 125.0) == (
        "evaluating 50/50 (100%), 0.4 img/s, took 2 min 5 s"
    )


def test_duration_text() -> None:
    assert [duration_text(s) for s in (0.4, 27, 125, 3725)] == ["0 s", "27 s", "2 min 5 s",
                                                                "1 h 2 min"]  # fmt: skip


def test_progress_line_waits_then_prints_at_most_every_interval_and_the_last() -> None:
    now = [0.0]
    out = io.StringIO()
    line = ProgressLine("pass", every_s=2.0, stream=out, clock=lambda: now[0], after=2.5)
    for done in range(1, 11):  # one call a second
        now[0] = float(done)
        line(done, 10)
    printed = out.getvalue().splitlines()
    # Silent for 2.5 s, then one line every 2 s (3, 5, 7, 9), then the last.
    assert [p.split()[1] for p in printed] == ["3/10", "5/10", "7/10", "9/10", "10/10"]
    assert printed[-1].endswith("took 10 s")
    quick, now[0] = ProgressLine("quick", stream=out, clock=lambda: now[0], after=2.0), 0.0
    quick(5, 5)  # over at once: nothing to follow
    assert "quick" not in out.getvalue()


def test_the_wait_before_progress_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(AFTER_ENV, "0")
    assert after_s() == 0.0 and ProgressLine("x").after == 0.0
    monkeypatch.setenv(AFTER_ENV, "soon")
    assert after_s() == 2.0
    monkeypatch.delenv(AFTER_ENV)
    assert after_s() == 2.0


def test_stage_text_reads_the_trainer_s_stage_record() -> None:
    record = {"stage": "features", "done": 3200, "total": 10000, "images_per_s": 250.4,
              "eta_s": 27.2, "step": 3, "steps": 3}  # fmt: skip
    assert stage_text(record) == (
        "preparing 3/3: computing features 3,200/10,000 (32%), 250 img/s, ETA 27 s"
    )
    assert stage_text({"stage": "scan", "done": 5, "total": 5, "eta_s": 0}) == (
        "checking images 5/5 (100%)"
    )
    assert stage_text({"stage": "build", "converting": True, "step": 2, "steps": 3}) == (
        "preparing 2/3: converting the backbone's weights (first use only)"
    )
    assert stage_text({"stage": "features", "activations": True, "done": 1, "total": 4}) == (
        "running the frozen layers 1/4 (25%)"
    )
    resumed = {"stage": "features", "activations": True, "done": 3000, "total": 4000,
               "reused": 2048, "images_per_s": 100.0, "eta_s": 10.0}  # fmt: skip
    assert stage_text(resumed) == (
        "running the frozen layers 3,000/4,000 (75%), 100 img/s, ETA 10 s (2,048 stored "
        "before, not run again)"
    )
    assert stage_text({}) is None


class _Store:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def get_run(self, run_id: str) -> dict[str, Any]:
        record = self.records.pop(0) if self.records else None
        return {"stage_json": json.dumps(record) if record is not None else None}


def test_stage_watcher_prints_each_new_stage_once() -> None:
    store, out = _Store(), io.StringIO()
    watcher = StageWatcher(store, "r1", stream=out)
    first = {"stage": "features", "done": 10, "total": 100, "images_per_s": 5.0, "eta_s": 18.0}
    store.records = [None, first, first, {**first, "done": 100, "eta_s": 0.0}]
    printed = [watcher.poll() for _ in range(4)]
    assert printed == [
        None,
        "computing features 10/100 (10%), 5 img/s, ETA 18 s",
        None,  # unchanged
        "computing features 100/100 (100%), 5 img/s",
    ]
    assert out.getvalue().splitlines() == [p for p in printed if p]
    with StageWatcher(store, "r1", every_s=0.01, stream=out):
        pass  # the thread starts and stops with the block


def test_dataset_create_and_add_show_progress_and_keep_stdout_json(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from core.cli import main
    from tests.helpers import write_pngs

    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(AFTER_ENV, "0")  # every stage shows
    write_pngs(tmp_path / "src" / "cats", 3)
    write_pngs(tmp_path / "src" / "dogs", 4, side=28)  # not the same pictures as the cats
    assert main(["dataset", "create", "pets", "--from", str(tmp_path / "src"), "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["images"] == 7  # stdout: only the JSON
    err = out.err.splitlines()
    assert any(line.startswith("checking images 7/7 (100%)") for line in err), err
    assert err[-1].startswith("importing images 7/7 (100%)"), err  # both classes in one count
    write_pngs(tmp_path / "more", 2, side=30)
    assert main(["dataset", "add", "pets", "birds", str(tmp_path / "more"), "--json"]) == 0
    out = capsys.readouterr()
    assert len(json.loads(out.out)["added"]) == 2
    assert out.err.splitlines()[-1].startswith("adding images 2/2 (100%)"), out.err


def test_export_progress_counts_formats_and_names_the_step() -> None:
    from core.runs.export import ExportStep

    out = io.StringIO()
    on_step = export_progress(stream=out, after=0.0)
    for step in (
        ExportStep("preparing", "onnx", 0, 2),
        ExportStep("converting", "onnx", 1, 2),
        ExportStep("done", "onnx", 1, 2),
        ExportStep("converting", "tflite", 2, 2),
        ExportStep("done", "tflite", 2, 2),
    ):
        on_step(step)
    lines = out.getvalue().splitlines()
    assert lines[0] == (
        "exporting: formats 0/2 (0%): Loading the model and the verification images…"
    )
    assert lines[-1].startswith("exporting: formats 2/2 (100%)") and "took" in lines[-1]
