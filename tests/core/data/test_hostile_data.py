"""Hostile data and targets: exports into the user's folders, odd class names, hidden folders,
symlinked duplicates, files that change after the scan and hostile zip archives."""

from __future__ import annotations

import io
import os
import shutil
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from core import data
from core.config import RunConfig
from core.data import load_dataset
from core.errors import DataError, StudioError
from core.paths import data_cache_dir
from tests.helpers import write_pngs

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (POSIX)")
HANG_TIMEOUT_S = 60


def _classes(root: Path, names: list[str], n: int = 3) -> Path:
    for name in names:
        write_pngs(root / name, n, side=16)
    return root


def _reasons(index: data.DatasetIndex) -> dict[str, str]:
    return {Path(item["path"]).name: item["reason"] for item in index.skipped_files}


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder``: file bytes, or None for a folder."""
    return {
        str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
    }


def _in_thread(work: Callable[[], None], fifo: Path | None = None) -> BaseException | None:
    """Run ``work`` in a thread; fail (not hang) if it blocks, e.g. opening a FIFO to read."""
    caught: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the test
            caught.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG_TIMEOUT_S)
    if thread.is_alive():
        if fifo is not None:  # release a reader blocked in open(): it then sees end of file
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        pytest.fail(f"blocked for more than {HANG_TIMEOUT_S} s (opened a FIFO?)")
    return caught[0] if caught else None


# --------------------------------------------------------------------------- 3. export target

EXPORT_CONFIG = RunConfig(
    backbone="vgg16",  # few layers: the .keras file loads fast for the verification
    weights="none",
    mode="feature_extraction",
    image_size=32,
    epochs=1,
    dense_units=8,
    augment=False,
    batch_size=8,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    from core.training.jobs import JobQueue

    base = tmp_path_factory.mktemp("hostile-export")
    folder = _classes(base / "data", ["cats", "dogs"], n=5)
    queue = JobQueue(base / "runs")
    run_id = queue.submit(EXPORT_CONFIG.with_changes(data=str(folder)))
    assert queue.wait(run_id, timeout=300) == "completed", queue.store.result(run_id)["error"]
    yield queue.store, run_id
    shutil.rmtree(queue.store.run_dir(run_id), ignore_errors=True)  # tens of MB of model


def _users_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "mine"
    (folder / "saved_model").mkdir(parents=True)
    (folder / "config.json").write_text('{"my": "settings"}\n')
    (folder / "labels.txt").write_text("my\nown\nlabels\n")
    (folder / "saved_model" / "mine.txt").write_text("my own file")
    (folder / "notes.txt").write_text("my notes")
    return folder


@pytest.mark.slow
def test_export_refuses_a_non_empty_folder_and_overwrite_replaces_only_its_files(
    tiny_run, tmp_path: Path
) -> None:
    from core.runs.export import ExportTargetError, export_run

    store, run_id = tiny_run
    folder = _users_folder(tmp_path)
    before = _snapshot(folder)
    with pytest.raises(ExportTargetError) as excinfo:
        export_run(store, run_id, "keras", folder)
    message = str(excinfo.value)
    assert isinstance(excinfo.value, StudioError)
    assert str(folder) in message and "not empty" in message and "overwrite" in message
    assert "--" not in message  # the core names the setting, not a command-line flag
    assert _snapshot(folder) == before  # nothing written, replaced or deleted

    info = export_run(store, run_id, "keras", folder, overwrite=True)
    after = _snapshot(folder)
    assert after["notes.txt"] == b"my notes"
    assert after[os.path.join("saved_model", "mine.txt")] == b"my own file"
    assert after["labels.txt"] == b"cats\ndogs\n"  # the export's own files are replaced
    assert after["config.json"] != before["config.json"]
    assert Path(info["path"]) == folder / "model.keras"
    # The export's own files and no staging leftovers.
    assert set(after) == set(before) | {"model.keras", "model_card.md", "confusion_matrix.png"}


@pytest.mark.slow
def test_cli_export_refuses_in_one_line_and_takes_overwrite(
    tiny_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from core.cli import main

    store, run_id = tiny_run
    folder = _users_folder(tmp_path)
    before = _snapshot(folder)
    argv = ["export", "--run", run_id, "--format", "keras", "--out", str(folder)]
    argv += ["--runs-dir", str(store.root)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "--overwrite" in err
    assert _snapshot(folder) == before
    assert main([*argv, "--overwrite"]) == 0
    assert (folder / "notes.txt").read_text() == "my notes"
    assert (folder / "saved_model" / "mine.txt").read_text() == "my own file"


@pytest.mark.slow
def test_reexport_into_the_default_folder_still_replaces_its_own_files(tiny_run) -> None:
    from core.runs.export import export_run

    store, run_id = tiny_run
    first = export_run(store, run_id, "savedmodel")
    second = export_run(store, run_id, "savedmodel")  # Keras' SavedModel files count as its own
    assert first["path"] == second["path"]
    assert Path(second["path"]).parent == store.run_dir(run_id) / "exports" / "savedmodel"


@pytest.mark.slow
def test_export_refuses_class_names_with_line_breaks(
    tiny_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.runs.predict
    from core.runs.export import export_run

    store, run_id = tiny_run
    real_load_run = core.runs.predict.load_run

    def old_run(*args, **kwargs):  # a run trained before the scan refused such names
        run = real_load_run(*args, **kwargs)
        run.class_names = ["a\nb", "plain"]
        return run

    monkeypatch.setattr(core.runs.predict, "load_run", old_run)
    with pytest.raises(StudioError, match=r"'a\\nb'.*line break.*Rename"):
        export_run(store, run_id, "keras", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_target_checks_protect_foreign_files(tmp_path: Path) -> None:
    from core.runs.export import ExportTargetError, _check_target

    names, dirs = ["saved_model", "labels.txt", "config.json"], ["saved_model"]
    ours = tmp_path / "ours"
    (ours / "saved_model" / "variables").mkdir(parents=True)
    (ours / "saved_model" / "assets").mkdir()
    for rel in (
        "saved_model.pb",
        "fingerprint.pb",
        "variables/variables.index",
        "variables/variables.data-00000-of-00001",
    ):
        (ours / "saved_model" / rel).write_bytes(b"x")
    (ours / "labels.txt").write_text("a\nb\n")
    _check_target(ours, names, dirs, overwrite=True)  # a previous export: may be replaced
    with pytest.raises(ExportTargetError, match="not empty"):
        _check_target(ours, names, dirs, overwrite=False)

    (ours / "saved_model" / "variables" / "mine.txt").write_text("mine")
    with pytest.raises(ExportTargetError, match=r"variables/mine\.txt.*even with overwrite"):
        _check_target(ours, names, dirs, overwrite=True)

    clash = tmp_path / "clash"
    (clash / "labels.txt").mkdir(parents=True)  # a folder where the export writes a file
    with pytest.raises(ExportTargetError, match="is a folder"):
        _check_target(clash, names, dirs, overwrite=True)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ExportTargetError, match="is a file, not a folder"):
        _check_target(tmp_path / "a_file", names, dirs, overwrite=True)
    _check_target(tmp_path / "missing", names, dirs, overwrite=False)  # a new folder is fine


# --------------------------------------------------------------------------- 6. class names

LINE_BREAKS = ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
OTHER_CONTROLS = ["\t", "\x1b", "\x7f", "\x9b"]


def test_class_folders_with_line_breaks_are_refused(tmp_path: Path) -> None:
    root = _classes(tmp_path / "ds", ["a\nb", "c\rd", "plain"])
    with pytest.raises(DataError) as excinfo:
        load_dataset(str(root))
    message = str(excinfo.value)
    assert repr("a\nb") in message and "Rename the folder" in message and "labels.txt" in message


@pytest.mark.parametrize("char", LINE_BREAKS + OTHER_CONTROLS, ids=lambda c: f"U+{ord(c):04X}")
def test_any_control_character_in_a_class_name_is_refused(tmp_path: Path, char: str) -> None:
    name = f"x{char}y"
    root = _classes(tmp_path / "ds", [name, "plain"])
    with pytest.raises(DataError, match="Rename the folder") as excinfo:
        load_dataset(str(root))
    assert repr(name) in str(excinfo.value)


def test_labels_text_is_one_line_per_class() -> None:
    from core.runs.export import labels_text

    assert labels_text(["cats", "dogs", "ümlaut ok"]) == "cats\ndogs\nümlaut ok\n"
    for char in LINE_BREAKS:
        with pytest.raises(StudioError, match="line break"):
            labels_text(["cats", f"a{char}b"])


# --------------------------------------------------------------------------- 7. silent surprises


def test_hidden_folders_are_reported_not_silently_dropped(tmp_path: Path) -> None:
    root = _classes(tmp_path / "ds", ["cats", "dogs", "..x", "...", ".hidden"])
    write_pngs(root / ".git" / "objects", 1, side=16)
    write_pngs(root / "__MACOSX" / "cats", 1, side=16)
    (root / ".DS_Store").write_bytes(b"\0\1")
    (root / "cats" / "._cats_00.png").write_bytes(b"\0\5\26\7")  # macOS resource fork
    write_pngs(root / "cats" / ".thumbs", 1, side=16)
    Image.new("RGB", (16, 16)).save(root / "dogs" / ".secret.png")

    index = load_dataset(str(root))
    assert index.class_names == ["cats", "dogs"]
    folder, file = "hidden folder (name starts with '.')", "hidden file (name starts with '.')"
    assert _reasons(index) == {
        "..x": folder,
        "...": folder,
        ".hidden": folder,
        ".thumbs": folder,
        ".secret.png": file,
    }  # .DS_Store, .git, __MACOSX and ._ forks stay silent: never data
    assert len(index.train_paths) + len(index.val_paths) == 6


def test_symlinks_do_not_label_the_same_image_twice(tmp_path: Path) -> None:
    root = _classes(tmp_path / "ds", ["cats", "dogs"], n=4)
    os.symlink(root / "cats" / "0.png", root / "dogs" / "alias.png")  # a cat labelled dog
    os.symlink(root / "cats", root / "dogs" / "catdir")  # every cat (and again.png), as dogs
    os.symlink(root / "cats" / "1.png", root / "cats" / "again.png")  # twice in one class

    index = load_dataset(str(root), val_split=0.25)
    paths = index.train_paths + index.val_paths
    labels = index.train_labels + index.val_labels
    reals = [os.path.realpath(p) for p in paths]
    assert len(set(reals)) == len(reals) == 8
    for real, label in zip(reals, labels, strict=True):  # each image under its own folder
        assert Path(real).parent.name == index.class_names[label]
    reasons = _reasons(index)
    assert reasons["alias.png"] == f"same file as {root / 'cats' / '0.png'} (symlink), counted once"
    assert reasons["again.png"] == f"same file as {root / 'cats' / '1.png'} (symlink), counted once"
    duplicates = [s for s in index.skipped_files if "catdir" in s["path"]]
    assert len(duplicates) == 5 and all("same file as" in s["reason"] for s in duplicates)


def test_the_file_itself_wins_over_a_symlink_listed_before_it(tmp_path: Path) -> None:
    """The class ants is listed before bees: its link to a bee is seen first, and still skipped."""
    root = _classes(tmp_path / "ds", ["ants", "bees"], n=3)
    os.symlink(root / "bees" / "1.png", root / "ants" / "0-link.png")
    index = load_dataset(str(root), val_split=0.25)
    paths = index.train_paths + index.val_paths
    assert str(root / "bees" / "1.png") in paths and len(paths) == 6
    assert _reasons(index)["0-link.png"] == (
        f"same file as {root / 'bees' / '1.png'} (symlink), counted once"
    )


def test_symlinks_are_found_from_the_folder_listing_not_a_lookup_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50,000 files: an ``lstat`` each to find the few symlinks took half a second."""
    root = _classes(tmp_path / "ds", ["cats", "dogs"], n=4)
    os.symlink(root / "cats" / "1.png", root / "cats" / "again.png")
    looked: list[str] = []
    real = os.path.islink
    monkeypatch.setattr(os.path, "islink", lambda p: looked.append(str(p)) or real(p))
    index = load_dataset(str(root), val_split=0.25)
    assert len(index.train_paths) + len(index.val_paths) == 8  # again.png counted once
    assert looked == []


