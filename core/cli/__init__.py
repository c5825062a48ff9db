"""``python -m core``: train, record, list and use transfer-learning runs from the command line.

Flags and JSON keys are a public contract (users script against them): extend, don't rename.

The commands come in families, one module each (``runs``, ``worker``, ``bench``, ``search``,
``dataset``, ``review``, ``trackers``, ``weights``, ``cluster``), each with its
``add_parsers(sub)`` and ``COMMANDS``.
``COMMANDS`` here names the family of every command: ``main`` imports only that family and
builds only its parser (a worker process reaches its job loop without the other commands); the
whole parser is built for ``--help`` and for a command that is not known.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from core.errors import StudioError, storage_error

__all__ = ["COMMANDS", "EPILOG", "FAMILIES", "build_parser", "handler", "main"]

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


# The families in the order their commands are listed by ``--help``.
FAMILIES = (
    "runs",
    "worker",
    "bench",
    "search",
    "dataset",
    "review",
    "trackers",
    "weights",
    "cluster",
)
# Every command → the family module that parses and runs it.
COMMANDS: dict[str, str] = {
    **dict.fromkeys(
        ("backbones", "datasets", "train", "resume", "submit", "runs", "rename", "delete",
         "show", "stop", "predict", "evaluate", "export", "classify"),
        "runs",
    ),
    "worker": "worker",
    "bench": "bench",
    "search": "search",
    "lr-find": "search",
    "task": "search",
    "dataset": "dataset",
    "review": "review",
    "log-mlflow": "trackers",
    "weights": "weights",
    "teachable-machine": "weights",
    "features": "cluster",
}  # fmt: skip


def _family(name: str) -> ModuleType:
    return importlib.import_module(f"core.cli.{name}")


def build_parser(families: Sequence[str] = FAMILIES) -> argparse.ArgumentParser:
    """The CLI's argument parser with the commands of ``families`` (default: all; also used to
    render ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m core",
        description="Transfer Studio engine: teach a pretrained image model a new task.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in families:
        _family(name).add_parsers(sub)
    return parser


def handler(command: str) -> Callable[[argparse.Namespace], int]:
    """The function that runs ``command`` (a key of ``COMMANDS``)."""
    return _family(COMMANDS[command]).COMMANDS[command]  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors become one line on stderr and exit code 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    family = COMMANDS.get(argv[0]) if argv else None
    args = build_parser([family] if family else FAMILIES).parse_args(argv)
    try:
        return handler(args.command)(args)
    except StudioError as exc:
        from core.cli.flags import setting_flags

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
