"""ImageNet-1k class names, offline.

``keras.applications.imagenet_utils.decode_predictions`` downloads its class index on first use,
so the studio ships its own copy: ``core/data_files/imagenet_classes.json``.

Provenance: generated from the torchvision 0.29.2 wheel on PyPI (BSD-3-Clause),
``torchvision/models/_meta.py``, list ``_IMAGENET_CATEGORIES`` (read with ``ast.literal_eval``, not
imported and not hand-typed): 1000 short, unique names in the standard ILSVRC-2012 index order,
e.g. 281 "tabby", 285 "Egyptian cat", 967 "espresso", 968 "cup".
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from core.errors import StudioError

__all__ = [
    "LABELS_FILE",
    "NUM_CLASSES",
    "imagenet_labels",
]

LABELS_FILE = Path(__file__).resolve().parent / "data_files" / "imagenet_classes.json"
NUM_CLASSES = 1000


@lru_cache(maxsize=1)
def _labels() -> tuple[str, ...]:
    try:
        doc = json.loads(LABELS_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StudioError(f"Cannot read the ImageNet class names {LABELS_FILE}: {exc}") from exc
    labels = doc.get("labels") if isinstance(doc, dict) else None
    if not isinstance(labels, list) or len(labels) != NUM_CLASSES:
        raise StudioError(f"{LABELS_FILE} must hold {NUM_CLASSES} labels; reinstall the studio.")
    return tuple(str(label) for label in labels)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, index-aligned with the classifiers' outputs."""
    return list(_labels())
