"""Benchmark figures 13-15: feature extraction at 50,000 images and fine-tuning at 25,000.

On generated sets (``core.data.generated``: 64 px JPEGs, one photo region, colour cast and stripe
texture per class; the model resizes them to its input, so a 160 px run upscales them):

13. 200 classes x 250 images (50,000), EfficientNet-Lite0 at 96 px, feature extraction with a
    cold embedding cache: the run's ``duration_s`` against the bare feature pass over the same
    images in the same process on the same runtime, timed before and after the run (their mean;
    target ≤ 1.15).
14. 2 classes x 12,500 images (25,000), Lite0 at 160 px, fine-tuning (3 head + 3 fine-tune
    epochs, no augmentation: the activation cache at the cut) trained by ``python -m core
    train`` in a process of its own: its peak RSS (target ≤ 4 GB); seconds per fine-tune epoch
    against a forward+backward pass of the unfrozen part alone over activations of the same
    shape held in memory (the limit); accuracy against a feature-extraction run on the same data
    (as many epochs as both phases). Also float16 against float32 activations on a harder
    generated set (40 classes x 100), same seed (target: within 0.5 points). Then the fine-tuned
    run's review and a browser walk of its pages at 1280 x 800 (``core.bench.walk``: each page
    ≤ 3 s, screenshots).
15. The same fine-tuning run killed with SIGKILL half-way through its cut pass, then resumed:
    the seconds lost (the work since the last stored chunk, plus the resumed attempt's start
    until its pass runs again), and how many of the killed attempt's chunks the resume reused.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.bench.common import GENERATED_PX, ProgressCb, clear_embeddings, generated_set, timed_run
from core.bench.procstat import machine_s, status_mb
from core.bench.walk import share_caches, walk_or_error
from core.config import RunConfig

__all__ = [
    "FEATURE_CLASSES",
    "FEATURE_PER_CLASS",
    "FINE_TUNE_CLASSES",
    "FINE_TUNE_PER_CLASS",
    "TARGETS",
    "feature_scale",
    "fine_tune_kill",
    "fine_tune_scale",
    "format_lines",
]

ROOT = Path(__file__).resolve().parents[2]  # the repository
FEATURE_CLASSES, FEATURE_PER_CLASS, FEATURE_SIZE = 200, 250, 96
FINE_TUNE_CLASSES, FINE_TUNE_PER_CLASS, FINE_TUNE_SIZE = 2, 12_500, 160
HEAD_EPOCHS = FINE_TUNE_EPOCHS = 3
DTYPE_CHECK = (40, 100)  # classes x images of the float16 check: harder than 2 classes
TARGETS = {"feature_ratio": 1.15, "peak_rss_gb": 4.0, "float16_points": 0.5, "page_s": 3.0}
WALKED = ("data", "run", "review", "compare", "predict")  # the browser walk's timed pages
SHOTS = ROOT / "tests" / "screenshots"


# --------------------------------------------------------------------------- figure 13


def feature_scale(
    out: Path,
    classes: int = FEATURE_CLASSES,
    per_class: int = FEATURE_PER_CLASS,
    image_size: int = FEATURE_SIZE,
    epochs: int = 3,
    progress: ProgressCb | None = None,
) -> dict[str, Any]:
    """Figure 13: a cold feature-extraction run against its bare feature pass."""
    from core.data import load_dataset
    from core.training.embeddings import feature_extractor, forward_once, runtime_pick
    from core.training.jobs import JobQueue
    from core.training.model import build_model

    say = progress or (lambda _msg: None)
    say(f"figure 13: data: {classes} classes x {per_class} images")
    folder = generated_set(classes, per_class, say)
    config = RunConfig(
        data=str(folder), image_size=image_size, epochs=epochs, augment=False,
        mode="feature_extraction", name=f"figure 13: {classes} classes",
    )  # fmt: skip
    index = load_dataset(config.data, val_split=config.val_split, seed=config.seed)
    paths = [*index.train_paths, *index.val_paths]

    # The bare pass: the run's feature extractor on the runtime a run of this size picks (the
    # converted LiteRT one, converted here once and checked, as the run's first batch is), then
    # timed over every image. A warm-up over a few images pays the conversion and the traces.
    built = build_model(config, len(index.class_names))
    model = feature_extractor(built)
    runtime: dict[str, Any] = {"convert": True}
    pick = runtime_pick(model, built, runtime, None)
    forward_once(model, paths[:64], image_size, None, pick)

    clock: dict[str, dict[str, float | None]] = {}  # per timing: CPU seconds, machine states

    def measured(name: str, work: Callable[[], Any]) -> Any:
        """``work()``, with this process's CPU seconds and the machine's CPU states meanwhile:
        the wall clock of a shared VM also counts other processes' turns, disk waits and the
        hypervisor's steal; the CPU seconds are the timing's own work."""
        # process_time: this process's threads (the run trains in one), not its reaped
        # children's CPU, which /proc's cutime would add whenever they are waited for.
        cpu, machine, wall = time.process_time(), machine_s(), time.perf_counter()
        value = work()
        after = machine_s()
        wall = time.perf_counter() - wall
        own_cpu = time.process_time() - cpu
        clock[name] = {
            "wall_s": round(wall, 2),
            "own_cpu_s": round(own_cpu, 2),
            "cores": round(own_cpu / wall, 2) if wall > 0 else None,  # this process's, on average
        }
        if machine is not None and after is not None:
            spent = {k: after[k] - machine[k] for k in machine}
            clock[name].update(
                others_cpu_s=round(max(spent["busy"] - own_cpu, 0.0), 2),
                iowait_s=round(spent["iowait"], 2),
                steal_s=round(spent["steal"], 2),
            )
        return value

    def bare_pass() -> float:
        say(f"figure 13: bare feature pass over {len(paths):,} images")
        started = time.perf_counter()
        forward_once(model, paths, image_size, None, runtime_pick(model, built, runtime, None))
        seconds = time.perf_counter() - started
        say(f"figure 13: bare pass {seconds:.1f} s on {runtime.get('runtime')}")
        return seconds

    # Before and after the run, and their mean: a shared machine's load drifts over minutes.
    before = measured("bare_before", bare_pass)
    clear_embeddings(config, paths, image_size)  # cold: the run computes its features
    home = out / "figure-13-runs"
    shutil.rmtree(home, ignore_errors=True)
    run = measured("run", lambda: timed_run(JobQueue(home), config, say, "figure 13"))
    after = measured("bare_after", bare_pass)
    bare_s = (before + after) / 2
    ratio = run["duration_s"] / bare_s
    # The run against its own pass, timed inside it: what the run adds, without the machine's
    # drift between the timings minutes apart (the same bare pass: 36-46 s in one session).
    own_pass = float(run["profile"].get("features_s") or 0.0)
    return {
        "classes": classes,
        "images": len(paths),
        "image_size": image_size,
        "data": {"root": str(folder), "file_px": GENERATED_PX},
        "bare_pass_s": round(bare_s, 2),
        "bare_pass_before_after_s": [round(before, 2), round(after, 2)],
        "bare_images_per_s": round(len(paths) / bare_s, 1),
        "runtime": runtime.get("runtime"),
        "run": run,
        "ratio": round(ratio, 3),
        "ratio_to_own_pass": round(run["duration_s"] / own_pass, 3) if own_pass > 0 else None,
        "clock": clock,
        "target": TARGETS["feature_ratio"],
        "met": ratio <= TARGETS["feature_ratio"],
    }


# --------------------------------------------------------------------------- figure 14


def _train_command(folder: Path, runs: Path, image_size: int) -> list[str]:
    return [
        sys.executable, "-m", "core", "train", "--data", str(folder), "--mode", "fine_tuning",
        "--image-size", str(image_size), "--epochs", str(HEAD_EPOCHS),
        "--fine-tune-epochs", str(FINE_TUNE_EPOCHS), "--no-augment", "--runs-dir", str(runs),
        "--json",
    ]  # fmt: skip


def _child_env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TRANSFER_STUDIO_PROGRESS_AFTER_S": "5"}


def _own_peak_mb(pid: int, command: list[str], done: threading.Event, peak: list[float]) -> None:
    """Poll the child's ``VmHWM`` (its own memory's high-water mark) until ``done``; readings
    count only once the child runs ``command`` (before its exec it shares the parent's memory)."""
    wanted = "\0".join(command)
    while not done.is_set():
        try:
            running = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            running = ""
        if running.rstrip("\0") == wanted:
            hwm = status_mb("VmHWM", pid)
            if hwm is not None:
                peak[0] = max(peak[0], hwm)
        done.wait(0.1)


def _run_child(command: list[str], log: Path) -> dict[str, Any]:
    """Run ``command`` to its end: its last stdout line (JSON), wall seconds, peak RSS.

    The peak is the child's own ``VmHWM``, polled while it runs: ``wait4``'s ``ru_maxrss`` also
    keeps the parent's peak at the fork (Linux carries it over ``exec``), so from a large parent
    (a test process after many tests) it said 5 GB for a tiny run. Without /proc it is used.
    """
    started = time.perf_counter()
    peak = [0.0]
    done = threading.Event()
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=_child_env(), stdout=subprocess.PIPE, stderr=err
        )
        poller = threading.Thread(
            target=_own_peak_mb, args=(proc.pid, command, done, peak), daemon=True
        )
        poller.start()
        assert proc.stdout is not None
        stdout = proc.stdout.read()
        done.set()
        poller.join()
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    lines = stdout.decode().strip().splitlines()
    result = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
    return {
        "result": result,
        "returncode": proc.returncode,
        "wall_s": round(wall, 2),
        # Linux: ru_maxrss in kilobytes
        "peak_rss_mb": round(peak[0] if peak[0] > 0 else usage.ru_maxrss / 1024, 1),
    }


