"""RunConfig: defaults, JSON round trip, validation messages."""

from __future__ import annotations

import json

import pytest

from core.config import MODES, Mode, Phase, RunConfig, Status
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
        ({"epochs": 0}, "Epochs 0 is invalid. Expected a whole number from 1 to 1000."),
        ({"lr": 0.0}, "Learning rate 0.0 is invalid"),
        ({"val_split": 1.5}, "Validation split 1.5 is out of range"),
        ({"augmentations": ("flip", "blur")}, "Unknown augmentation(s) 'blur'"),
        ({"batch_size": True}, "Batch size True is invalid"),
    ],
)
def test_invalid_values_say_what_and_how(changes: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig(**changes).validate()
    assert expected in str(info.value)
    assert set(info.value.settings) == set(changes)  # the setting the fix is about


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


def test_modes_phases_and_statuses_are_string_enums() -> None:
    assert MODES == ("feature_extraction", "fine_tuning", "full_fine_tuning", "scratch")
    assert all(type(m) is str for m in MODES)  # plain strings for argparse's choices
    assert [p.value for p in Phase] == ["head", "fine_tune", "scratch"]
    assert [s.value for s in Status] == [
        "queued", "running", "completed", "stopped", "failed", "interrupted",
    ]  # fmt: skip
    assert Status.COMPLETED == "completed" and f"{Phase.FINE_TUNE}" == "fine_tune"
    assert json.dumps({"status": Status.FAILED, "phase": Phase.HEAD}) == (
        '{"status": "failed", "phase": "head"}'
    )


def test_an_old_config_json_loads_with_its_mode_as_an_enum_and_writes_plain_strings() -> None:
    old = '{"backbone": "mobilenet_v2", "mode": "fine_tuning", "weights": "none"}'
    config = RunConfig.from_json(old)
    assert config.mode is Mode.FINE_TUNING and config.mode == "fine_tuning"
    assert config.phases == [Phase.HEAD, Phase.FINE_TUNE] == ["head", "fine_tune"]
    assert type(config.to_dict()["mode"]) is str
    assert '"mode": "fine_tuning"' in config.to_json()
    assert (
        config.to_json()
        == RunConfig(backbone="mobilenet_v2", mode="fine_tuning", weights="none").to_json()
    )
    odd = RunConfig(mode="transfer_everything")  # kept as given, refused by validate
    assert odd.mode == "transfer_everything"
    with pytest.raises(ConfigError, match="Unknown mode 'transfer_everything'"):
        odd.validate()
