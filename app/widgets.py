"""Streamlit helpers shared by the pages: the page list, the sidebar, the job queue, errors.

``streamlit_app.py`` routes with ``st.navigation(pages())``; the pages in ``app/pages`` call
these helpers and ``app.views`` (pure functions) for what they show.
"""

from __future__ import annotations

import gc
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from app.views.labels import phase_title, status_badge
from app.views.text import md_escape
from core.errors import StudioError
from core.paths import runs_root

if TYPE_CHECKING:
    from app.views.dashboard import Progress
    from core.config import RunConfig
    from core.runs.store import BatchRecord, RunResult, RunStore, RunSummary
    from core.training.jobs import JobQueue

DATA_SOURCE = "data_source"  # session key: the source chosen on the Data page
RUN_ID = "run_id"  # session key: the run the Train page follows
CURVES = "training_curves_cache"  # session key: the followed run's chart (see ``_live_curves``)
DRAFT = "train_draft_saved"  # session key: the Train form as last written to the draft
FOLLOWED_ACTIVE = "followed_was_active"  # session key: the followed run was active when shown
PIN = "pin_run"  # widget key: keep the monitor on the chosen run
QUEUE_CHARTS = "queue_charts"  # session key: the Home queue's chart per run (``queue_chart``)
HOME, DATA, TRAIN, COMPARE, PREDICT, RUN = (
    f"app/pages/{name}.py" for name in ("home", "data", "train", "compare", "predict", "run")
)
PAGES = (  # path (relative to streamlit_app.py), title, icon
    (HOME, "Home", ":material/home:"),
    (DATA, "Data", ":material/photo_library:"),
    (TRAIN, "Train", ":material/model_training:"),
    (COMPARE, "Compare", ":material/compare_arrows:"),
    (PREDICT, "Predict", ":material/image_search:"),
    (RUN, "Run", ":material/analytics:"),
)
# How often a live fragment polls. Each poll costs the browser ~50-100 ms of CPU however little
# changed (on the cores a worker trains on): every 3 s still moves the progress and ETA on
# visibly; a followed run's chart polls apart, less often (``charts.CURVES_REFRESH_S``).
POLL_SECONDS = 3.0
# Progress bars and metrics are redrawn at every poll while a run trains; their CSS transitions
# then animate each time, which costs a browser more than drawing them (~0.1 s of CPU per poll,
# measured in headless Chromium, on the cores the worker trains on). They jump instead.
LIVE_STYLE = """<style>
[data-testid="stProgress"] *, [data-testid="stMetric"] * {
  transition: none !important; animation: none !important;
}
.st-key-monitor_panel [data-testid="stMetricValue"] { font-size: 1.6rem; }
</style>"""
# The Train page's form is longer than a laptop screen: its monitor column stays in view while
# the form scrolls (Launch sits at the form's end), instead of an inner scroll box for the form.
STICKY_MONITOR = """<style>
div:has(> .st-key-monitor_panel) { position: sticky; top: 3.75rem; z-index: 2; }
</style>"""


def pages() -> list[Any]:
    """The studio's pages for ``st.navigation`` (Home first: the default)."""
    return [
        st.Page(path, title=title, icon=icon, default=path == HOME) for path, title, icon in PAGES
    ]


def chosen_data() -> str | None:
    """The data source chosen on the Data page: the session's, else the runs folder's draft
    (a browser refresh or a server restart keeps it); ``None`` if none was chosen yet."""
    source = st.session_state.get(DATA_SOURCE)
    if source:
        return str(source)
    from core.runs.drafts import load_chosen_data

    source = load_chosen_data(runs_root())
    if source:
        st.session_state[DATA_SOURCE] = source
    return source


def choose_data(source: str) -> None:
    """Make ``source`` the chosen data: in this session and in the runs folder's draft."""
    _keep_chosen_data(source)
    st.session_state.pop("data", None)  # so the Train form re-reads it from the draft


def choose_form_data() -> None:
    """``on_change`` of the Train form's data: data picked there is the chosen data, so the
    sidebar and the Data page say what Launch will train on (the form keeps its value)."""
    source = str(st.session_state.get("data") or "")
    if source.strip():
        _keep_chosen_data(source)


def _keep_chosen_data(source: str) -> None:
    from core.runs.drafts import save_chosen_data

    source = source.strip()
    st.session_state[DATA_SOURCE] = source
    save_chosen_data(runs_root(), source)  # the draft's Train form takes it as its data too


