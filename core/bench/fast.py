"""Benchmark figures of the fast default path (issue "fast by default"): 5, 6 and 10.

5. one-click default: ``python -m core train --json`` with no options, in a brand-new studio home
   and then a second time on the same home: seconds from submit to ``completed`` (the run's
   ``duration_s``; the process's wall time, TensorFlow's import included, next to it);
6. augmented feature extraction, cached views vs per-epoch augmentation: the same config, data and
   seed with ``feature_cache`` auto and off, on real photos; and the cached path at several view
   counts, which is how ``augment_views``'s default was chosen;
10. the frozen base's feature pass, images/s, Keras vs the converted LiteRT runtime on the same
   images.

Like ``core.bench.run``: ratios against baselines of the same run, targets reported, never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from core.bench.common import ProgressCb
from core.config import RunConfig

__all__ = [
    "AUGMENTED_TARGETS",
    "DEFAULT_TARGETS",
    "PHOTO_MARKER",
    "PHOTO_SEED",
    "PHOTO_VERSION",
    "PROJECT",
    "RUNTIME_TARGET",
    "ProgressCb",
    "augmented_views",
    "feature_pass_rates",
    "one_click_default",
    "photo_dataset",
]

PROJECT = Path(__file__).resolve().parents[2]
DEFAULT_TARGETS = {"warm_s": 15.0, "brand_new_s": 60.0}
AUGMENTED_TARGETS = {"ratio": 5.0, "accuracy_points": 1.0}
RUNTIME_TARGET = 2.0


def _cli_train(home: Path, args: list[str] | None = None) -> dict[str, Any]:
    """``python -m core train --json [args]`` in a fresh process on ``home``: its result."""
    env = {**os.environ, "TRANSFER_STUDIO_HOME": str(home)}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "core", "train", "--json", *(args or [])],
        cwd=PROJECT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": "failed", "error": tail, "wall_s": round(wall, 2)}
    result = json.loads(proc.stdout)
    return {
        "run_id": result["run_id"],
        "status": result["status"],
        "duration_s": result["duration_s"],
        "wall_s": round(wall, 2),
        "best_val_accuracy": result["best_val_accuracy"],
        "data": result["data"],
        "train_images": result["train_images"],
        "val_images": result["val_images"],
        "timings": result.get("timings") or {},
        "feature_cached": bool((result.get("stage") or {}).get("cached")),
    }


def one_click_default(progress: ProgressCb | None = None) -> dict[str, Any]:
    """Figure 5: the default run in a brand-new home, then again on the same home."""
    say = progress or (lambda _msg: None)
    with tempfile.TemporaryDirectory(prefix="bench-home-") as home:
        say("figure 5: python -m core train --json in a brand-new studio home")
        new = _cli_train(Path(home))
        say(f"  brand-new home: {new.get('duration_s')} s (wall {new['wall_s']} s)")
        say("figure 5: the same command again on that home")
        warm = _cli_train(Path(home))
        say(f"  second time: {warm.get('duration_s')} s (wall {warm['wall_s']} s)")
    ok = new.get("status") == warm.get("status") == "completed"
    return {
        "brand_new_home": new,
        "warm": warm,
        "targets_s": DEFAULT_TARGETS,
        "met": ok
        and warm["duration_s"] <= DEFAULT_TARGETS["warm_s"]
        and new["duration_s"] <= DEFAULT_TARGETS["brand_new_s"],
    }


# --------------------------------------------------------------------------- figure 6

PHOTO_VERSION = 1
PHOTO_SEED = 20261203  # not builtin:photos' seed: other views of the same photos
PHOTO_MARKER = ".bench-photos-complete.json"


def photo_dataset(root: Path, per_class: int, seed: int = PHOTO_SEED) -> dict[str, Any]:
    """Write (or reuse) ``per_class`` views per class of the photos behind ``builtin:photos``."""
    from core.data.builtin import photo_items
    from core.files import build_folder

    identity = {"seed": seed, "per_class": per_class}

    def write(tmp: Path) -> None:
        for label, name, data in photo_items(per_class, seed):
            (tmp / label).mkdir(exist_ok=True)
            assert isinstance(data, bytes)  # photos are encoded JPEGs
            (tmp / label / name).write_bytes(data)

    build_folder(root, write, PHOTO_MARKER, PHOTO_VERSION, identity)
    return {"root": str(root), "files": len(list(root.glob("*/*.jpg"))), **identity}


def augmented_views(
    jobs: Any,
    data_root: str,
    epochs: int = 10,
    image_size: int = 224,
    batch_size: int = 32,
    views: tuple[int, ...] = (2, 4, 8),
    progress: ProgressCb | None = None,
) -> dict[str, Any]:
    """Figure 6: augmented feature extraction, per-epoch augmentation vs cached views.

    Every cached run starts from a cold embedding cache (its entries are deleted first), so it
    pays the frozen base's pass over the clean images and over its views.
    """
    from core.bench.common import clear_embeddings, timed_run
    from core.data import load_dataset

    say = progress or (lambda _msg: None)
    base = RunConfig(
        backbone="efficientnet_lite0", weights="imagenet", mode="feature_extraction",
        data=data_root, image_size=image_size, batch_size=batch_size, epochs=epochs, lr=1e-3,
        augment=True, augment_views=RunConfig().augment_views, val_split=0.2, seed=42,
        feature_cache="auto", dropout=0.2, dense_units=256, name="bench-views",
    )  # fmt: skip
    index = load_dataset(base.data, val_split=base.val_split, seed=base.seed)
    paths = [*index.train_paths, *index.val_paths]
    say(f"figure 6: per-epoch augmentation, feature_cache=off ({epochs} epochs)")
    off = timed_run(
        jobs, base.with_changes(feature_cache="off", name="bench-aug-off"), say, "per-epoch"
    )
    sweep: dict[str, Any] = {}
    for k in sorted({*views, base.augment_views}):
        config = base.with_changes(augment_views=k, name=f"bench-views-{k}")
        clear_embeddings(config, paths, image_size, list(index.train_paths))
        say(f"figure 6: cached views, {k} per training image, cold cache")
        sweep[str(k)] = timed_run(jobs, config, say, f"{k} views")
    cached = sweep[str(base.augment_views)]
    ratio = off["duration_s"] / cached["duration_s"]
    points = abs((cached["best_val_accuracy"] or 0.0) - (off["best_val_accuracy"] or 0.0)) * 100
    target, target_points = AUGMENTED_TARGETS["ratio"], AUGMENTED_TARGETS["accuracy_points"]
    return {
        "per_epoch": off,
        "cached": cached,
        "views": base.augment_views,
        "sweep": {
            k: {f: run[f] for f in ("duration_s", "best_val_accuracy", "final_val_accuracy")}
            for k, run in sweep.items()
        },
        "ratio": round(ratio, 3),
        "accuracy_difference_points": round(points, 2),
        "target": target,
        "accuracy_target_points": target_points,
        "met": ratio >= target and points <= target_points,
    }


# --------------------------------------------------------------------------- figure 10


def feature_pass_rates(
    data_root: str,
    image_size: int = 224,
    images: int = 64,
    reps: int = 3,
    progress: ProgressCb | None = None,
) -> dict[str, Any]:
    """Figure 10: the offline backbone's feature pass, Keras vs the converted runtime.

    Also converts the runtime into the studio home's cache if it is not there yet (so the timed
    runs of figure 6 find it, as any run after the first at this size does).
    """
    from core.data.pipeline import load_batch
    from core.training import litert
    from core.training.embeddings import feature_extractor, runtime_identity
    from core.training.model import build_model

    say = progress or (lambda _msg: None)
    config = RunConfig(backbone="efficientnet_lite0", weights="imagenet", image_size=image_size)
    built = build_model(config, 2)
    model = feature_extractor(built)
    paths = sorted(str(p) for p in Path(data_root).glob("*/*.jpg"))[:images]
    x = load_batch(paths, image_size)
    identity = runtime_identity(built)
    if identity is None:  # a guard: the bundled weights always have an identity
        return {"skipped": "no weights identity for the offline backbone"}
    say(f"figure 10: feature pass at {image_size} px, Keras vs LiteRT ({len(x)} images)")
    started = time.perf_counter()
    extractor, check = litert.runtime_extractor(model, identity, x[: litert.RUN_BATCH])
    check["seconds"] = round(time.perf_counter() - started, 2)
    if extractor is None:
        return {"skipped": f"runtime not used: {check.get('reason')}", "check": check}
    rates = litert.measure_rates(model, x, reps, extractor=extractor)
    say(
        f"  Keras {rates['keras_images_per_s']:.1f} img/s, LiteRT "
        f"{rates['litert_images_per_s']:.1f} img/s ({rates['ratio']:.2f}x)"
    )
    return {
        **rates,
        "image_size": image_size,
        "check": check,
        "target": RUNTIME_TARGET,
        "met": rates["ratio"] >= RUNTIME_TARGET,
    }
