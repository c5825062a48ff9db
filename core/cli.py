"""``python -m core``: train, record, list and use transfer-learning runs from the command line.

Flags and JSON keys here are a public contract (users script against them): extend, don't rename.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from core import cli_cluster, cli_dataset, cli_search
from core.config import AUGMENTATIONS, FEATURE_CACHE_CHOICES, MODE_HELP, MODES, RunConfig, Status
from core.errors import ConfigError, StudioError, storage_error

if TYPE_CHECKING:  # importing the queue imports Keras: only where a command needs it
    from core.training.jobs import JobQueue

EPILOG = """examples:
  python -m core train --json          # offline default: efficientnet_lite0 on builtin:photos
  python -m core train --data builtin:textures --backbone mobilenet_v2 --weights none \\
      --mode feature_extraction --epochs 2 --image-size 64
  python -m core train --data ~/pets --mode fine_tuning --epochs 3 --fine-tune-epochs 5
  python -m core submit --data ~/pets --json   # queue a run for a worker; prints its id at once
  python -m core worker --device CPU          # train queued runs, one at a time, until Ctrl+C
  python -m core runs
  python -m core rename RUN_ID "cats vs dogs, fine-tuned"
  python -m core delete RUN_ID --yes
  python -m core predict --run RUN_ID photo.jpg --top-k 3
