"""Queued runs trained on a Ray cluster's nodes, followed in the run store on the head.

``python -m core worker --ray ADDRESS`` is an ordinary worker of the runs folder (it registers,
beats, claims the oldest queued run, obeys SIGTERM: ``core.training.jobs.run_worker``), except
that it trains each claimed run as a Ray task (``train_on_node``) with the resources the run
needs. The task trains the run into a scratch run store of its own node with the ordinary
trainer, and every ``RELAY_S`` streams back what changed: batch and epoch rows, the run
record's fields (stage, phases, timings, ...), and the run folder's files (checkpoints, the
final model, the evaluation). The head writes them into its store and run folder as they come,
so the dashboard follows the run as it follows a local one.

Stop: the head polls the run's stop flag and sets a ``StopFlag`` actor the task polls; the
trainer stops within a batch, as locally. A node that dies mid-run ends the stream with a Ray
error: the run becomes ``interrupted`` with the last checkpoint the head received, and a
Resume continues it, locally or on any node (the task ships the checkpoint files and the
finished epochs' rows to its node first).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

from core.cluster import require_ray, worker_env
from core.config import RunConfig
from core.files import TEMP_PREFIX, atomic_path
from core.runs.store import FAILED, INTERRUPTED, RunStore

__all__ = [
    "StopFlag",
    "ray_executor",
    "run_resources",
    "train_on_node",
]

RELAY_S = 1.0  # how often a node sends what changed
# The run record's fields a node relays (``RunStore.update`` names, ``result`` values).
RELAYED_FIELDS = (
    "class_names", "train_images", "val_images", "skipped_files", "dataset", "phases", "stage",
    "timings", "device", "replicas", "model_bytes",
)  # fmt: skip
# Files the head keeps for itself: its own copy of the config and of the record.
HEAD_FILES = ("config.json", "record.json")
ProgressFn = Callable[[dict[str, Any]], None]


class StopFlag:
    """A Ray actor holding one run's stop request (the head sets it, the task polls it)."""

    def __init__(self) -> None:
        self.stopped = False

    def set(self) -> None:
        """Ask the run to stop."""
        self.stopped = True

    def is_set(self) -> bool:
        """Whether a stop was asked for."""
        return self.stopped


def _folder_state(folder: Path) -> dict[str, tuple[int, int]]:
    """``name → (mtime_ns, size)`` of a run folder's finished top-level files."""
    state = {}
    for path in folder.iterdir():
        if path.is_file() and not path.name.startswith(TEMP_PREFIX) and path.name not in HEAD_FILES:
            st = path.stat()
            state[path.name] = (st.st_mtime_ns, st.st_size)
    return state


def _changed_files(
    folder: Path, state: dict[str, tuple[int, int]], seen: dict[str, tuple[int, int]]
) -> tuple[dict[str, bytes], dict[str, tuple[int, int]]]:
    """The changed files' bytes, and the stamps of those held back for now.

    A checkpoint travels whole: its weights and optimizer state only with the ``checkpoint.json``
    written after them (read before and after them: unchanged, or the set waits for the next
    relay), so the head never holds one epoch's weights under another epoch's metadata.
    """
    from core.training.checkpoint import META_FILE, OPTIMIZER_FILE, WEIGHTS_FILE

    changed = [n for n, stamp in state.items() if seen.get(n) != stamp]
    parts = {WEIGHTS_FILE, OPTIMIZER_FILE}
    out: dict[str, bytes] = {}
    held: dict[str, tuple[int, int]] = {}
    for name in changed:
        if name not in parts and name != META_FILE:
            out[name] = (folder / name).read_bytes()
    if META_FILE in changed:
        meta = (folder / META_FILE).read_bytes()
        files = {n: (folder / n).read_bytes() for n in parts if (folder / n).is_file()}
        if (folder / META_FILE).read_bytes() == meta:
            out.update(files)
            out[META_FILE] = meta  # last: it is what makes the others count
            return out, held
    for name in changed:  # not a whole checkpoint yet: these go with the next one
        if name in parts or name == META_FILE:
            held[name] = seen.get(name, (0, -1))
    return out, held