def _epochs(runs: Path, run_id: str) -> list[dict[str, Any]]:
    from core.runs.store import RunStore

    return [dict(e) for e in RunStore(runs).epochs(run_id)]


def _unfrozen_limit(
    config: RunConfig, classes: int, paths: list[str], rows: int, say: ProgressCb
) -> dict[str, Any]:
    """Seconds of one epoch of the unfrozen part alone: ``rows`` activations (those of a few
    real images, tiled) in memory, batch by batch through a compiled forward+backward step and
    the optimizer, no input pipeline, no callbacks. The best of two epochs after a warm-up."""
    import keras
    import tensorflow as tf

    from core.training.cut import compute_activations, plan_cut
    from core.training.model import FINE_TUNE_PHASE, build_model, compile_model, set_phase

    built = build_model(config, classes)
    set_phase(config, built, FINE_TUNE_PHASE)
    cut, why = plan_cut(config, built, rows)
    if cut is None:
        return {"error": why}
    sample = compute_activations(cut, paths[:256], built.image_size)
    acts = np.resize(sample, (rows, *cut.shape)).astype(np.float32)
    labels = np.arange(rows) % classes
    model = cut.classifier
    compile_model(model, config.fine_tune_lr)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    optimizer = model.optimizer
    batch = config.batch_size
    batches = [
        (tf.constant(acts[i : i + batch]), tf.constant(labels[i : i + batch]))
        for i in range(0, rows, batch)
    ]

    @tf.function(reduce_retracing=True)
    def step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    times = []
    for rep in range(3):
        started = time.perf_counter()
        for x, y in batches:
            step(x, y)
        if rep:
            times.append(time.perf_counter() - started)
    best = min(times)
    say(f"figure 14: the unfrozen part alone: {best:.1f} s per epoch of {rows:,} activations")
    return {
        "seconds": round(best, 2),
        "epochs_timed": [round(t, 2) for t in times],
        "rows": rows,
        "shape": list(cut.shape),
    }


