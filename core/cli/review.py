"""``python -m core review --run RUN_ID``: a finished run's likely label mistakes.

``--json`` prints the public contract: a JSON list of suspects, most suspicious first, each with
``image`` (an id ``dataset relabel/exclude`` accept), ``path``, ``label``, ``predicted``,
``confidence``, ``loss``, ``split`` and ``reviewed``, and ``"changed": true`` on a file whose
content is not what the run trained on. Warnings about the data having changed since the run
trained (images new, gone or changed) go to stderr, one line each.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["COMMANDS", "MAP_METHODS", "add_parsers", "cmd_review"]

# ``core.training.review.MAP_METHODS``, spelled out: the parser is built without importing the
# engine (a test keeps the two equal).
MAP_METHODS = ("pca", "tsne")

REVIEW_EPILOG = """examples:
  python -m core review --run RUN_ID --top 20
  python -m core review --run RUN_ID --top 20 --json
  python -m core review --run RUN_ID --edit-target      # the dataset to edit (made once)
  python -m core review --run RUN_ID --map tsne --json  # 2-D map of the images' features
  python -m core dataset relabel NAME 3f2a9c01b7de --to dogs
  python -m core dataset exclude NAME 3f2a9c01b7de

Edits go to a managed dataset NAME: the run's own for --data dataset:NAME; for a folder, zip or
builtin source, its managed copy, made on the first --edit-target (the ids are the same: they
are content hashes). Then retrain on it with: python -m core train --config RUN_DIR/config.json
--data dataset:NAME.
"""


def add_parsers(sub: Any) -> None:
    """Register ``review``."""
    p = sub.add_parser(
        "review",
        help="the images a finished run's model most disagrees with (likely label mistakes)",
        description="Rank a completed run's images by how strongly the model disagrees with "
        "their label: training images by k-fold heads on the run's features that never saw "
        "them, validation images by the saved model. Scores are cached in the run folder; "
        "each call shows the dataset's current labels and exclusions.",
        epilog=REVIEW_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", required=True, metavar="RUN_ID", help="a completed run")
    p.add_argument("--top", type=int, metavar="N", help="the N most suspicious (default: all)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list of suspects (image, path, label, predicted, confidence, loss, "
        "split, reviewed; changed: true on a file edited since the run), most suspicious first",
    )
    p.add_argument(
        "--map",
        choices=MAP_METHODS,
        help="print the run's embedding map instead of the suspects: 2-D positions (pca, or "
        "tsne) of its images' features, a stratified sample of at most 5,000 with every class; "
        "with --json, {method, scored, drawn, classes, points: [{image, path, label, predicted, "
        "correct, split, x, y}]}",
    )
    p.add_argument(
        "--edit-target",
        action="store_true",
        help="print the managed dataset NAME that 'dataset relabel/exclude NAME' edits for this "
        "run, making the managed copy of a folder/zip/builtin source on first use",
    )
    p.add_argument(
        "--runs-dir",
        metavar="D",
        help="run store folder (default: $TRANSFER_STUDIO_HOME, else ~/.transfer_studio)",
    )


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _review_commands(exc: Any) -> str:
    """The commands for a run review cannot read yet (a ``RunNotReviewableError``)."""
    run, runs = exc.run_id, "python -m core runs"
    if exc.status in ("stopped", "interrupted"):
        return f"(python -m core resume {run}; completed runs: {runs})"
    if exc.status == "failed":
        return f"(its error: python -m core show {run}; completed runs: {runs})"
    return f"(its progress: python -m core show {run}; completed runs: {runs})"


def cmd_review(args: argparse.Namespace) -> int:
    """Print a run's suspects (or, with --edit-target, the dataset its edits go to)."""
    from core.cli.progress import ProgressLine
    from core.data.names import escape_unprintable
    from core.errors import ConfigError, StudioError
    from core.runs.store import RunStore
    from core.training.review import (
        RunNotReviewableError,
        edit_target,
        embedding_map,
        review_run,
    )

    try:
        store = RunStore(args.runs_dir)
        if args.edit_target:
            name, made = edit_target(store, args.run)
            if args.json:
                print(json.dumps({"dataset": name, "created": made}))
            else:
                how = "made now as a managed copy of the run's data" if made else "existing"
                shown = escape_unprintable(name)
                print(f"{shown}\t({how}; edit with: python -m core dataset relabel {name!r} ...)")
            return 0
        if args.top is not None and args.top < 1:
            raise ConfigError(f"--top must be at least 1, got {args.top}; e.g. --top 20.")
        lines = {
            "features": ProgressLine("review: computing features"),
            "heads": ProgressLine("review: fitting logistic-regression heads", unit="head"),
            "layout": ProgressLine(f"embedding map: {args.map} layout", unit="step"),
        }

        def progress(step: str, done: int, total: int) -> None:
            lines[step](done, total)

        if args.map:
            return _print_map(embedding_map(store, args.run, args.map, progress=progress), args)
        review = review_run(store, args.run, top=args.top, progress=progress)
    except RunNotReviewableError as exc:
        raise StudioError(f"{exc} {_review_commands(exc)}") from None
    except StudioError as exc:
        exc.settings = ()  # about --run/--top, not a training setting
        raise
    for line in _warnings(review):
        print(line, file=sys.stderr)
    if args.json:
        print(json.dumps([s.to_json() for s in review.suspects]))
        return 0
    print(f"run {review.run_id} on {escape_unprintable(review.source)}")
    print(f"method: {review.method}")
    if review.dataset:
        print(
            f"edits go to dataset {review.dataset!r}: python -m core dataset relabel "
            f"{review.dataset!r} IMAGE --to CLASS (or exclude {review.dataset!r} IMAGE)"
        )
    else:
        print(
            "edits go to a managed copy of the run's data: make it (once) with "
            f"python -m core review --run {review.run_id} --edit-target"
        )
    if not review.suspects:
        print("no images to review")
        return 0
    rows = [["#", "image", "split", "label", "predicted", "conf", "loss", "", "path"]]
    for n, s in enumerate(review.suspects, 1):
        rows.append(
            [
                str(n),
                s.image,
                s.split,
                escape_unprintable(s.label),  # names are shown as they are, never reordered
                escape_unprintable(s.predicted),
                f"{s.confidence:.2f}",
                f"{s.loss:.2f}",
                ", ".join(m for m, on in (("kept", s.reviewed), ("changed", s.changed)) if on),
                escape_unprintable(s.path),
            ]  # fmt: skip
        )
    print("\n".join(_table(rows)))
    return 0


