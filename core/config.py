"""``RunConfig``: the single description of a training run.

Built by the Train page and by the CLI, stored with the run as ``config.json``, exportable and
re-runnable. Validation errors say what was received, what is allowed and how to fix it.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from core.errors import ConfigError

__all__ = [
    "AUGMENTATIONS",
    "CLASS_WEIGHT_CHOICES",
    "CLASS_WEIGHT_HELP",
    "DEFAULT_DATA",
    "DISTRIBUTE_CHOICES",
    "DISTRIBUTE_HELP",
    "FEATURE_CACHE_CHOICES",
    "MIXED_PRECISION_CHOICES",
    "MIXED_PRECISION_HELP",
    "MODES",
    "MODE_HELP",
    "MODE_WORDS",
    "SETTING_LABELS",
    "Mode",
    "Phase",
    "RunConfig",
    "Status",
    "setting_label",
]

# RunConfig fields in the words the dashboard and messages use (the CLI maps them to flags).
SETTING_LABELS = {
    "lr": "learning rate",
    "fine_tune_lr": "fine-tune learning rate",
    "fine_tune_epochs": "fine-tune epochs",
    "val_split": "validation split",
    "dense_units": "head units",
    "dropout": "head dropout",
    "unfreeze": "unfrozen layers",
    "augment_views": "augmented views",
    "class_weight": "class weights",
}


class Mode(enum.StrEnum):
    """How much of the pretrained base a run trains."""

    FEATURE_EXTRACTION = "feature_extraction"
    FINE_TUNING = "fine_tuning"
    FULL_FINE_TUNING = "full_fine_tuning"
    SCRATCH = "scratch"

    @property
    def words(self) -> str:
        """The mode in a sentence ("fine-tuning"): what findings and the dashboard say."""
        return MODE_WORDS[self]


MODE_WORDS: dict[str, str] = {
    Mode.FEATURE_EXTRACTION: "feature extraction",
    Mode.FINE_TUNING: "fine-tuning",
    Mode.FULL_FINE_TUNING: "full fine-tuning",
    Mode.SCRATCH: "from scratch",
}


class Phase(enum.StrEnum):
    """A training phase: the head on a frozen base, then fine-tuning; or one from-scratch phase."""

    HEAD = "head"
    FINE_TUNE = "fine_tune"
    SCRATCH = "scratch"


class Status(enum.StrEnum):
    """Where a run is. Members equal (and JSON-serialise as) their plain string values."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


