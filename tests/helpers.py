"""What test modules share (fixtures live in conftest.py): no test module imports another."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]  # the project: where ``python -m core`` runs

# The smallest run that exercises the whole engine: random-weight MobileNetV2 at 32 px, 1 epoch.
TINY = RunConfig(
    backbone="mobilenet_v2",
    weights="none",
    data="builtin:textures",
    image_size=32,
    epochs=1,
    fine_tune_epochs=1,
    batch_size=32,
)


# The text patterns GFM renderers turn into links by themselves (autolink literals), as
# mdast-util-gfm-autolink-literal (Streamlit's Markdown) matches them in text nodes, after
# backslash escapes are resolved.
GFM_AUTOLINK = re.compile(r"(https?://|www(?=\.))([-.\w]+)([^ \t\r\n]*)", re.IGNORECASE)
GFM_EMAIL = re.compile(r"([-.\w+]+)@([-\w]+(?:\.[-\w]+)+)")


def write_pngs(folder: Path, n: int, side: int = 24) -> list[str]:
    """``n`` small PNGs of distinct colours in ``folder`` (created); their paths as strings."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.new("RGB", (side, side), (i * 30 % 256, 60, 90)).save(path)
        paths.append(str(path))
    return paths


def stop_studio_workers(home: str | os.PathLike[str], timeout: float = 15.0) -> None:
    """SIGTERM the worker processes serving ``home``'s runs (a dashboard server started them in
    their own session, so stopping the server leaves a run in progress training on)."""
    from core.runs.store import RunStore

    pids = {w["pid"] for w in RunStore(home, recover=False).workers() if w["pid"] > 0}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def off_by_one_class(probabilities: np.ndarray) -> np.ndarray:
    """What a tampered export would answer: certain of the class after each live top-1. (A roll of
    the probabilities changes nothing when a tiny model is unsure of everything.)"""
    classes = probabilities.shape[1]
    wrong = (probabilities.argmax(axis=1) + 1) % classes
    return np.eye(classes, dtype=probabilities.dtype)[wrong]


