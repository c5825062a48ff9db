"""Finding the class folders and their image files in a dataset folder, and what to skip."""

from __future__ import annotations

import os
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from core.data.archives import IGNORED_NAMES, ZIP_MARKER_NAME
from core.data.builtin import MARKER_NAME as _BUILTIN_MARKER_NAME
from core.data.images import IMAGE_EXTENSIONS, check_image
from core.errors import DataError

__all__ = [
    "MAX_CLASS_DEPTH",
    "MAX_WRAPPER_DEPTH",
    "FolderLayout",
    "class_folders",
    "find_layout",
    "folder_and_name",
    "folder_entries",
    "is_image_name",
    "reason_summary",
    "symlink_names",
    "unsafe_name_characters",
    "usable_files",
]

MAX_WRAPPER_DEPTH = 4  # wrapper folders descended through to find the class level
MAX_CLASS_DEPTH = 16  # sub-folders followed inside one class folder
_VAL_DIR_NAMES = ("val", "validation", "valid", "test")  # in order of preference
# Hidden names that are tool or OS bookkeeping, never data: left out silently. Any other name that
# starts with "." is left out too, but reported in skipped_files so the user can see why.
_SILENT_HIDDEN_NAMES = frozenset(
    {
        ".DS_Store",
        ".AppleDouble",
        ".Spotlight-V100",
        ".Trashes",
        ".fseventsd",
        ".TemporaryItems",
        ".directory",
        ".git",
        ".gitignore",
        ".gitattributes",
        ".gitkeep",
        ".keep",
        ".hg",
        ".svn",
        ".ipynb_checkpoints",
        ZIP_MARKER_NAME,
        _BUILTIN_MARKER_NAME,
    }
)
# Characters that break "one class per line" files (str.splitlines splits on all of them) or
# cannot be shown: C0/C1 controls (category Cc) and the Unicode line/paragraph separators.
_UNSAFE_NAME_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


def _silently_ignored(name: str) -> bool:
    """Bookkeeping of operating systems and tools (``.DS_Store``, ``.git``, ``._x`` forks...)."""
    return name in IGNORED_NAMES or name in _SILENT_HIDDEN_NAMES or name.startswith("._")


def unsafe_name_characters(name: str) -> list[str]:
    """The line breaks and control characters in ``name`` (those that break a one-per-line list)."""
    return [ch for ch in name if unicodedata.category(ch) in _UNSAFE_NAME_CATEGORIES]


def _inside(path: str, root_real: str) -> bool:
    try:
        return os.path.commonpath([path, root_real]) == root_real
    except ValueError:
        return False


def _skip(skipped: list[dict] | None, path: str, reason: str) -> None:
    if skipped is not None:
        skipped.append({"path": path, "reason": reason})


def folder_entries(
    folder: str, root_real: str, skipped: list[dict] | None
) -> tuple[list[str], list[str]]:
    """Visible sub-folders and files of ``folder`` (sorted); records what it leaves out."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        _skip(skipped, folder, f"unreadable folder ({exc.strerror or exc})")
        return [], []
    dirs: list[str] = []
    files: list[str] = []
    for entry in entries:
        if _silently_ignored(entry.name):
            continue
        if entry.name.startswith("."):
            try:
                kind = "folder" if entry.is_dir() else "file"
            except OSError:
                kind = "entry"
            _skip(skipped, entry.path, f"hidden {kind} (name starts with '.')")
            continue
        try:
            if entry.is_symlink() and not _inside(os.path.realpath(entry.path), root_real):
                _skip(skipped, entry.path, "symlink pointing outside the dataset folder")
                continue
            if entry.is_dir():
                dirs.append(entry.path)
            elif entry.is_file():
                files.append(entry.path)
            elif entry.is_symlink():
                _skip(skipped, entry.path, "broken symlink")
            else:
                _skip(skipped, entry.path, "not a regular file")
        except OSError as exc:
            _skip(skipped, entry.path, f"unreadable ({exc.strerror or exc})")
    return dirs, files


def is_image_name(path: str) -> bool:
    """Whether ``path`` has an image file's extension."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _has_class_dirs(folder: str, root_real: str) -> bool:
    return bool(folder_entries(folder, root_real, None)[0])


@dataclass
class FolderLayout:
    """Where a folder's classes are: its training level, and a given validation level."""

    train_dir: str
    val_dir: str | None = None  # set when the data brings its own validation split

    @property
    def split(self) -> str:
        """``random`` or ``given:<val folder>``."""
        return f"given:{os.path.basename(self.val_dir)}" if self.val_dir else "random"


