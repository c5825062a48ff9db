"""Tests for core.data.builtin and core.data: sources, layouts, zips, kaggle cache, splits."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from core import data
from core.data import DatasetIndex, load_dataset, parse_source, resolve_source
from core.data import builtin as builtin_datasets
from core.data.builtin import BUILTINS, builtin_path, list_builtins
from core.errors import ConfigError, DataError
from core.paths import data_cache_dir

COLORS = {"cats": (200, 40, 40), "dogs": (40, 200, 40), "owls": (40, 40, 200)}


def _img(path: Path, color: tuple[int, int, int] = (120, 120, 120)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), color).save(path, format="PNG")
    return path


def _classes(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        for i in range(n):
            _img(root / name / f"{name}_{i:02d}.png", COLORS.get(name, (90, 90, 90)))
    return root


def _tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _labels_match_folders(index: DatasetIndex) -> None:
    for paths, labels in (
        (index.train_paths, index.train_labels),
        (index.val_paths, index.val_labels),
    ):
        for path, label in zip(paths, labels, strict=True):
            assert Path(path).parent.name == index.class_names[label]


# --------------------------------------------------------------------------- builtins


def test_list_builtins() -> None:
    infos = {info["name"]: info for info in list_builtins()}
    assert set(infos) >= {"textures", "faces"}
    assert infos["textures"]["source"] == "builtin:textures"
    assert infos["textures"]["classes"] == ["brick", "grass", "gravel"]
    assert infos["textures"]["images"] == 120 and infos["textures"]["image_size"] == 64
    assert infos["faces"]["classes"] == ["face", "not_face"]
    assert infos["faces"]["images"] == 200 and infos["faces"]["image_size"] == 25
    json.dumps(list_builtins())


@pytest.mark.parametrize("name", ["textures", "faces"])
def test_builtin_generated_and_loadable(name: str) -> None:
    info = BUILTINS[name].info()
    folder = builtin_path(name)
    assert folder == data_cache_dir() / "builtin" / name
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == info["classes"]
    pngs = sorted(folder.rglob("*.png"))
    assert len(pngs) == info["images"]
    with Image.open(pngs[0]) as im:
        assert im.size == (info["image_size"], info["image_size"])
        assert im.mode == ("RGB" if name == "textures" else "L")
    index = load_dataset(f"builtin:{name}")
    assert index.class_names == info["classes"]
    assert len(index.train_paths) + len(index.val_paths) == info["images"]
    assert not index.skipped_files and index.split == "random"


def test_builtin_deterministic_idempotent_and_atomic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path / "home"))
    folder = builtin_path("textures")
    first = _tree_hash(folder)
    mtime = (folder / "brick" / "brick_000.png").stat().st_mtime_ns
    assert builtin_path("textures") == folder  # second call reuses, does not rewrite
    assert (folder / "brick" / "brick_000.png").stat().st_mtime_ns == mtime

    # A folder without the completion marker (a crash mid-way) is never used: it is rebuilt.
    (folder / builtin_datasets.MARKER_NAME).unlink()
    (folder / "brick" / "brick_000.png").write_bytes(b"half written")
    assert builtin_path("textures") == folder
    assert _tree_hash(folder) == first
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_builtin_unknown_name() -> None:
    with pytest.raises(DataError, match="Available: faces, photos, textures"):
        builtin_path("mnist")
    with pytest.raises(DataError, match="faces"):
        load_dataset("builtin:../etc")


# --------------------------------------------------------------------------- sources


def test_parse_source(tmp_path: Path) -> None:
    assert parse_source("builtin:faces") == ("builtin", "faces")
    assert parse_source(" kaggle:a/b/versions/2 ") == ("kaggle", "a/b/versions/2")
    assert parse_source("https://www.kaggle.com/datasets/a/b") == ("kaggle", "a/b")
    assert parse_source("/x/data.ZIP") == ("zip", "/x/data.ZIP")
    assert parse_source(str(tmp_path)) == ("folder", str(tmp_path))
    (tmp_path / "odd.zip").mkdir()  # a folder that happens to end in .zip
    assert parse_source(str(tmp_path / "odd.zip"))[0] == "folder"
    with pytest.raises(DataError):
        parse_source("  ")


def test_unknown_source_message(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    with pytest.raises(DataError) as err:
        load_dataset(missing)
    assert str(err.value) == (
        f"Data source '{missing}' not found. Expected builtin:NAME (available: faces, photos, "
        "textures), "
        "a folder of class subfolders, a .zip file, kaggle:OWNER/SLUG[/versions/N] or "
        "dataset:NAME (a dataset made in the studio)."
    )
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        resolve_source(str(tmp_path / "file.txt"))


# --------------------------------------------------------------------------- folders


def test_folder_of_classes(tmp_path: Path) -> None:
    root = _classes(tmp_path / "ds", {"owls": 10, "cats": 10, "dogs": 10})
    index = load_dataset(str(root), val_split=0.2, seed=0)
    assert index.root == str(root)
    assert index.class_names == ["cats", "dogs", "owls"]
    assert index.split == "random"
    assert index.class_counts() == {
        "train": {"cats": 8, "dogs": 8, "owls": 8},
        "val": {"cats": 2, "dogs": 2, "owls": 2},
    }
    assert not set(index.train_paths) & set(index.val_paths)
    _labels_match_folders(index)
    summary = json.loads(json.dumps(index.summary()))
    assert summary["train_images"] == 24 and summary["val_images"] == 6
    assert set(summary) == {
        "source",
        "root",
        "class_names",
        "train_images",
        "val_images",
        "class_counts",
        "skipped_files",
        "split",
    }


def test_split_is_stratified_and_deterministic(tmp_path: Path) -> None:
    root = _classes(tmp_path / "ds", {"cats": 50, "dogs": 20, "owls": 10})
    a = load_dataset(str(root), val_split=0.2, seed=7)
    assert a.class_counts()["val"] == {"cats": 10, "dogs": 4, "owls": 2}
    assert load_dataset(str(root), val_split=0.2, seed=7) == a
    assert load_dataset(str(root), val_split=0.2, seed=8).val_paths != a.val_paths
    half = load_dataset(str(root), val_split=0.5, seed=7)
    assert half.class_counts()["val"] == {"cats": 25, "dogs": 10, "owls": 5}


def test_tiny_classes_fall_back_gracefully(tmp_path: Path) -> None:
    root = _classes(tmp_path / "ds", {"cats": 1, "dogs": 2, "owls": 30})
    index = load_dataset(str(root), val_split=0.2, seed=3)
    counts = index.class_counts()
    assert counts["train"]["cats"] == 1 and counts["val"]["cats"] == 0
    assert counts["train"]["dogs"] == 1 and counts["val"]["dogs"] == 1
    assert counts["val"]["owls"] == 6
    assert load_dataset(str(root), val_split=0.2, seed=3) == index
    _labels_match_folders(index)


@pytest.mark.parametrize("bad", [0, 0.0, 0.95, -0.1, 1, True, "0.2", None])
def test_val_split_out_of_range(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigError, match="val_split"):
        load_dataset("builtin:faces", val_split=bad)  # type: ignore[arg-type]


def test_given_train_test_split(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _classes(root / "train", {"cats": 6, "dogs": 5, "owls": 4})
    _classes(root / "test", {"cats": 2, "dogs": 3})  # owls missing from test: allowed
    (root / "README.md").write_text("about")
    index = load_dataset(str(root))
    assert index.split == "given:test"
    assert index.class_names == ["cats", "dogs", "owls"]
    assert index.class_counts() == {
        "train": {"cats": 6, "dogs": 5, "owls": 4},
        "val": {"cats": 2, "dogs": 3, "owls": 0},
    }
    assert all("/train/" in p for p in index.train_paths)
    assert all("/test/" in p for p in index.val_paths)
    _labels_match_folders(index)


def test_given_split_prefers_val_and_rejects_unknown_val_class(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _classes(root / "train", {"cats": 3, "dogs": 3})
    _classes(root / "validation", {"cats": 1, "dogs": 1})
    _classes(root / "test", {"cats": 1, "dogs": 1})
    assert load_dataset(str(root)).split == "given:validation"
    _classes(root / "validation", {"owls": 1})
    with pytest.raises(DataError, match="'owls'"):
        load_dataset(str(root))


def test_unlabelled_test_folder_is_not_a_validation_set(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _classes(root / "train", {"cats": 5, "dogs": 5})
    for i in range(3):
        _img(root / "test" / f"{i}.png")
    index = load_dataset(str(root), val_split=0.2)
    assert index.split == "random"
    assert len(index.train_paths) + len(index.val_paths) == 10


def test_nested_wrapper_folders(tmp_path: Path) -> None:
    root = tmp_path / "download"
    base = root / "archive" / "dogs_vs_cats"
    _classes(base / "train", {"cats": 3, "dogs": 3})
    _classes(base / "test", {"cats": 1, "dogs": 2})
    (root / "archive" / "LICENSE.txt").write_text("cc0")
    _img(root / "__MACOSX" / "archive" / "._junk.png")
    index = load_dataset(str(root))
    assert index.split == "given:test"
    assert index.class_counts()["val"] == {"cats": 1, "dogs": 2}

    pets = tmp_path / "pets"
    _classes(pets / "PetImages", {"Cat": 3, "Dog": 3})
    index = load_dataset(str(pets), val_split=0.34)
    assert index.class_names == ["Cat", "Dog"]
    assert index.root == str(pets)


def test_images_in_nested_subfolders_of_a_class(tmp_path: Path) -> None:
    root = _classes(tmp_path / "ds", {"cats": 2, "dogs": 2})
    _img(root / "cats" / "batch2" / "extra.png")
    index = load_dataset(str(root), val_split=0.3)
    assert index.class_counts()["train"]["cats"] + index.class_counts()["val"]["cats"] == 3


def test_skipped_files_with_reasons(tmp_path: Path) -> None:
    root = _classes(tmp_path / "ds", {"cats": 4, "dogs": 4})
    (root / "cats" / "notes.txt").write_text("hello")
    (root / "cats" / "empty.jpg").write_bytes(b"")
    (root / "dogs" / "fake.png").write_text("not a png")
    (root / "dogs" / "Makefile").write_text("x")
    (root / "dogs" / ".DS_Store").write_bytes(b"\x00\x01")
    full = (root / "dogs" / "dogs_00.png").read_bytes()
    (root / "dogs" / "cut.png").write_bytes(full[: len(full) // 2])
    _img(root / "stray.png")
    index = load_dataset(str(root))
    reasons = {Path(item["path"]).name: item["reason"] for item in index.skipped_files}
    assert reasons == {
        "notes.txt": "not an image file (.txt)",
        "empty.jpg": "empty file",
        "fake.png": "not an image",
        "Makefile": "not an image file (no extension)",
        "cut.png": "truncated or corrupt",
        "stray.png": "image outside any class folder",
    }
    assert len(index.train_paths) + len(index.val_paths) == 8
    assert index.summary()["skipped_files"] == index.skipped_files


def test_symlinks_outside_root_are_skipped(tmp_path: Path) -> None:
    outside = _classes(tmp_path / "outside", {"secret": 2})
    root = _classes(tmp_path / "ds", {"cats": 3, "dogs": 3})
    os.symlink(outside / "secret" / "secret_00.png", root / "cats" / "link.png")
    os.symlink(outside / "secret", root / "dogs" / "linked_dir")
    os.symlink(outside / "secret", root / "secret")  # would-be class folder
    # Inside, but a cat again, labelled dog: counted once, under its own folder.
    os.symlink(root / "cats" / "cats_00.png", root / "dogs" / "inside.png")
    index = load_dataset(str(root), val_split=0.3)
    reasons = {Path(item["path"]).name: item["reason"] for item in index.skipped_files}
    assert reasons == {
        "link.png": "symlink pointing outside the dataset folder",
        "linked_dir": "symlink pointing outside the dataset folder",
        "secret": "symlink pointing outside the dataset folder",
        "inside.png": f"same file as {root / 'cats' / 'cats_00.png'} (symlink), counted once",
    }
    assert index.class_names == ["cats", "dogs"]
    assert len(index.train_paths) + len(index.val_paths) == 6


def test_odd_file_names(tmp_path: Path) -> None:
    root = _classes(tmp_path / "ds", {"cats": 3, "dogs": 3})
    weird = _img(root / "cats" / os.fsdecode(b"caf\xe9.png"))
    long_name = _img(root / "dogs" / ("d" * 196 + ".png"))
    (root / "dogs" / os.fsdecode(b"bad\xff.txt")).write_text("x")
    index = load_dataset(str(root), val_split=0.25)
    everything = index.train_paths + index.val_paths
    assert str(weird) in everything and str(long_name) in everything
    assert len(everything) == 8
    assert len(index.skipped_files) == 1
    json.dumps(index.summary())  # surrogate-escaped names stay serialisable


def test_error_one_class(tmp_path: Path) -> None:
    root = _classes(tmp_path / "ds", {"cats": 3})
    with pytest.raises(DataError) as err:
        load_dataset(str(root))
    assert str(err.value) == (
        f"Found 1 class 'cats' in {root}; need at least 2 class subfolders, "
        f"e.g. {root}/cats and {root}/dogs."
    )


def test_error_class_without_usable_image(tmp_path: Path) -> None:
    root = _classes(tmp_path / "ds", {"cats": 3})
    (root / "dogs").mkdir()
    (root / "dogs" / "a.txt").write_text("x")
    (root / "dogs" / "b.jpg").write_text("not a jpeg")
    with pytest.raises(DataError) as err:
        load_dataset(str(root))
    message = str(err.value)
    assert "'dogs'" in message and "2 files skipped" in message
    assert "not an image file (.txt)" in message and "not an image" in message
    (root / "owls").mkdir()
    (root / "dogs" / "b.jpg").unlink()
    (root / "dogs" / "a.txt").unlink()
    with pytest.raises(DataError, match=r"'dogs'.*it is empty"):
        load_dataset(str(root))


def test_error_no_images(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    (root / "dogs" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="No usable images found"):
        load_dataset(str(root))
    flat = tmp_path / "flat"
    for i in range(3):
        _img(flat / f"{i}.png")
    with pytest.raises(DataError, match=r"3 images directly in .*no class subfolders"):
        load_dataset(str(flat))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No images found"):
        load_dataset(str(tmp_path / "empty"))


# --------------------------------------------------------------------------- zips


def _zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def _png_bytes(tmp_path: Path, color: tuple[int, int, int]) -> bytes:
    return _img(tmp_path / "_tmp.png", color).read_bytes()


def test_zip_source_extracted_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    red, green = _png_bytes(tmp_path, (255, 0, 0)), _png_bytes(tmp_path, (0, 255, 0))
    inner = _zip(tmp_path / "inner.zip", {"x.png": red})
    members = {f"pets/cats/{i}.png": red for i in range(3)}
    members |= {f"pets/dogs/{i}.png": green for i in range(3)}
    members["pets/dogs/more.zip"] = inner.read_bytes()  # nested zips are not extracted
    members["__MACOSX/pets/._x.png"] = b"junk"
    archive = _zip(tmp_path / "pets.zip", members, symlinks={"pets/cats/evil.png": "/etc/passwd"})

    index = load_dataset(str(archive), val_split=0.34)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
    assert index.root == str(data_cache_dir() / "zips" / digest)
    assert index.class_names == ["cats", "dogs"]
    assert len(index.train_paths) + len(index.val_paths) == 6
    reasons = {item["path"].rsplit("/", 1)[-1]: item["reason"] for item in index.skipped_files}
    assert reasons == {
        "evil.png": "symlink inside the zip (not extracted)",
        "more.zip": "not an image file (.zip)",
    }
    assert not (Path(index.root) / "pets" / "cats" / "evil.png").exists()
    assert not (Path(index.root) / "__MACOSX").exists()

    # Reused: a second load must not extract again.
    def boom(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("extracted twice")

    monkeypatch.setattr(data.archives, "_extract_members", boom)
    assert load_dataset(str(archive), val_split=0.34) == index


@pytest.mark.parametrize(
    "name", ["../evil.png", "pets/../../evil.png", "/abs/evil.png", "C:/evil.png", "..\\evil.png"]
)
def test_zip_refuses_escaping_members(tmp_path: Path, name: str) -> None:
    archive = _zip(tmp_path / "bad.zip", {"pets/cats/a.png": b"x", name: b"x"})
    with pytest.raises(DataError, match="Refusing zip"):
        load_dataset(str(archive))
    assert not (tmp_path / "evil.png").exists()
    assert not list((data_cache_dir() / "zips").glob(".*tmp*"))


def test_zip_bombs_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _zip(tmp_path / "bomb.zip", {"pets/cats/zeros.png": b"\0" * 200_000})
    monkeypatch.setattr(data.archives, "ZIP_RATIO_MIN_BYTES", 10_000)
    with pytest.raises(DataError, match=r"zip bomb.*200:1"):
        load_dataset(str(archive))
    monkeypatch.setattr(data.archives, "ZIP_RATIO_MIN_BYTES", 10**9)
    monkeypatch.setattr(data.archives, "MAX_ZIP_UNCOMPRESSED_BYTES", 100_000)
    with pytest.raises(DataError, match=r"declares .* uncompressed, more than"):
        load_dataset(str(archive))


def test_zip_lying_header_cannot_write_more(tmp_path: Path) -> None:
    red = _png_bytes(tmp_path, (255, 0, 0))
    members = {f"pets/cats/{i}.png": red for i in range(2)}
    members |= {f"pets/dogs/{i}.png": red for i in range(2)}
    members["pets/dogs/liar.png"] = b"A" * 50_000
    archive = _zip(tmp_path / "liar.zip", members)
    raw = bytearray(archive.read_bytes())
    # Rewrite the central directory's uncompressed size of the last member to 10 bytes.
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("pets/dogs/liar.png")
    central = raw.rfind(b"PK\x01\x02", 0, raw.rfind(b"liar.png") + 1)
    raw[central + 24 : central + 28] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))
    assert info.file_size == 50_000
    index = load_dataset(str(archive), val_split=0.5)
    liar = [item for item in index.skipped_files if item["path"].endswith("liar.png")]
    assert len(liar) == 1 and liar[0]["reason"].startswith("corrupt inside the zip")
    assert not (Path(index.root) / "pets" / "dogs" / "liar.png").exists()


def test_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "fake.zip").write_text("nope")
    with pytest.raises(DataError, match="not a readable zip"):
        load_dataset(str(tmp_path / "fake.zip"))


# --------------------------------------------------------------------------- kaggle


@pytest.fixture
def kaggle_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Build a KAGGLEHUB_CACHE laid out like kagglehub does after downloading version 1."""
    cache = tmp_path / "kagglehub"
    version_dir = cache / "datasets" / "owner" / "slug" / "versions" / "1"
    _classes(version_dir / "pets", {"cats": 3, "dogs": 3})
    (cache / "datasets" / "owner" / "slug" / "1.complete").touch()  # kagglehub's marker
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(cache))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return cache


