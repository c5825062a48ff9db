"""What the benchmark modules share: timed runs through the job queue and cache clearing."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.config import RunConfig

__all__ = [
    "ProgressCb",
    "GENERATED_PX",
    "as_float",
    "breakdown",
    "clear_embeddings",
    "generated_set",
    "timed_run",
]

ProgressCb = Callable[[str], None]
GENERATED_PX = 64  # px of the generated JPEGs of figures 13-16 (a run resizes them to its input)


def generated_set(classes: int, per_class: int, say: ProgressCb | None = None) -> Path:
    """The generated set of ``classes`` x ``per_class`` images (``core.data.generated``: made
    once, then reused), its progress said as it is written."""
    from core.data.generated import generated_path

    progress = None if say is None else (lambda d, t: say(f"  generated {d:,}/{t:,}"))
    return generated_path(classes, per_class, GENERATED_PX, progress=progress)


# --------------------------------------------------------------------------- stage timing


def breakdown(timings: dict[str, float], duration: float) -> dict[str, float]:
    """A run's recorded stage seconds, plus ``other`` (store writes, queue hand-over, input
    pipelines...) up to ``duration_s``. ``split``: recording the split (every file's digest).
    The frozen base's one pass is ``features`` whether it produced pooled features or
    activations at the freeze cut; ``hash`` is inside it."""
    stages = dict(timings)
    stages["features"] = stages.get("features", 0.0) + stages.get("activations", 0.0)
    top = ("scan", "split", "build", "features", "fit", "save")
    out = {f"{k}_s": round(stages.get(k, 0.0), 3) for k in (*top, "hash")}
    out["other_s"] = round(max(duration - sum(stages.get(k, 0.0) for k in top), 0.0), 3)
    return out


# --------------------------------------------------------------------------- runs


def timed_run(jobs: Any, config: RunConfig, say: ProgressCb, label: str) -> dict[str, Any]:
    """Train one run through the job queue; its result with the stage breakdown it recorded."""
    from core.errors import StudioError

    def epoch(rec: dict[str, Any]) -> None:
        val = rec.get("val_accuracy")
        val_text = "-" if val is None else f"{val:.3f}"
        say(f"  {label}: epoch {rec['epoch']}/{config.planned_epochs} val_acc {val_text}")

    started = time.perf_counter()
    run_id = jobs.submit(config, progress=epoch)
    status = jobs.wait(run_id)
    wall = time.perf_counter() - started
    result = jobs.store.result(run_id)
    if status != "completed":
        raise StudioError(f"Benchmark run {label} ({run_id}) {status}: {result.get('error')}")
    duration = float(result["duration_s"])
    stage = result.get("stage") or {}
    rate = stage.get("images_per_s") or 0.0
    history = result["history"]
    out = {
        "run_id": run_id,
        "duration_s": round(duration, 2),
        "wall_s": round(wall, 2),
        "best_val_accuracy": as_float(result["best_val_accuracy"]),
        "final_val_accuracy": as_float((history.get("val_accuracy") or [None])[-1]),
        "epochs": len(history.get("epoch") or []),
        "train_images": result["train_images"],
        "val_images": result["val_images"],
        "profile": breakdown(result.get("timings") or {}, duration),
    }
    if stage.get("stage") == "features":  # the last record; a run without a pass ends at scan
        # describe_stage reports images/s over the whole feature stage: invert it for seconds.
        out["feature_stage"] = {
            "cached": bool(stage.get("cached")),
            "images": int(stage.get("total") or 0),
            "seconds": round(stage["total"] / rate, 3) if rate else None,
        }
    say(
        f"  {label}: {duration:.1f} s, best val_acc {out['best_val_accuracy']}, "
        f"stages {out['profile']}"
    )
    return out


def as_float(value: Any) -> float | None:
    return None if value is None else float(value)


def clear_embeddings(
    config: RunConfig, paths: list[str], image_size: int, train_paths: list[str] | None = None
) -> bool:
    """Delete the cached features the run of ``config`` would reuse (with ``train_paths``: its
    augmented views too); whether one existed."""
    from core.training.embeddings import cache_key, embedding_cache_dir

    keys = [cache_key(config, image_size, paths)]
    if train_paths is not None:
        keys.append(cache_key(config, image_size, train_paths, views=config.augment_views))
    existed = False
    for key in keys:
        if key is not None:
            entry = embedding_cache_dir() / f"{key}.npy"
            existed = existed or entry.is_file()
            entry.unlink(missing_ok=True)
    return existed