# Plain strings (argparse quotes its choices with repr(); an enum's repr is not its value).
MODES: tuple[str, ...] = tuple(m.value for m in Mode)
AUGMENTATIONS = ("flip", "rotation", "zoom", "contrast")
FEATURE_CACHE_CHOICES = ("auto", "off")
CLASS_WEIGHT_CHOICES = ("none", "balanced")
DISTRIBUTE_CHOICES = ("none", "mirrored")
DISTRIBUTE_HELP: Mapping[str, str] = {
    "none": "Train on one device: the first GPU, else the CPU.",
    "mirrored": "One run over every visible GPU (else every logical CPU, see "
    "TRANSFER_STUDIO_LOGICAL_CPUS) with tf.distribute.MirroredStrategy: batch size is per "
    "device (global batch = batch size × replicas) and learning rates scale linearly "
    "(lr × replicas). With one device it trains on 1 replica.",
}
MIXED_PRECISION_CHOICES = ("auto", "on", "off")
MIXED_PRECISION_HELP: Mapping[str, str] = {
    "auto": "On only where it pays: a GPU with compute capability 7.0 or more; never on a CPU.",
    "on": "mixed_float16: float16 compute, float32 weights and softmax output, loss scaling.",
    "off": "float32 everywhere.",
}
CLASS_WEIGHT_HELP: Mapping[str, str] = {
    "none": "Every image counts the same: common classes dominate the loss.",
    "balanced": "Each class weighs n_images / (n_classes × its images) in the training loss, "
    "so a rare class counts as much as a common one. Use it when the classes are imbalanced.",
}
MODE_HELP: Mapping[str, str] = {  # keyed by Mode (members hash as their values)
    Mode.FEATURE_EXTRACTION: "Frozen pretrained base, train only a new head. Small data similar "
    "to ImageNet (< 10k images). Fastest.",
    Mode.FINE_TUNING: "Warm up the head, then unfreeze the base's last layers at a very low "
    "learning rate. Medium data, or data unlike ImageNet.",
    Mode.FULL_FINE_TUNING: "Warm up the head, then train the whole base at a very low learning "
    "rate. Large data (> 100k images).",
    Mode.SCRATCH: "Random initialisation, everything trainable: the baseline that shows what "
    "transfer buys.",
}
DEFAULT_DATA = "builtin:photos"


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run. ``None`` sizes/depths mean "the backbone's default"."""

    backbone: str = "efficientnet_lite0"
    # "imagenet", "none", or a path to a local weights file; mode "scratch" always starts from
    # random weights (that is what makes it the baseline), whatever this says.
    weights: str = "imagenet"
    # One of ``Mode``. Typed ``str`` so that plain strings (a stored config.json, a flag, a call)
    # are accepted as they are: a known one becomes its ``Mode`` member, an unknown one is kept
    # so that ``validate`` can name it.
    mode: str = Mode.FEATURE_EXTRACTION
    data: str = DEFAULT_DATA
    image_size: int | None = None
    batch_size: int = 32
    epochs: int = 3  # head phase (the only phase for feature_extraction and scratch)
    fine_tune_epochs: int = 3  # second phase of fine_tuning / full_fine_tuning
    lr: float = 1e-3
    fine_tune_lr: float = 1e-5
    unfreeze: int | None = None  # trailing base layers unfrozen in phase 2; None = last block
    # Random flip/rotation/zoom/contrast, on by default as in the notebooks users come from;
    # turning it off lets feature extraction use the (much faster) feature cache.
    augment: bool = True
    augmentations: tuple[str, ...] = AUGMENTATIONS
    # With augmentation and the feature cache, the frozen base runs once over this many views of
    # each training image (the image itself and views - 1 augmented copies); each epoch trains on
    # one view per image. 4 was chosen by measurement (docs/benchmark.md, figure 6).
    augment_views: int = 4
    val_split: float = 0.2
    seed: int = 42
    # "auto": in feature_extraction, run the frozen base once per image (or per augmented view)
    # and train the head on stored features (several times faster); "off": the per-epoch
    # pipeline, where the frozen base runs on every (augmented) image in every epoch.
    feature_cache: str = "auto"
    dropout: float = 0.2
    dense_units: int = 256
    # "balanced": each class's training loss is weighted by n_images / (n_classes * its images)
    # (scikit-learn's rule), in every training path; "none": every image counts the same.
    class_weight: str = "none"
    # "mirrored": one run over every visible device (tf.distribute.MirroredStrategy);
    # ``batch_size`` stays per device. "none": one device. (core/devices.py)
    distribute: str = "none"
    # "auto": mixed_float16 only on a GPU where it pays (compute capability >= 7.0).
    mixed_precision: str = "auto"
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # forward-compatible: unknown JSON keys

    def __post_init__(self) -> None:
        # JSON gives lists; keep the dataclass hashable-ish and comparable. (Anything else is
        # kept as it is for ``validate`` to name.)
        if isinstance(self.augmentations, (list, tuple)):
            object.__setattr__(self, "augmentations", tuple(self.augmentations))
        if isinstance(self.mode, str) and self.mode in MODES:
            object.__setattr__(self, "mode", Mode(self.mode))

    # -- derived --------------------------------------------------------------------------
    @property
    def phases(self) -> list[Phase]:
        """The training phases this mode runs, in order."""
        if self.mode in (Mode.FINE_TUNING, Mode.FULL_FINE_TUNING):
            return [Phase.HEAD, Phase.FINE_TUNE]
        return [Phase.HEAD] if self.mode == Mode.FEATURE_EXTRACTION else [Phase.SCRATCH]

    @property
    def planned_epochs(self) -> int:
        """Total epochs over all phases."""
        return self.epochs + (self.fine_tune_epochs if len(self.phases) == 2 else 0)

    def resolved_image_size(self) -> int:
        """The image size, falling back to the backbone's default."""
        from core.models.backbones import get_backbone

        return self.image_size or get_backbone(self.backbone).default_size

    def active_augmentations(self) -> tuple[str, ...]:
        """The augmentation layers applied during training (none when ``augment`` is off)."""
        return self.augmentations if self.augment else ()

    # -- validation -----------------------------------------------------------------------
    def validate(self) -> RunConfig:
        """Check every field; return self so calls chain. Raises ConfigError/BackboneError."""
        from core.models.backbones import check_image_size, get_backbone

        self._check_types()
        spec = get_backbone(self.backbone)
        if self.mode not in MODES:
            raise ConfigError(
                f"Unknown mode {self.mode!r}. Available: {', '.join(MODES)}.", settings=("mode",)
            )
        if self.weights not in ("imagenet", "none") and not self.weights.strip():
            raise ConfigError(
                "The weights setting is empty. Expected 'imagenet', 'none' or a weights file path.",
                settings=("weights",),
            )
        if self.image_size is not None:
            _check_int("image_size", self.image_size, 1, 1024)
            check_image_size(spec, self.image_size)
        _check_int("batch_size", self.batch_size, 1, 1024)
        _check_int("epochs", self.epochs, 1, 1000)
        _check_int("fine_tune_epochs", self.fine_tune_epochs, 0, 1000)
        _check_float("lr", self.lr, 0.0, 1.0)
        _check_float("fine_tune_lr", self.fine_tune_lr, 0.0, 1.0)
        if self.unfreeze is not None:
            _check_int("unfreeze", self.unfreeze, 1, 100_000)
        _check_int("augment_views", self.augment_views, 2, 64)
        unknown = [a for a in self.augmentations if a not in AUGMENTATIONS]
        if unknown:
            raise ConfigError(
                f"Unknown augmentation(s) {', '.join(map(repr, unknown))}. "
                f"Available: {', '.join(AUGMENTATIONS)}.",
                settings=("augmentations",),
            )
        if not 0.0 < self.val_split <= 0.9:
            raise ConfigError(
                f"Validation split {self.val_split!r} is out of range. Expected a fraction in "
                "(0, 0.9], e.g. 0.2 (ignored when the data has its own validation folder).",
                settings=("val_split",),
            )
        _check_int("seed", self.seed, 0, 2**31 - 1)
        if self.feature_cache not in FEATURE_CACHE_CHOICES:
            raise ConfigError(
                f"Feature cache {self.feature_cache!r} is invalid. Expected one of: "
                f"{', '.join(FEATURE_CACHE_CHOICES)}.",
                settings=("feature_cache",),
            )
        _check_float("dropout", self.dropout, 0.0, 0.95)
        _check_int("dense_units", self.dense_units, 1, 8192)
        if self.class_weight not in CLASS_WEIGHT_CHOICES:
            raise ConfigError(
                f"Class weights {self.class_weight!r} is invalid. Expected one of: "
                f"{', '.join(CLASS_WEIGHT_CHOICES)} (balanced makes rare classes count as much "
                "as common ones).",
                settings=("class_weight",),
            )
        if self.distribute not in DISTRIBUTE_CHOICES:
            raise ConfigError(
                f"Distribute {self.distribute!r} is invalid. Expected one of: "
                f"{', '.join(DISTRIBUTE_CHOICES)} (mirrored trains one run on every visible GPU, "
                "or every logical CPU).",
                settings=("distribute",),
            )
        if self.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise ConfigError(
                f"Mixed precision {self.mixed_precision!r} is invalid. Expected one of: "
                f"{', '.join(MIXED_PRECISION_CHOICES)} (auto turns it on only on a GPU where "
                "it pays).",
                settings=("mixed_precision",),
            )
        return self

    def _check_types(self) -> None:
        """Fields of the wrong JSON type (``"0.2"`` for a number, ``3`` for a name) are named
        with the setting and an example, before any check compares or looks them up."""
        defaults = RunConfig()
        texts = (
            "backbone", "weights", "mode", "data", "feature_cache", "class_weight", "distribute",
            "mixed_precision", "name",
        )  # fmt: skip
        for name in texts:
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ConfigError(
                    f"{setting_label(name).capitalize()} {value!r} is invalid. Expected text, "
                    f"e.g. {str(getattr(defaults, name) or 'my run')!r}.",
                    settings=(name,),
                )
        if not isinstance(self.augment, bool):
            raise ConfigError(
                f"Augment {self.augment!r} is invalid. Expected true or false.",
                settings=("augment",),
            )
        augs = self.augmentations
        if not isinstance(augs, tuple) or not all(isinstance(a, str) for a in augs):
            raise ConfigError(
                f"Augmentations {augs!r} is invalid. Expected a list of names from: "
                f"{', '.join(AUGMENTATIONS)}.",
                settings=("augmentations",),
            )
        split = self.val_split
        if isinstance(split, bool) or not isinstance(split, (int, float)):
            raise ConfigError(
                f"Validation split {split!r} is invalid. Expected a number, e.g. 0.2.",
                settings=("val_split",),
            )

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; ``extra`` keys are merged back at top level."""
        data = asdict(self)
        extra = data.pop("extra")
        data["augmentations"] = list(self.augmentations)
        data["mode"] = str(self.mode)  # a plain string, whatever the enum
        return {**extra, **data}

    def to_json(self, indent: int | None = 2) -> str:
        """The config as JSON text (the ``config.json`` of a run)."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of ``to_dict``; unknown keys are kept in ``extra`` rather than dropped."""
        if not isinstance(data, dict):
            raise ConfigError(f"A run config must be a JSON object, got {type(data).__name__}.")
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        try:
            return cls(**kwargs, extra=extra)
        except TypeError as exc:
            raise ConfigError(f"Invalid run config: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        """Parse a ``config.json``."""
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"Run config is not valid JSON: {exc}") from exc

    def with_changes(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (e.g. the same data and seed in another mode)."""
        return replace(self, **changes)


def setting_label(name: str) -> str:
    """A RunConfig field as users say it: ``fine_tune_lr`` → "fine-tune learning rate"."""
    return SETTING_LABELS.get(name, name.replace("_", " "))


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(
            f"{setting_label(name).capitalize()} {value!r} is invalid. Expected a whole number "
            f"from {lo} to {hi}.",
            settings=(name,),
        )


def _check_float(name: str, value: Any, lo: float, hi: float) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not lo <= float(value) <= hi or (name.endswith("lr") and float(value) == 0.0):
        raise ConfigError(
            f"{setting_label(name).capitalize()} {value!r} is invalid. Expected a number from "
            f"{lo} to {hi}{' (not 0)' if name.endswith('lr') else ''}.",
            settings=(name,),
        )
