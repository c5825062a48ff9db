"""Where a data source points: built-ins, folders, zips and Kaggle handles."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from core.data.archives import extract_zip
from core.data.builtin import BUILTINS, builtin_path
from core.data.images import IMAGE_EXTENSIONS
from core.errors import DataError, StudioError

__all__ = [
    "MANAGED_DATASETS_DIR",
    "DATASET_SPLIT_PINS",
    "MANAGED_DB",
    "MANAGED_IMAGES_DIR",
    "MAX_RECENT",
    "RECENT_FILE",
    "FolderCheck",
    "check_folder",
    "check_source",
    "kaggle_source",
    "managed_dataset_folder",
    "managed_dataset_names",
    "managed_datasets_root",
    "parse_source",
    "recent_sources",
    "remember_source",
    "resolve_source",
    "is_managed_dataset_folder",
]

_KAGGLE_HANDLE = re.compile(
    r"^(?P<owner>[A-Za-z0-9][A-Za-z0-9_-]*)/(?P<slug>[A-Za-z0-9][A-Za-z0-9_-]*)"
    r"(?:/versions/(?P<version>[0-9]+))?$"
)
_KAGGLE_URL_PREFIXES = ("https://www.kaggle.com/datasets/", "https://kaggle.com/datasets/")
RECENT_FILE = "recent_sources.json"  # in the studio home: sources used before, newest first
MAX_RECENT = 12


def _expected_sources() -> str:
    available = ", ".join(sorted(BUILTINS))
    return (
        f"Expected builtin:NAME (available: {available}), a folder of class subfolders, "
        "a .zip file, kaggle:OWNER/SLUG[/versions/N] "
        "or dataset:NAME (a dataset made in the studio)."
    )


def parse_source(source: str) -> tuple[str, str]:
    """Classify a ``--data`` value as ``("builtin"|"dataset"|"kaggle"|"zip"|"folder", value)``.

    Only looks at the text (and whether a ``.zip`` path is really a folder); nothing is fetched.
    """
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"No data source given. {_expected_sources()}")
    text = source.strip()
    lower = text.lower()
    if lower.startswith("builtin:"):
        return "builtin", text[len("builtin:") :].strip()
    if lower.startswith("dataset:"):  # a managed dataset (core.data.datasets)
        return "dataset", text[len("dataset:") :].strip()
    if lower.startswith("kaggle:"):
        return "kaggle", text[len("kaggle:") :].strip()
    for prefix in _KAGGLE_URL_PREFIXES:  # a pasted dataset URL means the same handle
        if lower.startswith(prefix):
            return "kaggle", text[len(prefix) :].strip().strip("/")
    path = os.path.expanduser(text)
    if _looks_like_kaggle_handle(text) and not os.path.exists(path):
        return "kaggle", text.strip("/")  # owner/slug as copied from kaggle.com
    if lower.endswith(".zip") and not os.path.isdir(path):
        return "zip", path
    return "folder", path


def _looks_like_kaggle_handle(text: str) -> bool:
    """``owner/slug[/versions/N]`` written as Kaggle shows it (no path-like start)."""
    return not text.startswith((".", "~", "/")) and bool(_KAGGLE_HANDLE.match(text.strip("/")))


def kaggle_source(text: str) -> str:
    """The ``kaggle:`` source of what a user typed on the Kaggle tab: ``owner/slug``, a dataset
    URL or ``kaggle:owner/slug[/versions/N]`` all mean the same dataset. DataError if malformed."""
    raw = text.strip() if isinstance(text, str) else ""
    lower = raw.lower()
    handle = raw
    for prefix in ("kaggle:", *_KAGGLE_URL_PREFIXES):
        if lower.startswith(prefix):
            handle = raw[len(prefix) :]
            break
    handle = handle.strip().strip("/")
    match = _KAGGLE_HANDLE.match(handle)
    if not match or (match.group("version") and int(match.group("version")) == 0):
        raise _malformed_kaggle(raw)
    return "kaggle:" + handle


def _malformed_kaggle(value: str) -> DataError:
    return DataError(
        f"Malformed Kaggle handle {value!r}. Expected kaggle:OWNER/SLUG or "
        "kaggle:OWNER/SLUG/versions/N (the kaggle: in front may be left out), e.g. "
        "tongpython/cat-and-dog/versions/1.",
        settings=("data",),
    )


def check_source(source: str) -> None:
    """Fail fast on a source that cannot work, without reading, extracting or downloading it.

    A missing folder or zip, a file where a folder is expected, an unknown built-in or a
    malformed Kaggle handle raise the same ``DataError`` that ``resolve_source`` would raise
    later, so a command can refuse it before it loads TensorFlow.
    """
    from core.data.builtin import BUILTINS, unknown_builtin

    kind, value = parse_source(source)
    if kind == "builtin":
        if value.lower() not in BUILTINS:
            raise unknown_builtin(value)
    elif kind == "dataset":
        managed_dataset_folder(value)  # an unknown name lists the datasets there are
    elif kind == "kaggle":
        kaggle_source("kaggle:" + value)  # a malformed handle fails before any download
    elif kind == "zip" and not os.path.isfile(value):
        raise DataError(
            f"Data source {source!r} not found. {_expected_sources()}", settings=("data",)
        )
    elif kind == "folder" and not os.path.isdir(value):
        if os.path.exists(value):
            raise DataError(
                f"Data source {source!r} is a file, not a folder. {_expected_sources()}",
                settings=("data",),
            )
        raise DataError(
            f"Data source {source!r} not found. {_expected_sources()}", settings=("data",)
        )


def resolve_source(source: str) -> Path:
    """Local folder holding the data of ``source`` (generating, extracting or downloading it)."""
    kind, value = parse_source(source)
    if kind == "builtin":
        return builtin_path(value)
    if kind == "dataset":
        folder = managed_dataset_folder(value)
        for repair in DATASET_REPAIRS:  # what is trained on is then what the dataset shows
            repair(folder.name)
        images = folder / MANAGED_IMAGES_DIR
        images.mkdir(exist_ok=True)  # a dataset with no image yet: the loader says so
        return images
    if kind == "kaggle":
        return _kaggle_download(value)
    if kind == "zip":
        if not os.path.isfile(value):
            raise DataError(f"Data source {source!r} not found. {_expected_sources()}")
        return extract_zip(value)
    if os.path.isdir(value):
        return Path(os.path.abspath(value))
    if os.path.exists(value):
        raise DataError(f"Data source {source!r} is a file, not a folder. {_expected_sources()}")
    raise DataError(f"Data source {source!r} not found. {_expected_sources()}")


# --------------------------------------------------------------------------- managed datasets
# Where core.data.datasets keeps them; here so that resolving a source never imports it.
MANAGED_DATASETS_DIR = "datasets"  # in the studio home
MANAGED_DB = "dataset.sqlite"
MANAGED_IMAGES_DIR = "images"  # the class subfolders the loader reads


def managed_datasets_root() -> Path:
    """Folder holding one sub-folder per managed dataset (created on demand)."""
    from core.paths import ensure_folder, studio_home

    path = studio_home() / MANAGED_DATASETS_DIR
    return ensure_folder(path, f"The datasets folder {path}", "Move that file away, or delete it.")


MANAGED_BACKUP = MANAGED_DB + ".bak"  # the index's rolling backup
# Called with a managed dataset's name before its folder is read: opening it puts right what an
# edit cut short by a kill or a lost index left. ``core.data.datasets`` adds its opener when
# ``core.data`` is imported (it cannot be imported from here: it reads sources through the
# loader).
DATASET_REPAIRS: list[Callable[[str], None]] = []
# ``{image id: "train" | "val"}`` of a managed dataset's images pinned to a split, by dataset name:
# the loader's split honours them (``core.data.datasets`` adds its reader, as above).
DATASET_SPLIT_PINS: list[Callable[[str], dict[str, str]]] = []


def is_managed_dataset_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a managed dataset: its index, the index's backup or, with both
    lost, its images folder (from which the index is rebuilt when it is opened)."""
    if folder.name.startswith(".") or not folder.is_dir():
        return False
    return (
        (folder / MANAGED_DB).exists()
        or (folder / MANAGED_BACKUP).is_file()
        or (folder / MANAGED_IMAGES_DIR).is_dir()
    )


