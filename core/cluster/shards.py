"""The frozen feature pass over a Ray cluster: shards of the ordered file list on actors.

One ``ShardEncoder`` actor per node (per GPU on a GPU node) loads the backbone once and then
takes shard after shard: a contiguous slice of the ordered file list, as paths when the node
sees the driver's files (checked once per actor on a file's digest), else as the files' bytes.
It runs the same pass a local run runs and returns the shard's rows; the driver puts them in
place by the shard's offset and checks that every image was computed exactly once.

Two kinds of actor. On a CPU node, when the driver holds the converted LiteRT runtime (checked
against Keras on the pass's own images, as a local pass checks it), a ``RuntimeEncoder``: the
converted file's bytes travel to it once and it decodes images (PIL, as the local pipeline
does) and runs the interpreter, with neither TensorFlow nor Keras loaded, so it is up in a
second or two. Otherwise (a GPU node, augmented views, no converted runtime) a
``ShardEncoder``: TensorFlow and the Keras backbone, ``core.training.embeddings.forward_once``
with the runtime the local pass would pick.

Shards are sized by measurement: the first shards are small (``PROBE_ROWS``), later ones hold as
many images as the measured per-image time fits in ``TARGET_SHARD_S`` (long enough that the
per-shard overhead stays small, short enough that a lost actor costs little), never more than
an even split of what is left, so the last wave ends together.

Augmented views are one job on one actor, not sharded: their random draws follow one seeded
sequence over the whole list, and the cache key promises those draws (a local pass gives the
same rows). It runs beside the clean shards.

Faults: actors restart (``MAX_RESTARTS``) and Ray retries the call they were running
(``max_task_retries``), so a killed worker process costs its shard's time, not the pass. A
cluster that goes away ends the pass with a ``ClusterError``; nothing is returned, so nothing
is cached.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.cluster import ClusterError, alive_nodes, lost_cluster, require_ray, worker_env
from core.config import RunConfig
from core.errors import StudioError
from core.files import sha256_file

__all__ = [
    "RuntimeEncoder",
    "RuntimeFile",
    "Shard",
    "ShardEncoder",
    "ShardResult",
    "ShardedFeatures",
    "ShardedPass",
]

PROBE_ROWS = 64  # the first shard of each actor: measures the per-image time
TARGET_SHARD_S = 30.0  # a later shard's planned seconds
MAX_SHARD_ROWS = 4096
MAX_RESTARTS = 3  # a crashing actor is restarted (and its call retried) this many times
FINAL_PING_S = 15.0  # a pass's last question to its actors (a restart loads TensorFlow again)
DECODE_BATCH = 32  # images a ``RuntimeEncoder`` decodes ahead of the interpreter


@dataclass(frozen=True)
class RuntimeFile:
    """The converted LiteRT runtime a driver checked, for its CPU nodes' ``RuntimeEncoder``s."""

    content: bytes
    digest: str  # SHA-256 of ``content``: what the driver checked is what the nodes run
    image_size: int


@dataclass
class Shard:
    """A slice ``[start, stop)`` of the ordered list; ``views > 0``: that many augmented views
    of every image of the slice instead of the clean pass."""

    index: int
    start: int
    stop: int
    views: int = 0
    convert: bool = False  # may the actor convert the LiteRT runtime (a pass large enough)
    paths: list[str] | None = None
    images: list[tuple[str, bytes]] | None = None  # (file suffix, bytes): no shared filesystem
    runtime: list[Any] | None = None  # for a ``RuntimeEncoder``: [reference to its RuntimeFile]


@dataclass
class ShardResult:
    """What an actor returns for a shard."""

    index: int
    features: np.ndarray
    seconds: float  # the pass itself, on the actor
    node: str
    pid: int


@dataclass
class ShardedFeatures:
    """The result of a sharded pass."""

    features: np.ndarray  # (n, width): the clean pass, in the list's order (empty: not asked)
    augmented: np.ndarray | None  # (views - 1, n_train, width), or None
    shards: int  # shards computed (the augmented job counts as one)
    nodes: int  # nodes whose actors computed at least one shard
    actors: int
    restarts: int  # actor processes that were replaced during the pass
    seconds: float
    shipped_bytes: int  # image bytes sent to actors that could not read the driver's files
    node_rows: dict[str, int] = field(default_factory=dict)
    startup_s: float = 0.0  # until the last actor that joined was up
    compute_s: float = 0.0  # the actors' seconds inside shards, summed


