"""Job queues: runs train one at a time, in a thread of this process or in worker processes.

Two ways of running, one API (``submit``, ``resume``, ``stop``, ``pending``, ``wait``, ``.store``):

- in-process (``JobQueue(root)``): a worker thread of this process trains the runs it was given.
  The CLI's ``train`` and ``resume`` use it (the run is created claimed by this process, so no
  worker process takes it), and so does the worker command itself.
- process workers (``JobQueue(root, processes=True)``, the dashboard's): ``submit`` only writes
  the queued row; a ``python -m core worker`` process claims it from the run store
  (``RunStore.claim_next``) and trains it. ``ensure_worker`` starts one when runs wait and no
  worker is alive, so the server process never imports TensorFlow to train.

Nothing here touches Streamlit: everything a run has to say goes into the run store, which
pages poll. TensorFlow is imported only where a run trains (``execute_run``), so the queue of
the dashboard, ``core submit`` and a worker choosing its device stay light.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from core.config import RunConfig, Status
from core.errors import ConfigError, StorageError, StudioError
from core.paths import runs_root
from core.processes import Children, child_environment, core_command, pid_alive, process_token
from core.runs.store import (
    ACTIVE_STATUSES,
    FAILED,
    HEARTBEAT_S,
    INTERRUPTED,
    QUEUED,
    STOPPED,
    RunStore,
)

if TYPE_CHECKING:  # the trainer imports Keras: only a thread or process that trains loads it
    from core.training.trainer import ProgressFn

__all__ = [
    "IDLE_POLL_S",
    "RECOVER_EVERY_S",
    "RESUMABLE",
    "SLOT_ENV",
    "WORKER_LOG",
    "JobQueue",
    "WorkerOptions",
    "device_environment",
    "get_job_queue",
    "run_worker",
    "spawn_worker",
    "spawned_workers",
    "stop_spawned_workers",
]

RESUMABLE: tuple[Status, ...] = (STOPPED, INTERRUPTED, FAILED)
WORKER_LOG = "worker.log"  # in the runs folder: the output of the workers the dashboard starts
IDLE_POLL_S = 0.5  # how often an idle worker looks for a queued run
RECOVER_EVERY_S = 2.0  # how often an idle worker (or a waiting caller) looks for lost runs
OWN_RUN_POLL_S = 2.0  # how often ``wait`` reads the store for a run its own worker thread has
# A started worker's reservation (its ``starting`` row), which it replaces with its own row.
SLOT_ENV = "TRANSFER_STUDIO_WORKER_SLOT"
_DEVICE = re.compile(r"^(CPU|GPU:(\d+))$", re.IGNORECASE)


class JobQueue:
    """FIFO of runs, trained one at a time; submit, stop, inspect, wait.

    ``processes=False``: a thread of this process trains what was submitted here.
    ``processes=True``: the run store is the queue and worker processes train (see module doc).
    """

    def __init__(
        self, runs_dir: str | os.PathLike[str] | None = None, processes: bool = False
    ) -> None:
        self.store = RunStore(runs_dir)
        self.processes = processes
        self._queue: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()
        # Notified when this process's worker thread lets go of a run: ``wait`` on a run of
        # its own sleeps on it rather than reading the store five times a second (a training
        # run shares the machine's two cores with those reads).
        self._let_go = threading.Condition(self._lock)
        self._pending: list[str] = []
        self._stop_events: dict[str, threading.Event] = {}
        self._submitted_keys: dict[str, str] = {}
        self._progress: dict[str, ProgressFn] = {}
        # What the worker returned for runs it finished: ``wait`` trusts it when the store
        # could not record the end (a full or read-only disk), so no caller waits forever.
        self._outcomes: dict[str, Status] = {}
        self._last_recover = 0.0
        self._worker: threading.Thread | None = None
        if not processes:
            self._worker = threading.Thread(
                target=self._work, name="transfer-studio-worker", daemon=True
            )
            self._worker.start()

    # -- public API -----------------------------------------------------------------------
    def submit(
        self, config: RunConfig, key: str | None = None, progress: ProgressFn | None = None
    ) -> str:
        """Validate and queue a run; returns its id.

        ``key`` makes submission idempotent: a page passes one per click, so a rerun of the same
        script (or a double click) returns the already queued run instead of queueing a copy.
        ``progress`` (per finished epoch) is called only by an in-process queue: a worker
        process reports through the store.
        """
        config.validate()
        with self._lock:
            if key is not None and key in self._submitted_keys:
                return self._submitted_keys[key]
            run_id = self.store.create_run(config, claimed=not self.processes)
            if key is not None:
                self._submitted_keys[key] = run_id
            if not self.processes:
                self._enqueue(run_id, progress)
        if self.processes:
            self.ensure_worker()
        return run_id

    def resume(self, run_id: str, progress: ProgressFn | None = None) -> str:
        """Queue a stopped, interrupted or failed run again; it continues from its checkpoint."""
        status = self.store.status(run_id)
        if status not in RESUMABLE:
            raise StudioError(
                f"Run {run_id} is {status}; only {', '.join(RESUMABLE)} runs can be resumed."
            )
        if self.processes:
            self.store.requeue(run_id, claimed=False)
            self.ensure_worker()
            return run_id
        with self._lock:
            self.store.requeue(run_id)
            self._enqueue(run_id, progress)
        return run_id

    def _enqueue(self, run_id: str, progress: ProgressFn | None) -> None:
        # Caller holds self._lock.
        self._outcomes.pop(run_id, None)  # an earlier attempt's outcome says nothing of this one
        self._stop_events[run_id] = threading.Event()
        if progress is not None:
            self._progress[run_id] = progress
        self._pending.append(run_id)
        self._queue.put(run_id)

    def stop(self, run_id: str) -> None:
        """Stop a running run within one batch, or cancel a queued one."""
        with self._lock:
            if run_id in self._pending:
                self._pending.remove(run_id)
                self._stop_events.pop(run_id, None)  # the worker will never hold it
                self._progress.pop(run_id, None)
                self.store.request_stop(run_id)
                self.store.mark_finished(run_id, STOPPED, error=None)
                return
            event = self._stop_events.get(run_id)
        # Queued for the worker processes and not taken yet: cancelled here, atomically.
        if event is None and self.store.cancel_queued(run_id):
            return
        self.store.request_stop(run_id)  # also reaches a run owned by another process
        if event is not None:
            event.set()

    def pending(self) -> list[str]:
        """Queued run ids in the order they will run."""
        if self.processes:
            return self.store.pending()
        with self._lock:
            return list(self._pending)

    def wait(self, run_id: str, timeout: float | None = None, poll: float = 0.2) -> Status:
        """Block until the run leaves queued/running and its worker let go of it; returns its
        status. A worker process killed meanwhile ends the wait with ``interrupted``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last_recover = time.monotonic()
        while True:
            try:
                status: Status | None = self.store.status(run_id)
            except StorageError:
                status = None  # a full disk can fail even reads for a moment; the worker decides
            with self._lock:
                outcome = self._outcomes.get(run_id)
                ours = run_id in self._stop_events  # this worker has not let go of it yet
            if status is not None and status not in ACTIVE_STATUSES and not ours:
                # Not before the worker lets go: after recording a run completed it still
                # removes the checkpoint, and a CLI that exits at once would leave it behind.
                if not self.store.worker_holds(run_id):
                    return status
            if outcome is not None:
                return outcome  # the worker is done with it, whatever the store still says
            if status in ACTIVE_STATUSES and time.monotonic() - last_recover > RECOVER_EVERY_S:
                last_recover = time.monotonic()
                try:
                    self.store.recover_interrupted()  # its worker process may have been killed
                    self.ensure_worker()  # and the next queued run needs a new one
                except StudioError as exc:  # a busy or full disk: the next poll tries again
                    print(f"warning: {exc}", file=sys.stderr)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Run {run_id} still {status} after {timeout} s")
            with self._lock:
                if run_id in self._stop_events and run_id not in self._outcomes:
                    # Our worker thread has it: woken when it lets go; the store is read again
                    # now and then all the same (a stop set by another process, a dead disk).
                    left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                    self._let_go.wait(OWN_RUN_POLL_S if left is None else min(OWN_RUN_POLL_S, left))
                    continue
            time.sleep(poll)

    def ensure_worker(self) -> bool:
        """Process mode: mark runs of dead workers ``interrupted`` and start a worker process
        when runs wait and no worker is alive (or being started). Returns whether one was
        started. Cheap (a few reads): the dashboard calls it on its polls."""
        if not self.processes:
            return False
        _SPAWNED.reap()
        now = time.monotonic()
        if now - self._last_recover >= HEARTBEAT_S:
            self._last_recover = now
            self.store.recover_interrupted()
        if not self.store.pending():
            return False
        token = self.store.reserve_worker_start()
        if token is None:
            return False  # a live worker will take it (or one is starting)
        try:
            proc = spawn_worker(self.store.root, parent=os.getpid(), slot=token)
        except OSError as exc:
            self.store.remove_worker(token)
            raise StudioError(
                f"Could not start a training worker ({sys.executable} -m core worker): {exc}. "
                f"Start one yourself: python -m core worker --runs-dir {self.store.root}"
            ) from exc
        self.store.worker_started(token, proc.pid)
        return True

    # -- worker thread (in-process mode) ---------------------------------------------------
    def _work(self) -> None:
        while True:
            run_id = self._queue.get()
            with self._lock:
                if run_id not in self._pending:  # cancelled while queued
                    continue
                self._pending.remove(run_id)
                event = self._stop_events[run_id]
                progress = self._progress.pop(run_id, None)
            outcome: Status | None = None
            try:
                if self.store.status(run_id) == QUEUED:
                    from core.training.trainer import execute_run  # imports Keras

                    outcome = Status(execute_run(self.store, run_id, event, progress))
            except Exception as exc:  # the worker must outlive any one run
                outcome = FAILED
                print(f"error: run {run_id} could not be started: {exc}", file=sys.stderr)
            finally:
                with self._lock:
                    self._stop_events.pop(run_id, None)
                    if outcome is not None:
                        self._outcomes[run_id] = outcome
                    self._let_go.notify_all()


