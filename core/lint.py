"""Pre-flight checks of a run config: risky settings flagged before hours are spent training.

Each finding says what is off, why it matters and how to fix it, naming settings in the user's
words ("augmentation", "image size", "weights"): the CLI adds its flag names when it prints them.
Findings never block a run (the config is valid; ``RunConfig.validate`` refuses invalid ones):
``warning`` means "likely to hurt accuracy or waste the run", ``info`` means "worth knowing".
"""

from __future__ import annotations

from typing import Literal, TypedDict

from core.config import MODE_WORDS, RunConfig
from core.errors import StudioError

# The checks' thresholds are module constants; the public face is the lint itself.
__all__ = ["LintFinding", "count_train_images", "lint_config"]

WARNING: Literal["warning"] = "warning"
INFO: Literal["info"] = "info"
FINE_TUNE_MODES = ("fine_tuning", "full_fine_tuning")
MAX_FINE_TUNE_LR = 1e-4
FULL_FINE_TUNE_MIN_IMAGES = 1000
SCRATCH_MIN_IMAGES = 5000


class LintFinding(TypedDict):
    """One finding: ``level`` (``warning`` or ``info``), a stable ``code`` (the CLI maps it to
    flags, the Train page to a section) and a ``message`` in the settings' words."""

    level: Literal["warning", "info"]
    code: str
    message: str


def _finding(level: Literal["warning", "info"], code: str, message: str) -> LintFinding:
    return {"level": level, "code": code, "message": message}


def count_train_images(config: RunConfig, scan: bool = True) -> int | None:
    """The training split's size if cheaply known, else ``None`` (the size checks stay quiet).

    Built-ins: from their description (no files read). Folders: ``load_dataset``, fast on a
    folder already scanned (the scan cache), when ``scan``. Zips and Kaggle: unknown here
    (counting them would mean extracting or downloading).
    """
    from core.data import load_dataset, parse_source
    from core.data.builtin import BUILTINS

    try:
        kind, value = parse_source(config.data)
        if kind == "builtin":
            spec = BUILTINS.get(value.lower())
            return None if spec is None else round(spec.images * (1 - config.val_split))
        if kind == "folder" and scan:
            data = load_dataset(config.data, val_split=config.val_split, seed=config.seed)
            return len(data.train_paths)
    except (StudioError, OSError):
        return None  # the run itself reports what is wrong with the data
    return None