def restore_train_form() -> None:
    """Give every Train form widget without a value the runs folder's draft value (or, with no
    draft, the defaults on the chosen data): a refresh, a server restart or a visit to another
    page (Streamlit forgets the widgets of pages not shown) keeps the form as it was left."""
    from app.views.dashboard import FORM_FIELDS, train_form_values
    from core.config import DEFAULT_DATA, RunConfig
    from core.runs.drafts import load_draft

    missing = [key for key in FORM_FIELDS if key not in st.session_state]
    if not missing:
        return
    draft = load_draft(runs_root()) or RunConfig(data=chosen_data() or DEFAULT_DATA)
    values = train_form_values(draft)
    for key in missing:
        st.session_state[key] = values[key]


def remember_train_form(config: RunConfig) -> None:
    """Keep ``config`` as the runs folder's draft when it changed (one small atomic write)."""
    from core.runs.drafts import save_draft

    saved = config.to_dict()
    if st.session_state.get(DRAFT) != saved:
        save_draft(runs_root(), config)
        st.session_state[DRAFT] = saved


_FROZEN_AT = [0]  # len(sys.modules) when ``freeze_long_lived`` last froze


def freeze_long_lived() -> None:
    """Move the objects alive now into the garbage collector's permanent generation once the
    set of imported modules grew (TensorFlow and Keras once Predict or Run loaded a model).

    After every script and fragment run Streamlit calls ``keras.backend.clear_session()`` and
    ``gc.collect(2)``: with TensorFlow imported each full collection walks millions of objects,
    ~0.2 s of CPU per 2-s poll of a page following a run, on the cores the worker trains on.
    Frozen objects are skipped (``gc.freeze``: the same trick pre-fork servers use). Called at
    the start of a script run, right after Streamlit's collection: only live objects freeze.
    """
    if len(sys.modules) != _FROZEN_AT[0]:
        gc.freeze()
        _FROZEN_AT[0] = len(sys.modules)


def setup_app() -> None:
    """Page config and the sidebar below the navigation: the chosen data and the runs folder."""
    freeze_long_lived()
    st.set_page_config(page_title="Transfer Studio", page_icon="🧠", layout="wide")
    st.html(LIVE_STYLE)
    with st.sidebar:
        source = chosen_data()
        if source:
            from core.data.names import display_name

            st.caption(f"Data: {md_escape(display_name(source))}", help=md_escape(source))
        else:
            st.caption("Data: not chosen yet (Data page)")
        st.caption(f"Runs folder: {md_escape(runs_root())}")


# The server never trains: its queue writes queued runs into the run store and a worker process
# (``python -m core worker``, started by ``ensure_worker``) trains them. So nothing here imports
# Keras to train, and Streamlit's own cleanup after each script run (it calls
# ``keras.backend.clear_session()`` and may ``gc.collect()``) cannot slow or break a run: the
# replacement of ``_clean_problem_modules`` and ``postScriptGC = false`` are gone with the
# in-server training thread they protected.
@st.cache_resource(show_spinner=False)
def _job_queue(root: str) -> JobQueue:
    from core.training.jobs import get_job_queue

    return get_job_queue(root, processes=True)


def job_queue() -> JobQueue:
    """The process-wide job queue of the current runs folder (``TRANSFER_STUDIO_HOME``); runs
    queued and no worker alive (the server restarted, a worker was killed): one is started."""
    queue = _job_queue(str(runs_root()))
    ensure_worker(queue)
    return queue


def ensure_worker(queue: JobQueue) -> None:
    """``JobQueue.ensure_worker``: lost runs marked interrupted, a worker started for queued
    runs when none is alive. A failure to start one is shown, not raised."""
    try:
        queue.ensure_worker()
    except StudioError as exc:
        show_error(exc)


@st.cache_data(ttl=600, max_entries=8, show_spinner=False)
def load_data(source: str, val_split: float = 0.2, seed: int = 42) -> Any:
    """``core.data.load_dataset``, cached for ten minutes (every file is checked once)."""
    from core.data import load_dataset

    return load_dataset(source, val_split=val_split, seed=seed)


