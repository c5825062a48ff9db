"""Classify images with a pretrained backbone's own ImageNet head: what the raw model "sees".

The ``efficientnet_lite0/1/2`` backbones always work offline (their weights ship in pip packages).
A keras.applications backbone works only if its *with-top* ImageNet file is already in Keras' cache:
the studio never downloads at run time, so otherwise ``WeightsUnavailableError`` explains what to
do.

Every classifier is ``0-255 RGB input -> PixelNormalize(spec.preprocessing) -> backbone with top``,
built once per (backbone, size) and kept in a small module-level cache, since the dashboard calls
this on every interaction.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import BackboneError, ConfigError, WeightsUnavailableError
from core.models.backbones import (
    DEFAULT_BACKBONE,
    SOURCE_BUNDLED,
    BackboneSpec,
    check_image_size,
    get_backbone,
    keras_models_dir,
)
from core.models.imagenet import imagenet_labels

__all__ = [
    "BATCH_SIZE",
    "KERAS_TOP_FILES",
    "NUM_CLASSES",
    "classify_images",
    "clear_classifier_cache",
    "get_classifier",
]

# File names keras.applications caches for the *with-top* ImageNet weights (from its source:
# vgg16.py, resnet.py, inception_v3.py, efficientnet.py, mobilenet_v2.py, mobilenet_v3.py). The
# registry only lists the headless ones, which cannot classify.
KERAS_TOP_FILES: dict[str, str] = {
    "vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
    "vgg19": "vgg19_weights_tf_dim_ordering_tf_kernels.h5",
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
    "resnet101": "resnet101_weights_tf_dim_ordering_tf_kernels.h5",
    "resnet152": "resnet152_weights_tf_dim_ordering_tf_kernels.h5",
    "inception_v3": "inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
    "efficientnet_b0": "efficientnetb0.h5",
    "efficientnet_b1": "efficientnetb1.h5",
    "efficientnet_b2": "efficientnetb2.h5",
    "mobilenet_v2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
    "mobilenet_v3_small": "weights_mobilenet_v3_small_224_1.0_float.h5",
    "mobilenet_v3_large": "weights_mobilenet_v3_large_224_1.0_float.h5",
}
NUM_CLASSES = 1000
BATCH_SIZE = 16  # bounds memory for long image lists

_MODELS: dict[tuple[str, int], Any] = {}
_MODELS_LOCK = threading.Lock()


def _classifier_size(spec: BackboneSpec, image_size: int | None) -> int:
    if spec.imagenet_source == SOURCE_BUNDLED:
        size = spec.default_size if image_size is None else image_size
        check_image_size(spec, size)
        return size
    # keras.applications' with-top ImageNet models accept only their training size.
    if image_size is not None and image_size != spec.default_size:
        raise BackboneError(
            f"{spec.name}'s ImageNet classifier takes exactly {spec.default_size} px images, "
            f"got image_size={image_size}. Leave it unset, or use {DEFAULT_BACKBONE}, which "
            "classifies at any size."
        )
    return spec.default_size


def _check_keras_top_cached(spec: BackboneSpec) -> None:
    file_name = KERAS_TOP_FILES.get(spec.name)
    if file_name is None:
        raise BackboneError(f"{spec.name} has no known ImageNet classifier head.")
    path = keras_models_dir() / file_name
    if not path.is_file():
        raise WeightsUnavailableError(
            f"Classifying with {spec.name} needs its ImageNet classifier weights ({file_name}), "
            f"which are not cached in {keras_models_dir()}. Keras downloads them once with "
            f"network access (e.g. keras.applications call with include_top=True, "
            f"weights='imagenet'); offline, use the backbone {DEFAULT_BACKBONE}.",
            settings=("backbone",),
        )


def _build_classifier(spec: BackboneSpec, size: int) -> Any:
    import keras

    from core.models.layers import PixelNormalize

    if spec.imagenet_source != SOURCE_BUNDLED:
        _check_keras_top_cached(spec)
    shape = (size, size, 3)
    try:
        base = spec.constructor(include_top=True, weights="imagenet", input_shape=shape)
    except BackboneError:
        raise
    except Exception as exc:  # keras tries a download when the cached file's hash is wrong
        raise WeightsUnavailableError(
            f"Could not load {spec.name}'s ImageNet classifier weights: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. "
            f"Offline, use the backbone {DEFAULT_BACKBONE}.",
            settings=("backbone",),
        ) from exc
    inputs = keras.Input(shape=shape, name="pixels")
    x = PixelNormalize(spec.preprocessing, name="normalize")(inputs)
    return keras.Model(inputs, base(x), name=f"{spec.name}_imagenet_classifier")


def get_classifier(backbone: str, image_size: int | None = None) -> Any:
    """The cached ``raw RGB -> 1000 probabilities`` model for ``backbone`` (built on first use)."""
    spec = get_backbone(backbone)
    size = _classifier_size(spec, image_size)
    key = (spec.name, size)
    with _MODELS_LOCK:  # builds are rare and slow: one at a time, never twice for the same key
        model = _MODELS.get(key)
        if model is None:
            model = _MODELS[key] = _build_classifier(spec, size)
    return model


def clear_classifier_cache() -> None:
    """Forget every cached classifier (frees memory; tests use it)."""
    with _MODELS_LOCK:
        _MODELS.clear()


def classify_images(
    backbone: str,
    paths: list[str | Path],
    top_k: int = 5,
    image_size: int | None = None,
) -> list[dict[str, Any]]:
    """Top-``k`` ImageNet predictions of ``backbone``'s pretrained classifier for each image.

    Returns ``[{"image": str(path), "predictions": [{"class_index", "label", "probability"}]}]``
    in input order, each prediction list sorted by decreasing probability.
    """
    from core.data.images import to_array

    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= NUM_CLASSES:
        raise ConfigError(f"top_k must be an integer from 1 to {NUM_CLASSES}, got {top_k!r}.")
    if not paths:
        return []
    model = get_classifier(backbone, image_size)
    size = int(model.input_shape[1])
    labels = imagenet_labels()
    results: list[dict[str, Any]] = []
    for start in range(0, len(paths), BATCH_SIZE):
        chunk = paths[start : start + BATCH_SIZE]
        batch = np.stack([to_array(p, size, np.float32) for p in chunk])
        probs = np.asarray(model.predict_on_batch(batch), dtype="float64")
        for path, row in zip(chunk, probs, strict=True):
            top = np.argsort(-row, kind="stable")[:top_k]
            results.append(
                {
                    "image": os.fspath(path),
                    "predictions": [
                        {"class_index": int(i), "label": labels[i], "probability": float(row[i])}
                        for i in top
                    ],
                }
            )
    return results
