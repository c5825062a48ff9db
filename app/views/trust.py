"""What the Run and Predict pages say about trusting a run (pure: data in, text and figures out):
leakage between its splits, calibrated confidence, test-time augmentation, prediction sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from app.views.text import md_escape
from core.runs.leakage import describe

BEFORE_COLOR = "#9ca3af"  # grey: the model as trained
AFTER_COLOR = "#2563eb"  # blue: with the run's temperature
MAX_PAIRS_SHOWN = 6  # pairs drawn side by side on the Run page


def leakage_level(leakage: dict[str, Any]) -> str:
    """``success`` when no validation image has a twin in training, else ``warning``."""
    return "success" if leakage["val_images_with_train_twin"] == 0 else "warning"


def leakage_text(leakage: dict[str, Any]) -> str:
    """The check in words ("12 of 80 validation images have a near-copy in training; ...")."""
    return describe(leakage)


def flagged_text(leakage: dict[str, Any], text: str) -> str:
    """``text`` behind a green tick (no twin) or an orange warning sign, as Markdown (not an
    alert box: the pages' alerts are for what the user just did)."""
    icon = (
        ":green[:material/check_circle:]"
        if leakage_level(leakage) == "success"
        else ":orange[:material/warning:]"
    )
    return f"{icon} {md_escape(text, inline=True)}"


def set_markdown(result: dict[str, Any]) -> str | None:
    """The prediction set in words behind its icon (``set_text``), or ``None``."""
    text = set_text(result)
    if text is None:
        return None
    icon = ":orange[:material/help:]" if text.startswith("Not sure") else ":green[:material/check:]"
    return f"{icon} {text}"


def pair_cards(leakage: dict[str, Any], root: str) -> list[dict[str, Any]]:
    """The first pairs to draw side by side: absolute paths and a caption for each side."""
    cards = []
    for pair in leakage["pairs"][:MAX_PAIRS_SHOWN]:
        how = "identical file" if pair.get("exact") else _closeness(pair)
        labels = "" if pair["same_label"] else " · different labels"
        cards.append(
            {
                "val": str(Path(root) / pair["val"]),
                "train": str(Path(root) / pair["train"]),
                "val_caption": f"validation · {pair['val_label']} · {pair['val']}",
                "train_caption": f"training · {pair['train_label']} · {pair['train']}",
                "how": how + labels,
            }
        )
    return cards


def _closeness(pair: dict[str, Any]) -> str:
    parts = []
    if pair.get("similarity") is not None:
        parts.append(f"embedding similarity {pair['similarity']:.3f}")
    if pair.get("hash_distance") is not None:
        parts.append(f"{pair['hash_distance']} of 64 hash bits differ")
    return ", ".join(parts) or "near-copy"


def calibration_text(calibration: dict[str, Any]) -> str:
    """What the temperature does, in words."""
    t = calibration["temperature"]
    before, after = calibration["ece_before"], calibration["ece_after"]
    if t == 1.0:
        return (
            f"Confidence is left as the model gives it (calibration error {before:.3f}): "
            f"{calibration['note']}."
        )
    if abs(before - after) < 0.001:
        return (
            f"The confidence already matched the accuracy (calibration error {before:.3f}); "
            f"the fitted temperature of {t:.2f} changes little. Predict applies it."
        )
    direction = "over-confident" if t > 1 else "under-confident"
    return (
        f"The model was {direction}: its probabilities are scaled by a temperature of {t:.2f}, "
        f"which brings the calibration error from {before:.3f} to {after:.3f} "
        f"(measured {calibration['method']}). Predict shows the calibrated probabilities."
    )


def reliability_figure(reliability: dict[str, list[dict[str, Any]]]) -> go.Figure:
    """The reliability diagram: accuracy against confidence per bin, before and after the
    temperature; a calibrated model lies on the diagonal. Marker size: images in the bin."""
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
            line={"color": "#d1d5db", "dash": "dash"}, hoverinfo="skip",
        )
    )  # fmt: skip
    for key, name, color in (
        ("before", "as trained", BEFORE_COLOR),
        ("after", "with the temperature", AFTER_COLOR),
    ):
        rows = [r for r in reliability.get(key, []) if r["count"]]
        most = max((r["count"] for r in rows), default=1)
        fig.add_trace(
            go.Scatter(
                x=[r["confidence"] for r in rows],
                y=[r["accuracy"] for r in rows],
                mode="lines+markers",
                name=name,
                line={"color": color},
                marker={"size": [8 + 14 * r["count"] / most for r in rows], "color": color},
                customdata=[r["count"] for r in rows],
                hovertemplate="confidence %{x:.2f}: accuracy %{y:.2f} "
                "(%{customdata} images)<extra>" + name + "</extra>",
            )
        )
    fig.update_xaxes(title="confidence (top probability)", range=[0, 1.02], tickformat=".0%")
    fig.update_yaxes(title="accuracy", range=[0, 1.02], tickformat=".0%")
    fig.update_layout(
        template="plotly_white",
        height=360,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0},
    )
    return fig


def tta_text(tta: dict[str, Any]) -> str:
    """Test-time augmentation's result and whether it is worth it for this run."""
    return (
        f"Accuracy {tta['accuracy']:.1%} without, {tta['accuracy_tta']:.1%} with test-time "
        f"augmentation ({tta['views']} views); {tta['ms_per_image']:.1f} ms → "
        f"{tta['ms_per_image_tta']:.1f} ms per image. {tta['verdict']}"
    )


def set_text(result: dict[str, Any]) -> str | None:
    """The prediction set in words for the playground: "Not sure: cat or lynx" when it holds
    several classes; ``None`` when there is no set (no stored calibration) to show. Markdown."""
    if not result.get("set"):
        return None
    labels = [md_escape(label, inline=True) for label in result["set"]]  # class names as typed
    coverage = f"{result['coverage']:.0%}"
    if len(labels) == 1:
        return f"Sure: **{labels[0]}** (a {coverage} prediction set holds this label alone)"
    shown = ", ".join(labels[:-1]) + " or " + labels[-1]
    return f"Not sure: **{shown}** (the {coverage} prediction set)"


def tensorboard_hint() -> str:
    """The Run page's "Open in TensorBoard" text."""
    return (
        "Every epoch of this run (loss, accuracy, validation, learning rate, the phase "
        "boundary and the final confusion matrix) is in its TensorBoard event files. Open them "
        "with this command, then go to http://localhost:6006:"
    )
