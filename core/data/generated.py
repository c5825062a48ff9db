"""Generated image-classification data of any size, offline: N classes x M small JPEGs.

For measuring the studio at the sizes users bring (200 classes x 250 images, 2 x 12,500), not
for judging a model. Each class is one photo shipped with scikit-image seen through the class's
own transform: a region of the photo, a colour cast and a stripe texture (angle and period), all
drawn once per class from a seeded generator; each image is a random crop around that region
with jittered light, written as a small JPEG (about a millisecond and a few kB per image). So
classes are learnable (a frozen backbone separates most of them) but not trivially: classes that
share a photo differ only in region, colour and texture.

Like the built-in sets (``core.data.builtin``) a folder is generated once, deterministically,
atomically (built beside its target, then renamed) and reused while its marker matches:
``data_cache_dir()/generated/<classes>x<per_class>-<size>px/<class>/<image>.jpg``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.errors import DataError
from core.files import build_folder
from core.paths import data_cache_dir

__all__ = [
    "ClassStyle",
    "DEFAULT_SIZE",
    "MARKER_NAME",
    "PHOTOS",
    "SEED",
    "VERSION",
    "ProgressFn",
    "class_names",
    "class_style",
    "generated_items",
    "generated_path",
]

MARKER_NAME = ".generated-complete.json"
VERSION = 1  # bump when the images change, so cached folders are rebuilt
SEED = 20261206
DEFAULT_SIZE = 64  # px: small files, and every backbone resizes its input anyway
# Colour and grayscale photos that ship with scikit-image (no download needed).
PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
    "retina", "colorwheel", "camera", "coins", "moon", "brick", "grass", "gravel",
)  # fmt: skip
_WORK_SIDE = 256  # photos are shrunk to this once: crops are cheap, detail is plenty for 64 px
ProgressFn = Callable[[int, int], None]  # progress(done, total)


@dataclass(frozen=True)
class ClassStyle:
    """What makes one generated class: its photo, region, colour cast and stripes."""

    photo: str
    centre: tuple[float, float]  # (x, y) of the region, as fractions of the photo
    scale: float  # crop side as a fraction of the photo's shorter side
    cast: tuple[float, float, float]  # per-channel gain
    stripe_angle: float  # radians
    stripe_period: float  # px of the output image
    stripe_strength: float  # peak added brightness (0-255 scale)


def class_names(classes: int) -> list[str]:
    """``class 000`` ... : zero-padded, so sorting by name keeps the class order."""
    width = max(3, len(str(classes - 1)))
    return [f"class {i:0{width}d}" for i in range(classes)]


def class_style(index: int, seed: int = SEED) -> ClassStyle:
    """The transform of class ``index`` (independent of how many classes there are)."""
    rng = np.random.default_rng([seed, index])
    return ClassStyle(
        photo=PHOTOS[index % len(PHOTOS)],
        centre=(float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7))),
        scale=float(rng.uniform(0.3, 0.6)),
        cast=tuple(float(g) for g in rng.uniform(0.6, 1.3, size=3)),  # type: ignore[arg-type]
        stripe_angle=float(rng.uniform(0.0, math.pi)),
        stripe_period=float(rng.uniform(4.0, 16.0)),
        stripe_strength=float(rng.uniform(15.0, 40.0)),
    )


def _photo(name: str) -> np.ndarray:
    """A scikit-image photo as RGB float32, its shorter side ``_WORK_SIDE`` px."""
    from skimage import data as skdata

    pixels = np.asarray(getattr(skdata, name)())
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    image = Image.fromarray(pixels[:, :, :3].astype(np.uint8), "RGB")
    ratio = _WORK_SIDE / min(image.size)
    size = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def _stripes(style: ClassStyle, size: int) -> np.ndarray:
    """The class's stripe texture, ``(size, size, 1)``, in -1..1 times its strength."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    along = xx * math.cos(style.stripe_angle) + yy * math.sin(style.stripe_angle)
    wave = np.sin(2 * math.pi * along / style.stripe_period)
    return (wave * style.stripe_strength)[:, :, None].astype(np.float32)


def _view(
    photo: np.ndarray, style: ClassStyle, stripes: np.ndarray, size: int, rng: np.random.Generator
) -> bytes:
    """One image of a class as JPEG bytes: a jittered crop of its region, cast, stripes, light."""
    height, width = photo.shape[:2]
    side = int(min(height, width) * style.scale * rng.uniform(0.8, 1.2))
    side = max(8, min(side, height, width))
    cx = (style.centre[0] + rng.uniform(-0.08, 0.08)) * width
    cy = (style.centre[1] + rng.uniform(-0.08, 0.08)) * height
    left = int(min(max(cx - side / 2, 0), width - side))
    top = int(min(max(cy - side / 2, 0), height - side))
    crop = Image.fromarray(photo[top : top + side, left : left + side].astype(np.uint8), "RGB")
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    pixels = pixels * np.asarray(style.cast, np.float32) + stripes
    pixels = pixels * rng.uniform(0.8, 1.2) + rng.normal(0.0, 6.0, pixels.shape)  # light, noise
    out = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def generated_items(
    classes: int, per_class: int, size: int = DEFAULT_SIZE, seed: int = SEED
) -> Iterator[tuple[str, str, bytes]]:
    """Every image as ``(class name, file name, JPEG bytes)``, class by class."""
    photos: dict[str, np.ndarray] = {}
    for index, name in enumerate(class_names(classes)):
        style = class_style(index, seed)
        if style.photo not in photos:
            photos[style.photo] = _photo(style.photo)
        stripes = _stripes(style, size)
        # One generator per class, so the images of a class do not depend on the class count.
        rng = np.random.default_rng([seed, index, 1])
        for i in range(per_class):
            yield name, f"{i:05d}.jpg", _view(photos[style.photo], style, stripes, size, rng)


def _check(classes: int, per_class: int, size: int) -> None:
    if classes < 2 or per_class < 1 or not 16 <= size <= 512:
        raise DataError(
            f"Cannot generate {classes} classes x {per_class} images of {size} px: expected at "
            "least 2 classes, at least 1 image per class and a size from 16 to 512 px."
        )


def generated_path(
    classes: int,
    per_class: int,
    size: int = DEFAULT_SIZE,
    progress: ProgressFn | None = None,
) -> Path:
    """The folder of ``classes`` x ``per_class`` generated images, generated on first use
    (``progress(done, total)`` is called while generating, never when the folder is reused)."""
    _check(classes, per_class, size)
    total = classes * per_class
    target = data_cache_dir() / "generated" / f"{classes}x{per_class}-{size}px"

    def build(folder: Path) -> dict[str, int]:
        done = 0
        for label, filename, data in generated_items(classes, per_class, size):
            class_dir = folder / label
            class_dir.mkdir(exist_ok=True)
            (class_dir / filename).write_bytes(data)
            done += 1
            if progress is not None and (done % 500 == 0 or done == total):
                progress(done, total)
        return {"images": done}

    identity = {"classes": classes, "per_class": per_class, "size": size, "seed": SEED}
    return build_folder(target, build, MARKER_NAME, VERSION, identity)
