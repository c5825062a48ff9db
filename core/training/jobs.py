"""The process-wide job queue: runs train one at a time in a worker thread.

The dashboard holds one queue per process (via ``st.cache_resource`` around ``get_job_queue``);
the CLI uses the same queue and waits. The worker never touches Streamlit: everything it has to say
goes into the run store, which pages poll.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from pathlib import Path

from core.config import RunConfig, Status
from core.errors import StorageError, StudioError
from core.paths import runs_root
from core.runs.store import ACTIVE_STATUSES, FAILED, INTERRUPTED, QUEUED, STOPPED, RunStore
from core.training.trainer import ProgressFn, execute_run

RESUMABLE: tuple[Status, ...] = (STOPPED, INTERRUPTED, FAILED)


class JobQueue:
    """FIFO of run ids with one worker thread; submit, stop, inspect, wait."""

    def __init__(self, runs_dir: str | os.PathLike[str] | None = None) -> None:
        self.store = RunStore(runs_dir)
        self._queue: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._stop_events: dict[str, threading.Event] = {}
        self._submitted_keys: dict[str, str] = {}
        self._progress: dict[str, ProgressFn] = {}
        # What the worker returned for runs it finished: ``wait`` trusts it when the store
        # could not record the end (a full or read-only disk), so no caller waits forever.
        self._outcomes: dict[str, Status] = {}
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
        """
        config.validate()
        with self._lock:
            if key is not None and key in self._submitted_keys:
                return self._submitted_keys[key]
            run_id = self.store.create_run(config)
            if key is not None:
                self._submitted_keys[key] = run_id
            self._enqueue(run_id, progress)
        return run_id

    def resume(self, run_id: str, progress: ProgressFn | None = None) -> str:
        """Queue a stopped, interrupted or failed run again; it continues from its checkpoint."""
        status = self.store.status(run_id)
        if status not in RESUMABLE:
            raise StudioError(
                f"Run {run_id} is {status}; only {', '.join(RESUMABLE)} runs can be resumed."
            )
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
        self.store.request_stop(run_id)  # also reaches a run owned by another process
        if event is not None:
            event.set()

    def pending(self) -> list[str]:
        """Queued run ids in the order they will run."""
        with self._lock:
            return list(self._pending)

    def wait(self, run_id: str, timeout: float | None = None, poll: float = 0.2) -> Status:
        """Block until the run leaves queued/running; returns its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
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
                return status
            if outcome is not None:
                return outcome  # the worker is done with it, whatever the store still says
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Run {run_id} still {status} after {timeout} s")
            time.sleep(poll)

    # -- worker ---------------------------------------------------------------------------
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
                    outcome = Status(execute_run(self.store, run_id, event, progress))
            except Exception as exc:  # the worker must outlive any one run
                outcome = FAILED
                print(f"error: run {run_id} could not be started: {exc}", file=sys.stderr)
            finally:
                with self._lock:
                    self._stop_events.pop(run_id, None)
                    if outcome is not None:
                        self._outcomes[run_id] = outcome


_QUEUES: dict[Path, JobQueue] = {}
_QUEUES_LOCK = threading.Lock()


def get_job_queue(runs_dir: str | os.PathLike[str] | None = None) -> JobQueue:
    """The process-wide queue for a runs folder (one worker per folder and process)."""
    root = runs_root(runs_dir)  # only the folder: the queue opens (and recovers) the store once
    with _QUEUES_LOCK:
        if root not in _QUEUES:
            _QUEUES[root] = JobQueue(root)
        return _QUEUES[root]
