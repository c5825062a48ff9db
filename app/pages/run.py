"""Run: one finished run in depth — summary, evaluation (confusion matrix, per-class metrics, the
images behind any cell) and a verified export to download."""

from __future__ import annotations

from functools import partial
from typing import Any

import streamlit as st

from app import widgets
from app.views import run_page as run_views
from core.errors import StudioError
from core.runs.export import FORMATS, export_run

st.title("Run")
store = widgets.job_queue().store
runs, labels = widgets.finished_runs(
    store, "No finished run yet: train one on the Train page first."
)
wanted = (st.query_params.get("run"), st.session_state.get(widgets.RUN_ID))
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
evaluation: dict[str, Any] | None
try:
    with st.spinner("Evaluating on the validation split (cached after the first time)…"):
        evaluation = widgets.evaluation(store, run_id)
except StudioError as exc:
    widgets.show_error(exc)
    evaluation = None
if evaluation is not None:
    names = evaluation["class_names"]
    true_key, pred_key, matrix_key = f"true_{run_id}", f"pred_{run_id}", f"matrix_{run_id}"
    pairs_key = f"pairs_{run_id}"

    def pick_cell() -> None:  # a click on the matrix sets the two class pickers
        cell = run_views.cell_from_selection(names, st.session_state.get(matrix_key))
        if cell:
            st.session_state[true_key], st.session_state[pred_key] = cell

    def pick_pair(
        pairs: list[dict[str, Any]],
    ) -> None:  # so does a row of the most-confused-pairs table
        rows = ((st.session_state.get(pairs_key) or {}).get("selection") or {}).get("rows") or []
        if rows and rows[0] < len(pairs):
            pair = pairs[rows[0]]
            st.session_state[true_key], st.session_state[pred_key] = pair["true"], pair["predicted"]

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
    view = widgets.confusion_view(store, run_id, evaluation, (true_class, pred_class))
    with left:
        if view["kind"] == "heatmap":
            st.caption("Rows: true class · columns: predicted class. Click a cell for its images.")
            st.plotly_chart(
                view["figure"], key=matrix_key, on_select=pick_cell, selection_mode="points",
                config={"displayModeBar": False},
            )  # fmt: skip
        else:  # too many classes to draw: the most confused pairs, and the matrix as a file
            st.caption(
                f"{len(names)} classes: too many to draw the confusion matrix. The most confused "
                "pairs, largest first (click a row to see its images):"
            )
            st.dataframe(
                view["pairs"], key=pairs_key, on_select=partial(pick_pair, view["pairs"]),
                selection_mode="single-row", hide_index=True, width="stretch", height=360,
                column_config={
                    "true": st.column_config.TextColumn("true class"),
                    "predicted": st.column_config.TextColumn("predicted as"),
                    "count": st.column_config.NumberColumn("images"),
                    "share": st.column_config.NumberColumn("share of true class", format="percent"),
                },
            )  # fmt: skip
            st.download_button(
                "Full confusion matrix (CSV)",
                partial(run_views.matrix_csv, names, evaluation["confusion_matrix"]),
                f"confusion-matrix-{run_id}.csv", "text/csv", key=f"matrix_csv_{run_id}",
                icon=":material/download:", on_click="ignore",
            )  # fmt: skip
    items, total = run_views.gallery(evaluation, true_class, pred_class)
    shown_true, shown_pred = (
        widgets.md_escape(name, inline=True) for name in (true_class, pred_class)
    )
    kind = "correctly classified" if true_class == pred_class else f"predicted as {shown_pred}"
    more = f" (the {len(items)} most confident shown)" if total > len(items) else ""
    st.markdown(f"**{total} validation images of {shown_true} {kind}**{more}")
    if items:
        st.image([widgets.thumbnail(item["path"], 128) for item in items],
                 caption=[widgets.md_escape(item["caption"], inline=True) for item in items],
                 width=128)  # fmt: skip
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
        widgets.show_error(exc)
if export := st.session_state.get(export_key):
    st.success(run_views.export_message(export))
    st.caption(f"Saved in {widgets.md_escape(export['path'])}")
    row = st.container(horizontal=True)
    for item in run_views.export_downloads(export):
        row.download_button(
            item["label"], partial(run_views.file_bytes, item["path"]), item["file_name"],
            item["mime"], key=f"download_{item['file_name']}", icon=":material/download:",
            on_click="ignore",
        )  # fmt: skip