"""


def _add_common(p: argparse.ArgumentParser, json_help: str = "print JSON instead of text") -> None:
    p.add_argument(
        "--runs-dir",
        metavar="D",
        help="run store folder (default: $TRANSFER_STUDIO_HOME, else ~/.transfer_studio)",
    )
    p.add_argument("--json", action="store_true", help=json_help)


def _add_train_flags(p: argparse.ArgumentParser) -> None:
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
    cli_search.add_class_weight_flag(p)
    from core.config import (
        DISTRIBUTE_CHOICES,
        DISTRIBUTE_HELP,
        MIXED_PRECISION_CHOICES,
        MIXED_PRECISION_HELP,
    )

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


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser (also used to render ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m core",
        description="Transfer Studio engine: teach a pretrained image model a new task.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("backbones", help="list backbones, input sizes and weight availability")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser("datasets", help="list the built-in offline datasets")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser(
        "train",
        help="train one run in this process (blocks; one progress line per epoch on stderr)",
        description="Train one run and record it in the run store. Progress goes to stderr; with "
        "--json the last stdout line is the run's result object.",
    )
    _add_train_flags(p)
    _add_common(p, "print the result as one JSON object on the last stdout line")

    p = sub.add_parser(
        "resume",
        help="continue a stopped or interrupted run from its last checkpoint",
        description="Continue a stopped, interrupted (e.g. killed) or failed run from the last "
        "epoch it finished, in the right phase, up to its planned number of epochs. Finished "
        "epochs keep their metrics.",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    _add_common(p, "print the result as one JSON object on the last stdout line")

    p = sub.add_parser(
        "submit",
        help="queue a run for a worker process and print its id at once (does not train)",
        description="Queue one run in the run store and print its id at once, without loading "
        "TensorFlow. It does not start a worker: a `python -m core worker` process on the same "
        "runs folder trains it (the dashboard starts one when its own runs wait). Follow it with "
        "`python -m core runs` or `show RUN_ID`; stop it with `stop RUN_ID`.",
    )
    _add_train_flags(p)
    _add_common(p, 'print {"run_id": ...} as JSON')

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

    p = sub.add_parser(
        "runs",
        help="list recorded runs (running ones included) and the disk space they use",
        description="List every run, newest first: id, status, name, mode, backbone, epochs, "
        "best validation accuracy and data, then the disk space of the runs folder. --json "
        "prints the list as JSON (each run's name is its own or a default like 'photos #7').",
    )
    _add_common(p)

    p = sub.add_parser(
        "rename",
        help="give a run a name (shown in place of the default, e.g. 'photos #7')",
        description="Give a run a name of your own; it replaces the default name everywhere "
        "(the dashboard, `runs`, `show`) and is kept in the run's folder. Spaces are trimmed; at "
        "most 60 characters.",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("name", metavar="NAME", help="the new name (quote it if it has spaces)")
    _add_common(p, "print the run's summary as JSON")

    p = sub.add_parser(
        "delete",
        help="delete a finished run: its record, model and files",
        description="Delete a run that is not queued or running: its entry in the run store and "
        "its folder (model, checkpoint, exports inside it). Asks for confirmation on a terminal; "
        "elsewhere --yes is required.",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--yes", action="store_true", help="delete without asking")
    _add_common(p, "print {run_id, deleted, bytes_freed} as JSON")

    p = sub.add_parser("show", help="everything about one run (the object `train --json` prints)")
    p.add_argument("run_id", metavar="RUN_ID")
    _add_common(p)

    p = sub.add_parser("stop", help="ask a running run to stop (takes effect within one batch)")
    p.add_argument("run_id", metavar="RUN_ID")
    _add_common(p)

    p = sub.add_parser("predict", help="classify images with a finished run's model")
    p.add_argument("--run", required=True, metavar="RUN_ID", help="a completed run's id")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=int, default=5, help="labels per image (default 5)")
    _add_common(p)

    p = sub.add_parser(
        "evaluate",
        help="confusion matrix and per-class precision/recall/F1 on the validation set",
    )
    p.add_argument("--run", required=True, metavar="RUN_ID", help="a finished run's id")
    p.add_argument("--force", action="store_true", help="recompute even if cached")
    _add_common(p)

    p = sub.add_parser(
        "export",
        help="export a run's model (verified in its runtime) with labels, config and model card",
        description="Export a finished run's model. Preprocessing is inside, so every format "
        "takes raw 0-255 RGB pixels. Each export is loaded by its runtime (keras, tensorflow, "
        "ai_edge_litert, onnxruntime, openvino) in a separate process without Transfer Studio "
        "and its top-1 checked against the live model on validation images; a mismatch beyond the "
        "format's tolerance is an error. model_card.md is written with every export.",
    )
    p.add_argument("--run", required=True, metavar="RUN_ID", help="a finished run's id")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--format",
        dest="fmt",
        metavar="FORMAT",
        help="one of: keras, savedmodel, tflite, tflite-fp16, tflite-int8 (full-integer, "
        "calibrated on the run's training images), onnx, openvino",
    )
    which.add_argument(
        "--all",
        action="store_true",
        help="every format into one folder, with a table of size, latency, agreement, accuracy",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default: inside the run folder)")
    p.add_argument(
        "--quantize", action="store_true", help="tflite only: dynamic-range quantized weights"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="let --out be a folder that is not empty: replace the export's own files there "
        "(the models, labels.txt, config.json, model_card.md, confusion_matrix.png), never "
        "anything else",
    )
    _add_common(p)

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
        "fixes; 12. kill -9 of a worker mid-run: seconds until interrupted, then resume; 18. "
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
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser("classify", help="what a raw pretrained backbone sees (ImageNet classes)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="default efficientnet_lite0")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    cli_search.add_parsers(sub, _add_train_flags, config_from_args)
    cli_dataset.add_parsers(sub)
    cli_cluster.add_parsers(sub, config_from_args)  # features; --ray on train/search/worker
    return parser


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


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, default=str))


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _epoch_line(config: RunConfig) -> Callable[[dict[str, Any]], None]:
    total = config.planned_epochs

    def show(rec: dict[str, Any]) -> None:
        print(
            f"epoch {rec['epoch']}/{total} [{rec['phase']}] loss {_fmt(rec.get('loss'))} "
            f"acc {_fmt(rec.get('accuracy'))} val_loss {_fmt(rec.get('val_loss'))} "
            f"val_acc {_fmt(rec.get('val_accuracy'))} ({rec['duration_s']:.1f} s, "
            f"{rec['images_per_s']:.0f} img/s)",
            file=sys.stderr,
            flush=True,
        )

    return show


# The flags behind each lint finding's settings (core's messages use the settings' words).
# Core's messages name settings (RunConfig fields); the command line adds the flags behind them.
SETTING_FLAGS = {"augment": "--augment/--no-augment"}


def setting_flags(settings: Sequence[str]) -> str:
    """The flags of RunConfig fields: ``("image_size",)`` → ``"--image-size"``."""
    return ", ".join(SETTING_FLAGS.get(s, "--" + s.replace("_", "-")) for s in settings)


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


def cmd_train(args: argparse.Namespace) -> int:
    """Queue one run on this process's worker and wait for it."""
    from core.data.sources import check_source, remember_source
    from core.lint import count_train_images, lint_config

    config = config_from_args(args).validate()  # before the lint: a bad flag is one error line
    check_source(config.data)  # a missing folder fails in a second, before TensorFlow loads
    for finding in lint_config(config, count_train_images(config)):
        flags = LINT_FLAGS.get(finding["code"])
        hint = f" [{flags}]" if flags else ""
        print(f"{finding['level']}: {finding['message']}{hint}", file=sys.stderr)
    from core.training.jobs import JobQueue  # its thread imports TensorFlow when the run starts

    jobs = JobQueue(args.runs_dir)
    run_id = jobs.submit(config, progress=_epoch_line(config))
    if getattr(args, "ray_record", None):  # its features were computed on a Ray cluster
        jobs.store.update(run_id, ray=args.ray_record)
    remember_source(config.data)  # offered on the Data page's folder tab
    print(f"run {run_id}: {config.mode} {config.backbone} on {config.data}", file=sys.stderr)
    return _wait_and_report(jobs, run_id, args.json)


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue a run from its checkpoint and wait for it."""
    from core.training.jobs import JobQueue

    jobs = JobQueue(args.runs_dir)
    config = jobs.store.config(args.run_id)
    done = jobs.store.get_run(args.run_id)["epochs_done"]
    jobs.resume(args.run_id, progress=_epoch_line(config))
    print(
        f"run {args.run_id}: resuming after epoch {done} of {config.planned_epochs}",
        file=sys.stderr,
    )
    return _wait_and_report(jobs, args.run_id, args.json)


@contextmanager
def _stop_on_signals(jobs: JobQueue, run_id: str) -> Iterator[None]:
    """While a run trains in this process, Ctrl+C (SIGINT) and SIGTERM (a service manager, a
    closing terminal) stop it as the Stop button does: within a batch, its checkpoint written
    whole, the run recorded ``stopped``. Further signals only say it is stopping: a second
    Ctrl+C never tears the process down mid-write."""
    import signal
    import threading

    asked: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        if asked:
            print("already stopping: the run ends after the current batch", file=sys.stderr)
            return
        asked.append(signum)
        print("stopping after the current batch…", file=sys.stderr)
        # Not here: the handler interrupts the main thread, which may hold the queue's lock.
        threading.Thread(target=jobs.stop, args=(run_id,), daemon=True).start()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_and_report(jobs: JobQueue, run_id: str, as_json: bool) -> int:
    with _stop_on_signals(jobs, run_id):
        status = jobs.wait(run_id)
    result = jobs.store.result(run_id)
    if as_json:
        _print_json(result)
    else:
        print(
            f"{run_id} {status}: best val_accuracy {_fmt(result['best_val_accuracy'])} "
            f"in {_fmt(result['duration_s'], '.1f')} s; model {result['model_path']}"
        )
    if status == Status.FAILED:
        print(f"error: {result['error']}", file=sys.stderr)
        return 1
    return 0 if status == Status.COMPLETED else 130


def bytes_text(size: float) -> str:
    """``1234567`` → ``"1.2 MB"`` (decimal units, as file managers show)."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # not reached


