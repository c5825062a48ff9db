"""Panels that say whether a run's numbers can be trusted, added to the Run, Predict and Data pages.

* Run page (``render``): the leakage check in words with the pairs side by side and one click to
  exclude the validation copies; the calibration with a reliability diagram; test-time
  augmentation measured on demand with whether it is worth it; "Open in TensorBoard" (the command)
  and "Log to MLflow".
* Predict page (``predict_options``, ``show_set``): the coverage of the prediction sets, the
  test-time augmentation toggle, and the set in words ("Not sure: cat or lynx").
* Data page (``data_leakage``): the same leakage test before training, when the source's features
  are already cached.

The wording and figures are ``app.views.trust``'s; the checks are ``core``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from app import widgets
from app.views import trust as views
from app.views.text import md_escape
from core.errors import StudioError
from core.runs.calibration import DEFAULT_COVERAGE

if TYPE_CHECKING:
    from core.data import DatasetIndex
    from core.runs.store import RunResult, RunStore
    from core.training.jobs import JobQueue

COVERAGE = "predict_coverage"  # session keys of the Predict page's options
TTA = "predict_tta"
MLFLOW_URI = "trust_mlflow_uri"


@st.cache_data(max_entries=8, show_spinner=False)
def _leakage(run_dir: str, model: tuple[int, int], _store: RunStore, run_id: str) -> dict:
    from core.training.leakage import check_leakage

    return check_leakage(_store, run_id)


def _model_stamp(store: RunStore, run_id: str) -> tuple[int, int]:
    path = Path(store.get_run(run_id)["model_path"] or store.run_dir(run_id) / "model.keras")
    try:
        stat = path.stat()
    except OSError:
        return (0, 0)
    return stat.st_mtime_ns, stat.st_size


def render(queue: JobQueue, result: RunResult) -> None:
    """The Run page's "Can you trust these numbers?" section for a completed run."""
    store, run_id = queue.store, result["run_id"]
    st.subheader("Can you trust these numbers?", divider="gray")
    _leakage_section(store, run_id, result)
    try:
        evaluation = widgets.evaluation(store, run_id)  # the page's (kept in memory)
    except StudioError:
        evaluation = None  # the Evaluate section above says why
    if evaluation is not None and evaluation.get("calibration"):
        _calibration_section(evaluation)
    _tta_section(store, run_id)
    _trackers_section(store, run_id)


def _leakage_section(store: RunStore, run_id: str, result: RunResult) -> None:
    st.markdown("**Leakage between training and validation**")
    try:
        with st.spinner("Looking for near-copies across the split (once per model)…"):
            leakage = _leakage(
                str(store.run_dir(run_id)), _model_stamp(store, run_id), store, run_id
            )
    except StudioError as exc:
        widgets.show_error(exc)
        return
    st.markdown(views.flagged_text(leakage, views.leakage_text(leakage)))
    if not leakage["pairs"]:
        return
    root = str((result.get("dataset") or {}).get("root") or "")
    for card in views.pair_cards(leakage, root):
        cols = st.columns(2)
        try:
            cols[0].image(widgets.thumbnail(card["val"], 160), caption=card["val_caption"])
            cols[1].image(widgets.thumbnail(card["train"], 160), caption=card["train_caption"])
        except StudioError as exc:  # a file moved since the check
            widgets.show_error(exc)
        st.caption(md_escape(card["how"]))
    more = len(leakage["pairs"]) - views.MAX_PAIRS_SHOWN
    if more > 0:
        st.caption(f"… and {more} more pair(s) (all of them: `evaluate --json`, key `leakage`).")
    twins = sorted({p["val"] for p in leakage["pairs"]})
    if st.button(
        f"Exclude the {len(twins)} validation copies from the data",
        key=f"exclude_twins_{run_id}", icon=":material/content_cut:",
        help="Sets them aside in the run's dataset (a managed copy for a folder, zip or built-in "
        "source; the original is never changed); retrain to get a validation score on images "
        "the model never saw. Undo in the Review section restores them.",
    ):  # fmt: skip
        _exclude(store, run_id, [str(Path(root) / rel) for rel in twins])


def _exclude(store: RunStore, run_id: str, paths: list[str]) -> None:
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
            done = ds.exclude(ids)
    except (StudioError, OSError) as exc:
        widgets.show_error(exc)
        return
    where = (
        f"the managed copy **{md_escape(name, inline=True)}** (made now)"
        if made
        else (f"dataset **{md_escape(name, inline=True)}**")
    )
    st.success(
        f"Excluded {len(done)} validation image(s) from {where}. Retrain on "
        f"`dataset:{md_escape(name, inline=True)}` for a score on images the model never saw."
    )


def _calibration_section(evaluation: dict[str, Any]) -> None:
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


def predict_options(container: Any) -> tuple[float, bool]:
    """The Predict page's coverage slider and test-time augmentation toggle."""
    coverage = container.slider(
        "Prediction-set coverage", 0.5, 0.99, DEFAULT_COVERAGE, 0.01, key=COVERAGE,
        format="%.2f",
        help="How often the set of likely labels holds the true one, as measured on the "
        "run's validation images: higher coverage, larger sets",
    )  # fmt: skip
    tta = container.toggle(
        "TTA: average 5 views", key=TTA,
        help="Test-time augmentation: average the predictions of the image, its mirror and "
        "three small crops (about 5x slower)",
    )  # fmt: skip
    return float(coverage), bool(tta)


def show_set(container: Any, result: dict[str, Any]) -> None:
    """The prediction set in words under a model's bars."""
    text = views.set_text(result)
    if text is not None:
        icon = (
            ":orange[:material/help:]"
            if text.startswith("Not sure")
            else ":green[:material/check:]"
        )
        container.markdown(f"{icon} {text}")


@st.cache_data(ttl=600, max_entries=8, show_spinner=False)
def _source_leakage(
    source: str, val_split: float, seed: int, backbone: str, weights: str, size: int | None
) -> tuple[dict | None, str]:
    from core.config import RunConfig
    from core.training.leakage import leakage_before_training

    config = RunConfig(data=source, backbone=backbone, weights=weights, image_size=size)
    found = leakage_before_training(config, widgets.load_data(source, val_split, seed))
    return found.leakage, found.reason


def data_leakage(source: str, index: DatasetIndex, val_split: float, seed: int) -> None:
    """The Data page's leakage test for the Train form's backbone, from cached features."""
    from core.config import RunConfig
    from core.paths import runs_root
    from core.runs.drafts import load_draft

    draft = load_draft(runs_root()) or RunConfig(data=source)
    try:
        leakage, reason = _source_leakage(
            source, val_split, seed, draft.backbone, draft.weights, draft.image_size
        )
    except StudioError as exc:
        widgets.show_error(exc)
        return
    if leakage is None:
        st.caption(f"Near-copies across the split: not checked ({md_escape(reason)}).")
        return
    st.markdown(views.flagged_text(leakage, views.leakage_text(leakage) + f" ({reason})"))
    for card in views.pair_cards(leakage, str(index.root))[:3]:
        st.caption(md_escape(f"{card['val_caption']} ~ {card['train_caption']} ({card['how']})"))