def _dtype_check(out: Path, say: ProgressCb) -> dict[str, Any]:
    """Fine-tuning on float16 against float32 activations, same data and seed."""
    from core.training.cut import DTYPE_ENV
    from core.training.jobs import JobQueue

    classes, per_class = DTYPE_CHECK
    folder = generated_set(classes, per_class)
    home = out / "figure-14-dtype-runs"
    shutil.rmtree(home, ignore_errors=True)
    jobs = JobQueue(home)
    config = RunConfig(
        data=str(folder), mode="fine_tuning", image_size=FINE_TUNE_SIZE, augment=False,
        epochs=HEAD_EPOCHS, fine_tune_epochs=FINE_TUNE_EPOCHS,
    )  # fmt: skip
    runs: dict[str, Any] = {}
    before = os.environ.get(DTYPE_ENV)
    try:
        for dtype in ("float32", "float16"):
            os.environ[DTYPE_ENV] = dtype  # read when the run plans its cut
            run = timed_run(jobs, config.with_changes(name=f"dtype {dtype}"), say, dtype)
            phases = jobs.store.result(run["run_id"])["phases"]
            run["stored_dtype"] = (phases[-1].get("activation_store") or {}).get("dtype")
            runs[dtype] = run
    finally:
        if before is None:
            os.environ.pop(DTYPE_ENV, None)
        else:
            os.environ[DTYPE_ENV] = before
    acc = {k: v["final_val_accuracy"] or 0.0 for k, v in runs.items()}
    points = abs(acc["float16"] - acc["float32"]) * 100
    return {
        "classes": classes,
        "images": classes * per_class,
        "float32": runs["float32"],
        "float16": runs["float16"],
        "final_accuracy_difference_points": round(points, 2),
        "target_points": TARGETS["float16_points"],
        "met": points <= TARGETS["float16_points"],
    }


