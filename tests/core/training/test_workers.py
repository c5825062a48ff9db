"""Worker processes: the run store is the queue, ``python -m core worker`` trains from it.

- a claim is atomic: many claimers, each queued run taken once;
- a queued run waits for a worker whoever submitted it; a lost worker's run (dead process or a
  stale heartbeat) becomes ``interrupted``, within seconds of a ``kill -9``, and resumes;
- ``core submit`` is instant and TensorFlow-free; ``core worker --device CPU`` records it;
- two workers on one folder train each run exactly once;
- the dashboard's queue (process mode) trains in another process and starts a new worker when
  one was killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.config import RunConfig
from core.processes import process_token
from core.runs.store import (
    COMPLETED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    STOPPED,
    RunStore,
)
from tests.helpers import TINY

ROOT = Path(__file__).resolve().parents[3]
FAKE = RunConfig(data="builtin:textures")  # never trained: claim and recovery only
# A run slow enough to be caught mid-run: the per-epoch pipeline (no feature cache), many epochs.
SLOW = TINY.with_changes(mode="feature_extraction", feature_cache="off", augment=False, epochs=12)


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _core(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _worker(runs: Path, *args: str, log: Path | None = None) -> subprocess.Popen[str]:
    with open(log or os.devnull, "w") as out:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "core", "worker", "--runs-dir", str(runs), *args],
            cwd=ROOT, env=_env(), stdout=out, stderr=out, text=True,
        )  # fmt: skip


@pytest.fixture()
def procs():
    """Processes a test starts; whatever is left is killed at its end."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _until(predicate, timeout: float, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"not within {timeout} s")


# -- the queue in the store (fast, nothing trains) ------------------------------------------------
def test_each_queued_run_is_claimed_exactly_once(tmp_path) -> None:
    store = RunStore(tmp_path)
    queued = [store.create_run(FAKE, claimed=False) for _ in range(40)]
    claimed: list[tuple[int, str]] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def claimer(n: int) -> None:
        mine = RunStore(tmp_path, recover=False)  # its own connections, as another process
        start.wait()
        while (run_id := mine.claim_next(f"{os.getpid()}:test-{n}")) is not None:
            with lock:
                claimed.append((n, run_id))

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = [run_id for _, run_id in claimed]
    assert sorted(ids) == sorted(queued), "every run claimed, none twice"
    assert len({n for n, _ in claimed}) > 1, "the claimers competed"
    for n, run_id in claimed:
        row = store.get_run(run_id)
        assert row["status"] == RUNNING and row["owner"] == f"{os.getpid()}:test-{n}"
    assert store.pending() == []


def test_claims_take_the_oldest_and_skip_runs_a_process_owns(tmp_path) -> None:
    store = RunStore(tmp_path)
    owned = store.create_run(FAKE)  # an in-process queue's (CLI train): created claimed
    first, second = (store.create_run(FAKE, claimed=False) for _ in range(2))
    assert store.pending() == [first, second]
    assert store.claim_next("w:1") == first
    assert store.claim_next("w:1") == second
    assert store.claim_next("w:1") is None
    assert store.status(owned) == QUEUED


def test_cancel_stops_a_queued_run_only_while_nobody_holds_it(tmp_path) -> None:
    store = RunStore(tmp_path)
    waiting, taken = (store.create_run(FAKE, claimed=False) for _ in range(2))
    assert store.claim_next("w:1") == waiting
    assert store.cancel_queued(taken) is True
    assert store.status(taken) == STOPPED
    assert store.cancel_queued(waiting) is False, "a worker holds it: a stop request reaches it"
    assert store.status(waiting) == RUNNING


