"""Weights carried in by hand: checked, recorded and found again, so runs work offline.

Two kinds of file are imported:

* **Keras' own ImageNet files**, recognised by name (the registry's headless files and the
  classifier files ``classify`` uses). Where ``keras.applications`` pins a hash for the file, the
  file must match it; the pin is read from Keras' own code (its constructor is run with the
  download function swapped for one that records the request), never copied here. Where Keras
  pins none, the file is load-checked into its architecture and recorded as unverified. Either way
  it is placed where Keras looks (``$KERAS_HOME/models``), so ``weights="imagenet"`` then works
  offline.
* **Any other Keras weights file** (``.weights.h5``, a legacy ``.h5``, a ``.keras`` model) for a
  registry backbone: compared layer by layer with that architecture (the first mismatch named),
  load-checked, copied into ``<studio home>/weights/imported/`` and recorded under a name. Its
  SHA-256 is its weights identity, so the embedding cache never mixes it up with other weights.

The record is ``<studio home>/weights/imported/index.json``.
"""

from __future__ import annotations

import functools
import io
import re
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import BackboneError, ConfigError, StudioError
from core.files import sha256_file
from core.models.backbones import (
    SOURCE_BUNDLED,
    SOURCE_KERAS,
    BackboneSpec,
    get_backbone,
    keras_models_dir,
    list_backbones,
)
from core.models.imported_weights import (
    KIND_CUSTOM,
    KIND_IMAGENET,
    WEIGHT_SUFFIXES,
    ImportedWeights,
    copy_into,
    keep_file,
    list_imported,
    record,
)

