"""The learning-rate range test: the curve, the valley suggestion, divergence, both phases."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import keras
import numpy as np
import pytest

from core.config import RunConfig
from core.errors import ConfigError, DataError
from core.training.lr_find import (
    lr_find,
    lr_schedule,
    range_test,
    range_test_model,
    suggest_valley,
)
from core.training.model import compile_model


def _blobs(n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """3 blobs with a fifth of the labels redrawn at random: no rate drives the loss to 0, so a
    rate that is too high shows as a rising loss."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 2, (3, 16))[y] + rng.normal(0, 0.5, (n, 16))
    y = np.where(rng.random(n) < 0.2, rng.integers(0, 3, n), y)
    return x.astype(np.float32), y.astype(np.int32)


def _batches(x: np.ndarray, y: np.ndarray, batch: int = 16) -> Iterator[tuple]:
    while True:
        for i in range(0, len(y), batch):
            yield x[i : i + batch], y[i : i + batch]


def test_on_a_tiny_model_the_curve_falls_then_rises_and_the_suggestion_is_inside() -> None:
    keras.utils.set_random_seed(0)
    x, y = _blobs()
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
    compile_model(model, 1e-6)
    lrs, raw, smooth, diverged = range_test_model(model, _batches(x, y), 1e-5, 10.0, 100)
    assert len(lrs) == len(raw) == len(smooth) and lrs == sorted(lrs)
    low = int(np.argmin(smooth))
    assert 0 < low < len(smooth) - 1
    assert smooth[0] > smooth[low] * 1.5  # it falls...
    assert smooth[-1] > smooth[low] * 1.5 or diverged  # ...then rises (or blows up)
    suggested = suggest_valley(lrs, smooth)
    assert suggested is not None and lrs[0] <= suggested <= lrs[-1]
    assert suggested < lrs[low]  # before the minimum, where the loss still falls


def test_the_valley_rule_by_hand() -> None:
    lrs = list(lr_schedule(1e-4, 1.0, 40))
    assert math.isclose(lrs[0], 1e-4) and math.isclose(lrs[-1], 1.0)
    # Flat until step 10, falling steadily to step 30, then rising.
    losses = (
        [2.0] * 10 + [2.0 - 0.09 * i for i in range(1, 21)] + [0.2 + 0.3 * i for i in range(10)]
    )
    # Trimmed (first 4, last 5), the longest fall is 21 points long and ends at step 29; fastai
    # starts it at 29 - 21 = 8, and suggests 8 + int(21 / 3) + int(21 / 6) = step 18.
    assert suggest_valley(lrs, losses) == lrs[18]
    assert suggest_valley([1e-3, 1e-2], [1.0, 0.5]) == pytest.approx(1e-3)  # too short: min/10
    assert suggest_valley([], []) is None


def test_the_test_stops_when_the_loss_explodes() -> None:
    def step(lr: float, _i: int) -> float:
        return 1.0 if lr < 1e-2 else 1.0 + (lr * 1000) ** 2

    lrs, raw, smooth, diverged = range_test(step, 1e-5, 10.0, 200)
    assert diverged and len(lrs) < 200 and lrs[-1] < 1.0
    _, _, _, nan = range_test(lambda lr, i: float("nan") if i > 3 else 1.0, 1e-5, 1.0, 20)
    assert nan


def test_a_fine_tune_rate_needs_a_fine_tuning_mode() -> None:
    with pytest.raises(ConfigError, match="no fine-tuning phase") as err:
        lr_find(RunConfig(mode="feature_extraction"), "fine_tune")
    assert err.value.settings == ("mode",)
    with pytest.raises(ConfigError, match="phase 'warmup' is invalid"):
        lr_find(RunConfig(), "warmup")


@pytest.mark.slow
def test_lr_find_on_real_photos_head_and_fine_tune_phases() -> None:
    # EfficientNet-Lite0's bundled ImageNet weights at 32 px: the head's curve has a real valley.
    config = RunConfig(image_size=32, augment=False, mode="fine_tuning", epochs=1)
    head = lr_find(config, "head", steps=60)
    document = json.loads(json.dumps(head.to_json()))
    assert {"lrs", "losses", "suggested_lr"} <= document.keys()
    assert len(document["lrs"]) == len(document["losses"]) > 10
    low = int(np.argmin(head.losses))
    assert head.losses[0] > head.losses[low] and 0 < low  # it falls
    assert head.suggested_lr is not None and head.lrs[0] <= head.suggested_lr <= head.lrs[-1]
    assert head.extra["reads"] == "features"

    tune = lr_find(config, "fine_tune", steps=20)
    assert tune.phase == "fine_tune" and tune.extra["reads"] == "activations"
    assert tune.extra["features_cached"] is True  # the head phase's pass is reused
    assert tune.suggested_lr is not None and tune.lrs[0] <= tune.suggested_lr <= tune.lrs[-1]


def test_the_background_finder_keeps_its_settings_in_its_state(tmp_path) -> None:
    """What the task's process rebuilds the finder from: the config, phases and steps."""
    from core.tasks import TASK_KINDS
    from core.training.lr_find import LR_FIND_TASK, lr_find_task, start_lr_find

    assert TASK_KINDS[LR_FIND_TASK] is lr_find_task
    with pytest.raises(ConfigError, match="phase 'warmup' is invalid"):
        start_lr_find(tmp_path, RunConfig(), ["warmup"])
    with pytest.raises(DataError, match="not found"):  # on the page at once, not a failed task
        start_lr_find(tmp_path, RunConfig(data=str(tmp_path / "no-such-folder")))
    assert not (tmp_path / f"{LR_FIND_TASK}.json").exists()  # nothing started
    with pytest.raises(ConfigError, match="has no run config"):
        lr_find_task({"phases": ["head"]})
    seen: list[tuple] = []
    stop = [False]

    def fake(config: RunConfig, phase: str, steps=None, progress=None):
        seen.append((config.mode, phase, steps))
        progress(10, 20)
        stop[0] = True  # asked to stop during the first phase: the second never starts
        progress(20, 20)
        raise AssertionError("a stop ends the test at its next step")

    config = RunConfig(mode="fine_tuning", epochs=1)
    initial = {"config": config.to_dict(), "phases": ["head", "fine_tune"], "steps": 20}
    updates: list[dict] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("core.training.lr_find.lr_find", fake)
        final = lr_find_task(initial)(updates.append, lambda: stop[0])
    assert seen == [("fine_tuning", "head", 20)]
    assert updates == [{"step": {"phase": "head", "done": 10, "total": 20}}]
    assert final == {"results": {}, "step": None}
