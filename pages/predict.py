"""Predict: drop images (or take a photo) and see each chosen run's top-k side by side, optionally
with a Grad-CAM map of where each model looked; "Add to dataset…" files an image into one of your
datasets (class defaulting to the prediction)."""

from __future__ import annotations

import streamlit as st

from app import loaders, navigation, widgets
from app.predict import results, sets
from app.views import run_page as run_views
from core.data.images import IMAGE_EXTENSIONS

navigation.through_router()  # first: the page runs inside the router
st.title("Predict")
store = loaders.job_queue().store
runs, labels = widgets.finished_runs(
    store, "No trained model yet: finish a run on the Train page first."
)
# The best model for the data in use (or the run just watched), never simply the newest: after
# "Compare all modes" that is the scratch baseline.
best = run_views.preselected_model(
    runs, navigation.chosen_data(), st.session_state.get(navigation.RUN_ID)
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
coverage, tta = sets.predict_options(right)  # prediction sets, test-time augmentation
images = [(upload.name, upload.getvalue()) for upload in uploads or []]
if use_camera and (shot := st.camera_input("Take a picture", key="camera")):
    images.append(("camera picture", shot.getvalue()))
if not chosen or not images:
    st.info("Pick at least one model and drop one or more images (or take a picture).")
    st.stop()
results.render(store, runs, chosen, images, top_k, explain, coverage=coverage, tta=tta)
