"""Evaluation of a finished run: confusion matrix, sklearn metrics, gallery filter, caching."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support

from core.config import RunConfig
from core.data import load_dataset
from core.errors import StudioError
from core.runs.evaluate import EVALUATION_FILE, evaluate_run, misclassified
from core.runs.predict import predict_images

# Offline ImageNet weights at 32 px: a real (imperfect) model after one epoch, so the matrix has
# off-diagonal cells to filter.
CONFIG = RunConfig(
    backbone="efficientnet_lite0",
    weights="imagenet",
    data="builtin:textures",
    image_size=32,
    epochs=1,
    batch_size=16,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from core.training.jobs import JobQueue

    queue = JobQueue(tmp_path_factory.mktemp("eval-runs"))
    run_id = queue.submit(CONFIG)
    assert queue.wait(run_id, timeout=300) == "completed", queue.store.result(run_id)["error"]
    return queue.store, run_id


@pytest.fixture(scope="module")
def evaluation(run):
    store, run_id = run
    return evaluate_run(store, run_id, force=True)


@pytest.mark.slow
def test_matrix_is_square_and_counts_every_validation_image(run, evaluation):
    store, run_id = run
    n = len(evaluation["class_names"])
    matrix = np.array(evaluation["confusion_matrix"])
    val = load_dataset(CONFIG.data, val_split=CONFIG.val_split, seed=CONFIG.seed)
    assert evaluation["run_id"] == run_id
    assert evaluation["class_names"] == store.result(run_id)["class_names"]
    assert matrix.shape == (n, n)
    assert matrix.sum() == len(val.val_paths) == store.result(run_id)["val_images"]
    assert [img["path"] for img in evaluation["images"]] == val.val_paths
    # Rows are the true classes: their sums are the per-class supports.
    assert matrix.sum(axis=1).tolist() == [c["support"] for c in evaluation["per_class"]]


@pytest.mark.slow
def test_accuracy_is_trace_over_total(evaluation):
    matrix = np.array(evaluation["confusion_matrix"])
    assert evaluation["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    images = evaluation["images"]
    correct = np.mean([img["true"] == img["predicted"] for img in images])
    assert evaluation["accuracy"] == pytest.approx(correct)


@pytest.mark.slow
def test_per_class_matches_recomputation(evaluation):
    names = evaluation["class_names"]
    y_true = [names.index(img["true"]) for img in evaluation["images"]]
    y_pred = [names.index(img["predicted"]) for img in evaluation["images"]]
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=range(len(names)), zero_division=0
    )
    matrix = np.array(evaluation["confusion_matrix"], dtype=float)
    diag = np.diag(matrix)
    with np.errstate(invalid="ignore", divide="ignore"):
        by_hand_p = np.nan_to_num(diag / matrix.sum(axis=0))
        by_hand_r = np.nan_to_num(diag / matrix.sum(axis=1))
        by_hand_f = np.nan_to_num(2 * by_hand_p * by_hand_r / (by_hand_p + by_hand_r))
    for i, row in enumerate(evaluation["per_class"]):
        assert row["class"] == names[i]
        assert row["precision"] == pytest.approx(p[i]) == pytest.approx(by_hand_p[i])
        assert row["recall"] == pytest.approx(r[i]) == pytest.approx(by_hand_r[i])
        assert row["f1"] == pytest.approx(f[i]) == pytest.approx(by_hand_f[i])
        assert row["support"] == s[i]


@pytest.mark.slow
def test_evaluation_reports_progress_over_the_validation_images(run):
    store, run_id = run
    calls: list[tuple[int, int]] = []
    evaluate_run(
        store, run_id, force=True, progress=lambda done, total: calls.append((done, total))
    )
    n = store.result(run_id)["val_images"]
    assert calls and calls[-1] == (n, n) and {t for _, t in calls} == {n}
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


@pytest.mark.slow
def test_probabilities_match_single_image_prediction(run, evaluation):
    store, run_id = run
    names = evaluation["class_names"]
    picks = evaluation["images"][:: max(1, len(evaluation["images"]) // 3)][:3]
    results = predict_images(store, run_id, [img["path"] for img in picks], top_k=len(names))
    for img, result in zip(picks, results, strict=True):
        single = {p["label"]: p["probability"] for p in result["predictions"]}
        assert img["probabilities"] == pytest.approx([single[n] for n in names], abs=1e-4)
        assert img["predicted"] == result["predictions"][0]["label"]


@pytest.mark.slow
def test_misclassified_filters_one_cell(evaluation):
    names = evaluation["class_names"]
    matrix = evaluation["confusion_matrix"]
    for i, true_name in enumerate(names):
        for j, pred_name in enumerate(names):
            cell = misclassified(evaluation, true_name, pred_name)
            assert len(cell) == matrix[i][j]
            assert all(img["true"] == true_name and img["predicted"] == pred_name for img in cell)
            assert misclassified(evaluation, i, j) == cell  # indices work too
            confidences = [img["probabilities"][j] for img in cell]
            assert confidences == sorted(confidences, reverse=True)
    with pytest.raises(StudioError, match="Unknown class"):
        misclassified(evaluation, "no-such-class", names[0])
    with pytest.raises(StudioError, match="out of range"):
        misclassified(evaluation, 0, len(names))


@pytest.mark.slow
def test_cache_reused_then_invalidated_by_a_new_model_file(run, evaluation):
    store, run_id = run
    cache = store.run_dir(run_id) / EVALUATION_FILE
    assert cache.is_file()
    again = evaluate_run(store, run_id)
    assert again["from_cache"] is True
    assert again["confusion_matrix"] == evaluation["confusion_matrix"]
    assert again["images"] == evaluation["images"]

    # A half-written or foreign file is ignored, not trusted.
    cache.write_text("{not json")
    assert evaluate_run(store, run_id)["from_cache"] is False
    assert json.loads(cache.read_text())["run_id"] == run_id

    # Same bytes, new mtime: as if the model had been re-saved.
    model_path = store.result(run_id)["model_path"]
    st = os.stat(model_path)
    os.utime(model_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fresh = evaluate_run(store, run_id)
    assert fresh["from_cache"] is False
    assert fresh["confusion_matrix"] == evaluation["confusion_matrix"]
    assert evaluate_run(store, run_id)["from_cache"] is True


@pytest.mark.slow
def test_run_without_model_is_a_clear_error(run):
    store, _ = run
    run_id = store.create_run(CONFIG)
    with pytest.raises(StudioError, match="no saved model"):
        evaluate_run(store, run_id)


@pytest.mark.slow
def test_the_worker_evaluates_a_completed_run_once(tmp_path, monkeypatch):
    """The Run page opens at once: the evaluation is in the run folder when the run completes,
    and reading it runs no model."""
    import core.runs.predict
    from core.training.jobs import JobQueue
    from tests.helpers import TINY

    queue = JobQueue(tmp_path)
    run_id = queue.submit(TINY)
    assert queue.wait(run_id, timeout=300) == "completed"
    store = queue.store
    assert (store.run_dir(run_id) / EVALUATION_FILE).is_file()
    assert store.result(run_id)["timings"]["evaluate"] > 0

    def no_model(*_args, **_kwargs):
        raise AssertionError("the stored evaluation was not used")

    monkeypatch.setattr(core.runs.predict, "load_run", no_model)
    evaluation = evaluate_run(store, run_id)
    assert evaluation["from_cache"] is True and evaluation["run_id"] == run_id
    assert evaluation["val_images"] == store.result(run_id)["val_images"]
    # The model it evaluated is the one saved: Keras' last validation accuracy, within an image.
    last = store.result(run_id)["history"]["val_accuracy"][-1]
    assert evaluation["accuracy"] == pytest.approx(last, abs=1.5 / evaluation["val_images"])


@pytest.mark.slow
def test_a_failed_evaluation_does_not_fail_the_run(tmp_path, monkeypatch, capfd):
    import core.runs.evaluate
    from core.training.jobs import JobQueue
    from tests.helpers import TINY

    def broken(*_args, **_kwargs):
        raise OSError("disk hiccup")

    monkeypatch.setattr(core.runs.evaluate, "evaluate_run", broken)
    queue = JobQueue(tmp_path)
    run_id = queue.submit(TINY)
    assert queue.wait(run_id, timeout=300) == "completed"
    assert not (queue.store.run_dir(run_id) / EVALUATION_FILE).exists()
    assert queue.store.result(run_id)["error"] is None
    assert "evaluating it failed (OSError: disk hiccup)" in capfd.readouterr().err
    monkeypatch.undo()  # the page evaluates it on demand, as for an older run
    assert evaluate_run(queue.store, run_id)["from_cache"] is False


@pytest.mark.slow
def test_calibration_never_makes_the_confidence_worse(run, evaluation):
    """The temperature fitted as the run is evaluated lowers (or keeps) the calibration error,
    and Predict's stored scores are the validation images' under that temperature."""
    from core.runs.calibration import read_calibration

    store, run_id = run
    c = evaluation["calibration"]
    assert c["ece_after"] <= c["ece_before"]
    assert c["images"] == evaluation["val_images"]
    stored = read_calibration(store.run_dir(run_id))
    assert stored is not None and stored.temperature == pytest.approx(c["temperature"], abs=1e-4)
    assert len(stored.scores) == evaluation["val_images"]
    assert [b["count"] for b in evaluation["reliability"]["before"]] != []