__all__ = [
    "KerasPin",
    "available_weights",
    "check_loads",
    "file_layers",
    "first_mismatch",
    "import_upload",
    "import_weights",
    "keras_pin",
    "keras_request",
    "keras_top_files",
    "recognise_keras_file",
    "verify_pin",
    "wanted_file",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
_LOCK = threading.Lock()


@dataclass(frozen=True)
class KerasPin:
    """What ``keras.applications`` asks ``get_file`` for when it needs a weights file."""

    file_name: str
    url: str
    file_hash: str | None  # None: Keras checks nothing


class _Requested(Exception):
    """Raised by the stand-in ``get_file`` to stop the constructor once it asked for a file."""

    def __init__(self, pin: KerasPin) -> None:
        super().__init__(pin.file_name)
        self.pin = pin


# --- Keras' own files ----------------------------------------------------------------------------


def keras_top_files() -> dict[str, str]:
    """Backbone -> the with-top ImageNet file ``classify`` needs."""
    from core.models.classify import KERAS_TOP_FILES

    return dict(KERAS_TOP_FILES)


def recognise_keras_file(file_name: str) -> tuple[BackboneSpec, bool] | None:
    """``(backbone, include_top)`` if ``file_name`` is a file keras.applications downloads."""
    tops = keras_top_files()
    for spec in list_backbones():
        if file_name in spec.imagenet_files:
            return spec, False
        if tops.get(spec.name) == file_name:
            return spec, True
    return None


@contextmanager
def _recording_get_file() -> Iterator[None]:
    """Swap Keras' download function for one that records the request and stops."""
    from keras.src.utils import file_utils

    def record(fname: str, origin: str | None = None, **kwargs: Any) -> str:
        raise _Requested(KerasPin(str(fname), str(origin or ""), kwargs.get("file_hash")))

    original = file_utils.get_file
    file_utils.get_file = record
    try:
        yield
    finally:
        file_utils.get_file = original


def keras_request(spec: BackboneSpec, image_size: int, include_top: bool = False) -> KerasPin:
    """The file ``spec``'s Keras constructor downloads for ``weights="imagenet"`` at that size."""
    with _LOCK, _recording_get_file():
        try:
            spec.constructor(
                include_top=include_top,
                weights="imagenet",
                input_shape=(image_size, image_size, 3),
            )
        except _Requested as asked:
            return asked.pin
    raise StudioError(f"{spec.name} downloads no weights file from Keras.")


@functools.lru_cache(maxsize=64)
def wanted_file(backbone: str, image_size: int | None = None) -> KerasPin | None:
    """The headless ImageNet file a Keras backbone needs (``None`` for the others).

    What a run that failed offline needs imported; cached (it builds the model once).
    """
    spec = get_backbone(backbone)
    if spec.imagenet_source != SOURCE_KERAS:
        return None
    return keras_request(spec, image_size or spec.default_size)


def keras_pin(spec: BackboneSpec, file_name: str, include_top: bool) -> KerasPin:
    """The URL and hash keras.applications uses for ``file_name``, read from its code."""
    sizes = [spec.default_size] + [
        int(n) for n in re.findall(r"\d+", file_name) if spec.min_size <= int(n) <= 1024
    ]
    seen: list[str] = []
    for size in dict.fromkeys(sizes):
        try:
            pin = keras_request(spec, size, include_top)
        except ValueError:
            continue  # a size this constructor refuses with its top
        if pin.file_name == file_name:
            return pin
        seen.append(pin.file_name)
    raise StudioError(
        f"{file_name} looks like a Keras {spec.display_name} file, but this Keras version "
        f"asks for {', '.join(dict.fromkeys(seen)) or 'other files'}. Import the file Keras "
        "asks for."
    )


def import_upload(
    file_name: str, data: bytes, backbone: str | None = None, name: str | None = None
) -> ImportedWeights:
    """``import_weights`` for an uploaded file: its own name kept (Keras' files go by name)."""
    if not file_name or Path(file_name).name != file_name:
        raise ConfigError(f"Uploaded file name {file_name!r} is invalid. Expected a file name.")
    with tempfile.TemporaryDirectory(prefix="weights-upload-") as tmp:
        path = Path(tmp) / file_name
        path.write_bytes(data)
        return import_weights(path, backbone=backbone, name=name)


def _hash_algorithm(file_hash: str) -> str:
    return "sha256" if len(file_hash) == 64 else "md5"  # keras' own rule (resolve_hasher)


def verify_pin(path: Path, pin: KerasPin, spec: BackboneSpec) -> None:
    """Refuse a file whose bytes are not the ones Keras pins."""
    from keras.src.utils import file_utils

    assert pin.file_hash is not None
    algorithm = _hash_algorithm(pin.file_hash)
    if not file_utils.validate_file(str(path), pin.file_hash, algorithm=algorithm):
        actual = file_utils.hash_file(str(path), algorithm=algorithm)
        raise StudioError(
            f"{path.name} is not the genuine Keras {spec.display_name} ImageNet file: its "
            f"{algorithm.upper()} is {actual}, Keras pins {pin.file_hash}. Download it again "
            f"from {pin.url}."
        )


# --- checking a file against an architecture -----------------------------------------------------


def _h5_layers(h5: Any) -> tuple[bool, list[tuple[str, list[tuple[int, ...]]]]]:
    """``(by_key, [(layer, [weight shapes])])`` of an open HDF5 weights file, empty layers out.

    Keras 3 files (``layers/<key>/vars/<i>``) load by key (``_keras3_keys``); legacy files
    (``layer_names`` attributes, maybe under ``model_weights``) by the order of weighted layers.
    """

    def text(value: Any) -> str:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    group = h5["model_weights"] if "model_weights" in h5 else h5
    if "layer_names" in group.attrs:
        rows = []
        for layer in (text(n) for n in group.attrs["layer_names"]):
            names = [text(w) for w in group[layer].attrs.get("weight_names", [])]
            if names:
                rows.append((layer, [tuple(group[layer][w].shape) for w in names]))
        return False, rows
    if "layers" in h5:
        rows = []
        for layer, sub in h5["layers"].items():
            variables = sub.get("vars")
            if variables is not None and len(variables):
                keys = sorted(variables, key=int)
                rows.append((layer, [tuple(variables[k].shape) for k in keys]))
        return True, rows
    raise BackboneError("it holds no Keras weights (no 'layers' or 'layer_names' in the file)")


def file_layers(path: Path) -> tuple[bool, list[tuple[str, list[tuple[int, ...]]]]]:
    """The weighted layers of a Keras weights file (``.keras`` archives included)."""
    import h5py

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = archive.read("model.weights.h5")
            with h5py.File(io.BytesIO(data), "r") as h5:
                return _h5_layers(h5)
        with h5py.File(path, "r") as h5:
            return _h5_layers(h5)
    except BackboneError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise BackboneError(f"it is not a readable Keras weights file ({exc})") from exc


def _keras3_keys(model: Any) -> list[str]:
    """The group each of ``model.layers`` has in a Keras 3 weights file.

    Keras 3 addresses layers not by name but by class and position (``conv2d``, ``conv2d_1``,
    ...: ``saving_lib._save_container_state``), so two builds of one architecture match.
    """
    from keras.src.utils.naming import to_snake_case

    used: dict[str, int] = {}
    keys = []
    for layer in model.layers:
        base = to_snake_case(layer.__class__.__name__)
        used[base] = used.get(base, -1) + 1
        keys.append(base if used[base] == 0 else f"{base}_{used[base]}")
    return keys


def first_mismatch(model: Any, path: Path) -> str | None:
    """The first difference between ``model``'s weighted layers and the file's, in words."""
    by_key, rows = file_layers(path)
    if by_key:
        theirs = dict(rows)
        known: set[str] = set()
        for key, layer in zip(_keras3_keys(model), model.layers, strict=True):
            known.add(key)
            shapes = [tuple(w.shape) for w in layer.weights]
            if not shapes:
                continue
            if key not in theirs:
                return f"the file has no weights for layer '{layer.name}' ({key})"
            if theirs[key] != shapes:
                return (
                    f"layer '{layer.name}' ({key}) has shapes {theirs[key]} in the file, "
                    f"{shapes} in the model"
                )
        extra = [key for key, _ in rows if key not in known]
        return f"the file's layer '{extra[0]}' is not in the model" if extra else None
    ours = [
        (lay.name, [tuple(w.shape) for w in lay.weights]) for lay in model.layers if lay.weights
    ]
    for i, ((mine, shapes), (file_name, file_shapes)) in enumerate(zip(ours, rows, strict=False)):
        if shapes != file_shapes:
            return (
                f"weighted layer {i + 1} is '{file_name}' with shapes {file_shapes} in the file, "
                f"'{mine}' with shapes {shapes} in the model"
            )
    if len(ours) != len(rows):
        return f"the file has {len(rows)} weighted layers, the model {len(ours)}"
    return None


def check_loads(spec: BackboneSpec, path: Path, include_top: bool = False) -> None:
    """Build ``spec``'s architecture and load ``path`` into it; name the first mismatch if not."""
    size = spec.default_size
    model = spec.constructor(include_top=include_top, weights=None, input_shape=(size, size, 3))
    what = f"{spec.display_name}" + (" with its ImageNet classifier" if include_top else "")
    try:
        mismatch = first_mismatch(model, path)
    except BackboneError as exc:
        raise BackboneError(f"{path.name} does not load into {what}: {exc}.") from exc
    if mismatch is not None:
        raise BackboneError(
            f"{path.name} does not load into {what}: {mismatch}. Choose the backbone the file "
            "was saved from."
        )
    try:
        model.load_weights(str(path))
    except Exception as exc:  # keras raises ValueError, KeyError, OSError...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackboneError(f"{path.name} does not load into {what}: {first}") from exc


# --- importing -----------------------------------------------------------------------------------


def _default_name(path: Path) -> str:
    name = path.name
    for suffix in WEIGHT_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "weights"
    return name[:80]


def import_weights(
    file: str | Path, backbone: str | None = None, name: str | None = None
) -> ImportedWeights:
    """Check ``file`` and make it available offline (see the module docstring)."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"Weights file {str(file)!r} not found. Expected the path of a .h5, .weights.h5 or "
            ".keras file."
        )
    keras_file = recognise_keras_file(path.name)
    if keras_file is not None:
        spec, include_top = keras_file
        if backbone is not None and get_backbone(backbone).name != spec.name:
            raise ConfigError(
                f"{path.name} is Keras' ImageNet file for {spec.name}, not for {backbone}. "
                f"Choose the backbone {spec.name}, or leave it unset.",
                settings=("backbone",),
            )
        return _import_keras_file(path, spec, include_top)
    if backbone is None:
        raise ConfigError(
            f"{path.name} is not one of the files Keras downloads, so the studio cannot tell "
            "which backbone it belongs to. Choose the backbone it was saved from.",
            settings=("backbone",),
        )
    spec = get_backbone(backbone)
    label = name or _default_name(path)
    if not _NAME_RE.match(label) or label in ("imagenet", "none"):
        raise ConfigError(
            f"Weights name {label!r} is invalid. Expected letters, digits, '_', '-' or '.' "
            "(up to 80, not 'imagenet' or 'none').",
            settings=("name",),
        )
    check_loads(spec, path)
    return keep_file(
        path,
        spec.name,
        label,
        source=str(path.resolve()),
        note=f"loads into {spec.display_name} (every layer's name and shape checked)",
    )


def _import_keras_file(path: Path, spec: BackboneSpec, include_top: bool) -> ImportedWeights:
    pin = keras_pin(spec, path.name, include_top)
    if pin.file_hash:
        verify_pin(path, pin, spec)
        verified = True
        note = f"matches the {_hash_algorithm(pin.file_hash).upper()} Keras pins"
    else:
        check_loads(spec, path, include_top)
        verified = False
        note = "Keras pins no hash for this file: load-checked only, unverified"
    target = keras_models_dir() / path.name
    if not (target.is_file() and target.samefile(path)):
        copy_into(path, target)
    return record(
        ImportedWeights(
            name=path.name,
            backbone=spec.name,
            kind=KIND_IMAGENET,
            verified=verified,
            sha256=sha256_file(target),
            path=str(target),
            source=str(path.resolve()),
            imported_at=time.time(),
            note=note,
        )
    )


# --- what is here --------------------------------------------------------------------------------


def available_weights() -> list[dict[str, Any]]:
    """Every weights file usable offline: bundled, in Keras' cache, imported; and its origin."""
    from core.models import efficientnet_lite

    imported = list_imported()
    by_path = {i.path: i for i in imported}
    rows: list[dict[str, Any]] = []
    tops = keras_top_files()
    for spec in list_backbones():
        if spec.imagenet_source == SOURCE_BUNDLED:
            variant = efficientnet_lite.get_variant(spec.name)
            if efficientnet_lite.is_available(spec.name):
                rows.append(
                    {
                        "name": "imagenet",
                        "backbone": spec.name,
                        "kind": KIND_IMAGENET,
                        "origin": f"bundled ({variant.pth_requirement})",
                        "verified": True,
                        "path": str(
                            efficientnet_lite.pth_source_path(spec.name)
                            or efficientnet_lite.cached_weights_path(spec.name)
                        ),
                    }
                )
            continue
        files = [*spec.imagenet_files, *([tops[spec.name]] if spec.name in tops else [])]
        for file_name in files:
            path = keras_models_dir() / file_name
            if not path.is_file():
                continue
            item = by_path.get(str(path))
            origin = "Keras cache (downloaded)"
            if item is not None:
                origin = f"imported from {item.source}" + ("" if item.verified else " (unverified)")
            rows.append(
                {
                    "name": file_name,
                    "backbone": spec.name,
                    "kind": KIND_IMAGENET,
                    "origin": origin,
                    "verified": bool(item.verified) if item is not None else True,
                    "path": str(path),
                }
            )
    for item in imported:
        if item.kind == KIND_CUSTOM:
            rows.append(
                {
                    "name": item.name,
                    "backbone": item.backbone,
                    "kind": item.kind,
                    "origin": f"imported from {item.source}",
                    "verified": False,
                    "path": item.path,
                    "sha256": item.sha256,
                }
            )
    return rows
