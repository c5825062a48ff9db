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


def _counting_hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import core.files

    read: list[str] = []
    real = core.files.sha256_file
    monkeypatch.setattr(core.files, "sha256_file", lambda p: read.append(p) or real(p))
    return read


def test_a_settled_file_is_hashed_once_in_the_process_and_across_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Data page's health check and leakage plan hash the same 50,000 files: once."""
    from core.files import sha256_file

    monkeypatch.setattr(scan_cache, "SETTLED_NS", 0)  # the files were written just now
    paths = write_pngs(tmp_path, 4) + [str(tmp_path / "gone.png")]
    expected = [sha256_file(p) for p in paths[:4]] + [None]
    read = _counting_hashes(monkeypatch)
    assert scan_cache.file_hashes(paths) == expected
    assert sorted(read) == sorted(paths[:4])
    assert scan_cache.file_hashes(paths) == expected  # this process remembers them
    assert len(read) == 4
    monkeypatch.setattr(scan_cache, "_HASHES", {})  # a new process: scan.sqlite has them
    assert scan_cache.file_hashes(paths[:4]) == expected[:4]
    assert len(read) == 4
    Image.new("RGB", (8, 8), (1, 2, 3)).save(paths[0])  # a changed file is read again
    assert scan_cache.file_hashes(paths)[0] == sha256_file(paths[0]) != expected[0]
    assert read[4:] == [paths[0]]


def test_a_file_changed_just_now_is_hashed_on_every_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timestamps tick coarsely: a rewrite within one tick could keep the file's identity."""
    monkeypatch.setattr(scan_cache, "SETTLED_NS", 10**15)  # everything changed "just now"
    paths = write_pngs(tmp_path, 2)
    read = _counting_hashes(monkeypatch)
    first = scan_cache.file_hashes(paths)
    assert scan_cache.file_hashes(paths) == first
    assert len(read) == 4


def test_a_scan_brings_the_stored_digests_of_its_unchanged_files_along(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run scans its files, then records their digests: in a new process the scan's one
    query reads both, and the digests come from memory (no second query, no read)."""
    from core.files import sha256_file

    monkeypatch.setattr(scan_cache, "SETTLED_NS", 0)
    paths = write_pngs(tmp_path, 4)
    expected = [sha256_file(p) for p in paths]
    scan_cache.check_all(paths, check_image)
    assert scan_cache.file_hashes(paths) == expected  # stored in scan.sqlite
    Image.new("RGB", (8, 8), (1, 2, 3)).save(paths[0])  # changed after it was hashed
    monkeypatch.setattr(scan_cache, "_HASHES", {})  # a new process
    read = _counting_hashes(monkeypatch)
    queries: list[str] = []
    real_select = scan_cache.select_in
    monkeypatch.setattr(
        scan_cache, "select_in", lambda conn, q, *a: queries.append(q) or real_select(conn, q, *a)
    )
    assert scan_cache.check_all(paths, check_image) == [None] * 4
    assert len(queries) == 1 and set(scan_cache._HASHES) == set(paths[1:])
    assert scan_cache.file_hashes(paths[1:]) == expected[1:]
    assert len(queries) == 1 and read == []
    # The changed file's stored digest was not taken: it is read, and its new digest is right.
    assert scan_cache.file_hashes(paths[:1]) == [sha256_file(paths[0])] != expected[:1]
    assert read == [paths[0]]
