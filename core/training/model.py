"""Builds the studio's models and sets each training phase's frozen/trainable state.

Model: raw 0-255 RGB → PixelNormalize (the backbone's own preprocessing) → base → global average
pooling → dropout → Dense(relu) → Dense(classes, softmax).

Three common transfer-learning mistakes are avoided here: the base is called with
``training=False`` in every transfer mode, so BatchNormalization keeps its ImageNet statistics
even when layers are unfrozen; BN layers also stay non-trainable when fine-tuning; and the model
is re-compiled after every ``trainable`` change (Keras only picks up the change on compile).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import keras

from core.config import RunConfig
from core.models.backbones import (
    BackboneSpec,
    build_base,
    default_unfreeze,
    get_backbone,
    weights_identity,
)
from core.models.layers import PixelNormalize, count_params

__all__ = [
    "MAX_CACHED_TRUNKS",
    "Backbone",
    "BuiltModel",
    "base_layer_trains",
    "build_model",
    "clear_trunk_cache",
    "compile_model",
    "layer_preview",
    "layer_preview_summary",
    "phase_epochs",
    "phase_lr",
    "resolve_backbone",
    "set_phase",
    "statistics_params",
    "unfreeze_count",
]

HEAD_PHASE, FINE_TUNE_PHASE, SCRATCH_PHASE = "head", "fine_tune", "scratch"


@dataclass(frozen=True)
class Backbone:
    """A config's backbone, resolved once per run and passed down: its spec and weights identity.

    ``weights_id`` keys the frozen-trunk cache here and the feature cache in ``embeddings``,
    both of feature extraction only: it is ``None`` in other modes (nothing to key) and for
    random weights (nothing computed with them may be reused).
    """

    spec: BackboneSpec
    weights_id: str | None


def resolve_backbone(config: RunConfig) -> Backbone:
    """Look the backbone up and identify its weights (hashes a weights file given by path)."""
    spec = get_backbone(config.backbone)
    if config.mode != "feature_extraction":
        return Backbone(spec, None)
    return Backbone(spec, weights_identity(config.backbone, config.weights))


@dataclass
class BuiltModel:
    """A model together with what the trainer needs to know about it."""

    model: keras.Model
    base: keras.Model
    spec: BackboneSpec
    image_size: int
    num_classes: int
    weights_id: str | None = None  # ``Backbone.weights_id`` of the run that built it
    # ``embeddings.feature_extractor``'s model (images → pooled features), built on first use.
    extractor: keras.Model | None = field(default=None, repr=False, compare=False)
    # The ``tf.distribute`` strategy the model was built under (``None``: the default device):
    # its one-off forward passes split their batches over the strategy's replicas.
    strategy: Any = field(default=None, repr=False, compare=False)


# Frozen trunks (preprocess → pretrained base → pooling) of recent feature-extraction runs, so
# a long-lived process (the app, the benchmark) trying another head on the same backbone skips
# rebuilding the base and reloading its weights (seconds for EfficientNet-Lite0). Only
# feature-extraction runs get one: their base is never trained, so it stays the pretrained base.
MAX_CACHED_TRUNKS = 2
_trunks: OrderedDict[tuple, tuple[keras.Model, Any, Any]] = OrderedDict()
_trunks_lock = threading.Lock()


def _trunk_key(config: RunConfig, size: int, identity: str | None) -> tuple | None:
    if config.mode != "feature_extraction" or _current_strategy() is not None:
        # A distributed run's variables belong to its own strategy: never shared.
        return None
    # None for random weights: those follow the seed
    if identity is None:
        return None
    policy = keras.mixed_precision.global_policy().name  # a float16 trunk is another trunk
    return (config.backbone, identity, size, keras.__version__, policy)


def _current_strategy() -> Any:
    """The ``tf.distribute`` strategy whose scope this is, ``None`` outside any."""
    import tensorflow as tf

    return tf.distribute.get_strategy() if tf.distribute.has_strategy() else None


def _build_trunk(config: RunConfig, spec: BackboneSpec, size: int) -> tuple[keras.Model, Any, Any]:
    weights = "none" if config.mode == "scratch" else config.weights
    base = build_base(spec, weights, size)
    inputs = keras.Input((size, size, 3), name="image")
    x = PixelNormalize(spec.preprocessing, name="preprocess")(inputs)
    # Transfer modes run the base in inference mode for good: BN statistics stay ImageNet's.
    x = base(x, training=False) if config.mode != "scratch" else base(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return base, inputs, pooled


def clear_trunk_cache() -> None:
    """Forget the cached frozen trunks (frees their memory)."""
    with _trunks_lock:
        _trunks.clear()


def build_model(
    config: RunConfig, num_classes: int, backbone: Backbone | None = None
) -> BuiltModel:
    """The full classifier for ``config`` (weights as the config says).

    ``backbone``: the config's backbone already resolved (``resolve_backbone``); looked up here
    when not given.
    """
    backbone = backbone or resolve_backbone(config)
    spec = backbone.spec
    size = config.image_size or spec.default_size
    key = _trunk_key(config, size, backbone.weights_id)
    with _trunks_lock:
        trunk = _trunks.get(key) if key is not None else None
        if trunk is None:
            trunk = _build_trunk(config, spec, size)
            if key is not None:
                _trunks[key] = trunk
                while len(_trunks) > MAX_CACHED_TRUNKS:
                    _trunks.popitem(last=False)
        elif key is not None:
            _trunks.move_to_end(key)
    base, inputs, pooled = trunk
    x = keras.layers.Dropout(config.dropout, name="head_dropout")(pooled)
    x = keras.layers.Dense(config.dense_units, activation="relu", name="head_dense")(x)
    # Under mixed precision the softmax runs (and outputs) float32: float16 probabilities
    # underflow, and the loss needs them exact.
    mixed = keras.mixed_precision.global_policy().compute_dtype != "float32"
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", name="predictions", dtype="float32" if mixed else None
    )(x)
    model = keras.Model(inputs, outputs, name=f"{spec.name}_{config.mode}")
    built = BuiltModel(model, base, spec, size, num_classes, backbone.weights_id)
    built.strategy = _current_strategy()
    return built


def unfreeze_count(config: RunConfig, built: BuiltModel) -> int:
    """How many trailing base layers phase 2 unfreezes."""
    total = len(built.base.layers)
    if config.mode == "full_fine_tuning":
        return total
    return min(config.unfreeze or default_unfreeze(built.spec, built.base), total)


def base_layer_trains(config: RunConfig, built: BuiltModel, phase: str) -> list[bool]:
    """Per base layer, whether ``phase`` trains it: the one rule behind ``set_phase``, the
    layer preview's "N of M base layers train" and the Run page's phase table.

    Head phase: none. Scratch: all. Fine-tuning: the last ``unfreeze_count`` layers except
    BatchNormalization ones (they keep their ImageNet statistics and scale), so the count of
    layers that train can be below the unfreeze depth.
    """
    layers = built.base.layers
    if phase == HEAD_PHASE:
        return [False] * len(layers)
    if phase == SCRATCH_PHASE:
        return [True] * len(layers)
    if phase == FINE_TUNE_PHASE:
        cut = len(layers) - unfreeze_count(config, built)
        return [
            i >= cut and not isinstance(layer, keras.layers.BatchNormalization)
            for i, layer in enumerate(layers)
        ]
    raise ValueError(f"Unknown phase {phase!r}")


def statistics_params(model: keras.Model) -> int:
    """Parameters no phase ever trains by gradient (BatchNormalization's moving mean and
    variance): counted by Keras as non-trainable, but not "frozen" by the studio."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += statistics_params(layer)  # the base, nested in the classifier
        elif isinstance(layer, keras.layers.BatchNormalization):
            total += math.prod(layer.moving_mean.shape) + math.prod(layer.moving_variance.shape)
    return total


