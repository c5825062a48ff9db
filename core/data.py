"""Resolving a ``--data`` source into a checked, split list of labelled image files.

Sources: ``builtin:NAME``, a local folder (class subfolders, or ``train/`` plus ``val/``,
``validation/`` or ``test/``, possibly under a few wrapper folders), a ``.zip`` file (extracted
safely into the cache) and ``kaggle:OWNER/SLUG[/versions/N]`` (through kagglehub and its cache).

Every candidate file is checked with ``check_image`` up front, so training never meets a broken
file; what was left out and why is kept in ``DatasetIndex.skipped_files`` for the user to see.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import unicodedata
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.builtin_datasets import BUILTINS, builtin_path
from core.builtin_datasets import MARKER_NAME as _BUILTIN_MARKER_NAME
from core.errors import ConfigError, DataError
from core.images import IMAGE_EXTENSIONS, check_image
from core.paths import data_cache_dir

MAX_ZIP_UNCOMPRESSED_BYTES = 2 * 1024**3  # total, declared and actually written
MAX_ZIP_COMPRESSION_RATIO = 200  # per member, only for members above the next size
ZIP_RATIO_MIN_BYTES = 10 * 1024**2
MAX_ZIP_MEMBERS = 50_000  # entries in one zip (a folder of images per class rarely has more)
MAX_ZIP_DEPTH = 64  # folder levels of one zip member's path
MAX_WRAPPER_DEPTH = 4  # wrapper folders descended through to find the class level
MAX_CLASS_DEPTH = 16  # sub-folders followed inside one class folder
ZIP_MARKER_NAME = ".extracted-complete.json"
_ZIP_MARKER_VERSION = 1
_VAL_DIR_NAMES = ("val", "validation", "valid", "test")  # in order of preference
_IGNORED_NAMES = frozenset({"__MACOSX"})
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
_CHUNK = 1024 * 1024
_KAGGLE_HANDLE = re.compile(
    r"^(?P<owner>[A-Za-z0-9][A-Za-z0-9_-]*)/(?P<slug>[A-Za-z0-9][A-Za-z0-9_-]*)"
    r"(?:/versions/(?P<version>[0-9]+))?$"
)
_KAGGLE_URL_PREFIXES = ("https://www.kaggle.com/datasets/", "https://kaggle.com/datasets/")


@dataclass
class DatasetIndex:
    """A resolved dataset: sorted class names and the labelled train/validation files."""

    source: str
    root: str
    class_names: list[str]
    train_paths: list[str]
    train_labels: list[int]
    val_paths: list[str]
    val_labels: list[int]
    skipped_files: list[dict] = field(default_factory=list)
    split: str = "random"

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Images per class in each split: ``{"train": {cls: n}, "val": {cls: n}}``."""
        counts: dict[str, dict[str, int]] = {}
        for split, labels in (("train", self.train_labels), ("val", self.val_labels)):
            per_label = Counter(labels)
            counts[split] = {name: per_label.get(i, 0) for i, name in enumerate(self.class_names)}
        return counts

    def summary(self) -> dict:
        """JSON-able overview for run records, the CLI and the dashboard."""
        return {
            "source": self.source,
            "root": self.root,
            "class_names": list(self.class_names),
            "train_images": len(self.train_paths),
            "val_images": len(self.val_paths),
            "class_counts": self.class_counts(),
            "skipped_files": [dict(item) for item in self.skipped_files],
            "split": self.split,
        }


# --------------------------------------------------------------------------- sources


def _expected_sources() -> str:
    available = ", ".join(sorted(BUILTINS))
    return (
        f"Expected builtin:NAME (available: {available}), a folder of class subfolders, "
        "a .zip file or kaggle:OWNER/SLUG[/versions/N]."
    )


def parse_source(source: str) -> tuple[str, str]:
    """Classify a ``--data`` value as ``("builtin"|"kaggle"|"zip"|"folder", value)``.

    Only looks at the text (and whether a ``.zip`` path is really a folder); nothing is fetched.
    """
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"No data source given. {_expected_sources()}")
    text = source.strip()
    lower = text.lower()
    if lower.startswith("builtin:"):
        return "builtin", text[len("builtin:") :].strip()
    if lower.startswith("kaggle:"):
        return "kaggle", text[len("kaggle:") :].strip()
    for prefix in _KAGGLE_URL_PREFIXES:  # a pasted dataset URL means the same handle
        if lower.startswith(prefix):
            return "kaggle", text[len(prefix) :].strip().strip("/")
    path = os.path.expanduser(text)
    if lower.endswith(".zip") and not os.path.isdir(path):
        return "zip", path
    return "folder", path


