"""Benchmark figures 13-15 on tiny data: every number is there and means what it says."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from core.bench import run as bench
from core.bench.finetune import WALKED, _run_child


@pytest.mark.slow
def test_figures_13_to_15_on_tiny_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.training.cut import CHUNK_ENV

    monkeypatch.setenv(CHUNK_ENV, "8")  # the processes of figures 14-15 write 10 chunks
    result = bench.run_bench(out_dir=tmp_path, quick=True, figures=[13, 14, 15])
    f = result["figures"]

    fe = f["feature_scale"]
    assert fe["images"] == 24 and fe["bare_pass_s"] > 0 and fe["run"]["duration_s"] > 0
    # Rounded seconds of a tiny pass: the ratio agrees with them only roughly.
    assert fe["ratio"] == pytest.approx(fe["run"]["duration_s"] / fe["bare_pass_s"], rel=0.2)
    assert fe["met"] == (fe["ratio"] <= 1.15)
    own = fe["run"]["profile"]["features_s"]
    assert fe["ratio_to_own_pass"] == pytest.approx(fe["run"]["duration_s"] / own, rel=0.01)
    # Each timing's own CPU seconds and cores, and what the machine did meanwhile.
    assert set(fe["clock"]) == {"bare_before", "run", "bare_after"}
    assert all(c["own_cpu_s"] > 0 and c["iowait_s"] >= 0 for c in fe["clock"].values())
    before = fe["clock"]["bare_before"]
    assert before["wall_s"] == pytest.approx(fe["bare_pass_before_after_s"][0], abs=0.05)
    # Both seconds are rounded to 0.01: on a tiny pass the ratio of the rounded values drifts.
    slack = 0.005 * (1 + before["cores"]) / before["wall_s"] + 0.01
    assert before["cores"] == pytest.approx(before["own_cpu_s"] / before["wall_s"], abs=slack)

    ft = f["fine_tune_scale"]
    assert ft["input"] == "activations" and ft["images"] == 80
    assert ft["activation_store"]["dtype"] == "float16" and ft["activation_store"]["chunks"] == 10
    assert 100 < ft["peak_rss_mb"] < 4096  # the train process's own peak (its VmHWM)
    assert len(ft["fine_tune_epoch_s"]) == 3 and len(ft["head_epoch_s"]) == 3
    assert ft["limit"]["seconds"] > 0 and ft["limit"]["rows"] == 64  # the training images
    assert ft["epoch_vs_limit"] > 0
    assert ft["accuracy"]["feature_extraction"] is not None
    walk = ft["browser"]
    # CI has the browser (TRANSFER_STUDIO_REQUIRE_BROWSER): a skipped walk fails there.
    if "skipped" not in walk or os.environ.get("TRANSFER_STUDIO_REQUIRE_BROWSER") == "1":
        # The fine-tuned run's review, then each page walked, timed and shot (in the bench's
        # folder when quick, never in the repository's screenshots).
        assert walk["review_s"] > 0 and set(WALKED) <= set(walk["seconds"]), walk
        shots = [Path(p) for p in walk["screenshots"].values()]
        assert shots and all(p.is_file() and p.parent == tmp_path / "screenshots" for p in shots)
        assert all(p.name.startswith("finetune-") for p in shots)
        worst = max(walk["seconds"][page] for page in WALKED)
        assert ft["met"]["pages"] == (worst <= 3.0)

    kill = f["fine_tune_kill"]
    assert kill["chunks"] == 10 and 0 < kill["chunks_stored_at_kill"] < 10
    assert kill["resume_status"] == "completed"
    assert kill["reused_chunks"] == kill["chunks_stored_at_kill"] and kill["met"]
    assert kill["resume_startup_s"] > 0
    assert kill["seconds_lost"] == pytest.approx(
        kill["seconds_since_last_chunk_at_kill"] + kill["resume_startup_s"], abs=0.2
    )

    lines = bench.format_bench(result).splitlines()
    assert [line[:3] for line in lines[:3]] == ["13.", "14.", "15."]


def test_a_childs_peak_is_its_own_not_its_large_parents(tmp_path: Path) -> None:
    # From a parent holding ~1.5 GB (a test process after many tests), wait4's ru_maxrss of a
    # fork+exec'd child carries the parent's peak; the child's own VmHWM does not.
    held = np.ones(1_500 * 1024**2 // 8)  # touched: resident
    child = _run_child(
        [sys.executable, "-c", "import time; time.sleep(1.0); print('{}')"], tmp_path / "log"
    )
    assert child["returncode"] == 0 and child["result"] == {}
    assert 1 < child["peak_rss_mb"] < 500, child
    del held
