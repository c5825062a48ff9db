"""RunConfig: defaults, JSON round trip, validation messages."""

from __future__ import annotations

import json

import pytest

from core.config import MODES, RunConfig
from core.errors import BackboneError, ConfigError


def test_defaults_are_the_offline_run() -> None:
    config = RunConfig().validate()
    assert config.backbone == "efficientnet_lite0"
    assert config.weights == "imagenet"
    assert config.data.startswith("builtin:")
    assert config.resolved_image_size() == 224


def test_json_round_trip_keeps_every_field_and_unknown_keys() -> None:
    config = RunConfig(
        backbone="mobilenet_v2",
        weights="none",
        mode="fine_tuning",
        image_size=64,
        unfreeze=12,
        augment=True,
        augmentations=("flip", "zoom"),
        extra={"future_option": "x"},
    )
    text = config.to_json()
    data = json.loads(text)
    assert data["augmentations"] == ["flip", "zoom"]
    assert data["future_option"] == "x"  # forward-compatible keys survive
    assert RunConfig.from_json(text) == config


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"mode": "transfer"}, "Unknown mode 'transfer'. Available: feature_extraction"),
        ({"epochs": 0}, "epochs=0 is invalid. Expected an integer in [1, 1000] (--epochs)"),
        ({"lr": 0.0}, "lr=0.0 is invalid"),
        ({"val_split": 1.5}, "val_split=1.5 is out of range"),
        ({"augmentations": ("flip", "blur")}, "Unknown augmentation(s) 'blur'"),
        ({"batch_size": True}, "batch_size=True is invalid"),
    ],
)
def test_invalid_values_say_what_and_how(changes: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig(**changes).validate()
    assert expected in str(info.value)


def test_unknown_backbone_lists_the_available_ones() -> None:
    with pytest.raises(BackboneError, match=r"Unknown backbone 'vgg61'\. Available: .*vgg16"):
        RunConfig(backbone="vgg61").validate()


def test_image_size_below_the_backbone_minimum_is_refused() -> None:
    with pytest.raises(BackboneError, match="below inception_v3's minimum of 75 px"):
        RunConfig(backbone="inception_v3", image_size=64).validate()


def test_phases_per_mode() -> None:
    assert [RunConfig(mode=m).phases for m in MODES] == [
        ["head"],
        ["head", "fine_tune"],
        ["head", "fine_tune"],
        ["scratch"],
    ]
    assert RunConfig(mode="fine_tuning", epochs=2, fine_tune_epochs=3).planned_epochs == 5
    assert RunConfig(mode="feature_extraction", epochs=2).planned_epochs == 2


def test_from_dict_rejects_non_objects_and_bad_json() -> None:
    with pytest.raises(ConfigError, match="must be a JSON object"):
        RunConfig.from_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not valid JSON"):
        RunConfig.from_json("{nope")
