"""The server-side benchmark figures (core/bench/) at tiny scale: structure, not timing.

Since issue 15 the dashboard's runs train in worker processes: figures 7 and 8 check that the
server never trained them, figure 12 kills a worker mid-run.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from core.bench import browser, procstat, server
from core.bench import dashboard as bench_server
from core.config import RunConfig

CHROMIUM = browser.CHROMIUM
needs_browser = pytest.mark.skipif(
    browser.browser_missing(CHROMIUM) is not None,
    reason=f"{browser.browser_missing(CHROMIUM)}",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: a worker whose parent, the killed server, is
    gone may wait for PID 1 to reap it)."""
    from core.processes import pid_alive

    return pid_alive(pid)


def _json_roundtrip(result: dict[str, Any]) -> None:
    assert json.loads(json.dumps(result, allow_nan=False)) == result


IDLE_KEYS = {
    "seconds", "cpu_s", "cpu_percent", "lines_printed", "first_lines", "page_opened",
    "server_pid", "port", "target_cpu_percent", "met", "server_stopped",
}  # fmt: skip


def _check_idle(result: dict[str, Any], port: int) -> None:
    assert IDLE_KEYS <= set(result)
    assert result["port"] == port
    assert result["target_cpu_percent"] == 2.0
    assert isinstance(result["met"], bool)
    assert result["seconds"] >= 2.5
    if result["cpu_percent"] is not None:  # Linux: read from /proc
        assert result["cpu_percent"] >= 0.0
    assert isinstance(result["first_lines"], list)
    assert len(result["first_lines"]) <= bench_server.FIRST_LINES <= 5
    assert result["lines_before_idle"] > 0, "the server's output is captured"
    # The server (its whole process group) is gone and its port is free.
    assert result["server_stopped"] is True
    assert not _listening(port)
    assert not _alive(result["server_pid"])
    _json_roundtrip(result)


def test_idle_server_without_browser_is_measured_and_killed() -> None:
    port = _free_port()
    messages: list[str] = []
    result = bench_server.idle_server_cpu(
        3.0, port=port, progress=messages.append, chromium="/nonexistent/chromium"
    )
    _check_idle(result, port)
    assert result["page_opened"] is False
    assert "not installed" in result["page_note"]
    assert messages


@pytest.mark.slow
@needs_browser
def test_idle_server_after_one_page_visit() -> None:
    port = _free_port()
    result = bench_server.idle_server_cpu(3.0, port=port)
    _check_idle(result, port)
    assert result["page_opened"] is True


def test_idle_server_is_killed_when_the_measurement_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = _free_port()
    started: list[int] = []
    real_start = server.StreamlitServer.start

    def start(self: Any) -> None:
        real_start(self)
        started.append(self.pid)

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("browser exploded")

    monkeypatch.setattr(server.StreamlitServer, "start", start)
    monkeypatch.setattr(bench_server, "open_home_once", boom)
    with pytest.raises(RuntimeError, match="browser exploded"):
        bench_server.idle_server_cpu(1.0, port=port)
    assert started and not _alive(started[0])
    assert not _listening(port)


def _tiny_rss(i: int) -> RunConfig:
    # Only what the Train page sets changes; learning rates are its slider's stops.
    return RunConfig(
        data="builtin:textures",
        backbone="mobilenet_v2",
        weights="none",
        image_size=32,
        epochs=1,
        augment=False,
        lr=(1e-3, 3e-3)[i % 2],
    )


def test_sequential_runs_rss_skips_without_a_browser() -> None:
    result = bench_server.sequential_runs_rss(2, chromium="/nonexistent/chromium")
    assert set(result) == {"skipped"} and "/nonexistent/chromium" in result["skipped"]


@pytest.mark.slow
@pytest.mark.e2e
@needs_browser
def test_sequential_runs_report_the_servers_rss_and_train_in_workers() -> None:
    from core.bench import run as bench

    port = _free_port()
    messages: list[str] = []
    result = bench_server.sequential_runs_rss(
        2, make_config=_tiny_rss, progress=messages.append, port=port
    )
    runs = result["runs"]
    assert len(runs) == len(result["server_rss_mb"]) == len(result["worker_rss_mb"]) == 2
    assert [r["lr"] for r in runs] == [1e-3, 3e-3]
    assert result["same_config"] is True, [r["config_differences"] for r in runs]
    assert result["trained_in_workers"] is True
    assert all(r["worker_pid"] not in (None, os.getpid()) for r in runs)
    if result["rss_source"] is not None:  # Linux
        assert all(isinstance(x, float) and x > 0 for x in result["server_rss_mb"])
        assert result["server_rss_before_mb"] > 0
        assert result["growth_mb"] == pytest.approx(
            result["server_rss_mb"][-1] - result["server_rss_before_mb"], abs=0.11
        )
        assert result["growth_after_first_mb"] == pytest.approx(
            result["server_rss_mb"][1] - result["server_rss_mb"][0], abs=0.11
        )
        assert all(x is not None and x > 0 for x in result["worker_rss_mb"])
        # Reported, not a criterion: the server may import TensorFlow for its pages.
        assert isinstance(result["server_loaded_tensorflow"], bool)
    assert result["target_growth_mb"] == 100
    assert isinstance(result["met"], bool)
    assert len({r["run_id"] for r in runs}) == 2
    assert result["server_stopped"] is True and not _listening(port)
    assert not any(_alive(pid) for pid in result["workers"]), "no worker left behind"
    assert messages
    _json_roundtrip(result)
    assert "8. server RSS over 2 dashboard runs" in "\n".join(
        bench._fast_lines({"sequential_runs_rss": result})
    )


