"""Benchmark figure 16 (many classes): chosen by number, and its structure on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.bench import run as bench
from core.bench import scale as bench_scale


def test_figure_16_is_chosen_by_number() -> None:
    assert 16 in bench.ALL_FIGURES
    assert bench._selected([16, 12]) == [12, 16]


@pytest.mark.slow
def test_figure_16_on_tiny_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path / "home"))
    lines: list[str] = []
    d = bench_scale.many_classes(
        tmp_path / "out", classes=3, per_class=8, image_size=32, epochs=1, progress=lines.append,
        walk=False,
    )  # fmt: skip
    assert json.loads(json.dumps(d)) == d  # plain JSON
    assert (d["classes"], d["images"], d["measured_at_target_size"]) == (3, 24, False)
    ev = d["evaluation"]
    assert ev["val_images"] == d["run"]["val_images"] > 0
    assert 0 < ev["json_mb"] <= ev["json_mb_with_every_probability"] + 1e-3
    assert {m["points"] for m in d["embedding_map"].values()} == {24}
    pages = d["pages"]
    assert "error" not in pages, pages
    assert pages["run_page_problems"] == [] and pages["predict_problems"] == []
    assert pages["predict_charts"] == 1 and pages["run_page_s"] > 0 and pages["predict_s"] > 0
    assert all(pages[key] > 0 for key in bench_scale.PAGE_KEYS)
    assert pages["data_page_problems"] == pages["review_problems"] == []
    assert pages["compare_page_problems"] == [] and pages["review_cards"] >= 3  # every class
    assert pages["data_page_health"]  # the health check said something: fine, or warnings
    assert set(d["projected"]) == {"25000", "50000"}
    assert d["projected"]["50000"]["review_s"] == pytest.approx(
        d["projected"]["25000"]["review_s"] * 2, abs=0.2
    )
    assert set(d["met"]) == {
        "evaluation_json", "review", "embedding_map", "pages", "browser_pages", "server_rss",
    }  # fmt: skip
    assert d["browser"] == {"skipped": "not asked (walk=False)"}
    assert (tmp_path / "out" / "scale-studio-3x8" / "cache").resolve() == (
        tmp_path / "home" / "cache"
    ).resolve()  # the pages see the caches the run filled
    assert bench_scale.format_line(d).startswith("16. 3 classes, 24 images")
    assert any(line.startswith("figure 16: review") for line in lines)
