"""Each mode's frozen/trainable state and BatchNormalization handling, phase by phase."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from core.config import RunConfig
from core.training.model import (
    build_model,
    compile_model,
    count_params,
    layer_preview,
    set_phase,
    unfreeze_count,
)

SIZE, CLASSES = 32, 3


def _config(mode: str, **kw) -> RunConfig:
    return RunConfig(
        backbone="mobilenet_v2", weights="none", mode=mode, image_size=SIZE, **kw
    ).validate()


def _bn_layers(base: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]


def _train_one_step(model: keras.Model) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    y = np.array([0, 1, 2, 0])
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)


def _moving_means(base: keras.Model) -> list[np.ndarray]:
    return [np.array(layer.moving_mean) for layer in _bn_layers(base)]


def test_feature_extraction_trains_only_the_head() -> None:
    built = build_model(_config("feature_extraction"), CLASSES)
    info = set_phase(_config("feature_extraction"), built, "head")
    head = sum(built.model.get_layer(n).count_params() for n in ("head_dense", "predictions"))
    assert info["trainable_params"] == head
    assert info["non_trainable_params"] == built.base.count_params()
    assert all(not w.trainable for w in built.base.weights)


@pytest.mark.slow
def test_fine_tuning_unfreezes_the_last_block_and_keeps_bn_frozen() -> None:
    config = _config("fine_tuning")
    built = build_model(config, CLASSES)
    head = set_phase(config, built, "head")
    compile_model(built.model, config.lr)
    _train_one_step(built.model)
    tune = set_phase(config, built, "fine_tune")
    compile_model(built.model, config.fine_tune_lr)  # re-compile after changing trainable

    assert tune["trainable_params"] > head["trainable_params"]
    n = unfreeze_count(config, built)
    assert tune["unfrozen_layers"] == n and 0 < n < len(built.base.layers)
    cut = len(built.base.layers) - n
    assert all(not layer.trainable for layer in built.base.layers[:cut])
    assert all(not layer.trainable for layer in _bn_layers(built.base))
    assert any(layer.trainable for layer in built.base.layers[cut:])

    before = _moving_means(built.base)
    kernels_before = [np.array(w) for w in built.base.trainable_weights]
    _train_one_step(built.model)
    for a, b in zip(before, _moving_means(built.base), strict=True):
        np.testing.assert_array_equal(a, b)  # BN statistics untouched: inference mode
    changed = [
        not np.array_equal(a, np.array(w))
        for a, w in zip(kernels_before, built.base.trainable_weights, strict=True)
    ]
    assert any(changed), "the unfrozen layers did learn"


def test_explicit_unfreeze_depth_is_used() -> None:
    config = _config("fine_tuning", unfreeze=5)
    built = build_model(config, CLASSES)
    info = set_phase(config, built, "fine_tune")
    assert info["unfrozen_layers"] == 5
    preview = layer_preview(config, built)
    assert [p["index"] for p in preview if p["trainable_in_fine_tune"]] == [
        i
        for i in range(len(preview) - 5, len(preview))
        if not isinstance(built.base.layers[i], keras.layers.BatchNormalization)
    ]


def test_full_fine_tuning_unfreezes_everything_but_bn() -> None:
    config = _config("full_fine_tuning")
    built = build_model(config, CLASSES)
    set_phase(config, built, "fine_tune")
    for layer in built.base.layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        assert layer.trainable is (not is_bn)
    trainable, frozen = count_params(built.model)
    bn_params = sum(layer.count_params() for layer in _bn_layers(built.base))
    assert frozen == bn_params


@pytest.mark.slow
def test_scratch_trains_everything_with_live_batchnorm() -> None:
    config = _config("scratch")
    built = build_model(config, CLASSES)
    info = set_phase(config, built, "scratch")
    assert info["trainable_params"] > built.base.count_params() // 2
    compile_model(built.model, config.lr)
    before = _moving_means(built.base)
    _train_one_step(built.model)
    after = _moving_means(built.base)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_model_takes_raw_pixels_and_outputs_probabilities() -> None:
    built = build_model(_config("feature_extraction"), CLASSES)
    assert built.model.get_layer("preprocess").mode == "tf"
    out = np.asarray(built.model(np.full((2, SIZE, SIZE, 3), 255.0, dtype="float32")))
    assert out.shape == (2, CLASSES)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_unknown_phase_is_a_programming_error() -> None:
    built = build_model(_config("feature_extraction"), CLASSES)
    with pytest.raises(ValueError):
        set_phase(_config("feature_extraction"), built, "warmup")
