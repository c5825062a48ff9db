"""The run monitor: the Train page follows the queue's run (progress, ETA, curves, Stop, Resume,
the fixes a failed run needs), Home charts the running job; both poll only while a run is active.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import streamlit as st

from app.loaders import ensure_worker
from app.navigation import FOLLOWED_ACTIVE, RUN_ID, TRAIN
from app.views.labels import status_badge
from app.views.text import md_escape
from app.widgets import show_error
from core.errors import StudioError

if TYPE_CHECKING:
    from app.views.dashboard import Progress
    from core.runs.store import BatchRecord, RunResult, RunStore
    from core.training.jobs import JobQueue

CURVES = "training_curves_cache"  # session key: the followed run's chart (see ``_live_curves``)
PIN = "pin_run"  # widget key: keep the monitor on the chosen run
QUEUE_CHARTS = "queue_charts"  # session key: the Home queue's chart per run (``queue_chart``)

# How often a live fragment polls. Each poll costs the browser ~50-100 ms of CPU however little
# changed (on the cores a worker trains on): every 3 s still moves the progress and ETA on
# visibly; a followed run's chart polls apart, less often (``charts.CURVES_REFRESH_S``).
POLL_SECONDS = 3.0


# The Train page's form is longer than a laptop screen: its monitor column stays in view while
# the form scrolls (Launch sits at the form's end), instead of an inner scroll box for the form.
STICKY_MONITOR = """<style>
div:has(> .st-key-monitor_panel) { position: sticky; top: 3.75rem; z-index: 2; }
</style>"""


def poll_interval(active: bool) -> float | None:
    """``run_every`` for a live fragment: poll only while something is queued or running."""
    return POLL_SECONDS if active else None


def follow_run(queue: JobQueue) -> None:
    """Pick the run to watch and monitor it: the one training now, moving on to the next run of
    the queue when it finishes (``dashboard.followed_run``), unless "Pin this run" is on."""
    from app.views import dashboard
    from core.runs.store import ACTIVE_STATUSES

    runs = queue.store.list_runs()
    by_id = {r["run_id"]: r for r in runs}
    run_id = dashboard.followed_run(
        runs,
        st.session_state.get(RUN_ID),
        bool(st.session_state.get(FOLLOWED_ACTIVE)),
        bool(st.session_state.get(PIN)),
    )
    if run_id is None:
        st.info("No runs yet. Configure one on the left and click **Launch**.")
        return
    ids = list(by_id)
    labels = {r["run_id"]: dashboard.run_short_label(r) for r in runs}
    run_id = st.selectbox(
        "Run",
        ids,
        index=ids.index(run_id),
        format_func=labels.__getitem__,
        help=md_escape(dashboard.run_details(by_id[run_id])),  # tooltips render Markdown
    )
    run = by_id[run_id]
    info, pin = st.columns([3, 1], vertical_alignment="center")
    info.caption(
        md_escape(
            f"{run.get('backbone')} · data {dashboard.data_label(run.get('data') or '')} · "
            f"run {run_id}",
            inline=True,
        )
    )
    pin.checkbox(
        "Pin",
        key=PIN,
        help="Pin this run: keep showing it. Off: when it finishes, the monitor moves on to "
        "the run the queue trains next (e.g. the next mode of Compare all modes).",
    )
    st.session_state[RUN_ID] = run_id
    status = by_id[run_id]["status"]
    st.session_state[FOLLOWED_ACTIVE] = status in ACTIVE_STATUSES
    run_monitor(queue, run_id, status)


def run_monitor(queue: JobQueue, run_id: str, shown_status: str | None = None) -> None:
    """Live view of one run: progress, ETA, curves, Stop; polls only while the run is active.

    ``shown_status`` is the status the rest of the page was drawn with. Only what moves polls
    (the metrics and the progress bar every ``POLL_SECONDS``, the chart every
    ``charts.CURVES_REFRESH_S``): each poll resends all it draws and the browser redraws it, on
    the cores the worker trains on. The badge, Stop and the device are drawn with the page, which
    is redrawn once when the run's status or phase moves on (queued → preparing → training →
    done). The badge, the metrics and the progress text come from one ``progress_summary``.
    """
    from app.views import charts, dashboard
    from core.runs.store import ACTIVE_STATUSES

    store = queue.store
    initial = shown_status or store.status(run_id)
    polling = initial in ACTIVE_STATUSES
    result = store.result(run_id)
    recent = store.batch_sample(run_id, 1, dashboard.ETA_WINDOW)
    stopping = store.stop_requested(run_id)
    shown = dashboard.progress_summary(result, recent, stopping=stopping)
    active = result["status"] in ACTIVE_STATUSES
    icon, color = status_badge(result["status"])
    # wide enough for "Resume" with its icon at 1280 px (a [4, 1] split cut it to "Resu…")
    top = st.columns([3, 2], vertical_alignment="center")
    phase = f" · {shown['phase_label']}" if active and shown["phase_label"] else ""
    top[0].badge(f"{result['status']}{phase}", icon=icon, color=color)
    if active:
        # on_click: the flag is set before the page is drawn again, so the badge and the
        # progress say "stopping…" with the click's own rerun, not at the next poll.
        top[1].button(
            "Stopping…" if stopping else "Stop",
            icon=":material/stop:",
            key="stop",
            width="stretch",
            disabled=stopping,
            on_click=_stop,
            args=(queue, run_id),
        )

    @st.fragment(run_every=poll_interval(polling))
    def monitor() -> None:
        if polling:  # a killed worker's run shows interrupted, the next queued run gets one
            ensure_worker(queue)
        now = store.result(run_id)
        # The first and the recent rows are all the progress summary reads (speed, ETA), however
        # long the run: not every row each poll.
        p = dashboard.progress_summary(
            now,
            store.batch_sample(run_id, 1, dashboard.ETA_WINDOW),
            stopping=stopping or store.stop_requested(run_id),
        )
        if now["status"] != initial or (polling and p["phase_label"] != shown["phase_label"]):
            st.rerun()  # started, finished or a new phase: redraw the page (badge, polling)
        _progress_metrics(now, p)

    monitor()
    if result.get("device"):  # which worker's device: CPU, GPU:0, 2 x GPU (mirrored)
        where = "Training" if active else "Trained"
        st.caption(f"{where} on {md_escape(result['device'], inline=True)}")
    if not active:
        _run_ended(queue, result, shown, top[1])

    # The chart polls in a fragment of its own, less often than the progress. Until the first
    # batch it polls as often as the progress, so the first curves show at once; then the page
    # is redrawn once and the chart polls at its own pace.
    waiting = polling and not recent
    every = (POLL_SECONDS if waiting else charts.CURVES_REFRESH_S) if polling else None

    @st.fragment(run_every=every)
    def curves() -> None:
        last = store.batch_sample(run_id, 0, 1)
        if waiting and last:
            st.rerun()  # the first batch: draw it, and the chart at its own pace from now on
        chart = _live_curves(store, store.result(run_id), last[-1] if last else None)
        st.plotly_chart(chart, key="training_curves")

    curves()


def _stop(queue: JobQueue, run_id: str) -> None:
    """``on_click`` of Stop."""
    queue.stop(run_id)
    st.toast("Stopping: the batch in flight finishes, then the run ends.")


def _progress_metrics(result: RunResult, p: Progress) -> None:
    """The monitor's four metrics and progress bar: where an active run is, or where it ended."""
    from app.views import dashboard
    from core.runs.store import ACTIVE_STATUSES

    cols = st.columns(4)
    speed = p["images_per_s"]
    if result["status"] in ACTIVE_STATUSES:
        for col, metric in zip(cols, dashboard.monitor_metrics(p), strict=True):
            col.metric(metric.label, metric.value)
    else:  # where it ended, in the words of the message below: no stale "step 1/2"
        cols[0].metric("Epochs done", f"{p['epochs_done']}/{p['planned_epochs']}")
        acc = result["best_val_accuracy"]
        cols[1].metric("Best val acc", f"{acc:.3f}" if acc is not None else "–")
        cols[2].metric("Images/s", f"{speed:.0f}" if speed else "–")
        cols[3].metric("Wall time", dashboard.format_duration(p["elapsed_s"]))
    st.progress(p["fraction"], text=p["text"])


