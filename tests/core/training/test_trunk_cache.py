"""The in-process cache of frozen trunks: reused only where the base is never trained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.config import RunConfig
from core.models.backbones import build_base, get_backbone
from core.training import model as model_builder
from core.training.jobs import JobQueue
from core.training.model import build_model

LITE = RunConfig(data="builtin:faces", image_size=64, epochs=1, augment=False)


@pytest.mark.slow
def test_feature_extraction_reuses_the_frozen_trunk_with_a_new_head() -> None:
    model_builder.clear_trunk_cache()
    first = build_model(LITE, 2)
    second = build_model(LITE.with_changes(dense_units=32), 3)
    assert second.base is first.base
    assert second.model.get_layer("avg_pool") is first.model.get_layer("avg_pool")
    assert second.model.get_layer("predictions") is not first.model.get_layer("predictions")
    assert second.model.output.shape[-1] == 3 and first.model.output.shape[-1] == 2
    # Another size is another trunk.
    assert build_model(LITE.with_changes(image_size=96), 2).base is not first.base


@pytest.mark.slow
def test_modes_that_train_the_base_and_random_weights_always_build_afresh() -> None:
    model_builder.clear_trunk_cache()
    cached = build_model(LITE, 2).base
    for changes in (
        {"mode": "fine_tuning"},
        {"mode": "full_fine_tuning"},
        {"mode": "scratch"},
        {"weights": "none"},
    ):
        config = LITE.with_changes(**changes)
        a, b = build_model(config, 2).base, build_model(config, 2).base
        assert a is not cached and b is not a, changes


@pytest.mark.slow
def test_a_feature_extraction_run_leaves_the_cached_base_pretrained(tmp_path: Path) -> None:
    model_builder.clear_trunk_cache()
    queue = JobQueue(tmp_path / "runs")
    for config in (LITE, LITE.with_changes(feature_cache="off", lr=1e-2)):
        assert queue.wait(queue.submit(config), timeout=300) == "completed"
    cached = build_model(LITE, 2).base
    fresh = build_base(get_backbone(LITE.backbone), "imagenet", 64)
    for a, b in zip(cached.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
