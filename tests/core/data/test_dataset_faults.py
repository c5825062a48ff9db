"""Managed datasets under faults: special files in folders, kills mid-edit, a lost or damaged
index, files removed behind the studio's back, invisible characters in names, leftover copies."""

from __future__ import annotations

import io
import json
import os
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from core import cli
from core.data import datasets
from core.data.datasets import Dataset, create, open_dataset
from core.data.names import display_name
from core.errors import DataError
from core.paths import data_cache_dir
from tests.helpers import write_pngs

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (POSIX)")
HANG_TIMEOUT_S = 20


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own studio home, hence its own datasets."""
    folder = tmp_path / "home"
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(folder))
    return folder


@pytest.fixture
def pets(tmp_path: Path) -> Iterator[Dataset]:
    """Dataset 'pets' with classes cats (4 images) and dogs (3)."""
    write_pngs(tmp_path / "pics" / "a", 4)
    write_pngs(tmp_path / "pics" / "b", 3, side=30)
    ds = create("pets")
    ds.add_images("cats", [tmp_path / "pics" / "a"], create_class=True)
    ds.add_images("dogs", [tmp_path / "pics" / "b"], create_class=True)
    yield ds
    ds.close()


def _jpeg(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), (seed % 256, 40, 200)).save(buf, "JPEG")
    return buf.getvalue()


def _without_hanging(
    work: Callable[[], tuple[int, str, str]], fifos: list[Path]
) -> tuple[int, str, str]:
    """``work()``'s result; fails (not hangs) if it blocks, e.g. reading a FIFO."""
    out: list[tuple[int, str, str] | BaseException] = []

    def target() -> None:
        try:
            out.append(work())
        except BaseException as exc:  # handed to the test
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG_TIMEOUT_S)
    if thread.is_alive():
        for fifo in fifos:  # release a reader blocked in open(): it then sees end of file
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        thread.join(5)
        pytest.fail(f"blocked for more than {HANG_TIMEOUT_S} s (opened a FIFO?)")
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# --------------------------------------------------------------------------- special files


@needs_fifo
def test_a_fifo_named_like_an_image_in_a_folder_is_skipped_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "b.jpg").write_bytes(_jpeg())
    os.mkfifo(folder / "a.jpg")
    create("pets").close()
    code, out, err = _without_hanging(
        lambda: _cli(["dataset", "add", "pets", "cats", str(folder)], capsys), [folder / "a.jpg"]
    )
    assert code == 0
    assert "added 1 image to 'cats'" in out and "1 skipped" in out
    assert f"skipped {folder / 'a.jpg'}: not a regular file (FIFO)" in err
    assert not list((datasets.dataset_path("pets") / ".staging").glob("*"))

    # The folder checks of the Data page do not count it as an image either.
    from core.data.sources import check_folder

    (tmp_path / "tree" / "cats").mkdir(parents=True)
    os.mkfifo(tmp_path / "tree" / "cats" / "x.jpg")
    assert not check_folder(str(tmp_path / "tree")).ok


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u200f"])
def test_bidi_controls_are_refused_in_names_saying_which_and_how_to_fix(char: str) -> None:
    name = f"cat{char}gpj.exe"
    with pytest.raises(DataError) as caught:
        create(name)
    message = str(caught.value)
    assert f"U+{ord(char):04X}" in message and "Type the name again without it" in message
    assert char not in message  # the error itself shows it escaped
    assert datasets.dataset_names() == []
    with pytest.raises(DataError, match=f"U\\+{ord(char):04X}"):
        datasets.check_class_name(name)
    assert char not in datasets.suggest_name(f"/x/{name}.zip")


