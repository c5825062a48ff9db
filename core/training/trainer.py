"""Executes one run: data → model → phases → saved model, streaming metrics into the run store.

``execute_run`` is what the job queue's worker thread calls; it never raises for a run's own
failure: the run is marked ``failed`` with a readable message and the worker goes on to the
next run.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from core.config import RunConfig
from core.errors import DataError, StudioError, exception_chain, storage_error
from core.runs.store import COMPLETED, FAILED, STOPPED, RunStore

ProgressFn = Callable[[dict[str, Any]], None]
MODEL_FILE = "model.keras"
CHECKPOINT_FILE = "checkpoint.weights.h5"
BATCH_FLUSH_S = 0.5  # how often buffered per-batch metrics reach the store
CHECKPOINT_META = "checkpoint.json"
CHECKPOINT_OPTIMIZER = "checkpoint.optimizer.npz"  # the phase's optimizer state (Adam moments)
TEMP_PATTERNS = ("tmp-*", "*.tmp", ".*.tmp")  # what an interrupted write leaves in a run folder
CACHED_CHECKPOINT_S = 5.0  # minimum seconds between checkpoints of a head on cached features


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
        checkpoint: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__()
        self.store, self.run_id, self.phase = store, run_id, phase
        self.epoch_offset, self.step_offset = epoch_offset, step_offset
        self.steps_per_epoch, self.batch_size = steps_per_epoch, batch_size
        self.stop_event, self.progress, self.checkpoint = stop_event, progress, checkpoint
        self.global_step = step_offset
        self.stopped_mid_epoch = False
        self._batch_start = self._epoch_start = time.perf_counter()
        self._epoch_images = 0
        self._epoch_steps = 0
        self._epoch = 0
        self._last_store_check = 0.0
        self._pending: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()

    def _flush(self) -> None:
        """Write buffered batch records: live enough for the charts, one commit per flush."""
        if self._pending:
            self.store.add_batches(self.run_id, self._pending)
            self._pending = []
        self._last_flush = time.monotonic()

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
        self._epoch_steps = 0

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:  # noqa: D102
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:  # noqa: D102
        logs = logs or {}
        elapsed = max(time.perf_counter() - self._batch_start, 1e-9)
        # One call may cover several steps (Keras' steps_per_execution, or fit_head's one call
        # per epoch): ``batch`` is the last step's index, as Keras reports it.
        steps = max(batch + 1 - self._epoch_steps, 1)
        self._epoch_steps = batch + 1
        self.global_step += steps
        self._epoch_images += steps * self.batch_size
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
                "lr": self._lr(),
                "images_per_s": float(steps * self.batch_size / elapsed),
            }
        )
        if time.monotonic() - self._last_flush > BATCH_FLUSH_S:
            self._flush()
        if self._stop_wanted():
            self.stopped_mid_epoch = batch + 1 < self.steps_per_epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:  # noqa: D102
        self._flush()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:  # noqa: D102
        logs = logs or {}
        self._flush()
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
        if self.checkpoint:  # after the store write: a checkpoint never runs ahead of metrics
            self.checkpoint({"epoch": record["epoch"], "phase": self.phase})
        if self.progress:
            self.progress(record)


def _error_text(exc: BaseException, folder: Path) -> str:
    disk = storage_error(exc, folder)
    if disk is not None:
        return str(disk)
    if isinstance(exc, StudioError):
        return str(exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _truncate_open_copies(path: Path) -> None:
    """Empty ``path`` through any descriptor this process still holds on it.

    HDF5 keeps a file open when closing it fails (as it does on a full disk), so unlinking
    alone would not return the space until the process ends.
    """
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        return
    target = str(path)
    for fd in fds.iterdir():
        try:
            if os.readlink(fd).removesuffix(" (deleted)") == target:
                os.ftruncate(int(fd.name), 0)
        except (OSError, ValueError):
            continue


def remove_temp_files(folder: Path) -> None:
    """Delete what an interrupted or failed write left behind (never a finished file)."""
    for pattern in TEMP_PATTERNS:
        for path in folder.glob(pattern):
            try:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    _truncate_open_copies(path)
                    path.unlink()
            except OSError:
                pass


def _ensure_room(folder: Path, needed: int) -> None:
    """Fail before a write that cannot fit, rather than leave half a file on a full disk."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(
            28, f"No space left on device: {needed / 1e6:.1f} MB needed, {free / 1e6:.1f} MB free"
        )


