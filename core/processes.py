"""Processes of ``python -m core``: who is alive, and the children a process starts.

A process is named by a token (pid plus start time, so a reused pid is not mistaken for the old
process): run owners, workers and tasks are recorded by it and checked with ``owner_alive``.
Training workers and the Train page's tasks are started the same way (detached, in their own
session, output appended to a log in the runs folder) and a process that started some must be
able to list and end them (tests, a server shutting down), so that lives here once: ``Children``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "PROJECT_ROOT",
    "Children",
    "child_environment",
    "core_command",
    "owner_alive",
    "pid_alive",
    "process_token",
]

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # on a child's PYTHONPATH


def process_token(pid: int | None = None) -> str:
    """Identify a live process robustly: pid plus its start time (guards against pid reuse)."""
    pid = os.getpid() if pid is None else pid
    start = ""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            # Field 22 is starttime; field 2 (the command) may hold spaces, so split after ')'.
            start = fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        pass
    return f"{pid}:{start}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a killed child its parent has not
    reaped yet is one: still in the process table, but it will never write again)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): os.kill said it exists
    return state not in (b"Z", b"X")


def owner_alive(owner: str | None) -> bool:
    """Whether the process a ``process_token`` names is still the one running under its pid."""
    if not owner:
        return False
    pid_text, _, _ = owner.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if not pid_alive(pid):
        return False
    return process_token(pid) == owner


def core_command(args: Sequence[str]) -> list[str]:
    """``python -m core ARGS`` with this interpreter."""
    return [sys.executable, "-m", "core", *args]


def child_environment(
    extra_paths: Iterable[str | None] = (), set_env: Mapping[str, str | None] | None = None
) -> dict[str, str]:
    """This process's environment for a ``python -m core`` child: the project (and the
    ``extra_paths`` that are not ``None``) first on ``PYTHONPATH``, so ``-m core`` works from
    wherever this process was started and relative data paths keep their meaning; ``set_env``
    values set (``None``: removed); TensorFlow's INFO lines off unless asked for."""
    env = dict(os.environ)
    folders = (str(PROJECT_ROOT), *extra_paths, env.get("PYTHONPATH"))
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in folders if p))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for key, value in (set_env or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


class Children:
    """The detached children this process started, by key: start, look up, list, end."""

    def __init__(self) -> None:
        self._procs: dict[Hashable, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._count = 0

    def start(
        self, command: Sequence[str], log: Path, env: Mapping[str, str], key: Hashable = None
    ) -> subprocess.Popen[bytes]:
        """Start ``command`` in its own session (a Ctrl+C in this process's terminal does not
        end it), its output appended to ``log``; OSError if it cannot be started."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(command), stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=dict(env),
                start_new_session=True,
            )  # fmt: skip
        with self._lock:
            self._count += 1
            self._procs[key if key is not None else ("child", self._count)] = proc
        return proc

    def get(self, key: Hashable) -> subprocess.Popen[bytes] | None:
        """The child started under ``key`` (running or not, until reaped)."""
        with self._lock:
            return self._procs.get(key)

    def reap(self) -> None:
        """Forget children that have exited (collecting their exit: no zombies)."""
        with self._lock:
            for key, proc in list(self._procs.items()):
                if proc.poll() is not None:
                    del self._procs[key]

    def running(self) -> list[subprocess.Popen[bytes]]:
        """The children still running."""
        self.reap()
        with self._lock:
            return list(self._procs.values())

    def stop(self, timeout: float) -> None:
        """SIGTERM every running child (each ends its work cleanly), then SIGKILL what is left
        after ``timeout`` seconds."""
        import time

        procs = self.running()
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.reap()
