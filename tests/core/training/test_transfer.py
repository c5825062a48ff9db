"""Real transfer: the offline ImageNet backbone beats the from-scratch baseline on real photos."""

from __future__ import annotations

import pytest

from core.config import RunConfig
from core.runs.store import COMPLETED
from core.training.jobs import JobQueue


@pytest.mark.slow
def test_lite0_feature_extraction_beats_scratch_on_faces(tmp_path) -> None:
    queue = JobQueue(tmp_path)
    base = RunConfig(data="builtin:faces", backbone="efficientnet_lite0", image_size=64, epochs=3)
    transfer = queue.submit(base.with_changes(mode="feature_extraction"))
    scratch = queue.submit(base.with_changes(mode="scratch"))
    assert queue.wait(transfer, timeout=600) == COMPLETED
    assert queue.wait(scratch, timeout=600) == COMPLETED
    transfer_acc = queue.store.result(transfer)["best_val_accuracy"]
    scratch_acc = queue.store.result(scratch)["best_val_accuracy"]
    assert transfer_acc >= 0.95
    assert scratch_acc <= transfer_acc - 0.15, (transfer_acc, scratch_acc)