def lint_config(config: RunConfig, train_images: int | None = None) -> list[LintFinding]:
    """Findings ``{level: "warning"|"info", code, message}`` for ``config``, warnings first.

    ``train_images`` (the training split's size, when known) enables the dataset-size checks.
    """
    from core.errors import BackboneError
    from core.models.backbones import get_backbone

    found: list[LintFinding] = []
    fine_tune_phase = config.mode in FINE_TUNE_MODES and config.fine_tune_epochs > 0
    mode = MODE_WORDS.get(config.mode, str(config.mode))

    if config.mode in FINE_TUNE_MODES and config.fine_tune_epochs == 0:
        found.append(
            _finding(
                WARNING,
                "no_fine_tune_phase",
                f"{mode.capitalize()} with 0 fine-tune epochs has no fine-tuning phase: the base "
                "is never unfrozen, so this run is feature extraction under another name. Set "
                "fine-tune epochs to 1 or more, or use feature extraction.",
            )
        )
    if fine_tune_phase and config.fine_tune_lr > MAX_FINE_TUNE_LR:
        found.append(
            _finding(
                WARNING,
                "fine_tune_lr_high",
                f"A fine-tune learning rate of {config.fine_tune_lr:g} is above "
                f"{MAX_FINE_TUNE_LR:g}. Large "
                "updates to unfrozen pretrained layers destroy the features that make transfer "
                "work (catastrophic forgetting). Use a fine-tune learning rate of 1e-5 (up to "
                "1e-4).",
            )
        )
    if fine_tune_phase and config.lr <= config.fine_tune_lr:
        found.append(
            _finding(
                WARNING,
                "head_lr_not_above_fine_tune_lr",
                f"The learning rate of the head ({config.lr:g}) is not above the fine-tune "
                f"learning rate ({config.fine_tune_lr:g}). The new head needs the larger rate to "
                "learn quickly during warm-up, the pretrained base the smaller one to be nudged "
                "gently. Use e.g. a learning rate of 1e-3 and a fine-tune learning rate of 1e-5.",
            )
        )

    try:
        spec = get_backbone(config.backbone)
    except BackboneError:
        spec = None  # validate() reports unknown backbones; lint only adds advice
    if spec is not None and config.image_size is not None and config.image_size < spec.default_size:
        pretrained = config.weights != "none" and config.mode != "scratch"
        found.append(
            _finding(
                WARNING if pretrained else INFO,
                "image_size_below_default",
                f"An image size of {config.image_size} px is below {spec.display_name}'s "
                f"default of {spec.default_size} px. "
                + (
                    "Its pretrained features were learned at that scale; on smaller images "
                    "objects shrink and the last feature map gets coarse, which costs accuracy. "
                    if pretrained
                    else "Smaller inputs train faster but leave a coarse last feature map. "
                )
                + f"Use an image size of {spec.default_size} (the default) unless speed matters "
                "more.",
            )
        )
    if config.weights == "none" and config.mode in ("feature_extraction", *FINE_TUNE_MODES):
        found.append(
            _finding(
                WARNING,
                "transfer_without_pretrained_weights",
                f"{mode.capitalize()} with random weights (weights: none) freezes a randomly "
                "initialised base: the head learns from random features, so there is nothing to "
                "transfer. Use imagenet weights, or the from-scratch mode for a baseline.",
            )
        )
    if (
        config.mode == "full_fine_tuning"
        and train_images is not None
        and train_images < FULL_FINE_TUNE_MIN_IMAGES
    ):
        found.append(
            _finding(
                WARNING,
                "full_fine_tuning_small_data",
                f"Full fine-tuning on {train_images} training images: unfreezing every layer of "
                f"the base lets it memorise a set this small (under {FULL_FINE_TUNE_MIN_IMAGES}) "
                "and overfit. Use fine-tuning (last block only) or feature extraction, or "
                "add data (and turn augmentation on).",
            )
        )
    if config.mode == "scratch" and train_images is not None and train_images < SCRATCH_MIN_IMAGES:
        found.append(
            _finding(
                WARNING,
                "scratch_few_images",
                f"Training from scratch on {train_images} images (under {SCRATCH_MIN_IMAGES}): a "
                "randomly initialised network rarely generalises from so little data. Fine as a "
                "baseline to compare against; for a usable model use feature extraction with "
                "imagenet weights.",
            )
        )
    found += _device_findings(config)
    order = {WARNING: 0, INFO: 1}
    return sorted(found, key=lambda f: order[f["level"]])  # stable: rule order within a level


def _device_findings(config: RunConfig) -> list[LintFinding]:
    """Mixed precision forced on without a GPU; a mirrored run with one device to mirror over.

    Only these non-default settings look at the devices (which loads TensorFlow).
    """
    from core import devices

    found: list[LintFinding] = []
    if config.mixed_precision == "on" and not devices.gpu_capabilities():
        found.append(
            _finding(
                WARNING,
                "mixed_precision_on_cpu",
                "Mixed precision is on, but this machine has no GPU: a CPU computes float16 "
                "slower than float32, so the run gets slower and slightly less exact. Use mixed "
                "precision auto (on only where it pays) or off.",
            )
        )
    if config.distribute == "mirrored":
        kind, names = devices.training_devices()
        if len(names) == 1:
            found.append(
                _finding(
                    INFO,
                    "mirrored_one_device",
                    f"Distribute mirrored sees one device ({kind}): the run trains on 1 replica, "
                    "as with distribute none. For several devices use a machine with more GPUs, "
                    f"or split the CPU with {devices.LOGICAL_CPUS_ENV}=2 (to try the strategy; "
                    "it is not faster on one CPU).",
                )
            )
    return found