def _run_ended(queue: JobQueue, result: RunResult, p: Progress, slot: Any) -> None:
    """How a finished run ended: success, or the error or stop with Resume (in ``slot``) or
    the fixes a failure Resume cannot get past (weights offline) needs instead."""
    from app.views import dashboard
    from core.runs.store import COMPLETED, FAILED, STOPPED
    from core.training.jobs import RESUMABLE

    can_resume = True
    if result["status"] == FAILED:
        st.error(md_escape(result["error"]) if result["error"] else "The run failed.")
        can_resume = run_fixes(queue, result, "train", follow=True)
    if (
        result["status"] in RESUMABLE
        and can_resume
        and slot.button("Resume", icon=":material/replay:", key="resume", width="stretch")
    ):
        try:
            queue.resume(result["run_id"])
            st.rerun()
        except StudioError as exc:
            show_error(exc)
    if result["status"] == COMPLETED:
        acc = result["best_val_accuracy"]
        st.success(
            f"Completed: best validation accuracy {acc:.3f}" if acc is not None else "Completed."
        )
    else:
        where = (
            dashboard.stopped_text(p["epoch"], p["step"], p["steps_per_epoch"]).capitalize()
            if result["status"] == STOPPED and p["epoch"]
            else f"Run {result['status']}"
        )
        st.warning(
            f"{where}: {p['epochs_done']} of {p['planned_epochs']} epochs finished. "
            f"{md_escape(result['error'] or '')} **Resume** continues from the end of epoch "
            f"{p['epochs_done']}."
        )


