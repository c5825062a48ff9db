"""The Train page's model search, learning-rate finder and class weights under AppTest.

The engine's search and LR finder are replaced by fast fakes (they are tested in
tests/test_search.py and tests/test_lr_find.py): what is tested here is the page: the
background task, the live table, "Use this", "Use <lr>", the class-weight suggestion. The tasks
run in child processes, so the fakes are task kinds (``*_task`` below) the child imports by name.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app.views import search as views
from app.views.text import md_unescape
from core import tasks as tasks_module
from core.data.health import health_report
from core.errors import DataError
from core.runs import drafts
from core.tasks import task_state, wait_task
from core.training import lr_find as lr_module
from core.training import search as search_module
from core.training.lr_find import LR_FIND_TASK, LrFindResult
from core.training.search import (
    OK,
    SEARCH_TASK,
    Candidate,
    HeadResult,
    SearchResult,
    rank_candidates,
)

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "streamlit_app.py")
TRAIN = "pages/train.py"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A studio home (and runs folder) of this test's own."""
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path))
    return tmp_path.resolve()


def _open(**session: Any) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in session.items():
        at.session_state[key] = value
    at.run()
    at.switch_page(TRAIN).run()
    _ok(at)
    return at


def _table(at: AppTest) -> Any:
    """The search's ranked table (AppTest does not expose a dataframe's key)."""
    return next(d.value for d in at.dataframe if "val accuracy" in d.value.columns)


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _candidate(backbone: str, size: int, acc: float, latency: float, lr: float) -> Candidate:
    c = Candidate(backbone, size, status=OK, val_accuracy=acc, val_loss=0.1,
                  latency_ms=latency, size_mb=10.0, params=2_500_000)  # fmt: skip
    c.heads = [HeadResult("hidden", 256, lr, acc, 0.1)]
    return c


def fake_search(data: str, progress: Any = None, **_kw: Any) -> SearchResult:
    """Three candidates, settled one after the other (the third needs the network)."""
    settled = [
        _candidate("mobilenet_v2", 160, 0.80, 9.0, 3e-3),
        _candidate("efficientnet_lite0", 224, 0.95, 20.0, 3e-4),
        Candidate("vgg16", 224, status="needs network"),
    ]
    for c in settled:
        time.sleep(0.05)
        if progress is not None:
            progress(c)
    return SearchResult(data, rank_candidates(settled), ["a", "b"], 8, 2, 0.2, 0)


CALL = "search-call.json"  # where the fake search of a task process says how it was called


def recorded_search(data: str, **kw: Any) -> SearchResult:
    """``fake_search``, its call kept in the studio home's ``CALL`` (the test's process reads
    it: the task runs in another)."""
    settings = {k: v for k, v in kw.items() if not callable(v)}
    (Path(os.environ["TRANSFER_STUDIO_HOME"]) / CALL).write_text(
        json.dumps({"data": data, **settings})
    )
    return fake_search(data, **kw)


def fake_search_task(initial: dict[str, Any]) -> Any:
    """The search task kind with ``recorded_search`` for the engine (in the task's process)."""
    search_module.search = recorded_search  # type: ignore[assignment]
    return search_module.search_task(initial)


def slow_search(data: str, progress: Any = None, should_stop: Any = None, **_kw: Any) -> Any:
    """One candidate at once, then nothing until asked to stop (a minute at most)."""
    c = _candidate("mobilenet_v2", 160, 0.8, 9.0, 1e-3)
    progress(c)
    deadline = time.monotonic() + 60
    while not should_stop() and time.monotonic() < deadline:
        time.sleep(0.02)
    return SearchResult(data, [c], ["a", "b"], 8, 2, 0.1, 0)


def slow_search_task(initial: dict[str, Any]) -> Any:
    """The search task kind with ``slow_search`` for the engine (in the task's own process)."""
    search_module.search = slow_search  # type: ignore[assignment]
    return search_module.search_task(initial)


