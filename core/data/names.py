"""Names a person recognises for a data source (what the pages and tables show).

A run's config keeps the exact source (``/home/me/.transfer_studio/data/uploads/upload-5b46….zip``);
people know it as ``photos.zip``, ``pets`` or ``cat-and-dog``. ``display_name`` turns one into the
other from the text alone (plus, for uploads, a few bytes of sidecar written by ``save_upload``):
no scanning, never an exception, so any table may call it per row.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata

__all__ = [
    "MAX_NAME",
    "SIDECAR_SUFFIX",
    "UPLOADS_FOLDER",
    "UPLOAD_PREFIX",
    "display_name",
    "upload_sidecar",
    "uploaded_name",
    "bidi_controls",
    "describe_character",
    "escape_unprintable",
]

UPLOAD_PREFIX = "upload-"  # save_upload's hash-named files: upload-<hash>.zip
UPLOADS_FOLDER = "uploads"
SIDECAR_SUFFIX = ".json"  # upload-<hash>.zip.json: {"original_name": "photos.zip", ...}
MAX_NAME = 60

_KAGGLE_PREFIXES = ("kaggle:", "https://www.kaggle.com/datasets/", "https://kaggle.com/datasets/")
_KAGGLE_VERSION = re.compile(r"^(?P<handle>.+?)/versions/(?P<version>[0-9]+)$")


# Bidirectional-text controls: invisible, they make a name display differently from what it is
# (after U+202E, "photo" + "gpj.exe" reads "photoexe.jpg"): names never hold them, and names
# stored before that rule are shown escaped.
BIDI_CONTROLS = {
    "\u061c": "ARABIC LETTER MARK",
    "\u200e": "LEFT-TO-RIGHT MARK",
    "\u200f": "RIGHT-TO-LEFT MARK",
    "\u202a": "LEFT-TO-RIGHT EMBEDDING",
    "\u202b": "RIGHT-TO-LEFT EMBEDDING",
    "\u202c": "POP DIRECTIONAL FORMATTING",
    "\u202d": "LEFT-TO-RIGHT OVERRIDE",
    "\u202e": "RIGHT-TO-LEFT OVERRIDE",
    "\u2066": "LEFT-TO-RIGHT ISOLATE",
    "\u2067": "RIGHT-TO-LEFT ISOLATE",
    "\u2068": "FIRST STRONG ISOLATE",
    "\u2069": "POP DIRECTIONAL ISOLATE",
}
# Shown as \uXXXX: controls, line/paragraph separators, lone surrogates and the bidi controls.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs"})


def bidi_controls(text: str) -> list[str]:
    """The bidirectional-text control characters in ``text`` (in order, repeats kept)."""
    return [ch for ch in text if ch in BIDI_CONTROLS]


def describe_character(ch: str) -> str:
    """``U+202E (RIGHT-TO-LEFT OVERRIDE)``: a character a person cannot see, named."""
    name = BIDI_CONTROLS.get(ch) or unicodedata.name(ch, "control character")
    return f"U+{ord(ch):04X} ({name})"


def escape_unprintable(text: str) -> str:
    """``text`` with invisible controls shown as ``\\u202e`` escapes (printable text unchanged),
    so a stored name is shown as what it is, on one line."""
    if all(ch.isprintable() for ch in text):
        return text
    return "".join(
        f"\\u{ord(ch):04x}"
        if ch in BIDI_CONTROLS or unicodedata.category(ch) in _ESCAPED_CATEGORIES
        else ch
        for ch in text
    )


def upload_sidecar(path: str | os.PathLike[str]) -> str:
    """Where ``save_upload`` records the name the user gave an upload stored at ``path``."""
    return os.fspath(path) + SIDECAR_SUFFIX


def uploaded_name(path: str | os.PathLike[str]) -> str | None:
    """The file name the user gave the upload stored at ``path`` (None when not recorded)."""
    try:
        with open(upload_sidecar(path), encoding="utf-8") as fh:
            name = json.load(fh).get("original_name")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(name, str) or not name.strip():
        return None
    return _short(os.path.basename(name.strip().replace("\\", "/")))


def _short(text: str) -> str:
    return text if len(text) <= MAX_NAME else text[: MAX_NAME - 1] + "…"


def _kaggle_name(handle: str) -> str:
    handle = handle.strip().strip("/")
    version = None
    match = _KAGGLE_VERSION.match(handle)
    if match:
        handle, version = match.group("handle"), match.group("version")
    slug = handle.rsplit("/", 1)[-1] or handle
    return _short(slug + (f" v{version}" if version else ""))


def display_name(source: object, escape: bool = True) -> str:
    """The name a person recognises for the data source ``source`` (never raises).

    ``builtin:photos`` → ``photos``; a folder ``/x/y/pets/`` → ``pets``; ``/x/cats.zip`` →
    ``cats.zip``; an upload stored by ``save_upload`` → the file name the user dropped;
    ``kaggle:owner/slug/versions/3`` → ``slug v3``; anything else → its last path part.
    Invisible control characters are shown escaped (``\\u202e``) unless ``escape`` is False.
    """
    shown = _display_name(source)
    return escape_unprintable(shown) if escape else shown


def _display_name(source: object) -> str:
    try:
        if not isinstance(source, str) or not source.strip():
            return "no data"
        text = source.strip()
        lower = text.lower()
        for prefix in ("builtin:", "dataset:"):  # a managed dataset is known by its name
            if lower.startswith(prefix):
                return _short(text[len(prefix) :].strip() or text)
        for prefix in _KAGGLE_PREFIXES:
            if lower.startswith(prefix):
                return _kaggle_name(text[len(prefix) :])
        trimmed = text.replace("\\", "/").rstrip("/")
        base = trimmed.rsplit("/", 1)[-1]
        if not base:  # "/" itself
            return text
        parent = trimmed.rsplit("/", 2)[-2] if trimmed.count("/") >= 1 else ""
        if parent == UPLOADS_FOLDER and base.startswith(UPLOAD_PREFIX):
            given = uploaded_name(os.path.expanduser(trimmed))
            if given:
                return given
            digest, _, ext = base[len(UPLOAD_PREFIX) :].partition(".")
            return f"upload {digest[:8]}" + (f".{ext}" if ext else "")
        return _short(base)
    except Exception:  # a name for display must never break a page
        return str(source)[-MAX_NAME:]
