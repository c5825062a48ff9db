"""Executes one run: data → model → phases → saved model, streaming metrics into the run store.

``execute_run`` is what the job queue's worker thread calls; it never raises for a run's own
failure: the run is marked ``failed`` with a readable message and the worker goes on to the
next run.

Where training reads from (pooled features, activations at the freeze cut, or images) is the
``Source`` that ``core.training.sources.choose_source`` returns; metrics, stop requests and
checkpoints are the Keras callbacks of ``core.training.callbacks``; checkpoint files are
``core.training.checkpoint``'s. The trainer times its own stages (scan, build, the source's pass,
fit, save) into the run's ``timings``.

Devices (``core.devices``): a run trains under its config's strategy and precision. With
``distribute="mirrored"`` the model and its optimizer are made in the strategy's scope,
``batch_size`` is per replica (every step takes ``batch_size × replicas`` images) and each phase's
learning rate is scaled linearly (``lr × replicas``, recorded as ``lr`` with ``base_lr`` and
``lr_rule`` in the run's ``phases``). Mixed precision sets Keras' global policy for the run only.
The run records ``device`` and ``replicas``.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import keras

from core.config import RunConfig
from core.devices import RunDevices, precision_policy, run_devices
from core.errors import DataError, StudioError, exception_chain, storage_error
from core.files import atomic_path
from core.runs.store import COMPLETED, FAILED, STOPPED, RunStore
from core.training.checkpoint import (
    load_checkpoint_weights,
    remove_checkpoint,
    remove_temp_files,
    restore_optimizer,
    resume_point,
)
from core.training.cut import remove_activations

__all__ = [
    "MODEL_FILE",
    "STAGE_EVERY_S",
    "UNFREEZE_STAGE",
    "ProgressFn",
    "RunStopped",
    "execute_run",
]

ProgressFn = Callable[[dict[str, Any]], None]
MODEL_FILE = "model.keras"
STAGE_EVERY_S = 0.5  # at most this often, a one-off pass's progress is written to the store
UNFREEZE_STAGE = "unfreeze"  # the stage record of the switch to fine-tuning (before its batch)


class RunStopped(Exception):
    """A stop request seen while the run prepares (no batch trains yet): the pass in flight
    ends at its current batch and the run ends ``stopped``, resumable."""


def _error_text(exc: BaseException, folder: Path) -> str:
    disk = storage_error(exc, folder)
    if disk is not None:
        return str(disk)
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
        # ``config`` is the run's stored config, validated when the run was submitted.
        trainer = _Trainer(store, run_id, store.config(run_id), stop_event, progress)
        status = _train(trainer)
        store.mark_finished(run_id, status)
        if status == COMPLETED:
            # Its model is saved and the run is recorded completed: it is never resumed. (Not
            # before: a kill until then leaves a resumable run, which needs its checkpoint.)
            remove_checkpoint(store, run_id)
            remove_activations(folder)  # hundreds of MB that nothing reads any more
            _evaluate(store, run_id, trainer, folder)
        return status
    except Exception as exc:  # the run fails, the worker lives on
        _record_failure(store, run_id, folder, exc)
        return FAILED


def _evaluate(store: RunStore, run_id: str, trainer: _Trainer, folder: Path) -> None:
    """Evaluate a completed run once, here, with the model and data still in memory: the Run
    page then only reads ``evaluation.json`` and opens at once. The evaluation fits the run's
    temperature; then the leakage check runs, the confusion matrix goes to TensorBoard and a
    trained base's model is converted for Predict (``core.training.predict_runtime``).
    Never fails the run: a failure is logged, and the page evaluates on demand as for an older
    run."""
    from core.runs.evaluate import evaluate_run
    from core.training.leakage import check_leakage
    from core.training.predict_runtime import convert_for_predict
    from core.training.tensorboard import write_confusion_matrix

    if not hasattr(trainer, "built") or not hasattr(trainer, "data"):
        return  # nothing was trained here (a test's stand-in): the page evaluates on demand
    try:
        model, data = trainer.built.model, trainer.data
        source = getattr(trainer, "source", None)
        with trainer._timed("evaluate"):
            probs = source.val_probabilities() if source is not None else None
            evaluation = evaluate_run(
                store, run_id, force=True, model=model, data=data, probabilities=probs
            )
        last_epoch = int(store.get_run(run_id)["epochs_done"])
        write_confusion_matrix(folder, evaluation["confusion_matrix"], last_epoch)
        with trainer._timed("leakage"):
            check_leakage(store, run_id, model=model, data=data, force=True)
        with trainer._timed("predict_runtime"):
            convert_for_predict(store, run_id, model)  # Predict without TensorFlow
        trainer.record_timings()
    except Exception as exc:  # the run is completed and stays so
        print(
            f"warning: run {run_id} completed, but evaluating it failed "
            f"({_error_text(exc, folder)}); the Run page evaluates it when "
            "it is opened.",
            file=sys.stderr,
        )


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
    except Exception as again:
        print(
            f"error: run {run_id} failed ({message}) and the run store could not record it: "
            f"{_error_text(again, store.root)}",
            file=sys.stderr,
        )


class _Trainer:
    """Holds one run's data, model and input source while its phases train."""

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
        self.timings: dict[str, float] = {}  # seconds per stage, recorded in the run
        self.devices = RunDevices(None, 1, "CPU", False)  # set by ``_train`` (``run_devices``)
        self._stop_polled = 0.0

    def stop_wanted(self) -> bool:
        """Whether a stop was requested: this process's event, or the store's flag (another
        process: the dashboard, ``python -m core stop``), read at most every ``STOP_POLL_S``."""
        from core.training.callbacks import STOP_POLL_S

        now = time.monotonic()
        if not self.stop_event.is_set() and now - self._stop_polled >= STOP_POLL_S:
            self._stop_polled = now
            if self.store.stop_requested(self.run_id):
                self.stop_event.set()
        return self.stop_event.is_set()

    def _scope(self) -> AbstractContextManager[Any]:
        """The strategy's scope (where a mirrored run's variables must be made), else nothing."""
        strategy = self.devices.strategy
        return nullcontext() if strategy is None else strategy.scope()

    @contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - started

    def record_timings(self) -> None:
        """The stage timings so far into the run record (``timings`` of its result)."""
        self.store.update(self.run_id, timings={k: round(v, 4) for k, v in self.timings.items()})

    def prepare(self) -> None:
        """Data, model and the input source (pipelines, or one pass of the frozen base)."""
        from core.data import load_dataset
        from core.runs.split import record_split
        from core.training.input_path import IMAGES, input_path
        from core.training.model import build_model, resolve_backbone
        from core.training.sources import choose_source

        config, store, run_id = self.config, self.store, self.run_id
        # The preparation's steps, numbered for the pages ("step 2/3"): checking the images,
        # building the model, and the one-off pass of the frozen base when the run has one.
        steps = 2 if input_path(config).kind == IMAGES else 3
        scanning = self._stage_reporter(stage="scan", step=1, steps=steps)
        with self._timed("scan"):
            data = load_dataset(
                config.data, val_split=config.val_split, seed=config.seed, progress=scanning
            )
        store.update(
            run_id,
            class_names=data.class_names,
            train_images=len(data.train_paths),
            val_images=len(data.val_paths),
            skipped_files=data.skipped_files,
            dataset=data.summary(),
        )
        # What the run trains on, for review, evaluation and export to read back.
        with self._timed("split"):
            split = record_split(store.run_dir(run_id), data)
        if not data.val_paths:
            raise DataError(
                f"No validation images: every class in {data.root} has a single usable image. "
                "Add at least 2 images per class (or a val/ folder) so accuracy can be measured."
            )
        self.data = data
        if self.stop_wanted():
            raise RunStopped
        building = {
            "stage": "build", "converting": _converts_weights(config), "step": 2, "steps": steps,
            "started": time.time(), "t": time.time(),
        }  # fmt: skip
        store.update(run_id, stage=building)
        with self._timed("build"), self._scope():
            # The backbone's spec and weights identity, looked up once for the whole run.
            backbone = resolve_backbone(config)
            self.built = build_model(config, len(data.class_names), backbone)
        self.batch = self.devices.global_batch(config.batch_size)
        self.steps = -(-len(data.train_paths) // self.batch)
        n_images = len(data.train_paths) + len(data.val_paths)
        with self._scope():  # the head and cut models it builds share the model's variables
            self.source = choose_source(config, self.built, n_images, folder=store.run_dir(run_id))
        self.source.digests = split.digests()  # the split's, computed a moment ago
        if self.stop_wanted():
            raise RunStopped
        self.source.prepare(
            data, lambda **extra: self._stage_reporter(step=min(3, steps), steps=steps, **extra)
        )
        self.timings.update(self.source.timings)

    def _stage_reporter(self, **extra: Any) -> Callable[..., None]:
        """``stage(done, total, **more)`` writes the pages' progress record of a one-off pass."""
        from core.training.embeddings import describe_stage

        started, last = time.time(), [0.0]

        def stage(done: int, total: int, **more: Any) -> None:
            # Every batch of a one-off pass reports here: a stop ends the pass at that batch.
            if self.stop_wanted():
                raise RunStopped
            now = time.time()
            if done < total and not more and now - last[0] < STAGE_EVERY_S:
                return  # a write per batch would cost more than the pages can show
            last[0] = now
            # Images a resumed pass found stored count as done, not in its rate and ETA.
            skipped = int(more.get("reused") or 0)
            record = {
                **describe_stage(done, total, started, skipped), "started": started, **extra,
                **more,
            }  # fmt: skip
            self.store.update(self.run_id, stage=record)

        return stage

    def train(self) -> str:
        """Run (or continue) every phase; returns completed or stopped."""
        from core.training.callbacks import global_step, training_callbacks
        from core.training.model import compile_model, phase_epochs, phase_lr, set_phase
        from core.training.tensorboard import tensorboard_callback

        config, store, run_id, source = self.config, self.store, self.run_id, self.source
        done, meta = resume_point(store, run_id)
        if done > 0:
            # The full model's weights of the last checkpointed epoch, whatever phase and input
            # path wrote them; a run whose every epoch is done then just saves its model.
            with self._scope():
                load_checkpoint_weights(store, run_id, self.built.model)
        phases: list[dict[str, Any]] = []
        epoch_offset, step_offset = 0, store.last_step(run_id)
        for phase in config.phases:
            epochs = phase_epochs(config, phase)
            if epochs == 0:
                continue
            info = set_phase(config, self.built, phase)
            lr = self.devices.scaled_lr(phase_lr(config, phase))
            info.update(epochs=epochs, lr=lr, start_epoch=epoch_offset + 1)
            info.update(self._device_info(phase))
            model = source.model_for(phase)
            info.update(source.phase_info(phase), input=source.name, input_reason=source.reason)
            phases.append(info)
            store.update(run_id, phases=phases)
            if done >= epoch_offset + epochs:  # finished before an interruption
                epoch_offset += epochs
                continue
            if self.stop_wanted():
                return STOPPED  # asked between phases: the next one does not start
            if epoch_offset > 0:
                # Unfreezing and compiling (and the first batch's trace) take a while: the
                # pages say so instead of the last batch of the phase before.
                now = time.time()
                store.update(run_id, stage={"stage": UNFREEZE_STAGE, "started": now, "t": now})
            with self._scope():  # a mirrored run's optimizer variables are mirrored too
                compile_model(model, lr)
                if done > epoch_offset and meta.get("phase") == phase:
                    # Resuming inside this phase: its optimizer continues where it was (Adam's
                    # moments and step count), not from zero.
                    info["optimizer_restored"] = restore_optimizer(store, run_id, model, meta)
                    store.update(run_id, phases=phases)  # the run's record says so too
            callbacks = training_callbacks(
                store, run_id, model=model, full_model=self.built.model, phase=phase,
                epoch_offset=epoch_offset, step_offset=step_offset, steps_per_epoch=self.steps,
                batch_size=self.batch, stop_event=self.stop_event,
                checkpoint_every=source.checkpoint_every, progress=self.progress,
            )  # fmt: skip
            folder = store.run_dir(run_id)
            callbacks.callbacks.append(tensorboard_callback(folder, phase, epoch_offset, callbacks))
            source.fit(model, callbacks, epochs, initial_epoch=max(done - epoch_offset, 0))
            epoch_offset += epochs
            step_offset = global_step(callbacks)
            if self.stop_event.is_set():
                return STOPPED
        return COMPLETED

    def _device_info(self, phase: str) -> dict[str, Any]:
        """What the run's ``phases`` record says of its devices and batch/learning-rate rule."""
        from core.training.model import phase_lr

        devices = self.devices
        info: dict[str, Any] = {
            "device": devices.label,
            "replicas": devices.replicas,
            "mixed_precision": devices.mixed_precision,
        }
        if devices.strategy is not None:
            info.update(
                global_batch=devices.global_batch(self.config.batch_size),
                base_lr=phase_lr(self.config, phase),
                lr_rule="linear: lr × replicas (global batch = batch size × replicas)",
            )
        return info

    def save(self) -> None:
        """The full model (images in, probabilities out) as ``model.keras``."""
        path = self.store.run_dir(self.run_id) / MODEL_FILE
        with atomic_path(path) as tmp:
            self.built.model.save(tmp)
        self.store.update(self.run_id, model_path=str(path), model_bytes=path.stat().st_size)


def _converts_weights(config: RunConfig) -> bool:
    """Whether building the model first converts bundled weights (once per studio home)."""
    from core.models.backbones import SOURCE_BUNDLED, get_backbone

    spec = get_backbone(config.backbone)
    if config.mode == "scratch" or config.weights != "imagenet":
        return False
    if spec.imagenet_source != SOURCE_BUNDLED:
        return False
    from core.models.efficientnet_lite import cached_weights_path

    return not cached_weights_path(spec.name).is_file()


def _train(trainer: _Trainer) -> str:
    """Prepare, train and save; returns the status. The trainer keeps the model and the data,
    which the run's evaluation then reuses."""
    from core.training.embeddings import wait_for_stores

    store, run_id = trainer.store, trainer.run_id
    # Devices first: a bad TRANSFER_STUDIO_LOGICAL_CPUS fails the run before any work.
    trainer.devices = devices = run_devices(trainer.config)
    keras.utils.set_random_seed(trainer.config.seed)
    store.update(run_id, device=devices.label, replicas=devices.replicas)
    # The policy holds for this run only: the process (a worker, the dashboard) trains others.
    with precision_policy(devices.mixed_precision):
        try:
            trainer.prepare()
        except RunStopped:  # before any batch: nothing to save, the run resumes from scratch
            trainer.record_timings()
            return STOPPED
        trainer.record_timings()
        with trainer._timed("fit"):
            status = trainer.train()
        trainer.record_timings()
        with trainer._timed("save"):
            if store.get_run(run_id)["epochs_done"] > 0:
                trainer.save()
            # The pass's features went to the cache while the head trained: the run ends
            # once they are written, so the next run on these files finds them.
            wait_for_stores()
        trainer.record_timings()
    return status
