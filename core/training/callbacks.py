"""The trainer's Keras callbacks, one job each, composed with ``keras.callbacks.CallbackList``.

``training_callbacks`` returns them in the order they must run at an epoch's end: buffered batch
rows are flushed, the stop request is known, the epoch row is written (unless the epoch was cut
short by a stop), then the checkpoint is taken: a checkpoint never runs ahead of the metrics.

They work with Keras ``fit`` and with ``head_fit.fit_head`` alike: one ``on_train_batch_end``
may cover several steps (Keras' ``steps_per_execution``, or ``fit_head``'s one call per epoch),
``batch`` being the last step's index, as Keras reports it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import keras

from core.runs.store import RunStore
from core.training.checkpoint import save_checkpoint

__all__ = [
    "BATCH_FLUSH_S",
    "EPOCH_METRICS",
    "STOP_POLL_S",
    "BatchMetrics",
    "Checkpoint",
    "EpochMetrics",
    "ProgressFn",
    "StopOnRequest",
    "StopTraining",
    "current_lr",
    "fit_until_stopped",
    "global_step",
    "training_callbacks",
]

ProgressFn = Callable[[dict[str, Any]], None]
BATCH_FLUSH_S = 0.5  # how often buffered per-batch metrics reach the store
STOP_POLL_S = 1.0  # how often the store's stop flag is read (another process may set it)
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def current_lr(model: keras.Model) -> float:
    """The learning rate ``model``'s optimizer applies now."""
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class BatchMetrics(keras.callbacks.Callback):
    """Per-batch rows to the store, buffered: flushed every ``flush_s``, at epoch and train end."""

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        phase: str,
        epoch_offset: int,
        steps_per_epoch: int,
        batch_size: int,
        step_offset: int = 0,
        flush_s: float = BATCH_FLUSH_S,
    ) -> None:
        super().__init__()
        self.store, self.run_id, self.phase = store, run_id, phase
        self.epoch_offset, self.steps_per_epoch = epoch_offset, steps_per_epoch
        self.batch_size, self.flush_s = batch_size, flush_s
        self.global_step = step_offset  # carried across phases by the trainer
        self._epoch = 0
        self._epoch_steps = 0
        self._batch_start = time.perf_counter()
        self._pending: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()

    def flush(self) -> None:
        """Write the buffered rows: live enough for the charts, one commit per flush."""
        if self._pending:
            self.store.add_batches(self.run_id, self._pending)
            self._pending = []
        self._last_flush = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch
        self._epoch_steps = 0

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        elapsed = max(time.perf_counter() - self._batch_start, 1e-9)
        steps = max(batch + 1 - self._epoch_steps, 1)
        self._epoch_steps = batch + 1
        self.global_step += steps
        self._pending.append(
            {
                "t": time.time(),
                "global_step": self.global_step,
                "phase": self.phase,
                "epoch": self.epoch_offset + self._epoch + 1,
                "step": batch + 1,
                "steps_per_epoch": self.steps_per_epoch,
                "loss": float(logs.get("loss", float("nan"))),
                "accuracy": float(logs.get("accuracy", float("nan"))),
                "lr": current_lr(self.model),
                "images_per_s": float(steps * self.batch_size / elapsed),
            }
        )
        if time.monotonic() - self._last_flush > self.flush_s:
            self.flush()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        self.flush()


class StopTraining(Exception):
    """Leaves Keras ``fit`` at once when a stop cuts an epoch short.

    ``stop_training`` alone ends the epoch's loop, but Keras still runs that epoch's validation
    pass (tens of seconds on a real validation set) for an epoch that is then not recorded.
    ``StopOnRequest`` raises this instead when ``interrupt`` is on; ``fit_until_stopped`` catches
    it and ends the callbacks as ``fit`` would have.
    """


class StopOnRequest(keras.callbacks.Callback):
    """Stops training within a batch when the run is asked to stop.

    Two ways to ask: ``stop_event`` (this process: the job queue's stop) and the store's flag
    (another process: ``python -m core stop``), read at most once every ``poll_s``.
    ``stopped_mid_epoch`` says the last epoch was cut short: it is not a finished epoch.
    """

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        stop_event: threading.Event,
        steps_per_epoch: int,
        poll_s: float = STOP_POLL_S,
    ) -> None:
        super().__init__()
        self.store, self.run_id, self.stop_event = store, run_id, stop_event
        self.steps_per_epoch, self.poll_s = steps_per_epoch, poll_s
        self.stopped_mid_epoch = False
        self.interrupt = False  # raise StopTraining mid-epoch (set by ``fit_until_stopped``)
        self._last_poll = 0.0

    def stop_wanted(self) -> bool:
        """Whether a stop was requested (polls the store's flag at most once every ``poll_s``)."""
        now = time.monotonic()
        if not self.stop_event.is_set() and now - self._last_poll > self.poll_s:
            self._last_poll = now
            if self.store.stop_requested(self.run_id):
                self.stop_event.set()
        return self.stop_event.is_set()

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.stopped_mid_epoch = False

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        # A stop asked during the last epoch's validation (or checkpoint) must not start another
        # epoch: the first batch of a new one can take seconds (a fine-tuning step on a CPU).
        if self.stop_wanted():
            self.stopped_mid_epoch = False  # the epoch before is finished and recorded
            self.model.stop_training = True
            if self.interrupt:
                raise StopTraining

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.stop_wanted():
            self.stopped_mid_epoch = batch + 1 < self.steps_per_epoch
            self.model.stop_training = True
            if self.stopped_mid_epoch and self.interrupt:
                raise StopTraining  # skip the pending validation of an unfinished epoch


