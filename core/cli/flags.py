"""The command line's shared flags: a run's settings (``train``, ``submit``, ``lr-find``), the
runs folder and ``--json``, and the flags behind core's setting names.

Core's messages name settings (RunConfig fields); the command line adds the flags behind them
(``setting_flags``, ``LINT_FLAGS``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from core.config import (
    AUGMENTATIONS,
    CLASS_WEIGHT_CHOICES,
    CLASS_WEIGHT_HELP,
    DISTRIBUTE_CHOICES,
    DISTRIBUTE_HELP,
    FEATURE_CACHE_CHOICES,
    MIXED_PRECISION_CHOICES,
    MIXED_PRECISION_HELP,
    MODE_HELP,
    MODES,
    RunConfig,
)
from core.errors import ConfigError, StudioError

__all__ = [
    "LINT_FLAGS",
    "SETTING_FLAGS",
    "add_class_weight_flag",
    "add_common",
    "add_train_flags",
    "config_from_args",
    "setting_flags",
]


def add_common(p: argparse.ArgumentParser, json_help: str = "print JSON instead of text") -> None:
    """``--runs-dir`` and ``--json``."""
    p.add_argument(
        "--runs-dir",
        metavar="D",
        help="run store folder (default: $TRANSFER_STUDIO_HOME, else ~/.transfer_studio)",
    )
    p.add_argument("--json", action="store_true", help=json_help)


def add_class_weight_flag(parser: argparse.ArgumentParser) -> None:
    """``--class-weight none|balanced`` (RunConfig ``class_weight``; default: the config's)."""
    parser.add_argument(
        "--class-weight",
        choices=CLASS_WEIGHT_CHOICES,
        help="; ".join(f"{k}: {v.rstrip('.')}" for k, v in CLASS_WEIGHT_HELP.items())
        + " (default none)",
    )


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """A run's settings as flags (``train``, ``submit``, ``lr-find``)."""
    d = RunConfig()
    # Defaults are None so that only flags the user gave override --config.
    p.add_argument("--config", metavar="FILE", help="start from a run's config.json (re-run it)")
    p.add_argument(
        "--data",
        help="builtin:NAME, a folder of class subfolders, a .zip, or kaggle:OWNER/SLUG[/versions/N]"
        f" (default {d.data})",
    )
    p.add_argument("--backbone", help=f"pretrained base, see `backbones` (default {d.backbone})")
    p.add_argument(
        "--weights",
        help="imagenet, none (random init) or a path to a local weights file (default imagenet)",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        help="; ".join(f"{m}: {h}" for m, h in MODE_HELP.items()) + f" (default {d.mode})",
    )
    p.add_argument("--image-size", type=int, help="square input size in px (default: backbone's)")
    p.add_argument("--batch-size", type=int, help=f"images per batch (default {d.batch_size})")
    p.add_argument(
        "--epochs", type=int, help=f"epochs of the head (or only) phase (default {d.epochs})"
    )
    p.add_argument(
        "--fine-tune-epochs",
        type=int,
        help=f"epochs of the fine-tuning phase (default {d.fine_tune_epochs})",
    )
    p.add_argument(
        "--unfreeze",
        type=int,
        metavar="N",
        help="fine_tuning: unfreeze the base's last N layers (default: its last block)",
    )
    p.add_argument("--lr", type=float, help=f"learning rate of the head phase (default {d.lr})")
    p.add_argument(
        "--fine-tune-lr",
        type=float,
        help=f"learning rate once the base is unfrozen; keep it very low "
        f"(default {d.fine_tune_lr})",
    )
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        help="random flip/rotation/zoom/contrast while training (default on; with the feature "
        "cache, feature extraction stores --augment-views views of each image)",
    )
    p.add_argument(
        "--augmentations",
        metavar="LIST",
        help=f"comma-separated subset of {','.join(AUGMENTATIONS)} used by --augment",
    )
    p.add_argument(
        "--augment-views",
        type=int,
        metavar="K",
        help="feature extraction with augmentation and the feature cache: the frozen base runs "
        "once over K views of each training image (the image and K-1 augmented copies); each "
        f"epoch trains on one view per image (default {d.augment_views})",
    )
    p.add_argument(
        "--val-split",
        type=float,
        help=f"validation fraction when the data has no val/test folder (default {d.val_split})",
    )
    p.add_argument("--seed", type=int, help=f"random seed (default {d.seed})")
    p.add_argument(
        "--feature-cache",
        choices=FEATURE_CACHE_CHOICES,
        help="auto: in feature_extraction, run the frozen base once per image (or augmented "
        "view) and reuse its features across epochs and runs; off: the per-epoch pipeline "
        f"(default {d.feature_cache})",
    )
    p.add_argument("--dropout", type=float, help=f"head dropout rate (default {d.dropout})")
    p.add_argument("--dense-units", type=int, help=f"head hidden units (default {d.dense_units})")
    p.add_argument("--name", help="a label for the run")
    add_class_weight_flag(p)
    p.add_argument(
        "--distribute",
        choices=DISTRIBUTE_CHOICES,
        help="; ".join(f"{k}: {h.rstrip('.')}" for k, h in DISTRIBUTE_HELP.items())
        + f" (default {d.distribute})",
    )
    p.add_argument(
        "--mixed-precision",
        choices=MIXED_PRECISION_CHOICES,
        help="; ".join(f"{k}: {h.rstrip('.')}" for k, h in MIXED_PRECISION_HELP.items())
        + f" (default {d.mixed_precision})",
    )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """A RunConfig from ``train`` flags (over ``--config`` if given, else the defaults)."""
    base = RunConfig()
    if args.config:
        try:
            with open(args.config, encoding="utf-8") as fh:
                base = RunConfig.from_json(fh.read())
        except OSError as exc:
            raise StudioError(f"Cannot read --config {args.config!r}: {exc.strerror}.") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"--config {args.config!r} is not a text file (byte {exc.start} is not UTF-8). "
                "Expected a run config in JSON, e.g. one written by `python -m core show RUN "
                "--json` or the Train page's export."
            ) from exc
    changes: dict[str, Any] = {}
    for f in fields(RunConfig):
        value = getattr(args, f.name, None)
        if value is not None and f.name != "augmentations":
            changes[f.name] = value
    if args.augmentations is not None:
        changes["augmentations"] = tuple(
            a.strip() for a in args.augmentations.split(",") if a.strip()
        )
    return base.with_changes(**changes)


SETTING_FLAGS = {"augment": "--augment/--no-augment"}


def setting_flags(settings: Sequence[str]) -> str:
    """The flags of RunConfig fields: ``("image_size",)`` → ``"--image-size"``."""
    return ", ".join(SETTING_FLAGS.get(s, "--" + s.replace("_", "-")) for s in settings)


# The flags behind each lint finding's settings.
LINT_FLAGS = {
    "no_fine_tune_phase": "--fine-tune-epochs, --mode",
    "fine_tune_lr_high": "--fine-tune-lr",
    "head_lr_not_above_fine_tune_lr": "--lr, --fine-tune-lr",
    "image_size_below_default": "--image-size",
    "transfer_without_pretrained_weights": "--weights, --mode",
    "full_fine_tuning_small_data": "--mode, --augment",
    "scratch_few_images": "--mode, --weights",
    "mixed_precision_on_cpu": "--mixed-precision",
    "mirrored_one_device": "--distribute",
}
