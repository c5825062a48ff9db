"""The Run page's "Can you trust these numbers?": the leakage check in words with the pairs side
by side and one click to move each pair to the training side (split pins) or to exclude the
validation copies (both in the run's dataset, undone from its edit history); the calibration
with a reliability diagram; test-time augmentation measured on demand with whether it is worth
it; "Open in TensorBoard" (the command) and "Log to MLflow". Wording and figures:
``app.views.trust``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from app import loaders, widgets
from app.views import trust as views
from app.views.text import md_escape
from core.errors import StudioError

if TYPE_CHECKING:
    from core.runs.evaluate import Evaluation
    from core.runs.store import RunResult, RunStore
    from core.training.jobs import JobQueue

MLFLOW_URI = "trust_mlflow_uri"


def _stored_leakage(store: RunStore, run_id: str) -> dict[str, Any] | None:
    """The check the worker stored for the run's model file (``None``: not checked yet)."""
    from core.runs.calibration import model_key
    from core.runs.leakage import read_leakage

    path = Path(store.get_run(run_id)["model_path"] or "")
    if not path.is_file():
        return None
    return read_leakage(store.run_dir(run_id), model_key(path))


def render(queue: JobQueue, result: RunResult) -> None:
    """The Run page's "Can you trust these numbers?" section for a completed run."""
    store, run_id = queue.store, result["run_id"]
    st.subheader("Can you trust these numbers?", divider="gray")
    _leakage_section(store, run_id, result)
    try:
        evaluation = loaders.evaluation(store, run_id)  # the page's (kept in memory)
    except StudioError:
        evaluation = None  # the Evaluate section above says why
    if evaluation is not None and evaluation.get("calibration"):
        _calibration_section(evaluation)
    _tta_section(store, run_id)
    _trackers_section(store, run_id)


def _leakage_section(store: RunStore, run_id: str, result: RunResult) -> None:
    st.markdown("**Leakage between training and validation**")
    leakage = _stored_leakage(store, run_id)  # the worker checks every run it completes
    if leakage is None:
        st.caption("Not checked yet for this model.")
        if not st.button(
            "Look for near-copies across the split", key=f"leakage_{run_id}",
            icon=":material/search:",
            help="Compares every validation image with every training image (file and "
            "perceptual hashes, the model's embeddings)",
        ):  # fmt: skip
            return
        from core.training.leakage import check_leakage

        try:
            with st.spinner("Looking for near-copies across the split…"):
                leakage = check_leakage(store, run_id)
        except StudioError as exc:
            widgets.show_error(exc)
            return
    st.markdown(views.flagged_text(leakage, views.leakage_text(leakage)))
    if not leakage["pairs"]:
        return
    root = str(leakage.get("root") or (result.get("dataset") or {}).get("root") or "")
    for card in views.pair_cards(leakage, root):
        cols = st.columns(2)
        try:
            cols[0].image(loaders.thumbnail(card["val"], 160), caption=card["val_caption"])
            cols[1].image(loaders.thumbnail(card["train"], 160), caption=card["train_caption"])
        except StudioError as exc:  # a file moved since the check
            widgets.show_error(exc)
        st.caption(md_escape(card["how"]))
    more = len(leakage["pairs"]) - views.MAX_PAIRS_SHOWN
    if more > 0:
        st.caption(f"… and {more} more pair(s) (all of them: `evaluate --json`, key `leakage`).")
    twins = sorted({p["val"] for p in leakage["pairs"]})
    both = sorted({rel for p in leakage["pairs"] for rel in (p["val"], p["train"])})
    left, right = st.columns(2)
    if left.button(
        f"Move the {len(leakage['pairs'])} pair(s) to training",
        key=f"move_twins_{run_id}", icon=":material/move_down:",
        help="Pins both pictures of each pair to the training split of the run's dataset (a "
        "managed copy for a folder, zip or built-in source; the original is never changed): "
        "the next run validates on other images instead and keeps training on these. Undo in "
        "the Review section.",
    ):  # fmt: skip
        _edit(store, run_id, [str(Path(root) / rel) for rel in both], move=True)
    if right.button(
        f"Exclude the {len(twins)} validation copies from the data",
        key=f"exclude_twins_{run_id}", icon=":material/content_cut:",
        help="Sets them aside in the run's dataset (a managed copy for a folder, zip or built-in "
        "source; the original is never changed); retrain to get a validation score on images "
        "the model never saw. Undo in the Review section restores them.",
    ):  # fmt: skip
        _edit(store, run_id, [str(Path(root) / rel) for rel in twins], move=False)


