"""The Ray extra: features sharded over a cluster, train/worker --ray, faults.

The slow tests start a two-node cluster of one CPU each on this machine
(``ray.cluster_utils.Cluster``) and shut it down at the end of the module; they skip when the
extra is not installed (CI installs it and runs them in a step of their own).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.config import RunConfig

needs_ray = pytest.mark.skipif(
    find_spec("ray") is None,
    reason="the Ray extra is not installed (pip install -r requirements-ray.txt); "
    "CI runs these tests in a step of its own",
)
FACES = "builtin:faces"


def test_ray_flag_without_ray_says_how_to_install_it_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from core.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: import fails
    for argv in (
        ["features", "--data", FACES, "--image-size", "64", "--ray", "auto"],
        ["worker", "--ray", "auto", "--once"],
    ):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert "pip install -r requirements-ray.txt" in err, err


def test_features_ensured_in_this_process_are_in_the_cache_when_it_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from core.cluster.features import ensure_features
    from core.training import embeddings

    real_store = embeddings.store_cached

    def store_cached(key: str, features: np.ndarray) -> None:
        time.sleep(0.5)  # a busy disk: the pass's write outlives it
        real_store(key, features)

    monkeypatch.setattr(embeddings, "store_cached", store_cached)
    config = RunConfig(data=FACES, image_size=32, augment=False, mode="feature_extraction")
    entry = ensure_features(config, ray=False)
    assert not entry.cached and entry.runtime == "keras"
    cached = embeddings.load_cached(entry.cache_key)  # at once: ensured means written
    assert cached is not None and cached.shape[0] == entry.images


def test_checkpoint_files_travel_only_as_a_whole_checkpoint(tmp_path: Path) -> None:
    from core.cluster.runs import _changed_files, _folder_state

    (tmp_path / "checkpoint.weights.h5").write_bytes(b"w1")
    (tmp_path / "checkpoint.json").write_text('{"epoch": 1}')
    (tmp_path / "tmp-123-model.keras").write_bytes(b"half")  # a write in progress: never sent
    (tmp_path / "config.json").write_text("{}")  # the head's own file: never sent
    state = _folder_state(tmp_path)
    files, held = _changed_files(tmp_path, state, {})
    assert list(files) == ["checkpoint.weights.h5", "checkpoint.json"]  # metadata last
    assert held == {}
    seen = {**state, **held}
    # New weights without new metadata: the next epoch's checkpoint is being written.
    time.sleep(0.01)
    (tmp_path / "checkpoint.weights.h5").write_bytes(b"w2-longer")
    state = _folder_state(tmp_path)
    files, held = _changed_files(tmp_path, state, seen)
    assert files == {} and set(held) == {"checkpoint.weights.h5"}
    seen = {**state, **held}
    (tmp_path / "checkpoint.json").write_text('{"epoch": 2}')
    files, held = _changed_files(tmp_path, _folder_state(tmp_path), seen)
    assert files == {"checkpoint.weights.h5": b"w2-longer", "checkpoint.json": b'{"epoch": 2}'}


def test_shards_grow_to_the_measured_target_and_split_the_tail_evenly() -> None:
    from core.cluster.shards import MAX_SHARD_ROWS, PROBE_ROWS, TARGET_SHARD_S, ShardedPass

    sharded = ShardedPass(RunConfig(), "w", ["a.png"])
    assert sharded._next_rows([], 10_000, 2) == PROBE_ROWS  # nothing measured yet
    assert sharded._next_rows([], 10, 2) == 10
    per_image = 0.05
    assert sharded._next_rows([per_image], 100_000, 2) == int(TARGET_SHARD_S / per_image)
    assert sharded._next_rows([1e-6], 10**7, 2) == MAX_SHARD_ROWS
    assert sharded._next_rows([per_image], 301, 2) == 151  # the last wave: an even split
    assert ShardedPass(RunConfig(), "w", ["a"], shard_rows=7)._next_rows([1.0], 99, 2) == 7


@needs_ray
def test_ray_failures_become_one_line_errors_in_the_users_words(tmp_path: Path) -> None:
    from ray.exceptions import ActorDiedError, RayTaskError

    from core.cluster import ClusterError
    from core.cluster.runs import _lost_run
    from core.cluster.shards import _unwrap
    from core.errors import DataError
    from core.runs.store import RunStore

    unreadable = DataError("Cannot use image /data/cat.jpg: truncated or corrupt.")
    raised = RayTaskError("encode", "traceback", unreadable)
    assert _unwrap(raised, "the sharded feature pass") is unreadable  # the file, named
    other = _unwrap(RayTaskError("encode", "tb", MemoryError("no room")), "the sharded pass")
    assert isinstance(other, ClusterError)
    assert str(other) == "The sharded pass failed on the Ray cluster: MemoryError: no room"
    gone = _unwrap(ActorDiedError(), "the sharded feature pass")
    assert isinstance(gone, ClusterError) and "\n" not in str(gone)
    store = RunStore(tmp_path)
    run_id = store.create_run(RunConfig())
    status, error = _lost_run(store, run_id, raised)
    assert status == "failed" and error.endswith("DataError: " + str(unreadable))
    status, error = _lost_run(store, run_id, ActorDiedError())
    assert status == "interrupted" and "(epoch 0)" in error and "resume it" in error


def test_the_run_record_says_where_a_cluster_computed_it(tmp_path: Path) -> None:
    from core.runs.store import RunStore

    store = RunStore(tmp_path)
    run_id = store.create_run(RunConfig())
    assert store.result(run_id)["ray"] is None
    store.update(run_id, ray={"nodes": 2, "shards": 5})
    assert store.result(run_id)["ray"] == {"nodes": 2, "shards": 5}


def test_the_projection_spreads_compute_and_shards_but_not_start_up_or_the_driver() -> None:
    from core.bench.cluster import NODE_CORES, PROJECT_IMAGES, PROJECT_SHARD_ROWS, projection

    local = {"images": 3000, "images_per_s": 50.0, "seconds": 70.0, "prepare_s": 10.0}
    on_ray = {"images": 3000, "compute_s": 100.0, "seconds": 80.0, "startup_s": 20.0, "shards": 10}
    p = projection(local, on_ray)
    assert p["per_shard_overhead_s"] == 2.0  # (80 - 20) s x 2 actors - 100 s, over 10 shards
    driver = 10.0 / 3000 * PROJECT_IMAGES
    assert p["driver_s"] == round(driver, 1)
    shards = PROJECT_IMAGES / PROJECT_SHARD_ROWS
    for n in (4, 16, 64):
        compute = PROJECT_IMAGES * (100.0 / 3000) / (n * NODE_CORES)
        expected = (20.0 + driver + compute + shards * 2.0 / n) / 3600
        assert p["cpu_nodes"][str(n)] == round(expected, 2)
    assert p["cpu_nodes"]["4"] > p["cpu_nodes"]["16"] > p["cpu_nodes"]["64"] > driver / 3600


def test_ray_figures_are_skipped_with_the_reason_without_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    from core.bench import cluster as bench_cluster

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )

    def no_data() -> dict[str, Any]:
        raise AssertionError("no data is generated for skipped figures")

    figures = bench_cluster.ray_figures([18, 19], no_data, 64, lambda _line: None)
    assert set(figures) == {"ray_overhead", "ray_actor_kill"}
    assert all("requirements-ray.txt" in f["skipped"] for f in figures.values())
    assert bench_cluster.format_lines(figures)[0].startswith("18. feature pass on Ray: skipped (")
    assert bench_cluster.ray_figures([5], no_data, 64, lambda _line: None) == {}


def test_candidate_passes_run_at_once_and_come_back_in_the_order_they_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from core.cluster import features
    from core.errors import StudioError
    from core.training.search import Candidate

    started = {size: threading.Event() for size in (40, 48, 56)}

    def fake_pass(config: RunConfig, *, ray: bool, share_nodes: bool) -> Any:
        assert ray and share_nodes  # each pass takes actors as they come up
        started[config.image_size].set()
        if config.image_size == 40:  # ends last, and only once the others have started
            assert started[48].wait(10) and started[56].wait(10), "passes ran one at a time"
            time.sleep(0.2)
        elif config.image_size == 56:
            raise StudioError("no node could read the files")
        return features.FeatureEntry(10, 2, 2, f"key{config.image_size}", 1.0, 10.0, False)

    monkeypatch.setattr(features, "ensure_features", fake_pass)
    candidates = [Candidate("efficientnet_lite0", size, "imagenet") for size in (40, 48, 56)]
    reported: list[tuple[int, str | None]] = []
    passes = features.candidate_passes(
        [(c, RunConfig(image_size=c.image_size)) for c in candidates],
        done=lambda c, entry, error: reported.append(
            (c.image_size, entry.cache_key if entry else str(error))
        ),
    )
    ended = [(c.image_size, None if error is None else str(error)) for c, error in passes]
    assert [size for size, _ in ended[:2]] in ([48, 56], [56, 48]) and ended[2] == (40, None)
    assert dict(ended)[56] == "no node could read the files" and dict(ended)[48] is None
    assert sorted(reported) == [(40, "key40"), (48, "key48"), (56, "no node could read the files")]


def test_the_search_settles_candidates_in_the_order_their_passes_end(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from core.errors import StudioError
    from core.training import search as search_mod
    from tests.helpers import write_pngs

    for name in ("cat", "dog"):
        write_pngs(tmp_path / "data" / name, 4)

    def fake_run(_searcher: Any, c: Any) -> None:  # heads "trained" on cached features
        c.status, c.val_accuracy, c.val_loss = search_mod.OK, c.image_size / 100, 0.5
        c.latency_ms, c.params, c.size_mb = 1.0, 10, 0.1

    def passes(pending: list[Any]) -> Any:
        assert [c.image_size for c in pending] == [72, 56, 40]  # all handed over at once
        yield pending[2], None
        yield pending[0], StudioError("the pass failed on the Ray cluster")
        yield pending[1], None

    monkeypatch.setattr(search_mod._Searcher, "run", fake_run)
    seen: list[list[tuple[int, str]]] = []
    settled: list[Any] = []

    def progress(c: Any) -> None:
        settled.append(c)
        seen.append([(x.image_size, x.status) for x in search_mod.rank_candidates(settled)])

    result = search_mod.search(
        str(tmp_path / "data"), backbones="efficientnet_lite0", sizes=[72, 56, 40],
        progress=progress, feature_passes=passes,
    )  # fmt: skip
    # The ranked table fills as passes end: one candidate, then two, then all three.
    assert seen == [
        [(40, "ok")],
        [(40, "ok"), (72, "failed: the pass failed on the Ray cluster")],
        [(56, "ok"), (40, "ok"), (72, "failed: the pass failed on the Ray cluster")],
    ]
    assert [c.image_size for c in result.candidates] == [56, 40, 72]
    table = search_mod.format_ranking(settled[:1])
    assert table.splitlines()[0] == "ranked so far (1 settled):" and " 40 " in table


# -- on a two-node cluster --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A Ray cluster of two nodes of one CPU each, on this machine; its address."""
    if find_spec("ray") is None:
        pytest.skip("the Ray extra is not installed (pip install -r requirements-ray.txt)")
    import ray
    from ray.cluster_utils import Cluster

    nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "object_store_memory": 2**28},
    )
    try:
        nodes.add_node(num_cpus=1, object_store_memory=2**28)
        ray.init(address=nodes.address, logging_level="ERROR", log_to_driver=False)
        yield nodes.address
    finally:
        ray.shutdown()
        nodes.shutdown()


