"""Built-in datasets that work offline: generated once from pictures shipped with scikit-image.

Each dataset is written as ``data_cache_dir()/builtin/<name>/<class>/*.png`` (``*.jpg`` for
photos). Generation is deterministic (seeded RNG, PNG and JPEG have no timestamps), idempotent (a
marker file with a version says the folder is complete) and atomic (built in a temporary folder next
to the target, then renamed), so a crash or a concurrent run never leaves a half-written dataset
that would be used.
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
    "BUILTINS",
    "MARKER_NAME",
    "BuiltinDataset",
    "builtin_path",
    "guess_num_classes",
    "list_builtins",
    "photo_items",
    "unknown_builtin",
]

MARKER_NAME = ".builtin-complete.json"
_TEXTURE_CROPS_PER_CLASS = 40
_TEXTURE_SIZE = 64
_TEXTURE_SEED = 20240521
_FACES_PER_CLASS = 100  # lfw_subset: the first 100 images are faces, the last 100 are not

_PHOTOS_PER_CLASS = 30
_PHOTO_SIZE = 224  # px of the written JPEGs: the default backbone's input size
_PHOTO_SEED = 20261202

# One generated image: (class name, file name, uint8 pixels: HxW gray or HxWx3 RGB, or the bytes
# of an already encoded file, written as they are).
_Item = tuple[str, str, np.ndarray | bytes]


@dataclass(frozen=True)
class BuiltinDataset:
    """Description of one built-in dataset and how to generate it."""

    name: str
    description: str
    classes: tuple[str, ...]
    images: int
    image_size: int
    version: int  # bump when the generator changes so cached copies are rebuilt
    generate: Callable[[], Iterator[_Item]]

    def info(self) -> dict:
        """JSON-able description, as shown by ``list_builtins``."""
        return {
            "name": self.name,
            "source": f"builtin:{self.name}",
            "description": self.description,
            "classes": list(self.classes),
            "images": self.images,
            "image_size": self.image_size,
        }


def _texture_items() -> Iterator[_Item]:
    # Imported lazily: scikit-image is slow to import and only needed on first use.
    from skimage import data as skdata

    for class_index, name in enumerate(("brick", "grass", "gravel")):
        photo = np.asarray(getattr(skdata, name)(), dtype=np.uint8)  # 512x512 grayscale
        # One generator per class, so adding a class never changes the crops of another.
        rng = np.random.default_rng([_TEXTURE_SEED, class_index])
        height, width = photo.shape[:2]
        for i in range(_TEXTURE_CROPS_PER_CLASS):
            top = int(rng.integers(0, height - _TEXTURE_SIZE + 1))
            left = int(rng.integers(0, width - _TEXTURE_SIZE + 1))
            crop = photo[top : top + _TEXTURE_SIZE, left : left + _TEXTURE_SIZE]
            rgb = np.repeat(crop[:, :, None], 3, axis=2)
            yield name, f"{name}_{i:03d}.png", rgb


def _face_items() -> Iterator[_Item]:
    from skimage import data as skdata

    faces = np.asarray(skdata.lfw_subset(), dtype=np.float64)  # (200, 25, 25) in [0, 1]
    pixels = np.clip(np.rint(faces * 255.0), 0, 255).astype(np.uint8)
    for i, image in enumerate(pixels):
        label = "face" if i < _FACES_PER_CLASS else "not_face"
        yield label, f"{label}_{i % _FACES_PER_CLASS:03d}.png", image


# class -> [(scikit-image photo, where its subject is: (left, top, right, bottom) as fractions)].
# A view is centred inside the subject's box, so every picture shows (part of) its class.
_PHOTO_SOURCES: dict[str, tuple[tuple[str, tuple[float, float, float, float]], ...]] = {
    "cat": (("chelsea", (0.15, 0.2, 0.7, 0.8)),),
    "coffee": (("coffee", (0.2, 0.2, 0.7, 0.75)),),
    "motorcycle": (
        ("motorcycle_left", (0.3, 0.35, 0.8, 0.75)),
        ("motorcycle_right", (0.3, 0.35, 0.8, 0.75)),
    ),
    "rocket": (("rocket", (0.45, 0.4, 0.58, 0.85)),),
}


def _skimage_photo(name: str) -> np.ndarray:
    from skimage import data as skdata

    if name.startswith("motorcycle_"):  # the two views of scikit-image's stereo pair
        left, right, _ = skdata.stereo_motorcycle()
        return np.asarray(left if name == "motorcycle_left" else right, dtype=np.uint8)
    return np.asarray(getattr(skdata, name)(), dtype=np.uint8)


def _photo_view(
    photo: Image.Image, box: tuple[float, float, float, float], rng: np.random.Generator
) -> bytes:
    """One random view of ``photo`` as JPEG bytes: crop (scale, position, aspect), rotation,
    flip, lighting and colour jitter, JPEG quality."""
    width, height = photo.size
    angle = math.radians(float(rng.uniform(-15.0, 15.0)))
    cos, sin = math.cos(angle), math.sin(angle)
    aspect = float(np.exp(rng.uniform(-0.2, 0.2)))  # slightly stretched or squeezed
    # Bounding box of the rotated crop, per unit of crop height (its width is height * aspect).
    extent_x, extent_y = aspect * abs(cos) + abs(sin), aspect * abs(sin) + abs(cos)
    largest = min((width - 2) / extent_x, (height - 2) / extent_y)  # a pixel from the edges
    side = float(rng.uniform(0.45, 1.0)) * largest  # crop height
    half_x, half_y = side * extent_x / 2, side * extent_y / 2
    # The centre lies inside the subject's box, and the whole rotated crop inside the photo.
    left, top, right, bottom = box
    cx = float(rng.uniform(left, right)) * width
    cy = float(rng.uniform(top, bottom)) * height
    cx = min(max(cx, half_x), width - half_x)
    cy = min(max(cy, half_y), height - half_y)
    # Affine map from output pixels to photo pixels (PIL's transform takes the inverse map).
    flip = -1.0 if rng.random() < 0.5 else 1.0
    sx, sy = side * aspect / _PHOTO_SIZE * flip, side / _PHOTO_SIZE
    a, b, d, e = sx * cos, -sy * sin, sx * sin, sy * cos
    c0 = _PHOTO_SIZE / 2  # PIL samples at pixel centres: output (0.5, 0.5) is the first
    coeffs = (a, b, cx - a * c0 - b * c0, d, e, cy - d * c0 - e * c0)
    view = photo.transform(
        (_PHOTO_SIZE, _PHOTO_SIZE), Image.Transform.AFFINE, coeffs, Image.Resampling.BICUBIC
    )
    pixels = np.asarray(view, dtype=np.float32)
    gray = pixels.mean(axis=2, keepdims=True)
    pixels = gray + (pixels - gray) * rng.uniform(0.6, 1.3)  # saturation
    mean = float(pixels.mean())
    pixels = mean + (pixels - mean) * rng.uniform(0.75, 1.25)  # contrast
    pixels = pixels * rng.uniform(0.7, 1.25) * rng.uniform(0.9, 1.1, size=3)  # light, colour cast
    out = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    out.save(buffer, format="JPEG", quality=int(rng.integers(60, 96)))
    return buffer.getvalue()


def photo_items(per_class: int = _PHOTOS_PER_CLASS, seed: int = _PHOTO_SEED) -> Iterator[_Item]:
    """``builtin:photos``'s pictures: ``(class, file name, JPEG bytes)``; the benchmark draws a
    larger set of the same kind with other counts and seeds."""
    for class_index, (name, sources) in enumerate(_PHOTO_SOURCES.items()):
        photos = [(Image.fromarray(_skimage_photo(photo), "RGB"), box) for photo, box in sources]
        # One generator per class, so adding a class never changes the views of another.
        rng = np.random.default_rng([seed, class_index])
        for i in range(per_class):
            photo, box = photos[i % len(photos)]
            yield name, f"{name}_{i:03d}.jpg", _photo_view(photo, box, rng)


BUILTINS: dict[str, BuiltinDataset] = {
    "faces": BuiltinDataset(
        name="faces",
        description=(
            "100 face and 100 non-face 25x25 grayscale crops from Labeled Faces in the Wild "
            "(scikit-image's lfw_subset)."
        ),
        classes=("face", "not_face"),
        images=2 * _FACES_PER_CLASS,
        image_size=25,
        version=1,
        generate=_face_items,
    ),
    "photos": BuiltinDataset(
        name="photos",
        description=(
            f"{_PHOTOS_PER_CLASS} colour {_PHOTO_SIZE}x{_PHOTO_SIZE} pictures per class, varied "
            "views (crops, flips, small rotations, lighting, colour, JPEG quality) of photos that "
            "ship with scikit-image: Chelsea the cat, a cup of coffee, a motorcycle (stereo pair) "
            "and a rocket on its launch pad."
        ),
        classes=tuple(_PHOTO_SOURCES),
        images=len(_PHOTO_SOURCES) * _PHOTOS_PER_CLASS,
        image_size=_PHOTO_SIZE,
        version=1,
        generate=photo_items,
    ),
    "textures": BuiltinDataset(
        name="textures",
        description=(
            f"{_TEXTURE_CROPS_PER_CLASS} random {_TEXTURE_SIZE}x{_TEXTURE_SIZE} crops per class "
            "of scikit-image's brick, grass and gravel photos."
        ),
        classes=("brick", "grass", "gravel"),
        images=3 * _TEXTURE_CROPS_PER_CLASS,
        image_size=_TEXTURE_SIZE,
        version=1,
        generate=_texture_items,
    ),
}


def list_builtins() -> list[dict]:
    """Descriptions of the built-in datasets, sorted by name."""
    return [BUILTINS[name].info() for name in sorted(BUILTINS)]


def unknown_builtin(name: str) -> DataError:
    """The error for a built-in dataset name that does not exist (it lists those that do)."""
    available = ", ".join(sorted(BUILTINS))
    return DataError(
        f"Unknown built-in dataset {name!r}. Available: {available} "
        f"(e.g. builtin:{sorted(BUILTINS)[0]}).",
        settings=("data",),
    )


def _identity(spec: BuiltinDataset) -> dict[str, object]:
    """What a complete folder's marker says besides its version."""
    return {"name": spec.name, "images": spec.images}


