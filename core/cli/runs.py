"""``python -m core`` for runs: train, submit, resume, list, rename, delete, show, stop,
predict, evaluate, export; and the catalogues (backbones, built-in datasets, classify).

Flags and JSON keys here are a public contract (users script against them): extend, don't rename.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from core.cli import trackers
from core.cli.cluster import add_ray_flag
from core.cli.flags import LINT_FLAGS, add_common, add_train_flags, config_from_args
from core.cli.output import bytes_text, epoch_line, fmt, print_json, print_results
from core.config import Status
from core.errors import ConfigError, StudioError

if TYPE_CHECKING:  # importing the queue imports Keras: only where a command needs it
    from core.training.jobs import JobQueue

__all__ = [
    "COMMANDS",
    "add_parsers",
    "cmd_backbones",
    "cmd_classify",
    "cmd_datasets",
    "cmd_delete",
    "cmd_evaluate",
    "cmd_export",
    "cmd_predict",
    "cmd_rename",
    "cmd_resume",
    "cmd_runs",
    "cmd_show",
    "cmd_stop",
    "cmd_submit",
    "cmd_train",
]


def add_parsers(sub: Any) -> None:
    """Register the run commands and the catalogues."""
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
    add_train_flags(p)
    add_common(p, "print the result as one JSON object on the last stdout line")
    add_ray_flag(p, "a feature_extraction run computes its features there, then trains here")

    p = sub.add_parser(
        "resume",
        help="continue a stopped or interrupted run from its last checkpoint",
        description="Continue a stopped, interrupted (e.g. killed) or failed run from the last "
        "epoch it finished, in the right phase, up to its planned number of epochs. Finished "
        "epochs keep their metrics.",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    add_common(p, "print the result as one JSON object on the last stdout line")

    p = sub.add_parser(
        "submit",
        help="queue a run for a worker process and print its id at once (does not train)",
        description="Queue one run in the run store and print its id at once, without loading "
        "TensorFlow. It does not start a worker: a `python -m core worker` process on the same "
        "runs folder trains it (the dashboard starts one when its own runs wait). Follow it with "
        "`python -m core runs` or `show RUN_ID`; stop it with `stop RUN_ID`.",
    )
    add_train_flags(p)
    add_common(p, 'print {"run_id": ...} as JSON')

    p = sub.add_parser(
        "runs",
        help="list recorded runs (running ones included) and the disk space they use",
        description="List every run, newest first: id, status, name, mode, backbone, epochs, "
        "best validation accuracy and data, then the disk space of the runs folder. --json "
        "prints the list as JSON (each run's name is its own or a default like 'photos #7').",
    )
    add_common(p)

    p = sub.add_parser(
        "rename",
        help="give a run a name (shown in place of the default, e.g. 'photos #7')",
        description="Give a run a name of your own; it replaces the default name everywhere "
        "(the dashboard, `runs`, `show`) and is kept in the run's folder. Spaces are trimmed; at "
        "most 60 characters.",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("name", metavar="NAME", help="the new name (quote it if it has spaces)")
    add_common(p, "print the run's summary as JSON")

    p = sub.add_parser(
        "delete",
        help="delete a finished run: its record, model and files",
        description="Delete a run that is not queued or running: its entry in the run store and "
        "its folder (model, checkpoint, exports inside it). Asks for confirmation on a terminal; "
        "elsewhere --yes is required.",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--yes", action="store_true", help="delete without asking")
    add_common(p, "print {run_id, deleted, bytes_freed} as JSON")

    p = sub.add_parser("show", help="everything about one run (the object `train --json` prints)")
    p.add_argument("run_id", metavar="RUN_ID")
    add_common(p)

    p = sub.add_parser("stop", help="ask a running run to stop (takes effect within one batch)")
    p.add_argument("run_id", metavar="RUN_ID")
    add_common(p)

    p = sub.add_parser("predict", help="classify images with a finished run's model")
    p.add_argument("--run", required=True, metavar="RUN_ID", help="a completed run's id")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=int, default=5, help="labels per image (default 5)")
    trackers.add_predict_flags(p)
    add_common(p)

    p = sub.add_parser(
        "evaluate",
        help="confusion matrix and per-class precision/recall/F1 on the validation set",
    )
    p.add_argument("--run", required=True, metavar="RUN_ID", help="a finished run's id")
    p.add_argument("--force", action="store_true", help="recompute even if cached")
    trackers.add_evaluate_flags(p)
    add_common(p)

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
    add_common(p)

    p = sub.add_parser("classify", help="what a raw pretrained backbone sees (ImageNet classes)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="default efficientnet_lite0")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def cmd_train(args: argparse.Namespace) -> int:
    """Queue one run on this process's worker and wait for it."""
    from core.data.sources import check_source, remember_source
    from core.lint import count_train_images, lint_config

    config = config_from_args(args).validate()  # before the lint: a bad flag is one error line
    check_source(config.data)  # a missing folder fails in a second, before TensorFlow loads
    ray_record = None
    if getattr(args, "ray", None):  # the features on a Ray cluster first, into the cache
        from core.cli.cluster import features_on_ray

        ray_record = features_on_ray(args)
    for finding in lint_config(config, count_train_images(config)):
        flags = LINT_FLAGS.get(finding["code"])
        hint = f" [{flags}]" if flags else ""
        print(f"{finding['level']}: {finding['message']}{hint}", file=sys.stderr)
    from core.training.jobs import JobQueue  # its thread imports TensorFlow when the run starts

    jobs = JobQueue(args.runs_dir)
    run_id = jobs.submit(config, progress=epoch_line(config))
    if ray_record is not None:  # where its features were computed
        jobs.store.update(run_id, ray=ray_record)
    remember_source(config.data)  # offered on the Data page's folder tab
    return _wait_and_report(
        jobs, run_id, args.json, f"run {run_id}: {config.mode} {config.backbone} on {config.data}"
    )


