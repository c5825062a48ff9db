"""``python -m core features`` and the ``--ray ADDRESS`` flag of ``train``, ``search`` and
``worker``: the studio on a Ray cluster (the optional extra in ``requirements-ray.txt``).

``core.cli`` lists ``features`` in this family. The ``train`` (``core.cli.runs``), ``search``
(``core.cli.search``) and ``worker`` (``core.cli.worker``) parsers take ``--ray`` through
``add_ray_flag``; with it their handlers call ``features_on_ray``, ``search_on_ray`` or
``worker_on_ray`` here (this module imports nothing heavy: Ray and Keras load in the handlers).

``features --json`` prints one object: ``images``, ``shards``, ``ray_nodes``, ``cache_key``,
``seconds``, ``images_per_s``, ``cached`` (plus ``views_cache_key``, ``restarts``,
``train_images``, ``val_images``, ``prepare_s``, ``startup_s``, ``compute_s``, ``check_s``,
``runtime``); the keys are a public contract.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, TypeVar

from core.cluster import ray_output_to_stderr
from core.config import DEFAULT_DATA
from core.errors import ConfigError, StudioError

if TYPE_CHECKING:
    from core.training.search import FeaturePasses

T = TypeVar("T")

FEATURES_EPILOG = """examples:
  python -m core features --data ~/pets --backbone efficientnet_lite0 --image-size 224 --json
  python -m core features --data /shared/pets --backbone efficientnet_lite0 --image-size 224 \\
      --views 4 --ray auto --json          # sharded over the Ray cluster this machine is in
  python -m core train --data /shared/pets --ray auto   # then the head trains here

A Ray cluster: `ray start --head` on one machine, `ray start --address HEAD:6379` on the others
(each with this project and requirements-ray.txt installed), then --ray auto on a machine of the
cluster (or --ray HEAD:6379). --ray local starts a Ray instance of this machine alone. On a
machine shared with other users, auto may join someone else's cluster (Ray finds it through
/tmp/ray): give the head's address there.
"""
RAY_HELP = (
    "run on a Ray cluster: auto (the cluster this machine is in; on a machine shared with other "
    "users it may be theirs), HOST:PORT of its head, or local (a Ray instance of this machine); "
    "needs requirements-ray.txt"
)


__all__ = [
    "COMMANDS",
    "add_parsers",
    "add_ray_flag",
    "cmd_features",
    "features_on_ray",
    "search_on_ray",
    "worker_on_ray",
]


def add_ray_flag(p: argparse.ArgumentParser, what: str) -> None:
    """``--ray ADDRESS`` on a command's parser; ``what``: what it does there."""
    p.add_argument("--ray", metavar="ADDRESS", help=f"{RAY_HELP}; {what}")