@pytest.fixture
def no_task_left() -> Iterator[None]:
    """Every task process a test started ends with it."""
    yield
    tasks_module.stop_task_processes(timeout=5)
    assert tasks_module.task_processes() == []


@pytest.mark.slow
def test_the_search_runs_in_the_background_fills_the_table_and_use_this_sets_the_form(
    home: Path, monkeypatch: pytest.MonkeyPatch, no_task_left: None
) -> None:
    monkeypatch.setitem(tasks_module.TASK_KINDS, SEARCH_TASK, fake_search_task)
    at = _open()
    at.number_input(key="search_budget").set_value(2.0)
    at.button(key="search_start").click().run()
    assert wait_task(home, SEARCH_TASK, timeout=60)
    state = task_state(home, SEARCH_TASK)
    assert state is not None and state["status"] == "done", state
    assert int(state["pid"].split(":")[0]) != os.getpid()  # not in the server's process
    # the page's settings reached the search (through the state file)
    call = json.loads((home / CALL).read_text())
    assert call["data"] == "builtin:photos" and call["budget_s"] == 120.0
    assert call["backbones"] == "available" and call["class_weight"] == "none"
    assert call["sizes"] is None and call["weights"] == "imagenet"
    assert [c["backbone"] for c in state["candidates"]][:2] == [
        "efficientnet_lite0",
        "mobilenet_v2",
    ]

    at.run()  # the poll: the finished search's table, chart and "Use this"
    _ok(at)
    table = _table(at)
    assert list(table["backbone"]) == ["efficientnet_lite0", "mobilenet_v2"]  # best first
    assert list(table["status"]) == [OK, OK]
    assert any("need the network: vgg16" in md_unescape(c.value) for c in at.caption)
    assert any("Best: efficientnet_lite0 · 224 px" in md_unescape(s.value) for s in at.success)

    # Pick the second (the faster one), with fine-tuning: the form shows it.
    at.selectbox(key="search_pick").select(1)
    at.radio(key="search_use_mode").set_value("fine_tuning")
    at.button(key="search_use").click().run()
    _ok(at)
    assert at.selectbox(key="backbone").value == "mobilenet_v2"
    assert at.number_input(key="size").value == 160
    assert at.radio(key="mode").value == "fine_tuning"
    assert at.select_slider(key="lr").value == 3e-3
    assert any(
        "Train form set to mobilenet_v2 at 160 px" in md_unescape(s.value) for s in at.success
    )
    draft = drafts.load_draft(home)  # and the draft keeps it (a refresh shows it)
    assert draft is not None and (draft.backbone, draft.image_size) == ("mobilenet_v2", 160)

    # A refresh (a new session) shows the results from the runs folder's file.
    again = _open()
    assert list(_table(again)["backbone"])[0] == "efficientnet_lite0"


@pytest.mark.slow
def test_one_search_per_runs_folder_live_while_it_runs_and_stop(
    home: Path, monkeypatch: pytest.MonkeyPatch, no_task_left: None
) -> None:
    monkeypatch.setitem(tasks_module.TASK_KINDS, SEARCH_TASK, slow_search_task)
    with pytest.raises(DataError, match="not found"):  # said at once, on the page
        search_module.start_search(home, str(home / "no-such-folder"))
    assert task_state(home, SEARCH_TASK) is None  # nothing started
    assert search_module.start_search(home, "builtin:photos", budget_s=60)
    assert not search_module.start_search(home, "builtin:photos")  # one at a time
    deadline = time.monotonic() + 60
    while not (task_state(home, SEARCH_TASK) or {}).get("candidates"):
        assert time.monotonic() < deadline, task_state(home, SEARCH_TASK)
        time.sleep(0.05)
    # the finished candidate is in the file while the search runs
    state = task_state(home, SEARCH_TASK)
    assert state is not None and state["status"] == "running" and len(state["candidates"]) == 1

    at = _open()  # the page while it runs: the partial table, the progress line, Stop
    assert list(_table(at)["backbone"]) == ["mobilenet_v2"]
    assert any("1 candidates settled, 1 measured" in c.value for c in at.caption)
    assert at.button(key="search_start").disabled
    at.button(key="search_stop").click().run()
    assert wait_task(home, SEARCH_TASK, timeout=20)
    assert task_state(home, SEARCH_TASK)["status"] == "stopped"  # type: ignore[index]
    at.run()  # the poll sees it ended: the page is redrawn with the outcome
    _ok(at)
    assert any("Stopped early" in md_unescape(s.value) for s in at.success)

    # a file left "running" by a server that died (a version without task processes: no pid)
    # reads as interrupted
    path = tasks_module.task_path(home, SEARCH_TASK)
    path.write_text(json.dumps({"status": "running", "candidates": []}))
    assert task_state(home, SEARCH_TASK)["status"] == "interrupted"  # type: ignore[index]
    at = _open()  # and the page says so, with where its process wrote
    assert any("interrupted" in md_unescape(w.value) for w in at.warning)
    log = str(tasks_module.task_log_path(home, SEARCH_TASK))
    assert any(log in md_unescape(c.value) for c in at.caption)