def managed_dataset_names() -> list[str]:
    """Names of the managed datasets, sorted case-insensitively."""
    root = managed_datasets_root()
    return sorted(
        (p.name for p in root.iterdir() if is_managed_dataset_folder(p)), key=str.casefold
    )


def managed_dataset_folder(name: str) -> Path:
    """The folder of managed dataset ``name`` (any case); DataError listing the datasets."""
    text = name.strip() if isinstance(name, str) else ""
    if text and not any(c in text for c in "/\\") and not text.startswith("."):
        folder = managed_datasets_root() / text
        if is_managed_dataset_folder(folder):
            return folder
    names = managed_dataset_names()
    for other in names:  # a different case still finds it (case-insensitive disks agree)
        if text and other.casefold() == text.casefold():
            return managed_datasets_root() / other
    listed = ", ".join(names) if names else "none yet"
    raise DataError(
        f"No dataset named {text!r} (datasets: {listed}). Create it first, or check the name.",
        settings=("data",),
    )


# --------------------------------------------------------------------------- kaggle


def _kaggle_cache_folder() -> str:
    try:
        from kagglehub.config import get_cache_folder

        return get_cache_folder()
    except Exception:  # only used to word an error message
        return os.environ.get("KAGGLEHUB_CACHE") or os.path.expanduser("~/.cache/kagglehub")