def train_on_node(
    config_json: str,
    files: dict[str, bytes],
    epochs: list[dict[str, Any]],
    batches: list[dict[str, Any]],
    stop: Any,
) -> Iterator[dict[str, Any]]:
    """The Ray task: train the run in a scratch store of this node, yielding what changed.

    ``files``/``epochs``/``batches``: the head's checkpoint files and rows of a resumed run.
    Each yield: ``{"batches", "epochs", "fields", "files", "removed"}``; the last one also
    ``{"status", "error"}``.
    """
    import ray

    from core.training.trainer import execute_run

    scratch = Path(tempfile.mkdtemp(prefix="studio-ray-run-"))
    try:
        store = RunStore(scratch, recover=False)
        run_id = store.create_run(RunConfig.from_json(config_json))
        folder = store.run_dir(run_id)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        for record in epochs:
            store.add_epoch(run_id, record)
        store.add_batches(run_id, batches)
        event = threading.Event()
        result: dict[str, str] = {}

        def train() -> None:
            result["status"] = execute_run(store, run_id, event)

        thread = threading.Thread(target=train, name="studio-ray-run", daemon=True)
        thread.start()
        seen_files = _folder_state(folder)
        seen_epochs = {(e["epoch"], e["t"]) for e in store.epochs(run_id)}
        last_step = store.last_step(run_id)
        fields: dict[str, Any] = {}
        node = ray.get_runtime_context().get_node_id()
        while True:
            thread.join(RELAY_S)
            finished = not thread.is_alive()
            if not finished and ray.get(stop.is_set.remote()):
                event.set()
            row = store.get_run(run_id)
            delta: dict[str, Any] = {"node": node, "pid": os.getpid()}
            new_batches = store.batches(run_id, last_step)
            delta["batches"] = [dict(b) for b in new_batches]
            if new_batches:
                last_step = max(b["global_step"] for b in new_batches)
            current = store.epochs(run_id)
            delta["epochs"] = [dict(e) for e in current if (e["epoch"], e["t"]) not in seen_epochs]
            seen_epochs = {(e["epoch"], e["t"]) for e in current}
            record = cast(dict[str, Any], store.result(run_id))  # JSON columns decoded
            changed = {k: record[k] for k in RELAYED_FIELDS if fields.get(k) != record[k]}
            fields.update(changed)
            delta["fields"] = changed
            state = _folder_state(folder)
            delta["files"], held = _changed_files(folder, state, seen_files)
            delta["removed"] = sorted(set(seen_files) - set(state))
            seen_files = {**state, **held}
            if finished:
                delta.update(status=result.get("status", FAILED), error=row["error"])
                yield delta
                return
            yield delta
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _apply(
    store: RunStore, run_id: str, delta: dict[str, Any], progress: ProgressFn | None
) -> None:
    """Write a node's delta into the head's store and run folder."""
    folder = store.run_dir(run_id)
    for name, data in delta["files"].items():
        with atomic_path(folder / name) as tmp:
            tmp.write_bytes(data)
    for name in delta["removed"]:
        (folder / name).unlink(missing_ok=True)
    if delta["batches"]:
        store.add_batches(run_id, delta["batches"])
    for record in delta["epochs"]:
        store.add_epoch(run_id, record)
        if progress is not None:
            progress(record)
    fields = dict(delta["fields"])
    if "model_bytes" in fields and (folder / "model.keras").is_file():
        fields["model_path"] = str(folder / "model.keras")
    if fields:
        store.update(run_id, **fields)


