"""``python -m core dataset ...``: managed datasets from the command line.

``add_parsers(sub)`` adds the ``dataset`` command and its actions (create, add, list, show,
relabel, exclude, restore, keep, pin, forget-missing, undo); ``review`` (``core.cli.review``)
lists the ids ``relabel``, ``exclude`` and ``keep`` take. Errors are ``StudioError``s, printed
on one line by ``core.cli.main``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from core.cli.output import print_json

__all__ = ["COMMANDS", "add_parsers", "cmd_dataset"]

DATASET_EPILOG = """examples:
  python -m core dataset create pets                     # an empty dataset
  python -m core dataset create --from ~/photos.zip      # imported once, named 'photos'
  python -m core dataset add pets cats ~/Pictures/cat1.jpg ~/Pictures/more-cats/
  python -m core dataset show pets --json
  python -m core dataset relabel pets 3f2a9c01b7de --to dogs
  python -m core review --run RUN_ID --top 20           # likely label mistakes (ids to edit)
  python -m core dataset pin pets --train 3f2a9c01b7de 9c1d2e3f4a5b   # never in validation
  python -m core dataset pin pets --unpin 3f2a9c01b7de
  python -m core dataset undo pets
  python -m core dataset forget-missing pets            # files deleted outside the studio
  python -m core train --data dataset:pets