def add_parsers(sub: Any) -> None:
    """Register ``features``."""
    p = sub.add_parser(
        "features",
        help="compute (or find) the cached features a feature-extraction run would use, "
        "optionally sharded over a Ray cluster",
        description="Find or compute the embedding-cache entry a feature_extraction run of this "
        "data, backbone and image size would read (and, with --views K, its K-1 augmented views "
        "of each training image), under the same cache key, so that a later `train` finds it "
        "warm. With --ray the pass is sharded over the cluster's nodes; without it, it runs here.",
        epilog=FEATURES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", default=DEFAULT_DATA, help=f"the data source (default {DEFAULT_DATA})")
    p.add_argument("--backbone", default="efficientnet_lite0", help="default efficientnet_lite0")
    p.add_argument("--weights", default="imagenet", help="imagenet or a local weights file")
    p.add_argument("--image-size", type=int, help="square input size in px (default: backbone's)")
    p.add_argument(
        "--views",
        type=int,
        default=1,
        metavar="K",
        help="K > 1: also K-1 augmented views of each training image, as `train --augment "
        "--augment-views K` uses (default 1: the images alone)",
    )
    p.add_argument("--val-split", type=float, help="validation fraction, as for train (0.2)")
    p.add_argument("--seed", type=int, help="seed of the split and the augmentations (42)")
    add_ray_flag(p, "without it the pass runs here")
    p.add_argument(
        "--shard-size",
        type=int,
        metavar="N",
        help="images per shard (default: measured, about 30 s of work per shard)",
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def cmd_features(args: argparse.Namespace) -> int:
    """Find or compute a feature-extraction run's cache entry."""
    from core.cluster.features import ensure_features, feature_config
    from core.data.sources import check_source

    if args.views < 1:
        raise ConfigError(f"--views {args.views} is invalid. Expected 1 or more, e.g. 4.")
    if args.shard_size is not None and args.shard_size < 1:
        raise ConfigError(f"--shard-size {args.shard_size} is invalid. Expected e.g. 512.")
    config = feature_config(
        args.data, args.backbone, args.image_size, args.views, weights=args.weights,
        val_split=args.val_split, seed=args.seed,
    )  # fmt: skip
    check_source(config.data)
    if args.ray:
        from core.cluster import connect

        with ray_output_to_stderr(), connect(args.ray):
            entry = ensure_features(
                config, ray=True, shard_rows=args.shard_size, progress=_shard_line
            )
    else:
        entry = ensure_features(config, ray=False)
    if args.json:
        print(json.dumps(entry.to_json()))
    else:
        where = (
            "from the cache"
            if entry.cached
            else f"in {entry.shards} shards on {entry.ray_nodes} Ray nodes"
            if entry.shards
            else "here"
        )
        print(
            f"{entry.images} images {where}: {entry.seconds:.1f} s "
            f"({entry.images_per_s:.1f} images/s); cache key {entry.cache_key}"
        )
    return 0


def _shard_line(sharded: Any) -> None:
    print(
        f"shard {sharded.done_shards}: {sharded.done_rows}/{sharded.total_rows} images",
        file=sys.stderr,
        flush=True,
    )


def features_on_ray(args: argparse.Namespace) -> dict[str, Any]:
    """``train --ray``: the run's features on the cluster (into the cache, under the key the
    run looks up), before the ordinary local ``train`` finds them warm; the run's ``ray``
    record (``{"nodes", "shards", "cached"}``)."""
    from core.cli.flags import config_from_args
    from core.cluster import connect
    from core.cluster.features import ensure_features
    from core.training.sources import FEATURES, input_path

    config = config_from_args(args).validate()
    path = input_path(config)
    if path.kind != FEATURES:
        raise ConfigError(
            f"--ray computes a feature_extraction run's features on the cluster; this run "
            f"trains from {path.kind} ({path.reason}). Use --mode feature_extraction with "
            "--feature-cache auto, or leave out --ray.",
            settings=("mode",),
        )
    with ray_output_to_stderr(), connect(args.ray):
        entry = ensure_features(config, ray=True, progress=_shard_line)
    print(
        f"features: {entry.images} images in {entry.shards} shards on {entry.ray_nodes} Ray "
        f"nodes ({entry.seconds:.1f} s)"
        if not entry.cached
        else "features: already in the cache",
        file=sys.stderr,
    )
    return {"nodes": entry.ray_nodes, "shards": entry.shards, "cached": entry.cached}


def worker_on_ray(args: argparse.Namespace) -> int:
    """The worker loop (``core.training.jobs.run_worker``), each claimed run trained as a Ray
    task on a node (``core.cluster.runs``); ``--device GPU`` makes each run ask for a GPU."""
    from core.cli.output import epoch_line
    from core.cluster import connect
    from core.cluster.runs import ray_executor
    from core.training.jobs import WorkerOptions, run_worker

    if args.idle_exit is not None and args.idle_exit < 0:
        raise ConfigError(f"--idle-exit {args.idle_exit} is negative. Expected seconds, e.g. 60.")
    with connect(args.ray) as info:
        print(
            f"Ray cluster {args.ray}: {info.nodes} nodes, {info.cpus:g} CPUs, {info.gpus:g} GPUs",
            file=sys.stderr,
            flush=True,
        )
        options = WorkerOptions(
            runs_dir=args.runs_dir,
            device=None,  # --device says what each run asks Ray for, not this process's device
            once=args.once,
            idle_exit=args.idle_exit,
            parent=args.parent,
            execute=ray_executor(args.device),
        )
        return run_worker(options, progress_for=epoch_line)


def search_on_ray(args: argparse.Namespace, run: Callable[[FeaturePasses], T]) -> T:
    """``search --ray``: ``run(passes)`` runs the search with ``passes`` as its
    ``feature_passes`` while connected: every pending candidate's feature pass is submitted to
    the cluster at once (into the cache), and each candidate's heads train here as its pass ends
    (a line on stderr says so)."""
    from core.cluster import connect
    from core.cluster.features import FeatureEntry, candidate_passes, feature_config
    from core.training.search import Candidate

    if args.weights == "none":
        raise ConfigError(
            "--ray computes features into the feature cache, and random weights are not cached. "
            "Use --weights imagenet, or leave out --ray."
        )

    def line(c: Candidate, entry: FeatureEntry | None, error: StudioError | None) -> None:
        if entry is None:
            source = f"failed: {error}"
        elif entry.cached:
            source = "cached"
        else:
            source = f"{entry.shards} shards, {entry.seconds:.1f} s"
        print(f"{c.backbone} @ {c.image_size} px: features on Ray ({source})", file=sys.stderr)

    def passes(candidates: list[Candidate]) -> Generator[tuple[Candidate, StudioError | None]]:
        configs = [
            (c, feature_config(
                args.data, c.backbone, c.image_size, weights=args.weights,
                val_split=args.val_split, seed=args.seed,
            ))
            for c in candidates
        ]  # fmt: skip
        return candidate_passes(configs, done=line)

    with ray_output_to_stderr(), connect(args.ray):
        return run(passes)


COMMANDS = {"features": cmd_features}
