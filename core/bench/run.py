"""Reproducible benchmark of the engine's speed claims, on data it generates itself.

``run_bench`` writes a seeded folder dataset of JPEG texture photos (random crops, scales, turns,
flips, lighting and JPEG quality of scikit-image's brick, grass and gravel photos), then measures
four figures, each as a ratio against a baseline measured in the same process, so machine speed
and load cancel out as far as they can on a shared CPU:

1. feature cache: a feature-extraction run with ``feature_cache="auto"`` and a cold embedding
   cache vs the same run with ``"off"`` (the per-epoch frozen-base pipeline);
2. warm cache: a second cached run with another head on the same data vs the cold one;
3. input pipeline: training throughput of a trainable model fed from image files
   (``make_dataset``) vs from the same pixels already in memory;
4. predict latency: one image through a finished 224 px run, warmed, several ways of calling
   the model.

Targets are reported, never asserted: timings on a shared machine are noisy. Each run's
``duration_s`` is also split into stages (data scan, model build, feature pass, fit, save) read
from the stage timings the trainer records in the run (``timings``), so a missed target says
where the time went.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np

from core.bench.common import ProgressCb, clear_embeddings, timed_run
from core.config import RunConfig
from core.files import build_folder, read_marker

__all__ = [
    "ACCURACY_POINTS",
    "ALL_FIGURES",
    "BACKBONE",
    "CLASSIC_FIGURES",
    "DATA_CLASSES",
    "DATA_SEED",
    "DATA_VERSION",
    "FILE_SIZE",
    "MARKER",
    "PHOTOS_PER_CLASS",
    "PIPELINE_SIZE",
    "PREDICT_SIZE",
    "TARGETS",
    "ProgressCb",
    "format_bench",
    "generate_dataset",
    "run_bench",
]


DATA_VERSION = 1  # bump when the generator changes so cached copies are rebuilt
DATA_SEED = 20240607
DATA_CLASSES = ("brick", "grass", "gravel")
FILE_SIZE = 160  # px of the written JPEGs (the model resizes them, as with real photos)
MARKER = ".bench-complete.json"
BACKBONE = "efficientnet_lite0"
PREDICT_SIZE = 224
# Figure 3 trains a fully trainable EfficientNet; at 224 px its 14 epochs would take most of an
# hour on 2 cores, and the question (does input keep up with training?) is the same at 112 px.
PIPELINE_SIZE = 112
TARGETS = {
    "feature_cache": 8.0,  # x faster, with validation accuracy within ACCURACY_POINTS
    "warm_cache": 20.0,  # x faster than the cold cached run
    "input_pipeline": 0.9,  # files / memory throughput
    "predict_latency": 50.0,  # ms, p50
}
ACCURACY_POINTS = 2.0


# --------------------------------------------------------------------------- data


def _texture_image(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random view of a 512 px grayscale texture photo, as a FILE_SIZE RGB image."""
    from PIL import Image

    height, width = photo.shape
    side = int(rng.integers(48, min(height, width) + 1))  # scale: fine grain to whole photo
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    crop = np.rot90(photo[top : top + side, left : left + side], k=int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    pixels = crop.astype(np.float32) * rng.uniform(0.6, 1.4) + rng.uniform(-40.0, 40.0)
    # A colour cast per image, so that the class is not given away by colour statistics alone.
    rgb = pixels[:, :, None] * rng.uniform(0.8, 1.2, size=3)[None, None, :]
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    return np.asarray(image.resize((FILE_SIZE, FILE_SIZE), Image.Resampling.BILINEAR))


def generate_dataset(root: Path, images_per_class: int, seed: int = DATA_SEED) -> dict[str, Any]:
    """Write (or reuse) ``root/<class>/<class>_NNNN.jpg``; returns a description of the data.

    Deterministic for a given seed and count. A marker written last says the folder is
    complete; an incomplete or different folder is rebuilt atomically (temp folder, rename).
    """
    from PIL import Image
    from skimage import data as skdata

    identity = {
        "seed": seed,
        "classes": list(DATA_CLASSES),
        "images_per_class": images_per_class,
        "file_size": FILE_SIZE,
    }
    spec = {"version": DATA_VERSION, **identity}
    started = time.perf_counter()
    reused = read_marker(root, MARKER, DATA_VERSION, identity) is not None

    def write(tmp: Path) -> None:
        for index, name in enumerate(DATA_CLASSES):
            photo = np.asarray(getattr(skdata, name)(), dtype=np.uint8)
            # One generator per class: changing one class never changes another's images.
            rng = np.random.default_rng([seed, index])
            folder = tmp / name
            folder.mkdir()
            for i in range(images_per_class):
                quality = int(rng.integers(70, 96))
                Image.fromarray(_texture_image(photo, rng)).save(
                    folder / f"{name}_{i:04d}.jpg", format="JPEG", quality=quality
                )

    build_folder(root, write, MARKER, DATA_VERSION, identity)
    files = sorted(str(p) for p in root.glob("*/*.jpg"))
    return {
        **spec,
        "root": str(root),
        "files": len(files),
        "bytes": sum(os.path.getsize(p) for p in files),
        "generated_s": round(time.perf_counter() - started, 2),
        "reused": reused,
    }


# --------------------------------------------------------------------------- figure 3


def _throughput(
    train_paths: list[str],
    train_labels: list[int],
    num_classes: int,
    image_size: int,
    batch_size: int,
    rounds: int,
    say: ProgressCb,
    tiny_model: bool = False,
) -> dict[str, Any]:
    """Images/s of a trainable model fed from files vs from in-memory arrays (alternating)."""
    import keras

    from core.data.pipeline import array_dataset, load_batch, make_dataset
    from core.training.model import build_model, compile_model, set_phase

    if tiny_model:
        # Quick mode only checks the plumbing: a small CNN traces in a second where a trainable
        # EfficientNet takes half a minute.
        model = keras.Sequential(
            [
                keras.Input((image_size, image_size, 3)),
                keras.layers.Rescaling(1 / 255.0),
                keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(num_classes, activation="softmax"),
            ]
        )
        description = f"small CNN at {image_size} px, batch {batch_size} (quick mode)"
    else:
        config = RunConfig(
            backbone=BACKBONE, weights="none", mode="scratch", image_size=image_size, seed=0
        )
        built = build_model(config, num_classes)
        set_phase(config, built, "scratch")
        model = built.model
        description = f"{BACKBONE} fully trainable (scratch) at {image_size} px, batch {batch_size}"
    compile_model(model, 1e-3)

    n = len(train_paths)
    files_ds = make_dataset(
        train_paths, train_labels, image_size, batch_size, training=True, seed=0
    )
    pixels = load_batch(train_paths, image_size)  # the same decoded pixels, float32 0-255
    memory_ds = array_dataset(pixels, train_labels, batch_size, training=True, seed=0)

    class EpochTimer(keras.callbacks.Callback):
        seconds = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.seconds = time.perf_counter() - self.start

    def epoch_rate(ds: Any) -> float:
        timer = EpochTimer()
        model.fit(ds, epochs=1, verbose=0, callbacks=[timer], shuffle=False)
        return n / timer.seconds

    rates: dict[str, list[float]] = {"files": [], "memory": []}
    feeds = {"files": files_ds, "memory": memory_ds}
    # The warm-up epochs trace the train step and fill make_dataset's decoded-image cache (what
    # every epoch after a real run's first one reads).
    first_files = epoch_rate(files_ds)
    epoch_rate(memory_ds)
    for r in range(rounds):
        # Short alternating epochs, first one feed then the other, then the other way round:
        # other users' load on a shared machine drifts over seconds, and this spreads it evenly.
        for name in ("files", "memory") if r % 2 == 0 else ("memory", "files"):
            rates[name].append(epoch_rate(feeds[name]))
        say(
            f"  round {r + 1}/{rounds}: files {rates['files'][-1]:.1f} img/s, "
            f"memory {rates['memory'][-1]:.1f} img/s"
        )
    files, memory = float(np.median(rates["files"])), float(np.median(rates["memory"]))
    # The median of per-round ratios: each round's two epochs saw about the same load.
    ratio = float(np.median(np.divide(rates["files"], rates["memory"])))
    return {
        "model": description,
        "images_per_epoch": n,
        "rounds": rounds,
        "files_images_per_s": round(files, 2),
        "memory_images_per_s": round(memory, 2),
        "files_first_epoch_images_per_s": round(first_files, 2),
        "files_rounds": [round(x, 2) for x in rates["files"]],
        "memory_rounds": [round(x, 2) for x in rates["memory"]],
        "ratio": round(ratio, 3),
        "target": TARGETS["input_pipeline"],
        "met": ratio >= TARGETS["input_pipeline"],
    }


# --------------------------------------------------------------------------- figure 4


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms)
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p95_ms": round(float(np.percentile(arr, 95)), 2),
        "mean_ms": round(float(arr.mean()), 2),
    }


