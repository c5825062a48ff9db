"""Run: one finished run in depth — summary, evaluation (confusion matrix, per-class metrics, the
images behind any cell), a review of its likely mistakes (``app.review_panel``) and a verified
export to download; its name and its files. A failed run shows its error and the fix (a corrected
run to queue) or Resume."""

from __future__ import annotations

from functools import partial
from typing import Any

import streamlit as st

from app import review_panel, widgets
from app.views import run_page as run_views
from core.errors import StudioError
from core.runs.export import FORMATS, ExportStep, export_all, export_run
from core.runs.store import FAILED, INTERRUPTED, MAX_RUN_NAME

DELETING = "run_page_delete"  # session key: the run whose deletion awaits a confirmation
NOTE = "run_page_note"  # session key: a message to show after the rerun a change needs

st.title("Run")
queue = widgets.job_queue()
store = queue.store
runs, labels = widgets.finished_runs(
    store, "No finished run yet: train one on the Train page first.", include_failed=True
)
if note := st.session_state.pop(NOTE, None):
    st.success(note)
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
if result["phases"]:
    st.dataframe(
        run_views.phase_rows(result), hide_index=True, width="stretch", column_order=phase_columns
    )

with st.expander("Rename or delete this run", icon=":material/edit:"):
    name_key = f"name_{run_id}"
    st.session_state.setdefault(name_key, result["name"])
    cols = st.columns([4, 1], vertical_alignment="bottom")
    name = cols[0].text_input("Name", key=name_key, max_chars=MAX_RUN_NAME)
    if cols[1].button("Save name", key="rename", icon=":material/save:", width="stretch"):
        try:
            saved = store.rename(run_id, name)
        except StudioError as exc:
            widgets.show_error(exc)
        else:
            st.session_state[NOTE] = (
                f"Renamed the run to “{widgets.md_escape(saved, inline=True)}”."
            )
            st.session_state.pop(name_key, None)  # the stored (trimmed) name shows next
            st.rerun()  # the run selector's label shows the new name
    size = run_views.size_text(store.run_bytes(run_id))
    if st.session_state.get(DELETING) != run_id:
        if st.button(f"Delete this run ({size})", key="delete", icon=":material/delete:"):
            st.session_state[DELETING] = run_id
            st.rerun()
    else:
        st.warning(
            f"Delete run “{widgets.md_escape(result['name'], inline=True)}” and its files "
            f"({size}: model, checkpoints, exports, evaluation)? This cannot be undone."
        )
        row = st.container(horizontal=True)
        if row.button("Yes, delete it", key="delete_confirm", icon=":material/delete_forever:",
                      type="primary"):  # fmt: skip
            try:
                store.delete_run(run_id)
            except StudioError as exc:
                widgets.show_error(exc)
            else:
                st.session_state.pop(DELETING, None)
                st.session_state.pop("run_page_run", None)
                if st.session_state.get(widgets.RUN_ID) == run_id:
                    st.session_state.pop(widgets.RUN_ID, None)
                del st.query_params["run"]
                st.session_state[NOTE] = (
                    f"Deleted run “{widgets.md_escape(result['name'], inline=True)}” and its files."
                )
                st.rerun()
        if row.button("Cancel", key="delete_cancel"):
            st.session_state.pop(DELETING, None)
            st.rerun()

if result["status"] in (FAILED, INTERRUPTED):
    # No model to evaluate or export: what went wrong, and what to do about it.
    said = st.error if result["status"] == FAILED else st.warning
    said(widgets.md_escape(result["error"] or f"The run {result['status']} (no message recorded)."))
    if widgets.run_fixes(queue, result, "run_page"):
        st.caption(
            f"**Resume** continues from the end of epoch {result['epochs_done']} "
            "(the last one saved)." if result["epochs_done"] else "**Resume** starts it again."
        )  # fmt: skip
        if st.button("Resume", key="run_page_resume", icon=":material/replay:"):
            try:
                queue.resume(run_id)
            except StudioError as exc:
                widgets.show_error(exc)
            else:
                st.session_state[widgets.RUN_ID] = run_id
                st.success("Resumed: the run is queued again.")
                st.page_link(widgets.TRAIN, label="Watch it train", icon=":material/monitoring:")
    st.stop()