def fake_lr_find(config: Any, phase: str = "head", **_kw: Any) -> LrFindResult:
    lrs = [10 ** (-7 + i * 0.1) for i in range(80)]
    losses = [2.0 - i * 0.01 for i in range(80)]
    suggested = 1.6e-3 if phase == "head" else 2e-5
    return LrFindResult(phase, lrs, losses, losses, suggested, False)


def fake_lr_find_task(initial: dict[str, Any]) -> Any:
    """The LR finder task kind with ``fake_lr_find`` for the engine (in the task's process)."""
    lr_module.lr_find = fake_lr_find
    return lr_module.lr_find_task(initial)


@pytest.mark.slow
def test_the_lr_finder_use_button_applies_the_nearest_slider_stop(
    home: Path, monkeypatch: pytest.MonkeyPatch, no_task_left: None
) -> None:
    monkeypatch.setitem(tasks_module.TASK_KINDS, LR_FIND_TASK, fake_lr_find_task)
    at = _open()
    at.radio(key="mode").set_value("fine_tuning").run()
    at.button(key="lr_find_start").click().run()
    assert wait_task(home, LR_FIND_TASK, timeout=60)
    state = task_state(home, LR_FIND_TASK)
    assert state is not None and state["status"] == "done", state
    assert state["phases"] == ["head", "fine_tune"] and state["config"]["mode"] == "fine_tuning"
    at.run()
    _ok(at)
    assert at.button(key="lr_use_head").label == "Use 0.001"  # 1.6e-3 -> the 1e-3 stop
    assert at.button(key="lr_use_fine_tune").label == "Use 3e-05"  # 2e-5 -> 3e-5
    at.button(key="lr_use_head").click().run()
    _ok(at)
    assert at.select_slider(key="lr").value == 1e-3
    assert any("nearest stop to the suggested 0.0016" in md_unescape(i.value) for i in at.info)
    at.button(key="lr_use_fine_tune").click().run()
    assert at.select_slider(key="ft_lr").value == 3e-5

    # a test whose process died mid-way (its state says running, its pid is gone)
    path = tasks_module.task_path(home, LR_FIND_TASK)
    path.write_text(json.dumps({**state, "status": "running", "pid": "1:0", "results": {}}))
    at = _open()
    _ok(at)
    assert any("ended without finishing" in md_unescape(w.value) for w in at.warning)
    assert not at.button(key="lr_find_start").disabled  # it can be started again


def _imbalanced(folder: Path) -> str:
    for name, n in (("common", 12), ("rare", 2)):
        (folder / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (40, 40), (i * 20, 100 if name == "rare" else 0, 0)).save(
                folder / name / f"{i}.png"
            )
    return str(folder)