def test_names_stored_before_the_rule_are_printed_escaped(
    pets: Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    # A name that got in before the rule (or by hand): written straight into the index.
    pets._db.execute("UPDATE classes SET name = 'cats\u202eevil' WHERE name = 'cats'")
    folder = pets.folder
    (folder / "images" / "cats").rename(folder / "images" / "cats\u202eevil")
    evil_home = folder.parent / "pe\u202ets"
    folder.rename(evil_home)
    for argv in (["dataset", "list"], ["dataset", "show", "pe\u202ets", "--images"]):
        code, out, err = _cli(argv, capsys)
        assert code == 0, err
        assert "\u202e" not in out and "\\u202e" in out
    assert display_name("dataset:pe\u202ets") == "pe\\u202ets"


# --------------------------------------------------------------------------- zips


def test_importing_a_zip_leaves_no_extracted_copy_behind(tmp_path: Path) -> None:
    pics = tmp_path / "pics"
    write_pngs(pics / "cats", 3)
    write_pngs(pics / "dogs", 2, side=30)
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(pics.rglob("*.png")):
            zf.write(path, path.relative_to(pics).as_posix())
    with create("photos", str(archive)) as ds:
        assert ds.show()["images"] == 5
    zips = data_cache_dir() / "zips"
    assert not zips.exists() or not [p for p in zips.iterdir() if not p.name.startswith(".")]
    assert not zips.exists() or not list(zips.iterdir())

    # An extraction made before (a run on the zip may read it) is left where it is.
    from core.data.archives import extract_zip

    kept = extract_zip(archive)
    with create("photos 2", str(archive)) as ds:
        assert ds.show()["images"] == 5
    assert kept.is_dir()


# --------------------------------------------------------------------------- kills

# Runs ``python -m core ARGV`` and SIGKILLs itself at the Nth call of one step of an add:
# writing a staged copy, moving a file into its class folder, recording the edit (every file
# moved, nothing committed) or backing the index up (committed).
_KILLER = """
import os, signal, sys
from pathlib import Path
import core.data.datasets as d
point, at = sys.argv[1], int(sys.argv[2])
calls = [0]
def kill_at(fn):
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return wrapper
if point == "stage":
    Path.write_bytes = kill_at(Path.write_bytes)
elif point == "move":
    os.replace = kill_at(os.replace)
elif point == "record":
    d.Dataset._record = kill_at(d.Dataset._record)
elif point == "backup":
    d.sqlite_backup = kill_at(d.sqlite_backup)
from core.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _distinct_pngs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (i % 256, i // 256, 77)).save(folder / f"{i}.png")


def _loader_count(name: str) -> int:
    from core.data.index import load_dataset

    index = load_dataset(f"dataset:{name}")
    return len(index.train_paths) + len(index.val_paths)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "at"), [("stage", 120), ("move", 2), ("move", 150), ("record", 1), ("backup", 1)]
)
def test_a_killed_add_leaves_the_index_and_the_folder_agreeing(
    point: str, at: int, tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import subprocess
    import sys

    _distinct_pngs(tmp_path / "many", 300)
    with create("pets") as ds:
        ds.add_images("cats", write_pngs(tmp_path / "cats", 3, side=20), True)
        ds.add_images("dogs", write_pngs(tmp_path / "dogs", 2, side=30), True)
    env = {**os.environ, "TRANSFER_STUDIO_HOME": str(home)}
    argv = ["dataset", "add", "pets", "dogs", str(tmp_path / "many")]
    proc = subprocess.run(
        [sys.executable, "-c", _KILLER, point, str(at), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    folder = datasets.dataset_path("pets")
    moved_before_open = len(list((folder / "images" / "dogs").glob("*.png")))
    capsys.readouterr()
    trained_on = _loader_count("pets")  # the first thing after the kill, as `train` would
    said = capsys.readouterr().err

    shown = subprocess.run(
        [sys.executable, "-m", "core", "dataset", "show", "pets", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["images"] == trained_on == _loader_count("pets")
    assert info["missing"] == [] and shown.stderr == ""  # said once, by the first to open it
    assert not (folder / ".staging").exists() or not list((folder / ".staging").iterdir())
    assert not list(folder.glob(".editing-*"))
    counts = {c["name"]: c["images"] for c in info["classes"]}
    if point == "backup":  # committed before the kill: all there, nothing to say
        assert counts == {"cats": 3, "dogs": 302} and "warning" not in said
    elif point == "stage":  # killed before any file moved: only the copies to sweep
        assert counts == {"cats": 3, "dogs": 2}
        assert "warning: dataset 'pets': removed the 119 staged copies" in said
    else:  # the files already moved are added (an edit undo takes back)
        assert counts == {"cats": 3, "dogs": moved_before_open}
        assert "an edit was cut short" in said
        assert "finished an interrupted add" in info["edits"][-1]["summary"]


def _locked(path: Path) -> io.BufferedRandom:
    """``path`` (created) held under an exclusive lock, as a live edit or add holds its own."""
    fcntl = pytest.importorskip("fcntl")
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+b")  # closed by the test: the lock goes with it
    fcntl.flock(fh, fcntl.LOCK_EX)
    return fh


def test_a_live_adds_staging_folder_is_not_swept(pets: Dataset) -> None:
    from core.data.datasets import STAGING_DIR

    staging = pets.folder / STAGING_DIR / "live"
    lock = _locked(staging.with_name("live.lock"))  # what a live add holds
    staging.mkdir()
    (staging / "0.png").write_bytes(b"x")
    open_dataset("pets").close()
    assert (staging / "0.png").exists()
    lock.close()  # the add is killed: its lock goes with it
    with open_dataset("pets") as again:
        assert any("removed the 1 staged copy" in n for n in again.notices)
    assert not staging.exists()


# --------------------------------------------------------------------------- a lost index


def _index(ds: Dataset) -> Path:
    return ds.folder / "dataset.sqlite"


def test_an_emptied_index_is_restored_from_its_backup_with_a_warning(
    pets: Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    cat = next(i.id for i in pets.images() if i.label == "cats")
    pets.relabel([cat], "dogs")  # the backup is refreshed after every edit
    before = pets.show()
    pets.close()
    assert (pets.folder / "dataset.sqlite.bak").is_file()
    _index(pets).write_bytes(b"")
    for side in ("-wal", "-shm"):
        _index(pets).with_name("dataset.sqlite" + side).unlink(missing_ok=True)
    code, out, err = _cli(["dataset", "show", "pets", "--json"], capsys)
    assert code == 0
    assert json.loads(out) == before  # classes, counts and the edit history
    assert err.count("warning: ") == 1
    assert "emptied (0 bytes)" in err and "restored its last backup" in err
    assert list(pets.folder.glob("dataset.sqlite.damaged-*"))  # kept for inspection
    code, out, err = _cli(["dataset", "show", "pets"], capsys)
    assert code == 0 and err == ""  # said once, not on every open


@pytest.mark.parametrize("damage", ["garbage", "deleted"])
def test_with_index_and_backup_lost_the_index_is_rebuilt_from_the_images_folder(
    damage: str, pets: Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    dog = next(i.id for i in pets.images() if i.label == "dogs")
    pets.exclude([dog])
    pets.close()
    (pets.folder / "dataset.sqlite.bak").unlink()
    for side in ("-wal", "-shm"):
        _index(pets).with_name("dataset.sqlite" + side).unlink(missing_ok=True)
    if damage == "garbage":
        _index(pets).write_bytes(b"this is not a database" * 100)
    else:
        _index(pets).unlink()
    code, out, err = _cli(["dataset", "list", "--json"], capsys)
    assert code == 0
    (row,) = json.loads(out)
    assert (row["name"], row["classes"], row["images"]) == ("pets", 2, 6)
    assert err.count("warning: ") == 1
    assert "no sound backup" in err and "rebuilt it from the images folder (6 images" in err
    assert "edit history is lost" in err and "1 image set aside in excluded/ is not in it" in err
    with open_dataset("pets") as ds:
        assert {c["name"]: c["images"] for c in ds.show()["classes"]} == {"cats": 4, "dogs": 2}
        assert ds.show()["images"] == _loader_count("pets")
        assert ds.undo() is not None  # the rebuild is itself an edit


def test_list_names_a_dataset_it_cannot_open_and_shows_the_others(
    pets: Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    with create("birds") as birds:
        _index(birds).unlink()
        _index(birds).mkdir()  # nothing can open or repair that
    code, out, err = _cli(["dataset", "list"], capsys)
    assert code == 0
    assert "birds" in out and "cannot be opened" in out and "dataset.sqlite" not in err
    assert any(line.startswith("pets ") and "7 images" in line for line in out.splitlines())
    code, out, _ = _cli(["dataset", "list", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert "error" in rows["birds"] and rows["pets"]["images"] == 7


# --------------------------------------------------------------------------- missing files


def test_files_removed_behind_the_datasets_back_are_named_and_can_be_forgotten(
    pets: Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    cats = [i for i in pets.images() if i.label == "cats"]
    pets.relabel([cats[0].id], "dogs")  # an edit to undo later, whose file then goes
    moved = next(i for i in pets.images() if i.id == cats[0].id)
    Path(moved.path).unlink()
    Path(cats[1].path).unlink()
    info = pets.show()
    assert {c["name"]: c["images"] for c in info["classes"]} == {"cats": 2, "dogs": 3}
    assert info["images"] == 5 == _loader_count("pets")
    assert sorted(m["id"] for m in info["missing"]) == sorted([cats[0].id, cats[1].id])
    code, out, _ = _cli(["dataset", "show", "pets"], capsys)
    assert "2 missing" in out and cats[1].id in out and "forget-missing" in out

    with pytest.raises(DataError, match="forget the dataset's missing images"):
        pets.relabel([cats[1].id], "dogs")
    assert pets.undo()["action"] == "relabel"  # type: ignore[index]  # no dead end
    assert {m["id"] for m in pets.show()["missing"]} == {cats[0].id, cats[1].id}

    code, out, _ = _cli(["dataset", "forget-missing", "pets"], capsys)
    assert code == 0 and "forgot 2 missing images" in out
    with open_dataset("pets") as ds:
        assert ds.show()["missing"] == [] and ds.show()["images"] == 5
        assert ds.images_at(0.0) is not None  # the history still replays
        assert ds.undo()["action"] == "forget_missing"  # type: ignore[index]
        assert len(ds.show()["missing"]) == 2
    code, out, _ = _cli(["dataset", "list", "--json"], capsys)
    assert json.loads(out)[0]["missing"] == 2


def test_an_edit_under_way_is_left_alone_and_a_dead_ones_moves_are_put_back(
    pets: Dataset,
) -> None:
    from core.data.datasets import EDIT_MARKER

    cat = next(i for i in pets.images() if i.label == "cats")
    # A relabel in another session: its file moved, its row not yet committed.
    moved = pets.folder / "images" / "dogs" / Path(cat.path).name
    os.replace(cat.path, moved)
    marker = _locked(pets.folder / f"{EDIT_MARKER}other")
    with open_dataset("pets") as ds:  # neither waits for it nor undoes it
        assert ds.notices == [] and moved.exists()
    marker.close()  # that session is killed: its lock goes, its marker stays
    with open_dataset("pets") as ds:
        (notice,) = ds.notices
        assert "an edit was cut short" in notice and "put 1 file back" in notice
        assert Path(cat.path).exists() and not moved.exists()
        assert ds.show()["images"] == 7 == _loader_count("pets")
    assert not list(pets.folder.glob(f"{EDIT_MARKER}*"))