def test_kaggle_pinned_version_from_cache(kaggle_cache: Path) -> None:
    index = load_dataset("kaggle:owner/slug/versions/1", val_split=0.34)
    assert index.root == str(kaggle_cache / "datasets" / "owner" / "slug" / "versions" / "1")
    assert index.class_names == ["cats", "dogs"]
    assert len(index.train_paths) + len(index.val_paths) == 6


def test_kaggle_unversioned_offline(kaggle_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests
    from kagglehub import http_resolver

    def offline(*_args: object, **_kwargs: object) -> int:
        raise requests.exceptions.ConnectionError("Failed to resolve 'api.kaggle.com'")

    # Force the no-network path deterministically (and so this test can never hang).
    monkeypatch.setattr(http_resolver, "_get_current_version", offline)
    with pytest.raises(DataError) as err:
        load_dataset("kaggle:owner/slug")
    message = str(err.value)
    assert "latest version" in message and "without network" in message
    assert "kaggle:owner/slug/versions/1" in message and "Cached versions: 1" in message


def test_kaggle_pinned_version_not_cached(
    kaggle_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kagglehub
    import requests

    def offline(*_args: object, **_kwargs: object) -> str:
        raise requests.exceptions.ConnectionError("no network")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    with pytest.raises(DataError, match=r"not in the kagglehub cache.*versions/1"):
        load_dataset("kaggle:owner/slug/versions/2")


@pytest.mark.parametrize(
    "handle",
    [
        "kaggle:slug-only",
        "kaggle:a/b/c",
        "kaggle:a/b/versions/x",
        "kaggle:a/b/versions/0",
        "kaggle:../b",
        "kaggle:",
    ],
)
def test_kaggle_malformed_handle(handle: str) -> None:
    with pytest.raises(DataError, match="Expected kaggle:OWNER/SLUG or"):
        load_dataset(handle)


# --------------------------------------------------------------------------- builtin:photos


def test_photos_builtin_is_the_healthy_deterministic_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.config import DEFAULT_DATA
    from core.data.health import WARNING, health_report

    assert DEFAULT_DATA == "builtin:photos"
    info = BUILTINS["photos"].info()
    assert info["classes"] == ["cat", "coffee", "motorcycle", "rocket"]
    assert info["images"] == 120 and info["image_size"] >= 160

    hashes = []
    for home in ("a", "b"):  # generated twice from scratch: the same bytes
        monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path / home))
        folder = builtin_path("photos")
        hashes.append(_tree_hash(folder))
    assert hashes[0] == hashes[1]

    files = sorted(folder.rglob("*.jpg"))
    assert len(files) == info["images"]
    assert len({hashlib.sha256(p.read_bytes()).digest() for p in files}) == len(files)
    for name in info["classes"]:
        assert len(list((folder / name).glob("*.jpg"))) == info["images"] // len(info["classes"])
    for path in files:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert im.size == (info["image_size"], info["image_size"])

    index = load_dataset(DEFAULT_DATA)
    assert index.class_names == info["classes"] and not index.skipped_files
    assert [r for r in health_report(index) if r["level"] == WARNING] == []