def test_symlink_from_validation_to_training_file_is_not_a_leak(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _classes(root / "train", ["cats", "dogs"])
    _classes(root / "val", ["cats", "dogs"], n=2)
    os.symlink(root / "train" / "cats" / "0.png", root / "val" / "cats" / "leak.png")
    index = load_dataset(str(root))
    assert index.split == "given:val"
    assert str(root / "val" / "cats" / "leak.png") not in index.val_paths
    assert _reasons(index)["leak.png"].startswith(f"same file as {root / 'train' / 'cats'}")


def test_deep_class_folders_are_cut_off_not_recursed(tmp_path: Path) -> None:
    """Regression guard: the walk stops at MAX_CLASS_DEPTH levels (now without recursion)."""
    root = _classes(tmp_path / "ds", ["cats", "dogs"])
    deep = root / "cats"
    for _ in range(data.layout.MAX_CLASS_DEPTH + 3):
        deep = deep / "d"
    write_pngs(deep, 1, side=16)
    index = load_dataset(str(root))
    assert any("nested deeper than" in s["reason"] for s in index.skipped_files)
    assert len(index.train_paths) + len(index.val_paths) == 6


# --------------------------------------------------------------------------- 8. files that change


def _dataset_of(tmp_path: Path, n: int = 4):
    from core.data.pipeline import make_dataset

    paths = write_pngs(tmp_path / "imgs", n, side=16)
    return paths, make_dataset(paths, [i % 2 for i in range(n)], 16, 2, training=False)


def test_file_that_disappears_after_the_scan_is_named(tmp_path: Path) -> None:
    from core.data.pipeline import image_errors

    paths, ds = _dataset_of(tmp_path)
    os.remove(paths[1])

    def iterate() -> None:
        with image_errors():
            for _ in ds:
                pass

    error = _in_thread(iterate)
    assert isinstance(error, DataError), repr(error)
    assert str(error).startswith(f"{paths[1]!r}: the file disappeared after the dataset scan")
    assert "Put it back" in str(error)


@needs_fifo
def test_file_replaced_by_a_fifo_fails_training_clearly_without_blocking(tmp_path: Path) -> None:
    import keras

    from core.data.pipeline import image_errors

    paths, ds = _dataset_of(tmp_path)
    os.remove(paths[2])
    os.mkfifo(paths[2])
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten()])
    model.add(keras.layers.Dense(2))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    def train() -> None:
        with image_errors():  # what training wraps around fit: "Graph execution error" inside
            model.fit(ds, epochs=1, verbose=0)

    error = _in_thread(train, fifo=Path(paths[2]))
    assert isinstance(error, DataError), repr(error)
    assert str(error).startswith(f"{paths[2]!r} is no longer a regular file (it is now a FIFO)")