def _latency(store: Any, run_id: str, image_path: str, reps: int, warmup: int) -> dict[str, Any]:
    """Latency of one image through a finished run: the playground path and raw model calls."""
    import tensorflow as tf

    from core.data.images import load_rgb
    from core.runs.predict import load_run, predict_images

    run = load_run(store, run_id)
    model, size = run.model, run.image_size
    image_bytes = Path(image_path).read_bytes()

    def decode() -> np.ndarray:
        return load_rgb(io.BytesIO(image_bytes), size)[None].astype(np.float32)

    # A fixed signature: one trace, no retracing per call.
    compiled = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((1, size, size, 3), tf.float32)],
    )
    calls: dict[str, Callable[[np.ndarray], Any]] = {
        "model_call": lambda x: np.asarray(model(x, training=False)),
        "predict_on_batch": lambda x: np.asarray(model.predict_on_batch(x)),
        "tf_function": lambda x: np.asarray(compiled(tf.constant(x))),
    }
    x = decode()
    # Every way of calling must give the playground's probabilities.
    reference = np.asarray(model(x, training=False))
    for fn in calls.values():
        np.testing.assert_allclose(fn(x), reference, rtol=1e-3, atol=1e-4)

    # End to end: what one playground prediction costs (bytes in, probabilities out).
    end_to_end: dict[str, Callable[[], Any]] = {
        "predict_images": lambda: predict_images(store, run_id, [image_bytes], top_k=3),
        **{
            f"decode+{name}": functools.partial(lambda fn: fn(decode()), fn)
            for name, fn in calls.items()
        },
    }
    call_only = {name: functools.partial(fn, x) for name, fn in calls.items()}
    probes: dict[str, Callable[[], Any]] = {**end_to_end, **call_only, "decode": decode}
    samples: dict[str, list[float]] = {name: [] for name in probes}
    for rep in range(warmup + reps):
        # Round-robin, so load from other users hits every method alike.
        for name, probe in probes.items():
            start = time.perf_counter()
            probe()
            if rep >= warmup:
                samples[name].append((time.perf_counter() - start) * 1000.0)
    stats = {name: _percentiles(values) for name, values in samples.items()}
    best = min(end_to_end, key=lambda name: stats[name]["p50_ms"])
    baseline = stats["predict_images"]["p50_ms"]
    p50, p95 = stats[best]["p50_ms"], stats[best]["p95_ms"]
    return {
        "backbone": BACKBONE,
        "image_size": size,
        "reps": reps,
        "warmup": warmup,
        "method": best,
        "p50_ms": p50,
        "p95_ms": p95,
        "playground_p50_ms": baseline,
        "playground_p95_ms": stats["predict_images"]["p95_ms"],
        "end_to_end": {name: stats[name] for name in end_to_end},
        "call_only": {name: stats[name] for name in call_only},
        "decode": stats["decode"],
        # Baseline: the playground's own path (predict_images); >1 means a faster call exists.
        "ratio": round(baseline / p50, 3) if p50 > 0 else None,
        "target": TARGETS["predict_latency"],
        "met": p50 <= TARGETS["predict_latency"],
        "playground_met": baseline <= TARGETS["predict_latency"],
    }


