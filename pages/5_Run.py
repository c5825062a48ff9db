"""Run: one finished run in depth — summary, evaluation (confusion matrix, per-class metrics, the
images behind any cell) and a verified export to download."""

from __future__ import annotations

from functools import partial

import streamlit as st

import ui
from core import run_views
from core.errors import StudioError
from core.evaluate import evaluate_run
from core.export import FORMATS, export_run

ui.setup_page("Run", "🔬")
st.title("Run")
store = ui.job_queue().store
runs, labels = ui.finished_runs(store, "No finished run yet: train one on the Train page first.")
wanted = (st.query_params.get("run"), st.session_state.get(ui.RUN_ID))
if st.session_state.get("run_page_run") not in labels:
    st.session_state["run_page_run"] = run_views.pick_run(runs, wanted)
run_id = st.selectbox("Run", list(labels), format_func=labels.__getitem__, key="run_page_run")
st.query_params["run"] = run_id  # a shareable link to this run
result = store.result(run_id)
st.markdown(run_views.run_headline(result))
for col, (label, value) in zip(st.columns(4), run_views.run_summary(result), strict=True):
    col.metric(label, value)
st.caption(run_views.run_details(result))
phase_columns = ("phase", "epochs", "learning rate", "trainable", "frozen", "unfrozen base layers")
st.dataframe(
    run_views.phase_rows(result), hide_index=True, width="stretch", column_order=phase_columns
)

st.subheader("Evaluate", divider="gray")
try:
    with st.spinner("Evaluating on the validation split (cached after the first time)…"):
        evaluation = evaluate_run(store, run_id)
except StudioError as exc:
    ui.show_error(exc)
    evaluation = None
if evaluation is not None:
    names = evaluation["class_names"]
    true_key, pred_key, matrix_key = f"true_{run_id}", f"pred_{run_id}", f"matrix_{run_id}"

    def pick_cell() -> None:  # a click on the matrix sets the two class pickers
        cell = run_views.cell_from_selection(names, st.session_state.get(matrix_key))
        if cell:
            st.session_state[true_key], st.session_state[pred_key] = cell

    default = run_views.default_cell(evaluation)
    st.session_state.setdefault(true_key, default[0])
    st.session_state.setdefault(pred_key, default[1])
    left, right = st.columns([3, 2], gap="large")
    with right:
        images_text = f"{evaluation['val_images']} images"
        st.metric("Validation accuracy", f"{evaluation['accuracy']:.1%}", images_text,
                  delta_color="off", delta_arrow="off")  # fmt: skip
        st.dataframe(run_views.per_class_rows(evaluation), hide_index=True, width="stretch")
        true_class = st.selectbox("True class", names, key=true_key)
        pred_class = st.selectbox("Predicted class", names, key=pred_key)
    with left:
        st.caption("Rows: true class · columns: predicted class. Click a cell to see its images.")
        st.plotly_chart(
            run_views.confusion_matrix_figure(evaluation, (true_class, pred_class)),
            key=matrix_key, on_select=pick_cell, selection_mode="points",
            config={"displayModeBar": False},
        )  # fmt: skip
    items, total = run_views.gallery(evaluation, true_class, pred_class)
    kind = "correctly classified" if true_class == pred_class else f"predicted as {pred_class}"
    more = f" (the {len(items)} most confident shown)" if total > len(items) else ""
    st.markdown(f"**{total} validation images of {true_class} {kind}**{more}")
    if items:
        st.image([ui.thumbnail(item["path"], 128) for item in items],
                 caption=[item["caption"] for item in items], width=128)  # fmt: skip
    else:
        st.caption("No image in this cell.")

st.subheader("Export", divider="gray")
cols = st.columns([3, 2, 2], vertical_alignment="bottom")
fmt = cols[0].radio("Format", FORMATS, horizontal=True, key="export_format")
quantize = cols[1].checkbox(
    "Quantized (dynamic range)", key="export_quantize", disabled=fmt != "tflite",
    help="tflite only: int8 weights, about 4x smaller",
)  # fmt: skip
export_key = f"export_{run_id}"
if cols[2].button("Export and verify", key="export", icon=":material/ios_share:", type="primary"):
    try:
        with st.spinner(f"Exporting {fmt} and checking it against the live model…"):
            st.session_state[export_key] = export_run(
                store, run_id, fmt, quantize=quantize and fmt == "tflite"
            )
    except StudioError as exc:
        ui.show_error(exc)
if export := st.session_state.get(export_key):
    st.success(run_views.export_message(export))
    st.caption(f"Saved in `{export['path']}`")
    row = st.container(horizontal=True)
    for item in run_views.export_downloads(export):
        row.download_button(
            item["label"], partial(run_views.file_bytes, item["path"]), item["file_name"],
            item["mime"], key=f"download_{item['file_name']}", icon=":material/download:",
            on_click="ignore",
        )  # fmt: skip
