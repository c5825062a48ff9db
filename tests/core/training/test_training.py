"""The training job: metrics stream into the store while it trains, stop, failure, queue order."""

from __future__ import annotations

import time

import pytest

from core.config import RunConfig
from core.runs.store import COMPLETED, FAILED, RUNNING, STOPPED
from core.training.jobs import JobQueue

TINY = RunConfig(
    backbone="mobilenet_v2",
    weights="none",
    data="builtin:textures",
    image_size=32,
    batch_size=8,
    epochs=1,
)


@pytest.fixture(scope="module")
def queue(tmp_path_factory: pytest.TempPathFactory) -> JobQueue:
    return JobQueue(tmp_path_factory.mktemp("runs"))


def _wait_for(predicate, timeout: float = 120.0, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError("condition not met in time")


@pytest.mark.slow
def test_metrics_stream_during_training_and_stop_within_one_batch(queue: JobQueue) -> None:
    run_id = queue.submit(TINY.with_changes(epochs=200, name="long"))
    # An epoch is in the store while the run is still going: metrics are not written at the end.
    _wait_for(lambda: queue.store.epochs(run_id))
    assert queue.store.status(run_id) == RUNNING
    batches = queue.store.batches(run_id)
    assert batches and batches[0]["phase"] == "head" and batches[0]["steps_per_epoch"] == 12
    assert all(b["loss"] is not None and b["images_per_s"] > 0 for b in batches)
    epoch = queue.store.epochs(run_id)[0]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr"} <= {
        k for k, v in epoch.items() if v is not None
    }

    stop_time = time.time()
    queue.stop(run_id)
    assert queue.wait(run_id, timeout=120) == STOPPED
    after = [b for b in queue.store.batches(run_id) if b["t"] > stop_time]
    assert len(after) <= 2, "stop honoured within one batch (plus the one in flight)"
    result = queue.store.result(run_id)
    assert 1 <= result["epochs_done"] < 200
    # Only whole epochs are in the history: a stop mid-epoch records no partial epoch.
    assert len(result["history"]["val_accuracy"]) == result["epochs_done"]
    assert result["model_path"], "a stopped run keeps the model of its finished epochs"


@pytest.mark.slow
def test_a_failing_run_is_marked_failed_and_the_queue_goes_on(queue: JobQueue, tmp_path) -> None:
    only_class = tmp_path / "one" / "cats"
    only_class.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (16, 16), "red").save(only_class / "a.png")
    bad = queue.submit(TINY.with_changes(data=str(tmp_path / "one")))
    good = queue.submit(TINY, key="click-1")
    assert queue.submit(TINY, key="click-1") == good, "a rerun of the same click queues nothing"
    assert queue.wait(bad, timeout=120) == FAILED
    assert "need at least 2" in queue.store.result(bad)["error"]
    assert queue.wait(good, timeout=300) == COMPLETED
    bad_row, good_row = queue.store.get_run(bad), queue.store.get_run(good)
    assert bad_row["finished_at"] <= good_row["started_at"], "one at a time, in order"
    result = queue.store.result(good)
    assert result["class_names"] == ["brick", "grass", "gravel"]
    assert result["train_images"] + result["val_images"] == 120
    assert result["phases"][0]["trainable_params"] > 0
    assert result["duration_s"] > 0


@pytest.mark.slow
def test_cancelling_a_queued_run(queue: JobQueue) -> None:
    first = queue.submit(TINY.with_changes(epochs=200))
    second = queue.submit(TINY)
    assert second in queue.pending()
    queue.stop(second)
    assert queue.store.status(second) == STOPPED
    queue.stop(first)
    assert queue.wait(first, timeout=120) == STOPPED
    assert queue.store.result(second)["epochs_done"] == 0


@pytest.mark.slow
def test_a_stop_during_the_feature_pass_ends_the_run_there(tmp_path) -> None:
    """Stop while the frozen base computes features (a first run spends most of its time
    there): the pass ends at its current batch, no epoch starts, the run is stopped and
    resumable (before, the whole pass ran to its end first)."""
    import threading

    from core.runs.store import RunStore
    from core.training.trainer import execute_run

    store = RunStore(tmp_path)
    run_id = store.create_run(TINY.with_changes(epochs=3, name="stopped early"))
    stop = threading.Event()
    written = store.update

    def update(rid, **fields):  # the page's Stop, seen as the pass writes its first progress
        stage = fields.get("stage") or {}
        if stage.get("stage") == "features" and stage.get("done", 0) < stage.get("total", 0):
            stop.set()
        return written(rid, **fields)

    store.update = update  # type: ignore[method-assign]
    assert execute_run(store, run_id, stop) == STOPPED
    result = store.result(run_id)
    assert result["epochs_done"] == 0 and store.batches(run_id) == []
    stage = result["stage"] or {}
    assert stage["stage"] == "features" and stage["done"] < stage["total"]
    assert stage["step"] == stage["steps"] == 3  # the pages' "Preparing · step 3/3"
