"""The benchmark's plumbing on tiny data: structure, data, cold/warm cache. No timing asserted."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.bench import run as bench

FIGURES = ("feature_cache", "warm_cache", "input_pipeline", "predict_latency")


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, list[str]]:
    """One quick benchmark for the whole module (well under a minute)."""
    out = tmp_path_factory.mktemp("bench")
    messages: list[str] = []
    result = bench.run_bench(
        out_dir=out, quick=True, progress=messages.append, figures=[1, 2, 3, 4]
    )
    return result, out, messages


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_four_figures_with_positive_finite_ratios(quick: tuple) -> None:
    result, _, messages = quick
    assert set(result["figures"]) == set(FIGURES)
    for name in FIGURES:
        figure = result["figures"][name]
        assert _positive(figure["ratio"]), name
        assert _positive(figure["target"]), name
        assert isinstance(figure["met"], bool), name
    assert messages, "progress is reported"
    # JSON-able as it is (the CLI prints it with --json).
    assert json.loads(json.dumps(result, allow_nan=False)) == result


@pytest.mark.slow
def test_runs_report_accuracies_durations_and_stage_profiles(quick: tuple) -> None:
    result, _, _ = quick
    fc = result["figures"]["feature_cache"]
    runs = [fc["cached"], fc["per_epoch"], result["figures"]["warm_cache"]["warm"]]
    for run in runs:
        assert 0.0 <= run["best_val_accuracy"] <= 1.0
        assert 0.0 <= run["final_val_accuracy"] <= 1.0
        assert run["epochs"] == result["settings"]["epochs"] == 2
        assert _positive(run["duration_s"])
        profile = run["profile"]
        assert all(v >= 0 for v in profile.values())
        stages = ("scan_s", "split_s", "build_s", "features_s", "fit_s", "save_s", "other_s")
        # The stages split duration_s (a little slack for rounding).
        assert sum(profile[k] for k in stages) == pytest.approx(run["duration_s"], abs=0.05)
        assert profile["build_s"] > 0 and profile["fit_s"] > 0
    assert 0.0 <= fc["accuracy_difference_points"] <= 100.0


@pytest.mark.slow
def test_embedding_cache_cold_for_the_cold_run_and_warm_for_the_warm_run(quick: tuple) -> None:
    result, _, _ = quick
    fc, wc = result["figures"]["feature_cache"], result["figures"]["warm_cache"]
    assert fc["cached"]["feature_stage"]["cached"] is False
    assert wc["warm"]["feature_stage"]["cached"] is True
    assert wc["cold"]["run_id"] == fc["cached"]["run_id"]
    images = result["data"]["train_images"] + result["data"]["val_images"]
    assert fc["cached"]["feature_stage"]["images"] == images
    assert fc["cached"]["profile"]["features_s"] > wc["warm"]["profile"]["features_s"]
    assert "feature_stage" not in fc["per_epoch"], "feature_cache=off has no feature stage"


@pytest.mark.slow
def test_input_pipeline_and_latency_figures(quick: tuple) -> None:
    result, _, _ = quick
    ip = result["figures"]["input_pipeline"]
    assert _positive(ip["files_images_per_s"]) and _positive(ip["memory_images_per_s"])
    per_round = [f / m for f, m in zip(ip["files_rounds"], ip["memory_rounds"], strict=True)]
    assert ip["ratio"] == pytest.approx(float(np.median(per_round)), rel=0.01)
    pl = result["figures"]["predict_latency"]
    assert 0 < pl["p50_ms"] <= pl["p95_ms"]
    assert pl["method"] in pl["end_to_end"]
    assert set(pl["call_only"]) == {"model_call", "predict_on_batch", "tf_function"}
    for stats in [*pl["end_to_end"].values(), *pl["call_only"].values(), pl["decode"]]:
        assert 0 < stats["p50_ms"] <= stats["p95_ms"]
    # The figure is the fastest end-to-end way measured.
    assert pl["p50_ms"] == min(s["p50_ms"] for s in pl["end_to_end"].values())


@pytest.mark.slow
def test_generated_dataset_has_the_claimed_files_and_classes(quick: tuple) -> None:
    result, out, _ = quick
    data = result["data"]
    root = Path(data["root"])
    assert root.parent == out
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert folders == sorted(bench.DATA_CLASSES) and data["classes_found"] == len(folders)
    files = list(root.glob("*/*.jpg"))
    assert len(files) == data["files"] == len(folders) * data["images_per_class"]
    assert data["train_images"] + data["val_images"] == data["files"]
    for folder in folders:
        assert len(list((root / folder).glob("*.jpg"))) == data["images_per_class"]


@pytest.mark.slow
def test_format_bench_has_one_line_per_figure(quick: tuple) -> None:
    text = bench.format_bench(quick[0])
    for prefix in (
        "1. feature cache",
        "2. warm embedding cache",
        "3. input pipeline",
        "4. predict",
    ):
        assert prefix in text
    assert "target" in text and "machine: " in text


@pytest.mark.slow
def test_the_run_records_hold_the_stage_timings_the_profiles_come_from(quick: tuple) -> None:
    from core.runs.store import RunStore

    result, _, _ = quick
    store = RunStore(result["settings"]["runs_dir"])
    fc = result["figures"]["feature_cache"]
    for run in (fc["cached"], fc["per_epoch"], result["figures"]["warm_cache"]["warm"]):
        recorded = store.result(run["run_id"])
        timings = recorded["timings"]
        assert timings is not None and recorded["duration_s"] is not None
        assert {"scan", "split", "build", "fit", "save"} <= set(timings)
        assert all(v >= 0 for v in timings.values())
        top = ("scan", "split", "build", "features", "activations", "inputs", "fit", "save")
        assert sum(timings.get(k, 0.0) for k in top) <= recorded["duration_s"]
        assert run["profile"]["fit_s"] == pytest.approx(timings["fit"], abs=1e-3)
    assert "features" in (store.result(fc["cached"]["run_id"])["timings"] or {})
    assert "features" not in (store.result(fc["per_epoch"]["run_id"])["timings"] or {})


def test_generation_is_deterministic_and_reused(tmp_path: Path) -> None:
    a = bench.generate_dataset(tmp_path / "a", 2)
    b = bench.generate_dataset(tmp_path / "b", 2)
    assert a["files"] == b["files"] == 2 * len(bench.DATA_CLASSES)
    for path in sorted((tmp_path / "a").glob("*/*.jpg")):
        twin = tmp_path / "b" / path.parent.name / path.name
        assert path.read_bytes() == twin.read_bytes()
    assert not a["reused"] and bench.generate_dataset(tmp_path / "a", 2)["reused"]
    # Another size is another dataset: rebuilt, not mixed with the old files.
    c = bench.generate_dataset(tmp_path / "a", 3)
    assert not c["reused"] and c["files"] == 3 * len(bench.DATA_CLASSES)


def test_figures_are_chosen_by_number_and_range() -> None:
    from core.cli.bench import figure_list
    from core.errors import ConfigError

    assert figure_list("1,5-7") == [1, 5, 6, 7] and figure_list(None) is None
    assert bench._selected(None) == list(bench.ALL_FIGURES)
    assert bench._selected([6, 5, 6]) == [5, 6]
    assert bench._selected([12, 11]) == [11, 12]
    assert bench._selected([19, 18]) == [18, 19]  # the Ray figures
    assert bench._selected([16, 13, 14, 15]) == [13, 14, 15, 16]  # the scale figures
    with pytest.raises(ConfigError, match="figure"):
        bench._selected([17])  # 13-16 are figures now; 17 is not
    with pytest.raises(ConfigError, match="5-10"):
        figure_list("five")


@pytest.mark.slow
def test_the_fast_path_figures_on_tiny_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.training import litert

    monkeypatch.setenv(litert.RUNTIME_ENV, "auto")
    # Figure 8 needs a real server and page: tests/core/test_bench_server.py runs it.
    result = bench.run_bench(out_dir=tmp_path, quick=True, figures=[5, 6, 10])
    f = result["figures"]
    assert set(f) == {"one_click_default", "augmented_views", "feature_pass"}
    assert f["one_click_default"] == {"skipped": "quick"}
    views = f["augmented_views"]
    assert views["cached"]["feature_stage"]["cached"] is False  # cold, as the figure says
    assert set(views["sweep"]) == {"2", str(views["views"])} and _positive(views["ratio"])
    assert views["data"]["files"] == 4 * 8
    rates = f["feature_pass"]
    assert _positive(rates["keras_images_per_s"]) and _positive(rates["litert_images_per_s"])
    assert rates["min_cosine"] >= 0.999 and rates["check"]["runtime"] == "litert"
    text = bench.format_bench(result)
    assert all(f"{n}. " in text for n in (6, 10)) and "1. feature cache" not in text
    assert json.loads(json.dumps(result, allow_nan=False)) == result
