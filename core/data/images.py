"""Checking and decoding image files (PIL + numpy only).

``check_image`` answers "can this file be used?" with a short human reason, so that a dataset scan
can list skipped files instead of crashing mid-training. ``load_rgb`` turns any supported file into
one uint8 HxWx3 RGB array, whatever its mode (palette, alpha, CMYK, 16-bit, 1-bit...). ``to_array``
does the same for whatever a caller holds: a path, bytes, a stream, a PIL image or an array.

Safety: only the formats matching ``IMAGE_EXTENSIONS`` are ever opened (so a renamed EPS cannot
start Ghostscript), file size and pixel count are capped before decoding, and truncated files are
detected by fully loading them (``ImageFile.LOAD_TRUNCATED_IMAGES`` is deliberately left alone).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Executor
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_FILE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MIN_IMAGE_SIDE",
    "RESAMPLE",
    "AnyImage",
    "ImageSource",
    "NotRegularFileError",
    "check_image",
    "decoded_batches",
    "file_kind",
    "load_rgb",
    "open_regular_file",
    "to_array",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
MAX_IMAGE_PIXELS: int = 40_000_000  # stricter than PIL's own 89 MP warning threshold
MAX_FILE_BYTES: int = 50 * 1024 * 1024
MIN_IMAGE_SIDE: int = 8

_MB = 1024 * 1024
# PIL plugin ids for the extensions above (multi-picture JPEGs come through the JPEG one).
_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
_EXIF_ORIENTATION = 0x0112
_PIXELS_IN_PIL_MESSAGE = re.compile(r"Image size \((\d+) pixels\)")
# A path, or a seekable binary stream such as io.BytesIO or a Streamlit upload.
ImageSource = str | os.PathLike[str] | BinaryIO
# Anything ``to_array`` takes: an image file (path, stream, bytes), a PIL image or pixels.
AnyImage = ImageSource | bytes | Image.Image | np.ndarray
RESAMPLE = Image.Resampling.BILINEAR  # how every image is brought to a model's input size


class _Unusable(Exception):
    """Internal: carries the short skip reason from the shared checks."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _bomb_reason(pixels: int) -> str:
    return f"decompression bomb ({pixels / 1e6:.0f} megapixels)"


def _byte_size(source: ImageSource) -> int:
    if hasattr(source, "read"):  # an in-memory upload; PIL reads it from offset 0 anyway
        end = source.seek(0, os.SEEK_END)  # type: ignore[union-attr]
        source.seek(0)  # type: ignore[union-attr]
        return end
    try:
        st = os.stat(source)  # type: ignore[arg-type]
    except OSError as exc:
        raise _Unusable(f"unreadable ({exc.strerror or exc})") from exc
    if not os.path.isfile(source):  # type: ignore[arg-type]
        raise _Unusable("not a regular file")
    return st.st_size


def _check_file_size(source: ImageSource) -> None:
    size = _byte_size(source)
    if size == 0:
        raise _Unusable("empty file")
    if size > MAX_FILE_BYTES:
        raise _Unusable(f"too large ({size / _MB:.3g} MB > {MAX_FILE_BYTES / _MB:.3g} MB)")