def cmd_resume(args: argparse.Namespace) -> int:
    """Continue a run from its checkpoint and wait for it."""
    from core.training.jobs import JobQueue

    jobs = JobQueue(args.runs_dir)
    config = jobs.store.config(args.run_id)
    done = jobs.store.get_run(args.run_id)["epochs_done"]
    jobs.resume(args.run_id, progress=epoch_line(config))
    return _wait_and_report(
        jobs,
        args.run_id,
        args.json,
        f"run {args.run_id}: resuming after epoch {done} of {config.planned_epochs}",
    )


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


def _wait_and_report(jobs: JobQueue, run_id: str, as_json: bool, announce: str) -> int:
    """Wait for the run, saying ``announce`` once Ctrl+C and SIGTERM stop it cleanly (a signal
    sent as soon as the line shows must find the handlers in place)."""
    from core.cli.progress import StageWatcher

    with _stop_on_signals(jobs, run_id):
        print(announce, file=sys.stderr)
        with StageWatcher(jobs.store, run_id):
            status = jobs.wait(run_id)
    result = jobs.store.result(run_id, split=as_json)
    if as_json:
        print_json(result)
    else:
        print(
            f"{run_id} {status}: best val_accuracy {fmt(result['best_val_accuracy'])} "
            f"in {fmt(result['duration_s'], '.1f')} s; model {result['model_path']}"
        )
    if status == Status.FAILED:
        print(f"error: {result['error']}", file=sys.stderr)
        return 1
    return 0 if status == Status.COMPLETED else 130


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
        print_json({"run_id": run_id})
    else:
        print(run_id)
    if not store.live_workers():
        print(
            f"queued; no worker serves {store.root} now: start one with "
            f"`python -m core worker --runs-dir {store.root}`",
            file=sys.stderr,
        )
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """List runs, newest first, and the disk space of the runs folder."""
    from core.data.names import display_name
    from core.runs.store import RunStore

    store = RunStore(args.runs_dir)
    runs = store.list_runs()
    if args.json:
        print_json(runs)
        return 0
    if not runs:
        print("no runs yet: try `python -m core train`")
    width = min(max((len(r["name"]) for r in runs), default=4), 30)
    for r in runs:
        name = r["name"] if len(r["name"]) <= width else r["name"][: width - 1] + "…"
        print(
            f"{r['run_id']}  {r['status']:<11} {name:<{width}}  {r['mode']:<18} "
            f"{r['backbone']:<20} epochs {r['epochs_done']}/{r['planned_epochs']}  best val_acc "
            f"{fmt(r['best_val_accuracy'])}  {display_name(r['data'])}"
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
        print_json(summary)
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
        print_json({"run_id": args.run_id, "deleted": True, "bytes_freed": size})
    else:
        print(f"deleted {what}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Print one run's result object."""
    from core.runs.store import RunStore

    result = RunStore(args.runs_dir).result(args.run_id, split=args.json)
    if args.json:
        print_json(result)
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
    """Top-k labels per image from a run's model (calibrated, with the prediction set)."""
    results = trackers.predictions(args)
    if args.json:
        print_json(results)
        return 0
    for result in results:
        print(trackers.prediction_line(result))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Confusion matrix and per-class metrics of a run's model on its validation set."""
    from core.cli.progress import ProgressLine

    ev = trackers.evaluation(args, progress=ProgressLine("evaluating validation images"))
    if args.json:
        keys = ("run_id", "accuracy", "class_names", "confusion_matrix", "per_class", "macro_avg")
        shown: Mapping[str, Any] = ev  # the keys are chosen at run time
        print_json({k: shown[k] for k in keys + trackers.EVALUATE_KEYS if k in shown})
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
    for line in trackers.evaluation_lines(ev):
        print(line)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export and verify a run's model (one format, or every format with --all)."""
    from core.cli.progress import export_progress
    from core.runs.export import ExportTargetError, export_all, export_run, normalize_format
    from core.runs.model_card import export_table
    from core.runs.store import RunStore

    if args.all and args.quantize:
        raise ConfigError(
            "--quantize applies to --format tflite only; --all already includes tflite-fp16 "
            "and tflite-int8."
        )
    chosen = None if args.all else normalize_format(args.fmt)  # unknown: one line listing them
    progress = export_progress()
    try:
        if chosen is None:
            info = export_all(
                RunStore(args.runs_dir),
                args.run,
                out_dir=args.out,
                overwrite=args.overwrite,
                progress=progress,
            )
        else:
            info = export_run(
                RunStore(args.runs_dir),
                args.run,
                chosen,
                out_dir=args.out,
                quantize=args.quantize,
                overwrite=args.overwrite,
                progress=progress,
            )
    except ExportTargetError as exc:
        if args.overwrite or "turn on overwrite" not in str(exc):
            raise
        raise ExportTargetError(f"{exc} (On the command line: --overwrite.)") from exc
    if args.json:
        print_json(info)
    elif chosen is None:
        print(export_table(info["formats"]))
        for item in info["skipped_formats"]:
            print(f"not exported: {item['format']}, {item['reason']}")
        print(
            f"verified on {info['verified_images']} {info['verified_on']} images; "
            f"model card: {info['card']}"
        )  # chosen: skip
    else:
        print(
            f"{info['format']} export verified in {info['runtime']} on {info['verified_images']} "
            f"images (top-1 agreement {info['top1_agreement']:.0%}): {info['path']}"
        )
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    """ImageNet top-k of a raw pretrained backbone."""
    from core.models.classify import classify_images

    def line(p: dict[str, Any]) -> str:
        return f"{p['class_index']} {p['label']} {p['probability']:.3f}"

    results = classify_images(args.backbone, args.images, top_k=args.top_k)
    print_results(results, args.json, line)
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    """The registry with weight availability."""
    from core.models.backbones import list_backbones

    rows = [spec.to_dict() for spec in list_backbones()]
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        print(
            f"{r['name']:<20} {r['default_size']:>3}px (min {r['min_size']:>2})  "
            f"{r['params_millions']:>5.1f}M params  features {r['feature_width']:>4}  "
            f"imagenet: {r['weights_status']} ({r['availability']})"
        )
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    """The built-in datasets."""
    from core.data.builtin import list_builtins

    rows = list_builtins()
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        print(
            f"{r['source']:<18} {r['images']:>4} images, classes {', '.join(r['classes'])}: "
            f"{r['description']}"
        )
    return 0


COMMANDS = {
    "backbones": cmd_backbones,
    "datasets": cmd_datasets,
    "train": cmd_train,
    "resume": cmd_resume,
    "submit": cmd_submit,
    "runs": cmd_runs,
    "rename": cmd_rename,
    "delete": cmd_delete,
    "show": cmd_show,
    "stop": cmd_stop,
    "predict": cmd_predict,
    "evaluate": cmd_evaluate,
    "export": cmd_export,
    "classify": cmd_classify,
}
