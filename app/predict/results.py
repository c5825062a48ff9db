"""The Predict page's results: per image, each chosen run's top-k (with Grad-CAM, a map of where
the model looked beside them) and "Add to dataset…" with the first model's prediction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from app import widgets
from app.data import dataset_builder
from app.predict import sets
from app.views import charts
from app.views.labels import mode_label
from app.views.text import md_escape
from core.errors import StudioError
from core.models.gradcam import gradcam
from core.runs.calibration import DEFAULT_COVERAGE
from core.runs.predict import load_run, predict_images

if TYPE_CHECKING:
    from core.runs.store import RunStore, RunSummary


def show_gradcam(store: RunStore, run_id: str, image: np.ndarray) -> None:
    """The Grad-CAM overlay of the run's top-1 class (an info when the map is 1x1)."""
    try:
        run = load_run(store, run_id)
        cam = gradcam(run.model, image)
    except StudioError as exc:
        widgets.show_error(exc)
        return
    label = md_escape(run.class_names[cam["class_index"]], inline=True)
    st.image(cam["overlay"], caption=f"Grad-CAM · {label} {cam['probability']:.0%}", width=160)
    if cam["feature_map_size"] == (1, 1):
        st.info(
            f"At {run.image_size} px the model's last feature map is 1×1, so this map cannot "
            "show where it looked. Train at a larger image size (96 px or more) for a useful map."
        )


def render(
    store: RunStore,
    runs: list[RunSummary],
    chosen: list[str],
    images: list[tuple[str, bytes]],
    top_k: int,
    explain: bool,
    *,
    coverage: float = DEFAULT_COVERAGE,
    tta: bool = False,
) -> None:
    """One bordered row per image (its name and bytes), the chosen runs' predictions beside it."""
    for i, (name, data) in enumerate(images):
        with st.container(border=True):
            # Side by side per run; with Grad-CAM one row per run (bars | map) beside the image.
            cols = st.columns([1, 4] if explain else [1] + [2] * len(chosen))
            try:
                preview = widgets.preview_image(data)
                cols[0].image(preview, caption=md_escape(name, inline=True), width="stretch")
            except StudioError as exc:
                cols[0].error(md_escape(f"{name}: {exc}"))
                continue
            slots = [cols[1]] * len(chosen) if explain else cols[1:]
            top1: str | None = None  # the first model's prediction: the class offered to add it to
            for col, run_id in zip(slots, chosen, strict=True):
                with col:
                    try:
                        result = predict_images(
                            store, run_id, [data], top_k=top_k, calibrated=True,
                            coverage=coverage, tta=tta,
                        )[0]  # fmt: skip
                    except StudioError as exc:
                        widgets.show_error(exc)
                        continue
                    top1 = top1 or result["predictions"][0]["label"]
                    run = next(r for r in runs if r["run_id"] == run_id)
                    title = f"{run['name']} · {mode_label(run['mode'])}"  # a name people know
                    bars, cam = st.columns([3, 2]) if explain else (st.container(), None)
                    bars.plotly_chart(
                        charts.prediction_bars(result["predictions"], title=title),
                        key=f"p{i}{run_id}",
                    )
                    bars.caption(f"Run `{run_id}` · {result['latency_ms']:.1f} ms")
                    sets.show_set(bars, result)  # "Not sure: cat or lynx"
                    if cam is not None:
                        with cam:
                            show_gradcam(store, run_id, np.asarray(preview))
            # Below the row, not under the image: beside two or more models the image's column
            # is too narrow for the button's label at 1280 px.
            first = next(r for r in runs if r["run_id"] == chosen[0])
            dataset_builder.add_to_dataset(data, name, first["data"], top1, f"add{i}")