def _bytes_of(variables: Sequence[Any]) -> int:
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)


def execute_run(
    store: RunStore,
    run_id: str,
    stop_event: threading.Event | None = None,
    progress: ProgressFn | None = None,
) -> str:
    """Train run ``run_id`` to the end; returns its final status (completed/stopped/failed).

    Never raises: whatever goes wrong (a full disk included) ends the run ``failed`` with a
    one-line message, and the caller's worker goes on. If even that cannot be written to the
    store, the failure is returned, and the store's row is left for ``recover_interrupted``.
    """
    stop_event = stop_event or threading.Event()
    folder = store.root / "runs" / run_id
    try:
        remove_temp_files(folder)  # a kill during an earlier attempt's write
        store.mark_running(run_id)
        status = _train(store, run_id, store.config(run_id), stop_event, progress)
        store.mark_finished(run_id, status)
        return status
    except Exception as exc:  # the run fails, the worker lives on
        _record_failure(store, run_id, folder, exc)
        return FAILED


def _record_failure(store: RunStore, run_id: str, folder: Path, exc: Exception) -> None:
    """Mark the run failed, best effort at every step: the disk may be what failed."""
    message = _error_text(exc, folder)
    log = traceback.format_exc()
    # A failed write can leave its file open (h5py closes it when the object dies): drop the
    # failed frames' locals so the file closes and its space is returned before the cleanup.
    for err in exception_chain(exc):
        traceback.clear_frames(err.__traceback__)
    gc.collect()
    remove_temp_files(folder)  # on a full disk this is the room the writes below need
    try:
        (folder / "error.log").write_text(log)
    except OSError:
        pass
    try:
        store.mark_finished(run_id, FAILED, error=message)
    except Exception as again:  # noqa: BLE001 - nothing may escape the worker
        print(
            f"error: run {run_id} failed ({message}) and the run store could not record it: "
            f"{_error_text(again, store.root)}",
            file=sys.stderr,
        )


def _checkpoint_paths(store: RunStore, run_id: str) -> tuple[Path, Path]:
    folder = store.run_dir(run_id)
    return folder / CHECKPOINT_FILE, folder / CHECKPOINT_META


def _save_checkpoint(
    store: RunStore,
    run_id: str,
    model: keras.Model,
    meta: dict,
    optimizer: keras.optimizers.Optimizer | None = None,
) -> None:
    """Weights (and the optimizer's state) after a finished epoch, each file written atomically.

    ``checkpoint.json`` is written last: it is what makes the others count.
    """
    weights, info = _checkpoint_paths(store, run_id)
    state_vars = optimizer.variables if optimizer is not None and optimizer.built else []
    # The new files sit beside the old ones until they replace them; 1 MB for HDF5's own.
    _ensure_room(weights.parent, _bytes_of(model.weights) + _bytes_of(state_vars) + 2**20)
    tmp = weights.with_name("tmp-" + weights.name)
    model.save_weights(tmp)
    os.replace(tmp, weights)
    meta = dict(meta)
    if optimizer is not None and optimizer.built:
        state = weights.with_name(CHECKPOINT_OPTIMIZER)
        tmp_state = state.with_name("tmp-" + state.name)
        with open(tmp_state, "wb") as fh:
            np.savez(fh, *[keras.ops.convert_to_numpy(v) for v in optimizer.variables])
        os.replace(tmp_state, state)
        meta["optimizer_variables"] = len(optimizer.variables)
    tmp_info = info.with_suffix(".tmp")
    tmp_info.write_text(json.dumps(meta))
    os.replace(tmp_info, info)


def _restore_optimizer(
    store: RunStore, run_id: str, model: keras.Model, meta: dict[str, Any]
) -> bool:
    """Put the checkpointed optimizer state back into ``model``'s fresh optimizer.

    Returns False (the optimizer restarts) when the checkpoint holds no state of the same shape.
    """
    state_path = store.run_dir(run_id) / CHECKPOINT_OPTIMIZER
    if not meta.get("optimizer_variables") or not state_path.is_file():
        return False
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    with np.load(state_path) as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    variables = list(optimizer.variables)
    if len(values) != len(variables) or any(
        tuple(v.shape) != tuple(a.shape) for v, a in zip(variables, values, strict=True)
    ):
        return False
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)
    return True