"""


def add_parsers(sub: Any) -> None:
    """Register ``dataset`` and its actions."""
    p = sub.add_parser(
        "dataset",
        help="datasets the studio keeps: create, add images, list, show, relabel, exclude, pin, "
        "undo",
        description="Managed datasets live in the studio's home (datasets/NAME) with their "
        "classes, images and edit history; train on one with --data dataset:NAME. Images are "
        "never deleted: excluded ones are set aside and can be restored, and every edit can be "
        "undone.",
        epilog=DATASET_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="dataset_action", metavar="ACTION", required=True)

    a = actions.add_parser("create", help="create a dataset, empty or imported from a source")
    a.add_argument(
        "name",
        nargs="?",
        help="the dataset's name (default with --from: the source's own name, e.g. photos.zip "
        "gives photos)",
    )
    a.add_argument(
        "--from",
        dest="source",
        metavar="SOURCE",
        help="import once from a folder of class subfolders, a .zip, builtin:NAME or "
        "kaggle:OWNER/SLUG",
    )
    a.add_argument("--json", action="store_true", help="print the new dataset as JSON")

    a = actions.add_parser("add", help="add image files or folders of images to a class")
    a.add_argument("name", help="the dataset")
    a.add_argument("label", metavar="CLASS", help="the class (created if it does not exist)")
    a.add_argument("files", metavar="FILE_OR_DIR", nargs="+", help="images, or folders of them")
    a.add_argument("--json", action="store_true", help="print what was added as JSON")

    a = actions.add_parser("list", help="the managed datasets")
    a.add_argument("--json", action="store_true", help="print a JSON list")

    a = actions.add_parser("show", help="classes with counts, excluded images and edits")
    a.add_argument("name", help="the dataset")
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.add_argument("--images", action="store_true", help="also list every image (id, class)")

    a = actions.add_parser("relabel", help="move images to another class")
    a.add_argument("name", help="the dataset")
    a.add_argument("images", metavar="IMAGE", nargs="+", help="image ids (from show or review)")
    a.add_argument("--to", required=True, metavar="CLASS", help="the class they belong to")

    a = actions.add_parser("exclude", help="set images aside (kept, restorable)")
    a.add_argument("name", help="the dataset")
    a.add_argument("images", metavar="IMAGE", nargs="+", help="image ids")

    a = actions.add_parser("restore", help="bring excluded images back")
    a.add_argument("name", help="the dataset")
    a.add_argument("images", metavar="IMAGE", nargs="+", help="image ids")

    a = actions.add_parser("keep", help="mark images reviewed and right as labelled (review)")
    a.add_argument("name", help="the dataset")
    a.add_argument("images", metavar="IMAGE", nargs="+", help="image ids (from review)")

    a = actions.add_parser(
        "pin",
        help="pin images to the training or validation split (or unpin them)",
        description="A pinned image stays on its side of every run's split of dataset:NAME "
        "(e.g. both copies of a near-duplicate in training, so validation never scores a "
        "picture the model trained on); the other images split as before. Undo with "
        "'dataset undo'.",
    )
    a.add_argument("name", help="the dataset")
    side = a.add_mutually_exclusive_group(required=True)
    side.add_argument(
        "--train", nargs="+", metavar="IMAGE", help="image ids or paths: always in training"
    )
    side.add_argument(
        "--val", nargs="+", metavar="IMAGE", help="image ids or paths: always in validation"
    )
    side.add_argument(
        "--unpin", nargs="+", metavar="IMAGE", help="image ids or paths: split as any other"
    )

    a = actions.add_parser(
        "forget-missing",
        help="forget images whose file was removed outside the studio (one edit: undo reverts it)",
    )
    a.add_argument("name", help="the dataset")

    a = actions.add_parser("undo", help="revert the last edit")
    a.add_argument("name", help="the dataset")


def _shown(text: str) -> str:
    """A stored name as printed: invisible controls escaped (a name stays what it reads as)."""
    from core.data.names import escape_unprintable

    return escape_unprintable(text)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 'es' if word.endswith('s') else 's'}"


def _report_add(result: Any) -> None:
    for item in result.skipped:
        print(f"skipped {_shown(item['path'])}: {item['reason']}", file=sys.stderr)
    for item in result.duplicates:
        print(f"duplicate {_shown(item['path'])}: {_shown(item['reason'])}", file=sys.stderr)


def _create(args: argparse.Namespace) -> int:
    from core.data import datasets
    from core.errors import DataError

    if not args.name and not args.source:
        raise DataError(
            "No dataset name given. Name the new dataset, e.g. 'dataset create pets', or "
            "import one with --from SOURCE (it then takes the source's name)."
        )
    if args.source:
        from core.data.sources import check_source

        check_source(args.source)  # a missing folder fails before anything is created
    name = args.name or datasets.suggest_name(args.source)
    with datasets.create(name, args.source) as ds:
        info = ds.show()
    if args.json:
        print_json(info)
    else:
        counts = ", ".join(f"{c['name']} {c['images']}" for c in info["classes"]) or "no classes"
        print(
            f"created dataset {info['name']!r}: {_plural(info['images'], 'image')} ({counts}); "
            f"train on it with --data {info['source']}"
        )
    return 0


def _add(args: argparse.Namespace) -> int:
    from core.data.datasets import open_dataset

    with open_dataset(args.name) as ds:
        result = ds.add_images(args.label, args.files, create_class=True)
        counts = {c["name"]: c["images"] for c in ds.show()["classes"]}
    if args.json:
        print_json(result.to_json())
    else:
        _report_add(result)
        label = next((c for c in counts if c.casefold() == args.label.strip().casefold()), "")
        print(
            f"added {_plural(len(result.added), 'image')} to {label!r} (now "
            f"{counts.get(label, 0)}); {len(result.duplicates)} duplicate, "
            f"{len(result.skipped)} skipped"
        )
    return 0 if result.added or not (result.skipped or result.duplicates) else 1


def _list(args: argparse.Namespace) -> int:
    from core.data.datasets import list_datasets

    rows = list_datasets()
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no datasets yet: create one with 'python -m core dataset create NAME'")
    for r in rows:
        if "error" in r:  # one damaged dataset does not hide the others
            print(f"{_shown(r['name']):<20} cannot be opened: {r['error']}")
            continue
        print(
            f"{_shown(r['name']):<20} {_plural(r['classes'], 'class'):>10}  "
            f"{_plural(r['images'], 'image'):>12}  {r['excluded']} excluded  "
            f"{_plural(r['edits'], 'edit')}"
            + (f"  {r['missing']} missing" if r.get("missing") else "")
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    from core.data.datasets import open_dataset

    with open_dataset(args.name) as ds:
        info = ds.show()
        if args.images:
            info["image_list"] = [vars(i) for i in ds.images()]
    if args.json:
        print_json(info)
        return 0
    pinned = info.get("pinned") or {}
    pins = (
        f", {pinned.get('train', 0)} pinned to training, {pinned.get('val', 0)} to validation"
        if any(pinned.values())
        else ""
    )
    print(
        f"{_shown(info['name'])}: {_plural(info['images'], 'image')}, {info['excluded']} excluded"
        + pins
    )
    for c in info["classes"]:
        print(f"  {_shown(c['name']):<24} {c['images']}")
    missing = info["missing"]
    if missing:
        print(
            f"  {len(missing)} missing (removed outside the studio; 'dataset forget-missing "
            f"{_shown(info['name'])}' forgets them):"
        )
        for m in missing[:10]:
            print(f"    {m['id']}  {_shown(m['label']):<20} {_shown(m['original_name'])}")
        if len(missing) > 10:
            print(f"    ... and {len(missing) - 10} more (--json lists them all)")
    for e in info["edits"][-10:]:
        print(f"  edit {e['seq']}: {_shown(e['summary'])}" + (" (undone)" if e["undone"] else ""))
    for i in info.get("image_list", []):
        where = f"{'excluded ' if i['excluded'] else ''}{_shown(i['path'])}"
        print(f"  {i['id']}  {_shown(i['label']):<20} {where}")
    return 0


def _relabel(args: argparse.Namespace) -> int:
    from core.data.datasets import open_dataset

    with open_dataset(args.name) as ds:
        moved = ds.relabel(args.images, args.to)
    print(f"relabelled {_plural(len(moved), 'image')} to {args.to.strip()!r}")
    return 0


def _exclude(args: argparse.Namespace) -> int:
    from core.data.datasets import open_dataset

    with open_dataset(args.name) as ds:
        changed = ds.exclude(args.images)
    print(f"excluded {_plural(len(changed), 'image')} (kept aside; 'dataset restore' undoes it)")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from core.data.datasets import open_dataset

    with open_dataset(args.name) as ds:
        changed = ds.restore(args.images)
    print(f"restored {_plural(len(changed), 'image')}")
    return 0


def _keep(args: argparse.Namespace) -> int:
    from core.data.datasets import open_dataset

    with open_dataset(args.name) as ds:
        changed = ds.mark_reviewed(args.images)
    print(f"kept {_plural(len(changed), 'image')} as labelled (review lists them last)")
    return 0


def _pin(args: argparse.Namespace) -> int:
    from core.data.datasets import open_dataset

    split = "train" if args.train else "val" if args.val else None
    items = args.train or args.val or args.unpin
    with open_dataset(args.name) as ds:
        # A path of the dataset's own (``show --images``, a run's split) names its image by id.
        ids = [ds.image_id(item) or item for item in items]
        changed = ds.pin(ids, split)
    images = _plural(len(changed), "image")
    where = {"train": "training", "val": "validation"}.get(split or "")
    verb = f"pinned {images} to {where}" if where else f"unpinned {images}"
    print(f"{verb} ('dataset undo' reverts it)")
    return 0


def _forget_missing(args: argparse.Namespace) -> int:
    from core.data.datasets import open_dataset

    with open_dataset(args.name) as ds:
        forgotten = ds.forget_missing()
    if forgotten:
        print(
            f"forgot {_plural(len(forgotten), 'missing image')} "
            f"({', '.join(forgotten[:5])}{'...' if len(forgotten) > 5 else ''}); "
            "'dataset undo' brings them back"
        )
    else:
        print("no missing images: every image's file is in the dataset's folder")
    return 0


def _undo(args: argparse.Namespace) -> int:
    from core.data.datasets import open_dataset

    with open_dataset(args.name) as ds:
        edit = ds.undo()
    print("nothing to undo" if edit is None else f"undid edit {edit['seq']}: {edit['summary']}")
    return 0


_ACTIONS = {
    "create": _create,
    "add": _add,
    "list": _list,
    "show": _show,
    "relabel": _relabel,
    "exclude": _exclude,
    "restore": _restore,
    "keep": _keep,
    "pin": _pin,
    "forget-missing": _forget_missing,
    "undo": _undo,
}


def cmd_dataset(args: argparse.Namespace) -> int:
    """Run one ``dataset`` action."""
    from core.errors import StudioError

    try:
        return _ACTIONS[args.dataset_action](args)
    except StudioError as exc:
        exc.settings = ()  # "no dataset named x" is about the NAME typed here, not --data
        raise


COMMANDS = {"dataset": cmd_dataset}
