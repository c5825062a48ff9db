"""Fine-tuning on activations cached at the freeze cut.

In ``fine_tuning`` mode only the base's last layers train; everything before the cut is frozen and
runs in inference mode, so without augmentation its output for an image never changes. Here the
frozen part runs once over train and validation images and its activations stay in memory; the
head warm-up then trains on pooled features (as feature extraction does) and phase 2 runs only
the unfrozen layers and the head, on the stored activations. The models built here share their
layers with the full model, so the saved model still takes images.

The cut must be a single tensor through which the unfrozen layers see the frozen ones (true at
block boundaries; a residual connection across the cut would need two). When it is not, or the
activations would not fit ``MAX_ACTIVATION_BYTES``, the run uses the image pipeline and says why
(``core.training.sources.choose_source``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
import numpy as np

from core.config import RunConfig
from core.training.model import BuiltModel, unfreeze_count

__all__ = [
    "MAX_ACTIVATION_BYTES",
    "Cut",
    "StageFn",
    "compute_activations",
    "plan_cut",
    "pooled_features",
]

MAX_ACTIVATION_BYTES = int(os.environ.get("TRANSFER_STUDIO_ACTIVATION_BYTES", 2 * 1024**3))
StageFn = Callable[[int, int], None]


@dataclass
class Cut:
    """The full model split at the freeze cut (all layers shared with it)."""

    index: int  # first unfrozen layer in ``base.layers``
    shape: tuple[int, ...]  # activation shape of one image
    prefix: keras.Model  # raw pixels → activations at the cut (frozen, inference mode)
    classifier: keras.Model  # activations → class probabilities (unfrozen layers + head)
    pooled: keras.Model  # activations → pooled features (the head warm-up's input)


def _suffix(base: keras.Model, index: int) -> tuple[keras.Model, tuple[int, ...]] | None:
    """``base`` from the cut tensor on, if exactly the layers from ``index`` on need it alone."""
    if not 0 < index < len(base.layers):
        return None
    try:
        cut_tensor = base.layers[index - 1].output  # raises for layers called more than once
        suffix = keras.Model(cut_tensor, base.output)
    except (AttributeError, ValueError):
        return None
    inside = {
        id(layer) for layer in suffix.layers if not isinstance(layer, keras.layers.InputLayer)
    }
    if inside != {id(layer) for layer in base.layers[index:]}:
        return None  # the unfrozen part also reads a tensor from before the cut
    return suffix, tuple(int(d) for d in cut_tensor.shape[1:])


def plan_cut(config: RunConfig, built: BuiltModel, images: int) -> tuple[Cut | None, str | None]:
    """``(cut, None)`` when the model can train on cached activations, else ``(None, reason)``.

    The model's side of the decision; whether the config asks for cached activations at all is
    ``core.training.sources.input_path``'s.
    """
    base = built.base
    index = len(base.layers) - unfreeze_count(config, built)
    found = _suffix(base, index)
    if found is None:
        return None, (
            f"the unfrozen layers (from {base.layers[index].name!r}) don't read the frozen ones "
            "through a single tensor; choose an unfreeze depth at a block boundary"
        )
    suffix, shape = found
    need = images * math.prod(shape) * 4
    if need > MAX_ACTIVATION_BYTES:
        return None, (
            f"activations at the cut would take {need / 1024**3:.1f} GiB "
            f"(limit {MAX_ACTIVATION_BYTES / 1024**3:.1f} GiB)"
        )
    from core.training.embeddings import build_head

    pixels = keras.Input((built.image_size, built.image_size, 3), name="image")
    x = built.model.get_layer("preprocess")(pixels)
    prefix_base = keras.Model(base.input, base.layers[index - 1].output)
    prefix = keras.Model(pixels, prefix_base(x, training=False), name="frozen_prefix")
    acts = keras.Input(shape, name="activations")
    pooled = built.model.get_layer("avg_pool")(suffix(acts, training=False))
    head = build_head(config, built)
    classifier = keras.Model(acts, head(pooled), name="unfrozen_part")
    return Cut(index, shape, prefix, classifier, keras.Model(acts, pooled)), None


def compute_activations(
    cut: Cut, paths: Sequence[str], image_size: int, stage: StageFn | None = None
) -> np.ndarray:
    """Run the frozen prefix once over ``paths``: activations at the cut, one per image."""
    from core.training.embeddings import forward_once

    return forward_once(cut.prefix, paths, image_size, stage)


def pooled_features(cut: Cut, activations: np.ndarray) -> np.ndarray:
    """The base's pooled output for stored activations (what the head warm-up trains on)."""
    import tensorflow as tf

    forward = tf.function(lambda a: cut.pooled(a, training=False), reduce_retracing=True)
    parts = [forward(activations[i : i + 256]).numpy() for i in range(0, len(activations), 256)]
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)
