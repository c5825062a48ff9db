"""Predict: drop images (or take a photo) and see each chosen run's top-k side by side, optionally
with a Grad-CAM map of where each model looked; "Add to dataset…" files an image into one of your
datasets (class defaulting to the prediction)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import dataset_builder, widgets
from app.views import charts
from app.views import run_page as run_views
from app.views.labels import mode_label
from core.data.images import IMAGE_EXTENSIONS
from core.errors import StudioError
from core.models.gradcam import gradcam
from core.runs.predict import load_run, predict_images

st.title("Predict")
store = widgets.job_queue().store
runs, labels = widgets.finished_runs(
    store, "No trained model yet: finish a run on the Train page first."
)
# The best model for the data in use (or the run just watched), never simply the newest: after
# "Compare all modes" that is the scratch baseline.
best = run_views.preselected_model(
    runs, widgets.chosen_data(), st.session_state.get(widgets.RUN_ID)
)
chosen = st.multiselect(
    "Models (finished runs)", list(labels), default=[best] if best else [],
    format_func=labels.__getitem__, key="models",
)  # fmt: skip
left, right = st.columns([3, 1])
uploads = left.file_uploader(
    "Drop images here",
    type=sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS),
    accept_multiple_files=True,
    key="images",
)
top_k = right.slider("Top-k", 1, 10, 3, key="top_k")
use_camera = right.toggle("Use the camera", key="use_camera")
explain = right.toggle(
    "Explain with Grad-CAM", key="gradcam", help="Highlight the image regions behind each top-1"
)
images = [(upload.name, upload.getvalue()) for upload in uploads or []]
if use_camera and (shot := st.camera_input("Take a picture", key="camera")):
    images.append(("camera picture", shot.getvalue()))
if not chosen or not images:
    st.info("Pick at least one model and drop one or more images (or take a picture).")
    st.stop()


def show_gradcam(run_id: str, image: np.ndarray) -> None:
    """The Grad-CAM overlay of the run's top-1 class (an info when the map is 1x1)."""
    try:
        run = load_run(store, run_id)
        cam = gradcam(run.model, image)
    except StudioError as exc:
        widgets.show_error(exc)
        return
    label = widgets.md_escape(run.class_names[cam["class_index"]], inline=True)
    st.image(cam["overlay"], caption=f"Grad-CAM · {label} {cam['probability']:.0%}", width=160)
    if cam["feature_map_size"] == (1, 1):
        st.info(
            f"At {run.image_size} px the model's last feature map is 1×1, so this map cannot "
            "show where it looked. Train at a larger image size (96 px or more) for a useful map."
        )


for i, (name, data) in enumerate(images):
    with st.container(border=True):
        # Side by side per run; with Grad-CAM one row per run (bars | map) beside the image.
        cols = st.columns([1, 4] if explain else [1] + [2] * len(chosen))
        try:
            preview = widgets.preview_image(data)
            cols[0].image(preview, caption=widgets.md_escape(name, inline=True), width="stretch")
        except StudioError as exc:
            cols[0].error(widgets.md_escape(f"{name}: {exc}"))
            continue
        slots = [cols[1]] * len(chosen) if explain else cols[1:]
        top1: str | None = None  # the first model's prediction: the class offered to add it to
        for col, run_id in zip(slots, chosen, strict=True):
            with col:
                try:
                    result = predict_images(store, run_id, [data], top_k=top_k)[0]
                except StudioError as exc:
                    widgets.show_error(exc)
                    continue
                top1 = top1 or result["predictions"][0]["label"]
                run = next(r for r in runs if r["run_id"] == run_id)
                title = f"{run['name']} · {mode_label(run['mode'])}"  # a name people know
                bars, cam = st.columns([3, 2]) if explain else (st.container(), None)
                bars.plotly_chart(
                    charts.prediction_bars(result["predictions"], title=title), key=f"p{i}{run_id}"
                )
                bars.caption(f"Run `{run_id}` · {result['latency_ms']:.1f} ms")
                if cam is not None:
                    with cam:
                        show_gradcam(run_id, np.asarray(preview))
        # Below the row, not under the image: beside two or more models the image's column is
        # too narrow for the button's label at 1280 px.
        first = next(r for r in runs if r["run_id"] == chosen[0])
        dataset_builder.add_to_dataset(data, name, first["data"], top1, f"add{i}")