def _print_map(emap: Any, args: argparse.Namespace) -> int:
    """The map as JSON (``--json``), else a line saying what it shows and one row per point."""
    from core.data.names import escape_unprintable

    if args.json:
        print(json.dumps(emap.to_json()))
        return 0
    sample = (
        f"a stratified sample of {emap.drawn:,} of its {emap.scored:,} images, every one of "
        f"{emap.classes} classes"
        if emap.sampled
        else f"all {emap.scored:,} images"
    )
    print(f"embedding map ({emap.method}) of run {args.run}: {sample}")
    rows = [["image", "split", "label", "predicted", "x", "y"]]
    rows += [
        [p.image, p.split, escape_unprintable(p.label), escape_unprintable(p.predicted),
         f"{p.x:.3f}", f"{p.y:.3f}"]
        for p in emap.points
    ]  # fmt: skip
    print("\n".join(_table(rows)))
    return 0


def _warnings(review: Any) -> list[str]:
    out = []
    for ids, what in (
        (review.new_images, "new since the run trained (not scored; retrain to include them)"),
        (review.gone_images, "the run trained on are no longer in use (excluded or removed)"),
        (
            review.changed_images,
            "changed since the run trained (scored as they are now: the run saw other content)",
        ),
    ):
        if ids:
            shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
            n = len(ids)
            print_what = f"{n} image{'s' if n != 1 else ''} {what}: {shown}"
            out.append(f"warning: {print_what}")
    return out


COMMANDS = {"review": cmd_review}