_QUEUES: dict[tuple[Path, bool], JobQueue] = {}
_QUEUES_LOCK = threading.Lock()


def get_job_queue(
    runs_dir: str | os.PathLike[str] | None = None, processes: bool = False
) -> JobQueue:
    """The process-wide queue for a runs folder (one per folder, mode and process).

    The dashboard asks for ``processes=True``: its runs train in worker processes.
    """
    root = runs_root(runs_dir)  # only the folder: the queue opens (and recovers) the store once
    with _QUEUES_LOCK:
        if (root, processes) not in _QUEUES:
            _QUEUES[(root, processes)] = JobQueue(root, processes=processes)
        return _QUEUES[(root, processes)]


# -- worker processes ---------------------------------------------------------------------------
_SPAWNED = Children()  # workers this process started (reaped, stoppable)


def spawn_worker(
    root: Path, parent: int | None = None, slot: str | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python -m core worker --runs-dir root [--parent PID]`` detached from this process
    (its own session: a Ctrl+C in the server's terminal does not kill a run), its output
    appended to ``root/worker.log``. ``slot``: the ``starting`` row it replaces when it runs."""
    args = ["worker", "--runs-dir", str(root)]
    if parent is not None:
        args += ["--parent", str(parent)]
    env = child_environment(set_env={SLOT_ENV: slot})
    return _SPAWNED.start(core_command(args), root / WORKER_LOG, env)


def spawned_workers() -> list[subprocess.Popen[bytes]]:
    """The worker processes this process started that are still running."""
    return _SPAWNED.running()


def stop_spawned_workers(timeout: float = 15.0) -> None:
    """SIGTERM the workers this process started (each stops its run cleanly), then SIGKILL
    what is left after ``timeout`` seconds. For tests and a server shutting down."""
    _SPAWNED.stop(timeout)


def device_environment(device: str | None) -> tuple[str | None, dict[str, str]]:
    """``--device`` → (its normal spelling, the environment that makes TensorFlow see only it).

    ``CPU`` hides every GPU; ``GPU:N`` shows only GPU N (TensorFlow then calls it GPU:0).
    Must be in the environment before TensorFlow is imported.
    """
    if device is None:
        return None, {}
    match = _DEVICE.match(device.strip())
    if match is None:
        raise ConfigError(
            f"--device {device!r} is not a device. Expected CPU or GPU:N (e.g. GPU:0, the first "
            "GPU; `nvidia-smi -L` lists them)."
        )
    if match.group(2) is None:
        return "CPU", {"CUDA_VISIBLE_DEVICES": "-1"}
    return f"GPU:{int(match.group(2))}", {"CUDA_VISIBLE_DEVICES": str(int(match.group(2)))}


@dataclass(frozen=True)
class WorkerOptions:
    """What ``python -m core worker`` was asked to do."""

    runs_dir: str | None = None
    device: str | None = None  # CPU or GPU:N (None: whatever TensorFlow finds)
    once: bool = False  # train at most one run, then exit (also when none is queued)
    idle_exit: float | None = None  # exit after this many idle seconds
    parent: int | None = None  # exit (when idle) once this process is gone
    # How a claimed run is trained: ``execute(store, run_id, stop_event, progress) -> status``;
    # None: ``core.training.trainer.execute_run`` in this process (a Ray worker passes its own).
    execute: Callable[..., str] | None = None


def run_worker(
    options: WorkerOptions,
    progress_for: Callable[[RunConfig], ProgressFn] | None = None,
) -> int:
    """Train queued runs of a runs folder, one at a time, until told to stop; returns the exit
    code. SIGTERM/SIGINT stop the current run cleanly (it can be resumed) and end the worker.
    """
    device, env = device_environment(options.device)
    if env and "tensorflow" in sys.modules:
        raise StudioError("--device must be set before TensorFlow is imported.")
    os.environ.update(env)
    store = RunStore(options.runs_dir)
    token = process_token()
    store.register_worker(token, device, replaces=os.environ.pop(SLOT_ENV, None))
    shutdown = threading.Event()
    current: dict[str, threading.Event] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only events here: the main thread may be inside a store transaction.
        shutdown.set()
        for event in list(current.values()):
            event.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    beating = threading.Event()
    holding: list[str | None] = [None]

    def beat() -> None:
        while not beating.wait(HEARTBEAT_S):
            try:
                if not store.heartbeat(token):  # taken for dead (a long stall): say so again
                    store.register_worker(token, device)
                    if holding[0] is not None:
                        store.hold_run(token, holding[0])
            except Exception as exc:  # a busy or full disk: the next beat tries again
                print(f"warning: worker heartbeat failed: {exc}", file=sys.stderr)

    heart = threading.Thread(target=beat, name="transfer-studio-heartbeat", daemon=True)
    heart.start()
    print(
        f"worker {token} serving {store.root}" + (f" on {device}" if device else ""),
        file=sys.stderr,
        flush=True,
    )
    idle_since = time.monotonic()
    last_recover = 0.0
    failures = 0
    try:
        while not shutdown.is_set():
            try:
                run_id = store.claim_next(token)
                failures = 0
            except StudioError as exc:  # the store is busy or its disk full: try again soon
                failures += 1
                print(f"warning: worker could not read the queue: {exc}", file=sys.stderr)
                if failures >= 30:
                    return 1
                shutdown.wait(IDLE_POLL_S * 4)
                continue
            if run_id is None:
                if options.once:
                    break
                now = time.monotonic()
                if now - last_recover >= RECOVER_EVERY_S:
                    last_recover = now
                    store.recover_interrupted()
                if options.idle_exit is not None and now - idle_since >= options.idle_exit:
                    break
                if options.parent is not None and not pid_alive(options.parent):
                    break
                shutdown.wait(IDLE_POLL_S)
                continue
            holding[0] = run_id
            _train_claimed(
                store, token, run_id, device, current, shutdown, progress_for, options.execute
            )
            holding[0] = None
            idle_since = time.monotonic()
            if options.once:
                break
    finally:
        beating.set()
        heart.join(5)
        try:
            store.remove_worker(token)
        except StudioError as exc:
            print(f"warning: could not remove this worker's row: {exc}", file=sys.stderr)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"worker {token} exits", file=sys.stderr, flush=True)
    return 0


def _train_claimed(
    store: RunStore,
    token: str,
    run_id: str,
    device: str | None,
    current: dict[str, threading.Event],
    shutdown: threading.Event,
    progress_for: Callable[[RunConfig], ProgressFn] | None,
    execute: Callable[..., str] | None = None,
) -> None:
    """Train a run this worker claimed, then let go of it (the store says so)."""
    event = threading.Event()
    current[run_id] = event
    if shutdown.is_set():  # a signal between the claim and here
        event.set()
    try:
        if device is not None:
            store.update(run_id, device=device)
        config = store.config(run_id)
        print(f"run {run_id}: {config.mode} {config.backbone} on {config.data}", file=sys.stderr)
        if execute is None:
            from core.training.trainer import execute_run  # imports Keras (after the device)

            execute = execute_run
        progress = progress_for(config) if progress_for is not None else None
        status = execute(store, run_id, event, progress)
        print(f"run {run_id}: {status}", file=sys.stderr, flush=True)
    except Exception as exc:  # the worker outlives any one run
        print(f"error: run {run_id} could not be trained: {exc}", file=sys.stderr, flush=True)
        try:
            store.mark_finished(run_id, FAILED, error=f"The worker could not train it: {exc}")
        except StudioError:
            pass  # the store is what failed: recover_interrupted marks it once we are gone
    finally:
        current.pop(run_id, None)
        store.release_worker_run(token)
