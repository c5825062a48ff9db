"""Pre-flight config lint: every rule fires on its risky config, safe configs stay quiet."""

from __future__ import annotations

import pytest

from core.config import RunConfig
from core.lint import count_train_images, lint_config

FINE = RunConfig(mode="fine_tuning", lr=1e-3, fine_tune_lr=1e-5, fine_tune_epochs=3)


def codes(findings: list[dict], level: str | None = None) -> set[str]:
    return {f["code"] for f in findings if level is None or f["level"] == level}


@pytest.mark.parametrize(
    ("config", "train_images"),
    [
        (RunConfig(augment=False), None),
        (RunConfig(augment=False), 200),
        (FINE, 500),
        (RunConfig(mode="full_fine_tuning"), 50_000),
        (RunConfig.from_dict({"augment": True, "feature_cache": "off"}), 300),
        (RunConfig(backbone="mobilenet_v2", image_size=224, augment=False), None),
        (RunConfig(mode="scratch", weights="none"), 20_000),
    ],
)
def test_safe_configs_have_no_findings(config, train_images):
    assert lint_config(config.validate(), train_images) == []


def test_fine_tune_lr_above_1e4():
    found = lint_config(FINE.with_changes(fine_tune_lr=1e-3, lr=1e-2))
    assert codes(found) == {"fine_tune_lr_high"}
    assert lint_config(FINE.with_changes(fine_tune_lr=1e-4)) == []  # the limit itself is fine


def test_no_fine_tuning_phase():
    for mode in ("fine_tuning", "full_fine_tuning"):
        found = lint_config(RunConfig(mode=mode, fine_tune_epochs=0), 50_000)
        assert codes(found, "warning") == {"no_fine_tune_phase"}
        assert "feature extraction" in found[0]["message"]


def test_head_lr_not_above_fine_tune_lr():
    found = lint_config(FINE.with_changes(lr=1e-5, fine_tune_lr=1e-5))
    assert codes(found) == {"head_lr_not_above_fine_tune_lr"}
    # Without a fine-tuning phase the comparison is moot.
    assert codes(lint_config(FINE.with_changes(lr=1e-5, fine_tune_epochs=0))) == {
        "no_fine_tune_phase"
    }


def test_image_size_below_backbone_default():
    found = lint_config(RunConfig(backbone="efficientnet_lite0", image_size=128))
    assert codes(found, "warning") == {"image_size_below_default"}
    assert "224" in found[0]["message"]
    # Random weights learned nothing at 224 px: just a note.
    scratch = lint_config(RunConfig(mode="scratch", weights="none", image_size=64))
    assert codes(scratch, "info") == {"image_size_below_default"}
    assert codes(scratch, "warning") == set()


def test_full_fine_tuning_on_small_data():
    config = RunConfig(mode="full_fine_tuning")
    assert codes(lint_config(config, 400)) == {"full_fine_tuning_small_data"}
    assert lint_config(config, None) == []  # unknown size: no guess
    assert lint_config(config, 1000) == []


def test_augmentation_no_longer_costs_feature_extraction_its_cache():
    # Augmented views are cached: the default (augmentation on) has nothing to warn about.
    assert lint_config(RunConfig(augment=True)) == []
    assert lint_config(RunConfig(augment=True, mode="fine_tuning")) == []


def test_scratch_with_few_images():
    config = RunConfig(mode="scratch", weights="none")
    assert codes(lint_config(config, 300)) == {"scratch_few_images"}
    assert lint_config(config, None) == []


def test_frozen_random_base():
    found = lint_config(RunConfig(weights="none", augment=False))
    assert codes(found) == {"transfer_without_pretrained_weights"}


def test_findings_are_well_formed_and_warnings_come_first():
    risky = RunConfig(
        mode="full_fine_tuning",
        backbone="mobilenet_v2",
        image_size=96,
        lr=1e-5,
        fine_tune_lr=1e-3,
        weights="none",
        augment=True,
    )
    found = lint_config(risky.validate(), 100)
    assert codes(found) == {
        "fine_tune_lr_high",
        "head_lr_not_above_fine_tune_lr",
        "image_size_below_default",
        "transfer_without_pretrained_weights",
        "full_fine_tuning_small_data",
    }
    levels = [f["level"] for f in found]
    assert levels == sorted(levels, key=lambda level: level != "warning")
    for f in found:
        assert set(f) == {"level", "code", "message"}
        assert f["level"] in ("warning", "info")
        assert len(f["message"]) > 40 and ("Use" in f["message"] or "use" in f["message"])


def test_core_messages_name_settings_in_the_users_words_not_cli_flags():
    risky = [
        (FINE.with_changes(fine_tune_epochs=0), None),
        (FINE.with_changes(fine_tune_lr=1e-3, lr=1e-5), None),
        (RunConfig(backbone="efficientnet_lite0", image_size=128), None),
        (RunConfig(weights="none", augment=True), None),
        (RunConfig(mode="full_fine_tuning"), 10),
        (RunConfig(mode="scratch", weights="none"), 10),
    ]
    found = [f for config, n in risky for f in lint_config(config, n)]
    assert {f["code"] for f in found} == {
        "no_fine_tune_phase", "fine_tune_lr_high", "head_lr_not_above_fine_tune_lr",
        "image_size_below_default", "transfer_without_pretrained_weights",
        "full_fine_tuning_small_data", "scratch_few_images",
    }  # fmt: skip
    for f in found:
        assert "--" not in f["message"], f
        # No config keys either: "fine-tune learning rate", not fine_tune_lr=...; modes in words.
        assert "=" not in f["message"] and "_" not in f["message"], f


def test_the_training_image_count_is_known_cheaply_for_builtins_and_folders(tmp_path):
    from tests.helpers import write_pngs

    assert count_train_images(RunConfig(data="builtin:faces", val_split=0.2)) == 160
    assert count_train_images(RunConfig(data="kaggle:someone/something")) is None
    for name in ("red", "blue"):
        write_pngs(tmp_path / name, 5)
    folder = RunConfig(data=str(tmp_path), val_split=0.2)
    assert count_train_images(folder, scan=False) is None
    assert count_train_images(folder) == 8
    assert count_train_images(RunConfig(data=str(tmp_path / "missing"))) is None
    # With the count, the dataset-size checks fire.
    found = lint_config(RunConfig(mode="scratch", weights="none", data=str(tmp_path)), 8)
    assert codes(found) == {"scratch_few_images"}


@pytest.mark.slow
def test_the_cli_prints_the_dataset_size_warning_for_a_tiny_folder(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.helpers import write_pngs

    for name in ("red", "blue"):
        write_pngs(tmp_path / "data" / name, 4, side=32)
    done = subprocess.run(
        [sys.executable, "-m", "core", "train", "--data", str(tmp_path / "data"),
         "--backbone", "vgg16", "--mode", "scratch", "--image-size", "32",
         "--epochs", "1", "--batch-size", "4", "--runs-dir", str(tmp_path / "runs")],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    warning = next(line for line in lines if line.startswith("warning: Training from scratch"))
    assert "on 6 images" in warning
    assert "[--mode, --weights]" in warning, "the CLI adds the flags behind the settings"
