"""Home: what the studio does, a one-click default run, the job queue and recent runs."""

from __future__ import annotations

import streamlit as st

from app import widgets
from app.views import dashboard
from core.config import RunConfig
from core.data.names import display_name
from core.errors import StudioError
from core.runs.store import ACTIVE_STATUSES, RUNNING

st.title("🧠 Transfer Studio")
st.markdown(
    "Teach a pretrained image model a new task, on this computer and offline.  \n"
    "**Data** — pick a built-in set, a folder, a zip or a Kaggle dataset, or build your own "
    "class by class, and check its health.  \n"
    "**Train** — choose a backbone and a transfer mode, watch it learn, **Compare** the modes, "
    "then **Predict** on your own images."
)

queue = widgets.job_queue()
for problem in queue.store.problems():  # a damaged run store repaired, or a row unreadable
    st.warning(widgets.md_escape(problem))
default = RunConfig()
with st.container(border=True):
    left, right = st.columns([1, 3], vertical_alignment="center")
    clicked = left.button(
        "Train the default",
        type="primary",
        icon=":material/rocket_launch:",
        key="train_default",
        on_click=widgets.new_click_key,
        args=("train_default",),
        width="stretch",
    )
    right.markdown(
        f"**{default.backbone}** with ImageNet weights (bundled, works offline) on the built-in "
        f"*{display_name(default.data)}* set, mode *{default.mode.replace('_', ' ')}*, "
        f"{default.planned_epochs} epochs.",
        help=f"Data source {default.data}",
    )
if clicked:
    try:
        run_id = queue.submit(default, key=widgets.click_key("train_default"))
        st.session_state[widgets.RUN_ID] = run_id
        st.success(f"Queued run `{run_id}`.")
        st.page_link(widgets.TRAIN, label="Watch it train", icon=":material/monitoring:")
    except StudioError as exc:
        widgets.show_error(exc)

active_now = bool(queue.store.list_runs(ACTIVE_STATUSES))


@st.fragment(run_every=widgets.poll_interval(active_now))
def queue_panel(polling: bool) -> None:
    """The job queue (live while something is active) and the recent runs."""
    if polling:
        widgets.ensure_worker(queue)  # a worker killed mid-run: the next queued run still starts
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
                widgets.md_escape(dashboard.run_choice_label(run), inline=True),
                help=widgets.md_escape(dashboard.run_details(run)),
            )
            eta = f" · ETA {progress['eta_text']}" if run["status"] == RUNNING else ""
            cols[0].progress(progress["fraction"], text=f"{progress['text']}{eta}")
            if cols[1].button(
                "Stop", key=f"stop_{run_id}", icon=":material/stop:", width="stretch"
            ):
                queue.stop(run_id)
            if run["status"] == RUNNING and progress["step"]:  # curves once batches flow
                st.plotly_chart(
                    widgets.queue_chart(queue.store, run_id), key=f"queue_chart_{run_id}"
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
        f"The runs folder uses {used} on disk: {widgets.md_escape(queue.store.root)}",
        help="Models, checkpoints, exports and the run index.",
    )


queue_panel(active_now)
