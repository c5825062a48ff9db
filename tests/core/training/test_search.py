"""The backbone × image size search: mechanics, ranking, budget stop, cache reuse, the CLI."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core import tasks as tasks_module
from core.config import RunConfig
from core.errors import ConfigError, DataError
from core.processes import process_token
from core.tasks import (
    run_task,
    start_task,
    stop_task,
    task_path,
    task_running,
    task_state,
    wait_task,
)
from core.training import search as search_module
from core.training.search import (
    HEADS,
    LEARNING_RATES,
    NEEDS_NETWORK,
    OK,
    SEARCH_TASK,
    SKIPPED_BUDGET,
    Candidate,
    HeadResult,
    plan_candidates,
    rank_candidates,
    search,
    smaller_size,
    train_head,
)

ROOT = Path(__file__).resolve().parents[3]
CONTRACT = {"backbone", "image_size", "head", "val_accuracy", "latency_ms", "size_mb", "status"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> str:
    """3 classes × 8 noisy 32 px images of a class colour."""
    root = tmp_path_factory.mktemp("search-data")
    rng = np.random.default_rng(0)
    for c, colour in enumerate(((200, 40, 40), (40, 200, 40), (40, 40, 200))):
        folder = root / f"class{c}"
        folder.mkdir()
        for i in range(8):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8), "RGB").save(folder / f"{i}.png")
    return str(root)


def _blobs(n: int, seed: int, counts: tuple[int, ...] = (), spread: float = 1.0) -> tuple:
    """Gaussian blobs in 8 dimensions, one per class (``counts`` rows each)."""
    rng = np.random.default_rng(seed)
    counts = counts or (n, n, n)
    centres = rng.normal(0, 3, (len(counts), 8))
    parts = [c + rng.normal(0, spread, (k, 8)) for c, k in zip(centres, counts, strict=True)]
    x = np.concatenate(parts)
    y = np.concatenate([[i] * k for i, k in enumerate(counts)])
    return x.astype(np.float32), y


def test_default_candidates_are_each_backbones_size_and_one_smaller(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no Keras weights cached: only the Lites
    planned = plan_candidates()
    by_name: dict[str, list[Candidate]] = {}
    for c in planned:
        by_name.setdefault(c.backbone, []).append(c)
    assert [c.image_size for c in by_name["efficientnet_lite0"]] == [224, 160]
    assert [c.image_size for c in by_name["efficientnet_lite1"]] == [240, 160]
    assert [c.image_size for c in by_name["efficientnet_lite2"]] == [260, 192]
    assert [c.image_size for c in by_name["inception_v3"]] == [299, 224]
    assert smaller_size(260, 32) == 192 and smaller_size(96, 80) == 80
    assert all(c.status == "pending" for c in by_name["efficientnet_lite0"])
    assert all(c.status == NEEDS_NETWORK for c in by_name["vgg16"])
    available = plan_candidates("available")
    lites = {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
    assert {c.backbone for c in available} == lites  # bundled weights: all three offline
    assert all(c.status == "pending" for c in available)


def test_a_backbone_needing_the_network_is_listed_not_failed(
    tiny_data: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    seen: list[str] = []
    result = search(
        tiny_data,
        backbones=["mobilenet_v2"],
        sizes=[32, 16],
        progress=lambda c: seen.append(c.status),
    )
    statuses = [c.status for c in result.candidates]
    assert statuses == [NEEDS_NETWORK, "skipped: below mobilenet_v2's minimum of 32 px"]
    assert sorted(seen) == sorted(statuses)  # each was reported as it was settled
    assert result.features_computed == 0 and result.best is None
    row = result.to_json()["candidates"][0]
    assert CONTRACT <= row.keys() and row["val_accuracy"] is None


@pytest.mark.slow
def test_search_measures_ranks_and_reuses_cached_features(
    tiny_data: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished: list[Candidate] = []
    first = search(
        tiny_data, backbones=["mobilenet_v2"], sizes=[32, 40], weights="none",
        progress=finished.append,
    )  # fmt: skip
    assert [c.status for c in first.candidates] == [OK, OK]
    assert len(finished) == 2
    assert first.features_computed == 2 * 24  # every image, once per size
    assert first.train_images + first.val_images == 24 and first.val_images >= 3
    for c in first.candidates:
        assert len(c.heads) == len(HEADS) * len(LEARNING_RATES)
        assert c.latency_ms is not None and c.latency_ms > 0
        assert c.params is not None and c.size_mb == round(c.params * 4 / 1e6, 2)
        assert c.features_cached is False and c.latency_cached is False
    accuracies = [c.val_accuracy for c in first.candidates if c.val_accuracy is not None]
    assert len(accuracies) == len(first.candidates)  # every candidate measured
    assert accuracies == sorted(accuracies, reverse=True)  # best first
    assert first.candidates[0].pareto  # the most accurate is never dominated
    document = json.loads(json.dumps(first.to_json()))
    assert all(CONTRACT <= row.keys() for row in document["candidates"])

    # The same search, its stored results set aside: features from the cache, the base never
    # runs, the heads train again to the same numbers.
    def no_pass(*_args: object, **_kw: object) -> None:
        raise AssertionError("the second search ran a base over the images")

    monkeypatch.setattr("core.training.embeddings.forward_once", no_pass)
    second = search(
        tiny_data, backbones=["mobilenet_v2"], sizes=[32, 40], weights="none",
        reuse_results=False,
    )  # fmt: skip
    assert second.features_computed == 0
    assert all(c.features_cached and c.latency_cached for c in second.candidates)
    assert not any(c.result_cached for c in second.candidates)
    assert [(c.image_size, c.val_accuracy) for c in second.candidates] == [
        (c.image_size, c.val_accuracy) for c in first.candidates
    ]

    # A repeat in a new process (as `python -m core search` twice): the stored results, no
    # feature, no head, and neither TensorFlow nor scikit-learn imported.
    repeat = _search_in_subprocess(tiny_data, ["mobilenet_v2"], [32, 40])
    assert repeat["imported"] == []
    assert repeat["features_computed"] == 0 and repeat["result_cached"] == [True, True]
    assert repeat["features_cached"] == [True, True]
    assert repeat["accuracies"] == [c.val_accuracy for c in first.candidates]


REPEAT_SCRIPT = """
import json, sys
import core.training.search as search_module