def cmd_submit(args: argparse.Namespace) -> int:
    """Queue one run for a worker process; print its id. Never imports TensorFlow."""
    from core.data.sources import check_source, remember_source
    from core.runs.store import RunStore

    config = config_from_args(args).validate()
    check_source(config.data)  # a missing folder fails now, not in the worker
    store = RunStore(args.runs_dir)
    run_id = store.create_run(config, claimed=False)
    remember_source(config.data)
    if args.json:
        _print_json({"run_id": run_id})
    else:
        print(run_id)
    if not store.live_workers():
        print(
            f"queued; no worker serves {store.root} now: start one with "
            f"`python -m core worker --runs-dir {store.root}`",
            file=sys.stderr,
        )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Train queued runs one at a time until stopped (see ``core.training.jobs.run_worker``)."""
    from core.training.jobs import WorkerOptions, run_worker

    if args.idle_exit is not None and args.idle_exit < 0:
        raise ConfigError(f"--idle-exit {args.idle_exit} is negative. Expected seconds, e.g. 60.")
    options = WorkerOptions(
        runs_dir=args.runs_dir,
        device=args.device,
        once=args.once,
        idle_exit=args.idle_exit,
        parent=args.parent,
    )
    return run_worker(options, progress_for=_epoch_line)


def cmd_runs(args: argparse.Namespace) -> int:
    """List runs, newest first, and the disk space of the runs folder."""
    from core.data.names import display_name
    from core.runs.store import RunStore

    store = RunStore(args.runs_dir)
    runs = store.list_runs()
    if args.json:
        _print_json(runs)
        return 0
    if not runs:
        print("no runs yet: try `python -m core train`")
    width = min(max((len(r["name"]) for r in runs), default=4), 30)
    for r in runs:
        name = r["name"] if len(r["name"]) <= width else r["name"][: width - 1] + "…"
        print(
            f"{r['run_id']}  {r['status']:<11} {name:<{width}}  {r['mode']:<18} "
            f"{r['backbone']:<20} epochs {r['epochs_done']}/{r['planned_epochs']}  best val_acc "
            f"{_fmt(r['best_val_accuracy'])}  {display_name(r['data'])}"
        )
    total = bytes_text(store.disk_usage())
    print(f"{len(runs)} run{'' if len(runs) == 1 else 's'}, {total} on disk in {store.root}")
    return 0


def cmd_rename(args: argparse.Namespace) -> int:
    """Give a run a name of the user's."""
    from core.runs.store import RunStore

    store = RunStore(args.runs_dir)
    name = store.rename(args.run_id, args.name)
    summary = next((r for r in store.list_runs() if r["run_id"] == args.run_id), None)
    if args.json:
        _print_json(summary)
    else:
        print(f"{args.run_id} is now named {name!r}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete a run and its folder, after a confirmation."""
    from core.runs.store import ACTIVE_STATUSES, RunStore

    store = RunStore(args.runs_dir)
    row = store.get_run(args.run_id)
    size = store.run_bytes(args.run_id)
    name = next((r["name"] for r in store.list_runs() if r["run_id"] == args.run_id), "")
    what = f"run {args.run_id} ({name}, {row['status']}, {bytes_text(size)} of files)"
    if row["status"] in ACTIVE_STATUSES:
        store.delete_run(args.run_id)  # refuses with the reason
    if not args.yes:
        if not sys.stdin.isatty():
            raise StudioError(
                f"Not deleting {what} without a confirmation: its model and files are removed "
                "for good. Add --yes to confirm."
            )
        answer = input(f"Delete {what}, its model and files, for good? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted", file=sys.stderr)
            return 1
    store.delete_run(args.run_id)
    if args.json:
        _print_json({"run_id": args.run_id, "deleted": True, "bytes_freed": size})
    else:
        print(f"deleted {what}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Print one run's result object."""
    from core.runs.store import RunStore

    result = RunStore(args.runs_dir).result(args.run_id)
    if args.json:
        _print_json(result)
    else:
        print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """Cancel a queued run at once, or flag a running one to stop (its process sees the flag
    within a batch); a run that has already ended is left as it is."""
    from core.runs.store import ACTIVE_STATUSES, RunStore

    store = RunStore(args.runs_dir)
    status = store.get_run(args.run_id)["status"]
    if status not in ACTIVE_STATUSES:
        print(f"{args.run_id} has already ended ({status}): nothing to stop", file=sys.stderr)
    elif store.cancel_queued(args.run_id):  # queued and not taken by any process yet
        print(f"{args.run_id} was queued: cancelled (now stopped)", file=sys.stderr)
    else:
        store.request_stop(args.run_id)
        print(f"stop requested for {args.run_id}", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Top-k labels per image from a run's model."""
    from core.runs.predict import predict_images
    from core.runs.store import RunStore

    results = predict_images(RunStore(args.runs_dir), args.run, args.images, top_k=args.top_k)
    _print_results(results, args.json, lambda p: f"{p['label']} {p['probability']:.3f}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Confusion matrix and per-class metrics of a run's model on its validation set."""
    from core.runs.evaluate import evaluate_run
    from core.runs.store import RunStore

    ev = evaluate_run(RunStore(args.runs_dir), args.run, force=args.force)
    if args.json:
        keys = ("run_id", "accuracy", "class_names", "confusion_matrix", "per_class", "macro_avg")
        _print_json({k: ev[k] for k in keys if k in ev})
        return 0
    print(f"accuracy {ev['accuracy']:.3f} on {sum(map(sum, ev['confusion_matrix']))} images")
    width = max(len(c) for c in ev["class_names"])
    print(" " * (width + 2) + " ".join(f"{c[:7]:>7}" for c in ev["class_names"]) + "  <- predicted")
    for name, row in zip(ev["class_names"], ev["confusion_matrix"], strict=True):
        print(f"{name:>{width}}  " + " ".join(f"{n:>7}" for n in row))
    for c in ev["per_class"]:
        print(
            f"{c['class']:>{width}}  precision {c['precision']:.3f}  recall {c['recall']:.3f}  "
            f"f1 {c['f1']:.3f}  support {c['support']}"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export and verify a run's model (one format, or every format with --all)."""
    from core.runs.export import ExportTargetError, export_all, export_run, normalize_format
    from core.runs.model_card import export_table
    from core.runs.store import RunStore

    if args.all and args.quantize:
        raise ConfigError(
            "--quantize applies to --format tflite only; --all already includes tflite-fp16 "
            "and tflite-int8."
        )
    fmt = None if args.all else normalize_format(args.fmt)  # unknown: one line listing them
    try:
        if fmt is None:
            info = export_all(
                RunStore(args.runs_dir), args.run, out_dir=args.out, overwrite=args.overwrite
            )
        else:
            info = export_run(
                RunStore(args.runs_dir),
                args.run,
                fmt,
                out_dir=args.out,
                quantize=args.quantize,
                overwrite=args.overwrite,
            )
    except ExportTargetError as exc:
        if args.overwrite or "turn on overwrite" not in str(exc):
            raise
        raise ExportTargetError(f"{exc} (On the command line: --overwrite.)") from exc
    if args.json:
        _print_json(info)
    elif fmt is None:
        print(export_table(info["formats"]))
        for item in info["skipped_formats"]:
            print(f"not exported: {item['format']}, {item['reason']}")
        print(f"verified on {info['verified_images']} {info['verified_on']} images; "
              f"model card: {info['card']}")  # fmt: skip
    else:
        print(
            f"{info['format']} export verified in {info['runtime']} on {info['verified_images']} "
            f"images (top-1 agreement {info['top1_agreement']:.0%}): {info['path']}"
        )
    return 0


def _figure_list(text: str | None) -> list[int] | None:
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
        figures=_figure_list(args.figures),
    )
    if args.json:
        _print_json(result)
    else:
        print(format_bench(result))
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    """ImageNet top-k of a raw pretrained backbone."""
    from core.models.classify import classify_images

    def fmt(p: dict[str, Any]) -> str:
        return f"{p['class_index']} {p['label']} {p['probability']:.3f}"

    results = classify_images(args.backbone, args.images, top_k=args.top_k)
    _print_results(results, args.json, fmt)
    return 0


def _print_results(
    results: list[dict[str, Any]], as_json: bool, fmt: Callable[[dict[str, Any]], str]
) -> None:
    if as_json:
        _print_json(results)
        return
    for r in results:
        print(f"{r['image']}: " + ", ".join(fmt(p) for p in r["predictions"]))


def cmd_backbones(args: argparse.Namespace) -> int:
    """The registry with weight availability."""
    from core.models.backbones import list_backbones

    rows = [spec.to_dict() for spec in list_backbones()]
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        print(
            f"{r['name']:<20} {r['default_size']:>3}px (min {r['min_size']:>2})  "
            f"{r['params_millions']:>5.1f}M params  features {r['feature_width']:>4}  "
            f"imagenet: {r['weights_status']}"
        )
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    """The built-in datasets."""
    from core.data.builtin import list_builtins

    rows = list_builtins()
    if args.json:
        _print_json(rows)
        return 0
    for r in rows:
        print(
            f"{r['source']:<18} {r['images']:>4} images, classes {', '.join(r['classes'])}: "
            f"{r['description']}"
        )
    return 0


COMMANDS = {
    **cli_dataset.COMMANDS,
    **cli_search.COMMANDS,
    "backbones": cmd_backbones,
    "datasets": cmd_datasets,
    "train": cmd_train,
    "resume": cmd_resume,
    "submit": cmd_submit,
    "worker": cmd_worker,
    "runs": cmd_runs,
    "rename": cmd_rename,
    "delete": cmd_delete,
    "show": cmd_show,
    "stop": cmd_stop,
    "predict": cmd_predict,
    "evaluate": cmd_evaluate,
    "export": cmd_export,
    "bench": cmd_bench,
    "classify": cmd_classify,
}
COMMANDS = cli_cluster.with_ray(COMMANDS)  # features; train/search/worker take --ray


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors become one line on stderr and exit code 1."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except StudioError as exc:
        hint = f" [{setting_flags(exc.settings)}]" if exc.settings else ""
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full, read-only or unwritable disk is a user's problem too
        where = getattr(args, "runs_dir", None) or getattr(exc, "filename", None) or "."
        disk = storage_error(exc, where)
        if disk is None:
            raise
        print(f"error: {disk}", file=sys.stderr)
        return 1