def resolve_source(source: str) -> Path:
    """Local folder holding the data of ``source`` (generating, extracting or downloading it)."""
    kind, value = parse_source(source)
    if kind == "builtin":
        return builtin_path(value)
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


# --------------------------------------------------------------------------- kaggle


def _kaggle_cache_folder() -> str:
    try:
        from kagglehub.config import get_cache_folder

        return get_cache_folder()
    except Exception:  # noqa: BLE001 - only used to word an error message
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
            return DataError(
                f"Cannot resolve the latest version of Kaggle dataset '{owner}/{slug}' without "
                "network access: kagglehub always asks Kaggle for the latest version, even when a "
                f"copy is already cached.{cached_note} Use the pinned form {example} or a local "
                "folder instead."
            )
        return DataError(
            f"Kaggle dataset '{handle}' is not in the kagglehub cache ({_kaggle_cache_folder()}) "
            f"and Kaggle cannot be reached.{cached_note} Use a cached version ({example}) or a "
            "local folder instead."
        )
    return DataError(f"Could not get Kaggle dataset '{handle}': {type(exc).__name__}: {exc}")


def _kaggle_download(value: str) -> Path:
    match = _KAGGLE_HANDLE.match(value.strip().strip("/"))
    version = int(match.group("version")) if match and match.group("version") else None
    if not match or version == 0:
        raise DataError(
            f"Malformed Kaggle handle {value!r}. Expected kaggle:OWNER/SLUG or "
            "kaggle:OWNER/SLUG/versions/N, e.g. kaggle:tongpython/cat-and-dog/versions/1."
        )
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
    except Exception as exc:  # noqa: BLE001 - kagglehub raises many unrelated types
        raise _kaggle_error(owner, slug, version, exc) from exc
    if not os.path.isdir(path):
        raise DataError(f"kagglehub returned {path!r} for '{handle}', which is not a folder.")
    return Path(path)


# --------------------------------------------------------------------------- zip


