"""The Run and Predict pages' words and figures about trusting a run (pure views)."""

from __future__ import annotations

from app.views import trust as views


def _leakage(n_twins: int) -> dict:
    pairs = [
        {"val": f"cats/{i}.jpg", "train": f"cats/{i}b.jpg", "similarity": 0.991, "same_label": True,
         "exact": False, "hash_distance": 2, "val_label": "cats", "train_label": "cats"}
        for i in range(n_twins)
    ]  # fmt: skip
    return {
        "pairs": pairs, "val_images_with_train_twin": n_twins, "val_images": 80,
        "accuracy": 0.97, "accuracy_without_twins": 0.91, "different_labels": 0,
    }  # fmt: skip


def test_leakage_said_in_words_with_both_accuracies() -> None:
    text = views.leakage_text(_leakage(12))
    assert text == (
        "12 of 80 validation images have a near-copy in training; without them accuracy is "
        "0.91, not 0.97."
    )
    assert views.leakage_level(_leakage(12)) == "warning"
    assert views.leakage_level(_leakage(0)) == "success"


def test_pair_cards_put_both_sides_under_the_data_root() -> None:
    cards = views.pair_cards(_leakage(9), "/data")
    assert len(cards) == views.MAX_PAIRS_SHOWN
    assert cards[0]["val"] == "/data/cats/0.jpg" and cards[0]["train"] == "/data/cats/0b.jpg"
    assert cards[0]["val_caption"].startswith("validation · cats")
    assert "similarity 0.991" in cards[0]["how"] and "2 of 64 hash bits" in cards[0]["how"]


def test_calibration_text_says_which_way_the_model_was_off() -> None:
    over = {"temperature": 1.8, "ece_before": 0.12, "ece_after": 0.03, "method": "validation",
            "note": ""}  # fmt: skip
    assert "over-confident" in views.calibration_text(over)
    assert "0.120 to 0.030" in views.calibration_text(over)
    kept = {**over, "temperature": 1.0, "note": "the fitted temperature 0.90 did not lower it"}
    assert views.calibration_text(kept).startswith("Confidence is left as the model gives it")


def test_reliability_figure_has_the_diagonal_and_both_curves() -> None:
    bins = [{"lo": 0.5, "hi": 0.6, "count": 4, "confidence": 0.55, "accuracy": 0.5},
            {"lo": 0.9, "hi": 1.0, "count": 0, "confidence": None, "accuracy": None}]  # fmt: skip
    fig = views.reliability_figure({"before": bins, "after": bins})
    assert [t.name for t in fig.data] == [
        "perfectly calibrated",
        "as trained",
        "with the temperature",
    ]
    assert list(fig.data[1].x) == [0.55]  # empty bins are not drawn


def test_set_text_reads_like_a_person() -> None:
    unsure = {"set": ["cat", "lynx"], "coverage": 0.9}
    assert views.set_text(unsure) == "Not sure: **cat or lynx** (the 90% prediction set)"
    assert views.set_text({"set": ["cat"], "coverage": 0.9}).startswith("Sure: **cat**")
    assert views.set_text({"set": None}) is None


def test_tta_text_carries_the_verdict() -> None:
    verdict = "Worth it if you can afford 4.8x the prediction time"
    tta = {"accuracy": 0.9, "accuracy_tta": 0.95, "views": 5, "ms_per_image": 2.0,
           "ms_per_image_tta": 9.5, "verdict": verdict}  # fmt: skip
    text = views.tta_text(tta)
    assert "90.0% without, 95.0% with" in text and text.endswith("prediction time")


def test_flagged_and_set_markdown_carry_an_icon() -> None:
    assert views.flagged_text(_leakage(0), "fine").startswith(":green[:material/check_circle:]")
    assert views.flagged_text(_leakage(3), "a*b").endswith("a\\*b")  # user text escaped
    unsure = views.set_markdown({"set": ["cat", "lynx"], "coverage": 0.9})
    assert unsure is not None and unsure.startswith(":orange[:material/help:] Not sure")
    assert views.set_markdown({"set": None}) is None
