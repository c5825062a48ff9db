"""core.files: atomic writes, SHA-256 of a file, folders finished by a marker written last."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from core.files import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    build_folder,
    read_marker,
    sha256_file,
)

MARKER = ".done.json"


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "info.json"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second é")
    assert target.read_text(encoding="utf-8") == "second é"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert _siblings(tmp_path) == ["info.json"]


def test_failed_atomic_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.weights.h5"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert _siblings(tmp_path) == ["model.weights.h5"]


def test_failed_atomic_write_of_a_folder_removes_it(tmp_path: Path) -> None:
    target = tmp_path / "saved"
    with pytest.raises(OSError), atomic_path(target) as tmp:
        (tmp / "inner").mkdir(parents=True)
        raise OSError("no space left on device")
    assert _siblings(tmp_path) == []


def test_atomic_temporary_keeps_the_suffix_and_is_unique_per_writer(tmp_path: Path) -> None:
    target = tmp_path / "efficientnet.weights.h5"
    names: list[str] = []

    def grab() -> None:
        with atomic_path(target) as tmp:
            names.append(tmp.name)
            tmp.write_bytes(b"x")

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(names)) == 4
    assert all(name.endswith(".weights.h5") and name.startswith("tmp-") for name in names)
    assert _siblings(tmp_path) == ["efficientnet.weights.h5"]


# --------------------------------------------------------------------------- sha256


def test_sha256_file_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # > 2 MiB: several 1 MiB chunks
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path)) == sha256_file(path)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "missing")


# --------------------------------------------------------------------------- build_folder


def _builder(calls: list[Path], files: int = 3) -> Callable[[Path], dict]:
    """A build that records its folder and checks the marker is not there while it writes."""

    def build(folder: Path) -> dict:
        calls.append(folder)
        assert folder.name.startswith(".")  # a hidden temporary sibling, not the target
        for i in range(files):
            assert not (folder / MARKER).exists()  # the marker comes after every file
            (folder / f"{i}.txt").write_text(str(i))
        return {"files": files}

    return build


def test_build_folder_writes_the_marker_last_and_reuses_a_finished_build(tmp_path: Path) -> None:
    calls: list[Path] = []
    target = tmp_path / "set"
    assert build_folder(target, _builder(calls), MARKER, 2, {"name": "set"}) == target
    assert len(calls) == 1 and calls[0].parent == tmp_path  # built next to the target
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "0.txt", "1.txt", "2.txt"]
    marker = json.loads((target / MARKER).read_text())
    assert marker == {"files": 3, "name": "set", "version": 2}
    assert read_marker(target, MARKER, 2, {"name": "set"}) == marker
    assert (target.stat().st_mode & 0o777) == 0o755  # an ordinary folder, not mkdtemp's 0o700

    mtime = (target / "0.txt").stat().st_mtime_ns
    assert build_folder(target, _builder(calls), MARKER, 2, {"name": "set"}) == target
    assert len(calls) == 1  # reused, not rebuilt
    assert (target / "0.txt").stat().st_mtime_ns == mtime
    assert _siblings(tmp_path) == ["set"]


def test_build_folder_redoes_an_interrupted_or_outdated_build(tmp_path: Path) -> None:
    calls: list[Path] = []
    target = tmp_path / "set"
    target.mkdir()
    (target / "0.txt").write_text("half written")  # a crash before the marker
    build_folder(target, _builder(calls), MARKER, 1)
    assert len(calls) == 1 and (target / "0.txt").read_text() == "0"

    build_folder(target, _builder(calls), MARKER, 2)  # a new version
    assert len(calls) == 2
    build_folder(target, _builder(calls), MARKER, 2, {"name": "other"})  # another identity
    assert len(calls) == 3
    (target / MARKER).write_text("{not json")
    build_folder(target, _builder(calls), MARKER, 2, {"name": "other"})
    assert len(calls) == 4
    assert _siblings(tmp_path) == ["set"]


def test_build_folder_that_fails_leaves_nothing(tmp_path: Path) -> None:
    def fail(folder: Path) -> None:
        (folder / "partial.txt").write_text("x")
        raise ValueError("generator broke")

    with pytest.raises(ValueError, match="generator broke"):
        build_folder(tmp_path / "set", fail, MARKER, 1)
    assert _siblings(tmp_path) == []


def test_build_folder_keeps_a_concurrent_finished_build(tmp_path: Path) -> None:
    target = tmp_path / "set"

    def theirs(folder: Path) -> None:
        (folder / "theirs.txt").write_text("theirs")

    def race(folder: Path) -> None:
        (folder / "mine.txt").write_text("mine")
        # Another process finishes the same build while this one is still writing.
        build_folder(target, theirs, MARKER, 1)

    build_folder(target, race, MARKER, 1)
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "theirs.txt"]
    assert _siblings(tmp_path) == ["set"]


def test_read_json_and_try_write_json_treat_a_missing_or_unwritable_file_as_not_there(
    tmp_path: Path,
) -> None:
    from core.files import read_json, try_write_json

    path = tmp_path / "state.json"
    assert read_json(path) is None  # not written yet
    path.write_text("{not json")
    assert read_json(path) is None  # half a file from a crash elsewhere
    assert try_write_json(path, {"a": [1, 2]}) and read_json(path) == {"a": [1, 2]}
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert not try_write_json(blocker / "state.json", {"a": 1})  # its folder is a file
