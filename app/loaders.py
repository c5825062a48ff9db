"""Cached loaders the pages share: the job queue, a data source's index and health report,
thumbnails, the layer preview and a run's evaluation. Each is keyed by what changes its result.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from app.views.text import md_escape
from app.widgets import show_error
from core.config import RunConfig
from core.errors import StudioError
from core.paths import runs_root

if TYPE_CHECKING:
    from core.runs.evaluate import Evaluation
    from core.runs.store import RunStore
    from core.training.jobs import JobQueue


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
def load_data(
    source: str, val_split: float = RunConfig.val_split, seed: int = RunConfig.seed
) -> Any:
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
) -> Evaluation:
    from core.runs.evaluate import evaluate_run

    return evaluate_run(_store, run_id)


def evaluation(store: RunStore, run_id: str) -> Evaluation:
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
def _pairs_view(run_dir: str, cached: tuple[int, int], _evaluation: Evaluation) -> Any:
    from app.views.run_page import matrix_view

    return matrix_view(_evaluation)


def confusion_view(
    store: RunStore, run_id: str, evaluation: Evaluation, selected: tuple[str, str] | None
) -> dict[str, Any]:
    """``app.views.run_page.matrix_view``: the clickable heatmap (rebuilt per pick, it is small), or
    for many classes the most confused pairs, built once per evaluation file."""
    from app.views import run_page as run_views
    from core.runs.evaluate import EVALUATION_FILE

    if len(evaluation["class_names"]) <= run_views.HEATMAP_MAX_CLASSES:
        return run_views.matrix_view(evaluation, selected)
    run_dir = store.run_dir(run_id)
    return _pairs_view(str(run_dir), _file_stamp(run_dir / EVALUATION_FILE), evaluation)
