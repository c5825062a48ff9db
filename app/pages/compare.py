"""Compare: finished runs side by side — curves, a table with the best marked, accuracy vs time."""

from __future__ import annotations

import streamlit as st

from app import widgets
from app.views import charts, dashboard

st.title("Compare")
store = widgets.job_queue().store
finished = dashboard.finished_runs(store.list_runs())[:60]
if not finished:
    st.info("No finished runs yet. On the Train page, **Compare all modes** queues one per mode.")
    st.page_link(widgets.TRAIN, label="Go to Train", icon=":material/model_training:")
    st.stop()

results = {r["run_id"]: store.result(r["run_id"]) for r in finished}
labels = {r["run_id"]: dashboard.run_choice_label(r) for r in finished}
chosen = st.multiselect(
    "Runs to compare",
    list(results),
    default=dashboard.default_compare_selection(list(results.values())),
    format_func=labels.__getitem__,
    key="compare_runs",
)
selected = [results[run_id] for run_id in chosen]
if not selected:
    st.info("Pick at least one run.")
    st.stop()

st.plotly_chart(charts.compare_curves(selected), key="compare_curves")
rows = dashboard.compare_table(selected)
best = next((row for row in rows if row["best"]), None)
if best:
    mode, backbone, run = (
        widgets.md_escape(best[k], inline=True) for k in ("mode", "backbone", "run")
    )
    st.success(
        f"★ Best: **{mode}** on {backbone} — validation accuracy "
        f"{best['best val accuracy']:.3f} in {best['wall time (s)']} s ({run})."
    )
st.dataframe(
    rows,
    hide_index=True,
    width="stretch",
    column_config={
        "best": st.column_config.TextColumn("", width="small"),
        "best val accuracy": st.column_config.ProgressColumn(
            "best val accuracy", min_value=0.0, max_value=1.0, format="%.3f"
        ),
        "trainable params": st.column_config.NumberColumn(format="localized"),
    },
)
st.plotly_chart(charts.accuracy_vs_time(selected), key="accuracy_vs_time")
