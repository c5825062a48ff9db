"""Data: choose a source, then see its classes, samples, skipped files and health warnings."""

from __future__ import annotations

import os

import streamlit as st

from app import widgets
from app.views import charts
from core.config import DEFAULT_DATA
from core.data import health as data_health
from core.data.builtin import list_builtins
from core.errors import StudioError

st.title("Data")
kind = st.segmented_control(
    "Source", ["Built-in", "Local folder", "Zip upload", "Kaggle"], default="Built-in", key="kind"
)
source = None
if kind == "Built-in":
    builtins = sorted(list_builtins(), key=lambda b: b["source"] != DEFAULT_DATA)  # default first
    builtin = st.selectbox(
        "Built-in dataset (offline)",
        builtins,
        format_func=lambda b: f"{b['source']} — {b['images']} images: {', '.join(b['classes'])}",
    )
    st.caption(builtin["description"])
    source = builtin["source"]
elif kind == "Local folder":
    source = st.text_input("Folder", placeholder="~/pets: class subfolders, or train/ + val/")
elif kind == "Zip upload":
    upload = st.file_uploader("Drop a .zip of class folders", type=["zip"], key="zip")
    source = widgets.saved_upload(upload)
elif kind == "Kaggle":
    source = st.text_input("Kaggle dataset", placeholder="kaggle:OWNER/SLUG/versions/N")
cols = st.columns([1, 1, 2], vertical_alignment="bottom")
val_split = cols[0].number_input("Validation split", 0.05, 0.9, 0.2, 0.05, key="val_split")
seed = int(cols[1].number_input("Seed", 0, 2**31 - 1, 42, key="seed"))
use = cols[2].button("Use this data", type="primary", disabled=not source, key="use_data")
if use and source and widgets.fetch_data(source.strip(), val_split, seed):
    st.session_state[widgets.DATA_SOURCE] = source.strip()
    st.rerun()  # redraw the sidebar and the Train page's default with the new source

chosen = st.session_state.get(widgets.DATA_SOURCE)
if not chosen:
    st.info("Pick a source and click **Use this data**. The Train page will use it.")
    st.stop()
try:
    index = widgets.load_data(chosen, val_split, seed)
    with st.spinner("Checking data health…"):
        report = widgets.data_health(chosen, val_split, seed)
except StudioError as exc:
    widgets.show_error(exc)
    st.stop()

st.subheader(f"In use: {widgets.md_escape(chosen, inline=True)}")
m = st.columns(5)
m[0].metric("Classes", len(index.class_names))
m[1].metric("Training images", len(index.train_paths))
m[2].metric("Validation images", len(index.val_paths))
m[3].metric("Skipped files", len(index.skipped_files))
m[4].metric("Split", "given" if index.split.startswith("given") else "random")
for item in report:
    (st.warning if item["level"] == "warning" else st.info)(widgets.md_escape(item["message"]))
if not any(item["level"] == "warning" for item in report):
    st.success("Health check: no imbalance, empty classes, duplicates or tiny images found.")
st.page_link(widgets.TRAIN, label="Train on this data", icon=":material/arrow_forward:")

left, right = st.columns([2, 3])
with left:
    st.markdown("**Images per class**")
    st.plotly_chart(charts.class_counts_figure(index.class_counts()), key="class_counts")
with right:
    st.markdown("**Samples**")
    samples = data_health.sample_images(index, per_class=6, seed=seed)
    try:
        for name in list(samples)[:12]:
            st.caption(widgets.md_escape(name))
            st.image([widgets.thumbnail(p) for p in samples[name]], width=80)
    except StudioError as exc:  # a file changed on disk since the scan
        widgets.show_error(exc)
    if len(samples) > 12:
        st.caption(f"… and {len(samples) - 12} more classes.")
if index.skipped_files:
    with st.expander(f"Skipped files ({len(index.skipped_files)})"):
        st.dataframe(data_health.skipped_table(index), hide_index=True, width="stretch")
st.caption(f"Folder: {widgets.md_escape(os.path.abspath(index.root))}")