def fine_tune_scale(
    out: Path,
    classes: int = FINE_TUNE_CLASSES,
    per_class: int = FINE_TUNE_PER_CLASS,
    image_size: int = FINE_TUNE_SIZE,
    dtype_check: bool = True,
    progress: ProgressCb | None = None,
    walk: bool = True,
    shots: Path = SHOTS,
) -> dict[str, Any]:
    """Figure 14 (see the module docstring). ``walk``: also review the fine-tuned run and walk
    its pages in headless Chromium (``core.bench.walk``; screenshots ``finetune-*.png`` in
    ``shots``)."""
    from core.data import load_dataset
    from core.training.jobs import JobQueue

    say = progress or (lambda _msg: None)
    say(f"figure 14: data: {classes} classes x {per_class:,} images")
    folder = generated_set(classes, per_class, say)
    runs = out / "figure-14-runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    log = out / "figure-14.log"
    say(f"figure 14: fine-tuning in its own process (stderr in {log})")
    child = _run_child(_train_command(folder, runs, image_size), log)
    result = child["result"]
    if result is None:
        return {"error": f"the run exited {child['returncode']}; see {log}", **child}
    run_id = result["run_id"]
    epochs = _epochs(runs, run_id)
    tune = [e["duration_s"] for e in epochs if e["phase"] == "fine_tune"]
    head = [e["duration_s"] for e in epochs if e["phase"] == "head"]
    acc = {e["phase"]: e["val_accuracy"] for e in epochs}  # the last epoch of each phase
    store_info = result["phases"][-1].get("activation_store") or {}
    say(
        f"figure 14: run {child['wall_s']:.0f} s, peak {child['peak_rss_mb']:.0f} MB, fine-tune "
        f"epochs {tune} s"
    )
    config = RunConfig(
        data=str(folder), mode="fine_tuning", image_size=image_size, augment=False,
        epochs=HEAD_EPOCHS, fine_tune_epochs=FINE_TUNE_EPOCHS,
    )  # fmt: skip
    index = load_dataset(config.data, val_split=config.val_split, seed=config.seed)
    limit = _unfrozen_limit(
        config, len(index.class_names), list(index.train_paths), len(index.train_paths), say
    )
    fe_config = config.with_changes(
        mode="feature_extraction", epochs=HEAD_EPOCHS + FINE_TUNE_EPOCHS, name="figure 14 FE"
    )
    clear_embeddings(fe_config, [*index.train_paths, *index.val_paths], image_size)
    fe_home = out / "figure-14-fe-runs"
    shutil.rmtree(fe_home, ignore_errors=True)
    fe = timed_run(JobQueue(fe_home), fe_config, say, "figure 14 feature extraction")
    per_epoch = float(np.median(tune)) if tune else None
    limit_s = limit.get("seconds")
    figure: dict[str, Any] = {
        "classes": classes,
        "images": classes * per_class,
        "image_size": image_size,
        "data": {"root": str(folder), "file_px": GENERATED_PX, "upscaled_to": image_size},
        "run_id": run_id,
        "wall_s": child["wall_s"],
        "duration_s": result["duration_s"],
        "timings": result.get("timings"),
        "peak_rss_mb": child["peak_rss_mb"],
        "activation_store": store_info,
        "input": result["phases"][-1].get("input"),
        "head_epoch_s": head,
        "fine_tune_epoch_s": tune,
        "fine_tune_epoch_median_s": per_epoch,
        "limit": limit,
        "epoch_vs_limit": round(per_epoch / limit_s, 2) if per_epoch and limit_s else None,
        "accuracy": {
            "after_head": acc.get("head"),
            "fine_tuned": acc.get("fine_tune"),
            "best": result["best_val_accuracy"],
            "feature_extraction": fe["final_val_accuracy"],
            "feature_extraction_best": fe["best_val_accuracy"],
        },
        "feature_extraction_run": fe,
        "targets": {"peak_rss_gb": TARGETS["peak_rss_gb"]},
        "met": {"peak_rss": child["peak_rss_mb"] / 1024 <= TARGETS["peak_rss_gb"]},
    }
    figure["browser"] = (
        _walk_fine_tuned(runs, run_id, folder, shots, say) if walk else {"skipped": "not asked"}
    )
    if seconds := (figure["browser"].get("seconds") or {}):
        worst = max(seconds.get(page, 0.0) for page in WALKED)
        figure["met"]["pages"] = worst <= TARGETS["page_s"]
    if dtype_check:
        figure["float16_check"] = _dtype_check(out, say)
        figure["met"]["float16"] = figure["float16_check"]["met"]
    return figure