def _cached_kaggle_versions(owner: str, slug: str) -> list[int]:
    """List the versions kagglehub fully downloaded (it writes ``<N>.complete`` markers)."""
    base = os.path.join(_kaggle_cache_folder(), "datasets", owner, slug)
    try:
        names = os.listdir(os.path.join(base, "versions"))
    except OSError:
        return []
    return sorted(
        int(name)
        for name in names
        if name.isdigit() and os.path.exists(os.path.join(base, f"{name}.complete"))
    )


def _kaggle_error(owner: str, slug: str, version: int | None, exc: Exception) -> DataError:
    handle = f"{owner}/{slug}" + (f"/versions/{version}" if version else "")
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status in (401, 403):
        return DataError(
            f"Kaggle refused access to dataset '{handle}' (HTTP {status}): it may be private or "
            "need its terms accepted on kaggle.com; set KAGGLE_USERNAME and KAGGLE_KEY if needed."
        )
    if status == 404:
        return DataError(
            f"Kaggle dataset '{handle}' does not exist (HTTP 404); check the handle at "
            f"https://www.kaggle.com/datasets/{owner}/{slug}."
        )
    if isinstance(exc, OSError) and status is None:  # requests' connection errors are OSErrors
        cached = _cached_kaggle_versions(owner, slug)
        cached_note = (
            f" Cached versions: {', '.join(map(str, cached))}." if cached else " Nothing is cached."
        )
        example = f"kaggle:{owner}/{slug}/versions/{cached[-1] if cached else 'N'}"
        if version is None:
            pinned = (
                f"Use the pinned form {example}"
                if cached
                else "Connect once and pin a version (kaggle:OWNER/SLUG/versions/N), which then "
                "works offline, or use"
            )
            return DataError(
                f"Cannot resolve the latest version of Kaggle dataset '{owner}/{slug}' without "
                "network access: kagglehub always asks Kaggle for the latest version, even when a "
                f"copy is already cached.{cached_note} {pinned} "
                + ("or a local folder instead." if cached else "a local folder instead.")
            )
        # Suggest what differs from what was typed: a version that is cached, else the network.
        if cached:
            fix = f"Use a cached version instead ({example}), or a local folder."
        else:
            fix = (
                "Connect to the internet once to download it (it is then kept for offline use), "
                "or use a local folder."
            )
        return DataError(
            f"Kaggle dataset '{handle}' is not in the kagglehub cache ({_kaggle_cache_folder()}) "
            f"and Kaggle cannot be reached.{cached_note} {fix}"
        )
    return DataError(f"Could not get Kaggle dataset '{handle}': {type(exc).__name__}: {exc}")