class EpochMetrics(keras.callbacks.Callback):
    """The epoch row to the store (then the progress hook), for finished epochs only.

    ``recorded`` is the row written at the last epoch's end, ``None`` when that epoch was cut
    short by a stop (``stop.stopped_mid_epoch``): a partial epoch keeps the history honest by
    not being in it.
    """

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        phase: str,
        epoch_offset: int,
        batch_size: int,
        stop: StopOnRequest | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        super().__init__()
        self.store, self.run_id, self.phase = store, run_id, phase
        self.epoch_offset, self.batch_size = epoch_offset, batch_size
        self.stop, self.progress = stop, progress
        self.recorded: dict[str, Any] | None = None
        self._epoch_start = time.perf_counter()
        self._steps = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_start = time.perf_counter()
        self._steps = 0
        self.recorded = None

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._steps = batch + 1

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        self.recorded = None
        if self.stop is not None and self.stop.stopped_mid_epoch:
            return
        elapsed = max(time.perf_counter() - self._epoch_start, 1e-9)
        record = {
            "epoch": self.epoch_offset + epoch + 1,
            "phase": self.phase,
            "phase_epoch": epoch + 1,
            "lr": current_lr(self.model),
            "images_per_s": float(self._steps * self.batch_size / elapsed),
            "duration_s": float(elapsed),
            **{k: float(logs[k]) for k in EPOCH_METRICS if k in logs},
        }
        self.store.add_epoch(self.run_id, record)
        self.recorded = record
        if self.progress:
            self.progress(record)


class Checkpoint(keras.callbacks.Callback):
    """After a recorded epoch, the full model's weights and the phase's optimizer state.

    At most one every ``every_s`` seconds (0: every epoch), and always when a stop is requested.
    Skipping some is safe: a resume truncates the metrics back to the last checkpoint.
    """

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        full_model: keras.Model,
        epochs: EpochMetrics,
        every_s: float = 0.0,
        stop_event: threading.Event | None = None,
    ) -> None:
        super().__init__()
        self.store, self.run_id, self.full_model = store, run_id, full_model
        self.epochs, self.every_s, self.stop_event = epochs, every_s, stop_event
        self.saved = 0  # checkpoints written by this callback
        self._last = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        record = self.epochs.recorded
        if record is None:
            return  # no finished epoch to back
        now = time.monotonic()
        stopping = self.stop_event is not None and self.stop_event.is_set()
        if now - self._last >= self.every_s or stopping:
            meta = {"epoch": record["epoch"], "phase": record["phase"]}
            # The full model: one file whatever phase or input the run was in.
            save_checkpoint(self.store, self.run_id, self.full_model, meta, self.model.optimizer)
            self._last = now
            self.saved += 1


def training_callbacks(
    store: RunStore,
    run_id: str,
    *,
    model: keras.Model,
    full_model: keras.Model,
    phase: str,
    epoch_offset: int,
    step_offset: int,
    steps_per_epoch: int,
    batch_size: int,
    stop_event: threading.Event,
    checkpoint_every: float,
    progress: ProgressFn | None = None,
) -> keras.callbacks.CallbackList:
    """One phase's callbacks, composed in the order they must run, bound to ``model``."""
    batches = BatchMetrics(
        store, run_id, phase, epoch_offset, steps_per_epoch, batch_size, step_offset
    )
    stop = StopOnRequest(store, run_id, stop_event, steps_per_epoch)
    epochs = EpochMetrics(store, run_id, phase, epoch_offset, batch_size, stop, progress)
    checkpoint = Checkpoint(store, run_id, full_model, epochs, checkpoint_every, stop_event)
    # ``add_history``: Keras ``fit`` handed a ``CallbackList`` returns ``model.history``.
    return keras.callbacks.CallbackList(
        [batches, stop, epochs, checkpoint], add_history=True, model=model
    )


def fit_until_stopped(fit: Callable[[], object], callbacks: keras.callbacks.CallbackList) -> None:
    """Run ``fit()`` (a Keras ``fit`` given ``callbacks``); a mid-epoch stop leaves it at once.

    The batch in flight finishes; the rest of the epoch and its validation pass are skipped,
    and the callbacks get the ``on_train_end`` that ``fit`` would have sent (flushing metrics).
    """
    stops = [c for c in callbacks.callbacks if isinstance(c, StopOnRequest)]
    for stop in stops:
        stop.interrupt = True
    try:
        fit()
    except StopTraining:
        callbacks.on_train_end()
    finally:
        for stop in stops:
            stop.interrupt = False


def global_step(callbacks: keras.callbacks.CallbackList) -> int:
    """The last global step written by ``callbacks``' ``BatchMetrics`` (0 if it has none)."""
    for callback in callbacks.callbacks:
        if isinstance(callback, BatchMetrics):
            return callback.global_step
    return 0