def test_default_rss_configs_vary_and_include_fine_tuning() -> None:
    from core.config import RunConfig as Config

    lrs = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)  # the Train page's stops
    default = Config()
    configs = [bench_server.default_rss_config(i) for i in range(5)]
    for config in configs:
        config.validate()
        assert (config.data, config.backbone, config.weights) == (
            "builtin:textures",
            "efficientnet_lite0",
            "imagenet",
        )
        assert (config.image_size, config.epochs, config.augment) == (96, 2, False)
        assert config.lr in lrs, "the page launches these runs: its slider must have the rate"
        # Not on the Train page: left at their defaults.
        assert (config.dense_units, config.dropout) == (default.dense_units, default.dropout)
    assert "fine_tuning" in {str(c.mode) for c in configs}
    heads = {(c.mode, c.lr, c.feature_cache) for c in configs}
    assert len(heads) == 5


def test_config_differences_ignore_what_does_not_change_the_work() -> None:
    base = RunConfig(augment=False, name="a")
    assert bench_server.config_differences(base, base.with_changes(name="b")) == {}
    assert bench_server.config_differences(base, base.with_changes(augmentations=("flip",))) == {}
    on = base.with_changes(augment=True)
    assert bench_server.config_differences(on, on.with_changes(augmentations=("flip",)))
    assert bench_server.config_differences(base, base.with_changes(dense_units=64)) == {
        "dense_units": [256, 64]
    }


def test_window_rate_counts_the_batches_that_ended_in_the_window() -> None:
    # 10 training images, batches of 4: steps of 4, 4 and the last batch's 2 images.
    rows = [
        {"t": 100.0 + k, "step": k % 3 + 1, "steps_per_epoch": 3} for k in range(9)
    ]  # t 100..108: epoch 1 steps 1-3, epoch 2 steps 1-3, epoch 3 steps 1-3
    images, rate = bench_server.window_rate(rows, 101.0, 105.0, 4, 10)
    # t 101 (step 2), 102 (step 3: 2 images), 103 (step 1), 104 (step 2); t 105 is outside
    assert images == 4 + 2 + 4 + 4
    assert rate == pytest.approx(14 / 4.0)
    assert bench_server.window_rate(rows, 200.0, 210.0, 4, 10) == (0, 0.0)
    # steps per epoch unknown: every batch counts as a whole batch
    assert (
        bench_server.window_rate([{"t": 1.0, "step": 3, "steps_per_epoch": None}], 0, 2, 4, 10)[0]
        == 4
    )


def test_process_tree_cpu_and_rss_of_this_process() -> None:
    cpu = procstat.tree_cpu_s(os.getpid())
    if cpu is None:
        pytest.skip("no /proc here")
    assert cpu > 0
    rss = procstat.status_mb("VmRSS")
    assert rss is not None and rss > 10


def test_dashboard_vs_headless_skips_without_a_browser() -> None:
    result = bench_server.dashboard_vs_headless(RunConfig(), chromium="/nonexistent/chromium")
    assert set(result) == {"skipped"}
    assert "/nonexistent/chromium" in result["skipped"]