@pytest.mark.slow
def test_balanced_class_weights_are_suggested_for_imbalanced_data_and_kept(
    home: Path, tmp_path: Path
) -> None:
    from app import navigation

    source = _imbalanced(tmp_path / "imbalanced")
    drafts.save_chosen_data(home, source)
    at = _open(**{navigation.DATA_SOURCE: source})
    assert at.radio(key="class_weight").value == "none"
    assert any("Class imbalance" in w.value and "balanced" in w.value for w in at.warning)
    at.radio(key="class_weight").set_value("balanced").run()
    _ok(at)
    assert not any("Class imbalance" in w.value for w in at.warning)
    draft = drafts.load_draft(home)
    assert draft is not None and draft.class_weight == "balanced"
    assert _open().radio(key="class_weight").value == "balanced"  # a refresh keeps it


def test_the_imbalance_finding_is_the_health_checks(tmp_path: Path) -> None:
    from core.data import load_dataset

    report = health_report(load_dataset(_imbalanced(tmp_path / "d"), val_split=0.2, seed=1))
    finding = views.imbalance_finding(report)
    assert finding is not None and "'common'" in finding and "'rare'" in finding
    assert views.imbalance_finding([{"level": "warning", "message": "Near-empty class"}]) is None


def test_views_table_chart_and_form_values() -> None:
    ranked = rank_candidates(
        [
            _candidate("a", 224, 0.9, 30.0, 1e-3),
            _candidate("b", 160, 0.8, 10.0, 3e-3),
            _candidate("c", 160, 0.7, 40.0, 3e-3),  # beaten on both: not on the front
            Candidate("vgg16", 224, status="needs network"),
        ]
    )
    ranked.append(Candidate("d", 96, status="skipped: budget"))
    rows = views.candidate_rows([c.to_json() for c in ranked])
    assert [r["backbone"] for r in rows] == ["a", "b", "c", "d"]  # network ones: in the note
    assert [r["Pareto"] for r in rows] == [True, True, False, False]
    assert rows[3]["#"] is None and rows[3]["val accuracy"] is None
    assert views.network_note([c.to_json() for c in ranked]) == (
        "Not searched, their ImageNet weights need the network: vgg16. Train one of them once "
        "while online and the next search includes it."
    )
    fig = views.pareto_figure([c.to_json() for c in ranked])
    front = next(t for t in fig.data if t.name == "Pareto front")
    assert list(front.x) == [10.0, 30.0]  # joined from the fastest
    assert [t.name for t in fig.data] == ["Pareto front", "other"]
    values = views.form_values(ranked[1].to_json(), "fine_tuning", (1e-4, 1e-3, 1e-2))
    assert values == {"backbone": "b", "weights": "imagenet", "size": 160, "mode": "fine_tuning",
                      "lr": 1e-3, "epochs": 20}  # fmt: skip
    with pytest.raises(ValueError, match="scratch"):
        views.form_values(ranked[1].to_json(), "scratch", (1e-3,))
    assert views.nearest_stop(1.6e-3, (1e-3, 3e-3)) == 1e-3
    assert views.nearest_stop(2e-3, (1e-3, 3e-3)) == 3e-3  # log scale: 2e-3 is nearer 3e-3
    assert "nearest stop" in views.lr_note(1.6e-3, 1e-3, "Learning rate")
    assert (
        views.lr_note(1e-3, 1e-3, "Learning rate")
        == "Learning rate set to 0.001, the suggested rate."
    )
    lr_fig = views.lr_figure(fake_lr_find(None).to_json())
    assert lr_fig.layout.xaxis.type == "log" and len(lr_fig.layout.shapes) == 1
    text = views.search_progress(
        {"candidates": [c.to_json() for c in ranked[:4]], "started_at": 100.0, "budget_s": 300,
         "stage": {"backbone": "d", "image_size": 96, "done": 32, "total": 120}},
        now=190.0,
    )  # fmt: skip
    assert text == (
        "4 candidates settled, 3 measured; computing d features at 96 px: 32/120 images; "
        "1:30 min of a 5:00 min budget"
    )