# --------------------------------------------------------------------------- main


def _machine() -> dict[str, Any]:
    import keras
    import tensorflow as tf

    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def run_bench(
    out_dir: Path | None = None,
    images_per_class: int = 1000,
    image_size: int = 224,
    epochs: int = 10,
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
    figures: Collection[int] | None = None,
    scale_classes: int = 200,
    scale_per_class: int = 250,
) -> dict[str, Any]:
    """Generate the data, measure the four figures; a JSON-able dict (see module docstring).
    ``scale_classes`` x ``scale_per_class`` is figure 16's generated set.

    ``out_dir`` (default ``<studio home>/bench``) keeps the generated data between runs (it is
    deterministic, so it is reused) and this benchmark's run store (emptied at each start).
    ``quick`` shrinks everything to seconds, for tests: its numbers mean nothing.
    """
    from core.data import load_dataset
    from core.errors import StudioError
    from core.paths import studio_home
    from core.training.jobs import JobQueue
    from core.training.sources import FEATURES, input_path

    say = progress or (lambda _msg: None)
    if quick:
        images_per_class, image_size, epochs = 10, 64, 2
    pipeline_size = image_size if quick else min(image_size, PIPELINE_SIZE)
    batch = 8 if quick else 32
    rounds = 1 if quick else 6
    reps, warmup = (5, 2) if quick else (100, 10)
    predict_per_class = 12
    pipeline_images = batch * (2 if quick else 8)

    bench_started = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else studio_home() / "bench"
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = out / "bench-runs"
    shutil.rmtree(runs_dir, ignore_errors=True)  # this benchmark's own store: start empty
    jobs = JobQueue(runs_dir)
    machine = _machine()
    selected = _selected(figures)
    figures_out: dict[str, Any] = {}
    data_section: dict[str, Any] = {}
    settings: dict[str, Any] = {"quick": quick, "runs_dir": str(runs_dir), "figures": selected}
    if CLASSIC_FIGURES & set(selected):  # 1-4 share their data, runs and warm-up
        tag = f"textures-{len(DATA_CLASSES)}x{images_per_class}-v{DATA_VERSION}"
        say(f"data: {len(DATA_CLASSES)} classes x {images_per_class} JPEGs in {out / tag}")
        data_info = generate_dataset(out / tag, images_per_class)
        predict_info: dict[str, Any] | None = None
        if not quick:
            predict_info = generate_dataset(
                out / f"textures-{len(DATA_CLASSES)}x{predict_per_class}-v{DATA_VERSION}",
                predict_per_class,
                seed=DATA_SEED + 1,
            )

        # Every field that changes the work is pinned: a later change of RunConfig's defaults (say,
        # augmentation on) must not silently change what the figures measure.
        base = RunConfig(
            backbone=BACKBONE,
            weights="imagenet",
            mode="feature_extraction",
            data=data_info["root"],
            image_size=image_size,
            batch_size=batch,
            epochs=epochs,
            lr=1e-3,
            augment=False,  # the feature cache applies only without augmentation
            val_split=0.2,
            seed=42,
            feature_cache="auto",
            dropout=0.2,
            dense_units=256,
            name="bench",
        )
        path = input_path(base)
        if path.kind != FEATURES:  # a guard against the above drifting, not a user error
            raise StudioError(
                f"The benchmark's cached runs would not use the feature cache: {path.reason}"
            )
        predict_run: dict[str, Any] | None = None
        predict_size = PREDICT_SIZE
        if predict_info is not None:
            # Warm-up and figure 4's model at once: a short 224 px run pays the process's
            # one-off costs (first model build, weight conversion, first traces) before
            # anything is timed.
            say(f"warm-up: 1-epoch {BACKBONE} run at {predict_size} px (also figure 4's model)")
            predict_cfg = base.with_changes(
                data=predict_info["root"], image_size=predict_size, epochs=1, name="bench-predict"
            )
            # Same work at every invocation: the warm-up computes its features too.
            warm_index = load_dataset(predict_cfg.data, val_split=base.val_split, seed=base.seed)
            clear_embeddings(
                predict_cfg, [*warm_index.train_paths, *warm_index.val_paths], predict_size
            )
            predict_run = timed_run(jobs, predict_cfg, say, "warm-up")

        # Figure 1 and 2: the embedding cache must be cold for the first cached run.
        index = load_dataset(base.data, val_split=base.val_split, seed=base.seed)
        paths = list(index.train_paths) + list(index.val_paths)
        had_entry = clear_embeddings(base, paths, image_size)
        say(f"figure 1: cached run, cold embedding cache ({epochs} epochs)")
        cold = timed_run(jobs, base.with_changes(name="bench-cold"), say, "cached (cold)")
        say("figure 2: cached run with another head, warm embedding cache")
        warm_cfg = base.with_changes(dense_units=128, lr=5e-4, name="bench-warm")
        warm = timed_run(jobs, warm_cfg, say, "cached (warm)")
        say(f"figure 1: per-epoch frozen-base run, feature_cache=off ({epochs} epochs)")
        off = timed_run(
            jobs, base.with_changes(feature_cache="off", name="bench-off"), say, "per-epoch"
        )

        speedup = off["duration_s"] / cold["duration_s"]
        acc_points = abs((cold["best_val_accuracy"] or 0.0) - (off["best_val_accuracy"] or 0.0))
        acc_points *= 100.0
        figures_out["feature_cache"] = {
            "cached": cold,
            "per_epoch": off,
            "accuracy_difference_points": round(acc_points, 2),
            "embedding_entry_removed": had_entry,
            "ratio": round(speedup, 3),
            "target": TARGETS["feature_cache"],
            "accuracy_target_points": ACCURACY_POINTS,
            "met": speedup >= TARGETS["feature_cache"] and acc_points <= ACCURACY_POINTS,
        }
        warm_ratio = cold["duration_s"] / warm["duration_s"]
        cold_stage = (cold.get("feature_stage") or {}).get("seconds")
        warm_stage = (warm.get("feature_stage") or {}).get("seconds")
        figures_out["warm_cache"] = {
            "cold": {k: cold[k] for k in ("run_id", "duration_s", "feature_stage", "profile")},
            "warm": warm,
            "feature_stage_ratio": (
                round(cold_stage / warm_stage, 1) if cold_stage and warm_stage else None
            ),
            "ratio": round(warm_ratio, 3),
            "target": TARGETS["warm_cache"],
            "met": warm_ratio >= TARGETS["warm_cache"],
        }

        say(f"figure 3: training throughput, files vs memory ({rounds} rounds after a warm-up)")
        step = max(len(index.train_paths) // pipeline_images, 1)
        chosen = list(range(0, len(index.train_paths), step))[:pipeline_images]
        figures_out["input_pipeline"] = _throughput(
            [index.train_paths[i] for i in chosen],
            [index.train_labels[i] for i in chosen],
            len(index.class_names),
            pipeline_size,
            batch,
            rounds,
            say,
            tiny_model=quick,
        )

        if predict_run is None:  # quick: no warm-up run; figure 4 uses the cold run's model
            predict_run, predict_size = cold, image_size
        say(f"figure 4: one-image prediction latency at {predict_size} px ({reps} reps)")
        one_image = sorted(Path((predict_info or data_info)["root"]).glob("*/*.jpg"))[0]
        latency = _latency(jobs.store, predict_run["run_id"], str(one_image), reps, warmup)
        latency["run_id"] = predict_run["run_id"]
        figures_out["predict_latency"] = latency

        data_section = {
            **data_info,
            "classes_found": len(index.class_names),
            "train_images": len(index.train_paths),
            "val_images": len(index.val_paths),
            "image_size": image_size,
            "predict_data": predict_info,
        }
        settings.update(
            backbone=BACKBONE, image_size=image_size, pipeline_image_size=pipeline_size,
            epochs=epochs, batch_size=batch, warmup_run=predict_run,
        )  # fmt: skip

    figures_out.update(_fast_figures(selected, jobs, out, quick, epochs, batch, say))
    figures_out.update(_scale_figures(selected, out, quick, say))
    if 16 in selected:
        from core.bench import scale

        figures_out["many_classes"] = scale.many_classes(
            out, classes=3 if quick else scale_classes, per_class=8 if quick else scale_per_class,
            image_size=32 if quick else scale.IMAGE_SIZE, epochs=1 if quick else 3,
            progress=say,
        )  # fmt: skip
        settings["many_classes"] = [scale_classes, scale_per_class]
    if {18, 19} & set(selected):
        from core.bench import cluster as bench_cluster

        per_class = 10 if quick else images_per_class
        tag = f"ray-textures-{len(DATA_CLASSES)}x{per_class}-v{DATA_VERSION}"
        figures_out.update(bench_cluster.ray_figures(
            selected, lambda: generate_dataset(out / tag, per_class), image_size, say
        ))  # fmt: skip
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result = {
        "figures": figures_out,
        "data": data_section,
        "settings": settings,
        "machine": machine,
        "total_s": round(time.perf_counter() - bench_started, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    # Guard the contract: plain JSON types only.
    return json.loads(json.dumps(result, allow_nan=False))


ALL_FIGURES = (*range(1, 17), 18, 19)  # 18-19: the Ray extra (core.bench.cluster)
CLASSIC_FIGURES = frozenset({1, 2, 3, 4})
PHOTOS_PER_CLASS = 150  # figure 6's real photos: 600 in all, 480 training images


def _selected(figures: Collection[int] | None) -> list[int]:
    chosen = sorted(set(figures)) if figures else list(ALL_FIGURES)
    unknown = [f for f in chosen if f not in ALL_FIGURES]
    if unknown:
        from core.errors import ConfigError

        raise ConfigError(
            f"Unknown benchmark figure(s) {unknown}: expected numbers from 1 to 16, 18 or 19."
        )
    return chosen


def _fast_figures(
    selected: list[int], jobs: Any, out: Path, quick: bool, epochs: int, batch: int, say: ProgressCb
) -> dict[str, Any]:
    """Figures 5-12 (``core.bench.fast``, ``core.bench.dashboard``, ``core.bench.review``); quick:
    tiny, 5 and 7 skipped (8 runs, with a real server and page, when Chromium is there)."""
    from core.bench import dashboard, fast

    figures: dict[str, Any] = {}
    size = 64 if quick else 224
    if {6, 10} & set(selected):
        per_class = 8 if quick else PHOTOS_PER_CLASS
        photos = fast.photo_dataset(out / f"photos-4x{per_class}", per_class)
        if 10 in selected:  # first: it also converts the runtime that figure 6's runs use
            figures["feature_pass"] = fast.feature_pass_rates(
                photos["root"], size, images=16 if quick else 64, reps=1 if quick else 3,
                progress=say,
            )  # fmt: skip
        if 6 in selected:
            figures["augmented_views"] = fast.augmented_views(
                jobs, photos["root"], epochs=epochs, image_size=size, batch_size=batch,
                views=(2,) if quick else (2, 4, 8), progress=say,
            )  # fmt: skip
            figures["augmented_views"]["data"] = photos
    if 5 in selected:
        figures["one_click_default"] = (
            {"skipped": "quick"} if quick else fast.one_click_default(say)
        )
    if 7 in selected:
        # Epochs enough to outlast the 13 windows (~6 min): the run is stopped after them.
        config = RunConfig(
            data="builtin:textures", image_size=160, epochs=1000, batch_size=16, augment=True,
            feature_cache="off",
        )  # fmt: skip
        figures["dashboard_vs_headless"] = (
            {"skipped": "quick"} if quick else dashboard.dashboard_vs_headless(config, progress=say)
        )
    if 8 in selected:  # a real server and page (skipped without Chromium)
        figures["sequential_runs_rss"] = dashboard.sequential_runs_rss(
            runs=2 if quick else 5, progress=say,
            make_config=_tiny_rss_config if quick else None,
        )  # fmt: skip
    if 9 in selected:
        figures["idle_server_cpu"] = dashboard.idle_server_cpu(3 if quick else 30, progress=say)
    if 11 in selected:
        from core.bench import review

        quick_config = RunConfig(image_size=64, epochs=3, augment=False, batch_size=batch)
        figures["review"] = review.review_figure(
            jobs, out, per_class=12 if quick else review.PER_CLASS,
            config=quick_config if quick else None, progress=say,
        )  # fmt: skip
    if 12 in selected:
        figures["worker_kill"] = dashboard.worker_kill(
            _tiny_kill_config() if quick else None, kill_after=2 if quick else None,
            progress=say,
        )  # fmt: skip
    return figures


def _scale_figures(selected: list[int], out: Path, quick: bool, say: ProgressCb) -> dict[str, Any]:
    """Figures 13-15 (``core.bench.finetune``); quick: a few dozen 32-64 px images."""
    from core.bench import finetune

    figures: dict[str, Any] = {}
    if 13 in selected:
        figures["feature_scale"] = finetune.feature_scale(
            out, classes=3 if quick else finetune.FEATURE_CLASSES,
            per_class=8 if quick else finetune.FEATURE_PER_CLASS,
            image_size=32 if quick else finetune.FEATURE_SIZE, epochs=1 if quick else 3,
            progress=say,
        )  # fmt: skip
    tune_size = (2, 40, 64) if quick else (
        finetune.FINE_TUNE_CLASSES, finetune.FINE_TUNE_PER_CLASS, finetune.FINE_TUNE_SIZE
    )  # fmt: skip
    uninterrupted: float | None = None
    if 14 in selected:
        figures["fine_tune_scale"] = finetune.fine_tune_scale(
            out, *tune_size, dtype_check=not quick, progress=say,
            shots=out / "screenshots" if quick else finetune.SHOTS,
        )  # fmt: skip
        uninterrupted = figures["fine_tune_scale"].get("wall_s")
    if 15 in selected:
        figures["fine_tune_kill"] = finetune.fine_tune_kill(
            out, *tune_size, uninterrupted_wall_s=uninterrupted, progress=say
        )
    return figures


def _tiny_rss_config(index: int) -> RunConfig:
    # Learning rates the Train page's slider has: the page launches these runs.
    return RunConfig(
        data="builtin:textures", backbone="mobilenet_v2", weights="none", image_size=32,
        epochs=1, augment=False, lr=(1e-3, 3e-3)[index % 2],
    )  # fmt: skip


def _tiny_kill_config() -> RunConfig:
    # Twelve short epochs: still running when the second is recorded and the worker is killed.
    return RunConfig(
        data="builtin:textures", backbone="mobilenet_v2", weights="none", image_size=32,
        mode="feature_extraction", epochs=12, augment=False, feature_cache="off",
    )  # fmt: skip


def _met(value: bool) -> str:
    return "met" if value else "MISSED"


def format_bench(result: dict[str, Any]) -> str:
    """Human-readable lines, one per figure measured, then the machine."""
    f = result["figures"]
    m = result["machine"]
    lines = _classic_lines(result) if "feature_cache" in f else []
    lines += _fast_lines(f)
    from core.bench.finetune import format_lines as scale_lines

    lines += scale_lines(f)
    if d := f.get("many_classes"):
        from core.bench.scale import format_line

        lines.append(format_line(d))
    from core.bench.cluster import format_lines

    lines += format_lines(f)
    lines.append(
        f"machine: {m['usable_cpus']} CPUs, TensorFlow {m['tensorflow']}, Keras {m['keras']}, "
        f"load {m['load_average_start'][0]:.1f} → {m['load_average_end'][0]:.1f}; "
        f"total {result['total_s']:.0f} s"
    )
    return "\n".join(lines)


def _classic_lines(result: dict[str, Any]) -> list[str]:
    f = result["figures"]
    fc, wc, ip, pl = f["feature_cache"], f["warm_cache"], f["input_pipeline"], f["predict_latency"]
    cached, off = fc["cached"], fc["per_epoch"]
    warm_stage = (wc["warm"].get("feature_stage") or {}).get("seconds")
    cold_stage = (cached.get("feature_stage") or {}).get("seconds")
    warm_s = wc["warm"]["duration_s"]
    d = result["data"]
    return [
        f"data: {d['files']} JPEGs, {d['classes_found']} classes ({d['train_images']} train / "
        f"{d['val_images']} val), {BACKBONE} at {d['image_size']} px, "
        f"{result['settings']['epochs']} epochs",
        f"1. feature cache: {fc['ratio']:.1f}x faster (cached {cached['duration_s']:.1f} s vs "
        f"per-epoch {off['duration_s']:.1f} s), best val acc {cached['best_val_accuracy']:.3f} vs "
        f"{off['best_val_accuracy']:.3f} ({fc['accuracy_difference_points']:.1f} points) — "
        f"target ≥ {fc['target']:g}x within {fc['accuracy_target_points']:g} points: "
        f"{_met(fc['met'])}",
        f"2. warm embedding cache: {wc['ratio']:.1f}x faster (warm {warm_s:.1f} s vs cold "
        f"{cached['duration_s']:.1f} s; feature stage {_secs(warm_stage)} vs "
        f"{_secs(cold_stage)}) — target ≥ {wc['target']:g}x: {_met(wc['met'])}",
        f"3. input pipeline: {ip['ratio']:.2f} (files {ip['files_images_per_s']:.1f} img/s vs "
        f"memory {ip['memory_images_per_s']:.1f} img/s, {ip['model']}) — "
        f"target ≥ {ip['target']:g}: {_met(ip['met'])}",
        f"4. predict latency ({pl['image_size']} px, one image): p50 {pl['p50_ms']:.1f} ms, "
        f"p95 {pl['p95_ms']:.1f} ms via {pl['method']} (playground predict_images p50 "
        f"{pl['playground_p50_ms']:.1f} ms, {pl['ratio']:.2f}x) — target p50 ≤ "
        f"{pl['target']:g} ms: {_met(pl['met'])}",
        "   model call only: "
        + ", ".join(f"{k} p50 {v['p50_ms']:.1f} ms" for k, v in pl["call_only"].items())
        + f"; decode p50 {pl['decode']['p50_ms']:.1f} ms",
    ]


def _fast_lines(f: dict[str, Any]) -> list[str]:
    lines = []
    if (d := f.get("one_click_default")) and "skipped" not in d:
        new, warm = d["brand_new_home"], d["warm"]
        lines.append(
            f"5. one-click default: brand-new home {new.get('duration_s')} s (wall "
            f"{new['wall_s']} s), second time {warm.get('duration_s')} s (wall {warm['wall_s']} "
            f"s), best val acc {warm.get('best_val_accuracy')} — target ≤ "
            f"{d['targets_s']['brand_new_s']:g} s / ≤ {d['targets_s']['warm_s']:g} s: "
            f"{_met(d['met'])}"
        )
    if d := f.get("augmented_views"):
        sweep = ", ".join(
            f"K={k}: {v['duration_s']:.1f} s acc {v['best_val_accuracy']:.3f}"
            for k, v in d["sweep"].items()
        )
        lines.append(
            f"6. augmented FE, cached views (K={d['views']}) vs per-epoch augmentation: "
            f"{d['ratio']:.1f}x faster ({d['cached']['duration_s']:.1f} s vs "
            f"{d['per_epoch']['duration_s']:.1f} s), best val acc "
            f"{d['cached']['best_val_accuracy']:.3f} vs {d['per_epoch']['best_val_accuracy']:.3f} "
            f"({d['accuracy_difference_points']:.1f} points) — target ≥ {d['target']:g}x within "
            f"{d['accuracy_target_points']:g} point: {_met(d['met'])}; {sweep}"
        )
    if (d := f.get("dashboard_vs_headless")) and "skipped" not in d:
        lines.append(
            f"7. a page following the run vs no page open (one run, in the server's worker): "
            f"{d['ratio']} ({d['dashboard_images_per_s']} vs {d['headless_images_per_s']} img/s "
            f"over {len(d['pair_ratios'])} pairs of {d['window_s']:g}-s windows, pair ratios "
            f"{d['pair_ratios']}, trained in a worker: {d['trained_in_workers']}) — target ≥ "
            f"{d['target']:g}: {_met(d['met'])}"
        )
    if (d := f.get("sequential_runs_rss")) and "skipped" not in d:
        lines.append(
            f"8. server RSS over {len(d['runs'])} dashboard runs: {d['server_rss_before_mb']} MB "
            f"before, {d['server_rss_mb']} MB after each, growth {d['growth_mb']} MB (worker "
            f"RSS {d['worker_rss_mb']} MB) — target ≤ {d['target_growth_mb']:g} MB: "
            f"{_met(d['met'])}"
        )
    if d := f.get("idle_server_cpu"):
        lines.append(
            f"9. idle server: {d.get('cpu_percent')} % of a core over {d.get('seconds')} s, "
            f"{d.get('lines_printed')} lines printed — target < {d.get('target_cpu_percent')} % "
            f"and silent: {_met(bool(d.get('cpu_met')) and bool(d.get('quiet_met')))}"
        )
    if (d := f.get("feature_pass")) and "skipped" not in d:
        lines.append(
            f"10. feature pass at {d['image_size']} px: Keras {d['keras_images_per_s']:.1f} img/s "
            f"vs LiteRT {d['litert_images_per_s']:.1f} img/s ({d['ratio']:.2f}x, lowest cosine "
            f"{d['min_cosine']:.5f}) — target ≥ {d['target']:g}x: {_met(d['met'])}"
        )
    if d := f.get("review"):
        from core.bench.review import format_line

        lines.append(format_line(d))
    if d := f.get("worker_kill"):
        base, resumed = d["baseline"], d["resumed"]
        lines.append(
            f"12. kill -9 of a worker after {d['killed']['epochs_at_kill']}/"
            f"{d['planned_epochs']} epochs: {d['killed']['status_after_kill']} after "
            f"{d['seconds_to_interrupted']:.2f} s; resume {resumed['status']} with "
            f"{d['epochs_completed']}/{d['planned_epochs']} epochs (each once: "
            f"{d['every_epoch_once']}), {d['ratio']}x the uninterrupted run's wall "
            f"({base['wall_s']:.1f} s) — target ≤ {d['target_s']:g} s and every epoch: "
            f"{_met(d['met'])}"
        )
    return lines


def _secs(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f} s"
