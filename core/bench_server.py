"""Server-side benchmark figures: the dashboard's process as a user runs it.

Since issue 15 the dashboard's server never trains: its queue (``JobQueue(processes=True)``)
writes queued rows and ``python -m core worker`` processes, started by the server, train them.
Four measurements, each a JSON-able dict with its raw numbers, its target and ``met`` (targets
are reported, never asserted, as in ``core.bench``):

7. ``dashboard_vs_headless``: training throughput of one run, launched from the Train page of a
   real ``streamlit run`` server and trained by the worker process the server starts, in
   windows while headless Chromium keeps a Train page open following it live vs windows with
   no page open (alternating: no page, page, no page, ...; the same run in the same process);
8. ``sequential_runs_rss``: resident memory of the **server process** before and after several
   runs launched one after another from the Train page and followed to the end (the worker's
   RSS beside it, for information: that is where training memory lives now);
9. ``idle_server_cpu``: CPU time of an idle ``streamlit run`` server (after one visit of the Home
   page, so the app's script and its imports have run) and what it prints while idle;
12. ``worker_kill``: ``kill -9`` of the worker process mid-run: seconds until the run is
   ``interrupted`` when looked at as the dashboard's polls look (``ensure_worker``), then resume
   through the same queue completes with every planned epoch; against the same config trained
   uninterrupted through the same queue.

CPU times and memory are read from ``/proc`` (no psutil); off Linux those numbers are ``None``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from core.config import AUGMENTATIONS, RunConfig
from core.paths import HOME_ENV

ProgressCb = Callable[[str], None]

ROOT = Path(__file__).resolve().parents[1]  # the project: streamlit_app.py and .streamlit/
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu"]
TARGETS = {
    "dashboard_vs_headless": 0.95,  # dashboard / headless training throughput
    "sequential_runs_rss": 100.0,  # MB of the server's RSS growth over the runs
    "idle_server_cpu": 2.0,  # % of one core, and nothing printed
    "worker_kill": 5.0,  # s from kill -9 of the worker to the run showing interrupted
}
SERVER_START_S = 120.0
PAGE_TIMEOUT_MS = 180_000  # the first page of a fresh server imports TensorFlow
WIDGET_TIMEOUT_MS = 30_000
BUSY = "[data-testid='stStatusWidget'], [data-testid='stSpinner'], [data-testid='stSkeleton']"
FIRST_LINES = 5  # idle output lines quoted in the result


# --------------------------------------------------------------------------- /proc


def _clock_ticks() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100


_TICKS = _clock_ticks()


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, CPU ticks: utime + stime + cutime + cstime) of a live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after "(comm)": state, ppid, ... utime is field 14 (index 11 here), stime 15,
    # cutime 16 (reaped children), cstime 17.
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[1]), sum(int(x) for x in rest[11:15])


def _have_proc() -> bool:
    return _stat(os.getpid()) is not None


def _processes() -> dict[int, tuple[int, int]]:
    """Every live process: pid -> (ppid, ticks)."""
    out: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                out[int(entry.name)] = stat
    return out


def _tree(root: int, procs: dict[int, tuple[int, int]]) -> set[int]:
    """``root`` and its live descendants."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in procs and pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def _tree_cpu_s(root: int, exclude: frozenset[int] = frozenset()) -> float | None:
    """CPU seconds of ``root`` and its descendants (live ones, and reaped ones through their
    parents' cutime/cstime); ``None`` off Linux. Subtrees rooted at ``exclude`` are left out."""
    if not _have_proc():
        return None
    procs = _processes()
    skip: set[int] = set()
    for pid in exclude:
        skip |= _tree(pid, procs)
    pids = _tree(root, procs) - skip
    return sum(procs[pid][1] for pid in pids) / _TICKS