def find_layout(root: str, root_real: str) -> FolderLayout:
    """Find the class level, descending through up to MAX_WRAPPER_DEPTH wrapper folders."""
    folder = root
    for depth in range(MAX_WRAPPER_DEPTH + 1):
        dirs, files = folder_entries(folder, root_real, None)
        by_name = {os.path.basename(d).lower(): d for d in dirs}
        if "train" in by_name:
            for name in _VAL_DIR_NAMES:
                # A test/ folder of unlabelled images (no class subfolders) is no validation set.
                if name in by_name and _has_class_dirs(by_name[name], root_real):
                    return FolderLayout(by_name["train"], by_name[name])
            return FolderLayout(by_name["train"])
        if len(dirs) == 1 and depth < MAX_WRAPPER_DEPTH and not any(map(is_image_name, files)):
            sub_dirs, sub_files = folder_entries(dirs[0], root_real, None)
            # One sub-folder holding folders and no images is a wrapper, not a lone class.
            if sub_dirs and not any(map(is_image_name, sub_files)):
                folder = dirs[0]
                continue
        return FolderLayout(folder)
    return FolderLayout(folder)


def class_folders(folder: str, root_real: str, skipped: list[dict]) -> dict[str, str]:
    """``{class name: folder}`` of ``folder``'s class sub-folders (what it leaves out is added
    to ``skipped``)."""
    dirs, files = folder_entries(folder, root_real, skipped)
    for path in files:
        if is_image_name(path):
            _skip(skipped, path, "image outside any class folder")
        else:
            _skip(skipped, path, _non_image_reason(path))
    for path in dirs:
        _check_class_name(path)
    return {os.path.basename(d): d for d in dirs}


