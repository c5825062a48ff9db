"""Helpers the app tests share: a studio home seeded without training (a run store row as the
worker leaves one), or with one real tiny run for the tests that load its model."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from core.runs.store import COMPLETED, RUNNING

if TYPE_CHECKING:
    from core.config import RunConfig
    from core.training.jobs import JobQueue


@contextmanager
def seeded_studio(home: Path, config: RunConfig) -> Iterator[tuple[JobQueue, str]]:
    """A studio home of its own holding one completed (trained) run of ``config``:
    (queue, run_id). The queue is the process-wide one the pages get through
    ``loaders.job_queue()``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFER_STUDIO_HOME", str(home))
        from core.training.jobs import get_job_queue

        queue = get_job_queue(home)
        run_id = queue.submit(config)
        assert queue.wait(run_id, timeout=300) == "completed"
        yield queue, run_id


@contextmanager
def fake_studio(home: Path) -> Iterator[Any]:
    """A studio home of its own, its store empty; yields the store the pages use."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFER_STUDIO_HOME", str(home))
        from core.training.jobs import get_job_queue

        yield get_job_queue(home).store


def fake_run(
    store: Any,
    config: RunConfig,
    class_names: list[str],
    status: str = COMPLETED,
    error: str | None = None,
    matrix: Any = None,
    images: list[dict[str, Any]] | None = None,
    model_bytes: int = 11,
) -> str:
    """A run as the worker leaves it, without training: one epoch, a model file (``model_bytes``
    junk bytes: nothing here loads it) and, with ``matrix``, the cached evaluation the Run page
    reads."""
    from core.runs.evaluate import EVALUATION_FILE, _model_fingerprint

    run_id = store.create_run(config, status=RUNNING)
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
    if status != RUNNING:
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
