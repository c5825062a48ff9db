"""The trainer's Keras callbacks on a tiny model: store rows, stop within a batch, checkpoints."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import keras
import numpy as np
import pytest

from core.runs.store import RunStore
from core.training.callbacks import (
    BatchMetrics,
    Checkpoint,
    EpochMetrics,
    StopOnRequest,
    global_step,
    training_callbacks,
)
from core.training.head_fit import fit_head
from core.training.model import compile_model
from tests.helpers import TINY

ROWS, BATCH = 32, 8
STEPS = ROWS // BATCH


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    compile_model(model, 1e-2)
    return model


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(ROWS, 4)).astype(np.float32), np.arange(ROWS) % 3


def _run(tmp_path: Path) -> tuple[RunStore, str]:
    store = RunStore(tmp_path)
    run_id = store.create_run(TINY.with_changes(epochs=2))
    store.mark_running(run_id)
    return store, run_id


def _callbacks(
    store: RunStore,
    run_id: str,
    model: keras.Model,
    every: float = 0.0,
    stop: threading.Event | None = None,
    progress: list | None = None,
) -> keras.callbacks.CallbackList:
    return training_callbacks(
        store, run_id, model=model, full_model=model, phase="head", epoch_offset=0,
        step_offset=0, steps_per_epoch=STEPS, batch_size=BATCH,
        stop_event=stop or threading.Event(), checkpoint_every=every,
        progress=None if progress is None else progress.append,
    )  # fmt: skip


def test_two_epochs_write_their_epoch_and_batch_rows_and_checkpoint_each_epoch(tmp_path) -> None:
    store, run_id = _run(tmp_path)
    model = _model()
    seen: list[dict] = []
    callbacks = _callbacks(store, run_id, model, progress=seen)
    assert [type(c) for c in callbacks.callbacks[:4]] == [
        BatchMetrics, StopOnRequest, EpochMetrics, Checkpoint,
    ]  # fmt: skip
    model.fit(*_data(), batch_size=BATCH, epochs=2, callbacks=callbacks, verbose=0, shuffle=False)

    epochs = store.epochs(run_id)
    assert [e["epoch"] for e in epochs] == [1, 2] and {e["phase"] for e in epochs} == {"head"}
    assert all(e["loss"] is not None and e["images_per_s"] > 0 for e in epochs)
    assert [r["epoch"] for r in seen] == [1, 2], "the progress hook gets each epoch row"
    batches = store.batches(run_id)
    assert [b["global_step"] for b in batches] == list(range(1, 2 * STEPS + 1))
    assert {b["steps_per_epoch"] for b in batches} == {STEPS}
    assert global_step(callbacks) == 2 * STEPS
    meta = json.loads((store.run_dir(run_id) / "checkpoint.json").read_text())
    assert meta["epoch"] == 2 and meta["phase"] == "head" and meta["optimizer_variables"] > 0


def test_a_stop_request_stops_within_a_batch_and_records_no_partial_epoch(tmp_path) -> None:
    store, run_id = _run(tmp_path)
    model = _model()
    store.request_stop(run_id)  # as `python -m core stop` does from another process
    stop = threading.Event()
    model.fit(*_data(), batch_size=BATCH, epochs=2, verbose=0, shuffle=False,
              callbacks=_callbacks(store, run_id, model, stop=stop))  # fmt: skip
    assert stop.is_set(), "the store's flag reaches the in-process event"
    assert len(store.batches(run_id)) == 1, "stopped after the first batch"
    assert store.epochs(run_id) == [], "a partial epoch is not recorded"
    assert not (store.run_dir(run_id) / "checkpoint.json").exists()


def test_the_checkpoint_honours_its_interval_but_always_saves_on_stop(tmp_path) -> None:
    store, run_id = _run(tmp_path)
    model = _model()
    callbacks = _callbacks(store, run_id, model, every=3600.0)
    model.fit(*_data(), batch_size=BATCH, epochs=2, callbacks=callbacks, verbose=0, shuffle=False)
    checkpoint = next(c for c in callbacks.callbacks if isinstance(c, Checkpoint))
    assert checkpoint.saved == 0 and len(store.epochs(run_id)) == 2
    assert not (store.run_dir(run_id) / "checkpoint.json").exists()

    class StopAtEpochEnd(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if batch + 1 == STEPS:
                stop.set()  # on the last batch: the epoch still finishes

    stop = threading.Event()
    run_id = store.create_run(TINY.with_changes(epochs=2))
    callbacks = _callbacks(store, run_id, model, every=3600.0, stop=stop)
    callbacks.callbacks.insert(0, StopAtEpochEnd())
    model.fit(*_data(), batch_size=BATCH, epochs=2, callbacks=callbacks, verbose=0, shuffle=False)
    meta = json.loads((store.run_dir(run_id) / "checkpoint.json").read_text())
    assert meta["epoch"] == 1, "a stop forces the checkpoint of the epoch it ends"


def test_fit_head_dispatches_the_composed_callbacks_once_per_epoch(tmp_path) -> None:
    store, run_id = _run(tmp_path)
    head = _model()
    x, y = _data()
    history = fit_head(head, (x, y), (x, y), batch_size=BATCH, epochs=2,
                       callbacks=_callbacks(store, run_id, head))  # fmt: skip
    assert len(history["loss"]) == 2
    assert [e["epoch"] for e in store.epochs(run_id)] == [1, 2]
    batches = store.batches(run_id)
    assert [(b["step"], b["global_step"]) for b in batches] == [(STEPS, STEPS), (STEPS, 2 * STEPS)]
    # The compiled loss: what Keras' evaluate reports for the same head and data.
    assert history["val_loss"][-1] == pytest.approx(head.evaluate(x, y, verbose=0)[0], rel=1e-4)


def test_a_mid_epoch_stop_skips_the_pending_validation_pass(tmp_path) -> None:
    from core.training.callbacks import fit_until_stopped

    class ValidationSpy(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.validations = self.ended = 0

        def on_test_begin(self, logs: dict | None = None) -> None:
            self.validations += 1

        def on_train_end(self, logs: dict | None = None) -> None:
            self.ended += 1

    store, run_id = _run(tmp_path)
    model = _model()
    x, y = _data()
    stop = threading.Event()
    spy = ValidationSpy()
    callbacks = _callbacks(store, run_id, model, stop=stop)
    # Asked to stop while the first batch runs: it is the last one.
    asks = keras.callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs: stop.set())
    callbacks = keras.callbacks.CallbackList([asks, *callbacks.callbacks, spy], model=model)
    fit_until_stopped(
        lambda: model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, shuffle=False,
                          validation_data=(x, y), callbacks=callbacks),
        callbacks,
    )  # fmt: skip
    assert len(store.batches(run_id)) == 1, "the batch in flight is recorded, then it stops"
    assert spy.validations == 0, "no validation pass for an epoch that is not recorded"
    assert spy.ended == 1, "callbacks still get on_train_end (metrics flushed)"
    assert store.epochs(run_id) == []


class _StopAfterFirstEpoch(keras.callbacks.Callback):
    """Asks for a stop as the first epoch ends (during its validation and checkpoint)."""

    def __init__(self, stop: threading.Event) -> None:
        super().__init__()
        self.stop = stop

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.stop.set()


@pytest.mark.parametrize("how", ["fit", "fit_head"])
def test_a_stop_asked_between_epochs_starts_no_new_epoch(tmp_path, how) -> None:
    """A stop that arrives while an epoch ends (its validation, its checkpoint) ends the run
    there: no batch of the next epoch runs (on a CPU, one fine-tuning batch takes seconds)."""
    from core.training.callbacks import fit_until_stopped

    store, run_id = _run(tmp_path)
    model = _model()
    x, y = _data()
    stop = threading.Event()
    callbacks = _callbacks(store, run_id, model, stop=stop)
    callbacks = keras.callbacks.CallbackList(
        [*callbacks.callbacks, _StopAfterFirstEpoch(stop)], model=model
    )
    if how == "fit":
        fit_until_stopped(
            lambda: model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, shuffle=False,
                              validation_data=(x, y), callbacks=callbacks),
            callbacks,
        )  # fmt: skip
        assert len(store.batches(run_id)) == STEPS  # the first epoch's batches only
    else:
        fit_head(model, (x, y), (x, y), batch_size=BATCH, epochs=3, callbacks=callbacks)
        assert len(store.batches(run_id)) == 1  # fit_head: one row per epoch
    assert [e["epoch"] for e in store.epochs(run_id)] == [1]
