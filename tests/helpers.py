"""Constants shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from core.config import RunConfig

# The smallest run that exercises the whole engine: random-weight MobileNetV2 at 32 px, 1 epoch.
TINY = RunConfig(
    backbone="mobilenet_v2",
    weights="none",
    data="builtin:textures",
    image_size=32,
    epochs=1,
    fine_tune_epochs=1,
    batch_size=32,
)


def write_pngs(folder: Path, n: int, side: int = 24) -> list[str]:
    """``n`` small PNGs of distinct colours in ``folder`` (created); their paths as strings."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.new("RGB", (side, side), (i * 30 % 256, 60, 90)).save(path)
        paths.append(str(path))
    return paths
