"""Benchmark figures 13-15 on tiny data: every number is there and means what it says."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.bench import run as bench


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

    ft = f["fine_tune_scale"]
    assert ft["input"] == "activations" and ft["images"] == 80
    assert ft["activation_store"]["dtype"] == "float16" and ft["activation_store"]["chunks"] == 10
    assert 100 < ft["peak_rss_mb"] < 4096  # the train process's own peak, from wait4
    assert len(ft["fine_tune_epoch_s"]) == 3 and len(ft["head_epoch_s"]) == 3
    assert ft["limit"]["seconds"] > 0 and ft["limit"]["rows"] == 64  # the training images
    assert ft["epoch_vs_limit"] > 0
    assert ft["accuracy"]["feature_extraction"] is not None

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
