"""Server-side benchmark figures (7, 8, 9, 12): the dashboard's process as a user runs it.

The dashboard's server never trains: its queue (``JobQueue(processes=True)``)
writes queued rows and ``python -m core worker`` processes, started by the server, train them.
Four measurements, each a JSON-able dict with its raw numbers, its target and ``met`` (targets
are reported, never asserted, as in ``core.bench.run``):

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
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from core.bench.browser import (
    CHROMIUM,
    browser_missing,
    config_differences,
    launch,
    new_page,
    open_browser,
    open_home_once,
    quiet,
    render_page,
)
from core.bench.common import ProgressCb
from core.bench.procstat import delta, loaded_tensorflow, own_cpu_s, status_mb, tree_cpu_s
from core.bench.server import (
    StreamlitServer,
    new_home,
    owner_pid,
    running_server,
    stop_workers,
    wait_claimed,
)
from core.config import RunConfig

__all__ = [
    "FIRST_LINES",
    "TARGETS",
    "dashboard_vs_headless",
    "default_kill_config",
    "default_rss_config",
    "idle_server_cpu",
    "sequential_runs_rss",
    "window_rate",
    "worker_kill",
]

TARGETS = {
    "dashboard_vs_headless": 0.95,  # dashboard / headless training throughput
    "sequential_runs_rss": 100.0,  # MB of the server's RSS growth over the runs
    "idle_server_cpu": 2.0,  # % of one core, and nothing printed
    "worker_kill": 5.0,  # s from kill -9 of the worker to the run showing interrupted
}
FIRST_LINES = 5  # idle output lines quoted in the result


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
    home = new_home("transfer-studio-idle-")
    result: dict[str, Any] = {}
    try:
        with running_server(home, port, say) as server:
            opened, note = open_home_once(server.url, chromium, say)
            time.sleep(settle_s)
            say(f"idle: sampling the server's CPU time for {seconds:g} s")
            cpu0, t0 = tree_cpu_s(server.pid), time.monotonic()
            time.sleep(seconds)
            cpu1, t1 = tree_cpu_s(server.pid), time.monotonic()
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
    missing = browser_missing(chromium)
    if missing:
        say(f"rss: skipped: {missing}")
        return {"skipped": missing}
    make = make_config or default_rss_config
    home = new_home("transfer-studio-rss-")
    records: list[dict[str, Any]] = []
    before: float | None = None
    server_peak: float | None = None
    loaded_tf: bool | None = None
    killed: list[int] = []
    try:
        store = RunStore(home, recover=False)
        try:
            with running_server(home, port, say) as server, open_browser(chromium) as browser:
                rendered = render_page(browser, f"{server.url}/train", "launch")
                say(f"rss: Train page rendered in {rendered:.1f} s")
                time.sleep(settle_s)
                before = status_mb("VmRSS", server.pid)
                say(f"rss: server RSS before the runs {_mb(before)}")
                for i in range(runs):
                    config = make(i)
                    config.validate()
                    label = f"rss run {i + 1}/{runs}"
                    seen = _dashboard_run(server, browser, store, config, say, label, timeout_s)
                    time.sleep(settle_s)  # the closed page's session is cleaned up
                    server_rss = status_mb("VmRSS", server.pid)
                    worker = seen["worker_pid"]
                    worker_rss = None if worker is None else status_mb("VmRSS", worker)
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
                                None if worker is None else status_mb("VmHWM", worker), 1
                            ),
                        }
                    )
                    say(
                        f"rss: run {i + 1}/{runs} ({config.mode}) done in worker {worker}: "
                        f"server RSS {_mb(server_rss)}, worker RSS {_mb(worker_rss)}"
                    )
                server_peak = status_mb("VmHWM", server.pid)
                loaded_tf = loaded_tensorflow(server.pid)
            stopped = bool(server.stopped)
        finally:
            with contextlib.suppress(Exception):  # an earlier error is the one to report
                killed = stop_workers(store, say, seen=(r["worker_pid"] for r in records))
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


def _dashboard_run(
    server: StreamlitServer,
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

    page = new_page(browser)
    try:
        run_id = launch(page, server, store, config, say, label)
        started = time.monotonic()
        me = os.getpid()
        # The server starts a worker process (its child) that claims the run: the worker's CPU
        # is counted apart from the server's.
        worker = wait_claimed(store, run_id, timeout_s=120.0)
        workers = frozenset({worker} if worker is not None else ())
        server_cpu0 = tree_cpu_s(server.pid, exclude=workers)
        worker_cpu0 = None if worker is None else tree_cpu_s(worker)
        browser_cpu0 = tree_cpu_s(me, exclude=frozenset({server.pid}))
        own0 = own_cpu_s()
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
        server_cpu1 = tree_cpu_s(server.pid, exclude=workers)
        worker_cpu1 = None if worker is None else tree_cpu_s(worker)
        browser_cpu1 = tree_cpu_s(me, exclude=frozenset({server.pid}))
        own1 = own_cpu_s()
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
    browser_cpu = delta(browser_cpu0, browser_cpu1)
    own = delta(own0, own1)
    return {
        "run_id": run_id,
        "wall_s": round(wall, 2),
        "config_differences": differences,
        "page_showed_stop_while_running": stop_seen,
        "page_showed_completion": completed_shown,
        "worker_pid": worker,
        # Trained by another process than the server (and than this benchmark).
        "trained_in_worker": worker is not None and worker not in (server.pid, os.getpid()),
        "server_cpu_s": _round(delta(server_cpu0, server_cpu1), 2),
        "worker_cpu_s": _round(delta(worker_cpu0, worker_cpu1), 2),
        # Chromium and Playwright's driver: this process's descendants except the server.
        "browser_cpu_s": _round(
            None if browser_cpu is None or own is None else browser_cpu - own, 2
        ),
    }


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


def _window(
    server: StreamlitServer,
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
        page = new_page(browser)
        page.goto(f"{server.url}/train")
        page.locator(".st-key-stop").wait_for(state="visible")  # following the running run
    # A page's load (seconds of Chromium's CPU on a busy machine), or a closed page's last
    # work, stays out of the window: it starts once the browser is quiet (``quiet``).
    settled = quiet(me, server.pid, settle_s)
    settled_after = time.monotonic() - started
    workers = frozenset({worker} if worker is not None else ())
    browser0 = tree_cpu_s(me, exclude=frozenset({server.pid}))
    own0, server0 = own_cpu_s(), tree_cpu_s(server.pid, exclude=workers)
    t0 = time.time()
    time.sleep(window_s)
    t1 = time.time()
    browser1 = tree_cpu_s(me, exclude=frozenset({server.pid}))
    own1, server1 = own_cpu_s(), tree_cpu_s(server.pid, exclude=workers)
    showed_stop = None
    if page is not None:
        showed_stop = page.locator(".st-key-stop").count() > 0
        page.close()
    if store.status(run_id) not in ACTIVE_STATUSES:
        raise StudioError(
            f"Run {run_id} ended ({store.status(run_id)}) before the windows did: give it more "
            "epochs."
        )
    browser_cpu, own = delta(browser0, browser1), delta(own0, own1)
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
        "server_cpu_s": _round(delta(server0, server1), 2),
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
    until the browser is quiet between polls (``quiet``): a user opens the page once and
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
    missing = browser_missing(chromium)
    if missing:
        say(f"dashboard vs headless: skipped: {missing}")
        return {"skipped": missing}
    config.validate()
    home = new_home("transfer-studio-dash-")
    windows: list[dict[str, Any]] = []
    worker: int | None = None
    killed: list[int] = []
    try:
        store = RunStore(home, recover=False)
        with running_server(home, port, say) as server, open_browser(chromium) as browser:
            page = new_page(browser)
            try:
                run_id = launch(page, server, store, config, say, "dashboard")
            finally:
                page.close()
            worker = wait_claimed(store, run_id, timeout_s=120.0)
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
            killed = stop_workers(store, say, seen=(worker,))
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
    """Plain JSON types only (the contract of ``core.bench.run``'s results)."""
    return json.loads(json.dumps(result, allow_nan=False, default=str))


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
        "worker_pid": owner_pid(store, run_id),
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
        worker = owner_pid(store, run_id)
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
