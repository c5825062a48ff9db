"""Server-side benchmark figures: the dashboard's process as a user runs it.

Since issue 15 the dashboard's server never trains: its queue (``JobQueue(processes=True)``)
writes queued rows and ``python -m core worker`` processes, started by the server, train them.
Four measurements, each a JSON-able dict with its raw numbers, its target and ``met`` (targets
are reported, never asserted, as in ``core.bench``):

7. ``dashboard_vs_headless``: training throughput of a run launched from the Train page of a real
   ``streamlit run`` server (trained by the worker process the server starts) while headless
   Chromium keeps the page open following it live, vs the same config trained by
   ``python -m core train`` with no page open (same studio home, same machine, interleaved:
   headless, dashboard, headless...);
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
    from core.runs.store import _owner_alive, _pid_alive, _process_token

    host = socket.gethostname()
    tokens = {w["token"] for w in store.workers() if w["host"] == host and w["pid"]}
    # A pid seen a moment ago is identified by its start time now, so the wait below never
    # follows a pid the system has handed to another process since.
    tokens |= {_process_token(pid) for pid in seen if pid is not None and _pid_alive(pid)}
    deadline = time.monotonic() + grace_s
    while any(_owner_alive(t) for t in tokens) and time.monotonic() < deadline:
        time.sleep(0.2)
    killed = []
    for token in sorted(tokens):
        if _owner_alive(token):
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


def throughput(store: Any, run_id: str) -> dict[str, Any]:
    """A finished run's training throughput, read from what its run records.

    ``images_per_s`` (the figure) is the median over every epoch but the first of each phase
    (the first traces the step) of the training images over the epoch's duration: its training
    steps plus its validation pass, as a user waits for it. The median, because on a shared
    machine another user's burst can slow one epoch several-fold. Beside it: the same epochs'
    images over their summed durations, the whole fit stage (first epochs included) and the
    median of the per-batch rates (training steps only).
    """
    result = store.result(run_id)
    epochs = store.epochs(run_id)
    train = int(result["train_images"] or 0)
    steady = [e for e in epochs if e["phase_epoch"] > 1 and e["duration_s"]]
    steady_s = sum(float(e["duration_s"]) for e in steady)
    fit_s = (result.get("timings") or {}).get("fit")
    first_epochs = {e["epoch"] for e in epochs if e["phase_epoch"] == 1}
    rates = [
        float(b["images_per_s"])
        for b in store.batches(run_id)
        if b["images_per_s"] and b["epoch"] not in first_epochs
    ]
    steady_rate = (
        statistics.median(train / float(e["duration_s"]) for e in steady) if steady else None
    )
    fit_rate = train * len(epochs) / fit_s if fit_s else None
    return {
        "run_id": run_id,
        "status": str(result["status"]),
        "train_images": train,
        "epochs": len(epochs),
        "steady_epochs": len(steady),
        "epoch_seconds": [round(float(e["duration_s"] or 0.0), 3) for e in epochs],
        "images_per_s": _round(steady_rate if steady_rate is not None else fit_rate, 3),
        "measure": "median epoch after the first of each phase" if steady_rate else "fit stage",
        "steady_mean_images_per_s": _round(
            train * len(steady) / steady_s if steady_s > 0 else None, 3
        ),
        "fit_images_per_s": _round(fit_rate, 3),
        "batch_median_images_per_s": _round(statistics.median(rates), 3) if rates else None,
        "duration_s": result["duration_s"],
        "timings": result.get("timings"),
        "best_val_accuracy": result["best_val_accuracy"],
    }


def _headless_run(
    config_file: Path, home: Path, say: ProgressCb, label: str, timeout_s: float
) -> tuple[str, float]:
    """``python -m core train --config FILE --json`` in a fresh process; (run id, wall s)."""
    from core.errors import StudioError

    say(f"{label}: python -m core train (no page open)")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "core", "train", "--config", str(config_file), "--json"],
        cwd=ROOT,
        env={**os.environ, HOME_ENV: str(home)},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    wall = time.monotonic() - started
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = {}
    if done.returncode != 0 or result.get("status") != "completed":
        raise StudioError(
            f"The headless run failed (exit {done.returncode}): {done.stderr.strip()[-800:]}"
        )
    return str(result["run_id"]), wall


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
        page.goto(f"{server.url}/train")
        page.locator(".st-key-launch").wait_for(state="visible")
        _settle(page)
        page.set_default_timeout(WIDGET_TIMEOUT_MS)
        _configure_train_page(page, config)
        before = {r["run_id"] for r in store.list_runs()}
        say(f"{label}: Launch on the Train page")
        _widget(page, "launch", "button").click()
        started = time.monotonic()
        run_id = None
        while run_id is None:
            new = [r["run_id"] for r in store.list_runs() if r["run_id"] not in before]
            run_id = new[0] if new else None
            if run_id is None:
                if time.monotonic() - started > 60:
                    raise StudioError("The Train page's Launch queued no run within 60 s.")
                time.sleep(0.2)
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


def dashboard_vs_headless(
    config: RunConfig,
    port: int | None = None,
    chromium: str = CHROMIUM,
    progress: ProgressCb | None = None,
    rounds: int = 1,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """Training throughput with a browser page following the run vs without (figure 7).

    One temporary studio home serves both sides. A ``streamlit run`` server of the app is
    started and stays up (idle when no page is open). Then, ``rounds`` times: ``config`` is
    trained by ``python -m core train --config`` in a fresh process with no page open, and
    launched from the Train page (its widgets set to ``config``) in headless Chromium, so the
    worker process the server starts trains it, the page following it live until it completes
    (the worker stays up between runs, as it does for a user); a last
    headless run closes the sequence (headless, dashboard, headless...), so a drift of the
    machine's load hits both sides alike. Each run's throughput is read from the store
    (``throughput``); the ratio is the median over rounds of each dashboard run's figure over
    the mean of the two headless runs around it (``ratio_of_means`` beside it).
    Returns ``{"skipped": why}`` when Chromium or Playwright is missing.
    """
    from core.runs.store import RunStore

    say = progress or (lambda _msg: None)
    missing = _browser_missing(chromium)
    if missing:
        say(f"dashboard vs headless: skipped: {missing}")
        return {"skipped": missing}
    config.validate()
    home = _new_home("transfer-studio-dash-")
    config_file = home / "bench-config.json"
    config_file.write_text(config.to_json())
    headless: list[dict[str, Any]] = []
    dashboard: list[dict[str, Any]] = []
    order: list[str] = []
    killed: list[int] = []
    try:
        store = RunStore(home, recover=False)
        with _server(home, port, say) as server:
            for r in range(rounds + 1):
                run_id, wall = _headless_run(config_file, home, say, f"headless {r + 1}", timeout_s)
                headless.append(
                    {**throughput(store, run_id), "wall_s": round(wall, 2), "load": _load()}
                )
                order.append(run_id)
                say(f"headless {r + 1}: {_rate(headless[-1])}")
                if r == rounds:
                    break
                with _browser(chromium) as browser:  # no browser at all during headless runs
                    seen = _dashboard_run(
                        server, browser, store, config, say, f"dashboard {r + 1}", timeout_s
                    )
                dashboard.append({**throughput(store, seen["run_id"]), **seen, "load": _load()})
                order.append(seen["run_id"])
                say(f"dashboard {r + 1}: {_rate(dashboard[-1])}")
        stopped = bool(server.stopped)
    finally:
        with contextlib.suppress(Exception):  # an earlier error is the one to report
            killed = _stop_workers(store, say, seen=(d["worker_pid"] for d in dashboard))
        shutil.rmtree(home, ignore_errors=True)
    head = [h["images_per_s"] for h in headless if h["images_per_s"]]
    dash = [d["images_per_s"] for d in dashboard if d["images_per_s"]]
    head_rate = statistics.fmean(head) if head else None
    dash_rate = statistics.fmean(dash) if dash else None
    # Each dashboard run against the mean of the headless runs either side of it: a drift of
    # other users' load over minutes hits a round's two sides about alike. The figure is the
    # median of those per-round ratios.
    per_round: list[float] = []
    for i, d in enumerate(dashboard):
        sides = [h["images_per_s"] for h in headless[i : i + 2]]
        if d["images_per_s"] and all(sides):
            per_round.append(d["images_per_s"] / statistics.fmean(sides))
    ratio = statistics.median(per_round) if per_round else None
    same_config = not any(d["config_differences"] for d in dashboard)
    followed = all(
        d["page_showed_stop_while_running"] and d["page_showed_completion"] for d in dashboard
    )
    in_workers = bool(dashboard) and all(d["trained_in_worker"] for d in dashboard)
    out = {
        "config": config.to_dict(),
        "headless": headless,
        "dashboard": dashboard,
        "order": order,
        "headless_images_per_s": _round(head_rate, 3),
        "dashboard_images_per_s": _round(dash_rate, 3),
        "round_ratios": [round(x, 3) for x in per_round],
        "ratio": _round(ratio, 3),
        "ratio_of_means": _round(dash_rate / head_rate if head_rate and dash_rate else None, 3),
        "same_config": same_config,
        "page_followed": followed,
        "trained_in_workers": in_workers,
        "server_stopped": stopped,
        "workers_killed_at_end": killed,
        "target": TARGETS["dashboard_vs_headless"],
        "met": bool(
            ratio is not None
            and ratio >= TARGETS["dashboard_vs_headless"]
            and same_config
            and in_workers
        ),
    }
    ratio_text = "n/a" if ratio is None else f"{ratio:.3f}"
    say(f"dashboard vs headless: ratio {ratio_text}")
    return _jsonable(out)


def _load() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other users' work shows here)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _rate(run: dict[str, Any]) -> str:
    rate = run.get("images_per_s")
    return f"{rate:.1f} img/s ({run['measure']})" if rate else "no throughput recorded"


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
