"""Background tasks: a search or an LR finder run as a child process, followed from a file.

The dashboard runs a task as a child process, ``python -m core task NAME``, and shows its
progress from a small JSON file in the runs folder: a browser refresh (a new session) or a
restarted server finds it there, and only one task of a kind runs per runs folder at a time.
Not in a thread of the server: Streamlit clears the Keras session after every script run (each
2 s poll), under the models such a thread builds ("The name 'dense' is used 2 times").

Next to the state file ``NAME.json``: ``NAME.stop`` (asks the child to stop), ``NAME.log`` (the
child's output) and ``NAME.lock`` (one writer at a time: a starter and the child it spawned).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from core.errors import ConfigError, StudioError
from core.files import atomic_path, read_json, try_write_json
from core.processes import Children, child_environment, core_command, owner_alive, process_token

__all__ = [
    "DONE",
    "FAILED",
    "INTERRUPTED",
    "RUNNING",
    "STOPPED",
    "TaskState",
    "TaskStatus",
    "read_task",
    "TASK_KINDS",
    "TASK_MODULES",
    "TaskFactory",
    "TaskFn",
    "UpdateFn",
    "load_factory",
    "register_task",
    "run_task",
    "start_task",
    "stop_task",
    "stop_task_processes",
    "task_log_path",
    "task_path",
    "task_processes",
    "task_running",
    "task_state",
    "task_stop_path",
    "wait_task",
]


class TaskStatus(StrEnum):
    """Where a task is: ``running``, then ``done``, ``stopped`` or ``failed``; ``interrupted`` is
    a running task whose process is gone."""

    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


RUNNING, DONE, STOPPED, FAILED, INTERRUPTED = (
    TaskStatus.RUNNING, TaskStatus.DONE, TaskStatus.STOPPED, TaskStatus.FAILED,
    TaskStatus.INTERRUPTED,
)  # fmt: skip


@dataclass
class TaskState:
    """A task's state file: the runner's own fields, and the kind's (its settings, progress and
    result) in ``fields``. The file is one flat JSON object (``to_json``), what the pages read."""

    status: TaskStatus
    error: str | None = None  # why it failed, in the user's words
    started_at: float | None = None
    finished_at: float | None = None
    pid: str | None = None  # ``process_token`` of the process running it
    fields: dict[str, Any] = field(default_factory=dict)

    RUNNER_KEYS: ClassVar[tuple[str, ...]] = (
        "status", "error", "started_at", "finished_at", "pid",
    )  # fmt: skip

    @classmethod
    def from_json(cls, data: Any) -> TaskState | None:
        """The state a state file holds (``None``: not a JSON object). An unknown status reads
        as ``interrupted``."""
        if not isinstance(data, dict):
            return None
        status = data.get("status")
        pid = data.get("pid")

        def number(key: str) -> float | None:
            value = data.get(key)
            return float(value) if isinstance(value, (int, float)) else None

        return cls(
            status=TaskStatus(str(status))
            if status in TaskStatus._value2member_map_
            else INTERRUPTED,
            error=data.get("error") if isinstance(data.get("error"), str) else None,
            started_at=number("started_at"),
            finished_at=number("finished_at"),
            pid=pid if isinstance(pid, str) else None,
            fields={k: v for k, v in data.items() if k not in cls.RUNNER_KEYS},
        )

    def to_json(self) -> dict[str, Any]:
        """The flat JSON object of the state file: the kind's fields, then the runner's."""
        return {
            **self.fields, "status": self.status.value, "error": self.error,
            "started_at": self.started_at, "finished_at": self.finished_at, "pid": self.pid,
        }  # fmt: skip

    def merge(self, values: Mapping[str, Any]) -> None:
        """Take ``values`` in: runner keys set their field, the others the kind's."""
        for key, value in values.items():
            if key == "status":
                self.status = TaskStatus(value)
            elif key in self.RUNNER_KEYS:
                setattr(self, key, value)
            else:
                self.fields[key] = value

    def alive(self) -> bool:
        """Whether it runs: its status says so and the process it names is alive."""
        return self.status == RUNNING and owner_alive(self.pid)


UpdateFn = Callable[[dict[str, Any]], None]
TaskFn = Callable[[UpdateFn, Callable[[], bool]], dict[str, Any]]
# A task kind: the task's state (its ``initial`` settings) → its ``run(update, should_stop)``.
TaskFactory = Callable[[dict[str, Any]], TaskFn]
TASK_KINDS: dict[str, TaskFactory] = {}
# Importing these registers the built-in kinds (a child started by hand imports them by name).
TASK_MODULES = ("core.training.search", "core.training.lr_find", "core.training.source_leakage")
_WAIT_POLL_S = 0.05

# The task processes this process started, by (runs folder, task name): reaped, stoppable.
_CHILDREN = Children()


def register_task(name: str, factory: TaskFactory) -> None:
    """Make ``name`` a task kind: ``start_task(root, name, ...)`` runs ``factory(initial)`` in a
    child process. ``factory`` must be a module-level function (the child imports it by name)."""
    TASK_KINDS[name] = factory