def cli(
    *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m core ARGS`` in a subprocess from the project folder, as a user runs it
    (``env``: its environment instead of this process's)."""
    env = {**(os.environ if env is None else env), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "core", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def offline_env(folder: Path) -> dict[str, str]:
    """This environment with a brand-new studio home and an empty Keras cache under ``folder``,
    and every HTTP(S) request sent to a port where nothing answers: offline, on a new home."""
    dead = "http://127.0.0.1:9"  # the discard port
    return {
        **os.environ,
        "TRANSFER_STUDIO_HOME": str(folder / "home"),
        "KERAS_HOME": str(folder / "keras"),
        "HTTP_PROXY": dead,
        "HTTPS_PROXY": dead,
        "http_proxy": dead,
        "https_proxy": dead,
        "NO_PROXY": "",
    }


def last_json(proc: subprocess.CompletedProcess[str]) -> Any:
    """The JSON object on a command's last stdout line."""
    return json.loads(proc.stdout.strip().splitlines()[-1])


def blobs(n: int, seed: int, width: int = 16, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``n`` feature rows around ``classes`` fixed centres (separable), and their labels."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(0, 3, (classes, width))
    labels = rng.integers(0, classes, n)
    return (centres[labels] + rng.normal(0, 1, (n, width))).astype(np.float32), labels


def small_head(width: int = 16, classes: int = 3) -> Any:
    """A head like the studio's (dropout, dense, softmax) on ``width`` features."""
    import keras

    inputs = keras.Input((width,))
    x = keras.layers.Dropout(0.2)(inputs)
    x = keras.layers.Dense(32, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))


def fake_run(
    store: Any,
    data: str,
    status: str = "completed",
    config: RunConfig | None = None,
    model: Callable[[list[str]], Any] | None = None,
) -> str:
    """A run of ``data`` recorded as the trainer records one, without training: the data scanned
    (class names, counts, summary, the split in ``split.json``), one epoch and, with ``model``
    (class names → a Keras model), its saved model. ``status``: how it ended."""
    from core.data.index import load_dataset
    from core.runs.split import record_split

    config = config or RunConfig(data=data, epochs=1, augment=False)
    run_id = store.create_run(config)
    store.mark_running(run_id)
    index = load_dataset(data, val_split=config.val_split, seed=config.seed)
    record_split(store.run_dir(run_id), index)
    store.update(
        run_id,
        class_names=index.class_names,
        train_images=len(index.train_paths),
        val_images=len(index.val_paths),
        dataset=index.summary(),
    )
    store.add_epoch(
        run_id,
        {"epoch": 1, "phase": "head", "phase_epoch": 1, "loss": 0.9, "accuracy": 0.6,
         "val_loss": 1.0, "val_accuracy": 0.5, "lr": 1e-3, "images_per_s": 100.0,
         "duration_s": 1.0},
    )  # fmt: skip
    if model is not None:
        path = store.run_dir(run_id) / "model.keras"
        model(index.class_names).save(path)
        store.update(run_id, model_path=str(path), model_bytes=path.stat().st_size)
    store.mark_finished(run_id, status)
    return run_id


@contextmanager
def seeded_studio(home: Path, config: RunConfig) -> Iterator[tuple[Any, str]]:
    """A studio home of its own holding one completed run of ``config``: (queue, run_id).

    The queue is the process-wide one the pages get through ``loaders.job_queue()``.
    """
    old = os.environ.get("TRANSFER_STUDIO_HOME")
    os.environ["TRANSFER_STUDIO_HOME"] = str(home)
    try:
        from core.training.jobs import get_job_queue

        queue = get_job_queue(home)
        run_id = queue.submit(config)
        assert queue.wait(run_id, timeout=300) == "completed"
        yield queue, run_id
    finally:
        if old is None:
            os.environ.pop("TRANSFER_STUDIO_HOME", None)
        else:
            os.environ["TRANSFER_STUDIO_HOME"] = old


@contextmanager
def fake_studio(home: Path) -> Iterator[Any]:
    """A studio home of its own, its store empty; yields the store the pages use."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFER_STUDIO_HOME", str(home))
        from core.training.jobs import get_job_queue

        yield get_job_queue(home).store


def stored_run(
    store: Any,
    config: RunConfig,
    class_names: list[str],
    status: str = "completed",
    error: str | None = None,
    matrix: Any = None,
    images: list[dict[str, Any]] | None = None,
    model_bytes: int = 11,
) -> str:
    """A run as the worker leaves it, without training: one epoch, a model file (``model_bytes``
    junk bytes: nothing here loads it) and, with ``matrix``, the cached evaluation the Run page
    reads."""
    from core.runs.evaluate import EVALUATION_FILE, _model_fingerprint

    run_id = store.create_run(config, status="running")
    model = store.run_dir(run_id) / "model.keras"
    model.write_bytes(b"not a model".ljust(model_bytes, b"."))
    store.add_epoch(
        run_id,
        {"epoch": 1, "phase": "head", "phase_epoch": 1, "loss": 0.9, "accuracy": 0.6,
         "val_loss": 1.0, "val_accuracy": 0.5, "lr": 1e-3, "images_per_s": 100.0,
         "duration_s": 1.0},
    )  # fmt: skip
    now = time.time()
    store.update(
        run_id, class_names=class_names, train_images=8 * len(class_names),
        val_images=2 * len(class_names), model_path=str(model), model_bytes=model_bytes,
        phases=[{"phase": "head", "epochs": 1, "lr": 1e-3, "trainable_params": 10,
                 "non_trainable_params": 100, "unfrozen_layers": 0, "base_layers": 5}],
        started_at=now - 2, finished_at=now, duration_s=2.0,
    )  # fmt: skip
    if status != "running":
        store.update(run_id, status=status, error=error)
    if matrix is not None:
        counts = np.asarray(matrix, dtype=np.int64)
        total = int(counts.sum())
        evaluation = {
            "run_id": run_id,
            "accuracy": float(np.trace(counts) / total) if total else 0.0,
            "class_names": class_names,
            "confusion_matrix": counts.tolist(),
            "per_class": [
                {
                    "class": name,
                    "precision": 0.5,
                    "recall": 0.5,
                    "f1": 0.5,
                    "support": int(counts[i].sum()),
                }
                for i, name in enumerate(class_names)
            ],
            "macro_avg": {"precision": 0.5, "recall": 0.5, "f1": 0.5},
            "val_images": total,
            "images": images or [],
            "duration_s": 0.1,
            "evaluated_at": now,
            "cache_key": _model_fingerprint(model),
        }
        (store.run_dir(run_id) / EVALUATION_FILE).write_text(json.dumps(evaluation))
    return run_id


def smooth_picture(seed: int, side: int = 64, lean: int | None = None) -> np.ndarray:
    """A distinct picture: smooth random colour blobs (``lean``: a colour channel pushed up, so
    pictures of one class look alike)."""
    small = (np.random.default_rng(seed).random((6, 6, 3)) * 255).astype(np.int64)
    if lean is not None:
        small[..., lean] = np.clip(small[..., lean] + 80, 0, 255)
    im = Image.fromarray(small.astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(im)


def cropped_twin(rgb: np.ndarray, px: int = 2, quality: int = 85) -> bytes:
    """A near-copy of a picture: ``px`` cropped from each side, re-encoded as JPEG (its bytes)."""
    im = Image.fromarray(rgb)
    buf = io.BytesIO()
    im.crop((px, px, im.width - px, im.height - px)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()