@needs_fifo
def test_reading_an_image_never_blocks_on_a_fifo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.data import images

    fifo = tmp_path / "swapped.png"
    os.mkfifo(fifo)
    # The file turns into a FIFO right after the size check looked at it.
    monkeypatch.setattr(images, "_check_file_size", lambda source: None)
    error = _in_thread(lambda: images.load_rgb(fifo, 16), fifo=fifo)
    assert isinstance(error, DataError) and "not a regular file" in str(error)
    assert str(fifo) in str(error)
    assert _in_thread(lambda: images.check_image(fifo), fifo=fifo) is None


# --------------------------------------------------------------------------- 9. archives


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _good_members() -> dict[str, bytes]:
    return {f"set/{c}/{i}.png": _png() for c in ("cats", "dogs") for i in range(3)}


def _zip(path: Path, members: dict[str, bytes], dirs: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name in dirs:
            zf.writestr(zipfile.ZipInfo(name), b"")
        for name, payload in members.items():
            zf.writestr(name, payload)
    return path


def _zip_cache_entries() -> set[str]:
    folder = data_cache_dir() / "zips"
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def test_zip_member_named_like_the_marker_is_skipped(tmp_path: Path) -> None:
    marker = data.ZIP_MARKER_NAME
    members = {**_good_members(), f"{marker}/x.png": _png()}
    archive = _zip(tmp_path / "marker.zip", members, dirs=(f"{marker}/",))
    index = load_dataset(str(archive))
    assert index.class_names == ["cats", "dogs"]
    reserved = [
        s for s in index.skipped_files if "reserved for the extraction marker" in s["reason"]
    ]
    assert {s["path"].split("::")[1] for s in reserved} == {f"{marker}/", f"{marker}/x.png"}
    assert load_dataset(str(archive)).class_names == ["cats", "dogs"]  # the marker still works


def test_zip_member_nested_thousands_of_folders_deep_is_skipped(tmp_path: Path) -> None:
    members = {**_good_members(), "set/cats/" + "d/" * 2100 + "deep.png": _png()}
    index = load_dataset(str(_zip(tmp_path / "deep.zip", members)))
    assert len(index.train_paths) + len(index.val_paths) == 6
    (deep,) = [s for s in index.skipped_files if "levels deep" in s["reason"]]
    assert f"more than the {data.archives.MAX_ZIP_DEPTH} allowed" in deep["reason"]
    assert deep["path"].endswith("/.../deep.png") and len(deep["path"]) < 400


def test_zip_with_too_many_members_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data.archives, "MAX_ZIP_MEMBERS", 100)
    members = {f"set/{'ab'[i % 2]}/{i}.png": b"x" for i in range(101)}
    archive = _zip(tmp_path / "many.zip", members)
    before = _zip_cache_entries()
    with pytest.raises(DataError) as excinfo:
        load_dataset(str(archive))
    message = str(excinfo.value)
    assert "101 entries" in message and "more than the 100" in message
    assert "Extract it yourself and pass the folder" in message
    assert _zip_cache_entries() == before  # refused while planning: nothing extracted


def test_zip_caps_have_sane_defaults() -> None:
    assert 1_000 <= data.archives.MAX_ZIP_MEMBERS <= 50_000
    assert 16 <= data.archives.MAX_ZIP_DEPTH <= 64
    assert data.layout.MAX_CLASS_DEPTH < data.archives.MAX_ZIP_DEPTH


def test_class_folder_names_that_are_not_utf8_are_refused_clearly(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    for name in (b"caf\xe9", b"plain"):  # latin-1 bytes: not UTF-8
        folder = os.path.join(root, name)
        os.mkdir(folder)
        for i in range(3):
            Image.new("RGB", (16, 16), (i * 60, 0, 0)).save(os.fsdecode(folder) + f"/{i}.png")
    with pytest.raises(DataError, match="not valid UTF-8"):
        data.load_dataset(str(tmp_path))