def task_path(root: str | os.PathLike[str], name: str) -> Path:
    """The state file of background task ``name`` in runs folder ``root``."""
    return Path(root) / f"{name}.json"


def task_stop_path(root: str | os.PathLike[str], name: str) -> Path:
    """The file that asks task ``name`` of ``root`` to stop (``stop_task`` writes it)."""
    return Path(root) / f"{name}.stop"


def task_log_path(root: str | os.PathLike[str], name: str) -> Path:
    """Where the process of task ``name`` of ``root`` writes its output (appended)."""
    return Path(root) / f"{name}.log"


def _task_key(root: str | os.PathLike[str], name: str) -> tuple[str, str]:
    return (os.path.realpath(root), name)


@contextmanager
def _task_lock(root: str | os.PathLike[str], name: str) -> Iterator[None]:
    """Hold task ``name``'s lock: a starter's check-spawn-write and the child's writes never
    interleave (the child's first write waits for the state naming its pid)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; a start racing another is rare
        yield
        return
    with open(Path(root) / f"{name}.lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def task_running(root: str | os.PathLike[str], name: str) -> bool:
    """Whether task ``name`` of runs folder ``root`` is running: its state says so and the
    process it records (``pid``: pid and start time) is alive, whoever started it."""
    _CHILDREN.reap()
    state = TaskState.from_json(read_json(task_path(root, name)))
    return state is not None and state.alive()


def read_task(root: str | os.PathLike[str], name: str) -> TaskState | None:
    """The last state of task ``name`` (``None``: never run here). One the file says is running
    but whose process is gone (killed, or a state from before tasks had a ``pid``) reads as
    ``interrupted``."""
    _CHILDREN.reap()
    state = TaskState.from_json(read_json(task_path(root, name)))
    if state is not None and state.status == RUNNING and not state.alive():
        state.status = INTERRUPTED
    return state


def task_state(root: str | os.PathLike[str], name: str) -> dict[str, Any] | None:
    """The last state of task ``name`` (``None``: never run here). One the file says is running
    but whose process is gone (killed, or a state from before tasks had a ``pid``) reads as
    ``interrupted``."""
    state = read_task(root, name)
    return None if state is None else state.to_json()


def _factory_name(factory: TaskFactory) -> str:
    """``module:qualname`` of a factory, checked to be importable by a child."""
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        raise ConfigError(
            f"Task factory {factory!r} cannot be found by a child process: it is not a "
            "module-level function of an importable module. Register a function defined at the "
            "top level of a module (register_task(name, factory))."
        )
    return f"{module}:{qualname}"


def _import_root(module: str) -> str | None:
    """The folder ``module`` (``a.b.c``) is imported from in this process (``None``: unknown)."""
    file = getattr(sys.modules.get(module), "__file__", None)
    if not file:
        return None
    path = Path(file).resolve()
    if path.name == "__init__.py":
        path = path.parent
    return str(path.parents[module.count(".")])


def _spawn_task(root: str, name: str, factory: TaskFactory) -> subprocess.Popen[bytes]:
    """``python -m core task NAME --runs-dir ROOT`` in its own session (a Ctrl+C in the server's
    terminal or a server restart does not end it), its output appended to ``NAME.log``."""
    args = ["task", name, "--runs-dir", root, "--factory", _factory_name(factory)]
    # The factory's module found where this process found it (pytest imports a test module
    # from its own folder).
    env = child_environment([_import_root(factory.__module__)])
    try:
        return _CHILDREN.start(
            core_command(args), task_log_path(root, name), env, key=_task_key(root, name)
        )
    except OSError as exc:
        raise StudioError(
            f"Could not start the {name} task ({sys.executable} -m core task {name}): {exc}. "
            f"Check that the runs folder {root} is writable and the Python environment is "
            "still there."
        ) from exc


def start_task(
    root: str | os.PathLike[str], name: str, run: TaskFn | None, initial: dict[str, Any]
) -> bool:
    """Start task ``name`` for runs folder ``root`` in a child process unless it already runs
    there; ``False`` then. The child runs the registered kind's ``factory(initial)`` (``run``
    is not used: a closure cannot cross into another process; pass ``None``).

    Its state (``initial``, each ``update(fields)`` merged in, then what it returns) is written to
    ``task_path``; ``status`` goes from ``running`` to ``done``, ``stopped`` (``stop_task``) or
    ``failed`` (with ``error``, in the user's words); ``pid`` identifies the child process.
    """
    factory = TASK_KINDS.get(name)
    if factory is None:
        raise ConfigError(
            f"Background task {name!r} is unknown. Expected one of "
            f"{', '.join(sorted(TASK_KINDS)) or 'none registered'}; register it with "
            "core.tasks.register_task(name, factory)."
        )
    folder = os.path.realpath(root)
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = task_path(folder, name)
    with _task_lock(folder, name):
        if task_running(folder, name):
            return False
        task_stop_path(folder, name).unlink(missing_ok=True)  # a stop asked of an earlier run
        proc = _spawn_task(folder, name, factory)
        state = TaskState(
            RUNNING, started_at=time.time(), pid=process_token(proc.pid), fields=dict(initial)
        )
        try:
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(state.to_json()))
        except OSError as exc:
            proc.kill()
            proc.wait()
            raise StudioError(
                f"Could not write the {name} task's state to {path}: {exc}. Make the runs "
                "folder writable (or free some disk space) and start it again."
            ) from exc
    return True


def run_task(root: str | os.PathLike[str], name: str, factory: TaskFactory | None = None) -> str:
    """Run task ``name`` of runs folder ``root`` in this process from its state file (what
    ``python -m core task`` does in the child ``start_task`` spawns); its final status.

    ``factory``: the kind's (default: the one registered as ``name``). Run by hand on a state
    whose process is gone, it runs that task again with the same settings.
    """
    make = factory or _registered(name)  # an unknown kind is said before anything is written
    path, me = task_path(root, name), process_token()
    with _task_lock(root, name):  # waits for the starter's state naming this process
        state = TaskState.from_json(read_json(path))
        if state is None:
            raise ConfigError(
                f"No {name} task to run in {root}: {path} is missing or is not a JSON object. "
                "Start the task from the Train page, which writes its settings there."
            )
        owner = state.pid
        if owner != me and state.status == RUNNING and owner_alive(owner):
            raise ConfigError(
                f"The {name} task of {root} is already running (process {owner}). Stop it "
                "first, or wait for it to end."
            )
        if owner != me:  # run by hand: this process takes the task over
            state.started_at = time.time()
        state.merge({"status": RUNNING, "error": None, "finished_at": None, "pid": me})
        try_write_json(path, state.to_json())
    stop_file = task_stop_path(root, name)

    def update(fields: dict[str, Any]) -> None:
        state.merge(fields)
        with _task_lock(root, name):
            try_write_json(path, state.to_json())

    def should_stop() -> bool:
        return stop_file.exists()

    try:
        work = make(state.to_json())
        final = work(update, should_stop)
        update({**final, "status": STOPPED if should_stop() else DONE, "finished_at": time.time()})
    except Exception as exc:  # shown on the page; the traceback goes to the task's log
        traceback.print_exc()
        text = str(exc) if isinstance(exc, StudioError) else f"{type(exc).__name__}: {exc}"
        update({"status": FAILED, "error": text, "finished_at": time.time()})
    finally:
        stop_file.unlink(missing_ok=True)
    return state.status.value


def _registered(name: str) -> TaskFactory:
    """The factory of kind ``name``, the built-in kinds' modules imported first."""
    import importlib

    for module in TASK_MODULES:
        importlib.import_module(module)
    if name not in TASK_KINDS:
        raise ConfigError(
            f"Background task {name!r} is unknown. Expected one of {', '.join(sorted(TASK_KINDS))}."
        )
    return TASK_KINDS[name]


def load_factory(spec: str) -> TaskFactory:
    """The factory a child is told to run: ``"module:qualname"`` (``python -m core task
    --factory``)."""
    import importlib

    module, _, qualname = spec.partition(":")
    try:
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(
            f"Task factory {spec!r} cannot be imported ({exc}). Expected module:function, "
            "e.g. core.training.search:search_task."
        ) from exc
    if not callable(target):
        raise ConfigError(f"Task factory {spec!r} is not a function. Expected module:function.")
    return target  # type: ignore[no-any-return]


def stop_task(root: str | os.PathLike[str], name: str) -> bool:
    """Ask task ``name`` of ``root`` to stop (it ends at its next check, in whichever process
    runs it); whether it was running."""
    if not task_running(root, name):
        return False
    try:
        task_stop_path(root, name).touch()
    except OSError as exc:
        raise StudioError(
            f"Could not ask the {name} task to stop: {exc}. Make the runs folder {root} "
            "writable, or end its process."
        ) from exc
    return True


def wait_task(root: str | os.PathLike[str], name: str, timeout: float | None = None) -> bool:
    """Wait for task ``name`` of ``root`` to end (and its process, if this one started it, to
    exit); whether it has (tests, the CLI)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while task_running(root, name):
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(_WAIT_POLL_S)
    proc = _CHILDREN.get(_task_key(root, name))
    if proc is not None:  # its last write is done; let it exit
        left = 10.0 if deadline is None else max(deadline - time.monotonic(), 0.1)
        try:
            proc.wait(left)
        except subprocess.TimeoutExpired:
            return False
    _CHILDREN.reap()
    return True


def task_processes() -> list[subprocess.Popen[bytes]]:
    """The task processes this process started that are still running."""
    return _CHILDREN.running()


def stop_task_processes(timeout: float = 10.0) -> None:
    """SIGTERM the task processes this process started (each stops at its next check), then
    SIGKILL what is left after ``timeout`` seconds. For tests and a server shutting down."""
    _CHILDREN.stop(timeout)