def _edit(store: RunStore, run_id: str, paths: list[str], move: bool) -> None:
    """Pin ``paths`` to training (``move``) or exclude them, in the run's dataset."""
    from core.data.datasets import open_dataset, parse_dataset_source
    from core.files import sha256_file
    from core.training.review import edit_target

    try:
        name, made = edit_target(store, run_id)
        managed = parse_dataset_source(store.config(run_id).data) is not None
        # A managed dataset stores each image under its id; a managed copy's ids are the
        # content hashes of the original files.
        ids = [Path(p).stem if managed else sha256_file(p)[:12] for p in paths]
        with open_dataset(name) as ds:
            done = ds.pin(ids, "train") if move else ds.exclude(ids)
    except (StudioError, OSError) as exc:
        widgets.show_error(exc)
        return
    where = (
        f"the managed copy **{md_escape(name, inline=True)}** (made now)"
        if made
        else (f"dataset **{md_escape(name, inline=True)}**")
    )
    retrain = f"Retrain on `dataset:{md_escape(name, inline=True)}`"
    if move:
        st.success(
            f"Pinned {len(done)} image(s) to training in {where}: both copies of each pair "
            f"now sit on the training side. {retrain} for a score on images the model never saw."
        )
    else:
        st.success(
            f"Excluded {len(done)} validation image(s) from {where}. {retrain} for a score on "
            "images the model never saw."
        )


def _calibration_section(evaluation: Evaluation) -> None:
    st.markdown("**Calibrated confidence**")
    st.caption(md_escape(views.calibration_text(evaluation["calibration"])))
    if evaluation.get("reliability"):
        st.plotly_chart(
            views.reliability_figure(evaluation["reliability"]), key="reliability_diagram",
            config={"displayModeBar": False},
        )  # fmt: skip


def _tta_section(store: RunStore, run_id: str) -> None:
    from core.runs.evaluate import TTA_FILE, tta_report

    st.markdown("**Test-time augmentation**")
    measured = (store.run_dir(run_id) / TTA_FILE).is_file()
    if measured or st.button(
        "Measure test-time augmentation", key=f"tta_{run_id}", icon=":material/flip:",
        help="Predict every validation image as itself, mirrored and in three small crops, "
        "averaged: the accuracy with and without, and what it costs per image",
    ):  # fmt: skip
        try:
            with st.spinner("Predicting the validation images with and without…"):
                tta = tta_report(store, run_id)
        except StudioError as exc:
            widgets.show_error(exc)
            return
        st.caption(md_escape(views.tta_text(tta)))


def _trackers_section(store: RunStore, run_id: str) -> None:
    from core.runs.trackers import log_to_mlflow, tensorboard_command

    st.markdown("**TensorBoard and MLflow**")
    left, right = st.columns(2, gap="large")
    with left:
        st.caption(views.tensorboard_hint())
        st.code(tensorboard_command(store, run_id), language="bash")
    with right:
        default = (store.root / "mlruns").as_uri()
        uri = st.text_input(
            "MLflow tracking URI", value=default, key=MLFLOW_URI,
            help="A folder (file:/…, no server needed) or an MLflow server (http://host:5000)",
        )  # fmt: skip
        if st.button("Log to MLflow", key=f"mlflow_{run_id}", icon=":material/upload:"):
            try:
                with st.spinner("Writing the run to MLflow…"):
                    logged = log_to_mlflow(store, run_id, uri.strip())
            except StudioError as exc:
                widgets.show_error(exc)
            else:
                st.success(
                    f"Logged to experiment **{md_escape(logged.experiment, inline=True)}** "
                    f"(MLflow run `{logged.mlflow_run_id}`): {logged.params} params, "
                    f"{logged.metric_points} metric points, {', '.join(logged.artifacts)}."
                )