@pytest.mark.slow
@pytest.mark.e2e
@needs_browser
def test_dashboard_vs_headless_on_a_tiny_config() -> None:
    config = RunConfig(
        data="builtin:textures",
        backbone="mobilenet_v2",
        weights="none",
        image_size=32,
        epochs=1000,  # stopped after the windows
        batch_size=16,
        augment=False,
        feature_cache="off",
        lr=3e-3,  # not the page's default: the slider is moved
        seed=7,
    )
    messages: list[str] = []
    result = bench_server.dashboard_vs_headless(
        config, progress=messages.append, pairs=1, window_s=3.0, settle_s=1.0
    )
    assert "skipped" not in result
    assert result["config_differences"] == {} and result["same_config"] is True
    windows = result["windows"]
    assert [w["page_following"] for w in windows] == [False, True, False]
    assert windows[1]["page_showed_stop"] is True and result["page_followed"] is True
    assert [w["page_showed_stop"] for w in windows[::2]] == [None, None]
    for before, after in itertools.pairwise(windows):
        assert after["t0"] >= before["t1"]  # one after another, never overlapping
    for w in windows:
        assert w["t1"] - w["t0"] == pytest.approx(3.0, abs=0.5)
        assert w["images"] > 0
        assert w["images_per_s"] == pytest.approx(w["images"] / (w["t1"] - w["t0"]), rel=0.01)
    assert windows[1]["browser_cpu_s"] is None or windows[1]["browser_cpu_s"] > 0
    none = (windows[0]["images_per_s"] + windows[2]["images_per_s"]) / 2
    assert result["pair_ratios"] == [pytest.approx(windows[1]["images_per_s"] / none, abs=1e-3)]
    assert result["ratio"] == result["pair_ratios"][0]
    # One run, trained in the server's worker process (not in the server, nor here), stopped
    # after the windows; the worker is gone with the server.
    assert result["status_after"] == "stopped" and result["epochs_done"] >= 1
    assert result["trained_in_workers"] is True
    assert result["worker_pid"] not in (None, os.getpid())
    assert not _alive(result["worker_pid"]), "the server's worker is gone with it"
    assert result["target"] == 0.95 and isinstance(result["met"], bool)
    assert result["server_stopped"] is True
    assert any("window 3/3" in m for m in messages)
    _json_roundtrip(result)


# --------------------------------------------------------------------------- figure 12


def test_worker_kill_needs_a_kill_before_the_last_epoch() -> None:
    from core.errors import ConfigError

    config = RunConfig(data="builtin:textures", epochs=3, augment=False, mode="feature_extraction")
    for bad in (3, 4):
        with pytest.raises(ConfigError, match="expected 1 to 2"):
            bench_server.worker_kill(config, kill_after=bad)


@pytest.mark.slow
def test_worker_kill_interrupts_within_seconds_and_resume_trains_every_epoch(
    tmp_path: Path,
) -> None:
    from core.bench import run as bench
    from core.runs.store import RunStore

    config = bench._tiny_kill_config()
    messages: list[str] = []
    result = bench_server.worker_kill(
        config, kill_after=2, progress=messages.append, runs_dir=tmp_path / "runs"
    )
    planned = config.planned_epochs
    killed, resumed, baseline = result["killed"], result["resumed"], result["baseline"]
    assert result["planned_epochs"] == planned == 12
    assert 2 <= killed["epochs_at_kill"] < planned
    assert killed["status_after_kill"] == "interrupted"
    assert killed["worker_pid"] != os.getpid() and not _alive(killed["worker_pid"])
    assert 0 <= result["seconds_to_interrupted"] <= 10
    assert baseline["status"] == resumed["status"] == "completed"
    assert baseline["epochs"] == resumed["epochs"] == list(range(1, planned + 1))
    assert result["epochs_completed"] == planned and result["every_epoch_once"] is True
    assert result["new_worker_resumed"] is True
    assert resumed["worker_pid"] != killed["worker_pid"]
    assert result["ratio"] > 0 and result["target_s"] == 5
    assert result["met"] is (result["seconds_to_interrupted"] <= 5)
    # The runs are in the store as reported; no worker of this figure is left running.
    store = RunStore(tmp_path / "runs")
    assert store.status(killed["run_id"]) == "completed"
    assert store.live_workers() == []
    assert messages
    _json_roundtrip(result)
    line = "\n".join(bench._fast_lines({"worker_kill": result}))
    assert "12. kill -9 of a worker" in line and "interrupted" in line


def test_stop_workers_kills_only_live_registered_workers() -> None:
    from core.processes import process_token
    from core.runs.store import RunStore

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store = RunStore(Path(os.environ["TRANSFER_STUDIO_HOME"]) / f"stop-{time.time_ns()}")
        store.register_worker(process_token(sleeper.pid))
        # A row whose pid exists but whose start time does not match: a reused pid, not ours.
        store.register_worker(f"{os.getpid()}:1")
        messages: list[str] = []
        killed = server.stop_workers(store, messages.append, grace_s=0.3)
        assert killed == [sleeper.pid]
        assert sleeper.wait(5) == -signal.SIGKILL
        assert _alive(os.getpid()) and messages
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        sleeper.wait(5)


def test_loaded_tensorflow_reads_the_process_maps() -> None:
    if not Path("/proc/self/maps").exists():
        pytest.skip("no /proc here")
    probe = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    proc = subprocess.Popen(probe, stdin=subprocess.PIPE)
    try:
        time.sleep(0.3)
        assert procstat.loaded_tensorflow(proc.pid) is False
    finally:
        proc.communicate(b"")
    assert procstat.loaded_tensorflow(proc.pid) is None, "a gone process: no answer"
