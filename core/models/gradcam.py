"""Grad-CAM: which part of an image drove a studio model's prediction.

The heatmap comes from the backbone's last convolutional feature map (the nested base model's
output): each channel is weighted by the mean gradient of the class score with respect to it
(Selvaraju et al., 2017). The class score is the pre-softmax logit when the last layer is a softmax
``Dense``, because softmax probabilities saturate and their gradients vanish on confident images.

The model is rebuilt functionally from its own layers (input → preprocess → base → head) so one
forward pass yields both the feature map and the output; no weights are copied.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np

from core.data.images import to_array
from core.errors import StudioError

__all__ = [
    "DEFAULT_ALPHA",
    "gradcam",
    "jet_colormap",
]

DEFAULT_ALPHA = 0.45

_GRAD_MODELS: weakref.WeakKeyDictionary[Any, tuple[Any, Any, Any]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def jet_colormap(values: np.ndarray) -> np.ndarray:
    """Jet-like colours (dark blue → cyan → yellow → dark red) for values in [0, 1], as uint8 RGB.

    Piecewise-linear, like matplotlib's "jet", without needing matplotlib.
    """
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # where R, G, B peak
    rgb = np.clip(1.5 - np.abs(4.0 * v - 4.0 * centres), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def _feature_layer_index(model: Any) -> int:
    """Index in ``model.layers`` of the layer whose output is the last conv feature map."""
    import keras

    layers = model.layers
    nested = [
        i
        for i, layer in enumerate(layers)
        if isinstance(layer, keras.Model) and len(layer.outputs[0].shape) == 4
    ]
    if nested:  # the studio's layout: the backbone is one nested model
        return nested[-1]
    spatial = [i for i, layer in enumerate(layers) if len(layer.output.shape) == 4]
    if not spatial:
        raise StudioError(
            f"Model {model.name!r} has no layer with a spatial (H x W x C) output; Grad-CAM "
            "needs a convolutional feature map."
        )
    return spatial[-1]


def _grad_models(model: Any) -> tuple[Any, Any, Any]:
    """``(image → feature map, feature map → score input, softmax Dense or None)``; cached.

    Two models rather than one with two outputs: the tape must watch the feature map *before* the
    head runs, or (with a frozen base) nothing between the two would be recorded.
    """
    import keras

    with _LOCK:
        if model in _GRAD_MODELS:
            return _GRAD_MODELS[model]
        layers = model.layers
        index = _feature_layer_index(model)
        last = layers[-1]
        # Use logits: stop before a softmax Dense and apply its kernel ourselves.
        use_logits = (
            isinstance(last, keras.layers.Dense)
            and getattr(last.activation, "__name__", "") == "softmax"
        )
        # The studio's models are a linear chain after the input layer; replay it in two parts.
        inputs = keras.Input(model.inputs[0].shape[1:], dtype=model.inputs[0].dtype)
        x = inputs
        for layer in layers[1:index]:
            x = layer(x)
        features = layers[index](x, training=False)
        feature_in = keras.Input(features.shape[1:], dtype=features.dtype)
        y = feature_in
        for layer in layers[index + 1 : len(layers) - 1 if use_logits else len(layers)]:
            y = layer(y)
        built = (
            keras.Model(inputs, features, name="gradcam_features"),
            keras.Model(feature_in, y, name="gradcam_head"),
            last if use_logits else None,
        )
        _GRAD_MODELS[model] = built
        return built


def gradcam(
    model: Any,
    image_uint8: np.ndarray,
    class_index: int | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> dict[str, Any]:
    """Grad-CAM of ``model`` for one raw RGB image (uint8 HxWx3, any size).

    Returns ``{heatmap: HxW float32 in [0, 1] at the image's size, class_index (the predicted
    class when None was given), probability, overlay: HxWx3 uint8 (jet heatmap blended over the
    image with weight ``alpha``), feature_map_size: (h, w)}``. A feature map of 1 x 1 (small
    inputs) cannot localise anything: the heatmap is then uniform.
    """
    import tensorflow as tf

    image = to_array(image_uint8)  # a bad shape raises DataError, a StudioError
    height, width = image.shape[:2]
    size = int(model.inputs[0].shape[1])
    feature_model, head_model, head = _grad_models(model)
    batch = tf.constant(to_array(image, size, np.float32)[None])

    features = feature_model(batch, training=False)
    with tf.GradientTape() as tape:
        tape.watch(features)
        out = head_model(features, training=False)
        scores = tf.matmul(out, head.kernel) + head.bias if head is not None else out
        probs = tf.nn.softmax(scores) if head is not None else out
        if class_index is None:
            class_index = int(tf.argmax(scores[0]))
        if not 0 <= class_index < int(scores.shape[-1]):
            raise StudioError(
                f"class_index {class_index} is out of range 0..{int(scores.shape[-1]) - 1}."
            )
        score = scores[0, class_index]
    grads = tape.gradient(score, features)
    if grads is None:  # pragma: no cover - only if the head does not depend on the features
        raise StudioError("The prediction does not depend on the feature map; no Grad-CAM.")
    fmap = features[0]
    weights = tf.reduce_mean(grads[0], axis=(0, 1))  # one importance per channel
    cam = tf.nn.relu(tf.reduce_sum(fmap * weights, axis=-1)).numpy()
    peak = float(cam.max())
    # All-zero CAM (no positive evidence for the class): show nothing rather than divide by 0.
    cam = cam / peak if peak > 0 else np.zeros_like(cam)
    heatmap = tf.image.resize(cam[..., None], (height, width), method="bilinear").numpy()[..., 0]
    heatmap = np.clip(heatmap, 0.0, 1.0).astype(np.float32)

    colours = jet_colormap(heatmap).astype(np.float32)
    overlay = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    return {
        "heatmap": heatmap,
        "class_index": int(class_index),
        "probability": float(probs[0, class_index]),
        "overlay": np.clip(overlay + 0.5, 0, 255).astype(np.uint8),
        "feature_map_size": (int(fmap.shape[0]), int(fmap.shape[1])),
    }
