"""Benchmark figure 16: a run of many classes (default 200 x 250 = 50,000 generated images).

On a generated set (``core.data.generated``: small JPEGs, one photo region, colour cast and
stripe texture per class) one feature-extraction run (EfficientNet-Lite0 at 96 px) trains in a
studio of its own; then, each timed on its own:

* the evaluation the worker wrote as the run completed: its seconds, ``evaluation.json``'s size
  (target ≤ 10 MB) against the same images with every class's probability inline (measured,
  not estimated), and the probability array file beside it;
* review (every image scored, cold; target ≤ 60 s);
* the embedding map, PCA and t-SNE (a stratified sample of at most 5,000 images; target ≤ 30 s);
* the Data page (its health check on the set), the Run page, its review (every class's suspects)
  and embedding map, Compare and Predict (top-5 of 200) rendered headless by Streamlit's AppTest
  in a process of its own (``app.page_timing``; target ≤ 3 s each).

Every stage that grows with the image count is also given per image, and projected to 25,000
and 50,000 images (per-image cost x N): the projection for a size that was not measured, said
as such.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.bench.common import GENERATED_PX, ProgressCb, clear_embeddings, generated_set, timed_run
from core.bench.walk import share_caches, walk_or_error
from core.config import RunConfig

__all__ = [
    "CLASSES",
    "EPOCHS",
    "IMAGE_SIZE",
    "PER_CLASS",
    "TARGETS",
    "format_line",
    "many_classes",
]

CLASSES = 200
PER_CLASS = 250
IMAGE_SIZE = 96  # the backbone's input (the files are 64 px: the model resizes them)
EPOCHS = 3
PROJECT_TO = (25_000, 50_000)
# The page renders held to ``TARGETS["page_s"]`` (``app.page_timing``'s keys).
PAGE_KEYS = (
    "data_page_s", "run_page_s", "review_page_s", "review_map_s", "compare_page_s", "predict_s",
)  # fmt: skip
TARGETS = {
    "evaluation_mb": 10.0, "review_s": 60.0, "map_s": 30.0, "page_s": 3.0, "server_mb": 1024.0,
}  # fmt: skip
WALKED = ("data", "run", "review", "compare", "predict")  # the browser walk's timed pages
SHOTS = Path(__file__).resolve().parents[2] / "tests" / "screenshots"
ROOT = Path(__file__).resolve().parents[2]  # the repository


def many_classes(
    out: Path,
    classes: int = CLASSES,
    per_class: int = PER_CLASS,
    image_size: int = IMAGE_SIZE,
    epochs: int = EPOCHS,
    progress: ProgressCb | None = None,
    walk: bool = True,
) -> dict[str, Any]:
    """Figure 16 (see the module docstring); a JSON-able dict. ``walk``: also walk the pages in
    headless Chromium (``core.bench.walk``; screenshots in ``tests/screenshots``)."""
    from core.data import load_dataset
    from core.runs.evaluate import EVALUATION_FILE, PROBABILITIES_FILE
    from core.training.jobs import JobQueue
    from core.training.review import embedding_map, review_run

    say = progress or (lambda _msg: None)
    images = classes * per_class
    say(f"figure 16: data: {classes} classes x {per_class} images ({images:,})")
    started = time.perf_counter()
    folder = generated_set(classes, per_class, say)
    generate_s = time.perf_counter() - started
    home = out / f"scale-studio-{classes}x{per_class}"  # its own studio: the pages see one run
    shutil.rmtree(home, ignore_errors=True)
    jobs = JobQueue(home)
    config = RunConfig(
        data=str(folder), image_size=image_size, epochs=epochs, augment=False,
        mode="feature_extraction", name=f"{classes} classes",
    )  # fmt: skip
    # Cold: features a previous benchmark left in the embedding cache would skip the pass.
    index = load_dataset(config.data, val_split=config.val_split, seed=config.seed)
    clear_embeddings(config, [*index.train_paths, *index.val_paths], image_size)
    run = timed_run(jobs, config, say, f"{classes} classes")
    run_id = run["run_id"]
    run_dir = jobs.store.run_dir(run_id)
    evaluation = json.loads((run_dir / EVALUATION_FILE).read_text("utf-8"))
    json_bytes = (run_dir / EVALUATION_FILE).stat().st_size
    matrix = np.load(run_dir / PROBABILITIES_FILE, mmap_mode="r")
    inline_bytes = _inline_size(evaluation, matrix)
    val = len(evaluation["images"])
    say(
        f"figure 16: evaluation.json {json_bytes / 1e6:.2f} MB ({inline_bytes / 1e6:.1f} MB inline)"
    )

    # CPU seconds beside the wall clock: on a shared machine the wall clock also counts the
    # other processes' turns; the CPU seconds are the stage's own work (its threads summed).
    started, cpu = time.perf_counter(), time.process_time()
    review = review_run(jobs.store, run_id)
    review_s, review_cpu = time.perf_counter() - started, time.process_time() - cpu
    say(f"figure 16: review {review_s:.1f} s, {review_cpu:.1f} CPU s "
        f"({len(review.suspects):,} images)")  # fmt: skip
    maps: dict[str, Any] = {}
    for method in ("pca", "tsne"):
        started, cpu = time.perf_counter(), time.process_time()
        emap = embedding_map(jobs.store, run_id, method)
        seconds = time.perf_counter() - started
        maps[method] = {"seconds": round(seconds, 2), "points": len(emap.points),
                        "cpu_s": round(time.process_time() - cpu, 2),
                        "scored": emap.scored, "classes": emap.classes}  # fmt: skip
        say(f"figure 16: map {method} {seconds:.1f} s ({len(emap.points):,} points)")
    image = next(iter(sorted(folder.glob("*/*.jpg"))))
    share_caches(home)
    pages = _pages(home, run_id, image, str(folder), say)
    browser: dict[str, Any] = {"skipped": "not asked (walk=False)"}
    if walk:
        browser = walk_or_error(home, run_id, str(folder), image, SHOTS, say)

    trained = run["train_images"] + run["val_images"]
    feature_s = (run.get("feature_stage") or {}).get("seconds")
    # Per image of the set (training + validation), so each projects as cost x N at the same
    # validation share; the map is left out: it draws a capped sample whatever N is.
    per_image: dict[str, float | None] = {
        "generate_ms": _ms(generate_s, images) if generate_s > 1.0 else None,  # else reused
        "feature_pass_ms": _ms(feature_s, trained) if feature_s else None,
        "run_ms": _ms(run["duration_s"], trained),
        "evaluation_ms": _ms(float(evaluation.get("duration_s") or 0.0), trained),
        "review_ms": _ms(review_s, trained),
    }
    json_per_image = json_bytes / trained
    projected = {
        str(n): {
            key.removesuffix("_ms") + "_s": round(value * n / 1000, 1)
            for key, value in per_image.items()
            if value is not None
        }
        | {"evaluation_json_mb": round(json_per_image * n / 1e6, 2)}
        for n in PROJECT_TO
    }
    page_worst = max((float(pages.get(key) or 0.0) for key in PAGE_KEYS), default=0.0)
    result: dict[str, Any] = {
        "classes": classes,
        "images": images,
        "measured_at_target_size": (classes, per_class) == (CLASSES, PER_CLASS),
        "data": {"root": str(folder), "file_px": GENERATED_PX, "generate_s": round(generate_s, 2)},
        "config": {k: config.to_dict()[k] for k in ("backbone", "mode", "image_size", "epochs")},
        "run": run,
        "evaluation": {
            "seconds": evaluation.get("duration_s"),
            "val_images": val,
            "accuracy": evaluation["accuracy"],
            "json_mb": round(json_bytes / 1e6, 3),
            "json_mb_with_every_probability": round(inline_bytes / 1e6, 3),
            "array_mb": round((run_dir / PROBABILITIES_FILE).stat().st_size / 1e6, 3),
        },
        "review_s": round(review_s, 2),
        "review_cpu_s": round(review_cpu, 2),
        "load_average": _load_average(),
        "embedding_map": maps,
        "pages": pages,
        "browser": browser,
        "per_image": {**per_image, "evaluation_json_bytes": round(json_per_image, 1)},
        "projected": projected,
        "targets": TARGETS,
    }
    result["met"] = {
        "evaluation_json": json_bytes / 1e6 <= TARGETS["evaluation_mb"],
        "review": review_s <= TARGETS["review_s"],
        "embedding_map": all(m["seconds"] <= TARGETS["map_s"] for m in maps.values()),
        "pages": all(pages.get(key) for key in PAGE_KEYS) and page_worst <= TARGETS["page_s"],
        "browser_pages": bool(browser.get("seconds"))
        and all(v <= TARGETS["page_s"] for k, v in browser["seconds"].items() if k in WALKED),
        "server_rss": (browser.get("server_rss_mb_max") or float("inf")) <= TARGETS["server_mb"],
    }
    return result


def _load_average() -> list[float] | None:
    """The machine's 1, 5 and 15 minute load averages as the figure ends (other processes'
    work shows in every wall-clock figure)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _ms(seconds: float, count: int) -> float:
    return round(seconds / max(count, 1) * 1000, 4)


