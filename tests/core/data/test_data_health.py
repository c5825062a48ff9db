"""core.data.health: imbalance, near-empty classes, train/val duplicates, tiny images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.data import DatasetIndex, load_dataset
from core.data.health import (
    INFO,
    WARNING,
    duplicates_across_splits,
    health_report,
    sample_images,
    skipped_table,
    small_images,
)
from core.files import sha256_file


def _png(path: Path, seed: int, size: int = 40) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def _index(tmp_path: Path, counts: dict[str, tuple[int, int]], size: int = 40) -> DatasetIndex:
    """An index with ``counts[class] = (train, val)`` distinct random images."""
    names = sorted(counts)
    train, train_labels, val, val_labels = [], [], [], []
    seed = 0
    for label, name in enumerate(names):
        n_train, n_val = counts[name]
        for i in range(n_train):
            seed += 1
            train.append(_png(tmp_path / "train" / name / f"{i}.png", seed, size))
            train_labels.append(label)
        for i in range(n_val):
            seed += 1
            val.append(_png(tmp_path / "val" / name / f"{i}.png", seed, size))
            val_labels.append(label)
    return DatasetIndex("test", str(tmp_path), names, train, train_labels, val, val_labels)


def _messages(report, level=None):
    return [r["message"] for r in report if level is None or r["level"] == level]


def test_healthy_dataset_has_no_warnings(tmp_path):
    index = _index(tmp_path, {"a": (8, 2), "b": (8, 2)})
    assert health_report(index) == []


def test_imbalance_above_three_to_one_is_a_warning(tmp_path):
    index = _index(tmp_path, {"big": (14, 2), "small": (4, 1)})
    warnings = _messages(health_report(index), WARNING)
    assert any("imbalance" in m and "'big' has 16" in m and "'small' only 5" in m for m in warnings)
    # exactly 3x is still fine
    balanced = _index(tmp_path / "ok", {"big": (12, 3), "small": (4, 1)})
    assert not any("imbalance" in m for m in _messages(health_report(balanced)))


def test_near_empty_classes_are_listed(tmp_path):
    index = _index(tmp_path, {"a": (8, 2), "b": (3, 1), "c": (2, 1)})
    warnings = _messages(health_report(index, imbalance_ratio=100), WARNING)
    assert len(warnings) == 1
    assert (
        "'b' (4)" in warnings[0]
        and "'c' (3)" in warnings[0]
        and "Near-empty classes" in warnings[0]
    )


def test_duplicates_across_train_and_val_by_content(tmp_path):
    index = _index(tmp_path, {"a": (6, 2), "b": (6, 2)})
    copy = Path(index.val_paths[0])
    copy.write_bytes(Path(index.train_paths[3]).read_bytes())  # same bytes, other name
    pairs = duplicates_across_splits(index)
    assert pairs == [(index.train_paths[3], index.val_paths[0])]
    warnings = _messages(health_report(index), WARNING)
    assert any("1 validation image is identical" in m for m in warnings)
    assert sha256_file(copy) == sha256_file(index.train_paths[3])


def test_duplicate_check_is_skipped_for_huge_datasets(tmp_path):
    index = _index(tmp_path, {"a": (6, 2), "b": (6, 2)})
    report = health_report(index, max_hashed_files=5)
    assert any("Duplicate check skipped" in m for m in _messages(report, INFO))


def test_small_images_found_in_sample(tmp_path):
    index = _index(tmp_path, {"a": (6, 2), "b": (6, 2)}, size=20)
    tiny, checked = small_images(index, min_side=32, sample=5, seed=1)
    assert checked == 5 and len(tiny) == 5
    assert tiny[0][1:] == (20, 20)
    warnings = _messages(health_report(index, size_sample=10), WARNING)
    assert any("Very small images: 10 of 10" in m and "20x20" in m for m in warnings)


def test_skipped_files_become_info_and_table_rows(tmp_path):
    for cls in ("a", "b"):
        for i in range(6):
            _png(tmp_path / "data" / cls / f"{i}.png", hash((cls, i)) % 1000)
    (tmp_path / "data" / "a" / "notes.txt").write_text("hello")
    (tmp_path / "data" / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    index = load_dataset(str(tmp_path / "data"))
    infos = _messages(health_report(index), INFO)
    assert any("2 file(s) skipped" in m for m in infos)
    rows = skipped_table(index)
    assert {r["file"] for r in rows} == {"notes.txt", "broken.png"}
    assert all(r["reason"] for r in rows)


def test_sample_images_per_class_is_seeded_and_bounded(tmp_path):
    index = _index(tmp_path, {"a": (10, 2), "b": (2, 1)})
    first = sample_images(index, per_class=4, seed=3)
    assert len(first["a"]) == 4 and len(first["b"]) == 3
    assert first == sample_images(index, per_class=4, seed=3)
    assert all("/a/" in p for p in first["a"])


def test_files_are_hashed_in_one_task_per_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of small files: a future per file cost more than hashing them."""
    from concurrent.futures import ThreadPoolExecutor

    import core.files
    from core.data import health
    from tests.helpers import write_pngs

    submitted: list[object] = []

    class Counting(ThreadPoolExecutor):
        def submit(self, *args: Any, **kwargs: Any) -> Any:
            submitted.append(args[0])
            return super().submit(*args, **kwargs)

    monkeypatch.setattr(core.files, "ThreadPoolExecutor", Counting)  # the hasher's pool
    paths = write_pngs(tmp_path, 20) + [str(tmp_path / "gone.png")]
    hashes = health._hashes(paths)
    assert list(hashes) == paths[:20]  # in the order given, the unreadable one left out
    assert hashes == {p: sha256_file(p) for p in paths[:20]}
    assert len(submitted) == health.HASH_THREADS