class _Encoder:
    """What both kinds of actor answer besides ``encode``."""

    def ping(self) -> dict[str, Any]:
        """This actor's node and process (a restarted actor has a new pid), and whether it
        loaded TensorFlow."""
        import ray

        return {
            "node": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "tensorflow": "tensorflow" in sys.modules,
        }

    def sees(self, path: str, digest: str) -> bool:
        """Whether this node reads ``path`` as the driver does (a shared filesystem)."""
        try:
            return sha256_file(path) == digest
        except OSError:
            return False


class RuntimeEncoder(_Encoder):
    """A CPU node's light actor: the driver's converted runtime, images decoded as the local
    pipeline decodes them (``core.data.images.load_rgb``), no TensorFlow."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads or os.cpu_count() or 1
        self.pool = ThreadPoolExecutor(self.threads)  # PIL decodes outside the GIL
        self.extractor: Any = None
        self.size = 0

    def _load(self, shipped: list[Any] | None) -> None:
        """The runtime, from the object store, on the first shard (a restarted actor loads it
        again from the shard it retries). ``shipped``: ``[reference to the RuntimeFile]``, in a
        list so that Ray hands the reference over rather than resolving it before the call."""
        import ray

        from core.runs.litert_runtime import LiteRTExtractor

        if self.extractor is not None:
            return
        if not shipped:
            raise ClusterError("A runtime actor got a shard without the converted runtime.")
        runtime: RuntimeFile = ray.get(shipped[0])
        if hashlib.sha256(runtime.content).hexdigest() != runtime.digest:
            raise ClusterError(
                "The converted feature runtime arrived damaged on a Ray node (its SHA-256 "
                "differs from the driver's): run the command again."
            )
        self.size = runtime.image_size
        self.extractor = LiteRTExtractor(None, self.threads, content=runtime.content)

    def encode(self, shard: Shard) -> ShardResult:
        """The shard's clean features ``(rows, width)`` (augmented views need Keras: never
        planned here)."""
        from core.data.images import decoded_batches

        if shard.views:
            raise ClusterError("Augmented views need the Keras backbone, not the runtime actor.")
        started = time.perf_counter()
        self._load(shard.runtime)
        sources: list[Any] = (
            [io.BytesIO(data) for _, data in shard.images]
            if shard.images is not None
            else list(shard.paths or [])
        )
        width = self.extractor.feature_shape
        out = np.empty((len(sources), *width), np.float32)
        done = 0
        for batch in decoded_batches(sources, self.size, DECODE_BATCH, self.pool):
            out[done : done + len(batch)] = self.extractor(batch.astype(np.float32))
            done += len(batch)
        info = self.ping()
        return ShardResult(
            shard.index, out, time.perf_counter() - started, info["node"], info["pid"]
        )


class ShardEncoder(_Encoder):
    """A Ray actor's state: one backbone, loaded once, run over shard after shard."""

    def __init__(self, config_json: str, weights_id: str | None, threads: int | None) -> None:
        if threads:
            # Before TensorFlow starts its thread pools: this actor's share of the node's cores.
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
        from core.training.embeddings import feature_extractor
        from core.training.model import build_model, resolve_backbone

        self.config = RunConfig.from_json(config_json)
        backbone = resolve_backbone(self.config)
        if backbone.weights_id != weights_id:
            raise ClusterError(
                f"A Ray node holds other weights for {self.config.backbone} than the driver "
                f"({backbone.weights_id} here, {weights_id} there): its features would not match "
                "the cache key. Install the same weights on every node."
            )
        self.built = build_model(self.config, 2, backbone)
        self.model = feature_extractor(self.built)
        self.convert = False
        self.runtime: Any = None  # the converted runtime, once the first shard chose it
        self.runtime_info: dict[str, Any] = {}
        self.threads = threads

    def _pick(self, sample: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
        """The runtime the local pass would choose (``features_for``'s rule), chosen once."""
        import keras

        from core.training import litert
        from core.training.embeddings import runtime_identity

        if self.runtime_info:
            return self.runtime
        identity = runtime_identity(self.built)
        import tensorflow as tf

        if identity is None or keras.mixed_precision.global_policy().compute_dtype != "float32":
            self.runtime_info = {"runtime": "keras"}
        elif tf.config.list_logical_devices("GPU"):
            self.runtime_info = {"runtime": "keras", "reason": "a GPU runs the pass"}
        else:
            converted = (litert.runtime_dir() / f"{litert.runtime_key(identity)}.tflite").is_file()
            if converted or self.convert:
                self.runtime, self.runtime_info = litert.runtime_extractor(
                    self.model, identity, sample[: litert.SAMPLE_LIMIT]
                )
            else:
                self.runtime_info = {"runtime": "keras", "reason": "not converted"}
        return self.runtime

    def encode(self, shard: Shard) -> ShardResult:
        """The shard's features: ``(rows, width)``, or ``(views, rows, width)``."""
        from core.training.embeddings import forward_once, forward_views

        started = time.perf_counter()
        self.convert = shard.convert
        with tempfile.TemporaryDirectory(prefix="studio-shard-") as tmp:
            paths = shard.paths or []
            if shard.images is not None:  # the node cannot read the driver's files
                paths = []
                for i, (suffix, data) in enumerate(shard.images):
                    path = Path(tmp) / f"{shard.start + i}{suffix}"
                    path.write_bytes(data)
                    paths.append(str(path))
            size = self.built.image_size
            if shard.views:
                features = forward_views(
                    self.model, paths, size, self.config.active_augmentations(), shard.views,
                    self.config.seed, pick=self._pick,
                )  # fmt: skip
            else:
                features = forward_once(self.model, paths, size, pick=self._pick)
        info = self.ping()
        return ShardResult(
            shard.index, features, time.perf_counter() - started, info["node"], info["pid"]
        )


def _actor_plan(ray: Any) -> list[dict[str, Any]]:
    """One actor per CPU node (holding its CPUs), one per GPU on a GPU node, pinned softly to
    its node (a restarted actor may land elsewhere when the node is gone)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    plans = []
    for node in alive_nodes(ray):
        res = node.get("Resources", {})
        gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 0))
        affinity = NodeAffinitySchedulingStrategy(node["NodeID"], soft=True)
        if gpus:
            per = max(cpus // gpus, 1) if cpus else 0
            plans += [
                {"num_gpus": 1, "num_cpus": per, "threads": per or None, "strategy": affinity}
                for _ in range(gpus)
            ]
        elif cpus:
            plans.append({"num_gpus": 0, "num_cpus": cpus, "threads": cpus, "strategy": affinity})
    if not plans:
        raise ClusterError("The Ray cluster has no node with a CPU or GPU to run the pass on.")
    return plans


def _unwrap(exc: BaseException, what: str) -> BaseException:
    """The user's error inside a Ray task error (a ``DataError`` naming a file), a
    ``ClusterError`` for a lost cluster or any other Ray failure, else ``exc`` itself."""
    from ray.exceptions import RayError

    cause = getattr(exc, "cause", None)
    if isinstance(cause, StudioError):
        return cause
    lost = lost_cluster(exc, what)
    if lost is not None:
        return lost
    if isinstance(exc, RayError):
        inner = cause if isinstance(cause, BaseException) else exc
        first = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
        failed = f"{what[:1].upper()}{what[1:]} failed on the Ray cluster"
        return ClusterError(f"{failed}: {type(inner).__name__}: {first}")
    return exc


class ShardedPass:
    """One sharded pass; ``pids`` (actor index → worker pid) is what fault tests kill."""

    def __init__(
        self,
        config: RunConfig,
        weights_id: str | None,
        paths: Sequence[str],
        *,
        train_rows: int = 0,
        views: int = 1,
        convert: bool = False,
        clean: bool = True,
        shard_rows: int | None = None,
        progress: Callable[[ShardedPass], None] | None = None,
        runtime: RuntimeFile | None = None,
        share_nodes: bool = False,
    ) -> None:
        self.config, self.weights_id, self.paths = config, weights_id, list(paths)
        self.share_nodes = share_nodes  # other passes run beside this one (see ``_dispatch``)
        # The checked converted runtime: CPU nodes get a ``RuntimeEncoder`` (None: Keras actors).
        self.runtime = runtime
        self.clean = clean  # False: only the augmented views (the clean features are cached)
        self.train_rows, self.views, self.convert = train_rows, views, convert
        self.shard_rows, self.progress = shard_rows, progress
        self.pids: dict[int, int] = {}
        self.done_shards = 0
        self.done_rows = 0
        self.total_rows = len(self.paths) * clean + (views - 1) * train_rows
        self.actors: list[Any] = []
        self.light: list[bool] = []  # per actor: a ``RuntimeEncoder``
        self._runtime_ref: Any = None  # the runtime in the object store, while actors live
        self.started = 0.0

    def _payload(self, shard: Shard, ships: bool) -> Shard:
        part = self.paths[shard.start : shard.stop]
        if ships:
            shard.images = [(Path(p).suffix, Path(p).read_bytes()) for p in part]
        else:
            shard.paths = part
        return shard

    def plan(
        self,
        paths: Sequence[str],
        *,
        train_rows: int = 0,
        views: int = 1,
        convert: bool = False,
        clean: bool = True,
    ) -> None:
        """Set the work of a pass whose actors were started before the files were known."""
        if views > 1 and train_rows and self.runtime is not None:
            raise ClusterError("Augmented views need Keras actors: drop the runtime first.")
        self.paths, self.train_rows, self.views = list(paths), train_rows, views
        self.convert, self.clean = convert, clean
        self.total_rows = len(self.paths) * clean + (views - 1) * train_rows

    def start(self) -> None:
        """Create the actors (they load the backbone meanwhile); ``run`` does it if not done.
        Starting early lets the actors load while the driver scans and hashes the files."""
        if self.actors:
            return
        ray = require_ray()
        self.started = time.perf_counter()
        keras_actor, light_actor = ray.remote(ShardEncoder), ray.remote(RuntimeEncoder)
        try:
            # One copy in the object store, whatever the number of actors, held by this pass;
            # it travels with each shard (a restarted actor loads it from the shard it retries).
            self._runtime_ref = ray.put(self.runtime) if self.runtime is not None else None
            for p in _actor_plan(ray):
                light = self._runtime_ref is not None and not p["num_gpus"]
                options = (light_actor if light else keras_actor).options(
                    num_cpus=p["num_cpus"], num_gpus=p["num_gpus"],
                    scheduling_strategy=p["strategy"], max_restarts=MAX_RESTARTS,
                    max_task_retries=MAX_RESTARTS, runtime_env={"env_vars": worker_env()},
                )  # fmt: skip
                self.actors.append(
                    options.remote(p["threads"])
                    if light
                    else options.remote(
                        self.config.to_json(indent=None), self.weights_id, p["threads"]
                    )
                )
                self.light.append(light)
        except StudioError:
            raise
        except Exception as exc:
            raise _unwrap(exc, "starting the feature actors") from None

    def close(self) -> None:
        """End the actors (also when the cluster is gone: nothing left to free then)."""
        if not self.actors:
            return
        ray = require_ray()
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self.actors, self.light, self._runtime_ref = [], [], None

    def run(self) -> ShardedFeatures:
        """Compute the pass on the cluster the driver is connected to, then end the actors."""
        ray = require_ray()
        try:
            self.start()
            return self._dispatch(ray, self.actors, len(self.paths), self.started)
        except StudioError:
            raise
        except Exception as exc:
            raise _unwrap(exc, "the sharded feature pass") from None
        finally:
            self.close()

    def _dispatch(self, ray: Any, actors: list[Any], n: int, started: float) -> ShardedFeatures:
        if not n:
            raise ClusterError("The sharded feature pass got no images.")
        first = self.paths[0]
        digest = sha256_file(first)
        joining = {a.ping.remote(): i for i, a in enumerate(actors)}
        ships: dict[int, bool] = {}  # per joined actor: send it the files' bytes
        startup = 0.0  # until the last actor that joined had loaded
        compute = 0.0
        first_pids: dict[int, int] = {}
        idle: list[int] = []

        def join(ref: Any) -> None:
            nonlocal startup
            who = joining.pop(ref)
            try:
                info = ray.get(ref)
                ships[who] = not ray.get(actors[who].sees.remote(first, digest))
            except Exception as exc:
                raise _unwrap(exc, "starting the feature actors") from None
            self.pids[who] = first_pids[who] = int(info["pid"])
            startup = time.perf_counter() - started
            idle.append(who)

        if not self.share_nodes:
            # The only pass on the cluster: every actor is up before the first shard goes out.
            # Passes that share the nodes (a search's candidates) take actors as they come up
            # instead: one waiting for all of its actors could wait forever on a node another
            # pass holds while that one waits on a node of this one.
            for ref in list(joining):
                join(ref)
        out: np.ndarray | None = None
        augmented: np.ndarray | None = None
        covered = np.zeros(n, np.int64)
        per_image: list[float] = []
        pending: list[Shard] = []
        if self.views > 1 and self.train_rows:
            pending.append(Shard(-1, 0, self.train_rows, views=self.views - 1))
        cursor, index = (0 if self.clean else n), 0
        busy: dict[Any, tuple[int, Shard]] = {}
        shipped = 0
        node_rows: dict[str, int] = {}
        shards = 0
        while cursor < n or pending or busy:
            while idle and (cursor < n or pending):
                if pending:
                    shard = pending.pop(0)
                else:
                    rows = self._next_rows(per_image, n - cursor, len(actors))
                    shard = Shard(index, cursor, min(cursor + rows, n))
                    cursor, index = shard.stop, index + 1
                who = idle.pop(0)
                shard = self._payload(shard, ships[who])
                shard.convert = self.convert
                if self.light[who]:
                    shard.runtime = [self._runtime_ref]
                shipped += sum(len(b) for _, b in shard.images or [])
                busy[actors[who].encode.remote(shard)] = (who, shard)
            ready, _ = ray.wait([*busy, *joining], num_returns=1)
            if ready[0] in joining:
                join(ready[0])
                continue
            who, shard = busy.pop(ready[0])
            result: ShardResult = ray.get(ready[0])
            idle.append(who)
            self.pids[who] = result.pid
            rows = shard.stop - shard.start
            width = result.features.shape[-1]
            if shard.views:
                augmented = result.features
            else:
                if out is None:
                    out = np.empty((n, width), np.float32)
                if result.features.shape[0] != rows:
                    raise ClusterError(
                        f"Shard {shard.index} returned {result.features.shape[0]} rows for "
                        f"{rows} images."
                    )
                out[shard.start : shard.stop] = result.features
                covered[shard.start : shard.stop] += 1
                per_image.append(result.seconds / max(rows, 1))
            shards += 1
            compute += result.seconds
            node_rows[result.node] = node_rows.get(result.node, 0) + rows * max(shard.views, 1)
            self.done_shards += 1
            self.done_rows += rows * max(shard.views, 1)
            if self.progress is not None:
                self.progress(self)
        if not self.clean:
            out = np.zeros((0, 0), np.float32)
        elif out is None or not (covered == 1).all():
            twice = int((covered > 1).sum())
            raise ClusterError(
                f"The sharded pass covered {int((covered == 1).sum())} of {n} images once "
                f"({twice} more than once): not storing its features."
            )
        restarts = self._restarts(ray, actors, first_pids)
        return ShardedFeatures(
            features=out, augmented=augmented, shards=shards, nodes=len(node_rows),
            actors=len(actors), restarts=restarts, seconds=time.perf_counter() - started,
            shipped_bytes=shipped, node_rows=node_rows, startup_s=startup, compute_s=compute,
        )  # fmt: skip

    def _restarts(self, ray: Any, actors: list[Any], first_pids: dict[int, int]) -> int:
        """Actors whose process was replaced during the pass, asked once more at its end: the
        shards' results alone miss an actor killed after its last shard, or killed just as its
        reply got out (the reply carries the old pid; Ray restarts it afterwards). An actor that
        does not answer within ``FINAL_PING_S`` (restarting, or gone with its node) counts."""
        asked = {a.ping.remote(): i for i, a in enumerate(actors) if i in first_pids}
        ready, _ = ray.wait(list(asked), num_returns=len(asked), timeout=FINAL_PING_S)
        replaced = {i for i in asked.values() if self.pids.get(i) != first_pids[i]}
        answered: set[int] = set()
        for ref in ready:
            who = asked[ref]
            try:
                info = ray.get(ref)
            except Exception:  # out of restarts: replaced, and no process left
                continue
            answered.add(who)
            self.pids[who] = int(info["pid"])
            if self.pids[who] != first_pids[who]:
                replaced.add(who)
        return len(replaced | (set(asked.values()) - answered))

    def _next_rows(self, per_image: list[float], left: int, actors: int) -> int:
        """Rows of the next clean shard: fixed if asked, else by the measured per-image time."""
        if self.shard_rows:
            return self.shard_rows
        if not per_image:
            return min(PROBE_ROWS, left)
        # The median of what the shards measured: one slow shard (a restart) does not skew it.
        seconds = float(np.median(per_image))
        rows = int(TARGET_SHARD_S / seconds) if seconds > 0 else MAX_SHARD_ROWS
        even = math.ceil(left / actors)  # the last wave: every actor gets a share
        return max(min(rows, MAX_SHARD_ROWS, even), 1)
