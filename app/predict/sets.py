"""The Predict page's prediction sets and test-time augmentation: the coverage slider and the
toggle beside the uploader, and each model's set in words under its bars ("Not sure: cat or
lynx")."""

from __future__ import annotations

from typing import Any

from app.views import trust as views
from core.runs.calibration import DEFAULT_COVERAGE

COVERAGE = "predict_coverage"  # session keys of the options
TTA = "predict_tta"


def predict_options(container: Any) -> tuple[float, bool]:
    """The Predict page's coverage slider and test-time augmentation toggle."""
    coverage = container.slider(
        "Prediction-set coverage", 0.5, 0.99, DEFAULT_COVERAGE, 0.01, key=COVERAGE,
        format="%.2f",
        help="How often the set of likely labels holds the true one, as measured on the "
        "run's validation images: higher coverage, larger sets",
    )  # fmt: skip
    tta = container.toggle(
        "TTA: average 5 views", key=TTA,
        help="Test-time augmentation: average the predictions of the image, its mirror and "
        "three small crops (about 5x slower)",
    )  # fmt: skip
    return float(coverage), bool(tta)


def show_set(container: Any, result: dict[str, Any]) -> None:
    """The prediction set in words under a model's bars."""
    text = views.set_text(result)
    if text is not None:
        icon = (
            ":orange[:material/help:]"
            if text.startswith("Not sure")
            else ":green[:material/check:]"
        )
        container.markdown(f"{icon} {text}")
