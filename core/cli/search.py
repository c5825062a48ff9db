"""``python -m core search`` and ``python -m core lr-find``, and the hidden ``python -m core task``
(the process a dashboard's background task runs in)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from core.cli.cluster import add_ray_flag
from core.cli.flags import add_class_weight_flag, add_train_flags, config_from_args
from core.config import DEFAULT_DATA
from core.errors import ConfigError

__all__ = ["COMMANDS", "add_parsers", "cmd_lr_find", "cmd_search", "cmd_task"]

SEARCH_EPILOG = """examples:
  python -m core search --json                          # offline backbones on builtin:photos
  python -m core search --data ~/pets --backbones available --budget 10
  python -m core search --backbones efficientnet_lite0,mobilenet_v2 --sizes 224,160,128
"""


def _sizes(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of image sizes; expected e.g. 224,160"
        ) from None


def add_parsers(sub: Any) -> None:
    """Register ``search``, ``lr-find`` and the hidden ``task``."""

    p = sub.add_parser(
        "search",
        help="find the best backbone and image size for your data (cached features, fast heads)",
        description="For each backbone x image size: the frozen base's features (computed once, "
        "then from the feature cache), a linear and a one-hidden-layer head at 3 learning rates "
        "on a fixed validation split, and the whole model's single-image latency and size. "
        "Prints one line per candidate on stderr as it finishes; with --json the last stdout "
        'line is {"candidates": [...]}, best first. Backbones whose ImageNet weights need the '
        "network are listed as such.",
        epilog=SEARCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default=DEFAULT_DATA, help=f"the data source (default {DEFAULT_DATA})")
    p.add_argument(
        "--backbones",
        metavar="LIST",
        help="comma-separated backbone names, or 'available' for those whose weights are here "
        "(default: every backbone; those needing the network are listed, not searched)",
    )
    p.add_argument(
        "--sizes",
        type=_sizes,
        metavar="LIST",
        help="comma-separated image sizes in px for every backbone (default: each backbone's "
        "own size and one smaller, e.g. 224,160)",
    )
    p.add_argument(
        "--budget",
        type=float,
        metavar="MIN",
        help="stop after this many minutes; candidates not reached are 'skipped: budget'",
    )
    p.add_argument(
        "--weights",
        choices=("imagenet", "none"),
        default="imagenet",
        help="imagenet (default) or none: random init, to try the search out",
    )
    p.add_argument("--val-split", type=float, default=0.2, help="validation fraction (0.2)")
    p.add_argument("--seed", type=int, default=42, help="seed of the split and heads (42)")
    add_class_weight_flag(p)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_ray_flag(
        p,
        "every candidate's feature pass is submitted there at once, and the ranked table so far "
        "prints on stderr as each ends",
    )

    p = sub.add_parser(
        "lr-find",
        help="learning-rate range test: the loss as the rate grows, and a suggested rate",
        description="Train a throwaway copy of the run's model for a few hundred batches at an "
        "exponentially growing learning rate and record the (smoothed) loss; suggest a rate by "
        "fastai's 'valley' rule. --phase head: the new head on the frozen base's features; "
        "fine_tune: the unfrozen layers after the head warm-up. Nothing is recorded.",
    )
    add_train_flags(p)
    try:
        add_class_weight_flag(p)
    except argparse.ArgumentError:
        pass  # the run flags have it already
    p.add_argument(
        "--phase",
        choices=("head", "fine_tune"),
        default="head",
        help="which phase's rate to find (default head)",
    )
    p.add_argument("--steps", type=int, metavar="N", help="training steps (default 100)")
    p.add_argument("--min-lr", type=float, help="lowest rate (default 1e-7; fine_tune 1e-8)")
    p.add_argument("--max-lr", type=float, help="highest rate (default 10; fine_tune 1)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")

    # Hidden (no help: not in the command list): the process a background task of the dashboard
    # runs in (core.tasks.start_task spawns it).
    p = sub.add_parser(
        "task",
        description="Run a background task of the dashboard (search, lr_find) in this process, "
        "from its state file RUNS_DIR/NAME.json; NAME.stop next to it asks it to stop. The "
        "dashboard starts it; run by hand, it runs the last task of that name again.",
    )
    p.add_argument("name", metavar="NAME", help="the task: search or lr_find")
    p.add_argument("--runs-dir", required=True, metavar="D", help="the runs folder of the task")
    p.add_argument(
        "--factory",
        metavar="MODULE:FUNCTION",
        help="the task kind's factory (default: the one registered as NAME)",
    )


def _candidate_line(c: Any) -> str:
    if c.status != "ok":
        return f"{c.backbone} @ {c.image_size} px: {c.status}"
    if c.result_cached:  # an identical earlier search: nothing trained, nothing imported
        source = "stored result"
    elif c.features_cached:
        source = "cached features"
    else:
        source = f"features in {c.feature_s:.1f} s"
    return (
        f"{c.backbone} @ {c.image_size} px: val_acc {c.val_accuracy:.3f} ({c.head}), "
        f"{c.latency_ms:.1f} ms, {c.size_mb:.1f} MB [{source}]"
    )


def cmd_search(args: argparse.Namespace) -> int:
    """Search backbones x sizes and print the ranking."""
    from core.data.sources import check_source
    from core.training.search import SearchResult, format_ranking, format_table, search

    if args.budget is not None and not args.budget > 0:
        raise ConfigError(f"--budget {args.budget} is invalid. Expected minutes above 0, e.g. 10.")
    check_source(args.data)  # a missing folder fails in a second, before TensorFlow loads
    ray = getattr(args, "ray", None)
    settled: list[Any] = []

    def progress(c: Any) -> None:
        print(_candidate_line(c), file=sys.stderr, flush=True)
        if ray:  # candidates settle as their passes end: the ranked table so far
            settled.append(c)
            print(format_ranking(settled), file=sys.stderr, flush=True)

    def run(feature_passes: Any = None) -> SearchResult:
        return search(
            args.data,
            backbones=args.backbones,
            sizes=args.sizes,
            budget_s=None if args.budget is None else args.budget * 60,
            seed=args.seed,
            val_split=args.val_split,
            progress=progress,
            weights=args.weights,
            class_weight=args.class_weight or "none",
            feature_passes=feature_passes,
        )

    if ray:  # each candidate's feature pass a job on the Ray cluster, all at once
        from core.cli.cluster import search_on_ray

        result = search_on_ray(args, run)
    else:
        result = run()
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(format_table(result))
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    """The range test of one phase of the run the flags describe."""
    from core.training.lr_find import lr_find

    config = config_from_args(args).validate()

    def step(done: int, total: int) -> None:
        if done % 20 == 0 or done == total:
            print(f"step {done}/{total}", file=sys.stderr, flush=True)

    result = lr_find(
        config,
        args.phase,
        min_lr=args.min_lr,
        max_lr=args.max_lr,
        steps=args.steps,
        progress=step,
    )
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    for lr, loss in zip(result.lrs, result.losses, strict=True):
        print(f"{lr:10.3g}  {loss:.4f}")
    if result.suggested_lr is None:
        print("no suggestion: the test ended before it had a curve")
    else:
        print(f"suggested learning rate: {result.suggested_lr:.3g} ({result.rule})")
    if "warning" in result.extra:
        print(f"warning: {result.extra['warning']}", file=sys.stderr)
    return 0


def cmd_task(args: argparse.Namespace) -> int:
    """Run a background task from its state file; exit code 0 when it ended done or stopped."""
    import signal

    from core.tasks import DONE, STOPPED, load_factory, run_task, task_stop_path

    stop_file = task_stop_path(args.runs_dir, args.name)

    def on_term(_signum: int, _frame: Any) -> None:
        # A SIGTERM (a server shutting down, a test's cleanup) stops the task at its next check
        # and leaves a readable state, as the Stop button does.
        try:
            stop_file.touch()
        except OSError:
            raise SystemExit(143) from None

    signal.signal(signal.SIGTERM, on_term)
    factory = load_factory(args.factory) if args.factory else None
    status = run_task(args.runs_dir, args.name, factory)
    print(f"task {args.name}: {status}", file=sys.stderr)
    return 0 if status in (DONE, STOPPED) else 1


COMMANDS = {"search": cmd_search, "lr-find": cmd_lr_find, "task": cmd_task}