def _lost_run(store: RunStore, run_id: str, exc: Exception) -> tuple[str, str]:
    """The status and error of a run whose task ended with ``exc`` instead of a final status:
    ``failed`` when the task itself raised (its cause is the error), else ``interrupted`` (its
    node or process went away) with the checkpoint epoch the head holds."""
    from ray.exceptions import RayTaskError

    from core.training.checkpoint import resume_point

    if isinstance(exc, RayTaskError):
        cause = exc.cause if exc.cause is not None else exc
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        return FAILED, f"The run failed on its Ray node: {type(cause).__name__}: {first}"
    last = resume_point(store, run_id)[0]
    return INTERRUPTED, (
        f"The Ray node training this run went away ({type(exc).__name__}); its last checkpoint "
        f"(epoch {last}) is here: resume it to continue on any node."
    )


def run_resources(device: str | None) -> dict[str, float]:
    """What a run's task asks Ray for: one GPU when the worker serves GPUs, else one CPU."""
    if device is not None and device.upper().startswith("GPU"):
        return {"num_gpus": 1.0, "num_cpus": 1.0}
    return {"num_gpus": 0.0, "num_cpus": 1.0}


def ray_executor(device: str | None = None) -> Callable[..., str]:
    """``execute(store, run_id, stop_event, progress) -> status``: one claimed run trained as a
    Ray task on the cluster the process is connected to (the worker's ``execute``)."""

    def execute(
        store: RunStore, run_id: str, stop_event: threading.Event, progress: ProgressFn | None
    ) -> str:
        return _execute(store, run_id, stop_event, progress, device)

    return execute


def _execute(
    store: RunStore,
    run_id: str,
    stop_event: threading.Event,
    progress: ProgressFn | None,
    device: str | None,
) -> str:
    from core.training.checkpoint import (
        META_FILE,
        OPTIMIZER_FILE,
        WEIGHTS_FILE,
        remove_temp_files,
        resume_point,
    )

    ray = require_ray()
    folder = store.run_dir(run_id)
    remove_temp_files(folder)
    store.mark_running(run_id)
    done, _meta = resume_point(store, run_id)  # the head drops rows past its checkpoint too
    files = {}
    if done:
        files = {n: (folder / n).read_bytes() for n in (WEIGHTS_FILE, META_FILE, OPTIMIZER_FILE)
                 if (folder / n).is_file()}  # fmt: skip
    epochs = [dict(e) for e in store.epochs(run_id)]
    batches = [dict(b) for b in store.batches(run_id)]
    flag = ray.remote(num_cpus=0)(StopFlag).remote()
    task = ray.remote(train_on_node).options(
        num_returns="streaming", max_retries=0, runtime_env={"env_vars": worker_env()},
        **run_resources(device),
    )  # fmt: skip
    stream = task.remote(store.config(run_id).to_json(indent=None), files, epochs, batches, flag)
    finished = threading.Event()

    def watch_stop() -> None:
        # The stop flag of the store (the Stop button, `stop RUN_ID`) or the worker's own
        # (SIGTERM) reaches the task through the actor.
        while not finished.wait(0.5):
            if stop_event.is_set() or store.stop_requested(run_id):
                flag.set.remote()
                return

    watcher = threading.Thread(target=watch_stop, name="studio-ray-stop", daemon=True)
    watcher.start()
    status: str = INTERRUPTED
    error: str | None = None
    where: dict[str, Any] = {}
    try:
        for ref in stream:
            delta = ray.get(ref)
            if where.get("pid") != delta["pid"]:  # the record says where it trains, at once
                where = {"nodes": 1, "shards": 0, "node": delta["node"], "pid": delta["pid"]}
                store.update(run_id, ray=where)
            _apply(store, run_id, delta, progress)
            if "status" in delta:
                status, error = delta["status"], delta["error"]
    except Exception as exc:
        status, error = _lost_run(store, run_id, exc)
    finally:
        finished.set()
        watcher.join(2)
        try:
            ray.kill(flag)
        except Exception:
            pass
    store.mark_finished(run_id, status, error=error)
    return str(status)