def _status_mb(field: str, pid: int | None = None) -> float | None:
    """A ``/proc/<pid>/status`` memory field (VmRSS, VmHWM) in MB (default: this process);
    ``None`` off Linux or when the process is gone."""
    try:
        where = "self" if pid is None else str(pid)
        for line in Path(f"/proc/{where}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


# --------------------------------------------------------------------------- server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _new_home(prefix: str) -> Path:
    """A temporary studio home, seeded with the converted ImageNet weights of the current home
    (when there are some): a fresh home would otherwise convert them again in its first run."""
    from core.paths import studio_home

    home = Path(tempfile.mkdtemp(prefix=prefix))
    weights = studio_home() / "weights"
    if weights.is_dir():
        shutil.copytree(weights, home / "weights")
    return home


class _Server:
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
def _server(home: Path, port: int | None, say: ProgressCb) -> Iterator[_Server]:
    server = _Server(home, port, say)
    try:
        server.start()
        yield server
    finally:
        say(f"server: stopped (port free: {server.stop()})")


# --------------------------------------------------------------------------- workers


def _owner_pid(store: Any, run_id: str) -> int | None:
    """The pid of the process that holds (or held) ``run_id``, from its owner token."""
    head = (store.get_run(run_id)["owner"] or "").partition(":")[0]
    return int(head) if head.isdigit() else None


def _wait_claimed(store: Any, run_id: str, timeout_s: float) -> int | None:
    """Wait until some process took ``run_id`` off the queue; that process's pid (``None`` if
    nobody did within ``timeout_s``: no worker was started)."""
    from core.runs.store import QUEUED

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if store.status(run_id) != QUEUED:
            return _owner_pid(store, run_id)
        time.sleep(0.1)
    return None


def _stop_workers(
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


def _loaded_tensorflow(pid: int) -> bool | None:
    """Whether process ``pid`` has TensorFlow's library mapped (``None`` without /proc)."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
            return any("libtensorflow" in line for line in fh)
    except OSError:
        return None


# --------------------------------------------------------------------------- browser


def _browser_missing(chromium: str) -> str | None:
    """Why a headless browser cannot be used, or ``None``."""
    if not os.path.exists(chromium):
        return f"{chromium} is not installed (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -r requirements-dev.txt)"
    return None


@contextlib.contextmanager
def _browser(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _new_page(browser: Any) -> Any:
    page = browser.new_page(viewport={"width": 1440, "height": 1800})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    return page


def _settle(page: Any, timeout: float = 120.0) -> None:
    """Wait until the app has finished its current script run (no spinner, skeleton, status)."""
    deadline = time.monotonic() + timeout
    calm = 0
    while time.monotonic() < deadline:
        calm = calm + 1 if page.locator(BUSY).count() == 0 else 0
        if calm >= 3:
            return
        time.sleep(0.3)


def _open_home_once(url: str, chromium: str, say: ProgressCb) -> tuple[bool, str]:
    """Open the Home page in headless Chromium until its script has run, then close it."""
    missing = _browser_missing(chromium)
    if missing:
        return False, missing
    started = time.monotonic()
    with _browser(chromium) as browser:
        page = _new_page(browser)
        page.goto(url)
        page.locator(".st-key-train_default").wait_for(state="visible")
        _settle(page)
        page.close()
    note = f"Home page rendered in {time.monotonic() - started:.1f} s, then closed"
    say(f"browser: {note}")
    return True, note


# --------------------------------------------------------------------------- figure 9


def idle_server_cpu(
    seconds: float = 30.0,
    port: int | None = None,
    progress: ProgressCb | None = None,
    chromium: str = CHROMIUM,
    settle_s: float = 1.0,
) -> dict[str, Any]:
    """CPU use and output of an idle ``streamlit run`` server (figure 9).

    A server of the app (fresh temporary studio home) is started as a user starts it; the Home
    page is opened once in headless Chromium and closed, so the script, its imports and the job
    queue's worker exist; after ``settle_s``, the CPU time of the server's process tree is read
    from ``/proc`` before and after ``seconds`` of idling. The server is always killed.
    """
    say = progress or (lambda _msg: None)
    home = _new_home("transfer-studio-idle-")
    result: dict[str, Any] = {}
    try:
        with _server(home, port, say) as server:
            opened, note = _open_home_once(server.url, chromium, say)
            time.sleep(settle_s)
            say(f"idle: sampling the server's CPU time for {seconds:g} s")
            cpu0, t0 = _tree_cpu_s(server.pid), time.monotonic()
            time.sleep(seconds)
            cpu1, t1 = _tree_cpu_s(server.pid), time.monotonic()
            lines = server.lines_between(t0, t1)
            cpu_s = None if cpu0 is None or cpu1 is None else max(cpu1 - cpu0, 0.0)
            percent = None if cpu_s is None else 100.0 * cpu_s / (t1 - t0)
            result = {
                "seconds": round(t1 - t0, 2),
                "cpu_s": None if cpu_s is None else round(cpu_s, 3),
                "cpu_percent": None if percent is None else round(percent, 3),
                "cpu_source": "/proc/<pid>/stat of the server's process tree"
                if cpu_s is not None
                else None,
                "lines_printed": len(lines),
                "first_lines": lines[:FIRST_LINES],
                "lines_before_idle": len(server.lines_between(0.0, t0)),  # capture works
                "page_opened": opened,
                "page_note": note,
                "settle_s": settle_s,
                "server_pid": server.pid,
                "port": server.port,
                "startup_s": round(server.startup_s or 0.0, 2),
                "target_cpu_percent": TARGETS["idle_server_cpu"],
                "cpu_met": percent is not None and percent <= TARGETS["idle_server_cpu"],
                "quiet_met": not lines,
            }
        result["server_stopped"] = bool(server.stopped)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    result["met"] = bool(result["cpu_met"] and result["quiet_met"])
    cpu_text = "n/a" if result["cpu_percent"] is None else f"{result['cpu_percent']:.2f} %"
    say(f"idle: {cpu_text} of one core, {result['lines_printed']} lines printed")
    return _jsonable(result)


# --------------------------------------------------------------------------- figure 8


def default_rss_config(index: int) -> RunConfig:
    """The ``index``-th run of figure 8: small runs on built-in textures, modes and learning
    rates varied (one fine-tuning run, one on the per-epoch pipeline), as a user tries things in
    a session. Only what the Train page can set changes (its learning rates are slider stops)."""
    base = RunConfig(
        data="builtin:textures",
        backbone="efficientnet_lite0",
        weights="imagenet",
        image_size=96,
        epochs=2,
        augment=False,
        name=f"rss-{index + 1}",
    )
    variants: list[dict[str, Any]] = [
        {},
        {"lr": 3e-4},
        {"mode": "fine_tuning", "fine_tune_epochs": 1},
        {"feature_cache": "off"},
        {"lr": 3e-3},
    ]
    return base.with_changes(**variants[index % len(variants)])


def _render_page(browser: Any, url: str, key: str) -> float:
    """Open ``url`` until the widget ``key`` shows and the script settled, then close it;
    the seconds it took."""
    started = time.monotonic()
    page = _new_page(browser)
    try:
        page.goto(url)
        page.locator(f".st-key-{key}").wait_for(state="visible")
        _settle(page)
    finally:
        page.close()
    return time.monotonic() - started


def sequential_runs_rss(
    runs: int = 5,
    make_config: Callable[[int], RunConfig] | None = None,
    progress: ProgressCb | None = None,
    port: int | None = None,
    chromium: str = CHROMIUM,
    timeout_s: float = 1800.0,
    settle_s: float = 2.0,
) -> dict[str, Any]:
    """The server process's RSS before and after ``runs`` dashboard runs (figure 8).

    A ``streamlit run`` server of the app (fresh temporary studio home); the Train page is
    rendered once in headless Chromium (the app's imports done), then the server's ``VmRSS``
    is read: the baseline. Each run is launched from the Train page (widgets set to
    ``make_config(i)``), trained by the worker process the server starts and followed to its
    end by the page; ``settle_s`` after the page closed, the server's and the worker's RSS are
    read from ``/proc/<pid>/status`` (nothing freed by hand). The figure is the server's growth
    from the baseline to after the last run; the growth after the first run and the worker's
    RSS are reported beside it. Returns ``{"skipped": why}`` without Chromium or Playwright.
    """
    from core.runs.store import RunStore

    say = progress or (lambda _msg: None)
    missing = _browser_missing(chromium)
    if missing:
        say(f"rss: skipped: {missing}")
        return {"skipped": missing}
    make = make_config or default_rss_config
    home = _new_home("transfer-studio-rss-")
    records: list[dict[str, Any]] = []
    before: float | None = None
    server_peak: float | None = None
    loaded_tf: bool | None = None
    killed: list[int] = []
    try:
        store = RunStore(home, recover=False)
        try:
            with _server(home, port, say) as server, _browser(chromium) as browser:
                rendered = _render_page(browser, f"{server.url}/train", "launch")
                say(f"rss: Train page rendered in {rendered:.1f} s")
                time.sleep(settle_s)
                before = _status_mb("VmRSS", server.pid)
                say(f"rss: server RSS before the runs {_mb(before)}")
                for i in range(runs):
                    config = make(i)
                    config.validate()
                    label = f"rss run {i + 1}/{runs}"
                    seen = _dashboard_run(server, browser, store, config, say, label, timeout_s)
                    time.sleep(settle_s)  # the closed page's session is cleaned up
                    server_rss = _status_mb("VmRSS", server.pid)
                    worker = seen["worker_pid"]
                    worker_rss = None if worker is None else _status_mb("VmRSS", worker)
                    result = store.result(seen["run_id"])
                    records.append(
                        {
                            "run_id": seen["run_id"],
                            "mode": str(config.mode),
                            "image_size": config.image_size,
                            "lr": config.lr,
                            "feature_cache": config.feature_cache,
                            "augment": config.augment,
                            "config_differences": seen["config_differences"],
                            "wall_s": seen["wall_s"],
                            "duration_s": result["duration_s"],
                            "worker_pid": worker,
                            "trained_in_worker": seen["trained_in_worker"],
                            "server_rss_mb": _round(server_rss, 1),
                            "worker_rss_mb": _round(worker_rss, 1),
                            "worker_peak_rss_mb": _round(
                                None if worker is None else _status_mb("VmHWM", worker), 1
                            ),
                        }
                    )
                    say(
                        f"rss: run {i + 1}/{runs} ({config.mode}) done in worker {worker}: "
                        f"server RSS {_mb(server_rss)}, worker RSS {_mb(worker_rss)}"
                    )
                server_peak = _status_mb("VmHWM", server.pid)
                loaded_tf = _loaded_tensorflow(server.pid)
            stopped = bool(server.stopped)
        finally:
            with contextlib.suppress(Exception):  # an earlier error is the one to report
                killed = _stop_workers(store, say, seen=(r["worker_pid"] for r in records))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    server_list = [r["server_rss_mb"] for r in records]
    last = server_list[-1] if server_list else None
    growth = None if before is None or last is None else round(last - before, 1)
    first = server_list[0] if server_list else None
    in_workers = bool(records) and all(r["trained_in_worker"] for r in records)
    out = {
        "runs": records,
        "server_rss_before_mb": _round(before, 1),
        "server_rss_mb": server_list,
        "growth_mb": growth,
        "growth_after_first_mb": (
            None if first is None or last is None else round(last - first, 1)
        ),
        "server_peak_rss_mb": _round(server_peak, 1),
        "server_loaded_tensorflow": loaded_tf,
        "worker_rss_mb": [r["worker_rss_mb"] for r in records],
        "workers": sorted({r["worker_pid"] for r in records if r["worker_pid"] is not None}),
        "trained_in_workers": in_workers,
        "same_config": not any(r["config_differences"] for r in records),
        "workers_killed_at_end": killed,
        "server_stopped": stopped,
        "rss_source": "VmRSS of /proc/<server pid>/status" if before is not None else None,
        "target_growth_mb": TARGETS["sequential_runs_rss"],
        "met": bool(growth is not None and growth <= TARGETS["sequential_runs_rss"] and in_workers),
    }
    say(f"rss: the server grew {_mb(growth)} over {runs} runs (worker RSS for information)")
    return _jsonable(out)


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MB"


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# --------------------------------------------------------------------------- figure 7


def _live(page: Any, key: str, inner: str) -> Any:
    """The ``inner`` elements of widget ``key`` that are not stale: while a script reruns,
    Streamlit keeps the previous run's element (marked ``data-stale``) beside the new one
    when the layout moved, and a strict locator would match both."""
    return page.locator(
        f".st-key-{key}:not([data-stale='true']):not([data-stale='true'] *) {inner}"
    )


def _widget(page: Any, key: str, inner: str) -> Any:
    return _live(page, key, inner).first


def _fill_number(page: Any, key: str, value: float | int | None) -> None:
    if value is None:
        return
    box = _widget(page, key, "input")
    current = box.input_value()
    try:
        if current.strip() and float(current) == float(value):
            return
    except ValueError:
        pass
    box.fill(str(value))
    box.press("Enter")
    _settle(page)


def _set_toggle(page: Any, key: str, on: bool) -> None:
    if _widget(page, key, "input[type='checkbox']").is_checked() != on:
        _widget(page, key, "label").click()
        _settle(page)


def _choose(page: Any, key: str, text: str, prefix: str | None = None) -> None:
    """A selectbox: type ``text`` and pick the option that is exactly it (or that starts with
    ``prefix``); a new option (Enter) when the box accepts them and none matches."""
    combo = _widget(page, key, "input[role='combobox']")
    shown = combo.input_value().strip()
    if shown == text or (prefix and shown.startswith(prefix)):
        return
    combo.click()
    combo.fill(prefix.split(" ·")[0] if prefix else text)  # typing filters the options
    wanted = re.compile(rf"^\s*{re.escape(prefix)}" if prefix else rf"^\s*{re.escape(text)}\s*$")
    option = page.get_by_role("option").filter(has_text=wanted).first
    try:
        option.wait_for(state="visible", timeout=5_000)
        option.click()
    except Exception:  # playwright's TimeoutError: no such option
        combo.press("Enter")
    _settle(page)


def _radio(page: Any, key: str, option: str) -> None:
    label = _live(page, key, "label").filter(has_text=re.compile(rf"^\s*{re.escape(option)}(\s|$)"))
    if not label.first.locator("input").is_checked():
        label.first.click()
        _settle(page)


def _slide_to(page: Any, key: str, value: float) -> None:
    """A select_slider of numbers shown with ``{:g}``: arrow keys until it shows ``value``."""
    thumb = _widget(page, key, "input[type='range']")
    target = format(value, "g")
    for _ in range(32):
        shown = (thumb.get_attribute("aria-valuetext") or "").strip()
        if shown == target:
            return
        try:
            right = float(shown) < value
        except ValueError:
            return  # not a numeric select_slider: the config check reports the difference
        thumb.focus()
        thumb.press("ArrowRight" if right else "ArrowLeft")
        _settle(page)


def _pills(page: Any, key: str, wanted: tuple[str, ...]) -> None:
    for name in AUGMENTATIONS:
        button = _live(page, key, "button").filter(has_text=name).first
        active = button.get_attribute("aria-pressed") == "true"
        if active != (name in wanted):
            button.click()
            _settle(page)


def _configure_train_page(page: Any, config: RunConfig) -> None:
    """Set the Train page's widgets to ``config`` (what the page has: dropout, head units and
    the name are not on it; ``config_differences`` reports what could not be set)."""
    from core.models.backbones import get_backbone

    _choose(
        page, "backbone", config.backbone, prefix=f"{get_backbone(config.backbone).display_name} ·"
    )
    _radio(page, "mode", str(config.mode))
    if config.mode != "scratch" and config.weights in ("imagenet", "none"):
        _radio(page, "weights", config.weights)
    _choose(page, "data", config.data)
    _fill_number(page, "size", config.image_size)
    _fill_number(page, "batch", config.batch_size)
    _fill_number(page, "val_split", config.val_split)
    _fill_number(page, "seed", config.seed)
    _set_toggle(page, "augment", config.augment)
    _set_toggle(page, "cache", config.feature_cache == "auto")
    if config.augment:
        _pills(page, "augs", config.augmentations)
    _fill_number(page, "epochs", config.epochs)
    _slide_to(page, "lr", config.lr)
    _fill_number(page, "ft", config.fine_tune_epochs)
    _slide_to(page, "ft_lr", config.fine_tune_lr)
    _fill_number(page, "unfreeze", config.unfreeze)


def config_differences(wanted: RunConfig, got: RunConfig) -> dict[str, list[Any]]:
    """Fields that change the work and differ: {field: [wanted, got]} (the name never counts,
    nor the augmentation list without augmentation, nor the weights of a scratch run)."""
    a, b = wanted.to_dict(), got.to_dict()
    ignore = {"name"}
    if not wanted.augment and not got.augment:
        ignore.add("augmentations")
    if wanted.mode == got.mode == "scratch":
        ignore.add("weights")
    out: dict[str, list[Any]] = {}
    for key in sorted(set(a) | set(b)):
        if key in ignore:
            continue
        x, y = a.get(key), b.get(key)
        if key == "augmentations" and set(x or ()) == set(y or ()):
            continue
        if x != y:
            out[key] = [x, y]
    return out


def _launch(
    page: Any, server: _Server, store: Any, config: RunConfig, say: ProgressCb, label: str
) -> str:
    """Open the Train page in ``page``, set its widgets to ``config``, click Launch; the run id."""
    from core.errors import StudioError

    page.goto(f"{server.url}/train")
    page.locator(".st-key-launch").wait_for(state="visible")
    _settle(page)
    page.set_default_timeout(WIDGET_TIMEOUT_MS)
    _configure_train_page(page, config)
    before = {r["run_id"] for r in store.list_runs()}
    say(f"{label}: Launch on the Train page")
    _widget(page, "launch", "button").click()
    started = time.monotonic()
    while True:
        new = [r["run_id"] for r in store.list_runs() if r["run_id"] not in before]
        if new:
            return str(new[0])
        if time.monotonic() - started > 60:
            raise StudioError("The Train page's Launch queued no run within 60 s.")
        time.sleep(0.2)


def _dashboard_run(
    server: _Server,
    browser: Any,
    store: Any,
    config: RunConfig,
    say: ProgressCb,
    label: str,
    timeout_s: float,
) -> dict[str, Any]:
    """Launch ``config`` from the Train page and keep the page following it to the end."""
    from core.errors import StudioError
    from core.runs.store import ACTIVE_STATUSES

    page = _new_page(browser)
    try:
        run_id = _launch(page, server, store, config, say, label)
        started = time.monotonic()
        me = os.getpid()
        # The server starts a worker process (its child) that claims the run: the worker's CPU
        # is counted apart from the server's.
        worker = _wait_claimed(store, run_id, timeout_s=120.0)
        workers = frozenset({worker} if worker is not None else ())
        server_cpu0 = _tree_cpu_s(server.pid, exclude=workers)
        worker_cpu0 = None if worker is None else _tree_cpu_s(worker)
        browser_cpu0 = _tree_cpu_s(me, exclude=frozenset({server.pid}))
        own0 = _own_cpu_s()
        differences = config_differences(config, store.config(run_id))
        if differences:
            say(f"{label}: the page's config differs from the wanted one: {differences}")
        stop_seen = False
        deadline = started + timeout_s
        # Follow as a user does: the page polls by itself; we only look now and then.
        while store.status(run_id) in ACTIVE_STATUSES:
            if not stop_seen and store.status(run_id) == "running":
                stop_seen = page.locator(".st-key-stop").count() > 0
            if time.monotonic() > deadline:
                store.request_stop(run_id)
                raise StudioError(f"Dashboard run {run_id} still active after {timeout_s:g} s.")
            time.sleep(1.0)
        wall = time.monotonic() - started
        server_cpu1 = _tree_cpu_s(server.pid, exclude=workers)
        worker_cpu1 = None if worker is None else _tree_cpu_s(worker)
        browser_cpu1 = _tree_cpu_s(me, exclude=frozenset({server.pid}))
        own1 = _own_cpu_s()
        done = page.get_by_text("Completed: best validation accuracy")
        try:
            done.wait_for(state="visible", timeout=60_000)
            completed_shown = True
        except Exception:  # playwright's TimeoutError: reported, not raised
            completed_shown = False
        status = store.status(run_id)
        if status != "completed":
            raise StudioError(f"Dashboard run {run_id} {status}: {store.result(run_id)['error']}")
    finally:
        page.close()
    browser_cpu = _delta(browser_cpu0, browser_cpu1)
    own = _delta(own0, own1)
    return {
        "run_id": run_id,
        "wall_s": round(wall, 2),
        "config_differences": differences,
        "page_showed_stop_while_running": stop_seen,
        "page_showed_completion": completed_shown,
        "worker_pid": worker,
        # Trained by another process than the server (and than this benchmark).
        "trained_in_worker": worker is not None and worker not in (server.pid, os.getpid()),
        "server_cpu_s": _round(_delta(server_cpu0, server_cpu1), 2),
        "worker_cpu_s": _round(_delta(worker_cpu0, worker_cpu1), 2),
        # Chromium and Playwright's driver: this process's descendants except the server.
        "browser_cpu_s": _round(
            None if browser_cpu is None or own is None else browser_cpu - own, 2
        ),
    }


def _own_cpu_s() -> float | None:
    stat = _stat(os.getpid())
    return None if stat is None else stat[1] / _TICKS


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def window_rate(
    batches: Iterable[Any], t0: float, t1: float, batch_size: int, train_images: int
) -> tuple[int, float]:
    """Training images of the batches that ended in ``[t0, t1)`` (the worker's timestamps) and
    their rate over the window; an epoch's last batch holds what is left of ``train_images``."""
    images = 0
    for row in batches:
        if t0 <= float(row["t"]) < t1:
            steps = int(row["steps_per_epoch"] or 0)
            last = steps and int(row["step"]) == steps and train_images
            images += train_images - (steps - 1) * batch_size if last else batch_size
    return images, images / (t1 - t0) if t1 > t0 else 0.0


def _quiet(
    me: int, server_pid: int, min_s: float, max_s: float = 60.0, quiet_cpu: float = 0.25
) -> bool:
    """Wait at least ``min_s``, then until the browser (this process's descendants but the
    server) used under ``quiet_cpu`` s of CPU in each of two seconds running, at most ``max_s``:
    a page polling every few seconds has such seconds between its polls once it has loaded.
    Whether it got quiet (always ``True`` without /proc)."""
    time.sleep(min_s)
    deadline = time.monotonic() + max_s
    calm = 0
    last = _tree_cpu_s(me, exclude=frozenset({server_pid}))
    while calm < 2:
        if last is None:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0)
        now = _tree_cpu_s(me, exclude=frozenset({server_pid}))
        calm = calm + 1 if now is not None and now - last < quiet_cpu else 0
        last = now
    return True


def _window(
    server: _Server,
    browser: Any,
    store: Any,
    run_id: str,
    worker: int | None,
    following: bool,
    window_s: float,
    settle_s: float,
) -> dict[str, Any]:
    """One window of figure 7: a Train page open and following the run (loaded before the
    window starts, closed after it ends), or no page open at all."""
    from core.errors import StudioError
    from core.runs.store import ACTIVE_STATUSES

    page = None
    me = os.getpid()
    started = time.monotonic()
    if following:
        page = _new_page(browser)
        page.goto(f"{server.url}/train")
        page.locator(".st-key-stop").wait_for(state="visible")  # following the running run
    # A page's load (seconds of Chromium's CPU on a busy machine), or a closed page's last
    # work, stays out of the window: it starts once the browser is quiet (``_quiet``).
    settled = _quiet(me, server.pid, settle_s)
    settled_after = time.monotonic() - started
    workers = frozenset({worker} if worker is not None else ())
    browser0 = _tree_cpu_s(me, exclude=frozenset({server.pid}))
    own0, server0 = _own_cpu_s(), _tree_cpu_s(server.pid, exclude=workers)
    t0 = time.time()
    time.sleep(window_s)
    t1 = time.time()
    browser1 = _tree_cpu_s(me, exclude=frozenset({server.pid}))
    own1, server1 = _own_cpu_s(), _tree_cpu_s(server.pid, exclude=workers)
    showed_stop = None
    if page is not None:
        showed_stop = page.locator(".st-key-stop").count() > 0
        page.close()
    if store.status(run_id) not in ACTIVE_STATUSES:
        raise StudioError(
            f"Run {run_id} ended ({store.status(run_id)}) before the windows did: give it more "
            "epochs."
        )
    browser_cpu, own = _delta(browser0, browser1), _delta(own0, own1)
    return {
        "page_following": following,
        "settled_after_s": round(settled_after, 2),
        "settled": settled,
        "t0": t0,
        "t1": t1,
        "page_showed_stop": showed_stop,
        "load": _load(),
        # Chromium and Playwright's driver: this process's descendants except the server.
        "browser_cpu_s": _round(
            None if browser_cpu is None or own is None else browser_cpu - own, 2
        ),
        "server_cpu_s": _round(_delta(server0, server1), 2),
    }


def dashboard_vs_headless(
    config: RunConfig,
    port: int | None = None,
    chromium: str = CHROMIUM,
    progress: ProgressCb | None = None,
    pairs: int = 6,
    window_s: float = 20.0,
    settle_s: float = 6.0,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Training throughput while a browser page follows the run vs while none is open (fig. 7).

    A ``streamlit run`` server of the app is started on a temporary studio home; ``config`` is
    launched from its Train page in headless Chromium (its widgets set to ``config``, whose
    epochs must outlast the windows), so the worker process the server starts trains it. Once
    its first epoch is done (the step traced), windows of ``window_s`` seconds alternate: no
    page open (the headless side: the same worker, the server idle, no page), then a Train page
    following the run, ... ending with a no-page window: ``pairs`` page windows in all. A page
    is opened and loaded before its window starts, which waits at least ``settle_s`` and then
    until the browser is quiet between polls (``_quiet``): a user opens the page once and
    watches, and a load costs Chromium seconds of CPU on a busy machine (reported apart).
    Each window's throughput is the training
    images of the batches that ended in it over its length (``window_rate``). The figure is the
    median over pairs of each page window against the mean of the no-page windows either side:
    both sides are one run in one process seconds apart, so neither the drift of the machine's
    load nor the spread between separate runs (+-20 % here) enters it. The run is then stopped.
    Returns ``{"skipped": why}`` when Chromium or Playwright is missing.
    """
    from core.errors import StudioError
    from core.runs.store import ACTIVE_STATUSES, RunStore

    say = progress or (lambda _msg: None)
    missing = _browser_missing(chromium)
    if missing:
        say(f"dashboard vs headless: skipped: {missing}")
        return {"skipped": missing}
    config.validate()
    home = _new_home("transfer-studio-dash-")
    windows: list[dict[str, Any]] = []
    worker: int | None = None
    killed: list[int] = []
    try:
        store = RunStore(home, recover=False)
        with _server(home, port, say) as server, _browser(chromium) as browser:
            page = _new_page(browser)
            try:
                run_id = _launch(page, server, store, config, say, "dashboard")
            finally:
                page.close()
            worker = _wait_claimed(store, run_id, timeout_s=120.0)
            differences = config_differences(config, store.config(run_id))
            if differences:
                say(f"dashboard: the page's config differs from the wanted one: {differences}")
            deadline = time.monotonic() + timeout_s
            while not store.epochs(run_id):  # the first epoch traces the step: not measured
                if store.status(run_id) not in ACTIVE_STATUSES or time.monotonic() > deadline:
                    raise StudioError(
                        f"Run {run_id} {store.status(run_id)} before its first epoch ended."
                    )
                time.sleep(0.2)
            for i in range(2 * pairs + 1):
                following = i % 2 == 1
                windows.append(
                    _window(server, browser, store, run_id, worker, following, window_s, settle_s)
                )
                w = windows[-1]
                say(
                    f"window {i + 1}/{2 * pairs + 1} "
                    f"({'page following' if following else 'no page'}): browser "
                    f"{w['browser_cpu_s']} s, server {w['server_cpu_s']} s of CPU"
                )
            store.request_stop(run_id)
            deadline = time.monotonic() + 120
            while store.status(run_id) in ACTIVE_STATUSES and time.monotonic() < deadline:
                time.sleep(0.2)
            status = str(store.status(run_id))
            result = store.result(run_id)
        stopped = bool(server.stopped)
        rows = store.batches(run_id)
    finally:
        with contextlib.suppress(Exception):  # an earlier error is the one to report
            killed = _stop_workers(store, say, seen=(worker,))
        shutil.rmtree(home, ignore_errors=True)
    train_images = int(result["train_images"] or 0)
    t_start = windows[0]["t0"]
    for w in windows:
        w["images"], rate = window_rate(rows, w["t0"], w["t1"], config.batch_size, train_images)
        w["images_per_s"] = round(rate, 3)
        w["t0"], w["t1"] = round(w["t0"] - t_start, 2), round(w["t1"] - t_start, 2)
    page_rates = [w["images_per_s"] for w in windows if w["page_following"]]
    none_rates = [w["images_per_s"] for w in windows if not w["page_following"]]
    # Each page window against the mean of the no-page windows either side of it.
    pair_ratios = [
        rate / statistics.fmean(none_rates[k : k + 2])
        for k, rate in enumerate(page_rates)
        if statistics.fmean(none_rates[k : k + 2]) > 0
    ]
    ratio = statistics.median(pair_ratios) if pair_ratios else None
    page_rate = statistics.fmean(page_rates) if page_rates else None
    none_rate = statistics.fmean(none_rates) if none_rates else None
    trained_in_worker = worker is not None and worker not in (server.pid, os.getpid())
    out = {
        "config": config.to_dict(),
        "run_id": run_id,
        "status_after": status,
        "epochs_done": result["epochs_done"],
        "train_images": train_images,
        "window_s": window_s,
        "settle_s": settle_s,
        "windows": windows,
        "headless_images_per_s": _round(none_rate, 3),  # the no-page windows
        "dashboard_images_per_s": _round(page_rate, 3),  # the page windows
        "pair_ratios": [round(x, 3) for x in pair_ratios],
        "ratio": _round(ratio, 3),
        "ratio_of_means": _round(page_rate / none_rate if page_rate and none_rate else None, 3),
        "config_differences": differences,
        "same_config": not differences,
        "page_followed": all(w["page_showed_stop"] for w in windows if w["page_following"]),
        "worker_pid": worker,
        "trained_in_workers": trained_in_worker,
        "server_stopped": stopped,
        "workers_killed_at_end": killed,
        "target": TARGETS["dashboard_vs_headless"],
        "met": bool(
            ratio is not None
            and ratio >= TARGETS["dashboard_vs_headless"]
            and not differences
            and trained_in_worker
        ),
    }
    say(f"dashboard vs headless: ratio {'n/a' if ratio is None else f'{ratio:.3f}'}")
    return _jsonable(out)


def _load() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other users' work shows here)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _jsonable(result: dict[str, Any]) -> dict[str, Any]:
    """Plain JSON types only (the contract of ``core.bench``'s results)."""
    return json.loads(json.dumps(result, allow_nan=False, default=str))


# --------------------------------------------------------------------------- figure 12


def default_kill_config() -> RunConfig:
    """Figure 12's run: the per-epoch pipeline (no feature cache), so each epoch takes seconds
    and writes a checkpoint, and a kill lands mid-run."""
    return RunConfig(
        data="builtin:textures",
        backbone="efficientnet_lite0",
        weights="imagenet",
        image_size=160,
        epochs=6,
        batch_size=16,
        augment=False,
        feature_cache="off",
        name="kill",
    )


def _history(store: Any, run_id: str) -> dict[str, Any]:
    result = store.result(run_id)
    return {
        "run_id": run_id,
        "status": str(result["status"]),
        "epochs": [int(e) for e in result["history"].get("epoch") or []],
        "duration_s": result["duration_s"],
        "best_val_accuracy": result["best_val_accuracy"],
        "worker_pid": _owner_pid(store, run_id),
    }


def _end_spawned_workers(root: Path) -> None:
    """Terminate the workers this process started for ``root`` (idle ones wait for their
    parent, this process, to go away: a benchmark in a long-lived process would keep them)."""
    from core.training.jobs import spawned_workers

    def serves(proc: subprocess.Popen[bytes]) -> bool:
        args = proc.args if isinstance(proc.args, (list, tuple)) else [proc.args]
        return str(root) in [str(a) for a in args]

    mine = [p for p in spawned_workers() if serves(p)]
    for proc in mine:
        proc.terminate()
    for proc in mine:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def worker_kill(
    config: RunConfig | None = None,
    kill_after: int | None = None,
    progress: ProgressCb | None = None,
    runs_dir: str | os.PathLike[str] | None = None,
    poll_s: float = 0.2,
    timeout_s: float = 1800.0,
) -> dict[str, Any]:
    """``kill -9`` of a worker mid-run, then resume (figure 12).

    Through the dashboard's kind of queue (``JobQueue(processes=True)`` in this process, which
    plays the server: it starts the workers): first ``config`` trained uninterrupted (the
    baseline), then the same config again; once ``kill_after`` epochs are recorded (default
    half the planned ones) the worker holding it gets SIGKILL. Then, every ``poll_s``, what
    the dashboard's polls do (``ensure_worker``: reap, mark lost runs ``interrupted``) until the
    run is no longer ``running``: those seconds are the figure. The page following the run
    shows it at its next poll (every 2 s). Then ``resume`` through the same queue (a new
    worker is started) must complete with every planned epoch, each once. ``runs_dir``
    defaults to a temporary store removed afterwards.
    """
    from core.errors import ConfigError, StudioError
    from core.runs.store import COMPLETED, INTERRUPTED, QUEUED, RUNNING
    from core.training.jobs import JobQueue

    say = progress or (lambda _msg: None)
    config = config or default_kill_config()
    config.validate()
    planned = config.planned_epochs
    kill_after = kill_after or max(planned // 2, 1)
    if not 1 <= kill_after < planned:
        raise ConfigError(
            f"kill_after={kill_after} with {planned} planned epochs: expected 1 to {planned - 1}, "
            "so that the worker is killed mid-run."
        )
    temp = None if runs_dir is not None else tempfile.mkdtemp(prefix="transfer-studio-kill-")
    root = Path(runs_dir if runs_dir is not None else str(temp))
    try:
        jobs = JobQueue(root, processes=True)
        store = jobs.store
        root = store.root  # the folder its workers were started with
        say(f"worker kill: baseline, {planned} epochs uninterrupted in a worker process")
        started = time.monotonic()
        base_id = jobs.submit(config.with_changes(name="kill-baseline"))
        status = jobs.wait(base_id, timeout=timeout_s)
        base_wall = time.monotonic() - started
        if status != COMPLETED:
            raise StudioError(f"Baseline run {base_id} {status}: {store.result(base_id)['error']}")
        baseline = {**_history(store, base_id), "wall_s": round(base_wall, 2)}

        started = time.monotonic()
        run_id = jobs.submit(config.with_changes(name="kill-target"))
        deadline = started + timeout_s
        while store.get_run(run_id)["epochs_done"] < kill_after:
            if store.status(run_id) not in (RUNNING, QUEUED) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        epochs_at_kill = store.get_run(run_id)["epochs_done"]
        worker = _owner_pid(store, run_id)
        if store.status(run_id) != RUNNING or worker is None or worker == os.getpid():
            raise StudioError(
                f"Run {run_id} was {store.status(run_id)} with {epochs_at_kill} of {planned} "
                f"epochs when the worker was to be killed (worker pid {worker}): expected it "
                "running in a worker process. Use more epochs or a lower kill_after."
            )
        say(f"worker kill: kill -9 worker {worker} after {epochs_at_kill}/{planned} epochs")
        os.kill(worker, getattr(signal, "SIGKILL", signal.SIGTERM))
        killed = time.monotonic()
        before_kill_s = killed - started
        while store.status(run_id) == RUNNING and time.monotonic() - killed < 60.0:
            jobs.ensure_worker()  # what each poll of the dashboard does
            if store.status(run_id) != RUNNING:
                break
            time.sleep(poll_s)
        seconds = time.monotonic() - killed
        after_kill = str(store.status(run_id))
        error = store.result(run_id)["error"]
        say(f"worker kill: {after_kill} {seconds:.2f} s after the kill")

        say("worker kill: resume through the same queue")
        resumed_at = time.monotonic()
        jobs.resume(run_id)
        final = jobs.wait(run_id, timeout=timeout_s)
        resume_wall = time.monotonic() - resumed_at
        resumed = {**_history(store, run_id), "wall_s": round(resume_wall, 2)}
    finally:
        _end_spawned_workers(root)
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    every_epoch_once = resumed["epochs"] == list(range(1, planned + 1))
    target = TARGETS["worker_kill"]
    out = {
        "config": config.to_dict(),
        "planned_epochs": planned,
        "baseline": baseline,
        "killed": {
            "run_id": run_id,
            "worker_pid": worker,
            "epochs_at_kill": epochs_at_kill,
            "wall_s_before_kill": round(before_kill_s, 2),
            "status_after_kill": after_kill,
            "error": error,
        },
        "resumed": resumed,
        "seconds_to_interrupted": round(seconds, 2),
        "poll_s": poll_s,
        "epochs_completed": len(resumed["epochs"]),
        "every_epoch_once": every_epoch_once,
        "new_worker_resumed": resumed["worker_pid"] not in (None, worker, os.getpid()),
        # What the crash cost: wall time of the killed attempt plus the resume (a new worker's
        # start-up included) over the uninterrupted run's.
        "ratio": _round((before_kill_s + resume_wall) / base_wall if base_wall else None, 3),
        "target_s": target,
        "met": bool(
            after_kill == INTERRUPTED
            and seconds <= target
            and final == COMPLETED
            and every_epoch_once
        ),
    }
    say(
        f"worker kill: interrupted after {seconds:.2f} s, resume {final} with "
        f"{len(resumed['epochs'])}/{planned} epochs"
    )
    return _jsonable(out)
