"""Built-in datasets that work offline: generated once from pictures shipped with scikit-image.

Each dataset is written as ``data_cache_dir()/builtin/<name>/<class>/*.png``. Generation is
deterministic (seeded RNG, PNG has no timestamps), idempotent (a marker file with a version says the
folder is complete) and atomic (built in a temporary folder next to the target, then renamed), so a
crash or a concurrent run never leaves a half-written dataset that would be used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.errors import DataError
from core.files import build_folder
from core.paths import data_cache_dir

MARKER_NAME = ".builtin-complete.json"
_TEXTURE_CROPS_PER_CLASS = 40
_TEXTURE_SIZE = 64
_TEXTURE_SEED = 20240521
_FACES_PER_CLASS = 100  # lfw_subset: the first 100 images are faces, the last 100 are not

# One generated image: (class name, file name, uint8 pixels: HxW gray or HxWx3 RGB).
_Item = tuple[str, str, np.ndarray]


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


def _unknown(name: str) -> DataError:
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
        Image.fromarray(pixels).save(class_dir / filename, format="PNG")
        count += 1
    if count != spec.images:  # guards the description against drifting from the generator
        raise DataError(
            f"Built-in dataset {spec.name!r} generated {count} images, expected {spec.images}."
        )


def builtin_path(name: str) -> Path:
    """Folder of the built-in dataset ``name`` (``<class>/*.png``), generated on first use."""
    spec = BUILTINS.get(name.strip().lower()) if isinstance(name, str) else None
    if spec is None:
        raise _unknown(str(name))
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
