"""The embedding-cache entry a feature-extraction run would use: found, or computed (locally or
sharded over a Ray cluster) and stored under the key a local pass gives.

The key and the writer are the embedding cache's own (``core.training.embeddings.cache_key``,
``store_cached``): a pass on the cluster leaves exactly the entry a local run of the same
config looks up, so that run (or a later local one) finds it warm. The entry is written once,
after every shard is in: a pass that fails halfway writes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from core.config import RunConfig
from core.errors import ConfigError

__all__ = [
    "FeatureEntry",
    "ensure_features",
    "feature_config",
    "run_views",
]


@dataclass
class FeatureEntry:
    """What ``features`` prints (``--json``): the entry, and how it was obtained."""

    images: int  # images (and augmented views) through the base for the entry
    shards: int  # 0: computed locally or found in the cache
    ray_nodes: int  # nodes that computed shards (0: none)
    cache_key: str  # the clean pass's key
    seconds: float
    images_per_s: float
    cached: bool  # every part was in the cache already
    views_cache_key: str | None = None  # the augmented views' key (views > 1)
    restarts: int = 0  # actor processes replaced during the pass
    train_images: int = 0
    val_images: int = 0
    prepare_s: float = 0.0  # the driver's scan, file digests and key (before any pass)
    startup_s: float = 0.0  # Ray: until every actor had loaded the backbone
    compute_s: float = 0.0  # Ray: the actors' seconds inside shards, summed

    def to_json(self) -> dict[str, Any]:
        """The public JSON object (keys are a contract: extend, never rename)."""
        return asdict(self)


def feature_config(
    data: str,
    backbone: str,
    image_size: int | None,
    views: int = 1,
    *,
    weights: str = "imagenet",
    val_split: float | None = None,
    seed: int | None = None,
    augmentations: tuple[str, ...] | None = None,
) -> RunConfig:
    """The feature-extraction run config whose features ``features`` computes."""
    base = RunConfig()
    changes: dict[str, Any] = {
        "data": data, "backbone": backbone, "mode": "feature_extraction", "weights": weights,
        "image_size": image_size, "augment": views > 1, "feature_cache": "auto",
    }  # fmt: skip
    if views > 1:
        changes["augment_views"] = views
    if val_split is not None:
        changes["val_split"] = val_split
    if seed is not None:
        changes["seed"] = seed
    if augmentations is not None:
        changes["augmentations"] = augmentations
    return base.with_changes(**changes).validate()


def run_views(config: RunConfig) -> int:
    """Views per training image a feature-extraction run of ``config`` computes."""
    return config.augment_views if config.active_augmentations() else 1


def ensure_features(
    config: RunConfig,
    *,
    ray: bool,
    shard_rows: int | None = None,
    progress: Callable[[Any], None] | None = None,
) -> FeatureEntry:
    """Find or compute the cache entries (clean, and augmented views when the config has them)
    a feature-extraction run of ``config`` reads; ``ray``: compute them on the cluster the
    driver is connected to (``core.cluster.connect``), else in this process.

    ``progress(pass)``: called after each shard (``core.cluster.shards.ShardedPass``).
    """
    started = time.perf_counter()
    if config.mode != "feature_extraction":
        raise ConfigError(
            f"Features are cached for feature_extraction runs only, got mode {config.mode!r}.",
            settings=("mode",),
        )
    sharded = _early_actors(config, shard_rows, progress) if ray else None
    try:
        return _ensure(config, sharded, started)
    finally:
        if sharded is not None:
            sharded.close()


def _early_actors(config: RunConfig, shard_rows: int | None, progress: Any) -> Any:
    """The sharded pass's actors, started before anything else: they import TensorFlow and
    load the backbone while the driver does (and scans and hashes the files)."""
    from core.cluster.shards import ShardedPass
    from core.models.backbones import get_backbone, weights_identity

    size = config.image_size or get_backbone(config.backbone).default_size
    weights_id = weights_identity(config.backbone, config.weights)
    sharded = ShardedPass(
        config.with_changes(image_size=size), weights_id, [], shard_rows=shard_rows,
        progress=progress,
    )  # fmt: skip
    if weights_id is not None:  # else not cacheable: ``_ensure`` says so
        sharded.start()
    return sharded


def _ensure(config: RunConfig, sharded: Any, started: float) -> FeatureEntry:
    import keras

    from core.data import load_dataset
    from core.training.embeddings import (
        CONVERT_MIN_ROWS,
        augmented_features_for,
        cache_key,
        features_for,
        load_cached,
        store_cached,
    )
    from core.training.model import build_model, resolve_backbone

    scanning = time.perf_counter()
    data = load_dataset(config.data, val_split=config.val_split, seed=config.seed)
    backbone = resolve_backbone(config)
    size = config.image_size or backbone.spec.default_size
    paths = [*data.train_paths, *data.val_paths]
    n_train, views = len(data.train_paths), run_views(config)
    key = cache_key(config, size, paths, backbone)
    views_key = cache_key(config, size, data.train_paths, backbone, views) if views > 1 else None
    prepared = time.perf_counter() - scanning  # the driver's own work: scan, digests, key
    if key is None:
        raise ConfigError(
            f"Features of {config.backbone} with weights {config.weights!r} are not cached "
            "(random weights have no identity to key them on). Use imagenet or a weights file.",
            settings=("weights",),
        )
    width = backbone.spec.feature_width
    total = len(paths) + (views - 1) * n_train
    clean = load_cached(key)
    have_clean = clean is not None and clean.shape == (len(paths), width)
    have_views = views_key is None or _has(load_cached(views_key), (views - 1, n_train, width))
    entry = FeatureEntry(
        images=total, shards=0, ray_nodes=0, cache_key=key, seconds=0.0, images_per_s=0.0,
        cached=have_clean and have_views, views_cache_key=views_key, train_images=n_train,
        val_images=len(data.val_paths), prepare_s=round(prepared, 3),
    )  # fmt: skip
    if entry.cached:
        entry.seconds = round(time.perf_counter() - started, 3)
        return entry
    if sharded is not None:
        sharded.plan(
            paths, train_rows=0 if have_views else n_train, views=1 if have_views else views,
            convert=total >= CONVERT_MIN_ROWS, clean=not have_clean,
        )  # fmt: skip
        result = sharded.run()
        # Written only now, every shard in: a pass that failed halfway left nothing behind.
        if not have_clean:
            store_cached(key, result.features)
        if views_key is not None and result.augmented is not None:
            store_cached(views_key, result.augmented)
        entry.shards, entry.ray_nodes = result.shards, result.nodes
        entry.restarts = result.restarts
        entry.startup_s, entry.compute_s = round(result.startup_s, 3), round(result.compute_s, 3)
    else:
        keras.utils.set_random_seed(config.seed)
        built = build_model(config, len(data.class_names), backbone)
        runtime: dict[str, Any] = {"convert": total >= CONVERT_MIN_ROWS}
        features_for(config, built, paths, runtime=runtime)
        if views > 1:
            augmented_features_for(config, built, data.train_paths, runtime=runtime)
    entry.seconds = round(time.perf_counter() - started, 3)
    entry.images_per_s = round(total / entry.seconds, 2) if entry.seconds > 0 else 0.0
    return entry


def _has(array: Any, shape: tuple[int, ...]) -> bool:
    return array is not None and tuple(array.shape) == shape
