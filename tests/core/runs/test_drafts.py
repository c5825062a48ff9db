"""The dashboard's draft (``core.runs.drafts``): kept per runs folder, never a crash."""

from __future__ import annotations

import json

import pytest

from core.config import RunConfig
from core.runs import drafts


def test_a_draft_round_trips_per_runs_folder(tmp_path):
    config = RunConfig(
        backbone="mobilenet_v2", mode="fine_tuning", data="builtin:textures", image_size=96,
        epochs=5, lr=3e-4, unfreeze=12, augment=False, feature_cache="off",
    )  # fmt: skip
    (tmp_path / "a").mkdir()
    drafts.save_draft(tmp_path / "a", config)
    assert drafts.load_draft(tmp_path / "a") == config
    (tmp_path / "b").mkdir()
    assert drafts.load_draft(tmp_path / "b") is None  # another runs folder has its own


def test_chosen_data_and_form_are_kept_side_by_side(tmp_path):
    drafts.save_chosen_data(tmp_path, "~/photos")
    drafts.save_draft(tmp_path, RunConfig(epochs=7))
    assert drafts.load_chosen_data(tmp_path) == "~/photos"
    drafts.save_chosen_data(tmp_path, "builtin:textures")  # the Train form follows the choice
    assert drafts.load_draft(tmp_path) == RunConfig(epochs=7, data="builtin:textures")
    assert drafts.load_chosen_data(tmp_path) == "builtin:textures"
    assert not [p for p in tmp_path.iterdir() if p.name != drafts.DRAFT_FILE]  # no temporaries


@pytest.mark.parametrize(
    "content",
    [
        b"\x89PNG\r\n\x1a\n\x00\xff",  # binary
        b"{not json",
        b"[1, 2]",
        json.dumps({"version": 0, "config": {"epochs": 9}}).encode(),  # an older format
        json.dumps({"version": 1, "config": {"epochs": "9"}}).encode(),  # a wrong type
        json.dumps({"version": 1, "config": {"backbone": "gone_net"}}).encode(),
        json.dumps({"version": 1, "config": {"weights": 3}}).encode(),
        json.dumps({"version": 1, "config": "epochs=9", "chosen_data": 5}).encode(),
    ],
)
def test_a_damaged_or_old_draft_reads_as_none(tmp_path, content):
    drafts.draft_path(tmp_path).write_bytes(content)
    assert drafts.load_draft(tmp_path) is None
    assert drafts.load_chosen_data(tmp_path) is None
    drafts.save_draft(tmp_path, RunConfig(epochs=2))  # and it is replaced by the next save
    assert drafts.load_draft(tmp_path) == RunConfig(epochs=2)


def test_an_unwritable_runs_folder_only_loses_the_draft(tmp_path):
    missing = tmp_path / "not-there"  # the atomic write fails: no exception reaches the page
    drafts.save_draft(missing, RunConfig())
    drafts.save_chosen_data(missing, "builtin:photos")
    assert drafts.load_draft(missing) is None
