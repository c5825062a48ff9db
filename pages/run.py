"""Run: one finished run in depth — summary, evaluation (confusion matrix, per-class metrics, the
images behind any cell), a review of its likely mistakes (``app.run.review_panel``) and a verified
export to download; its name and its files. A failed run shows its error and the fix (a corrected
run to queue) or Resume."""

from __future__ import annotations

import streamlit as st

from app import loaders, navigation, widgets
from app.run import evaluation, export, manage, review_panel, trust
from app.views import run_page as run_views
from core.runs.store import FAILED, INTERRUPTED

navigation.through_router()  # first: the page runs inside the router
st.title("Run")
queue = loaders.job_queue()
store = queue.store
runs, labels = widgets.finished_runs(
    store, "No finished run yet: train one on the Train page first.", include_failed=True
)
manage.show_note()
wanted = (st.query_params.get("run"), st.session_state.get(navigation.RUN_ID))
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

manage.rename_or_delete(store, result)
if result["status"] in (FAILED, INTERRUPTED):
    manage.ended_without_model(queue, result)
    st.stop()
evaluation.render(store, run_id)
review_panel.render(queue, result)  # likely mistakes: relabel, exclude, keep, retrain
trust.render(queue, result)  # leakage, calibration, TTA, trackers
export.render(store, result)