def set_phase(config: RunConfig, built: BuiltModel, phase: str) -> dict[str, Any]:
    """Freeze/unfreeze for ``phase`` and report the resulting parameter and layer counts.

    ``unfrozen_layers`` is the unfreeze depth (trailing layers, BatchNormalization included);
    ``trainable_layers`` the base layers that actually train (``base_layer_trains``): show
    that one. ``frozen_params`` leaves out the BN statistics (``statistics_params``), which
    Keras counts as non-trainable even in a from-scratch run where nothing is frozen.
    """
    base = built.base
    trains = base_layer_trains(config, built, phase)
    base.trainable = any(trains)  # sets every sub-layer; the per-layer rule follows
    if any(trains) and not all(trains):
        for layer, train in zip(base.layers, trains, strict=True):
            layer.trainable = train
    unfrozen = 0
    if phase == SCRATCH_PHASE:
        unfrozen = len(base.layers)
    elif phase == FINE_TUNE_PHASE:
        unfrozen = unfreeze_count(config, built)
    trainable, frozen = count_params(built.model)
    return {
        "phase": phase,
        "trainable_params": trainable,
        "non_trainable_params": frozen,
        "frozen_params": frozen - statistics_params(built.model),
        "unfrozen_layers": unfrozen,
        "trainable_layers": sum(trains),
        "base_layers": len(base.layers),
    }


