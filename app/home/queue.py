"""Home's job queue (live while something is active: progress, ETA, Stop, a small chart of the
running job) and the recent runs with the runs folder's size on disk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from app import loaders, monitor
from app.views import dashboard
from app.views.text import md_escape
from core.runs.store import ACTIVE_STATUSES, RUNNING

if TYPE_CHECKING:
    from core.training.jobs import JobQueue


def render(queue: JobQueue) -> None:
    """The queue and the recent runs, polling only while a run is queued or training."""
    active_now = bool(queue.store.list_runs(ACTIVE_STATUSES))
    st.fragment(run_every=monitor.poll_interval(active_now))(_panel)(queue, active_now)


def _panel(queue: JobQueue, polling: bool) -> None:
    """The job queue (live while something is active) and the recent runs."""
    if polling:
        loaders.ensure_worker(queue)  # a worker killed mid-run: the next queued run still starts
    runs = queue.store.list_runs()
    active = [r for r in runs if r["status"] in ACTIVE_STATUSES]
    if polling and not active:
        st.rerun()  # everything finished: redraw once without polling
    st.subheader("Job queue")
    if not active:
        st.caption("Nothing is training. Launch a run here or on the Train page.")
    # running first, then queued runs in the order the worker takes them (oldest first)
    for run in sorted(active, key=lambda r: (r["status"] != RUNNING, r["created_at"])):
        run_id = run["run_id"]
        result = queue.store.result(run_id)
        # the first and the recent batches are all the summary reads (not every row, each poll)
        progress = dashboard.progress_summary(
            result, queue.store.batch_sample(run_id, 1, dashboard.ETA_WINDOW)
        )
        with st.container(border=True):
            cols = st.columns([4, 1], vertical_alignment="center")
            cols[0].markdown(
                md_escape(dashboard.run_choice_label(run), inline=True),
                help=md_escape(dashboard.run_details(run)),
            )
            eta = f" · ETA {progress['eta_text']}" if run["status"] == RUNNING else ""
            cols[0].progress(progress["fraction"], text=f"{progress['text']}{eta}")
            if cols[1].button(
                "Stop", key=f"stop_{run_id}", icon=":material/stop:", width="stretch"
            ):
                queue.stop(run_id)
            if run["status"] == RUNNING and progress["step"]:  # curves once batches flow
                st.plotly_chart(
                    monitor.queue_chart(queue.store, run_id), key=f"queue_chart_{run_id}"
                )
    st.subheader("Recent runs")
    rows = dashboard.runs_table(runs)
    if rows:
        st.dataframe(
            rows,
            hide_index=True,
            width="stretch",
            column_config={
                "name": st.column_config.TextColumn(help="The run's name: its data and number"),
                "data": st.column_config.TextColumn(
                    help="The data's name; its full source is in the last column"
                ),
                "id": st.column_config.TextColumn(help="The end of the run id (full: run id)"),
                "run": st.column_config.TextColumn("run id"),
            },
        )
    else:
        st.info("No runs yet: click **Train the default** above.")
    try:
        used = dashboard.format_bytes(queue.store.disk_usage())
    except OSError:  # a folder removed while it was being measured: say nothing wrong
        used = "–"
    st.caption(
        f"The runs folder uses {used} on disk: {md_escape(queue.store.root)}",
        help="Models, checkpoints, exports and the run index.",
    )
