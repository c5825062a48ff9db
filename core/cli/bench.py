"""``python -m core bench``: the speed figures, measured on generated data."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from core.cli.output import print_json
from core.errors import ConfigError

__all__ = ["COMMANDS", "add_parsers", "cmd_bench", "figure_list"]


def add_parsers(sub: Any) -> None:
    """Register ``bench``."""
    p = sub.add_parser(
        "bench",
        help="measure the speed figures on generated data (ratios against same-run baselines)",
        description="Generate data, then measure: 1. feature extraction with the feature cache "
        "vs the per-epoch pipeline; 2. a warm embedding cache vs a cold one; 3. training "
        "throughput from files vs from tensors in memory; 4. playground prediction latency; "
        "5. the one-click default run (brand-new home, then again); 6. augmented feature "
        "extraction, cached views vs per-epoch augmentation; 7. training throughput with a "
        "browser page following the run (trained by the dashboard's worker process) vs "
        "headless; 8. the dashboard server's RSS over five runs launched from the Train page; "
        "9. idle server CPU; 10. the feature pass, Keras vs the converted LiteRT runtime; "
        "11. review: recall of deliberately swapped labels, accuracy before and after the "
        "fixes; 12. kill -9 of a worker mid-run: seconds until interrupted, then resume; 13. "
        "feature extraction at 50,000 generated images (200 classes): the run against its bare "
        "feature pass; 14. fine-tuning 25,000 generated images at 160 px: the worker's peak "
        "RSS, seconds per fine-tune epoch against the unfrozen part alone, accuracy against "
        "feature extraction, float16 against float32 activations, then its review and a "
        "browser walk of its pages; 15. kill -9 during that "
        "run's pass of the frozen layers: seconds lost on resume; 16. "
        "many classes (a generated 200 x 250 set): evaluation.json size, review and embedding-map "
        "seconds, Run page and Predict render seconds; 18. "
        "the feature pass, local vs a two-node local Ray cluster; 19. a Ray actor killed "
        "mid-pass (18-19 need requirements-ray.txt). Each "
        "figure is a ratio against a baseline measured in the same run (see docs/benchmark.md).",
    )
    p.add_argument("--images-per-class", type=int, default=1000, help="default 1000 (3 classes)")
    p.add_argument(
        "--image-size",
        type=int,
        default=224,
        help="figures 1 and 2 (default 224 px, the backbone's own; figure 3 uses at most 112)",
    )
    p.add_argument("--epochs", type=int, default=10, help="default 10")
    p.add_argument("--quick", action="store_true", help="tiny data and few repetitions (smoke)")
    p.add_argument(
        "--figures",
        metavar="LIST",
        help="comma-separated figures and ranges to measure, e.g. 5-10 or 1,6 (default: all; "
        "1-4 run together)",
    )
    p.add_argument("--out", metavar="DIR", help="keep the generated data and runs here")
    p.add_argument(
        "--scale-classes", type=int, default=200, metavar="N", help="figure 16: classes (200)"
    )
    p.add_argument(
        "--scale-per-class", type=int, default=250, metavar="M",
        help="figure 16: images per class (250: 50,000 images)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def figure_list(text: str | None) -> list[int] | None:
    """``"1,5-7"`` → ``[1, 5, 6, 7]``; ``None`` for all."""
    if not text:
        return None
    figures: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            figures += range(int(lo), int(hi or lo) + 1)
    except ValueError:
        raise ConfigError(
            f"--figures {text!r} is not a list of figure numbers. Expected e.g. 5-10 or 1,6."
        ) from None
    return figures


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark and print its figures."""
    from pathlib import Path

    from core.bench import format_bench, run_bench

    result = run_bench(
        out_dir=Path(args.out) if args.out else None,
        images_per_class=args.images_per_class,
        image_size=args.image_size,
        epochs=args.epochs,
        quick=args.quick,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
        figures=figure_list(args.figures),
        scale_classes=args.scale_classes,
        scale_per_class=args.scale_per_class,
    )
    if args.json:
        print_json(result)
    else:
        print(format_bench(result))
    return 0


COMMANDS = {"bench": cmd_bench}