def _kaggle_download(value: str) -> Path:
    match = _KAGGLE_HANDLE.match(value.strip().strip("/"))
    version = int(match.group("version")) if match and match.group("version") else None
    if not match or version == 0:
        raise _malformed_kaggle(value)
    owner, slug = match.group("owner"), match.group("slug")
    try:
        import kagglehub  # lazy: imports requests and the Kaggle SDK
    except ImportError as exc:
        raise DataError(
            "kaggle: sources need the kagglehub package (pip install kagglehub)."
        ) from exc
    handle = f"{owner}/{slug}" + (f"/versions/{version}" if version else "")
    try:
        path = kagglehub.dataset_download(handle)
    except Exception as exc:  # kagglehub raises many unrelated types
        raise _kaggle_error(owner, slug, version, exc) from exc
    if not os.path.isdir(path):
        raise DataError(f"kagglehub returned {path!r} for '{handle}', which is not a folder.")
    return Path(path)


# --------------------------------------------------------------------------- zip


# --------------------------------------------------------------------------- folder check


class FolderCheck(NamedTuple):
    """A quick look at a folder typed on the Data page: usable or not, and why, in words."""

    ok: bool
    message: str
    classes: tuple[str, ...] = ()


_WRAPPER_DEPTH = 4  # as the loader: single wrapper folders are descended through
_PEEK_FILES = 200  # entries looked at per class folder: enough to find one image


def _visible_dirs_and_images(folder: str) -> tuple[list[str], int]:
    dirs, images = [], 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                dirs.append(entry.path)
            elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                images += 1  # a FIFO or device named like an image is no image
    return sorted(dirs), images


def _holds_an_image(folder: str, depth: int = 3) -> bool:
    """Whether ``folder`` (or a sub-folder a few levels down) holds an image file; bounded."""
    try:
        with os.scandir(folder) as entries:
            subdirs = []
            for i, entry in enumerate(entries):
                if i >= _PEEK_FILES:
                    break
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    subdirs.append(entry.path)
                elif (
                    entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
                ):
                    return True
    except OSError:
        return False
    return depth > 0 and any(_holds_an_image(d, depth - 1) for d in subdirs[:20])