def _sha256_prefix(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        while chunk := fp.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _read_zip_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / ZIP_MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("version") != _ZIP_MARKER_VERSION:
        return None
    return marker


def _gib(n: float) -> str:
    return f"{n / 1024**3:.3g} GB"


def _plan_zip(
    infos: list[zipfile.ZipInfo], zip_path: str
) -> tuple[list[tuple[list[str], zipfile.ZipInfo]], list[dict]]:
    """Validate every member before writing anything; return (files and dirs to write, skipped)."""
    if len(infos) > MAX_ZIP_MEMBERS:
        raise DataError(
            f"Refusing zip {zip_path!r}: it holds {len(infos)} entries, more than the "
            f"{MAX_ZIP_MEMBERS} a zip data source may have (so many tiny files is more likely a "
            "mistake or an attack than a dataset). Extract it yourself and pass the folder, or "
            "split it into smaller zips."
        )
    plan: list[tuple[list[str], zipfile.ZipInfo]] = []
    skipped: list[dict] = []
    declared = 0
    for info in infos:
        name = info.filename.replace("\\", "/")  # zips made on Windows may use backslashes
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
            raise DataError(
                f"Refusing zip {zip_path!r}: member {info.filename!r} has an absolute path."
            )
        parts = [part for part in name.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise DataError(
                f"Refusing zip {zip_path!r}: member {info.filename!r} would be written outside "
                "the extraction folder ('..')."
            )
        if not parts or parts[0] in _IGNORED_NAMES:  # macOS resource forks are never data
            continue
        where = f"{zip_path}::{info.filename}"
        if parts[0].lower() == ZIP_MARKER_NAME.lower():  # lower: case-insensitive file systems
            # The extraction writes its completion marker under this name, at the top level.
            skipped.append(
                {
                    "path": where,
                    "reason": f"name {ZIP_MARKER_NAME!r} is reserved for the extraction marker "
                    "(not extracted)",
                }
            )
            continue
        if len(parts) > MAX_ZIP_DEPTH:
            # Such paths are never data (class folders are a few levels deep) and would make
            # folder creation and clean-up recurse once per level.
            skipped.append(
                {
                    "path": f"{zip_path}::{'/'.join(parts[:3])}/.../{parts[-1]}",
                    "reason": f"path {len(parts)} levels deep, more than the {MAX_ZIP_DEPTH} "
                    "allowed (not extracted)",
                }
            )
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            skipped.append({"path": where, "reason": "symlink inside the zip (not extracted)"})
            continue
        if info.flag_bits & 0x1:
            skipped.append({"path": where, "reason": "encrypted zip member (not extracted)"})
            continue
        if not info.is_dir():
            declared += info.file_size
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > ZIP_RATIO_MIN_BYTES and ratio > MAX_ZIP_COMPRESSION_RATIO:
                raise DataError(
                    f"Refusing zip {zip_path!r}: member {info.filename!r} expands "
                    f"{ratio:.0f}:1 to {info.file_size / 1024**2:.0f} MB (zip bomb? the limit is "
                    f"{MAX_ZIP_COMPRESSION_RATIO}:1 for members over "
                    f"{ZIP_RATIO_MIN_BYTES / 1024**2:.3g} MB)."
                )
        plan.append((parts, info))
    if declared > MAX_ZIP_UNCOMPRESSED_BYTES:
        raise DataError(
            f"Refusing zip {zip_path!r}: it declares {_gib(declared)} uncompressed, more than the "
            f"{_gib(MAX_ZIP_UNCOMPRESSED_BYTES)} limit. Extract it yourself and pass the folder."
        )
    return plan, skipped


def _extract_members(
    zf: zipfile.ZipFile,
    plan: list[tuple[list[str], zipfile.ZipInfo]],
    dest_root: str,
    zip_path: str,
    skipped: list[dict],
) -> None:
    written = 0
    for parts, info in plan:
        dest = os.path.normpath(os.path.join(dest_root, *parts))
        # Defence in depth: _plan_zip already refused '..' and absolute names.
        if not dest.startswith(dest_root + os.sep):
            raise DataError(f"Refusing zip {zip_path!r}: member {info.filename!r} escapes.")
        where = f"{zip_path}::{info.filename}"
        try:
            if info.is_dir():
                os.makedirs(dest, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            member_written = 0
            # "xb": a second member with the same name must not overwrite the first.
            with zf.open(info) as src, open(dest, "xb") as out:
                while chunk := src.read(_CHUNK):
                    member_written += len(chunk)
                    written += len(chunk)
                    # Count real bytes too: a lying header must not get past the limits.
                    if written > MAX_ZIP_UNCOMPRESSED_BYTES or member_written > info.file_size:
                        raise DataError(
                            f"Refusing zip {zip_path!r}: member {info.filename!r} expands "
                            "beyond its declared size or the "
                            f"{_gib(MAX_ZIP_UNCOMPRESSED_BYTES)} limit (zip bomb?)."
                        )
                    out.write(chunk)
        except FileExistsError:
            skipped.append({"path": where, "reason": "duplicate name inside the zip"})
        except (NotADirectoryError, IsADirectoryError):
            skipped.append({"path": where, "reason": "clashes with another member's path"})
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            _remove_quietly(dest)
            skipped.append({"path": where, "reason": f"corrupt inside the zip ({exc})"})
        except NotImplementedError as exc:  # e.g. an unsupported compression method
            _remove_quietly(dest)
            skipped.append({"path": where, "reason": f"cannot be extracted ({exc})"})
        except OSError as exc:
            if exc.errno not in (errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL):
                raise DataError(f"Could not extract {zip_path!r}: {exc}") from exc
            _remove_quietly(dest)
            skipped.append({"path": where, "reason": f"name unusable here ({exc.strerror})"})


def _remove_quietly(path: str) -> None:
    try:
        if os.path.isfile(path):
            os.remove(path)
    except OSError:
        pass


def _discard(target: Path, parent: Path) -> None:
    """Move an incomplete extraction out of the way, then delete it."""
    trash = tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=parent)
    with contextlib.suppress(FileNotFoundError):  # another process already removed it
        os.replace(target, os.path.join(trash, "old"))
    shutil.rmtree(trash, ignore_errors=True)


def extract_zip(zip_path: str | os.PathLike[str]) -> Path:
    """Extract ``zip_path`` safely into ``data_cache_dir()/zips/<sha256[:16]>`` (reused if done).

    Refuses absolute or ``..`` member names, zip bombs (declared or actual size, compression
    ratio) and more than MAX_ZIP_MEMBERS entries with a ``DataError``; symlink and encrypted
    members, members deeper than MAX_ZIP_DEPTH levels and members named like the extraction
    marker are skipped, not extracted.
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(zip_path)))
    try:
        digest = _sha256_prefix(path)
    except OSError as exc:
        raise DataError(f"Cannot read zip {path!r}: {exc.strerror or exc}.") from exc
    parent = data_cache_dir() / "zips"
    parent.mkdir(parents=True, exist_ok=True)
    target = parent / digest
    if _read_zip_marker(target) is not None:
        return target
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path!r} is not a readable zip file ({exc}).") from exc
    with zf:
        plan, skipped = _plan_zip(zf.infolist(), path)
        if target.exists():
            _discard(target, parent)
        tmp = tempfile.mkdtemp(prefix=f".{digest}.tmp-", dir=parent)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result should be an ordinary folder
        try:
            _extract_members(zf, plan, os.path.realpath(tmp), path, skipped)
            marker = {"version": _ZIP_MARKER_VERSION, "zip": path, "skipped": skipped}
            # Written last: its presence means the extraction finished.
            Path(tmp, ZIP_MARKER_NAME).write_text(json.dumps(marker), encoding="utf-8")
            try:
                os.rename(tmp, target)
            except OSError:
                if _read_zip_marker(target) is None:  # not a finished concurrent extraction
                    raise
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- folder scan


def _silently_ignored(name: str) -> bool:
    """Bookkeeping of operating systems and tools (``.DS_Store``, ``.git``, ``._x`` forks...)."""
    return name in _IGNORED_NAMES or name in _SILENT_HIDDEN_NAMES or name.startswith("._")


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


def _entries(
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


def _is_image_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _has_class_dirs(folder: str, root_real: str) -> bool:
    return bool(_entries(folder, root_real, None)[0])


@dataclass
class _Layout:
    train_dir: str
    val_dir: str | None = None  # set when the data brings its own validation split

    @property
    def split(self) -> str:
        return f"given:{os.path.basename(self.val_dir)}" if self.val_dir else "random"


def _find_layout(root: str, root_real: str) -> _Layout:
    """Find the class level, descending through up to MAX_WRAPPER_DEPTH wrapper folders."""
    folder = root
    for depth in range(MAX_WRAPPER_DEPTH + 1):
        dirs, files = _entries(folder, root_real, None)
        by_name = {os.path.basename(d).lower(): d for d in dirs}
        if "train" in by_name:
            for name in _VAL_DIR_NAMES:
                # A test/ folder of unlabelled images (no class subfolders) is no validation set.
                if name in by_name and _has_class_dirs(by_name[name], root_real):
                    return _Layout(by_name["train"], by_name[name])
            return _Layout(by_name["train"])
        if len(dirs) == 1 and depth < MAX_WRAPPER_DEPTH and not any(map(_is_image_name, files)):
            sub_dirs, sub_files = _entries(dirs[0], root_real, None)
            # One sub-folder holding folders and no images is a wrapper, not a lone class.
            if sub_dirs and not any(map(_is_image_name, sub_files)):
                folder = dirs[0]
                continue
        return _Layout(folder)
    return _Layout(folder)


def _class_folders(folder: str, root_real: str, skipped: list[dict]) -> dict[str, str]:
    dirs, files = _entries(folder, root_real, skipped)
    for path in files:
        if _is_image_name(path):
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
        dirs, files = _entries(folder, root_real, skipped)
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


def _check_all(paths: list[str]) -> list[str | None]:
    # Verdicts of unchanged files come from the scan cache; the rest are decoded in parallel.
    from core.scan_cache import check_all

    return check_all(paths, check_image)


def _reason_summary(items: list[dict]) -> str:
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
    groups: dict[str, list[int]] = {}
    reals: list[str] = []
    folder_reals: dict[str, str] = {}  # realpath is slow: resolve each folder once
    for i, (_, path) in enumerate(candidates):
        folder, base = os.path.split(path)
        if folder not in folder_reals:
            folder_reals[folder] = os.path.realpath(folder)
        real = folder_reals[folder] + os.sep + base
        if os.path.islink(real):
            real = os.path.realpath(real)
        reals.append(real)
        groups.setdefault(real, []).append(i)
    keep: set[int] = set()
    for real, members in groups.items():
        if real in claimed:
            continue
        direct = [i for i in members if _direct(candidates[i][1], root, root_real, real)]
        chosen = (direct or members)[0]
        claimed[real] = candidates[chosen][1]
        keep.add(chosen)
    kept: list[tuple[str, str]] = []
    for i, (name, path) in enumerate(candidates):
        if i in keep:
            kept.append((name, path))
        else:
            reason = f"same file as {claimed[reals[i]]} (symlink), counted once"
            skipped_by_class[name].append({"path": path, "reason": reason})
    return kept


def _direct(path: str, root: str, root_real: str, real: str) -> bool:
    """Whether ``path`` reaches its file without going through a symlink below the root."""
    prefix = root.rstrip(os.sep) + os.sep
    return path.startswith(prefix) and root_real.rstrip(os.sep) + path[len(prefix) - 1 :] == real


def _usable_files(
    class_dirs: dict[str, str],
    root: str,
    root_real: str,
    skipped: list[dict],
    claimed: dict[str, str],
) -> tuple[dict[str, list[str]], dict[str, list[dict]]]:
    """Usable image paths and skipped entries per class (``claimed``: see _drop_duplicates)."""
    usable: dict[str, list[str]] = {}
    skipped_by_class: dict[str, list[dict]] = {}
    candidates: list[tuple[str, str]] = []
    for name, folder in class_dirs.items():
        own: list[dict] = []
        for path in _class_files(folder, root_real, own):
            if _is_image_name(path):
                candidates.append((name, path))
            else:
                own.append({"path": path, "reason": _non_image_reason(path)})
        usable[name] = []
        skipped_by_class[name] = own
    candidates = _drop_duplicates(candidates, root, root_real, claimed, skipped_by_class)
    reasons = _check_all([path for _, path in candidates])
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


def _split_ok(labels: np.ndarray, val_idx: np.ndarray) -> bool:
    total = np.bincount(labels)
    in_val = np.bincount(labels[val_idx], minlength=len(total))
    big = total >= 2
    return bool(np.all(in_val[big] >= 1) and np.all(in_val[big] <= total[big] - 1))


def _stratified_split(labels: list[int], val_split: float, seed: int) -> tuple[list, list]:
    """Split indices into (train, val): sklearn's stratified split, or per class for tiny classes.

    Either way each class with at least 2 images keeps at least one in each split.
    """
    y = np.asarray(labels, dtype=np.int64)
    idx = np.arange(len(y))
    try:
        from sklearn.model_selection import train_test_split

        train_idx, val_idx = train_test_split(
            idx, test_size=val_split, stratify=y, random_state=seed
        )
        if _split_ok(y, np.asarray(val_idx)):
            return sorted(train_idx.tolist()), sorted(val_idx.tolist())
    except ValueError:  # a class with one image, or fewer val slots than classes
        pass
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for label in np.unique(y):
        members = rng.permutation(idx[y == label])
        n = len(members)
        n_val = 0 if n < 2 else min(max(round(n * val_split), 1), n - 1)
        val.extend(members[:n_val].tolist())
        train.extend(members[n_val:].tolist())
    return sorted(train), sorted(val)


# --------------------------------------------------------------------------- load


def _validate_split_args(val_split: float, seed: int) -> None:
    if isinstance(val_split, bool) or not isinstance(val_split, (int, float)):
        raise ConfigError(f"val_split must be a number in (0, 0.9], got {val_split!r}.")
    if not 0 < val_split <= 0.9:
        raise ConfigError(
            f"val_split must be in (0, 0.9], got {val_split}; e.g. 0.2 keeps 20% for validation."
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an integer, got {seed!r}.")


def _no_classes_error(folder: str, root_real: str) -> DataError:
    _, files = _entries(folder, root_real, None)
    images = [f for f in files if _is_image_name(f)]
    if images:
        return DataError(
            f"Found {len(images)} images directly in {folder} but no class subfolders; put the "
            f"images of each class in their own subfolder, e.g. {folder}/cats and {folder}/dogs."
        )
    return DataError(
        f"No images found in {folder}: expected one subfolder per class, e.g. {folder}/cats and "
        f"{folder}/dogs."
    )


def load_dataset(source: str, val_split: float = 0.2, seed: int = 42) -> DatasetIndex:
    """Resolve ``source``, check every image and split it into train and validation files.

    Data shipped with its own ``val``/``validation``/``test`` folder keeps that split
    (``split="given:<dir>"``); otherwise a seeded stratified split of ``val_split`` is made.
    """
    _validate_split_args(val_split, seed)
    root_path = resolve_source(source)
    root = str(root_path)
    root_real = os.path.realpath(root)
    skipped: list[dict] = []
    if parse_source(source)[0] == "zip":  # members refused at extraction are skipped files too
        skipped.extend((_read_zip_marker(root_path) or {}).get("skipped", []))

    layout = _find_layout(root, root_real)
    train_dirs = _class_folders(layout.train_dir, root_real, skipped)
    if not train_dirs:
        raise _no_classes_error(layout.train_dir, root_real)
    if len(train_dirs) == 1:
        (only,) = train_dirs
        folder = layout.train_dir
        raise DataError(
            f"Found 1 class {only!r} in {folder}; need at least 2 class subfolders, "
            f"e.g. {folder}/cats and {folder}/dogs."
        )
    val_dirs: dict[str, str] = {}
    if layout.val_dir:
        val_dirs = _class_folders(layout.val_dir, root_real, skipped)
        extra = sorted(set(val_dirs) - set(train_dirs))
        if extra:
            raise DataError(
                f"Class folder(s) {', '.join(map(repr, extra))} in {layout.val_dir} have no "
                f"counterpart in {layout.train_dir}; the validation classes must be the training "
                f"classes ({', '.join(sorted(train_dirs))})."
            )

    class_names = sorted(train_dirs)
    claimed: dict[str, str] = {}  # real path -> the one path it is used under
    train_files, train_skips = _usable_files(train_dirs, root, root_real, skipped, claimed)
    val_files, _ = _usable_files(val_dirs, root, root_real, skipped, claimed)
    usable_total = sum(map(len, train_files.values())) + sum(map(len, val_files.values()))
    if usable_total == 0:
        detail = f" ({len(skipped)} files skipped: {_reason_summary(skipped)})" if skipped else ""
        raise DataError(f"No usable images found in {root}{detail}.")
    for name in class_names:
        if not train_files[name]:
            own = train_skips[name]
            why = f"{len(own)} files skipped: {_reason_summary(own)}" if own else "it is empty"
            raise DataError(
                f"Class folder {name!r} ({train_dirs[name]}) has no usable image: {why}."
            )

    label_of = {name: i for i, name in enumerate(class_names)}
    paths = [p for name in class_names for p in train_files[name]]
    labels = [label_of[name] for name in class_names for _ in train_files[name]]
    if layout.val_dir:
        train_paths, train_labels = paths, labels
        val_paths = [p for name in class_names for p in val_files.get(name, [])]
        val_labels = [label_of[name] for name in class_names for _ in val_files.get(name, [])]
    else:
        train_idx, val_idx = _stratified_split(labels, float(val_split), int(seed))
        train_paths = [paths[i] for i in train_idx]
        train_labels = [labels[i] for i in train_idx]
        val_paths = [paths[i] for i in val_idx]
        val_labels = [labels[i] for i in val_idx]

    return DatasetIndex(
        source=source,
        root=root,
        class_names=class_names,
        train_paths=train_paths,
        train_labels=train_labels,
        val_paths=val_paths,
        val_labels=val_labels,
        skipped_files=skipped,
        split=layout.split,
    )
