"""Serializable Keras layers the studio puts inside its models.

Preprocessing lives *inside* every model the studio builds, so a saved or exported model takes raw
0-255 RGB pixels and nobody can feed it wrongly scaled images (e.g. divided by 255 first).
A registered layer (not a ``Lambda``) keeps ``.keras`` files loadable with ``safe_mode=True``.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

__all__ = [
    "CAFFE_MEAN_RGB",
    "PREPROCESSING_MODES",
    "TORCH_MEAN_RGB",
    "TORCH_STD_RGB",
    "PixelNormalize",
    "RealRowsAccuracy",
    "count_params",
    "normalization_constants",
]

# Per-family constants, as in keras.applications.imagenet_utils.
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
TORCH_MEAN_RGB = (0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0)
TORCH_STD_RGB = (0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0)

PREPROCESSING_MODES = ("caffe", "tf", "torch", "lite", "builtin")


def normalization_constants(mode: str) -> tuple[tuple[float, ...], tuple[float, ...], bool]:
    """``(mean, std, to_bgr)`` for a preprocessing family, applied as ``(x - mean) / std``."""
    if mode == "caffe":  # VGG, ResNet: BGR, mean-subtracted, not scaled
        return CAFFE_MEAN_RGB, (1.0, 1.0, 1.0), True
    if mode == "tf":  # Inception, MobileNetV2: scaled to [-1, 1]
        return (127.5,) * 3, (127.5,) * 3, False
    if mode == "torch":  # ImageNet mean/std on [0, 1]
        return TORCH_MEAN_RGB, TORCH_STD_RGB, False
    if mode == "lite":  # EfficientNet-Lite: (x - 127) / 128, about [-1, 1]
        return (127.0,) * 3, (128.0,) * 3, False
    if mode == "builtin":  # the backbone rescales 0-255 input itself
        return (0.0,) * 3, (1.0,) * 3, False
    raise ValueError(
        f"Unknown preprocessing mode {mode!r}. Expected one of: {', '.join(PREPROCESSING_MODES)}."
    )


@keras.saving.register_keras_serializable(package="transfer_studio")
class PixelNormalize(keras.layers.Layer):
    """Maps raw 0-255 RGB pixels to what a backbone family expects."""

    def __init__(self, mode: str = "tf", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode = mode
        mean, std, self.to_bgr = normalization_constants(mode)
        self._mean = tuple(float(m) for m in mean)
        self._std = tuple(float(s) for s in std)

    def call(self, inputs: Any) -> Any:  # Keras hook
        x = ops.cast(inputs, self.compute_dtype)
        if self.to_bgr:
            x = ops.flip(x, axis=-1)
            mean, std = self._mean[::-1], self._std[::-1]
        else:
            mean, std = self._mean, self._std
        if self.mode == "builtin":
            return x
        return (x - ops.convert_to_tensor(mean, self.compute_dtype)) / ops.convert_to_tensor(
            std, self.compute_dtype
        )

    def compute_output_shape(self, input_shape: tuple) -> tuple:  # Keras hook
        return input_shape

    def get_config(self) -> dict[str, Any]:  # Keras hook
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="transfer_studio")
class RealRowsAccuracy(keras.metrics.SparseCategoricalAccuracy):
    """Accuracy over the rows whose sample weight is above 0, each counted once.

    A run over several replicas pads every short batch to an even split with rows weighing 0
    and scales its real rows' weights so the loss is exact (``even_batches``): this accuracy
    ignores the padding and the scale, so it equals plain accuracy on one device.
    """

    def __init__(self, name: str = "accuracy", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        if sample_weight is not None:
            sample_weight = ops.cast(ops.greater(sample_weight, 0), self.dtype)
        return super().update_state(y_true, y_pred, sample_weight=sample_weight)


def count_params(model: keras.Model) -> tuple[int, int]:
    """``(trainable, non_trainable)`` parameter counts as Keras sees them."""
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    frozen = sum(math.prod(w.shape) for w in model.non_trainable_weights)
    return trainable, frozen
