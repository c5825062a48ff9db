"""Compare: finished runs side by side — curves, a table with the best marked, accuracy vs time.

``?runs=ID,ID`` (the Run page's "Compare before and after" link) preselects those runs; one still
training is named and joins the comparison once it finishes (the link survives a refresh).
"""

from __future__ import annotations

import streamlit as st

from app import loaders, navigation
from app.views import charts, dashboard
from app.views import review as review_views
from app.views.labels import mode_label
from app.views.text import md_escape

COMPARE_TABLE_WIDTH = 820  # px of the main column in a 1280 px window with the sidebar open
COMPARE_COLUMNS = (
    "best", "name", "backbone", "mode", "best val accuracy", "epochs", "wall time (s)",
    "trainable params", "model size (MB)",
)  # fmt: skip

navigation.through_router()  # first: the page runs inside the router
st.title("Compare")
store = loaders.job_queue().store
asked = st.query_params.get(review_views.COMPARE_PARAM)
runs = store.list_runs()
finished = dashboard.finished_runs(runs)[:60]
known = {r["run_id"] for r in runs}  # ids in the link that are no run are ignored
if waiting := [
    run_id
    for run_id in review_views.pending_runs(asked, [r["run_id"] for r in finished])
    if run_id in known
]:
    st.info(
        f"Run {', '.join(f'`{run_id}`' for run_id in waiting)} is not finished yet: it joins "
        "this comparison once it has (refresh the page then)."
    )
if not finished:
    st.info("No finished runs yet. On the Train page, **Compare all modes** queues one per mode.")
    st.page_link(navigation.TRAIN, label="Go to Train", icon=":material/model_training:")
    st.stop()

results = {r["run_id"]: store.result(r["run_id"]) for r in finished}
labels = {r["run_id"]: dashboard.run_choice_label(r) for r in finished}
chosen = st.multiselect(
    "Runs to compare",
    list(results),
    default=review_views.compare_preselection(asked, list(results))
    or dashboard.default_compare_selection(list(results.values())),
    format_func=labels.__getitem__,
    key="compare_runs",
)
selected = [results[run_id] for run_id in chosen]
if not selected:
    st.info("Pick at least one run.")
    st.stop()

st.plotly_chart(charts.compare_curves(selected), key="compare_curves")
rows = dashboard.compare_table(selected)
names = {r["run_id"]: r["name"] for r in selected}
for row in rows:  # the name people gave (or the readable default); the id stays in the selector
    row["name"] = names.get(row["run"]) or row["run"]
    row["mode"] = mode_label(row["mode"])
best = next((row for row in rows if row["best"]), None)
if best:
    mode, backbone, name = (md_escape(best[k], inline=True) for k in ("mode", "backbone", "name"))
    st.success(
        f"★ Best: **{name}** ({mode} on {backbone}) — validation accuracy "
        f"{best['best val accuracy']:.3f} in {best['wall time (s)']} s."
    )
# Fixed widths that add up to less than the page's width at 1280 px (about 820 px: see
# COMPARE_TABLE_WIDTH), so no horizontal scroll bar hides the last column.
st.dataframe(
    rows,
    hide_index=True,
    width="stretch",
    column_order=COMPARE_COLUMNS,
    column_config={
        "best": st.column_config.TextColumn("", width=28),
        "name": st.column_config.TextColumn("run", width=130, help="The run's name"),
        "backbone": st.column_config.TextColumn("backbone", width=136),
        "mode": st.column_config.TextColumn("mode", width=118),
        "best val accuracy": st.column_config.ProgressColumn(
            "val accuracy",
            min_value=0.0,
            max_value=1.0,
            format="%.3f",
            width=104,
            help="Best validation accuracy over the run's epochs",
        ),
        "epochs": st.column_config.NumberColumn("epochs", width=56),
        "wall time (s)": st.column_config.NumberColumn("time (s)", width=68),
        "trainable params": st.column_config.NumberColumn(
            "trainable", format="compact", width=78, help="Trainable parameters (largest phase)"
        ),
        "model size (MB)": st.column_config.NumberColumn("size (MB)", width=72),
    },
)
st.plotly_chart(charts.accuracy_vs_time(selected), key="accuracy_vs_time")
