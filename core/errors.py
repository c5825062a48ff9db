"""User-facing errors.

Every message says what was received, what was expected and how to fix it, so that the CLI can print
it on one line and the pages can show it with ``st.error`` without a traceback. Messages name the
settings in words ("image size", "weights"); ``settings`` holds their RunConfig field names, so the
command line can add its flags (``--image-size``) and the dashboard never shows one.
"""

from collections.abc import Sequence

__all__ = [
    "BackboneError",
    "ConfigError",
    "DataError",
    "RunNotFoundError",
    "StorageError",
    "StudioError",
    "WeightsUnavailableError",
    "exception_chain",
    "storage_error",
]


class StudioError(Exception):
    """Base class for errors a user can act on."""

    def __init__(self, *args: object, settings: Sequence[str] = ()) -> None:
        super().__init__(*args)
        self.settings = tuple(settings)  # RunConfig fields the fix is about


class ConfigError(StudioError, ValueError):
    """A run configuration value is invalid."""


class DataError(StudioError):
    """A data source cannot be resolved or holds no usable images."""


class BackboneError(StudioError):
    """A backbone cannot be built (unknown name, input too small, weights unavailable)."""


class WeightsUnavailableError(BackboneError):
    """Pretrained weights cannot be had (typically: no network and nothing cached)."""


class RunNotFoundError(StudioError, KeyError):
    """No run with that id is in the store."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else "run not found"


class StorageError(StudioError):
    """The studio cannot write where it keeps its files (disk full, read-only, no permission)."""


# errno values that mean "the disk, not the run, is the problem".
_ENOSPC, _EDQUOT, _EROFS, _EACCES, _EPERM = 28, 122, 30, 13, 1
_FULL_TEXT = ("no space left on device", "database or disk is full", "disk quota exceeded")
_READ_ONLY_TEXT = ("read-only file system", "readonly database", "attempt to write a readonly")


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from or during (cycles cut)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _free_mb(folder: str) -> str:
    import os
    import shutil

    probe = folder
    while probe and not os.path.exists(probe):  # the folder may be what failed to appear
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        return f"{shutil.disk_usage(probe or '/').free / 1e6:.1f} MB"
    except OSError:
        return "unknown space"


def storage_error(exc: BaseException, folder: object) -> StorageError | None:
    """A one-line StorageError when ``exc`` (or what caused it) is a full or read-only disk.

    Works for OSError, h5py's and TensorFlow's wrapped I/O errors and ``sqlite3`` errors, which
    all report the condition in their text. Returns None for any other error.
    """
    where = str(folder)
    for err in exception_chain(exc):
        number = getattr(err, "errno", None)
        text = str(err).lower()
        if number in (_ENOSPC, _EDQUOT) or any(t in text for t in _FULL_TEXT):
            return StorageError(
                f"disk full: {_free_mb(where)} free in {where}. Free some space on that disk "
                "(or set TRANSFER_STUDIO_HOME to a folder on a larger one), then try again."
            )
        if "disk i/o error" in text:  # SQLite's word for a write the disk refused
            return StorageError(
                f"disk I/O error in {where} ({_free_mb(where)} free). Check that disk (is it "
                "full or failing?), then try again."
            )
        if number == _EROFS or any(t in text for t in _READ_ONLY_TEXT):
            return StorageError(
                f"read-only: cannot write in {where}. Use a writable folder for the studio's "
                "files (set TRANSFER_STUDIO_HOME, or choose another runs folder)."
            )
        if number in (_EACCES, _EPERM) and isinstance(err, OSError):
            return StorageError(
                f"permission denied: cannot write in {where}. Use a folder you may write to "
                "(set TRANSFER_STUDIO_HOME, or choose another runs folder)."
            )
    return None
