"""Constants shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

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
