"""Scan cache: unchanged files reuse their verdict; a changed file or rule means a re-check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from core import data
from core.data import images, scan_cache
from core.data.images import check_image
from core.paths import studio_home
from tests.helpers import write_pngs


def _counting(calls: list[str]):
    def check(path: str) -> str | None:
        calls.append(path)
        return check_image(path)

    return check


def test_unchanged_files_are_not_checked_again(tmp_path: Path) -> None:
    paths = write_pngs(tmp_path, 5)
    calls: list[str] = []
    assert scan_cache.check_all(paths, _counting(calls)) == [None] * 5
    assert len(calls) == 5
    calls.clear()
    assert scan_cache.check_all(paths, _counting(calls)) == [None] * 5
    assert calls == []


def test_a_rewritten_file_is_checked_again_even_with_its_old_size_and_mtime(
    tmp_path: Path,
) -> None:
    paths = write_pngs(tmp_path, 2)
    assert scan_cache.check_all(paths, check_image) == [None, None]
    target = paths[0]
    st = os.stat(target)
    with open(target, "r+b") as fh:  # same size, garbage content
        fh.write(b"\0" * st.st_size)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back; ctime moves on
    calls: list[str] = []
    reasons = scan_cache.check_all(paths, _counting(calls))
    assert calls == [target]
    assert reasons[0] is not None and reasons[1] is None


def test_a_skipped_verdict_is_remembered_and_a_fixed_file_is_used_again(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(b"not really a png")
    assert scan_cache.check_all([str(path)], check_image)[0] == "not an image"
    assert scan_cache.check_all([str(path)], lambda p: pytest.fail("re-checked"))[0] == (
        "not an image"
    )
    Image.new("RGB", (24, 24)).save(path)
    assert scan_cache.check_all([str(path)], check_image) == [None]


def test_changed_rules_check_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = write_pngs(tmp_path, 1)
    assert scan_cache.check_all(paths, check_image) == [None]
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 10)
    assert scan_cache.check_all(paths, check_image)[0].startswith("too large")


def test_a_corrupt_or_deleted_cache_only_costs_a_re_check(tmp_path: Path) -> None:
    paths = write_pngs(tmp_path, 3)
    scan_cache.check_all(paths, check_image)
    db = studio_home() / "cache" / "scan.sqlite"
    db.write_bytes(b"this is not a database" * 100)
    calls: list[str] = []
    assert scan_cache.check_all(paths, _counting(calls)) == [None] * 3
    assert len(calls) == 3
    db.unlink()
    assert scan_cache.check_all(paths, check_image) == [None] * 3
    assert db.is_file()


def test_a_dataset_scan_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a", "b"):
        write_pngs(tmp_path / name, 3)
    first = data.load_dataset(str(tmp_path), val_split=0.34, seed=1)
    calls: list[str] = []
    monkeypatch.setattr(data.layout, "check_image", _counting(calls))
    second = data.load_dataset(str(tmp_path), val_split=0.34, seed=1)
    assert calls == []
    assert second.train_paths == first.train_paths and second.val_paths == first.val_paths
    (tmp_path / "a" / "0.png").write_text("broken now")
    third = data.load_dataset(str(tmp_path), val_split=0.34, seed=1)
    assert len(calls) == 1
    assert [s["reason"] for s in third.skipped_files] == ["not an image"]