def no_head(*args, **kw):
    raise AssertionError("the repeated search trained a head")

search_module.train_head = no_head
data, backbones, sizes = json.loads(sys.argv[1])
result = search_module.search(data, backbones=backbones, sizes=sizes, weights="none")
heavy = ("tensorflow", "keras", "sklearn", "core.training.embeddings")
print(json.dumps({
    "imported": [m for m in heavy if m in sys.modules],
    "features_computed": result.features_computed,
    "result_cached": [c.result_cached for c in result.candidates],
    "features_cached": [c.features_cached for c in result.candidates],
    "accuracies": [c.val_accuracy for c in result.candidates],
    "status": [c.status for c in result.candidates],
}))
"""


def _search_in_subprocess(data: str, backbones: list[str], sizes: list[int]) -> dict:
    """``search`` in a new Python process (this test session's studio home); its summary."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", REPEAT_SCRIPT, json.dumps([data, backbones, sizes])],
        capture_output=True, text=True, cwd=root, env=dict(os.environ), timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_dataset_index_is_read_back_until_a_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core import data as data_module
    from core.training.search import load_index

    root = tmp_path / "data"
    for c in ("a", "b"):
        for i in range(4):
            (root / c).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / c / f"{i}.png")
    first = load_index(str(root), 0.25, 1)
    calls: list[str] = []
    real = data_module.load_dataset

    def counted(source: str, **kw: object) -> object:
        calls.append(source)
        return real(source, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(data_module, "load_dataset", counted)
    assert load_index(str(root), 0.25, 1) == first and calls == []  # nothing changed
    assert load_index(str(root), 0.5, 1) != first and len(calls) == 1  # another split
    Image.new("RGB", (8, 8), (0, 0, 255)).save(root / "a" / "new.png")  # a file added
    again = load_index(str(root), 0.25, 1)
    assert len(calls) == 2 and len(again.train_paths) + len(again.val_paths) == 9


@pytest.mark.slow
def test_the_budget_stops_the_search_between_and_inside_candidates(tiny_data: str) -> None:
    now = [0.0]

    def tick(_candidate: Candidate) -> None:
        now[0] += 100.0  # each finished candidate "takes" 100 s

    result = search(
        tiny_data, backbones=["mobilenet_v2"], sizes=[32, 48, 56], weights="none",
        budget_s=50.0, progress=tick, clock=lambda: now[0],
    )  # fmt: skip
    by_size = {c.image_size: c.status for c in result.candidates}
    assert by_size == {32: OK, 48: SKIPPED_BUDGET, 56: SKIPPED_BUDGET}
    assert result.budget_hit and result.candidates[0].image_size == 32

    # A budget that runs out during a feature pass stops at the next batch; nothing is cached.
    def late(_candidate: Candidate, _done: int, _total: int) -> None:
        now[0] = 1000.0

    now[0] = 0.0
    cut = search(
        tiny_data, backbones=["mobilenet_v2"], sizes=[64], weights="none", budget_s=50.0,
        stage=late, clock=lambda: now[0],
    )  # fmt: skip
    assert [c.status for c in cut.candidates] == [SKIPPED_BUDGET]
    assert cut.candidates[0].heads == []
    again = search(tiny_data, backbones=["mobilenet_v2"], sizes=[64], weights="none")
    assert again.candidates[0].features_cached is False  # the cut pass stored nothing


def _measured(name: str, acc: float, latency: float, loss: float = 0.5) -> Candidate:
    return Candidate(name, 224, status=OK, val_accuracy=acc, val_loss=loss, latency_ms=latency)


def test_ranking_is_by_accuracy_then_loss_and_marks_the_pareto_front() -> None:
    slow_best = _measured("a", 0.95, 40.0)
    fast_good = _measured("b", 0.90, 5.0)
    dominated = _measured("c", 0.85, 20.0)
    tie_worse_loss = _measured("d", 0.95, 30.0, loss=0.9)
    offline = Candidate("e", 224, status=NEEDS_NETWORK)
    ranked = rank_candidates([offline, dominated, fast_good, tie_worse_loss, slow_best])
    assert [c.backbone for c in ranked] == ["a", "d", "b", "c", "e"]
    # d is as accurate as a and faster; b is the fastest: a and c are dominated.
    assert {c.backbone for c in ranked if c.pareto} == {"d", "b"}


def test_the_candidate_becomes_a_run_config_with_the_best_hidden_head() -> None:
    c = _measured("efficientnet_lite0", 0.9, 10.0)
    c.image_size = 160
    c.heads = [
        HeadResult("linear", None, 1e-3, 0.95, 0.2),
        HeadResult("hidden", 256, 3e-3, 0.90, 0.3),
        HeadResult("hidden", 256, 1e-3, 0.85, 0.3),
    ]
    assert c.head == "linear, lr 0.001"
    config = c.to_config(RunConfig(data="builtin:textures"), mode="fine_tuning").validate()
    assert (config.backbone, config.image_size, config.lr) == ("efficientnet_lite0", 160, 3e-3)
    assert (config.mode, config.data, config.dense_units) == (
        "fine_tuning",
        "builtin:textures",
        256,
    )


def test_numpy_heads_learn_and_the_learning_rate_matters() -> None:
    x, y = _blobs(30, seed=1)
    xv, yv = _blobs(10, seed=1)
    for units in (0, 64):
        acc, loss = train_head((x, y), (xv, yv), 3, dense_units=units, lr=3e-2, seed=0)
        assert acc == 1.0 and loss < 0.1
    tiny_lr = train_head((x, y), (xv, yv), 3, dense_units=0, lr=1e-6, epochs=2, seed=0)
    assert tiny_lr[1] > 0.3  # barely moved from the random start


def test_bad_search_settings_are_one_sentence(tiny_data: str) -> None:
    with pytest.raises(Exception, match="Unknown backbone 'nope'"):
        search(tiny_data, backbones=["nope"])
    with pytest.raises(Exception, match="Search budget -1"):
        search(tiny_data, backbones=["mobilenet_v2"], budget_s=-1)
    with pytest.raises(Exception, match="Search weights 'x.h5'"):
        search(tiny_data, backbones=["mobilenet_v2"], weights="x.h5")


def _parser() -> argparse.ArgumentParser:
    from core.cli.search import add_parsers

    parser = argparse.ArgumentParser(prog="python -m core")
    add_parsers(parser.add_subparsers(dest="command"))
    return parser


def test_search_and_lr_find_flags_parse() -> None:
    args = _parser().parse_args(
        ["search", "--backbones", "available", "--sizes", "224,160", "--budget", "2", "--json"]
    )
    assert (args.backbones, args.sizes, args.budget, args.json) == (
        "available",
        [224, 160],
        2,
        True,
    )
    assert args.weights == "imagenet" and args.class_weight is None
    args = _parser().parse_args(
        ["lr-find", "--phase", "fine_tune", "--mode", "fine_tuning", "--class-weight", "balanced"]
    )
    assert (args.phase, args.mode, args.class_weight, args.steps) == (
        "fine_tune", "fine_tuning", "balanced", None,
    )  # fmt: skip
    with pytest.raises(SystemExit):
        _parser().parse_args(["search", "--sizes", "big"])


@pytest.mark.slow
def test_search_command_prints_the_json_contract(
    tiny_data: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from core.cli.search import cmd_search

    args = _parser().parse_args(
        ["search", "--data", tiny_data, "--backbones", "mobilenet_v2", "--sizes", "32",
         "--weights", "none", "--json"]
    )  # fmt: skip
    assert cmd_search(args) == 0
    out, err = capsys.readouterr()
    document = json.loads(out.strip().splitlines()[-1])
    (row,) = document["candidates"]
    assert CONTRACT <= row.keys() and row["status"] == OK
    assert "mobilenet_v2 @ 32 px: val_acc" in err  # a line per finished candidate


# --------------------------------------------------------------------------- background tasks
#
# A task runs in a child process (python -m core task); these kinds are imported there by name.


def sleepy_task(initial: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    """A task kind for the process tests: says which process it runs in, then waits for a stop
    (or ``seconds``)."""

    def run(update: Callable[[dict[str, Any]], None], should_stop: Callable[[], bool]) -> dict:
        update({"child_pid": os.getpid()})
        deadline = time.monotonic() + float(initial.get("seconds", 30))
        while not should_stop() and time.monotonic() < deadline:
            time.sleep(0.02)
        return {"waited": True}

    return run


def failing_task(initial: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    """A task kind whose run fails as a user's data can."""

    def run(update: Callable[[dict[str, Any]], None], should_stop: Callable[[], bool]) -> dict:
        raise DataError(f"No images in {initial['data']}.")

    return run


@pytest.fixture
def kinds(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test task kinds registered; every task process a test started ends with it."""
    monkeypatch.setitem(tasks_module.TASK_KINDS, "sleepy", sleepy_task)
    monkeypatch.setitem(tasks_module.TASK_KINDS, "failing", failing_task)
    yield
    tasks_module.stop_task_processes(timeout=5)
    assert tasks_module.task_processes() == []


def _child_pid(root: Path, name: str, timeout: float = 30) -> int:
    """The pid the task reports from inside its process, once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = task_state(root, name) or {}
        if state.get("child_pid"):
            return int(state["child_pid"])
        assert state.get("status") in (None, "running"), state
        time.sleep(0.05)
    raise AssertionError(f"task {name} did not start within {timeout} s: {task_state(root, name)}")


def test_a_task_runs_in_its_own_process_one_at_a_time_and_stops_from_another(
    tmp_path: Path, kinds: None
) -> None:
    assert start_task(tmp_path, "sleepy", None, {"seconds": 60})
    assert not start_task(tmp_path, "sleepy", None, {"seconds": 60})  # one at a time
    child = _child_pid(tmp_path, "sleepy")
    state = task_state(tmp_path, "sleepy")
    assert state is not None and state["status"] == "running" and state["seconds"] == 60
    assert child != os.getpid() and state["pid"].startswith(f"{child}:")  # the recorded one
    assert task_running(tmp_path, "sleepy")
    assert not start_task(tmp_path, "sleepy", None, {"seconds": 60})  # still one at a time

    # the stop goes through the runs folder: any process (another server) can ask for it
    code = (
        "import sys; from core.tasks import stop_task; "
        f"sys.exit(0 if stop_task({str(tmp_path)!r}, 'sleepy') else 3)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
    assert wait_task(tmp_path, "sleepy", timeout=20)
    state = task_state(tmp_path, "sleepy")
    assert state is not None and (state["status"], state["waited"]) == ("stopped", True)
    assert state["finished_at"] >= state["started_at"]
    assert tasks_module.task_processes() == []  # wait_task saw the process exit
    assert not tasks_module.task_stop_path(tmp_path, "sleepy").exists()
    assert "task sleepy: stopped" in tasks_module.task_log_path(tmp_path, "sleepy").read_text()
    assert not stop_task(tmp_path, "sleepy")  # nothing runs now


@pytest.mark.slow
def test_a_killed_task_reads_as_interrupted_and_a_failure_is_said(
    tmp_path: Path, kinds: None
) -> None:
    assert start_task(tmp_path, "sleepy", None, {"seconds": 60})
    child = _child_pid(tmp_path, "sleepy")
    os.kill(child, signal.SIGKILL)
    assert wait_task(tmp_path, "sleepy", timeout=10)
    state = task_state(tmp_path, "sleepy")
    assert state is not None and state["status"] == "interrupted"
    assert not task_running(tmp_path, "sleepy") and not stop_task(tmp_path, "sleepy")
    raw = json.loads(task_path(tmp_path, "sleepy").read_text())
    assert raw["status"] == "running"  # the file as the dead child left it

    assert start_task(tmp_path, "failing", None, {"data": "/no/such/folder"})
    assert wait_task(tmp_path, "failing", timeout=30)
    state = task_state(tmp_path, "failing")
    assert state is not None and state["status"] == "failed"
    assert state["error"] == "No images in /no/such/folder."  # the user's sentence, no class name
    assert "DataError" in tasks_module.task_log_path(tmp_path, "failing").read_text()


def test_a_state_without_a_pid_reads_as_interrupted(tmp_path: Path) -> None:
    """A state file written by a version that ran tasks in threads (no ``pid``) or whose pid is
    some other live process (a reused pid: the start time differs) is not running."""
    path = task_path(tmp_path, SEARCH_TASK)
    path.write_text(json.dumps({"status": "running", "candidates": [], "stage": None}))
    assert task_state(tmp_path, SEARCH_TASK)["status"] == "interrupted"  # type: ignore[index]
    assert not task_running(tmp_path, SEARCH_TASK) and not stop_task(tmp_path, SEARCH_TASK)
    assert wait_task(tmp_path, SEARCH_TASK, timeout=0)
    path.write_text(json.dumps({"status": "running", "pid": f"{os.getpid()}:1"}))
    assert task_state(tmp_path, SEARCH_TASK)["status"] == "interrupted"  # type: ignore[index]
    path.write_text(json.dumps({"status": "running", "pid": process_token()}))
    assert task_running(tmp_path, SEARCH_TASK)  # this very process: alive


def test_run_task_runs_in_this_process_from_the_state_file(tmp_path: Path, kinds: None) -> None:
    """What the child does, in-process: the state file is the input, stop is the flag file."""
    with pytest.raises(ConfigError, match="No sleepy task to run"):
        run_task(tmp_path, "sleepy", sleepy_task)
    task_path(tmp_path, "sleepy").write_text(json.dumps({"seconds": 30, "status": "done"}))
    tasks_module.task_stop_path(tmp_path, "sleepy").touch()  # asked to stop: ends at once
    assert run_task(tmp_path, "sleepy", sleepy_task) == "stopped"
    state = task_state(tmp_path, "sleepy")
    assert state is not None and state["child_pid"] == os.getpid()
    assert state["pid"] == process_token() and state["waited"] is True
    assert not tasks_module.task_stop_path(tmp_path, "sleepy").exists()
    with pytest.raises(ConfigError, match="Background task 'nope' is unknown"):
        start_task(tmp_path, "nope", None, {})
    with pytest.raises(ConfigError, match="cannot be found by a child process"):
        tasks_module.register_task("local", lambda initial: sleepy_task(initial))
        start_task(tmp_path, "local", None, {})
    tasks_module.TASK_KINDS.pop("local", None)
    with pytest.raises(ConfigError, match="cannot be imported"):
        tasks_module.load_factory("tests.no_such_module:task")
    assert (
        tasks_module.load_factory("core.training.search:search_task") is search_module.search_task
    )


def test_the_task_command_is_hidden_and_parses() -> None:
    args = _parser().parse_args(["task", "search", "--runs-dir", "/r", "--factory", "m:f"])
    assert (args.command, args.name, args.runs_dir, args.factory) == ("task", "search", "/r", "m:f")
    from core.cli import build_parser

    listed = [line.split()[0] for line in build_parser().format_help().splitlines()
              if line.startswith("    ") and line.strip()]  # fmt: skip
    assert "search" in listed and "task" not in listed  # not in the command list


@pytest.mark.slow
def test_a_real_search_and_lr_finder_train_in_their_process_not_the_callers(
    tiny_data: str, tmp_path: Path
) -> None:
    """The dashboard's way in a fresh interpreter: both tasks end with results, and the
    starting process never loads Keras or TensorFlow (Streamlit's session clearing cannot
    reach a model the task builds)."""
    code = f"""
import json, sys
from core.config import RunConfig
from core.tasks import stop_task_processes, task_state, wait_task
from core.training.search import SEARCH_TASK, start_search
from core.training.lr_find import LR_FIND_TASK, start_lr_find
root = {str(tmp_path)!r}
assert start_search(root, {tiny_data!r}, backbones=["mobilenet_v2"], sizes=[32], weights="none")
config = RunConfig(data={tiny_data!r}, backbone="mobilenet_v2", weights="none", image_size=32,
                   augment=False, epochs=1, batch_size=8)
assert start_lr_find(root, config, steps=12)
try:
    ended = [wait_task(root, SEARCH_TASK, timeout=240), wait_task(root, LR_FIND_TASK, timeout=240)]
finally:
    stop_task_processes(timeout=5)  # none left behind, whatever happened
print(json.dumps({{
    "ended": ended, "search": task_state(root, SEARCH_TASK), "lr": task_state(root, LR_FIND_TASK),
    "loaded": [m for m in ("keras", "tensorflow") if m in sys.modules],
}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["loaded"] == [] and facts["ended"] == [True, True]
    search_state, lr_state = facts["search"], facts["lr"]
    assert search_state["status"] == "done", search_state
    (row,) = search_state["candidates"]
    assert CONTRACT <= row.keys() and row["status"] == OK
    assert lr_state["status"] == "done", lr_state
    assert lr_state["phases"] == ["head"] and lr_state["steps"] == 12
    head = lr_state["results"]["head"]
    assert len(head["lrs"]) == len(head["losses"]) > 0 and head["reads"] == "features"


def test_a_task_state_is_a_typed_record_of_its_flat_file(tmp_path: Path) -> None:
    """The state file is one flat JSON object (what the pages read); the runner reads it as a
    ``TaskState``: its own fields typed, the kind's kept apart, a bad status as interrupted."""
    from core.tasks import TaskState, TaskStatus, read_task

    flat = {"data": "builtin:photos", "candidates": [], "status": "stopped", "error": None,
            "started_at": 1.0, "finished_at": 2.0, "pid": "1:2"}  # fmt: skip
    state = TaskState.from_json(flat)
    assert state is not None and state.status is TaskStatus.STOPPED and state.pid == "1:2"
    assert state.fields == {"data": "builtin:photos", "candidates": []}
    assert state.to_json() == flat
    state.merge({"status": "done", "candidates": [1], "finished_at": 3.0})
    assert (state.status, state.fields["candidates"], state.finished_at) == ("done", [1], 3.0)
    assert TaskState.from_json(["not", "a", "state"]) is None
    odd = TaskState.from_json({"status": "exploded"})
    assert odd is not None and odd.status is TaskStatus.INTERRUPTED
    tasks_module.task_path(tmp_path, "x").write_text(json.dumps({**flat, "status": "running"}))
    again = read_task(tmp_path, "x")  # its process (pid 1, another start time) is not it
    assert again is not None and again.status == "interrupted"
    assert task_state(tmp_path, "x") == {**flat, "status": "interrupted"}