def _write(spec: BuiltinDataset, folder: Path) -> None:
    count = 0
    for label, filename, pixels in spec.generate():
        class_dir = folder / label
        class_dir.mkdir(exist_ok=True)
        if isinstance(pixels, bytes):
            (class_dir / filename).write_bytes(pixels)
        else:
            Image.fromarray(pixels).save(class_dir / filename, format="PNG")
        count += 1
    if count != spec.images:  # guards the description against drifting from the generator
        raise DataError(
            f"Built-in dataset {spec.name!r} generated {count} images, expected {spec.images}."
        )


def builtin_path(name: str) -> Path:
    """Folder of the built-in dataset ``name`` (``<class>/<images>``), generated on first use."""
    spec = BUILTINS.get(name.strip().lower()) if isinstance(name, str) else None
    if spec is None:
        raise unknown_builtin(str(name))
    parent = data_cache_dir() / "builtin"

    def generate(folder: Path) -> None:
        try:
            _write(spec, folder)
        except DataError:
            raise
        except Exception as exc:  # e.g. scikit-image data missing or disk full
            raise DataError(
                f"Could not generate built-in dataset {spec.name!r} in {parent}: {exc}"
            ) from exc

    return build_folder(parent / spec.name, generate, MARKER_NAME, spec.version, _identity(spec))


def guess_num_classes(source: str, known: dict[str, int] | None = None) -> int:
    """Number of classes of a source if cheaply known (built-ins, loaded ones), else 2."""
    if known and source in known:
        return max(int(known[source]), 2)
    if source.lower().startswith("builtin:"):
        spec = BUILTINS.get(source.split(":", 1)[1].strip().lower())
        if spec is not None:
            return len(spec.classes)
    return 2
