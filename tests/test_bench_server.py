"""The server-side benchmark figures (core/bench_server.py) at tiny scale: structure, not timing."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import pytest

from core import bench_server
from core.config import RunConfig

CHROMIUM = bench_server.CHROMIUM
needs_browser = pytest.mark.skipif(
    bench_server._browser_missing(CHROMIUM) is not None,
    reason=f"{bench_server._browser_missing(CHROMIUM)}",
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
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


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
    real_start = bench_server._Server.start

    def start(self: Any) -> None:
        real_start(self)
        started.append(self.pid)

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("browser exploded")

    monkeypatch.setattr(bench_server._Server, "start", start)
    monkeypatch.setattr(bench_server, "_open_home_once", boom)
    with pytest.raises(RuntimeError, match="browser exploded"):
        bench_server.idle_server_cpu(1.0, port=port)
    assert started and not _alive(started[0])
    assert not _listening(port)


@pytest.mark.slow
def test_sequential_runs_report_rss_after_each_run(tmp_path: Any) -> None:
    def tiny(i: int) -> RunConfig:
        return RunConfig(
            data="builtin:textures",
            weights="none",
            image_size=32,
            epochs=1,
            augment=False,
            dense_units=32 * (i + 1),
        )

    messages: list[str] = []
    result = bench_server.sequential_runs_rss(
        2, make_config=tiny, progress=messages.append, runs_dir=tmp_path / "runs"
    )
    assert len(result["runs"]) == len(result["rss_mb"]) == 2
    assert [r["dense_units"] for r in result["runs"]] == [32, 64]
    if result["rss_source"] is not None:
        assert all(isinstance(x, float) and x > 0 for x in result["rss_mb"])
        assert result["growth_mb"] == pytest.approx(result["rss_mb"][1] - result["rss_mb"][0])
    assert result["target_growth_mb"] == 300
    assert isinstance(result["met"], bool)
    assert len({r["run_id"] for r in result["runs"]}) == 2
    assert len(messages) >= 2
    _json_roundtrip(result)


def test_default_rss_configs_vary_and_include_fine_tuning() -> None:
    configs = [bench_server.default_rss_config(i) for i in range(5)]
    for config in configs:
        config.validate()
        assert (config.data, config.backbone, config.weights) == (
            "builtin:textures",
            "efficientnet_lite0",
            "imagenet",
        )
        assert (config.image_size, config.epochs, config.augment) == (96, 2, False)
    assert "fine_tuning" in {str(c.mode) for c in configs}
    heads = {(c.mode, c.lr, c.dense_units, c.dropout, c.feature_cache) for c in configs}
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


class FakeStore:
    """What ``throughput`` reads: a result, epoch rows and batch rows."""

    def __init__(self, fit: float | None = 9.0) -> None:
        self.fit = fit

    def result(self, run_id: str) -> dict[str, Any]:
        return {
            "status": "completed",
            "train_images": 100,
            "timings": {"fit": self.fit} if self.fit else None,
            "duration_s": 12.0,
            "best_val_accuracy": 1.0,
        }

    def epochs(self, run_id: str) -> list[dict[str, Any]]:
        rows = [("head", 1, 5.0), ("head", 2, 2.0), ("fine_tune", 1, 4.0), ("fine_tune", 2, 3.0)]
        return [
            {"epoch": i + 1, "phase": p, "phase_epoch": n, "duration_s": d}
            for i, (p, n, d) in enumerate(rows)
        ]

    def batches(self, run_id: str) -> list[dict[str, Any]]:
        return [
            {"epoch": 1, "images_per_s": 1.0},
            {"epoch": 2, "images_per_s": 40.0},
            {"epoch": 4, "images_per_s": 60.0},
            {"epoch": 4, "images_per_s": 50.0},
        ]


def test_throughput_leaves_out_each_phases_first_epoch() -> None:
    out = bench_server.throughput(FakeStore(), "r")
    assert out["steady_epochs"] == 2
    # Epochs 2 and 4 (2 s and 3 s for 100 images): the median rate, and the overall rate.
    assert out["images_per_s"] == pytest.approx((50.0 + 100 / 3) / 2, abs=1e-3)
    assert out["steady_mean_images_per_s"] == pytest.approx(200 / 5.0)
    assert out["fit_images_per_s"] == pytest.approx(400 / 9.0, abs=1e-3)
    assert out["batch_median_images_per_s"] == 50.0  # epochs 1 and 3 left out
    _json_roundtrip(out)


def test_process_tree_cpu_and_rss_of_this_process() -> None:
    cpu = bench_server._tree_cpu_s(os.getpid())
    if cpu is None:
        pytest.skip("no /proc here")
    assert cpu > 0
    rss = bench_server._status_mb("VmRSS")
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
        epochs=2,
        batch_size=16,
        augment=False,
        feature_cache="off",
        lr=3e-3,  # not the page's default: the slider is moved
        seed=7,
    )
    messages: list[str] = []
    result = bench_server.dashboard_vs_headless(config, progress=messages.append)
    assert "skipped" not in result
    assert len(result["headless"]) == 2 and len(result["dashboard"]) == 1
    dash = result["dashboard"][0]
    assert dash["config_differences"] == {}
    assert result["same_config"] is True
    assert dash["page_showed_stop_while_running"] and dash["page_showed_completion"]
    assert result["page_followed"] is True
    runs = [*result["headless"], dash]
    assert len({r["run_id"] for r in runs}) == 3
    assert result["order"] == [result["headless"][0]["run_id"], dash["run_id"],
                               result["headless"][1]["run_id"]]  # fmt: skip
    for run in runs:
        assert run["status"] == "completed"
        assert run["epochs"] == 2 and run["steady_epochs"] == 1
        assert run["images_per_s"] > 0
    assert len(result["round_ratios"]) == 1
    assert result["ratio"] == pytest.approx(
        result["dashboard_images_per_s"] / result["headless_images_per_s"], rel=1e-2
    )
    assert result["target"] == 0.9 and isinstance(result["met"], bool)
    assert result["server_stopped"] is True
    assert messages
    _json_roundtrip(result)
