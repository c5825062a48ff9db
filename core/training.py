"""Executes one run: data → model → phases → saved model, streaming metrics into the run store.

``execute_run`` is what the job queue's worker thread calls; it never raises for a run's own
failure: the run is marked ``failed`` with a readable message and the worker goes on to the
next run.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import keras

from core.config import RunConfig
from core.errors import DataError, StudioError
from core.store import COMPLETED, FAILED, STOPPED, RunStore

ProgressFn = Callable[[dict[str, Any]], None]
MODEL_FILE = "model.keras"


class StoreMetricsCallback(keras.callbacks.Callback):
    """Writes per-batch and per-epoch metrics to the store and honours stop requests per batch."""

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        phase: str,
        epoch_offset: int,
        steps_per_epoch: int,
        batch_size: int,
        stop_event: threading.Event,
        step_offset: int = 0,
        progress: ProgressFn | None = None,
    ) -> None:
        super().__init__()
        self.store, self.run_id, self.phase = store, run_id, phase
        self.epoch_offset, self.step_offset = epoch_offset, step_offset
        self.steps_per_epoch, self.batch_size = steps_per_epoch, batch_size
        self.stop_event, self.progress = stop_event, progress
        self.global_step = step_offset
        self.stopped_mid_epoch = False
        self._batch_start = self._epoch_start = time.perf_counter()
        self._epoch_images = 0
        self._epoch = 0
        self._last_store_check = 0.0

    def _lr(self) -> float:
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def _stop_wanted(self) -> bool:
        # The store flag lets another process (``python -m core stop``) stop this run; poll it
        # at most once a second so the hot loop stays cheap.
        now = time.monotonic()
        if not self.stop_event.is_set() and now - self._last_store_check > 1.0:
            self._last_store_check = now
            if self.store.stop_requested(self.run_id):
                self.stop_event.set()
        return self.stop_event.is_set()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:  # noqa: D102
        self._epoch = epoch
        self._epoch_start = time.perf_counter()
        self._epoch_images = 0

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:  # noqa: D102
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:  # noqa: D102
        logs = logs or {}
        elapsed = max(time.perf_counter() - self._batch_start, 1e-9)
        self.global_step += 1
        self._epoch_images += self.batch_size
        self.store.add_batch(
            self.run_id,
            {
                "global_step": self.global_step,
                "phase": self.phase,
                "epoch": self.epoch_offset + self._epoch + 1,
                "step": batch + 1,
                "steps_per_epoch": self.steps_per_epoch,
                "loss": float(logs.get("loss", float("nan"))),
                "accuracy": float(logs.get("accuracy", float("nan"))),
                "lr": self._lr(),
                "images_per_s": float(self.batch_size / elapsed),
            },
        )
        if self._stop_wanted():
            self.stopped_mid_epoch = batch + 1 < self.steps_per_epoch
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:  # noqa: D102
        logs = logs or {}
        if self.stopped_mid_epoch:
            return  # a partial epoch is not a finished epoch: keep the history honest
        elapsed = max(time.perf_counter() - self._epoch_start, 1e-9)
        record = {
            "epoch": self.epoch_offset + epoch + 1,
            "phase": self.phase,
            "phase_epoch": epoch + 1,
            "lr": self._lr(),
            "images_per_s": float(self._epoch_images / elapsed),
            "duration_s": float(elapsed),
            **{
                k: float(logs[k])
                for k in ("loss", "accuracy", "val_loss", "val_accuracy")
                if k in logs
            },
        }
        self.store.add_epoch(self.run_id, record)
        if self.progress:
            self.progress(record)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, StudioError):
        return str(exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def execute_run(
    store: RunStore,
    run_id: str,
    stop_event: threading.Event | None = None,
    progress: ProgressFn | None = None,
) -> str:
    """Train run ``run_id`` to the end; returns its final status (completed/stopped/failed)."""
    stop_event = stop_event or threading.Event()
    store.mark_running(run_id)
    try:
        status = _train(store, run_id, store.config(run_id), stop_event, progress)
    except Exception as exc:  # the run fails, the worker lives on
        (store.run_dir(run_id) / "error.log").write_text(traceback.format_exc())
        store.mark_finished(run_id, FAILED, error=_error_text(exc))
        return FAILED
    store.mark_finished(run_id, status)
    return status


def _train(
    store: RunStore,
    run_id: str,
    config: RunConfig,
    stop_event: threading.Event,
    progress: ProgressFn | None,
) -> str:
    from core.data import load_dataset
    from core.model_builder import (
        build_model,
        compile_model,
        phase_epochs,
        phase_lr,
        set_phase,
    )
    from core.pipeline import make_dataset

    config.validate()
    keras.utils.set_random_seed(config.seed)
    data = load_dataset(config.data, val_split=config.val_split, seed=config.seed)
    store.update(
        run_id,
        class_names=data.class_names,
        train_images=len(data.train_paths),
        val_images=len(data.val_paths),
        skipped_files=data.skipped_files,
        dataset=data.summary(),
    )
    if not data.val_paths:
        raise DataError(
            f"No validation images: every class in {data.root} has a single usable image. "
            "Add at least 2 images per class (or a val/ folder) so accuracy can be measured."
        )
    built = build_model(config, len(data.class_names))
    size = built.image_size
    train_ds = make_dataset(
        data.train_paths,
        data.train_labels,
        size,
        config.batch_size,
        training=True,
        augmentations=config.active_augmentations(),
        seed=config.seed,
    )
    val_ds = make_dataset(data.val_paths, data.val_labels, size, config.batch_size, training=False)
    steps = -(-len(data.train_paths) // config.batch_size)

    phases: list[dict[str, Any]] = []
    epoch_offset = step_offset = 0
    stopped = False
    for phase in config.phases:
        epochs = phase_epochs(config, phase)
        if epochs == 0:
            continue
        info = set_phase(config, built, phase)
        info.update(epochs=epochs, lr=phase_lr(config, phase), start_epoch=epoch_offset + 1)
        phases.append(info)
        store.update(run_id, phases=phases)
        compile_model(built.model, phase_lr(config, phase))
        callback = StoreMetricsCallback(
            store, run_id, phase, epoch_offset, steps, config.batch_size, stop_event,
            step_offset=step_offset, progress=progress,
        )  # fmt: skip
        built.model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            callbacks=[callback],
            verbose=0,
            shuffle=False,
        )
        epoch_offset += epochs
        step_offset = callback.global_step
        if stop_event.is_set():
            stopped = True
            break

    model_path = store.run_dir(run_id) / MODEL_FILE
    built.model.save(model_path)
    store.update(run_id, model_path=str(model_path), model_bytes=model_path.stat().st_size)
    return STOPPED if stopped else COMPLETED
