"""Home: what the studio does, a one-click default run, the job queue and recent runs."""

from __future__ import annotations

import streamlit as st

from app import loaders, navigation, widgets
from app.home import queue as queue_panel
from app.views.text import md_escape
from core.config import RunConfig
from core.data.names import display_name
from core.errors import StudioError

navigation.through_router()  # first: the page runs inside the router
st.title("🧠 Transfer Studio")
st.markdown(
    "Teach a pretrained image model a new task, on this computer and offline.  \n"
    "**Data** — pick a built-in set, a folder, a zip or a Kaggle dataset, or build your own "
    "class by class, and check its health.  \n"
    "**Train** — choose a backbone and a transfer mode, watch it learn, **Compare** the modes, "
    "then **Predict** on your own images."
)

queue = loaders.job_queue()
for problem in queue.store.problems():  # a damaged run store repaired, or a row unreadable
    st.warning(md_escape(problem))
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
        st.session_state[navigation.RUN_ID] = run_id
        st.success(f"Queued run `{run_id}`.")
        st.page_link(navigation.TRAIN, label="Watch it train", icon=":material/monitoring:")
    except StudioError as exc:
        widgets.show_error(exc)

queue_panel.render(queue)
