"""``python -m core weights ...``: weights files carried in by hand, and what works offline.

``core.cli`` registers it: ``add_parsers(sub)`` adds ``weights import``, ``weights list`` and
``teachable-machine import``; ``COMMANDS`` maps ``weights`` and ``teachable-machine`` to their
handlers. Errors are ``StudioError``s, printed on one line by ``core.cli.main``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["COMMANDS", "WEIGHTS_EPILOG", "add_parsers", "cmd_teachable_machine", "cmd_weights"]

WEIGHTS_EPILOG = """examples:
  python -m core weights import ~/Downloads/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5
  python -m core weights import my_mobilenet.weights.h5 --backbone mobilenet_v2 --name lab
  python -m core train --backbone mobilenet_v2 --weights lab
  python -m core weights list
"""


def add_parsers(sub: Any) -> None:
    """Register ``weights`` and its actions on ``core.cli``'s subparsers."""
    p = sub.add_parser(
        "weights",
        help="import a weights file (works offline afterwards) and list the weights here",
        description="Keras' own ImageNet files (e.g. resnet50_weights_tf_dim_ordering_tf_"
        "kernels_notop.h5) are recognised by name, checked against the hash Keras pins for them "
        "and placed where Keras looks, so later runs with --weights imagenet need no network. "
        "Any other Keras weights file (.weights.h5, .h5, .keras) for a backbone is checked to "
        "load into it and kept under a name, usable as --weights NAME.",
        epilog=WEIGHTS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="weights_action", metavar="ACTION", required=True)
    a = actions.add_parser("import", help="check a weights file and make it available offline")
    a.add_argument("file", metavar="FILE", help="a .h5, .weights.h5 or .keras weights file")
    a.add_argument(
        "--backbone",
        help="the backbone the file was saved from (not needed for Keras' own ImageNet files)",
    )
    a.add_argument("--name", help="the name to use with --weights (default: the file's name)")
    a.add_argument("--json", action="store_true", help="print the import record as JSON")
    a = actions.add_parser("list", help="the weights usable offline and where they came from")
    a.add_argument("--json", action="store_true", help="print the list as JSON")

    p = sub.add_parser(
        "teachable-machine",
        help="import a Teachable Machine image project (keras_model.h5 + labels.txt) as a run",
        description="The project's Keras export becomes a completed run (predict and export it "
        "like any run; its labels are kept), and its MobileNetV2 trunk becomes the pretrained "
        "weights of the backbone teachable_machine, to fine-tune on your own data.",
        epilog="examples:\n  python -m core teachable-machine import keras_model.h5 labels.txt "
        "--name pets\n  python -m core train --backbone teachable_machine --data ~/photos",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="tm_action", metavar="ACTION", required=True)
    a = actions.add_parser("import", help="import keras_model.h5 and labels.txt as a run")
    a.add_argument("model", metavar="MODEL_H5", help="the exported keras_model.h5")
    a.add_argument("labels", metavar="LABELS_TXT", help="the exported labels.txt")
    a.add_argument("--name", help="the run's name (default: the model file's folder)")
    a.add_argument("--runs-dir", metavar="D", help="the run store (default: the studio home)")
    a.add_argument("--json", action="store_true", help="print the run as JSON")


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Discard what native libraries write to stderr (file descriptor 2) meanwhile.

    TensorFlow's C++ start-up notices (absl, oneDNN) ignore ``TF_CPP_MIN_LOG_LEVEL``; a refused
    import must still be one line of stderr.
    """
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def cmd_weights(args: argparse.Namespace) -> int:
    """``weights import`` / ``weights list``."""
    from core.models import weights_store
    from core.models.imported_weights import KIND_IMAGENET

    if args.weights_action == "import":
        with _native_stderr_silenced():
            import keras  # noqa: F401  the checks build models: load TensorFlow quietly first

        item = weights_store.import_weights(args.file, backbone=args.backbone, name=args.name)
        if args.json:
            print(json.dumps(item.to_dict()))
        else:
            use = "--weights imagenet" if item.kind == KIND_IMAGENET else f"--weights {item.name}"
            print(f"imported {item.name} for {item.backbone}: {item.note}. Use it with {use}.")
        return 0
    rows = weights_store.available_weights()
    if args.json:
        print(json.dumps(rows))
        return 0
    for r in rows:
        print(f"{r['backbone']:<20} {r['name']:<40} {r['origin']}")
    return 0


def cmd_teachable_machine(args: argparse.Namespace) -> int:
    """``teachable-machine import``: the project becomes a completed run."""
    from core.runs.store import RunStore
    from core.runs.teachable_machine import import_project

    with _native_stderr_silenced():
        import keras  # noqa: F401  load TensorFlow quietly (see _native_stderr_silenced)
    store = RunStore(args.runs_dir)
    run_id = import_project(store, args.model, args.labels, name=args.name)
    result = store.result(run_id)
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(f"imported run {run_id} ({', '.join(result['class_names'])})")
    return 0


COMMANDS = {"weights": cmd_weights, "teachable-machine": cmd_teachable_machine}