st.subheader("Evaluate", divider="gray")
evaluation: dict[str, Any] | None
try:
    # Evaluated by the worker as the run completed: read from the run folder. An older run (or
    # one whose evaluation failed then) is evaluated here, once.
    with st.spinner("Evaluating on the validation split (once per model)…"):
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

review_panel.render(queue, result)  # likely mistakes: relabel, exclude, keep, retrain

st.subheader("Export", divider="gray")
st.caption(
    "Each export is loaded by the runtime you would deploy it with (Keras, TensorFlow, LiteRT, "
    "ONNX Runtime) in a separate process without Transfer Studio and checked against this "
    "model on validation images. A model card is written with every export."
)
cols = st.columns([4, 2, 2], vertical_alignment="bottom")
fmt = cols[0].radio("Format", FORMATS, horizontal=True, key="export_format")
quantize = cols[1].checkbox(
    "Quantize", key="export_quantize", disabled=fmt != "tflite",
    help="tflite only: dynamic-range quantization, int8 weights, about 4x smaller",
)  # fmt: skip
# One result per format (and quantization): switching the format never shows another's result.
export_key = f"export_{run_id}_{fmt}_{quantize and fmt == 'tflite'}"
all_key = f"export_{run_id}_all"
if cols[2].button("Export and verify", key="export", icon=":material/ios_share:", type="primary"):
    try:
        with st.spinner(f"Exporting {fmt} and checking it in its runtime…"):
            st.session_state[export_key] = export_run(
                store, run_id, fmt, quantize=quantize and fmt == "tflite"
            )
    except StudioError as exc:
        widgets.show_error(exc)
if st.button(
    "Export every format and compare them", key="export_all", icon=":material/table_chart:",
    help="All formats into one folder, each verified in its runtime: size, latency, agreement "
    "and accuracy side by side, with the model card and one zip to download",
):  # fmt: skip
    # Where the export is (format n/7, converting or verifying) and each format's row as it
    # finishes: the whole export takes minutes.
    status = st.status("Exporting every format…", expanded=True)
    bar = status.progress(0.0)
    finished: list[dict[str, Any]] = []
    table = status.empty()

    def show(step: ExportStep) -> None:
        done = step.index if step.step == "done" else max(step.index - 1, 0)
        bar.progress(done / step.total, text=step.text)
        if step.row is not None:
            finished.append(step.row)
            table.dataframe(run_views.export_table(finished), hide_index=True)

    try:
        st.session_state[all_key] = export_all(store, run_id, progress=show)
        table.empty()  # the full table follows below
        status.update(label="Every format exported and verified", state="complete", expanded=False)
    except StudioError as exc:
        status.update(label="The export stopped", state="error")
        widgets.show_error(exc)


def _downloads(export: dict[str, Any], key: str) -> None:
    """The export's files, its model card and everything as one zip, as download buttons."""
    row = st.container(horizontal=True)
    row.download_button(
        "Download all (zip)", partial(run_views.export_zip, export["files"],
                                      run_views.export_zip_name(result).removesuffix(".zip")),
        run_views.export_zip_name(result), "application/zip", key=f"download_all_{key}",
        icon=":material/folder_zip:", on_click="ignore", type="primary",
    )  # fmt: skip
    for item in run_views.export_downloads(export):
        row.download_button(
            item["label"], partial(run_views.file_bytes, item["path"]), item["file_name"],
            item["mime"], key=f"download_{key}_{item['file_name']}", icon=":material/download:",
            on_click="ignore",
        )  # fmt: skip


def _card(export: dict[str, Any]) -> None:
    try:
        with open(export["card"], encoding="utf-8") as handle:
            card = handle.read()
    except OSError:  # the folder was deleted since: the downloads above say as much
        return
    with st.expander("Model card (model_card.md)"):
        st.markdown(run_views.card_for_page(card))


if export := st.session_state.get(export_key):
    st.success(run_views.export_message(export))
    st.caption(f"Saved in {widgets.md_escape(export['folder'])}")
    _downloads(export, "one")
    _card(export)
if everything := st.session_state.get(all_key):
    st.markdown("**Every format, verified in its runtime** (latency: one image on this CPU)")
    st.dataframe(run_views.export_table(everything["formats"]), hide_index=True, key="export_table")
    for item in everything["skipped_formats"]:
        st.warning(f"Not exported: {item['format']}, it {item['reason']}.")
    st.caption(f"Saved in {widgets.md_escape(everything['path'])}")
    _downloads(everything, "all")
    _card(everything)