def _resume_point(store: RunStore, run_id: str) -> tuple[int, dict[str, Any]]:
    """Epochs already done by an earlier attempt that a checkpoint backs (0 for a fresh run),
    with the checkpoint's metadata."""
    weights, info = _checkpoint_paths(store, run_id)
    if not (weights.is_file() and info.is_file()):
        store.truncate_after(run_id, 0)
        return 0, {}
    meta = json.loads(info.read_text())
    done = int(meta["epoch"])
    store.truncate_after(run_id, done)  # metrics past the checkpoint are redone, not repeated
    return done, meta


class _Trainer:
    """Holds one run's data, model and pipelines while its phases train."""

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        config: RunConfig,
        stop_event: threading.Event,
        progress: ProgressFn | None,
    ) -> None:
        self.store, self.run_id, self.config = store, run_id, config
        self.stop_event, self.progress = stop_event, progress
        self.head: keras.Model | None = None  # set when a phase trains on pooled features
        self.cut: Any = None  # a core.training.cut.Cut when fine-tuning on cached activations

    def prepare(self) -> None:
        """Data, model and input pipelines (or cached features)."""
        from core.data import load_dataset
        from core.training.embeddings import cache_reason
        from core.training.model import build_model

        config, store, run_id = self.config, self.store, self.run_id
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
        self.data = data
        self.built = build_model(config, len(data.class_names))
        self.steps = -(-len(data.train_paths) // config.batch_size)
        # Where training reads from: pooled features (feature extraction), activations at the
        # freeze cut (fine-tuning), or the images themselves.
        if cache_reason(config) is None:
            self.source = "features"
            self._prepare_cached()
            return
        from core.training.cut import plan_cut

        self.cut, _ = plan_cut(config, self.built, len(data.train_paths) + len(data.val_paths))
        if self.cut is not None:
            self.source = "activations"
            self._prepare_cut()
        else:
            self.source = "images"
            self._prepare_images()

    def _prepare_images(self) -> None:
        from core.data.pipeline import make_dataset

        config, data, size = self.config, self.data, self.built.image_size
        self.train_ds = make_dataset(
            data.train_paths, data.train_labels, size, config.batch_size, training=True,
            augmentations=config.active_augmentations(), seed=config.seed,
        )  # fmt: skip
        self.val_ds = make_dataset(
            data.val_paths, data.val_labels, size, config.batch_size, training=False
        )

    def _prepare_cached(self) -> None:
        from core.training.embeddings import build_head, features_for

        config, data = self.config, self.data
        paths = list(data.train_paths) + list(data.val_paths)
        stage = self._stage_reporter()
        features, was_cached = features_for(config, self.built, paths, stage)
        stage(len(paths), len(paths), cached=was_cached)
        n = len(data.train_paths)
        # The head model shares its layers with the full model: training it trains the model.
        self.head = build_head(config, self.built)
        self.train_features = (features[:n], data.train_labels)
        self.val_features = (features[n:], data.val_labels)

    def _prepare_cut(self) -> None:
        from core.data.pipeline import array_dataset
        from core.training.cut import compute_activations, pooled_features
        from core.training.embeddings import build_head

        config, data, cut = self.config, self.data, self.cut
        paths = list(data.train_paths) + list(data.val_paths)
        stage = self._stage_reporter(activations=list(cut.shape))
        acts = compute_activations(cut, paths, self.built.image_size, stage)
        stage(len(paths), len(paths), cached=False)
        n = len(data.train_paths)
        pooled = pooled_features(cut, acts)
        self.head = build_head(config, self.built)
        self.train_features = (pooled[:n], data.train_labels)
        self.val_features = (pooled[n:], data.val_labels)
        self.train_ds = array_dataset(
            acts[:n], data.train_labels, config.batch_size, training=True, seed=config.seed
        )
        self.val_ds = array_dataset(
            acts[n:], data.val_labels, config.batch_size, training=False, seed=config.seed
        )

    def _stage_reporter(self, **extra: Any) -> Callable[..., None]:
        """``stage(done, total, **more)`` writes the pages' progress record of a one-off pass."""
        from core.training.embeddings import describe_stage

        started = time.time()

        def stage(done: int, total: int, **more: Any) -> None:
            record = {**describe_stage(done, total, started), **extra, **more}
            self.store.update(self.run_id, stage=record)

        return stage

    def _phase_model(self, phase: str) -> keras.Model:
        """The model one phase trains (all share their layers with the full model)."""
        from core.training.model import HEAD_PHASE

        if self.source == "features" or (self.source == "activations" and phase == HEAD_PHASE):
            return self.head  # on pooled features
        if self.source == "activations":
            return self.cut.classifier  # the unfrozen layers and the head, on activations
        return self.built.model

    def _checkpointer(self, phase_model: keras.Model) -> Callable[[dict[str, Any]], None]:
        """Per-epoch checkpoint writer; on cached features, at most one every few seconds.

        A head epoch on cached features takes a fraction of a second, less than writing its
        checkpoint. Skipping some is safe: resume truncates metrics back to the checkpoint.
        """
        store, run_id = self.store, self.run_id
        every = CACHED_CHECKPOINT_S if self.source != "images" else 0.0
        last = [time.monotonic()]

        def write(meta: dict[str, Any]) -> None:
            now = time.monotonic()
            if now - last[0] >= every or self.stop_event.is_set():
                # The full model: one file whatever phase or input the run was in.
                _save_checkpoint(store, run_id, self.built.model, meta, phase_model.optimizer)
                last[0] = now

        return write

    def _fit(
        self, model: keras.Model, callback: StoreMetricsCallback, epochs: int, initial_epoch: int
    ) -> None:
        if model is self.head:
            from core.training.head_fit import fit_head

            fit_head(
                model, self.train_features, self.val_features, batch_size=self.config.batch_size,
                epochs=epochs, initial_epoch=initial_epoch, seed=self.config.seed,
                callbacks=[callback],
            )  # fmt: skip
            return
        from core.data.pipeline import image_errors

        with image_errors():  # a file that vanished since the scan is named, not "Graph error"
            model.fit(
                self.train_ds, validation_data=self.val_ds, epochs=epochs,
                initial_epoch=initial_epoch, callbacks=[callback], verbose=0, shuffle=False,
            )  # fmt: skip

    def train(self) -> str:
        """Run (or continue) every phase; returns completed or stopped."""
        from core.training.model import compile_model, phase_epochs, phase_lr, set_phase

        config, store, run_id = self.config, self.store, self.run_id
        done, meta = _resume_point(store, run_id)
        if done > 0:
            # The full model's weights of the last checkpointed epoch, whatever phase and input
            # path wrote them; a run whose every epoch is done then just saves its model.
            self.built.model.load_weights(_checkpoint_paths(store, run_id)[0])
        phases: list[dict[str, Any]] = []
        epoch_offset, step_offset = 0, store.last_step(run_id)
        for phase in config.phases:
            epochs = phase_epochs(config, phase)
            if epochs == 0:
                continue
            info = set_phase(config, self.built, phase)
            lr = phase_lr(config, phase)
            info.update(epochs=epochs, lr=lr, start_epoch=epoch_offset + 1)
            model = self._phase_model(phase)
            info["feature_cache"] = model is self.head
            info["activation_cache"] = self.source == "activations" and model is not self.head
            phases.append(info)
            store.update(run_id, phases=phases)
            if done >= epoch_offset + epochs:  # finished before an interruption
                epoch_offset += epochs
                continue
            compile_model(model, lr)
            if done > epoch_offset and meta.get("phase") == phase:
                # Resuming inside this phase: its optimizer continues where it was (Adam's
                # moments and step count), not from zero.
                info["optimizer_restored"] = _restore_optimizer(store, run_id, model, meta)
            callback = StoreMetricsCallback(
                store, run_id, phase, epoch_offset, self.steps, config.batch_size,
                self.stop_event, step_offset=step_offset, progress=self.progress,
                checkpoint=self._checkpointer(model),
            )  # fmt: skip
            self._fit(model, callback, epochs, initial_epoch=max(done - epoch_offset, 0))
            epoch_offset += epochs
            step_offset = callback.global_step
            if self.stop_event.is_set():
                return STOPPED
        return COMPLETED

    def save(self) -> None:
        """The full model (images in, probabilities out) as ``model.keras``."""
        path = self.store.run_dir(self.run_id) / MODEL_FILE
        tmp = path.with_name("tmp-" + path.name)
        self.built.model.save(tmp)
        os.replace(tmp, path)
        self.store.update(self.run_id, model_path=str(path), model_bytes=path.stat().st_size)


def _train(
    store: RunStore,
    run_id: str,
    config: RunConfig,
    stop_event: threading.Event,
    progress: ProgressFn | None,
) -> str:
    config.validate()
    keras.utils.set_random_seed(config.seed)
    trainer = _Trainer(store, run_id, config, stop_event, progress)
    trainer.prepare()
    status = trainer.train()
    if store.get_run(run_id)["epochs_done"] > 0:
        trainer.save()
    return status
