"""Predict: drop images (or take a photo) and see each chosen run's top-k side by side."""

from __future__ import annotations

import streamlit as st

import ui
from core import charts, dashboard
from core.errors import StudioError
from core.images import IMAGE_EXTENSIONS
from core.predict import predict_images

ui.setup_page("Predict", "🔮")
st.title("Predict")
store = ui.job_queue().store
runs = dashboard.predictable_runs(store)
if not runs:
    st.info("No trained model yet: finish a run on the Train page first.")
    st.page_link("pages/2_Train.py", label="Go to Train", icon=":material/model_training:")
    st.stop()

labels = {r["run_id"]: dashboard.run_choice_label(r) for r in runs}
chosen = st.multiselect(
    "Models (finished runs)", list(labels), default=list(labels)[:1],
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
images = [(upload.name, upload.getvalue()) for upload in uploads or []]
if use_camera and (shot := st.camera_input("Take a picture", key="camera")):
    images.append(("camera picture", shot.getvalue()))
if not chosen or not images:
    st.info("Pick at least one model and drop one or more images (or take a picture).")
    st.stop()

for i, (name, data) in enumerate(images):
    with st.container(border=True):
        cols = st.columns([1] + [2] * len(chosen))
        try:
            cols[0].image(ui.preview_image(data), caption=name, width=224)
        except StudioError as exc:
            cols[0].error(f"{name}: {exc}")
            continue
        for col, run_id in zip(cols[1:], chosen, strict=True):
            with col:
                try:
                    result = predict_images(store, run_id, [data], top_k=top_k)[0]
                except StudioError as exc:
                    ui.show_error(exc)
                    continue
                run = next(r for r in runs if r["run_id"] == run_id)
                title = f"{run['mode']} · {run['backbone']}"
                st.plotly_chart(
                    charts.prediction_bars(result["predictions"], title=title), key=f"p{i}{run_id}"
                )
                st.caption(f"Run `{run_id}` · {result['latency_ms']:.1f} ms")