def _cli_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    from core.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


def _local_features(config: RunConfig, paths: list[str]) -> np.ndarray:
    from core.training.embeddings import compute_features
    from core.training.model import build_model

    return compute_features(build_model(config, 2), paths)


@needs_ray
@pytest.mark.slow
def test_features_on_ray_use_both_nodes_and_warm_a_local_train(
    cluster: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from core.data import load_dataset
    from core.training.embeddings import load_cached

    argv = ["features", "--data", FACES, "--image-size", "64", "--json"]
    entry = _cli_json([*argv, "--ray", cluster, "--shard-size", "25"], capsys)
    assert entry["ray_nodes"] == 2 and entry["shards"] >= 4 and entry["cached"] is False
    assert entry["images"] == entry["train_images"] + entry["val_images"] > 0
    # The same key a local pass gives, holding what a local pass computes.
    assert _cli_json(argv, capsys)["cached"] is True
    config = RunConfig(data=FACES, image_size=64, augment=False)
    data = load_dataset(FACES, val_split=config.val_split, seed=config.seed)
    paths = [*data.train_paths, *data.val_paths]
    on_ray = load_cached(entry["cache_key"])
    assert on_ray is not None
    np.testing.assert_allclose(on_ray, _local_features(config, paths), atol=1e-5)
    # A local run of the same config finds its features in the cache.
    result = _cli_json(
        ["train", "--data", FACES, "--image-size", "64", "--no-augment", "--epochs", "1",
         "--runs-dir", str(tmp_path), "--json"],
        capsys,
    )  # fmt: skip
    assert result["status"] == "completed" and result["stage"]["cached"] is True
    assert result["ray"] is None  # trained here, features from the cache


@needs_ray
@pytest.mark.slow
def test_augmented_views_on_ray_land_under_the_key_a_local_run_looks_up(
    cluster: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from core.data import load_dataset
    from core.training.embeddings import cache_key, load_cached

    entry = _cli_json(
        ["features", "--data", FACES, "--image-size", "40", "--views", "3", "--ray", cluster,
         "--json"],
        capsys,
    )  # fmt: skip
    assert entry["views_cache_key"] and entry["images"] == 2 * entry["train_images"] + (
        entry["train_images"] + entry["val_images"]
    )
    config = RunConfig(data=FACES, image_size=40, augment=True, augment_views=3)
    data = load_dataset(FACES, val_split=config.val_split, seed=config.seed)
    # The key a local run of that config computes for its augmented views.
    assert entry["views_cache_key"] == cache_key(config, 40, data.train_paths, views=3)
    views = load_cached(entry["views_cache_key"])
    clean = load_cached(entry["cache_key"])
    assert views is not None and clean is not None
    assert views.shape == (2, len(data.train_paths), clean.shape[1])
    # Augmented copies, not the images again. (Their exact draws are not compared: the local
    # pipeline's own draws vary from run to run under tf.data's parallel map.)
    assert not np.allclose(views[0], clean[: len(data.train_paths)], atol=1e-3)


@needs_ray
@pytest.mark.slow
def test_a_node_that_cannot_read_the_files_gets_their_bytes_and_the_same_features(
    cluster: str, tmp_path: Path
) -> None:
    from core.cluster.shards import Shard, ShardedPass, ShardEncoder
    from core.files import sha256_file
    from core.training.model import resolve_backbone
    from tests.helpers import write_pngs

    paths = write_pngs(tmp_path / "imgs", 6, side=40)
    config = RunConfig(image_size=32, augment=False)
    weights_id = resolve_backbone(config).weights_id
    encoder = ShardEncoder(config.to_json(indent=None), weights_id, threads=None)  # in-process
    assert encoder.sees(paths[0], sha256_file(paths[0]))
    assert not encoder.sees(str(tmp_path / "elsewhere.png"), sha256_file(paths[0]))
    sharded = ShardedPass(config, weights_id, paths)
    shipped = sharded._payload(Shard(0, 1, 5), ships=True)
    assert shipped.paths is None and shipped.images is not None
    assert [b for _, b in shipped.images] == [Path(p).read_bytes() for p in paths[1:5]]
    by_bytes = encoder.encode(shipped).features
    by_path = encoder.encode(sharded._payload(Shard(1, 1, 5), ships=False)).features
    np.testing.assert_array_equal(by_bytes, by_path)
    np.testing.assert_allclose(by_path, _local_features(config, paths)[1:5], atol=1e-5)


@needs_ray
@pytest.mark.slow
def test_a_killed_actor_costs_its_shard_and_every_image_is_computed_once(cluster: str) -> None:
    from core.cluster.shards import ShardedPass
    from core.data import load_dataset
    from core.training.model import resolve_backbone

    config = RunConfig(data=FACES, image_size=48, augment=False)
    data = load_dataset(FACES)
    paths = [*data.train_paths, *data.val_paths][:80]
    killed: list[int] = []

    def kill_once(sharded: ShardedPass) -> None:
        if not killed and sharded.done_shards == 1:  # mid-pass: both actors busy again
            killed.append(sharded.pids[0])
            os.kill(sharded.pids[0], signal.SIGKILL)

    sharded = ShardedPass(
        config, resolve_backbone(config).weights_id, paths, shard_rows=20, progress=kill_once
    )
    result = sharded.run()
    assert killed and result.restarts >= 1
    assert result.features.shape[0] == len(paths)
    assert sum(result.node_rows.values()) >= len(paths)  # a shard redone counts twice here...
    # ...but every image's row is there exactly once, equal to the local pass.
    np.testing.assert_allclose(result.features, _local_features(config, paths), atol=1e-5)


@needs_ray
@pytest.mark.slow
def test_an_actor_killed_after_its_last_shard_still_counts_as_restarted(cluster: str) -> None:
    # No shard result comes from its new process: only the pass's last question sees it.
    from core.cluster.shards import ShardedPass
    from core.data import load_dataset
    from core.training.model import resolve_backbone

    config = RunConfig(data=FACES, image_size=48, augment=False)
    data = load_dataset(FACES)
    paths = [*data.train_paths, *data.val_paths][:40]
    killed: list[int] = []

    def kill_at_the_end(sharded: ShardedPass) -> None:
        if sharded.done_shards == 2:  # the last of 2 shards of 20
            killed.append(sharded.pids[0])
            os.kill(sharded.pids[0], signal.SIGKILL)

    sharded = ShardedPass(
        config, resolve_backbone(config).weights_id, paths, shard_rows=20,
        progress=kill_at_the_end,
    )  # fmt: skip
    result = sharded.run()
    assert killed and result.restarts == 1 and result.shards == 2
    np.testing.assert_allclose(result.features, _local_features(config, paths), atol=1e-5)


@needs_ray
@pytest.mark.slow
def test_train_on_ray_reaches_the_local_runs_accuracy(
    cluster: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from core.training.embeddings import embedding_cache_dir

    argv = ["train", "--data", FACES, "--image-size", "80", "--no-augment", "--epochs", "2",
            "--runs-dir", str(tmp_path), "--json"]  # fmt: skip
    on_ray = _cli_json([*argv, "--ray", cluster], capsys)
    assert on_ray["status"] == "completed"
    assert on_ray["ray"]["nodes"] == 2 and on_ray["ray"]["shards"] >= 2
    for entry in embedding_cache_dir().glob("*.npy"):
        entry.unlink()  # the local run computes its features itself
    local = _cli_json(argv, capsys)
    assert local["stage"]["cached"] is False and local["ray"] is None
    assert abs(on_ray["best_val_accuracy"] - local["best_val_accuracy"]) <= 0.02


@needs_ray
@pytest.mark.slow
def test_search_on_ray_computes_each_candidates_features_on_the_cluster(
    cluster: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from core.cli import main

    argv = ["search", "--data", FACES, "--backbones", "efficientnet_lite0", "--sizes", "72,40",
            "--ray", cluster, "--json"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "efficientnet_lite0 @ 72 px: features on Ray (" in captured.err
    assert "efficientnet_lite0 @ 40 px: features on Ray (" in captured.err
    # Both passes were submitted at once; the ranked table filled as each ended: one row after
    # the first pass, both after the second.
    emitted = [
        line for line in captured.err.splitlines()
        if "features on Ray (" in line or line.startswith("ranked so far")
    ]  # fmt: skip
    assert [line.startswith("ranked so far") for line in emitted] == [False, True, False, True]
    assert emitted[1] == "ranked so far (1 settled):" and emitted[3] == "ranked so far (2 settled):"
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert [c["status"] for c in result["candidates"]] == ["ok", "ok"]
    # The search itself found every candidate's features in the cache: the cluster made them.
    assert all(c["features_cached"] for c in result["candidates"])
    assert result["features_computed"] == 0


@needs_ray
@pytest.mark.slow
def test_cpu_nodes_run_the_checked_runtime_without_tensorflow_and_match_the_local_pass(
    cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    from core.cluster.features import ensure_features
    from core.cluster.shards import ShardedPass
    from core.data import load_dataset
    from core.training.embeddings import (
        cache_key,
        embedding_cache_dir,
        features_for,
        load_cached,
        wait_for_stores,
    )
    from core.training.litert import RUNTIME_ENV
    from core.training.model import build_model

    monkeypatch.delenv(RUNTIME_ENV)  # the suite's default (Keras) off: the runtime is tested
    config = RunConfig(data=FACES, image_size=56, augment=False)
    data = load_dataset(FACES, val_split=config.val_split, seed=config.seed)
    paths = [*data.train_paths, *data.val_paths]
    # The local pass converts the runtime (as a large enough pass does) and runs on it.
    request: dict[str, Any] = {"convert": True}
    local, _ = features_for(config, build_model(config, 2), paths, runtime=request)
    assert request["runtime"] == "litert"
    key = cache_key(config, 56, paths)
    wait_for_stores()  # the pass writes the cache on a thread
    (embedding_cache_dir() / f"{key}.npy").unlink()
    loaded: list[bool] = []

    def look(sharded: ShardedPass) -> None:
        if not loaded:
            pings = ray.get([a.ping.remote() for a in sharded.actors])
            loaded.extend(p["tensorflow"] for p in pings)

    entry = ensure_features(config, ray=True, shard_rows=25, progress=look)
    assert entry.runtime == "litert" and entry.ray_nodes == 2 and entry.cache_key == key
    assert loaded == [False, False]  # neither node's actor imported TensorFlow
    on_ray = load_cached(key)
    assert on_ray is not None
    np.testing.assert_allclose(on_ray, local, atol=1e-5)


@needs_ray
@pytest.mark.slow
def test_features_json_stays_one_object_on_stdout_when_an_actor_is_killed(
    cluster: str, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.cli import cluster as cli_cluster
    from core.cli import main

    killed: list[int] = []
    line = cli_cluster._shard_line

    def kill_after_first(sharded: Any) -> None:
        line(sharded)
        if not killed:
            killed.append(sharded.pids[0])
            os.kill(sharded.pids[0], signal.SIGKILL)

    monkeypatch.setattr(cli_cluster, "_shard_line", kill_after_first)
    argv = ["features", "--data", FACES, "--image-size", "88", "--shard-size", "10",
            "--ray", cluster, "--json"]  # fmt: skip
    assert main(argv) == 0
    out = capfd.readouterr().out
    entry = json.loads(out)  # the whole of stdout: nothing of Ray's in it
    assert killed and entry["restarts"] >= 1 and entry["ray_nodes"] >= 1


@needs_ray
@pytest.mark.slow
def test_worker_on_ray_trains_two_queued_runs_once_each_with_their_curves(
    cluster: str, tmp_path: Path
) -> None:
    from core.cli import main
    from core.runs.store import RunStore
    from tests.helpers import TINY

    store = RunStore(tmp_path)
    ids = [store.create_run(TINY.with_changes(seed=s), claimed=False) for s in (1, 2)]
    assert main(["worker", "--ray", cluster, "--runs-dir", str(tmp_path), "--idle-exit", "1"]) == 0
    for run_id in ids:
        result = store.result(run_id)
        assert result["status"] == "completed", result["error"]
        assert result["history"]["epoch"] == list(range(1, TINY.planned_epochs + 1))
        assert store.batches(run_id)  # the batch curve came back too
        assert Path(result["model_path"]).is_file()
        assert Path(result["model_path"]).parent == store.run_dir(run_id)
        assert result["ray"]["nodes"] == 1 and result["ray"]["pid"] > 0
    assert not store.live_workers()


@needs_ray
@pytest.mark.slow
def test_stop_reaches_the_task_and_a_lost_node_leaves_a_resumable_run(
    cluster: str, tmp_path: Path
) -> None:
    from core.cluster.runs import ray_executor
    from core.runs.store import RunStore
    from core.training.checkpoint import META_FILE
    from tests.helpers import TINY

    store = RunStore(tmp_path)
    execute = ray_executor()
    config = TINY.with_changes(mode="feature_extraction", feature_cache="off", epochs=30)

    def when(condition: Any, then: Any) -> threading.Thread:
        def wait() -> None:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and not condition():
                time.sleep(0.2)
            then()

        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        return thread

    # Stop: the store's flag (the Stop button) reaches the task on its node.
    stopped = store.create_run(config, claimed=False)
    when(lambda: store.epochs(stopped), lambda: store.request_stop(stopped))
    assert execute(store, stopped, threading.Event(), None) == "stopped"
    assert 1 <= len(store.epochs(stopped)) < 30

    # The process training a run dies (as with its node): interrupted, checkpoint on the head.
    lost = store.create_run(config.with_changes(epochs=10), claimed=False)
    folder = store.run_dir(lost)

    def kill() -> None:
        os.kill(store.result(lost)["ray"]["pid"], signal.SIGKILL)

    when(lambda: (folder / META_FILE).is_file(), kill)
    assert execute(store, lost, threading.Event(), None) == "interrupted"
    result = store.result(lost)
    assert "resume it" in result["error"]
    done = json.loads((folder / META_FILE).read_text())["epoch"]
    assert done >= 1
    kept = [e["t"] for e in store.epochs(lost)][:done]
    # Resume continues from that checkpoint on whichever node Ray picks: the epochs it backs
    # are kept as they were, not trained again.
    store.requeue(lost, claimed=False)
    assert execute(store, lost, threading.Event(), None) == "completed"
    assert store.result(lost)["history"]["epoch"] == list(range(1, 11))
    assert [e["t"] for e in store.epochs(lost)][:done] == kept


HOLD_CLUSTER = """
import sys, time
from ray.cluster_utils import Cluster
nodes = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 1, "include_dashboard": False, "object_store_memory": 2**28})
nodes.add_node(num_cpus=1, object_store_memory=2**28)
print(nodes.address, flush=True)
while True:
    time.sleep(1)
"""


@needs_ray
@pytest.mark.slow
def test_a_cluster_that_goes_away_is_one_clear_error_and_leaves_no_cache_entry(
    tmp_path: Path,
) -> None:
    import contextlib
    import subprocess

    from core.bench.procstat import descendants
    from core.training.embeddings import embedding_cache_dir

    before = set(embedding_cache_dir().iterdir())
    # A cluster of its own, in its own process group: the test ends it whole, mid-pass.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_CLUSTER], stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        address = holder.stdout.readline().strip()
        driver = subprocess.Popen(
            # 160 px in shards of 5: the pass outlasts the actors' processes, which live on
            # for a moment once their node is gone (direct actor calls need no head).
            [sys.executable, "-m", "core", "features", "--data", FACES, "--image-size", "160",
             "--ray", address, "--shard-size", "5", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert driver.stderr is not None
        lines = []
        for line in driver.stderr:
            lines.append(line)
            if line.startswith("shard 2:"):
                # Every process of the cluster: its group, and the workers below it that left
                # the group (they could finish the pass by direct actor calls).
                below = descendants(holder.pid)
                os.killpg(holder.pid, signal.SIGKILL)
                for pid in below:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                break
        out, err = driver.communicate(timeout=300)
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert driver.returncode == 1 and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: The Ray cluster stopped answering"), err[-2000:]
    assert "Traceback" not in err
    assert set(embedding_cache_dir().iterdir()) == before  # nothing written, not even a temp