def test_a_queued_run_waits_for_a_worker_after_its_submitter_is_gone(tmp_path) -> None:
    code = (
        "from core.runs.store import RunStore; from core.config import RunConfig;"
        f"s = RunStore({str(tmp_path)!r});"
        "print(s.create_run(RunConfig(), claimed=False), s.create_run(RunConfig()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    for_workers, in_process = out.stdout.split()
    store = RunStore(tmp_path)  # opening recovers
    assert store.status(for_workers) == QUEUED, "it waits for a worker"
    assert store.status(in_process) == INTERRUPTED, "its own queue died with the process"


def test_a_worker_with_a_stale_heartbeat_loses_its_run(tmp_path) -> None:
    store = RunStore(tmp_path)
    token = process_token()  # a live process: only the heartbeat says it is lost
    store.register_worker(token, "CPU")
    run_id = store.create_run(FAKE, claimed=False)
    assert store.claim_next(token) == run_id
    assert store.recover_interrupted() == []
    assert store.worker_holds(run_id)
    with store._connect() as db:
        db.execute("UPDATE workers SET heartbeat_at = heartbeat_at - 60")
    assert store.recover_interrupted() == [run_id]
    assert store.status(run_id) == INTERRUPTED
    assert store.workers() == [], "the lost worker's row is removed"
    assert not store.heartbeat(token), "its next heartbeat finds its row gone (re-registers)"


def test_one_worker_start_is_reserved_however_many_pages_poll_at_once(tmp_path) -> None:
    store = RunStore(tmp_path)
    tokens: list[str | None] = []
    start = threading.Barrier(8)

    def poll() -> None:
        mine = RunStore(tmp_path, recover=False)
        start.wait()
        tokens.append(mine.reserve_worker_start())

    threads = [threading.Thread(target=poll) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    reserved = [t for t in tokens if t is not None]
    assert len(reserved) == 1 and len(tokens) == 8, tokens
    assert store.reserve_worker_start() is None, "a start under way counts as a live worker"
    worker = process_token()
    store.worker_started(reserved[0], os.getpid())
    store.register_worker(worker, "CPU", replaces=reserved[0])
    assert [(w["token"], w["state"]) for w in store.workers()] == [(worker, "idle")]
    assert store.reserve_worker_start() is None, "a live worker: nothing to start"
    store.remove_worker(worker)
    assert store.reserve_worker_start() is not None


def test_an_old_store_gains_the_workers_table(tmp_path) -> None:
    import sqlite3

    store = RunStore(tmp_path)
    run_id = store.create_run(FAKE)
    with sqlite3.connect(store.db_path) as db:
        db.execute("DROP TABLE workers")
    reopened = RunStore(tmp_path)
    assert reopened.status(run_id) == QUEUED
    reopened.register_worker(process_token())
    assert [w["state"] for w in reopened.workers()] == ["idle"]


# -- the commands ---------------------------------------------------------------------------------
def test_submit_queues_at_once_without_tensorflow(tmp_path) -> None:
    code = (
        "import json, sys, time; t = time.perf_counter(); from core.cli import main;"
        f"rc = main(['submit', '--runs-dir', {str(tmp_path)!r}, '--data', 'builtin:textures',"
        "'--epochs', '1', '--json']);"
        "print(json.dumps({'rc': rc, 's': time.perf_counter() - t,"
        "'tf': 'tensorflow' in sys.modules or 'keras' in sys.modules}), file=sys.stderr)"
    )
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    facts = json.loads(done.stderr.strip().splitlines()[-1])
    run_id = json.loads(done.stdout.strip().splitlines()[-1])["run_id"]
    print(f"submit: {facts['s']:.3f} s in the command, {wall:.2f} s with the interpreter")
    assert facts["rc"] == 0 and not facts["tf"], "submit must not load TensorFlow"
    assert facts["s"] < 1.0
    store = RunStore(tmp_path)
    assert store.pending() == [run_id] and store.status(run_id) == QUEUED
    assert "python -m core worker" in done.stderr, "it says that no worker serves the folder"
    assert "python -m core worker" in " ".join(_core("submit", "--help").stdout.split())


def test_an_idle_worker_exits_after_idle_exit_or_when_its_parent_is_gone(tmp_path, procs) -> None:
    idle = _worker(tmp_path, "--idle-exit", "0.5")
    # The parent lives until told (a timed one could be gone before a slow worker registers).
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    orphan = _worker(tmp_path, "--parent", str(parent.pid))
    procs += [idle, orphan, parent]  # the fixture kills what is left
    assert idle.wait(30) == 0
    store = RunStore(tmp_path, recover=False)
    _until(lambda: any(w["pid"] == orphan.pid for w in store.workers()), 60)
    time.sleep(1.0)  # a few idle polls with the parent alive
    assert orphan.poll() is None, "alive while its parent is"
    parent.kill()  # not waited for: a zombie until the fixture reaps it
    assert orphan.wait(30) == 0, "exits once the parent is gone (a zombie counts as gone)"
    assert store.workers() == [], "each removed its row"


@pytest.mark.slow
def test_a_cpu_worker_records_its_device_and_stops_cleanly_on_sigterm(tmp_path, procs) -> None:
    store = RunStore(tmp_path)
    quick = store.create_run(TINY, claimed=False)
    log = tmp_path / "worker.out"
    worker = _worker(tmp_path, "--device", "CPU", log=log)
    procs.append(worker)
    _until(lambda: store.status(quick) not in (QUEUED, RUNNING), 300, 0.5)
    result = store.result(quick)
    assert result["status"] == COMPLETED, log.read_text()[-3000:]
    assert result["device"] and result["device"].startswith("CPU"), result["device"]
    assert int(result_owner_pid(store, quick)) == worker.pid

    slow = store.create_run(SLOW, claimed=False)
    _until(lambda: store.get_run(slow)["epochs_done"] >= 1, 300)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0, log.read_text()[-3000:]
    assert store.status(slow) == STOPPED, "stopped within a batch, resumable"
    assert store.workers() == [], "its row is removed"


def result_owner_pid(store: RunStore, run_id: str) -> str:
    owner = store.get_run(run_id)["owner"] or ""
    return owner.partition(":")[0]


@pytest.mark.slow
def test_two_workers_on_one_folder_train_each_run_exactly_once(tmp_path, procs) -> None:
    queued = [
        json.loads(
            _core(
                "submit", "--runs-dir", str(tmp_path), "--data", "builtin:textures",
                "--backbone", "mobilenet_v2", "--weights", "none", "--image-size", "32",
                "--epochs", "2", "--seed", str(seed), "--json",
            ).stdout.strip().splitlines()[-1]
        )["run_id"]
        for seed in range(4)
    ]  # fmt: skip
    logs = [tmp_path / f"worker{n}.out" for n in range(2)]
    workers = [_worker(tmp_path, "--idle-exit", "5", log=log) for log in logs]
    procs += workers
    for worker, log in zip(workers, logs, strict=True):
        assert worker.wait(600) == 0, log.read_text()[-3000:]
    store = RunStore(tmp_path)
    texts = [log.read_text() for log in logs]
    for run_id in queued:
        result = store.result(run_id)
        assert result["status"] == COMPLETED, result["error"]
        assert result["history"]["epoch"] == [1, 2], "every planned epoch, none twice"
        starts = sum(text.count(f"run {run_id}: feature_extraction") for text in texts)
        assert starts == 1, f"{run_id} started {starts} times"
    by = [text.count(": completed") for text in texts]
    print(f"runs per worker: {by}")
    assert sum(by) == 4
    assert store.workers() == []


@pytest.mark.slow
def test_a_killed_worker_leaves_its_run_interrupted_within_seconds_and_it_resumes(
    tmp_path, procs
) -> None:
    store = RunStore(tmp_path)
    run_id = store.create_run(SLOW, claimed=False)
    log = tmp_path / "worker.out"
    worker = _worker(tmp_path, log=log)
    procs.append(worker)
    _until(lambda: store.get_run(run_id)["epochs_done"] >= 2, 300)
    assert store.status(run_id) == RUNNING, log.read_text()[-3000:]
    os.kill(worker.pid, signal.SIGKILL)
    killed = time.monotonic()
    # What the dashboard's polls (and idle workers, and every CLI command) do.
    _until(lambda: store.recover_interrupted() or store.status(run_id) != RUNNING, 10, 0.2)
    seconds = time.monotonic() - killed
    print(f"interrupted {seconds:.2f} s after kill -9")
    assert store.status(run_id) == INTERRUPTED
    assert seconds < 5
    worker.wait(10)
    done = _core("resume", run_id, "--runs-dir", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == COMPLETED
    assert result["history"]["epoch"] == list(range(1, SLOW.planned_epochs + 1))


@pytest.mark.slow
def test_the_dashboard_queue_trains_in_a_worker_and_replaces_a_killed_one(tmp_path) -> None:
    from core.training import jobs

    queue = jobs.get_job_queue(tmp_path, processes=True)
    long_run = queue.submit(SLOW)
    next_run = queue.submit(TINY)
    first = jobs.spawned_workers()
    assert len(first) == 1, "one worker for the folder, however many runs wait"
    assert next_run in queue.pending(), "it waits behind the first run"
    store = queue.store
    _until(lambda: store.get_run(long_run)["epochs_done"] >= 1, 300)
    owner = int(result_owner_pid(store, long_run))
    assert owner == first[0].pid and owner != os.getpid(), "the server process never trains"
    assert not queue.ensure_worker(), "a live worker: none started"

    os.kill(first[0].pid, signal.SIGKILL)
    killed = time.monotonic()
    # The dashboard's monitor polls ensure_worker every 2 s.
    _until(lambda: queue.ensure_worker() or store.status(long_run) == INTERRUPTED, 10, 0.5)
    print(f"interrupted {time.monotonic() - killed:.2f} s after kill -9")
    assert queue.wait(long_run, timeout=30) == INTERRUPTED
    _until(lambda: queue.ensure_worker() or len(jobs.spawned_workers()) == 1, 20, 0.5)
    assert queue.wait(next_run, timeout=300) == COMPLETED
    second = int(result_owner_pid(store, next_run))
    assert second not in (first[0].pid, os.getpid()), "a new worker trained the next run"