def _open(fp: object) -> Image.Image:
    """Open the header only and refuse oversized images before any pixel is decoded."""
    try:
        im = Image.open(fp, formats=_FORMATS)  # type: ignore[arg-type]
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL refuses > 2x its own limit at open time (and only warns above 1x, unless warnings
        # are turned into errors): report either like our own, stricter, check.
        match = _PIXELS_IN_PIL_MESSAGE.search(str(exc))
        pixels = int(match.group(1)) if match else 0
        raise _Unusable(_bomb_reason(pixels) if pixels else "decompression bomb") from exc
    except UnidentifiedImageError as exc:
        raise _Unusable("not an image") from exc
    except Exception as exc:  # a broken header can raise anything from a plugin
        raise _Unusable("truncated or corrupt") from exc
    width, height = im.size
    if width * height > MAX_IMAGE_PIXELS:
        im.close()
        raise _Unusable(_bomb_reason(width * height))
    if min(width, height) < MIN_IMAGE_SIDE:
        im.close()
        raise _Unusable(f"too small ({width}x{height} px)")
    return im


def _load_pixels(im: Image.Image) -> None:
    """Decode the first frame completely so truncation shows up now rather than in training."""
    try:
        im.seek(0)
        im.load()
    except Image.DecompressionBombError as exc:  # e.g. a GIF frame larger than its canvas
        raise _Unusable("decompression bomb") from exc
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError...
        raise _Unusable("truncated or corrupt") from exc


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # broken EXIF must not make a good image unusable
        return im
    if orientation in (None, 1):
        return im
    try:
        return ImageOps.exif_transpose(im) or im
    except Exception:  # same: keep the unrotated pixels
        return im


def _on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _scale_to_uint8(arr: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """Map integer/float pixels to 0..255 by scaling (clipping would turn 16-bit images white)."""
    is_float = arr.dtype.kind == "f"
    arr = arr.astype(np.float64)
    if sixteen_bit:
        out = arr / 257.0
    else:
        lo, hi = float(arr.min()), float(arr.max())
        if is_float and lo >= 0 and hi <= 1.0:
            out = arr * 255.0
        elif lo >= 0 and hi <= 255:
            out = arr
        elif lo >= 0 and hi <= 65535:
            out = arr / 257.0
        else:  # arbitrary range (32-bit or float data): stretch to full scale
            out = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _scale_to_uint8(np.asarray(im), sixteen_bit=mode.startswith("I;16"))
        return Image.fromarray(gray).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info):
        return _on_white(im)
    # 1, L, P, CMYK, YCbCr, RGBX, LAB, HSV: PIL knows the conversion (1-bit gives 0/255).
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise _Unusable(f"unsupported image mode {mode}") from exc


class NotRegularFileError(OSError):
    """The path exists but is a FIFO, folder, socket or device rather than a regular file."""

    def __init__(self, path: str | os.PathLike[str], kind: str) -> None:
        super().__init__(f"{os.fspath(path)!r} is not a regular file ({kind})")
        self.kind = kind


def open_regular_file(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file, without ever blocking.

    ``open`` on a FIFO blocks until a writer appears, and the file may have been swapped for one
    since it was last looked at: open non-blocking, then check what was actually opened.
    Raises ``OSError`` (e.g. ``FileNotFoundError``) if it cannot be opened and
    ``NotRegularFileError`` if it is not a regular file.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path, file_kind(mode))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # no effect on regular files; keeps reads ordinary
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_kind(mode: int) -> str:
    """A short human name for the file type in ``st_mode`` (``"FIFO"``, ``"folder"``...)."""
    for test, name in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISLNK, "symlink"),
    ):
        if test(mode):
            return name
    return "special file"


def _decode(source: ImageSource, size: int | None, fast: bool) -> np.ndarray:
    _check_file_size(source)
    opened: contextlib.AbstractContextManager[BinaryIO]
    if hasattr(source, "read"):
        opened = contextlib.nullcontext(source)  # type: ignore[arg-type]  # the caller closes it
    else:
        try:
            opened = open_regular_file(source)  # type: ignore[arg-type]
        except NotRegularFileError as exc:  # replaced since _check_file_size looked at it
            raise _Unusable("not a regular file") from exc
    with opened as fp:
        im = _open(fp)
        with im:
            if fast:
                # JPEG only: decode at a reduced DCT scale; still reads the whole stream, so
                # truncation is still caught, at a fraction of the cost.
                im.draft(im.mode, (MIN_IMAGE_SIDE * 4, MIN_IMAGE_SIDE * 4))
            _load_pixels(im)
            rgb = _to_rgb(_apply_exif_orientation(im))
            if size is not None:
                rgb = rgb.resize((size, size), RESAMPLE)
            return np.array(rgb, dtype=np.uint8)


def _describe(source: ImageSource) -> str:
    if hasattr(source, "read"):
        return repr(getattr(source, "name", None) or "uploaded image")
    return repr(os.fspath(source))  # type: ignore[arg-type]


