"""The activation cache at the freeze cut on disk: chunks, manifest, memory maps, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError
from core.training import cut as cut_cache
from tests.helpers import write_pngs

ROOT = Path(__file__).resolve().parents[3]
SIDE = 16


def _model(scale: float = 1.0):
    import keras

    pixels = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Rescaling(scale / 255.0)(pixels)
    return keras.Model(pixels, keras.layers.Conv2D(2, 3, strides=4, kernel_initializer="ones")(x))


def _store(folder: Path, rows: int, dtype: str = "float16", identity: str = "a"):
    return cut_cache.ActivationStore(
        folder, (4, 4, 2), rows, {"files": identity}, dtype=dtype, chunk=4
    )


def test_the_chunk_size_and_dtype_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cut_cache.CHUNK_ENV, "7")
    assert cut_cache.chunk_rows() == 7
    monkeypatch.setenv(cut_cache.CHUNK_ENV, "lots")
    with pytest.raises(ConfigError, match="TRANSFER_STUDIO_ACTIVATION_CHUNK='lots'"):
        cut_cache.chunk_rows()
    monkeypatch.delenv(cut_cache.CHUNK_ENV)
    assert cut_cache.chunk_rows() == cut_cache.CHUNK_ROWS
    assert cut_cache.activation_dtype() == "float16"  # the default: half the disk and reads
    monkeypatch.setenv(cut_cache.DTYPE_ENV, "float64")
    with pytest.raises(ConfigError, match="expected float16 or float32"):
        cut_cache.activation_dtype()


@pytest.mark.slow
def test_chunks_and_a_manifest_go_to_disk_and_are_read_back_through_memory_maps(
    tmp_path: Path,
) -> None:
    from core.training.embeddings import forward_once

    paths = write_pngs(tmp_path / "images", 10, side=SIDE)
    model = _model()
    expected = forward_once(model, paths, SIDE)
    store = _store(tmp_path / "acts", len(paths))
    seen: list[tuple[int, int]] = []
    store.fill(model, paths, SIDE, lambda done, total, **_: seen.append((done, total)))

    manifest = json.loads((tmp_path / "acts" / cut_cache.MANIFEST).read_text())
    assert [c["rows"] for c in manifest["chunks"]] == [4, 4, 2]
    assert all((tmp_path / "acts" / c["file"]).is_file() for c in manifest["chunks"])
    assert {c["dtype"] for c in manifest["chunks"]} == {"float16"}
    assert all(isinstance(m, np.memmap) for m in store._maps)  # read in place, never loaded
    assert seen[0] == (0, 10) and seen[-1] == (10, 10)
    np.testing.assert_allclose(store[0:10], expected, rtol=1e-3)
    np.testing.assert_allclose(store.take(np.array([1, 5, 9])), expected[[1, 5, 9]], rtol=1e-3)
    record = store.record()
    assert record["dtype"] == "float16" and record["chunks"] == 3 and record["memory_mapped"]
    assert record["reused_chunks"] == 0 and record["computed_images"] == 10

    labels = list(range(10))
    rows = [
        (x.numpy(), y.numpy())
        for x, y in store.dataset(2, 10, labels[2:], 3, training=True, seed=1)
    ]
    got = np.concatenate([y for _x, y in rows])
    assert sorted(got.tolist()) == labels[2:]  # every row once, each with its own label
    for x, y in rows:
        np.testing.assert_allclose(x, expected[y], rtol=1e-3)


@pytest.mark.slow
def test_a_chunk_float16_cannot_hold_is_kept_in_float32(tmp_path: Path) -> None:
    paths = write_pngs(tmp_path / "images", 6, side=SIDE)
    store = _store(tmp_path / "acts", len(paths))
    store.fill(_model(scale=1e6), paths, SIDE)  # values up to ~5e6: beyond float16's 65,504
    assert {c.dtype for c in store.chunks} == {"float32"}
    assert store.record()["dtype"] == "float32"
    assert np.isfinite(store[0:6]).all()


@pytest.mark.slow
def test_a_pass_resumes_after_its_last_complete_chunk_and_restarts_for_other_inputs(
    tmp_path: Path,
) -> None:
    paths = write_pngs(tmp_path / "images", 10, side=SIDE)
    model = _model()
    folder = tmp_path / "acts"
    whole = _store(folder, len(paths))
    whole.fill(model, paths, SIDE)
    expected = whole[0:10]
    # A kill after chunk 2 was written but before the manifest listed it, and a temporary.
    manifest = json.loads((folder / cut_cache.MANIFEST).read_text())
    manifest["chunks"] = manifest["chunks"][:1]
    (folder / cut_cache.MANIFEST).write_text(json.dumps(manifest))
    (folder / "tmp-1-2-chunk-00002.npy").write_bytes(b"half")
    first = (folder / "chunk-00000.npy").stat()

    again = _store(folder, len(paths))
    seen: list[tuple[int, int, int]] = []
    again.fill(model, paths, SIDE, lambda d, t, **more: seen.append((d, t, more["reused"])))
    assert again.reused == 1 and again.computed == 6
    assert seen[0] == (4, 10, 4)  # the pass starts after the stored chunk
    kept = (folder / "chunk-00000.npy").stat()
    assert (kept.st_ino, kept.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # not rewritten
    assert not list(folder.glob("tmp-*"))
    np.testing.assert_array_equal(again[0:10], expected)

    other = _store(folder, len(paths), identity="b")  # other files: nothing is reused
    other.fill(model, paths, SIDE)
    assert other.reused == 0 and other.computed == 10


@pytest.mark.slow
def test_the_pass_reads_images_when_the_disk_has_no_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.config import RunConfig
    from core.training.model import build_model

    config = RunConfig(
        backbone="mobilenet_v2", weights="none", mode="fine_tuning", image_size=32, augment=False
    )
    built = build_model(config, 3)
    cut, reason = cut_cache.plan_cut(config, built, 10, tmp_path / "activations")
    assert cut is not None and reason is None and cut.dtype == "float16"
    monkeypatch.setattr(cut_cache, "_free_bytes", lambda _folder: cut_cache.DISK_MARGIN_BYTES)
    cut, reason = cut_cache.plan_cut(config, built, 10, tmp_path / "activations")
    assert cut is None and reason is not None
    assert "free some space" in reason and "on disk" in reason


def _manifest_chunks(runs: Path) -> int:
    for path in (runs / "runs").glob(f"*/{cut_cache.ACTIVATION_DIR}/{cut_cache.MANIFEST}"):
        try:
            return len(json.loads(path.read_text())["chunks"])
        except (OSError, ValueError):
            return 0
    return 0


@pytest.mark.slow
def test_kill_9_during_the_cut_pass_resumes_from_its_last_chunk(tmp_path: Path) -> None:
    from core.data.generated import generated_path
    from core.runs.store import COMPLETED, RunStore

    data = generated_path(2, 150, 32)
    env = {**os.environ, cut_cache.CHUNK_ENV: "4"}
    train = [
        sys.executable, "-m", "core", "train", "--data", str(data), "--mode", "fine_tuning",
        "--image-size", "64", "--epochs", "1", "--fine-tune-epochs", "1", "--no-augment",
        "--json", "--runs-dir",
    ]  # fmt: skip
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [*train, str(killed)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while _manifest_chunks(killed) < 5:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the pass never stored 5 chunks"
            time.sleep(0.01)
        proc.send_signal(signal.SIGSTOP)  # frozen: what is on disk is what the kill leaves
        # A signal arrives when it arrives: until the child is reported stopped (every thread)
        # it may store one more chunk, which the resume would then rightly reuse.
        _, status = os.waitpid(proc.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        stored = _manifest_chunks(killed)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 5 <= stored < 75, "the kill landed during the pass"
    run_id = RunStore(killed).list_runs()[0]["run_id"]  # reopened: the run is interrupted
    resumed = subprocess.run(
        [sys.executable, "-m", "core", "resume", run_id, "--runs-dir", str(killed), "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    after = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert after["status"] == COMPLETED
    store = after["phases"][-1]["activation_store"]
    assert store["reused_chunks"] == stored  # the stored chunks were not recomputed
    assert store["computed_images"] == 300 - 4 * stored
    assert not (killed / "runs" / run_id / cut_cache.ACTIVATION_DIR).exists()  # completed

    whole = subprocess.run(
        [*train, str(tmp_path / "whole")], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert whole.returncode == 0, whole.stderr
    expected = json.loads(whole.stdout.strip().splitlines()[-1])
    assert expected["phases"][-1]["activation_store"]["reused_chunks"] == 0
    assert after["history"]["val_accuracy"] == expected["history"]["val_accuracy"]
    np.testing.assert_allclose(after["history"]["loss"], expected["history"]["loss"], rtol=1e-4)


def test_a_resumed_pass_rates_only_the_images_it_runs() -> None:
    from core.training.embeddings import describe_stage

    record = describe_stage(3000, 4000, time.time() - 10.0, skipped=2000)
    assert record["images_per_s"] == pytest.approx(100, rel=0.05)  # not 300: 2,000 were stored
    assert record["eta_s"] == pytest.approx(10, rel=0.05)


@pytest.mark.slow
def test_one_off_passes_do_not_cache_the_decoded_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read once, a cache only holds memory: up to 2 GiB of a 25,000-image pass at 160 px.
    import tensorflow as tf

    from core.data.pipeline import make_dataset
    from core.training.embeddings import forward_once

    cached: list[object] = []
    original = tf.data.Dataset.cache

    def spy(self: tf.data.Dataset, *args: object, **kwargs: object) -> tf.data.Dataset:
        cached.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tf.data.Dataset, "cache", spy)
    paths = write_pngs(tmp_path / "images", 4, side=SIDE)
    forward_once(_model(), paths, SIDE)
    _store(tmp_path / "acts", len(paths)).fill(_model(), paths, SIDE)
    assert cached == []
    make_dataset(paths, [0, 1, 0, 1], SIDE, 2, training=True)  # epochs: decoded once, cached
    assert len(cached) == 1
