"""``python -m core worker``: train queued runs one at a time, until stopped.

The dashboard starts this process for its queued runs: it builds only its own parser and imports
no other command's module on its way to the job loop.
"""

from __future__ import annotations

import argparse
from typing import Any

from core.cli.output import epoch_line
from core.errors import ConfigError

__all__ = ["COMMANDS", "add_parsers", "cmd_worker"]


def add_parsers(sub: Any) -> None:
    """Register ``worker``."""
    p = sub.add_parser(
        "worker",
        help="train queued runs (from `submit` or the dashboard) one at a time, until stopped",
        description="Take queued runs from the run store, oldest first, and train them one at a "
        "time, forever (until Ctrl+C or SIGTERM: the current run stops within a batch and can be "
        "resumed). Several workers may serve one runs folder (e.g. one per GPU): each run is "
        "trained by exactly one of them. A worker killed mid-run leaves its run 'interrupted' "
        "within seconds (resume it with `python -m core resume RUN_ID`).",
    )
    p.add_argument(
        "--device",
        metavar="DEV",
        help="CPU (hide every GPU) or GPU:N (only GPU N); default: whatever TensorFlow finds. "
        "Recorded as the run's device",
    )
    p.add_argument(
        "--runs-dir",
        metavar="D",
        help="run store folder (default: $TRANSFER_STUDIO_HOME, else ~/.transfer_studio)",
    )
    p.add_argument("--once", action="store_true", help="train at most one queued run, then exit")
    p.add_argument(
        "--idle-exit", type=float, metavar="S", help="exit after S seconds without a queued run"
    )
    p.add_argument(
        "--parent",
        type=int,
        metavar="PID",
        help="exit once process PID is gone and no run is in progress (the dashboard passes "
        "its own)",
    )
    # Written out here, not taken from core.cli.cluster: a worker imports no other family.
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="train each queued run as a Ray task on a node of a Ray cluster (auto, HOST:PORT "
        "of its head, or local), followed here; with --device GPU each run asks Ray for one "
        "GPU; needs requirements-ray.txt",
    )


def cmd_worker(args: argparse.Namespace) -> int:
    """Train queued runs one at a time until stopped (see ``core.training.jobs.run_worker``)."""
    from core.training.jobs import WorkerOptions, run_worker

    if getattr(args, "ray", None):
        from core.cli.cluster import worker_on_ray

        return worker_on_ray(args)
    if args.idle_exit is not None and args.idle_exit < 0:
        raise ConfigError(f"--idle-exit {args.idle_exit} is negative. Expected seconds, e.g. 60.")
    options = WorkerOptions(
        runs_dir=args.runs_dir,
        device=args.device,
        once=args.once,
        idle_exit=args.idle_exit,
        parent=args.parent,
    )
    return run_worker(options, progress_for=epoch_line)


COMMANDS = {"worker": cmd_worker}
