"""Calibration pieces on known numbers: ECE, the temperature fit, conformal sets, the model card."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import StudioError
from core.runs.calibration import (
    calibrate,
    conformal_threshold,
    ece,
    fit_temperature,
    prediction_set,
    read_calibration,
    reliability,
    scale,
    write_calibration,
)
from core.runs.model_card import card_text


def _overconfident(n: int, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities from logits twice as sharp as the labels' true distribution (T* = 2)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, (n, classes))
    true = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(classes, p=p) for p in true])
    sharp = np.exp(2 * logits) / np.exp(2 * logits).sum(axis=1, keepdims=True)
    return sharp, labels


def test_ece_by_hand() -> None:
    # Two images at confidence 0.9 (one right), two at 0.6 (both right): bins 0.9 and 0.6.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    # |0.5 - 0.9| * 2/4 + |1.0 - 0.6| * 2/4
    assert ece(probs, labels) == pytest.approx(0.4)
    rows = [r for r in reliability(probs, labels) if r["count"]]
    assert [(r["count"], r["accuracy"]) for r in rows] == [(2, 1.0), (2, 0.5)]
    assert rows[0]["confidence"] == pytest.approx(0.6)


def test_diagram_bins_hold_about_ten_images() -> None:
    from core.runs.calibration import diagram_bins

    assert [diagram_bins(n) for n in (24, 80, 400)] == [5, 8, 15]


def test_scaling_by_one_changes_nothing_and_keeps_the_ranking() -> None:
    probs, _ = _overconfident(50)
    assert np.allclose(scale(probs, 1.0), probs)
    softer = scale(probs, 3.0)
    assert np.allclose(softer.sum(axis=1), 1.0)
    assert (softer.argmax(1) == probs.argmax(1)).all()
    assert (softer.max(1) < probs.max(1) + 1e-12).all()


def test_temperature_recovers_an_overconfident_model() -> None:
    probs, labels = _overconfident(4000)
    assert fit_temperature(probs, labels) == pytest.approx(2.0, rel=0.1)
    result = calibrate(probs, labels)
    assert result.method == "validation"
    assert result.temperature == pytest.approx(2.0, rel=0.1)
    assert result.ece_after < result.ece_before / 2


def test_small_validation_is_measured_out_of_fold_and_never_worse() -> None:
    probs, labels = _overconfident(40, seed=3)
    result = calibrate(probs, labels)
    assert result.method == "out-of-fold"
    assert result.ece_after <= result.ece_before
    if result.temperature == 1.0:
        assert "did not lower" in result.note


def test_conformal_threshold_is_the_finite_sample_quantile() -> None:
    scores = [i / 10 for i in range(10)]  # 0.0 .. 0.9
    # n = 10, coverage 0.8: rank ceil(11 * 0.8) = 9 -> the 9th smallest score.
    assert conformal_threshold(scores, 0.8) == pytest.approx(0.8)
    # Too few scores for 95 %: ceil(11 * 0.95) = 11 > 10 -> every class.
    assert conformal_threshold(scores, 0.95) == 1.0
    with pytest.raises(StudioError, match="between 0 and 1"):
        conformal_threshold(scores, 1.5)


def test_prediction_set_holds_the_classes_above_the_threshold() -> None:
    probs = np.array([0.5, 0.35, 0.15])
    assert prediction_set(probs, 0.7) == [0, 1]  # p >= 0.3
    assert prediction_set(probs, 0.1) == [0]  # never empty: the top class
    assert prediction_set(probs, 1.0) == [0, 1, 2]


def test_conformal_sets_cover_as_promised() -> None:
    probs, labels = _overconfident(3000, classes=4, seed=1)
    result = calibrate(probs[:1500], labels[:1500])
    qhat = conformal_threshold(result.scores, 0.9)
    test = scale(probs[1500:], result.temperature)
    covered = [labels[1500 + i] in prediction_set(p, qhat) for i, p in enumerate(test)]
    assert np.mean(covered) >= 0.88  # 0.9 in expectation, minus sampling noise
    sizes = [len(prediction_set(p, qhat)) for p in test]
    assert 1.0 < np.mean(sizes) < 4.0  # uncertain images get sets, sure ones do not


def test_stored_calibration_belongs_to_one_model_file(tmp_path) -> None:
    probs, labels = _overconfident(200)
    result = calibrate(probs, labels)
    result.model_key = {"model_mtime_ns": 1, "model_bytes": 2}
    write_calibration(tmp_path, result)
    assert read_calibration(tmp_path, {"model_mtime_ns": 1, "model_bytes": 2}) == result
    assert read_calibration(tmp_path, {"model_mtime_ns": 3, "model_bytes": 2}) is None


def test_model_card_records_the_temperature_exports_leave_out() -> None:
    result = {"run_id": "r1", "config": {"image_size": 32}, "class_names": ["a", "b"]}
    evaluation = {
        "accuracy": 0.9, "val_images": 10, "per_class": [], "confusion_matrix": [[5, 0], [1, 4]],
        "calibration": {"temperature": 1.7, "ece_before": 0.12, "ece_after": 0.03,
                        "method": "validation"},
    }  # fmt: skip
    text = card_text(result, evaluation, [], {})
    assert "## Calibration" in text and "T = 1.7000" in text
    assert "keeps the model's own probabilities" in text
    assert "## Exports" not in text  # no export rows: no exports section


def test_no_mistake_no_temperature() -> None:
    """Every validation image right: the likelihood would push T towards 0 (sharper on no
    evidence); the probabilities are left alone."""
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.9, 0.1]] * 10)
    labels = np.array([0, 1, 0] * 10)
    assert fit_temperature(probs, labels) < 0.1
    result = calibrate(probs, labels)
    assert result.temperature == 1.0 and result.ece_after == result.ece_before
    assert "no mistake" in result.note