@st.cache_data(ttl=600, max_entries=8, show_spinner=False)
def data_health(source: str, val_split: float, seed: int) -> list[dict[str, str]]:
    """``core.data.health.health_report`` of a source (hashes every file: cached)."""
    from core.data.health import health_report

    return health_report(load_data(source, val_split, seed))


def fetch_data(source: str, val_split: float, seed: int) -> bool:
    """Load a source with visible progress (a status box while Kaggle downloads); errors shown."""
    from core.data import parse_source

    status = None
    shown = md_escape(source, inline=True)
    try:
        if parse_source(source)[0] == "kaggle":
            status = st.status(f"Downloading {shown} with kagglehub…")
            with status:
                load_data(source, val_split, seed)
        else:
            with st.spinner(f"Loading {shown} and checking every image…"):
                load_data(source, val_split, seed)
        return True
    except StudioError as exc:
        if status is not None:
            status.update(label=f"Could not get {shown}", state="error")
        show_error(exc)
        return False


def finished_runs(
    store: RunStore, empty_message: str, include_failed: bool = False
) -> tuple[list[RunSummary], dict[str, str]]:
    """Runs that have a model (newest first) and their labels by id; stops the page if none.

    ``include_failed`` adds the failed and interrupted runs (the Run page shows what happened
    and Resume). The labels are plain text, for ``st.selectbox``/``st.multiselect`` options
    (which show them as typed): escape them with ``md_escape`` anywhere Markdown is rendered.
    """
    from app.views.dashboard import predictable_runs, run_choice_label
    from core.runs.store import FAILED, INTERRUPTED

    runs = predictable_runs(store)
    if include_failed:
        ids = {r["run_id"] for r in runs}
        ended = (FAILED, INTERRUPTED)
        runs = [r for r in store.list_runs() if r["run_id"] in ids or r["status"] in ended]
    if not runs:
        st.info(empty_message)
        st.page_link(TRAIN, label="Go to Train", icon=":material/model_training:")
        st.stop()
    return runs, {r["run_id"]: run_choice_label(r) for r in runs}


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


def saved_upload(upload: Any) -> str | None:
    """Path of an uploaded zip saved under the data cache (None, with a message, if unusable)."""
    from core.data.uploads import save_upload

    if upload is None:
        return None
    try:
        return str(save_upload(upload.getvalue()))
    except StudioError as exc:
        show_error(exc)
        return None


def preview_image(data: bytes, max_side: int = 448) -> Any:
    """An uploaded image as RGB pixels, shrunk (aspect kept) for display; DataError if unusable."""
    import io

    from PIL import Image

    from core.data.images import load_rgb

    image = Image.fromarray(load_rgb(io.BytesIO(data)))
    image.thumbnail((max_side, max_side))
    return image


@st.cache_data(max_entries=4096, show_spinner=False)
def thumbnail(path: str, size: int = 96) -> Any:
    """A square RGB thumbnail of an image file."""
    from core.data.images import load_rgb

    return load_rgb(path, size)


@st.cache_data(max_entries=32, show_spinner="Building the layer preview…")
def layer_preview_data(
    backbone: str, size: int | None, mode: str, unfreeze: int | None, classes: int
) -> dict[str, Any]:
    """``core.training.model.layer_preview_summary``, keyed only by what changes the model."""
    from core.config import RunConfig
    from core.training.model import layer_preview_summary

    config = RunConfig(backbone=backbone, weights="none", mode=mode, image_size=size)
    return layer_preview_summary(config.with_changes(unfreeze=unfreeze), classes)


def _file_stamp(path: Path) -> tuple[int, int]:
    """What changes when a file is rewritten: its mtime (ns) and size; ``(0, -1)`` if absent."""
    try:
        stat = path.stat()
    except OSError:
        return 0, -1
    return stat.st_mtime_ns, stat.st_size


@st.cache_resource(max_entries=4, show_spinner=False)
def _evaluation(
    run_dir: str, model: tuple[int, int], cached: tuple[int, int], _store: RunStore, run_id: str
) -> dict[str, Any]:
    from core.runs.evaluate import evaluate_run

    return evaluate_run(_store, run_id)


def evaluation(store: RunStore, run_id: str) -> dict[str, Any]:
    """``core.runs.evaluate.evaluate_run``, kept in memory until the model or its evaluation file
    changes: a rerun does not parse the (for many classes, large) ``evaluation.json`` again.

    Shared by every session: treat the result as read-only.
    """
    from core.runs.evaluate import EVALUATION_FILE

    run_dir = store.run_dir(run_id)
    model = Path(store.get_run(run_id)["model_path"] or run_dir / "no-model")
    return _evaluation(
        str(run_dir), _file_stamp(model), _file_stamp(run_dir / EVALUATION_FILE), store, run_id
    )


