"""The input-path rule: what a run's training reads (features, activations or images) and why.

A pure function of the config, without Keras: the Train page and the lint say what a run will
do without loading TensorFlow into the dashboard's server (``core.training.sources`` applies the
rule to a built model and re-exports it).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.config import RunConfig

FEATURES, ACTIVATIONS, IMAGES = "features", "activations", "images"


@dataclass(frozen=True)
class InputPath:
    """What a config's training reads (``kind``) and why, in the user's words (``reason``).

    ``blocker`` names the setting that keeps the run on images ("feature cache", "mode",
    "augmentation"), ``None`` when it reads cached inputs.
    """

    kind: str
    reason: str
    blocker: str | None = None


def input_path(config: RunConfig) -> InputPath:
    """The input path ``config`` asks for; fine-tuning's ``activations`` may still fall back to
    images when the model can't be cut there (``choose_source`` says why)."""
    mode = config.mode
    if config.feature_cache == "off":
        return InputPath(
            IMAGES,
            "the feature cache is off, so the frozen base runs on every image each epoch",
            "feature cache",
        )
    if mode not in ("feature_extraction", "fine_tuning"):
        return InputPath(
            IMAGES, f"mode {mode} trains the whole base, so its features change every step", "mode"
        )
    augmented = bool(config.active_augmentations())
    if mode == "feature_extraction":
        if augmented:
            views = config.augment_views
            return InputPath(
                FEATURES,
                f"mode feature_extraction freezes the whole base, so it runs once over {views} "
                f"views of each training image (the image and {views - 1} augmented copies) and "
                "once per validation image; each epoch the head trains on one stored view per "
                "image",
            )
        return InputPath(
            FEATURES,
            "mode feature_extraction freezes the whole base and augmentation is off, so the base "
            "runs once per image and the head trains on its stored features",
        )
    if augmented:
        # Why not cached views here: phase 2 trains layers of the base, and stored activations
        # of K views at the freeze cut cost K times the memory of the un-augmented cut (often
        # hundreds of MB per thousand images); the per-epoch pipeline keeps memory flat.
        return InputPath(
            IMAGES,
            "augmentation is on and mode fine_tuning trains part of the base on every epoch's "
            "augmented images, so the whole model runs on every image each epoch (augmented "
            "views are stored only in feature_extraction)",
            "augmentation",
        )
    return InputPath(
        ACTIVATIONS,
        "mode fine_tuning freezes the base's first layers and augmentation is off, so they run "
        "once per image and training reads their stored activations at the freeze cut",
    )


__all__ = ["ACTIVATIONS", "FEATURES", "IMAGES", "InputPath", "input_path"]