def _check_class_name(path: str) -> None:
    """Refuse a class folder whose name would not survive a one-class-per-line labels file."""
    name = os.path.basename(path)
    bad = unsafe_name_characters(name)
    if bad:
        shown = ", ".join(dict.fromkeys(repr(ch) for ch in bad))
        raise DataError(
            f"Class folder {name!r} in {os.path.dirname(path)!r} has a line break or control "
            f"character in its name ({shown}); class names must be plain text on one line "
            "because they are saved one per line in labels.txt. Rename the folder without "
            "those characters and load the data again."
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in the folder name (surrogate-escaped)
        raw = os.fsencode(name)
        raise DataError(
            f"Class folder {raw!r} in {os.path.dirname(path)!r} has a name that is not valid "
            "UTF-8 text, so it cannot be saved as a class label. Rename the folder (for "
            "example with a file manager) and load the data again."
        ) from None


def _non_image_reason(path: str) -> str:
    ext = os.path.splitext(path)[1]
    return f"not an image file ({ext.lower()})" if ext else "not an image file (no extension)"


def _class_files(class_dir: str, root_real: str, skipped: list[dict]) -> list[str]:
    """Every visible file under ``class_dir`` (sub-folders included), sorted.

    An explicit stack rather than recursion, and at most MAX_CLASS_DEPTH levels: a deep tree can
    neither exhaust Python's recursion limit nor make the scan wander.
    """
    found: list[str] = []
    seen = {os.path.realpath(class_dir): class_dir}  # symlinked folders inside the root could loop
    stack = [(class_dir, 1)]
    while stack:
        folder, depth = stack.pop()
        dirs, files = folder_entries(folder, root_real, skipped)
        found.extend(files)
        for sub in dirs:
            real = os.path.realpath(sub)
            if real in seen:
                _skip(skipped, sub, f"same folder as {seen[real]} (symlink), not read twice")
                continue
            seen[real] = sub
            if depth >= MAX_CLASS_DEPTH:
                _skip(skipped, sub, f"folder nested deeper than {MAX_CLASS_DEPTH} levels")
                continue
            stack.append((sub, depth + 1))
    return sorted(found)


def _check_all(
    paths: list[str], progress: Callable[[int, int], None] | None = None
) -> list[str | None]:
    # Verdicts of unchanged files come from the scan cache; the rest are decoded in parallel.
    from core.data.scan_cache import check_all

    return check_all(paths, check_image, progress)


def reason_summary(items: list[dict]) -> str:
    """The most common reasons of skipped ``items``, counted, in one phrase."""
    counts = Counter(item["reason"] for item in items)
    parts = [f"{n} {reason}" for reason, n in counts.most_common(4)]
    if len(counts) > 4:
        parts.append("...")
    return ", ".join(parts)


def _drop_duplicates(
    candidates: list[tuple[str, str]],
    root: str,
    root_real: str,
    claimed: dict[str, str],
    skipped_by_class: dict[str, list[dict]],
) -> list[tuple[str, str]]:
    """Keep one path per real file: symlinks must not label the same image twice.

    ``claimed`` maps real paths to the path kept for them (shared between the train and the
    validation folders, so a file cannot be in both). Within ``candidates`` the path that is the
    file itself (no symlink on the way) wins; the others are skipped, naming the kept path.
    """
    reals: list[str] = []
    folder_reals: dict[str, str] = {}  # realpath is slow: resolve each folder once
    links: dict[str, set[str]] = {}  # the symlinks' names in each folder, from one listing
    for _, path in candidates:
        folder, base = folder_and_name(path)
        if folder not in folder_reals:
            folder_reals[folder] = os.path.realpath(folder)
            links[folder] = symlink_names(folder_reals[folder])
        real = folder_reals[folder] + os.sep + base
        if base in links[folder]:
            real = os.path.realpath(real)
        reals.append(real)
    # The path kept for each real file not claimed already: the first that reaches it, unless a
    # later one is the file itself where the first is not (only paths sharing a file are
    # checked: at 50,000 files, usually none).
    owner: dict[str, int] = {}
    for i, real in enumerate(reals):
        if real in claimed:
            continue
        current = owner.setdefault(real, i)
        if (
            current != i
            and not _direct(candidates[current][1], root, root_real, real)
            and _direct(candidates[i][1], root, root_real, real)
        ):
            owner[real] = i
    for real, i in owner.items():
        claimed[real] = candidates[i][1]
    kept: list[tuple[str, str]] = []
    for i, (name, path) in enumerate(candidates):
        if owner.get(reals[i]) == i:
            kept.append((name, path))
        else:
            reason = f"same file as {claimed[reals[i]]} (symlink), counted once"
            skipped_by_class[name].append({"path": path, "reason": reason})
    return kept


def folder_and_name(path: str) -> tuple[str, str]:
    """``os.path.split(path)``, in a tenth of its time: a scan splits every path it lists (the
    folder may keep a doubled separator at its end, which resolves the same)."""
    folder, sep, name = path.rpartition(os.sep)
    if not sep:
        return os.path.split(path)
    return folder or os.sep, name


def symlink_names(folder: str) -> set[str]:
    """Names of the symlinks in ``folder``: the listing knows them without an ``lstat`` per file
    (half a second at 50,000 files on a busy machine)."""
    try:
        with os.scandir(folder) as entries:
            return {e.name for e in entries if e.is_symlink()}
    except OSError:
        return set()


def _direct(path: str, root: str, root_real: str, real: str) -> bool:
    """Whether ``path`` reaches its file without going through a symlink below the root."""
    prefix = root.rstrip(os.sep) + os.sep
    return path.startswith(prefix) and root_real.rstrip(os.sep) + path[len(prefix) - 1 :] == real


def usable_files(
    class_dirs: dict[str, str],
    root: str,
    root_real: str,
    skipped: list[dict],
    claimed: dict[str, str],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, list[str]], dict[str, list[dict]]]:
    """Usable image paths and skipped entries per class (``claimed``: see _drop_duplicates).

    ``progress(done, total)``: files checked so far.
    """
    usable: dict[str, list[str]] = {}
    skipped_by_class: dict[str, list[dict]] = {}
    candidates: list[tuple[str, str]] = []
    for name, folder in class_dirs.items():
        own: list[dict] = []
        for path in _class_files(folder, root_real, own):
            if is_image_name(path):
                candidates.append((name, path))
            else:
                own.append({"path": path, "reason": _non_image_reason(path)})
        usable[name] = []
        skipped_by_class[name] = own
    candidates = _drop_duplicates(candidates, root, root_real, claimed, skipped_by_class)
    reasons = _check_all([path for _, path in candidates], progress)
    for (name, path), reason in zip(candidates, reasons, strict=True):
        if reason is None:
            usable[name].append(path)
        else:
            skipped_by_class[name].append({"path": path, "reason": reason})
    for name in class_dirs:
        skipped_by_class[name].sort(key=lambda item: item["path"])
        skipped.extend(skipped_by_class[name])
    return usable, skipped_by_class


# --------------------------------------------------------------------------- split
