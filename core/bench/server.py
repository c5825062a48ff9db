"""A ``streamlit run`` server as the benchmark runs it (its own process group, its output kept by
line) and the worker processes it starts for its queued runs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from core.bench.common import ProgressCb
from core.paths import HOME_ENV

__all__ = [
    "ROOT",
    "SERVER_START_S",
    "StreamlitServer",
    "new_home",
    "owner_pid",
    "running_server",
    "stop_workers",
    "wait_claimed",
]

ROOT = Path(__file__).resolve().parents[2]  # the project: streamlit_app.py and .streamlit/
SERVER_START_S = 120.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def new_home(prefix: str) -> Path:
    """A temporary studio home, seeded with the converted ImageNet weights of the current home
    (when there are some): a fresh home would otherwise convert them again in its first run."""
    from core.paths import studio_home

    home = Path(tempfile.mkdtemp(prefix=prefix))
    weights = studio_home() / "weights"
    if weights.is_dir():
        shutil.copytree(weights, home / "weights")
    return home


class StreamlitServer:
    """``streamlit run streamlit_app.py`` in its own process group, its output kept by line."""

    def __init__(self, home: Path, port: int | None, say: ProgressCb) -> None:
        self.home, self.say = home, say
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: list[tuple[float, str, str]] = []  # (monotonic time, stream, text)
        self.proc: subprocess.Popen[str] | None = None
        self._readers: list[threading.Thread] = []
        self.startup_s: float | None = None
        self.stopped: bool | None = None  # set by ``stop``: the port was free afterwards

    def start(self) -> None:
        env = {
            **os.environ,
            HOME_ENV: str(self.home),
            # Unbuffered, so each line is read when it is printed, not when the pipe's buffer
            # fills or the server exits (what is printed does not change).
            "PYTHONUNBUFFERED": "1",
        }
        command = [
            sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
            "--server.headless", "true", "--server.port", str(self.port),
        ]  # fmt: skip
        started = time.monotonic()
        self.say(f"server: streamlit run on port {self.port}, studio home {self.home}")
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=os.name == "posix",  # its own process group: killed as one
        )
        for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            reader = threading.Thread(target=self._read, args=(name, stream), daemon=True)
            reader.start()
            self._readers.append(reader)
        deadline = started + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as response:
                    if response.status == 200 and response.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                from core.errors import StudioError

                tail = "\n".join(text for _, _, text in self.lines[-10:])
                raise StudioError(f"streamlit did not start on port {self.port}:\n{tail}")
            time.sleep(0.25)
        self.startup_s = time.monotonic() - started
        self.say(f"server: healthy after {self.startup_s:.1f} s (pid {self.proc.pid})")

    def _read(self, name: str, stream: Any) -> None:
        for line in stream:
            self.lines.append((time.monotonic(), name, line.rstrip("\n")))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def lines_between(self, start: float, end: float) -> list[str]:
        return [f"{name}: {text}" for t, name, text in list(self.lines) if start <= t <= end]

    def stop(self) -> bool:
        """Kill the server's process group; whether its port is free afterwards."""
        proc = self.proc
        if proc is None:
            return True
        if proc.poll() is None:
            self._signal(signal.SIGTERM, proc)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        self._signal(getattr(signal, "SIGKILL", signal.SIGTERM), proc)  # stragglers too
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=5)
        deadline = time.monotonic() + 10
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.stopped = not _port_open(self.port)
        return self.stopped

    @staticmethod
    def _signal(sig: int, proc: subprocess.Popen[str]) -> None:
        try:
            if os.name == "posix":
                os.killpg(proc.pid, sig)  # start_new_session: its pgid is its pid
            else:
                proc.kill()
        except (ProcessLookupError, PermissionError):
            pass


@contextlib.contextmanager
def running_server(home: Path, port: int | None, say: ProgressCb) -> Iterator[StreamlitServer]:
    server = StreamlitServer(home, port, say)
    try:
        server.start()
        yield server
    finally:
        say(f"server: stopped (port free: {server.stop()})")


def owner_pid(store: Any, run_id: str) -> int | None:
    """The pid of the process that holds (or held) ``run_id``, from its owner token."""
    head = (store.get_run(run_id)["owner"] or "").partition(":")[0]
    return int(head) if head.isdigit() else None


def wait_claimed(store: Any, run_id: str, timeout_s: float) -> int | None:
    """Wait until some process took ``run_id`` off the queue; that process's pid (``None`` if
    nobody did within ``timeout_s``: no worker was started)."""
    from core.runs.store import QUEUED

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if store.status(run_id) != QUEUED:
            return owner_pid(store, run_id)
        time.sleep(0.1)
    return None


def stop_workers(
    store: Any, say: ProgressCb, grace_s: float = 10.0, seen: Iterable[int | None] = ()
) -> list[int]:
    """End the worker processes registered in ``store`` (those a benchmark's server started)
    and the worker pids in ``seen`` (a worker removes its row before Python and TensorFlow
    have finished shutting down, which can take seconds).

    They run in their own session, so killing the server's process group leaves them; they
    exit by themselves once the server is gone and they are idle. Whatever is still alive after
    ``grace_s`` is killed (a registered worker only if its pid and start time still match its
    row, so a reused pid is never hit). Returns the pids that had to be killed."""
    from core.processes import owner_alive, pid_alive, process_token

    host = socket.gethostname()
    tokens = {w["token"] for w in store.workers() if w["host"] == host and w["pid"]}
    # A pid seen a moment ago is identified by its start time now, so the wait below never
    # follows a pid the system has handed to another process since.
    tokens |= {process_token(pid) for pid in seen if pid is not None and pid_alive(pid)}
    deadline = time.monotonic() + grace_s
    while any(owner_alive(t) for t in tokens) and time.monotonic() < deadline:
        time.sleep(0.2)
    killed = []
    for token in sorted(tokens):
        if owner_alive(token):
            pid = int(token.partition(":")[0])
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
                killed.append(pid)
    if killed:
        say(f"workers: killed {killed} (still alive {grace_s:g} s after the server stopped)")
    return killed