def _inline_size(evaluation: dict[str, Any], matrix: np.ndarray) -> int:
    """Bytes ``evaluation.json`` would take with every probability of every image inline."""
    images = [
        {**img, "probabilities": [round(float(v), 6) for v in row]}
        for img, row in zip(evaluation["images"], matrix, strict=True)
    ]
    return len(json.dumps({**evaluation, "images": images}))


def _pages(home: Path, run_id: str, image: Path, data: str, say: ProgressCb) -> dict[str, Any]:
    """``app.page_timing`` in a process of its own on the studio at ``home``."""
    env = {**os.environ, "TRANSFER_STUDIO_HOME": str(home)}
    command = [sys.executable, "-m", "app.page_timing", "--run", run_id, "--image", str(image),
               "--data", data]  # fmt: skip
    say("figure 16: rendering Data, Run (review, map), Compare and Predict (AppTest)")
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_line(d: dict[str, Any]) -> str:
    """The figure's line in ``format_bench``."""
    ev, pages, maps = d["evaluation"], d["pages"], d["embedding_map"]
    met = d["met"]
    size = "" if d["measured_at_target_size"] else " (not the target 200 x 250: see projected)"
    return (
        f"16. {d['classes']} classes, {d['images']:,} images{size}: run "
        f"{d['run']['duration_s']:.0f} s; evaluation.json {ev['json_mb']:.2f} MB (every "
        f"probability inline: {ev['json_mb_with_every_probability']:.1f} MB) "
        f"{_met(met['evaluation_json'])}; review {d['review_s']:.1f} s "
        f"({d.get('review_cpu_s', 0):.1f} CPU s) {_met(met['review'])}; "
        f"map PCA {maps['pca']['seconds']:.1f} s, t-SNE {maps['tsne']['seconds']:.1f} s "
        f"({maps['tsne']['points']:,} points) {_met(met['embedding_map'])}; pages: Data "
        f"{pages.get('data_page_s', '-')} s, Run {pages.get('run_page_s', '-')} s, review "
        f"{pages.get('review_page_s', '-')} s, map {pages.get('review_map_s', '-')} s, Compare "
        f"{pages.get('compare_page_s', '-')} s, Predict {pages.get('predict_s', '-')} s "
        f"{_met(met['pages'])}; {_walk_text(d.get('browser') or {}, met)}"
    )


def _walk_text(browser: dict[str, Any], met: dict[str, bool]) -> str:
    if not browser.get("seconds"):
        return f"browser walk: {browser.get('skipped', 'not run')}"
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in browser["seconds"].items() if k in WALKED)
    return (
        f"browser walk (1280x800): {seconds} {_met(met['browser_pages'])}; server RSS max "
        f"{browser['server_rss_mb_max']} MB {_met(met['server_rss'])}"
    )


def _met(value: bool) -> str:
    return "met" if value else "MISSED"
