"""Train: configure a run (backbone, weights, mode, hyper-parameters), launch it and watch it.

The form lives in the session AND in the runs folder's draft (``core.runs.drafts``): a browser
refresh or a server restart shows it as it was left, never silently the defaults.
"""

from __future__ import annotations

import streamlit as st

from app import loaders, monitor, navigation
from app.train import form
from app.train.tools import best_model_search, restore_class_weight

navigation.through_router()  # first: the page runs inside the router
st.title("Train")
queue = loaders.job_queue()
form.restore_train_form()  # before any widget: the draft's values, not the defaults
restore_class_weight()

setup, watch = st.columns([5, 7], gap="large")
with setup:  # the page's own scroll: no inner scroll box cutting the section headings
    config = form.render(queue)
with watch, st.container(key="monitor_panel"):
    monitor.follow_run(queue)  # kept in view while the form scrolls (``monitor.STICKY_MONITOR``)
st.html(monitor.STICKY_MONITOR)

best_model_search(config)
