"""The backbone registry's metadata, checked against real models (weights=None, small inputs)."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import BackboneError
from core.models.backbones import (
    REGISTRY,
    STATUS_BUNDLED,
    STATUS_CACHED,
    STATUS_NEEDS_NETWORK,
    WeightsUnavailableError,
    build_base,
    default_unfreeze,
    get_backbone,
    keras_models_dir,
)
from core.models.layers import PixelNormalize, normalization_constants

FAST_BACKBONE = "mobilenet_v2"  # one small model checked in the fast tier, the rest are slow


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=() if name == FAST_BACKBONE else pytest.mark.slow)
        for name in REGISTRY
    ],
)
def test_registry_metadata_matches_a_forward_pass(name: str) -> None:
    spec = get_backbone(name)
    size = max(spec.min_size, 64)
    base = build_base(spec, "none", size)
    features = base(np.zeros((1, size, size, 3), dtype="float32"), training=False)
    assert features.shape[-1] == spec.feature_width
    assert base.count_params() == pytest.approx(spec.params_millions * 1e6, rel=0.01)
    depth = default_unfreeze(spec, base)
    assert 0 < depth < len(base.layers) // 2, "the last block is a small tail of the base"
    assert spec.default_size >= spec.min_size
    assert spec.preprocessing in ("caffe", "tf", "torch", "lite", "builtin")


def test_minimum_input_size_is_enforced_with_a_clear_message() -> None:
    with pytest.raises(BackboneError, match="Use an image size of 75 px or more") as info:
        build_base(get_backbone("inception_v3"), "none", 64)
    assert info.value.settings == ("image_size",)  # the CLI adds --image-size (test_cli)


def test_missing_local_weights_file_is_refused(tmp_path) -> None:
    with pytest.raises(BackboneError, match="not found"):
        build_base(get_backbone("mobilenet_v2"), str(tmp_path / "nope.h5"), 64)


def test_local_weights_file_is_loaded(tmp_path) -> None:
    spec = get_backbone("mobilenet_v3_small")
    source = build_base(spec, "none", 64)
    path = tmp_path / "small.weights.h5"
    source.save_weights(path)
    loaded = build_base(spec, str(path), 64)
    for a, b in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_imagenet_weights_offline_say_so_and_suggest_alternatives(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # empty cache: keras must try the network
    spec = get_backbone("mobilenet_v3_small")
    assert spec.weights_status() == STATUS_NEEDS_NETWORK
    with pytest.raises(WeightsUnavailableError) as info:
        build_base(spec, "imagenet", 64)
    message = str(info.value)
    assert "no network" in message and "weights to none" in message
    assert "--weights" not in message and set(info.value.settings) == {"weights", "backbone"}
    assert "efficientnet_lite0" in message


def test_weights_status_sees_the_keras_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    spec = get_backbone("vgg16")
    assert spec.weights_status() == STATUS_NEEDS_NETWORK
    keras_models_dir().mkdir(parents=True)
    (keras_models_dir() / spec.imagenet_files[0]).write_bytes(b"x")
    assert spec.weights_status() == STATUS_CACHED
    assert get_backbone("efficientnet_lite0").weights_status() == STATUS_BUNDLED


@pytest.mark.parametrize("mode", ["caffe", "tf", "lite", "builtin", "torch"])
def test_pixel_normalize_matches_the_family_formula(mode: str) -> None:
    pixels = np.array([[[[0.0, 128.0, 255.0]]]], dtype="float32")
    out = np.asarray(PixelNormalize(mode)(pixels))[0, 0, 0]
    mean, std, bgr = normalization_constants(mode)
    expected = (pixels[0, 0, 0] - np.array(mean)) / np.array(std)
    if bgr:
        expected = expected[::-1]
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_caffe_preprocessing_equals_keras_own() -> None:
    import keras

    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    ours = np.asarray(PixelNormalize("caffe")(pixels))
    theirs = keras.applications.vgg16.preprocess_input(pixels.copy())
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
    tf_ours = np.asarray(PixelNormalize("tf")(pixels))
    tf_theirs = keras.applications.mobilenet_v2.preprocess_input(pixels.copy())
    np.testing.assert_allclose(tf_ours, tf_theirs, rtol=1e-5, atol=1e-5)