def _walk_fine_tuned(
    runs: Path, run_id: str, folder: Path, shots: Path, say: ProgressCb
) -> dict[str, Any]:
    """The fine-tuned run's review (its scores, computed as the dashboard's button does), then
    the browser walk of its pages; ``{"error": ...}`` when a page never settled."""
    from core.training.jobs import JobQueue
    from core.training.review import review_run

    started = time.perf_counter()
    review = review_run(JobQueue(runs).store, run_id)
    review_s = round(time.perf_counter() - started, 1)
    say(f"figure 14: review {review_s} s ({len(review.suspects):,} images)")
    share_caches(runs)
    image = next(iter(sorted(folder.glob("*/*.jpg"))))
    walked = walk_or_error(runs, run_id, str(folder), image, shots, say, prefix="finetune")
    return {"review_s": review_s, **walked}


# --------------------------------------------------------------------------- figure 15


def _manifest_chunks(runs: Path) -> tuple[int, float | None]:
    """Completed chunks of the (one) run under ``runs``, and when the last was recorded."""
    from core.training.cut import ACTIVATION_DIR, MANIFEST

    for path in (runs / "runs").glob(f"*/{ACTIVATION_DIR}/{MANIFEST}"):
        try:
            return len(json.loads(path.read_text("utf-8"))["chunks"]), path.stat().st_mtime
        except (OSError, ValueError, KeyError):
            return 0, None
    return 0, None