def check_image(path: ImageSource) -> str | None:
    """None if ``path`` (or a binary stream) is a usable image, else a short reason to skip it."""
    try:
        _decode(path, None, fast=True)
    except _Unusable as exc:
        return exc.reason
    except OSError as exc:  # the file vanished or is unreadable between stat and open
        return f"unreadable ({exc.strerror or exc})"
    except MemoryError:
        return "too large to decode"
    return None


def load_rgb(path: ImageSource, size: int | None = None) -> np.ndarray:
    """Decode ``path`` (or a binary stream) to uint8 HxWx3 RGB, optionally resized to size x size.

    Alpha is composited on white, EXIF orientation is applied and only the first frame of an
    animation is used. Raises ``DataError`` naming the file and the reason if it is unusable.
    """
    if size is not None and (not isinstance(size, int) or size < 1):
        raise DataError(f"Image size must be a positive integer, got {size!r}.")
    try:
        return _decode(path, size, fast=False)
    except _Unusable as exc:
        raise DataError(f"Cannot use image {_describe(path)}: {exc.reason}.") from exc
    except OSError as exc:
        raise DataError(f"Cannot read image {_describe(path)}: {exc.strerror or exc}.") from exc


def _pixels_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 from HxW gray, HxWx1, HxWx3 or HxWx4 pixels (alpha dropped, clipped to 0-255)."""
    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise DataError(f"Expected an HxWx3 RGB image, got an array of shape {arr.shape}.")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr.copy()  # never a view of the caller's array
    return np.clip(arr, 0, 255).astype(np.uint8)


def to_array(
    image: AnyImage, size: int | None = None, dtype: type | np.dtype = np.uint8
) -> np.ndarray:
    """One image as an HxWx3 RGB array of raw 0-255 values, resized to size x size if given.

    ``image`` may be a path or binary stream (decoded and checked by ``load_rgb``), the bytes of
    a file, a PIL image (any mode; oriented and converted like a decoded file) or an array of
    pixels (gray, RGB or RGBA; alpha is dropped and values are clipped to 0-255). Resizing is
    bilinear, as for training images. ``dtype`` is the returned array's type (e.g.
    ``np.float32`` for a model).
    Raises ``DataError`` for an unusable image.
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DataError(f"Image size must be a positive integer, got {size!r}.")
    if isinstance(image, bytes):
        image = io.BytesIO(image)
    if isinstance(image, np.ndarray):
        rgb = _pixels_to_rgb(image)
        if size is not None and rgb.shape[:2] != (size, size):
            rgb = np.array(Image.fromarray(rgb).resize((size, size), RESAMPLE))
    elif isinstance(image, Image.Image):
        try:
            converted = _to_rgb(_apply_exif_orientation(image))
        except _Unusable as exc:
            raise DataError(f"Cannot use image: {exc.reason}.") from exc
        except OSError as exc:  # a lazily loaded image whose pixels turn out truncated
            raise DataError(f"Cannot use image: truncated or corrupt ({exc}).") from exc
        if size is not None and converted.size != (size, size):
            converted = converted.resize((size, size), RESAMPLE)
        rgb = np.array(converted)
    else:
        rgb = load_rgb(image, size)
    return rgb.astype(dtype, copy=False)


def decoded_batches(
    sources: Sequence[Any],
    size: int,
    batch: int,
    pool: Executor,
    load: Callable[[Any, int], np.ndarray] | None = None,
) -> Generator[np.ndarray, None, None]:
    """``sources`` decoded and resized to ``size`` (``load``, default ``load_rgb``), as uint8
    ``(n, size, size, 3)`` batches of ``batch`` in order; the next batch decodes on ``pool``
    while the caller works on this one. PIL decodes outside the GIL, so a model run between
    batches (a LiteRT interpreter) and the decoding overlap on a CPU. Closing the iterator
    early cancels the decoding not yet started."""
    loader = load or load_rgb
    chunks = [sources[i : i + batch] for i in range(0, len(sources), max(batch, 1))]

    def submit(index: int) -> list[Any]:
        if index >= len(chunks):
            return []
        return [pool.submit(loader, source, size) for source in chunks[index]]

    ahead = submit(0)
    try:
        for index in range(len(chunks)):
            current, ahead = ahead, submit(index + 1)
            yield np.stack([future.result() for future in current])
    finally:
        for future in ahead:
            future.cancel()
