"""The Data page's leakage test, run by itself on every visit: near-copies across the split a run
would use, from the Train form's backbone's cached features (skipped, and said so, when there
are none). ``core.training.source_leakage`` does the work without TensorFlow; its result is
stored until the data changes, so a visit to data checked before reads one small file. A check
that would hash many pictures runs as a background task with its progress shown, and the page
goes on without waiting for it."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import streamlit as st

from app import loaders, monitor, widgets
from app.views import trust as views
from app.views.text import md_escape
from core.errors import StudioError

if TYPE_CHECKING:
    from core.config import RunConfig
    from core.data import DatasetIndex
    from core.training.source_leakage import CheckPlan, SourceLeakage

PAIRS_SHOWN = 3


def _fingerprint(index: DatasetIndex) -> str:
    """The split's files and labels (a changed split is another plan)."""
    digest = hashlib.sha256()
    for paths, labels in ((index.train_paths, index.train_labels),
                          (index.val_paths, index.val_labels)):  # fmt: skip
        for path, label in zip(paths, labels, strict=True):
            digest.update(f"{path}\0{label}\n".encode())
        digest.update(b"|")
    return digest.hexdigest()


@st.cache_data(ttl=600, max_entries=8, show_spinner=False)
def _plan(
    source: str, fingerprint: str, backbone: str, weights: str, size: int | None,
    _index: DatasetIndex,
) -> CheckPlan:  # fmt: skip
    """Every file's content hash and the keys they give (kept: the files are read once)."""
    from core.config import RunConfig
    from core.training.source_leakage import plan_check

    config = RunConfig(data=source, backbone=backbone, weights=weights, image_size=size)
    return plan_check(config, _index)


def _config(source: str) -> RunConfig:
    from core.config import RunConfig
    from core.paths import runs_root
    from core.runs.drafts import load_draft

    draft = load_draft(runs_root()) or RunConfig(data=source)
    return RunConfig(
        data=source, backbone=draft.backbone, weights=draft.weights, image_size=draft.image_size
    )


def plan_for(source: str, index: DatasetIndex) -> CheckPlan:
    """The check's plan for the Train form's backbone (cached: each file is read once)."""
    config = _config(source)
    return _plan(source, _fingerprint(index), config.backbone, config.weights,
                 config.image_size, index)  # fmt: skip


def render(source: str, index: DatasetIndex, val_split: float, seed: int) -> None:
    """The leakage test for the Train form's backbone, from cached features, run by itself."""
    from core.training import source_leakage as check

    try:
        plan = plan_for(source, index)
        found = check.finished_check(plan)
        if found is None and plan.to_hash <= check.INLINE_HASHES:
            with st.spinner("Looking for near-copies across the split…"):
                found = check.run_check(plan)
    except (StudioError, OSError) as exc:
        widgets.show_error(exc)
        return
    if found is None:  # many pictures to hash: in the background, the page goes on
        _in_background(plan, source, val_split, seed)
        return
    _show(found, index, plan)


def _show(found: SourceLeakage, index: DatasetIndex, plan: CheckPlan) -> None:
    from core.training.source_leakage import forget_check

    leakage = found.leakage
    if leakage is None:
        st.caption(f"Near-copies across the split: not checked ({md_escape(found.reason)}).")
        return
    cols = st.columns([5, 1], vertical_alignment="center")
    cols[0].markdown(
        views.flagged_text(leakage, views.leakage_text(leakage) + f" ({found.reason})")
    )
    if cols[1].button(
        "Check again", key="leakage_recheck", icon=":material/refresh:",
        help="Compare every validation image with every training image again",
    ):  # fmt: skip
        forget_check(plan)
        st.rerun()
    for card in views.pair_cards(leakage, str(index.root))[:PAIRS_SHOWN]:
        pics = st.columns([2, 2, 5], vertical_alignment="center")
        try:
            pics[0].image(loaders.thumbnail(card["val"]), caption=card["val_caption"], width=96)
            pics[1].image(loaders.thumbnail(card["train"]), caption=card["train_caption"], width=96)
        except StudioError as exc:  # a file moved since the check
            widgets.show_error(exc)
        pics[2].caption(md_escape(card["how"]))
    more = len(leakage["pairs"]) - PAIRS_SHOWN
    if more > 0:
        st.caption(f"… and {more} more pair(s).")


def _in_background(plan: CheckPlan, source: str, val_split: float, seed: int) -> None:
    from core.paths import runs_root
    from core.tasks import RUNNING, task_state
    from core.training.source_leakage import TASK, start_check

    root = runs_root()
    shown = task_state(root, TASK) or {}
    mine = shown.get("result_key") == plan.result_key
    if mine and shown.get("status") in ("failed", "interrupted"):
        st.warning(
            md_escape(
                "The check for near-copies across the split did not finish: "
                + (shown.get("error") or "its process stopped.")
            )
        )
        if not st.button("Check again", key="leakage_retry", icon=":material/refresh:"):
            return
        shown = {}
    if shown.get("status") != RUNNING:
        try:
            start_check(root, plan.config, source, val_split, seed, plan.result_key)
        except StudioError as exc:
            widgets.show_error(exc)
            return

    @st.fragment(run_every=monitor.poll_interval(True))
    def live() -> None:
        now = task_state(root, TASK) or {}
        if now.get("status") != RUNNING:
            st.rerun()  # finished (this check or another one): the page reads the result
        done, total = int(now.get("done") or 0), int(now.get("total") or 0)
        if now.get("result_key") != plan.result_key:
            st.caption("Near-copies across the split: waiting for another data check to end…")
            return
        st.progress(
            done / total if total else 0.0,
            text=f"Looking for near-copies across the split: {done} of {total or plan.to_hash} "
            "pictures hashed (once per picture; the page stays usable)",
        )

    live()