def compile_model(model: keras.Model, lr: float) -> None:
    """(Re-)compile; must follow every change of ``trainable``.

    A model built under a strategy of several replicas trains on padded batches
    (``even_batches``): its accuracy counts the real rows only (``RealRowsAccuracy``).
    """
    from core.models.layers import RealRowsAccuracy

    strategy = getattr(model, "distribute_strategy", None)
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        metrics: dict[str, Any] = {"weighted_metrics": [RealRowsAccuracy()]}
    else:
        metrics = {"metrics": ["accuracy"]}
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss="sparse_categorical_crossentropy",
        **metrics,
    )


def phase_lr(config: RunConfig, phase: str) -> float:
    """Learning rate of a phase: the low fine-tuning rate only for phase 2."""
    return config.fine_tune_lr if phase == FINE_TUNE_PHASE else config.lr


def phase_epochs(config: RunConfig, phase: str) -> int:
    """Epochs planned for a phase."""
    return config.fine_tune_epochs if phase == FINE_TUNE_PHASE else config.epochs


def layer_preview(config: RunConfig, built: BuiltModel) -> list[dict[str, Any]]:
    """Per base layer: name, type, parameters and whether the run's last phase trains it (the
    Train page's table; ``base_layer_trains`` decides)."""
    trains = base_layer_trains(config, built, config.phases[-1])
    return [
        {
            "index": i,
            "name": layer.name,
            "type": type(layer).__name__,
            "params": int(layer.count_params()) if layer.built else 0,
            "trainable_in_fine_tune": train,
        }
        for i, (layer, train) in enumerate(zip(built.base.layers, trains, strict=True))
    ]


def layer_preview_summary(config: RunConfig, num_classes: int) -> dict[str, Any]:
    """Which base layers each phase trains and the trainable/frozen parameter counts.

    Builds the model with ``weights="none"`` (only shapes matter), so it works offline for any
    backbone. Returns ``phases`` (counts per phase), ``layers`` (``layer_preview`` rows),
    ``trainable_base_layers``, ``base_layers`` and ``image_size``.
    """
    preview_config = config.with_changes(weights="none").validate()
    built = build_model(preview_config, max(num_classes, 2))
    phases = [set_phase(preview_config, built, phase) for phase in preview_config.phases]
    layers = layer_preview(preview_config, built)
    return {
        "phases": phases,
        "layers": layers,
        # the same number as the last phase's ``trainable_layers`` (the Run page's)
        "trainable_base_layers": phases[-1]["trainable_layers"],
        "base_layers": len(layers),
        "image_size": built.image_size,
    }
