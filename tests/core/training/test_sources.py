"""The input-path rule and the sources it picks: each path for the right config, with its reason."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from core.config import RunConfig
from core.training.model import FINE_TUNE_PHASE, HEAD_PHASE, build_model
from core.training.sources import (
    ACTIVATIONS,
    CACHED_CHECKPOINT_S,
    FEATURES,
    IMAGES,
    ActivationSource,
    FeatureSource,
    ImageSource,
    choose_source,
    input_path,
)
from tests.helpers import TINY

PLAIN = TINY.with_changes(augment=False)  # feature extraction, no augmentation, cache on


@pytest.mark.parametrize(
    ("changes", "kind", "blocker", "words"),
    [
        ({}, FEATURES, None, "runs once per image"),
        ({"augment": True}, FEATURES, None, "4 views of each training image"),
        ({"augment": True, "augment_views": 2}, FEATURES, None, "and 1 augmented copies"),
        ({"feature_cache": "off"}, IMAGES, "feature cache", "feature cache is off"),
        ({"mode": "fine_tuning"}, ACTIVATIONS, None, "activations at the freeze cut"),
        ({"mode": "fine_tuning", "augment": True}, IMAGES, "augmentation", "augmentation"),
        ({"mode": "full_fine_tuning"}, IMAGES, "mode", "full_fine_tuning trains the whole base"),
        ({"mode": "scratch", "weights": "none"}, IMAGES, "mode", "scratch trains the whole base"),
        ({"mode": "scratch", "augment": True}, IMAGES, "mode", "scratch"),
    ],
)
def test_input_path_picks_each_path_with_its_reason(
    changes: dict, kind: str, blocker: str | None, words: str
) -> None:
    path = input_path(PLAIN.with_changes(**changes))
    assert (path.kind, path.blocker) == (kind, blocker)
    assert words in path.reason
    assert "--" not in path.reason, "the user's words, not a CLI flag"


def test_an_empty_augmentation_list_is_no_augmentation() -> None:
    assert input_path(PLAIN.with_changes(augment=True, augmentations=())).kind == FEATURES


def test_choose_source_for_feature_extraction_trains_the_head_on_features() -> None:
    built = build_model(PLAIN, 3)
    source = choose_source(PLAIN, built, 10)
    assert isinstance(source, FeatureSource) and source.name == FEATURES
    assert source.reason == input_path(PLAIN).reason
    assert source.checkpoint_every == CACHED_CHECKPOINT_S
    assert source.model_for(HEAD_PHASE) is source.head
    assert source.phase_info(HEAD_PHASE) == {"feature_cache": True, "activation_cache": False}


def test_choose_source_for_fine_tuning_reads_activations_after_a_head_warm_up() -> None:
    config = PLAIN.with_changes(mode="fine_tuning")
    built = build_model(config, 3)
    source = choose_source(config, built, 10)
    assert isinstance(source, ActivationSource) and source.name == ACTIVATIONS
    assert source.model_for(HEAD_PHASE) is source.head
    assert source.model_for(FINE_TUNE_PHASE) is source.cut.classifier
    assert source.phase_info(HEAD_PHASE) == {"feature_cache": True, "activation_cache": False}
    assert source.phase_info(FINE_TUNE_PHASE) == {"feature_cache": False, "activation_cache": True}
    assert source.checkpoint_every == CACHED_CHECKPOINT_S


@pytest.mark.parametrize(
    "config",
    [
        PLAIN.with_changes(mode="fine_tuning", augment=True),
        PLAIN.with_changes(mode="full_fine_tuning"),
        PLAIN.with_changes(augment=True, feature_cache="off"),
    ],
    ids=["fine_tuning_augmentation", "full_fine_tuning", "cache_off"],
)
def test_choose_source_for_everything_else_reads_images(config: RunConfig) -> None:
    built = build_model(config, 3)
    source = choose_source(config, built, 10)
    assert isinstance(source, ImageSource) and source.name == IMAGES
    assert source.reason == input_path(config).reason
    assert source.checkpoint_every == 0
    for phase in config.phases:
        assert source.model_for(phase) is built.model
        assert source.phase_info(phase) == {"feature_cache": False, "activation_cache": False}


def test_fine_tuning_falls_back_to_images_when_the_model_cannot_be_cut() -> None:
    config = PLAIN.with_changes(mode="fine_tuning")
    built = build_model(config, 3)
    names = [layer.name for layer in built.base.layers]
    inside = len(names) - names.index("block_15_project_BN")  # inside a residual block
    config = config.with_changes(unfreeze=inside)
    source = choose_source(config, built, 10)
    assert isinstance(source, ImageSource)
    assert "single tensor" in source.reason and "--" not in source.reason


def test_the_trainer_no_longer_branches_on_a_source_name() -> None:
    trainer = Path(__file__).resolve().parents[3] / "core" / "training" / "trainer.py"
    strings = {
        node.value
        for node in ast.walk(ast.parse(trainer.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    assert not strings & {FEATURES, ACTIVATIONS, IMAGES}
