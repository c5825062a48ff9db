"""Where a data source points: built-ins, folders, zips and Kaggle handles."""

from __future__ import annotations

import os
import re
from pathlib import Path

from core.data.archives import extract_zip
from core.data.builtin import BUILTINS, builtin_path
from core.errors import DataError

_KAGGLE_HANDLE = re.compile(
    r"^(?P<owner>[A-Za-z0-9][A-Za-z0-9_-]*)/(?P<slug>[A-Za-z0-9][A-Za-z0-9_-]*)"
    r"(?:/versions/(?P<version>[0-9]+))?$"
)
_KAGGLE_URL_PREFIXES = ("https://www.kaggle.com/datasets/", "https://kaggle.com/datasets/")


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


def check_source(source: str) -> None:
    """Fail fast on a source that cannot work, without reading, extracting or downloading it.

    A missing folder or zip, a file where a folder is expected, an unknown built-in or a
    malformed Kaggle handle raise the same ``DataError`` that ``resolve_source`` would raise
    later, so a command can refuse it before it loads TensorFlow.
    """
    from core.data.builtin import BUILTINS, _unknown

    kind, value = parse_source(source)
    if kind == "builtin":
        if value.lower() not in BUILTINS:
            raise _unknown(value)
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
    except Exception as exc:  # kagglehub raises many unrelated types
        raise _kaggle_error(owner, slug, version, exc) from exc
    if not os.path.isdir(path):
        raise DataError(f"kagglehub returned {path!r} for '{handle}', which is not a folder.")
    return Path(path)


# --------------------------------------------------------------------------- zip