def fine_tune_kill(
    out: Path,
    classes: int = FINE_TUNE_CLASSES,
    per_class: int = FINE_TUNE_PER_CLASS,
    image_size: int = FINE_TUNE_SIZE,
    uninterrupted_wall_s: float | None = None,
    progress: ProgressCb | None = None,
) -> dict[str, Any]:
    """Figure 15: kill -9 half-way through the cut pass, resume, and count the seconds lost."""
    from core.runs.store import RunStore
    from core.training.cut import chunk_rows

    say = progress or (lambda _msg: None)
    folder = generated_set(classes, per_class)
    runs = out / "figure-15-runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    log = out / "figure-15.log"
    images = classes * per_class
    chunks = -(-images // chunk_rows())
    say(f"figure 15: the run, killed once {chunks // 2} of its {chunks} chunks are stored")
    started = time.perf_counter()
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            _train_command(folder, runs, image_size), cwd=ROOT, env=_child_env(),
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
        try:
            while proc.poll() is None and _manifest_chunks(runs)[0] < max(chunks // 2, 1):
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    killed_at = time.time()
    killed_wall = time.perf_counter() - started
    stored, last_chunk_t = _manifest_chunks(runs)
    since_chunk = killed_at - last_chunk_t if last_chunk_t else None
    run_id = RunStore(runs).list_runs()[0]["run_id"]  # reopened: the dead run is interrupted
    say(f"figure 15: killed after {killed_wall:.0f} s with {stored} chunks stored; resuming")
    launched = time.time()
    watching = threading.Event()
    seen: dict[str, float] = {}
    watcher = threading.Thread(
        target=_watch_pass, args=(runs, run_id, launched, seen, watching), daemon=True
    )
    watcher.start()
    resumed = _run_child(
        [sys.executable, "-m", "core", "resume", run_id, "--runs-dir", str(runs), "--json"], log
    )
    watching.set()
    watcher.join(timeout=5)
    result = resumed["result"] or {}
    store_info = (result.get("phases") or [{}])[-1].get("activation_store") or {}
    # Lost: the killed chunk's work (since the last stored chunk) and the resumed attempt's
    # start until its pass runs again (a new process: Python, TensorFlow, scan, model build).
    startup = seen["started"] - launched if "started" in seen else None
    lost = (since_chunk or 0.0) + startup if startup is not None else None
    total = killed_wall + resumed["wall_s"]
    say(f"figure 15: resumed in {resumed['wall_s']:.0f} s; lost {lost} s")
    return {
        "images": images,
        "chunks": chunks,
        "chunk_images": chunk_rows(),
        "killed_after_s": round(killed_wall, 2),
        "chunks_stored_at_kill": stored,
        "seconds_since_last_chunk_at_kill": round(since_chunk, 2) if since_chunk else None,
        "resume_wall_s": resumed["wall_s"],
        "resume_status": result.get("status"),
        "reused_chunks": store_info.get("reused_chunks"),
        "resume_startup_s": round(startup, 2) if startup is not None else None,
        "seconds_lost": round(lost, 1) if lost is not None else None,
        # For reference only: both walls include the post-run evaluation and leakage check,
        # whose cost depends on the embedding cache and on the machine's load at the time.
        "killed_plus_resumed_wall_s": round(total, 1),
        "uninterrupted_wall_s": uninterrupted_wall_s,
        "resume_peak_rss_mb": resumed["peak_rss_mb"],
        "met": result.get("status") == "completed" and store_info.get("reused_chunks") == stored,
    }


def _watch_pass(
    runs: Path, run_id: str, after: float, seen: dict[str, float], done: threading.Event
) -> None:
    """Note in ``seen["started"]`` when the resumed attempt's cut pass began (its stage
    record's ``started``, written after ``after``)."""
    from core.runs.store import RunStore

    store = RunStore(runs, recover=False)
    while not done.wait(0.2):
        try:
            raw = store.get_run(run_id).get("stage_json")
            record = json.loads(raw) if raw else {}
        except Exception:  # a busy store: the next poll reads it
            continue
        if record.get("stage") == "features" and float(record.get("t") or 0) >= after:
            seen["started"] = float(record["started"])
            return


# --------------------------------------------------------------------------- text


def format_lines(f: dict[str, Any]) -> list[str]:
    """The figures' lines in ``format_bench``."""
    lines = []
    if d := f.get("feature_scale"):
        lines.append(
            f"13. feature extraction, {d['images']:,} images / {d['classes']} classes at "
            f"{d['image_size']} px: run {d['run']['duration_s']:.0f} s vs bare pass "
            f"{d['bare_pass_s']:.0f} s ({d['runtime']}; before and after the run: "
            f"{d['bare_pass_before_after_s'][0]:.0f}, {d['bare_pass_before_after_s'][1]:.0f} s) "
            f"= {d['ratio']:.2f} — target ≤ {d['target']:g}: {_met(d['met'])}"
            + (
                f" (the run against its own pass: {d['ratio_to_own_pass']:.2f})"
                if d.get("ratio_to_own_pass")
                else ""
            )
        )
    if (d := f.get("fine_tune_scale")) and "error" not in d:
        acc, store, limit = d["accuracy"], d["activation_store"], d["limit"]
        line = (
            f"14. fine-tuning {d['images']:,} images at {d['image_size']} px: peak RSS "
            f"{d['peak_rss_mb']:.0f} MB (target ≤ {d['targets']['peak_rss_gb']:g} GB: "
            f"{_met(d['met']['peak_rss'])}); cache {store.get('dtype')} "
            f"{(store.get('bytes') or 0) / 1e6:.0f} MB on disk in {store.get('chunks')} chunks; "
            f"fine-tune epoch {d['fine_tune_epoch_median_s']} s vs the unfrozen part alone "
            f"{limit.get('seconds')} s ({d['epoch_vs_limit']}x); val acc fine-tuned "
            f"{acc['fine_tuned']} vs feature extraction {acc['feature_extraction']}"
        )
        browser = d.get("browser") or {}
        if seconds := browser.get("seconds"):
            pages = ", ".join(f"{page} {seconds.get(page, '-')} s" for page in WALKED)
            line += (
                f"; its review {browser.get('review_s')} s; browser walk: {pages}, server "
                f"{browser.get('server_rss_mb_max')} MB (target ≤ {TARGETS['page_s']:g} s a "
                f"page: {_met(d['met']['pages'])})"
            )
        elif browser:
            line += f"; browser walk: {browser.get('skipped') or browser.get('error')}"
        if c := d.get("float16_check"):
            line += (
                f"; float16 vs float32 ({c['images']:,} images, {c['classes']} classes): "
                f"{c['float16']['final_val_accuracy']} vs {c['float32']['final_val_accuracy']} "
                f"({c['final_accuracy_difference_points']} points, target ≤ "
                f"{c['target_points']:g}: {_met(c['met'])})"
            )
        lines.append(line)
    if d := f.get("fine_tune_kill"):
        lines.append(
            f"15. kill -9 during the cut pass ({d['chunks_stored_at_kill']}/{d['chunks']} chunks "
            f"stored, {d['seconds_since_last_chunk_at_kill']} s after the last): resume "
            f"{d['resume_status']}, {d['reused_chunks']} chunks reused, {d['seconds_lost']} s "
            f"lost (the killed chunk's work and {d['resume_startup_s']} s of restart): "
            f"{_met(d['met'])}"
        )
    return lines


def _met(value: bool) -> str:
    return "met" if value else "MISSED"