@st.cache_data(max_entries=8, show_spinner="Finding the most confused pairs…")
def _pairs_view(run_dir: str, cached: tuple[int, int], _evaluation: dict[str, Any]) -> Any:
    from app.views.run_page import matrix_view

    return matrix_view(_evaluation)


def confusion_view(
    store: RunStore, run_id: str, evaluation: dict[str, Any], selected: tuple[str, str] | None
) -> dict[str, Any]:
    """``app.views.run_page.matrix_view``: the clickable heatmap (rebuilt per pick, it is small), or
    for many classes the most confused pairs, built once per evaluation file."""
    from app.views import run_page as run_views
    from core.runs.evaluate import EVALUATION_FILE

    if len(evaluation["class_names"]) <= run_views.HEATMAP_MAX_CLASSES:
        return run_views.matrix_view(evaluation, selected)
    run_dir = store.run_dir(run_id)
    return _pairs_view(str(run_dir), _file_stamp(run_dir / EVALUATION_FILE), evaluation)


def show_error(exc: Exception) -> None:
    """A user-actionable error as a red box (no traceback); its text is shown as typed.

    Messages quote paths, file, class and run names: never rendered as Markdown.
    """
    text = str(exc) if isinstance(exc, StudioError) else f"{type(exc).__name__}: {exc}"
    st.error(md_escape(text))


def new_click_key(name: str) -> None:
    """Button ``on_click``: a fresh idempotency key for this click (kept across reruns)."""
    st.session_state[f"{name}_key"] = uuid.uuid4().hex


def click_key(name: str) -> str:
    """The key of the latest click on button ``name``."""
    return st.session_state.get(f"{name}_key") or uuid.uuid4().hex


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


def layer_preview(
    backbone: str, size: int | None, mode: str, unfreeze: int | None, classes: int
) -> None:
    """A lazy expander: per phase trainable/frozen parameters and the base layers that train."""
    box = st.expander("Trainable layers and parameters", key="preview", on_change="rerun")
    if not box.open:
        return  # nothing is built while the expander is closed
    with box:
        try:
            _layer_table(layer_preview_data(backbone, size, mode, unfreeze, classes))
        except StudioError as exc:
            show_error(exc)


def _layer_table(summary: dict[str, Any]) -> None:
    from app.views.dashboard import format_count

    cols = st.columns(len(summary["phases"]))
    for col, phase in zip(cols, summary["phases"], strict=True):
        frozen = phase["frozen_params"]
        statistics = phase["non_trainable_params"] - frozen
        col.metric(
            f"{phase_title(phase['phase'])} · trainable",
            format_count(phase["trainable_params"]),
            # BatchNormalization statistics are never trained by gradient, but nothing is
            # frozen in a from-scratch run: "42.02k frozen" would say otherwise
            f"{format_count(frozen)} frozen" if frozen else "nothing frozen",
            delta_color="off",
            delta_arrow="off",
            help=f"{phase['trainable_params']:,} trainable, {frozen:,} frozen parameters"
            + (f", {statistics:,} BatchNormalization statistics" if statistics else ""),
        )
    layers = summary["layers"]
    trainable = summary["trainable_base_layers"]
    unfrozen = summary["phases"][-1]["unfrozen_layers"]
    note = "."
    if 0 < trainable < unfrozen:
        note = f" (the last {unfrozen} are unfrozen; their BatchNormalization layers stay frozen)."
    st.caption(f"{trainable} of {summary['base_layers']} base layers train{note}")
    first = next((i for i, row in enumerate(layers) if row["trainable_in_fine_tune"]), len(layers))
    st.dataframe(
        layers[max(first - 3, 0) :] if first < len(layers) else layers[-8:],
        hide_index=True,
        height=220,
        column_order=("trainable_in_fine_tune", "name", "type", "params"),
        column_config={
            "trainable_in_fine_tune": st.column_config.CheckboxColumn("trains", width="small"),
            "name": st.column_config.TextColumn("layer"),
            "params": st.column_config.NumberColumn(format="compact", width="small"),
        },
    )
