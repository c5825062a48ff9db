"""The Data page's leakage test: near-copies across the split before training, from the Train
form's backbone's cached features (skipped, and said so, when there are none)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from app import loaders, widgets
from app.views import trust as views
from app.views.text import md_escape
from core.errors import StudioError

if TYPE_CHECKING:
    from core.data import DatasetIndex


@st.cache_data(ttl=600, max_entries=8, show_spinner=False)
def _source_leakage(
    source: str, val_split: float, seed: int, backbone: str, weights: str, size: int | None
) -> tuple[dict | None, str]:
    from core.config import RunConfig
    from core.training.leakage import leakage_before_training

    config = RunConfig(data=source, backbone=backbone, weights=weights, image_size=size)
    found = leakage_before_training(config, loaders.load_data(source, val_split, seed))
    return found.leakage, found.reason


def render(source: str, index: DatasetIndex, val_split: float, seed: int) -> None:
    """The Data page's leakage test for the Train form's backbone, from cached features."""
    from core.config import RunConfig
    from core.paths import runs_root
    from core.runs.drafts import load_draft

    draft = load_draft(runs_root()) or RunConfig(data=source)
    # On demand: the check hashes every image and reads the cached features (TensorFlow's
    # import on a first check), seconds the page must not spend on every visit.
    if not st.toggle(
        "Check for near-copies across the split",
        key=f"leakage_check_{source}",
        help="Validation images with a near-copy in training make the validation score "
        "measure memory. Uses the Train form's backbone's cached features.",
    ):
        return
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