def run_fixes(queue: JobQueue, result: RunResult, where: str, follow: bool = False) -> bool:
    """The fix buttons of a failed run that Resume cannot get past (ImageNet weights offline):
    each queues a corrected copy (``app.views.run_page.run_actions``). Returns whether Resume
    can help, for the caller's Resume button. ``where`` keeps the widget keys apart per page;
    ``follow`` (the Train page's monitor) redraws the page on the new run once it is queued."""
    from app.views.run_page import run_actions
    from core.models.backbones import DEFAULT_BACKBONE, STATUS_NEEDS_NETWORK, get_backbone

    try:
        available = get_backbone(str(result["config"].get("backbone"))).weights_status()
        weights_available = available != STATUS_NEEDS_NETWORK
    except StudioError:
        weights_available = True  # an unknown backbone: the error says so, resume decides
    offline = (DEFAULT_BACKBONE, get_backbone(DEFAULT_BACKBONE).display_name)
    actions = run_actions(result, weights_available, offline)
    run_id = result["run_id"]
    if actions["fixes"]:  # it needed the network: the file can be carried in instead
        from app.train.weights_upload import weights_uploader

        config = result["config"]
        size = config.get("image_size")
        if weights_uploader(
            str(config.get("backbone")), f"{where}_weights_{run_id}", size if size else None
        ):
            st.rerun()  # the weights are here now: Resume replaces the fixes
    for i, fix in enumerate(actions["fixes"]):
        if st.button(
            fix["label"], key=f"{where}_fix{i}_{run_id}", help=fix["help"],
            icon=":material/build:", type="primary" if i == 0 else "secondary",
        ):  # fmt: skip
            try:
                # One key per run and fix: a double click or a rerun queues it once.
                new_id = queue.submit(fix["config"], key=f"fix{i}-{run_id}")
            except StudioError as exc:
                show_error(exc)
                continue
            st.session_state[RUN_ID] = new_id
            if follow:
                st.rerun()  # the monitor follows the new run
            st.success(f"Queued run `{new_id}`: {md_escape(fix['label'].lower(), inline=True)}.")
            st.page_link(TRAIN, label="Watch it train", icon=":material/monitoring:")
    return bool(actions["resume"])


def queue_chart(store: RunStore, run_id: str) -> Any:
    """The Home queue's compact live chart of a running job, from a thinned sample of its
    batches (``batch_sample``: cheap however long the run). Kept in the session and rebuilt at
    most every ``charts.CURVES_REFRESH_S`` seconds: a poll that finds the same figure sends the
    same chart, which the browser does not redraw (each redraw costs the cores training uses)."""
    from app.views import charts
    from app.views.dashboard import sparkline

    cache = st.session_state.setdefault(QUEUE_CHARTS, {})
    now = time.monotonic()
    cached = cache.get(run_id)
    if cached is not None and now - cached[0] < charts.CURVES_REFRESH_S:
        return cached[1]
    batches = store.batch_sample(run_id, 120, 1)
    figure = sparkline(batches)
    cache.clear()  # only the running job is charted: forget finished ones
    if len(batches) >= 2:  # an empty chart is redrawn at the next poll, not 5 s later
        cache[run_id] = (now, figure)
    return figure


def _live_curves(store: RunStore, result: RunResult, last: BatchRecord | None) -> Any:
    """``charts.training_curves`` of a followed run, kept in the session and rebuilt only when
    its ``charts.curves_key`` moved on (a status, a finished epoch, a step bucket): otherwise
    the same figure is sent. The chart reads a thinned sample of the batches, not every row."""
    from app.views import charts

    key = charts.curves_key(result, last)
    cached = st.session_state.get(CURVES)
    if cached is not None and cached[0] == key:
        return cached[1]
    batches = store.batch_sample(result["run_id"], charts.LIVE_BATCH_POINTS - 1, 1) if last else []
    figure = charts.training_curves(result, batches)
    st.session_state[CURVES] = (key, figure)
    return figure
