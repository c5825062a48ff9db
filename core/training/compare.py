"""Compare all modes: one run per transfer mode on the same data, seed and hyper-parameters."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from core.config import Mode, RunConfig

if TYPE_CHECKING:
    from core.training.jobs import JobQueue

__all__ = [
    "COMPARE_GROUP_KEY",
    "COMPARE_MODES",
    "compare_configs",
    "compare_group",
    "submit_compare_all",
]

COMPARE_MODES = (Mode.FEATURE_EXTRACTION, Mode.FINE_TUNING, Mode.FULL_FINE_TUNING)
COMPARE_GROUP_KEY = "compare_group"  # stored in RunConfig.extra by submit_compare_all


def compare_configs(config: RunConfig, include_scratch: bool = False) -> list[RunConfig]:
    """The configs of a compare-all-modes group: same data, seed and hyper-parameters."""
    modes = [*COMPARE_MODES, *([Mode.SCRATCH] if include_scratch else [])]
    configs = []
    for mode in modes:
        changes: dict[str, Any] = {"mode": mode}
        if mode == Mode.SCRATCH:
            changes["weights"] = "none"  # a from-scratch baseline has no pretrained weights
        configs.append(config.with_changes(**changes))
    return configs


def submit_compare_all(
    queue: JobQueue, config: RunConfig, include_scratch: bool = False, key: str | None = None
) -> list[str]:
    """Queue one run per mode (feature extraction, fine-tuning, full fine-tuning, [scratch]).

    Every config is validated before any is queued, so an invalid one queues nothing. ``key`` (one
    per click) makes the call idempotent: calling again with it returns the same run ids.
    """
    group = key or hashlib.sha256(config.to_json().encode()).hexdigest()[:12]
    configs = [
        c.with_changes(extra={**c.extra, COMPARE_GROUP_KEY: group}).validate()
        for c in compare_configs(config, include_scratch)
    ]
    return [queue.submit(c, key=None if key is None else f"{key}:{c.mode}") for c in configs]


def compare_group(result: Mapping[str, Any]) -> str | None:
    """The compare-all-modes group a run was queued in, if any."""
    return (result.get("config") or {}).get(COMPARE_GROUP_KEY)