def check_folder(text: str) -> FolderCheck:
    """Whether ``text`` names a folder the studio can train on, by listing a few folders (no image
    is opened): exists, is a folder, has class sub-folders (or train/ and val/) holding images.

    Every message is about folders (what the Data page's folder tab shows as the user types);
    the full check of every file happens when the data is used.
    """
    raw = text.strip() if isinstance(text, str) else ""
    if not raw:
        return FolderCheck(False, "Type the path of a folder that holds one sub-folder per class.")
    path = os.path.abspath(os.path.expanduser(raw))
    if not os.path.exists(path):
        parent = os.path.dirname(path)
        while parent and not os.path.isdir(parent) and os.path.dirname(parent) != parent:
            parent = os.path.dirname(parent)
        return FolderCheck(
            False,
            f"Folder not found: {path}. {parent} exists: check the spelling of the rest.",
        )
    if not os.path.isdir(path):
        if path.lower().endswith(".zip"):
            return FolderCheck(
                False,
                f"{path} is a zip file, not a folder. Drop it on the Zip upload tab, or type "
                "the folder it was unpacked into.",
            )
        return FolderCheck(
            False, f"{path} is a file, not a folder. Type the folder that holds the class folders."
        )
    try:
        folder = path
        for _ in range(_WRAPPER_DEPTH + 1):
            dirs, images = _visible_dirs_and_images(folder)
            names = {os.path.basename(d).lower(): d for d in dirs}
            if "train" in names:
                folder = names["train"]
                dirs, images = _visible_dirs_and_images(folder)
                break
            if len(dirs) == 1 and not images:
                sub_dirs, sub_images = _visible_dirs_and_images(dirs[0])
                if sub_dirs and not sub_images:  # a wrapper: the classes are further down
                    folder = dirs[0]
                    continue
            break
    except PermissionError:
        return FolderCheck(False, f"The folder {path} cannot be read (permission denied).")
    except OSError as exc:
        return FolderCheck(False, f"The folder {path} cannot be read: {exc.strerror or exc}.")
    classes = tuple(os.path.basename(d) for d in dirs if _holds_an_image(d))
    where = "" if folder == path else f" (in {os.path.relpath(folder, path)})"
    if not dirs:
        if images:
            return FolderCheck(
                False,
                f"{path} holds {images} image{'s' if images != 1 else ''} but no class "
                "folders. Put each class's images in a sub-folder named after the class "
                "(e.g. cats/ and dogs/).",
            )
        return FolderCheck(
            False,
            f"{path} has no sub-folders and no images. Expected one sub-folder per class "
            "(e.g. cats/ and dogs/), or train/ and val/ folders holding those.",
        )
    empty = [os.path.basename(d) for d in dirs if os.path.basename(d) not in classes]
    listed = ", ".join(repr(e) for e in empty[:5]) + ("…" if len(empty) > 5 else "")
    if len(classes) < 2:
        found = f"only {classes[0]!r} holds images" if classes else "none of them holds images"
        return FolderCheck(
            False,
            f"{path}{where} has {len(dirs)} sub-folder{'s' if len(dirs) != 1 else ''} but "
            f"{found}. At least two class folders with images are needed.",
            classes,
        )
    if empty:  # the loader refuses a class without images: say so before it is used
        return FolderCheck(
            False,
            f"{path}{where}: the class folder{'s' if len(empty) != 1 else ''} {listed} "
            f"hold{'s' if len(empty) == 1 else ''} no images. Add images to "
            f"{'them' if len(empty) != 1 else 'it'}, or move {'them' if len(empty) != 1 else 'it'}"
            " out of the folder.",
            classes,
        )
    shown = ", ".join(classes[:8]) + ("…" if len(classes) > 8 else "")
    return FolderCheck(True, f"{len(classes)} class folders{where}: {shown}.", classes)


# --------------------------------------------------------------------------- recent sources


def _recent_file() -> Path:
    from core.paths import studio_home

    return studio_home() / RECENT_FILE


def recent_sources(kind: str | None = None, extra: list[str] | None = None) -> list[str]:
    """Sources used before, newest first, without duplicates: those ``remember_source`` kept
    in the studio home, then ``extra`` (e.g. the data of recorded runs). With ``kind``
    ("folder", "zip", "kaggle", "builtin"), only sources of that kind; folders only if they
    still exist. Never raises: an unreadable list is an empty one."""
    try:
        stored = json.loads(_recent_file().read_text(encoding="utf-8"))
        listed = [s for s in stored if isinstance(s, str)] if isinstance(stored, list) else []
    except (OSError, ValueError, StudioError):
        listed = []
    seen: list[str] = []
    for source in [*listed, *(extra or [])]:
        if not isinstance(source, str) or not source.strip() or source in seen:
            continue
        try:
            source_kind, value = parse_source(source)
        except DataError:
            continue
        if kind and source_kind != kind:
            continue
        if source_kind == "folder" and not os.path.isdir(value):
            continue
        seen.append(source)
    return seen


def remember_source(source: str) -> None:
    """Put ``source`` first in the studio's recent-sources list (kept short; best effort)."""
    try:
        listed = recent_sources()
        kept = [source, *(s for s in listed if s != source)][:MAX_RECENT]
        from core.files import atomic_write_text

        atomic_write_text(_recent_file(), json.dumps(kept, indent=1) + "\n")
    except (OSError, StudioError) as exc:  # a convenience list: never a reason to fail
        print(f"warning: could not remember the data source {source!r}: {exc}", file=sys.stderr)
