"""How statuses, phases and modes are shown: one table each, keyed by the ``core.config`` enums.

The tables are typed ``Mapping[str, ...]`` because the store hands back plain strings (and
``StrEnum`` members hash and compare as their values); a value not in a table (a newer status, a
stored run of another version) is shown as it is. No Streamlit here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal, NamedTuple

from core.config import Mode, Phase, Status

BadgeColor = Literal[
    "red", "orange", "yellow", "blue", "green", "violet", "gray", "grey", "primary"
]


class StatusLook(NamedTuple):
    """A status as an emoji (plain-text places: select boxes, tables) and as a badge."""

    emoji: str
    icon: str  # Material icon of the badge
    color: BadgeColor


class PhaseNames(NamedTuple):
    """A training phase in the three places the dashboard names it."""

    doing: str  # the progress line of a running run: "training the head · epoch 2/6 …"
    row: str  # the Run page's phase table
    title: str  # the Train page's layer preview


STATUS_LOOKS: Mapping[str, StatusLook] = {
    Status.QUEUED: StatusLook("⏳", ":material/schedule:", "gray"),
    Status.RUNNING: StatusLook("🔄", ":material/sync:", "blue"),
    Status.COMPLETED: StatusLook("✅", ":material/check_circle:", "green"),
    Status.STOPPED: StatusLook("⏹️", ":material/stop_circle:", "orange"),
    Status.FAILED: StatusLook("❌", ":material/error:", "red"),
    Status.INTERRUPTED: StatusLook("⚠️", ":material/warning:", "orange"),
}
PHASE_NAMES: Mapping[str, PhaseNames] = {
    Phase.HEAD: PhaseNames("training the head", "1 · head", "Phase 1: head"),
    Phase.FINE_TUNE: PhaseNames("fine-tuning", "2 · fine-tune", "Phase 2: fine-tune"),
    Phase.SCRATCH: PhaseNames("from scratch", "scratch", "Scratch"),
}
MODE_LABELS: Mapping[str, str] = {mode: mode.words for mode in Mode}
# The Train page's mode choice: the same modes as titles (the config keeps its keys).
MODE_TITLES: Mapping[str, str] = {
    Mode.FEATURE_EXTRACTION: "Feature extraction",
    Mode.FINE_TUNING: "Fine-tuning",
    Mode.FULL_FINE_TUNING: "Full fine-tuning",
    Mode.SCRATCH: "From scratch (baseline)",
}


def status_emoji(status: str | None) -> str:
    """The status's emoji; ``""`` for an unknown one."""
    look = STATUS_LOOKS.get(status or "")
    return look.emoji if look else ""


def status_badge(status: str | None) -> tuple[str | None, BadgeColor]:
    """``(icon, colour)`` of the status badge; no icon, grey, for an unknown status."""
    look = STATUS_LOOKS.get(status or "")
    return (look.icon, look.color) if look else (None, "gray")


def phase_doing(phase: str | None) -> str:
    """What a run in ``phase`` is doing ("training the head"); the phase itself if unknown."""
    names = PHASE_NAMES.get(phase or "")
    return names.doing if names else phase or ""


def phase_row(phase: str | None) -> str | None:
    """The phase's name in the Run page's phase table; the phase itself if unknown."""
    names = PHASE_NAMES.get(phase or "")
    return names.row if names else phase


def phase_title(phase: str) -> str:
    """The phase's title in the layer preview ("Phase 1: head"); the phase itself if unknown."""
    names = PHASE_NAMES.get(phase)
    return names.title if names else phase


def mode_label(mode: str | None) -> str:
    """A mode in words ("fine-tuning"); the mode itself if unknown, ``?`` if missing."""
    return MODE_LABELS.get(mode or "", mode or "?")


def mode_title(mode: str) -> str:
    """A mode as the Train page offers it ("Fine-tuning"); the mode itself if unknown."""
    return MODE_TITLES.get(mode, mode)


def modes_in_words(text: str) -> str:
    """Core's sentence with its mode keys in words: "mode fine_tuning trains" becomes
    "the fine-tuning mode trains" (core names the setting; the dashboard speaks the form's words).
    """
    for key, label in MODE_LABELS.items():
        text = re.sub(rf"\bmode {key}\b", f"the {label} mode", text)
        text = re.sub(rf"\b{key}\b", label, text)
    return text
