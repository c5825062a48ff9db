"""The embedding cache's keys and entries, without Keras or TensorFlow.

The cache (``<home>/cache/embeddings/<key>.npy``) holds the pooled base features of a list of
files; ``core.training.embeddings`` fills it during a run. Its key is a hash of what changes the
features: backbone, weights identity, image size, preprocessing, the Keras version, the compute
policy and each file's content. Here the key is computed from plain values, so a process that
must not import TensorFlow (the dashboard's server, whose Data page looks for cached features)
computes the same key as the trainer and reads the entry with numpy.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.config import RunConfig
from core.paths import studio_home

__all__ = [
    "CACHE_FORMAT",
    "embedding_cache_dir",
    "features_key",
    "installed_keras_version",
    "read_features",
    "source_features_key",
]

CACHE_FORMAT = 1


def embedding_cache_dir() -> Path:
    """Folder of the persistent embedding cache (safe to delete)."""
    path = studio_home() / "cache" / "embeddings"
    path.mkdir(parents=True, exist_ok=True)
    return path


def installed_keras_version() -> str:
    """The installed Keras's version, read from its package metadata (Keras is not imported);
    the same string as ``keras.__version__``."""
    return importlib.metadata.version("keras")


def features_key(
    *,
    backbone: str,
    weights_id: str,
    image_size: int,
    preprocessing: str,
    shas: Sequence[str],
    keras_version: str,
    policy: str | None = None,
    augmented: dict[str, Any] | None = None,
) -> str:
    """The cache key of features of the files whose contents hash to ``shas`` (in order).

    ``policy``: the compute policy's name when it is not float32 (float16 features differ a
    little); ``augmented``: the augmentation set, views and seed of augmented views."""
    parts: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "keras": keras_version,
        "backbone": backbone,
        "weights": weights_id,
        "image_size": image_size,
        "preprocessing": preprocessing,
        "files": list(shas),
    }
    if policy is not None:
        parts["policy"] = policy
    if augmented is not None:
        parts["augmented_views"] = augmented
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def source_features_key(config: RunConfig, image_size: int, shas: Sequence[str]) -> str | None:
    """The key a float32 run of ``config``'s base gives the clean features of files with
    ``shas`` (``None``: random weights, never cached), found without importing Keras."""
    from core.models.backbones import get_backbone, weights_identity

    weights_id = weights_identity(config.backbone, config.weights)
    if weights_id is None:
        return None
    return features_key(
        backbone=config.backbone,
        weights_id=weights_id,
        image_size=image_size,
        preprocessing=get_backbone(config.backbone).preprocessing,
        shas=shas,
        keras_version=installed_keras_version(),
    )


def read_features(key: str, touch: bool = True) -> np.ndarray | None:
    """The cached features for ``key``, else ``None``; ``touch`` marks the entry recently used
    (the cache evicts the least recently used entries first)."""
    path = embedding_cache_dir() / f"{key}.npy"
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if touch:
        try:
            os.utime(path)
        except OSError:  # a read-only cache still serves its entries
            pass
    return np.asarray(features)
