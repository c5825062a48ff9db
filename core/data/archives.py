"""Safe zip extraction into the studio's cache: caps, a completion marker, no escapes."""

from __future__ import annotations

import errno
import os
import re
import stat
import zipfile
import zlib
from pathlib import Path

from core.errors import DataError
from core.files import build_folder, read_marker, sha256_file
from core.paths import data_cache_dir

__all__ = [
    "IGNORED_NAMES",
    "MAX_ZIP_COMPRESSION_RATIO",
    "MAX_ZIP_DEPTH",
    "MAX_ZIP_MEMBERS",
    "MAX_ZIP_UNCOMPRESSED_BYTES",
    "ZIP_MARKER_NAME",
    "ZIP_RATIO_MIN_BYTES",
    "extract_zip",
    "read_zip_marker",
    "extraction_folder",
]

MAX_ZIP_UNCOMPRESSED_BYTES = 2 * 1024**3  # total, declared and actually written
MAX_ZIP_COMPRESSION_RATIO = 200  # per member, only for members above the next size
ZIP_RATIO_MIN_BYTES = 10 * 1024**2
MAX_ZIP_MEMBERS = 50_000  # entries in one zip (a folder of images per class rarely has more)
MAX_ZIP_DEPTH = 64  # folder levels of one zip member's path
ZIP_MARKER_NAME = ".extracted-complete.json"
IGNORED_NAMES = frozenset({"__MACOSX"})  # folders archivers add, never data
_ZIP_MARKER_VERSION = 1
_CHUNK = 1024 * 1024


def read_zip_marker(folder: Path) -> dict | None:
    """The extraction marker of ``folder`` (``version``, ``zip``, ``skipped``) if it is finished."""
    return read_marker(folder, ZIP_MARKER_NAME, _ZIP_MARKER_VERSION)


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
        if not parts or parts[0] in IGNORED_NAMES:  # macOS resource forks are never data
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


def extraction_folder(zip_path: str | os.PathLike[str]) -> tuple[Path, bool]:
    """Where ``extract_zip`` puts ``zip_path``'s files, and whether a finished copy is there."""
    path = os.path.abspath(os.path.expanduser(os.fspath(zip_path)))
    try:
        digest = sha256_file(path)[:16]
    except OSError as exc:
        raise DataError(f"Cannot read zip {path!r}: {exc.strerror or exc}.") from exc
    target = data_cache_dir() / "zips" / digest
    return target, read_zip_marker(target) is not None


def extract_zip(zip_path: str | os.PathLike[str]) -> Path:
    """Extract ``zip_path`` safely into ``data_cache_dir()/zips/<sha256[:16]>`` (reused if done).

    Refuses absolute or ``..`` member names, zip bombs (declared or actual size, compression
    ratio) and more than MAX_ZIP_MEMBERS entries with a ``DataError``; symlink and encrypted
    members, members deeper than MAX_ZIP_DEPTH levels and members named like the extraction
    marker are skipped, not extracted.
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(zip_path)))
    target, finished = extraction_folder(path)
    if finished:
        return target
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path!r} is not a readable zip file ({exc}).") from exc
    with zf:
        plan, skipped = _plan_zip(zf.infolist(), path)  # refuses before anything is written

        def extract(tmp: Path) -> dict:
            _extract_members(zf, plan, os.path.realpath(tmp), path, skipped)
            return {"zip": path, "skipped": skipped}

        build_folder(target, extract, ZIP_MARKER_NAME, _ZIP_MARKER_VERSION)
    return target


# --------------------------------------------------------------------------- folder scan
