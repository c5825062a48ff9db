"""Find the best model for a dataset: a backbone × image size search on cached features.

ImageNet rank does not reliably predict how well a backbone transfers to a given dataset, so
the search measures it. For each candidate (backbone × image size) the frozen base runs once
over the dataset's images (or not at all: the persistent embedding cache of
``core.training.embeddings`` holds its features, under the same key a feature-extraction run
uses), then a few heads train on those features in milliseconds: a linear head and one with a
hidden layer, each at a few learning rates, on a fixed train/validation split and seed. Each
candidate also gets the single-image latency of its whole model (base + head: the median of a
few compiled calls) and its size (float32 parameter bytes of the whole model, in MB of 10^6
bytes), measured once per machine, backbone and size and kept next to the features.

Candidates whose ImageNet weights are neither bundled nor cached are listed as ``needs
network``, not failed. A time budget stops the search in time (checked between candidates,
between heads and at every batch of the feature pass): what it did not reach is ``skipped:
budget``. ``progress(candidate)`` is called as each candidate is settled, so a page can show
the ranking while it grows.

The heads here train with NumPy (the same layers as a run's head: dropout → [Dense(relu)] →
Dense(softmax), Glorot-uniform initialisation, Adam with Keras' defaults, sparse categorical
cross-entropy): a Keras head costs about half a second of tracing per head, more than the
training itself on a few thousand cached feature rows, and six heads per candidate would make
that tracing the cost of a warm search.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.config import RunConfig
from core.errors import ConfigError, DataError, StudioError, WeightsUnavailableError
from core.files import read_json, try_write_json
from core.tasks import TaskFn, UpdateFn, register_task, start_task

if TYPE_CHECKING:
    from core.data import DatasetIndex
    from core.training.model import BuiltModel

__all__ = [
    "HEADS",
    "HEAD_BATCH",
    "HEAD_DROPOUT",
    "HEAD_EPOCHS",
    "LATENCY_CALLS",
    "LATENCY_ROUNDS",
    "LEARNING_RATES",
    "NEEDS_NETWORK",
    "OK",
    "PENDING",
    "RESULT_CACHE_VERSION",
    "SEARCH_TASK",
    "SIZE_NOTE",
    "SKIPPED_BUDGET",
    "SKIPPED_STOPPED",
    "SMALLER_SIZE_FACTOR",
    "Candidate",
    "HeadResult",
    "FeaturePasses",
    "ProgressFn",
    "SearchResult",
    "StageFn",
    "format_ranking",
    "format_table",
    "load_index",
    "measure_latency",
    "plan_candidates",
    "rank_candidates",
    "search",
    "search_task",
    "smaller_size",
    "start_search",
    "train_head",
]

# The head grid: (kind, hidden units) × learning rates, HEAD_EPOCHS epochs each.
HEADS: tuple[tuple[str, int], ...] = (("linear", 0), ("hidden", 256))
LEARNING_RATES: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
HEAD_EPOCHS = 20
HEAD_BATCH = 32
HEAD_DROPOUT = 0.2
LATENCY_CALLS = 10  # compiled single-image calls whose median is the latency (after 2 warm-ups)
# ... in this many rounds, keeping the lowest median: on a busy machine one round's median
# was measured anywhere from 18 to 30 ms for the same model.
LATENCY_ROUNDS = 3
SMALLER_SIZE_FACTOR = 0.75  # "one smaller" size: 3/4 of the default, down to a multiple of 32

OK = "ok"
NEEDS_NETWORK = "needs network"
SKIPPED_BUDGET = "skipped: budget"
SKIPPED_STOPPED = "skipped: stopped"
PENDING = "pending"
# Bump to forget every stored candidate result (the code's own hash is in the key as well).
RESULT_CACHE_VERSION = 1
SIZE_NOTE = "float32 parameter bytes of the whole model (base + head), in MB of 10^6 bytes"

ProgressFn = Callable[["Candidate"], None]
StageFn = Callable[["Candidate", int, int], None]
# ``passes(candidates)``: their feature passes run elsewhere (a Ray cluster), all at once, into
# the embedding cache; yields each candidate as its pass ends, with the error if it failed.
FeaturePasses = Callable[
    [list["Candidate"]], Generator[tuple["Candidate", StudioError | None], None, None]
]


class _OutOfTime(Exception):
    """The budget ran out (or a stop was asked for) in the middle of a candidate."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


@dataclass
class HeadResult:
    """One head trained on a candidate's features."""

    kind: str  # "linear" or "hidden"
    dense_units: int | None  # hidden units; None for a linear head
    lr: float
    val_accuracy: float
    val_loss: float

    @property
    def label(self) -> str:
        """How the tables name it: ``"hidden 256, lr 0.001"``."""
        kind = f"hidden {self.dense_units}" if self.dense_units else "linear"
        return f"{kind}, lr {self.lr:g}"


@dataclass
class Candidate:
    """A backbone at an image size, and what the search measured for it."""

    backbone: str
    image_size: int
    weights: str = "imagenet"
    status: str = PENDING
    val_accuracy: float | None = None
    val_loss: float | None = None
    latency_ms: float | None = None
    size_mb: float | None = None
    params: int | None = None
    heads: list[HeadResult] = field(default_factory=list)
    features_cached: bool | None = None  # None: no features were needed (or reached)
    feature_s: float | None = None  # seconds spent getting the features (cache or a pass)
    latency_cached: bool | None = None
    result_cached: bool = False  # its heads' results were read back from an identical search
    pareto: bool = False  # not beaten on both accuracy and latency by another candidate
    duration_s: float = 0.0

    @property
    def best_head(self) -> HeadResult | None:
        """The head with the best validation accuracy (then loss)."""
        return min(self.heads, key=_head_rank, default=None)

    @property
    def head(self) -> str | None:
        """The best head's label, ``None`` before any head trained."""
        best = self.best_head
        return best.label if best else None

    def config_changes(self) -> dict[str, Any]:
        """The RunConfig fields that make a run of this candidate.

        A run's head always has a hidden layer, so its learning rate is the best hidden head's
        (even when a linear head scored higher); epochs are the search's, which cost little on
        cached features.
        """
        changes: dict[str, Any] = {
            "backbone": self.backbone,
            "weights": self.weights,
            "image_size": self.image_size,
        }
        hidden = [h for h in self.heads if h.dense_units]
        if hidden:
            best = min(hidden, key=_head_rank)
            changes.update(lr=best.lr, dense_units=best.dense_units, dropout=HEAD_DROPOUT)
            changes["epochs"] = HEAD_EPOCHS
        return changes

    def to_config(self, base: RunConfig | None = None, mode: str | None = None) -> RunConfig:
        """``base`` (default: the defaults) changed to train this candidate; ``mode``: e.g.
        ``"fine_tuning"`` for the winner with fine-tuning."""
        changes = self.config_changes()
        if mode is not None:
            changes["mode"] = mode
        return (base or RunConfig()).with_changes(**changes)

    def to_json(self) -> dict[str, Any]:
        """The issue's contract keys first, then the extras."""
        best = self.best_head
        return {
            "backbone": self.backbone,
            "image_size": self.image_size,
            "head": self.head,
            "val_accuracy": self.val_accuracy,
            "latency_ms": self.latency_ms,
            "size_mb": self.size_mb,
            "status": self.status,
            "weights": self.weights,
            "val_loss": self.val_loss,
            "lr": best.lr if best else None,
            "dense_units": best.dense_units if best else None,
            "params": self.params,
            "pareto": self.pareto,
            "features_cached": self.features_cached,
            "feature_s": self.feature_s,
            "latency_cached": self.latency_cached,
            "result_cached": self.result_cached,
            "duration_s": round(self.duration_s, 3),
            "heads": [{**asdict(h), "head": h.label} for h in self.heads],
            "config": self.config_changes(),
        }


@dataclass
class SearchResult:
    """The ranked candidates (best first) and how the search went."""

    data: str
    candidates: list[Candidate]
    class_names: list[str]
    train_images: int
    val_images: int
    duration_s: float
    features_computed: int  # images sent through a base (0 when every feature was cached)
    budget_s: float | None = None
    budget_hit: bool = False
    class_weight: str = "none"
    seed: int = 42
    val_split: float = 0.2

    @property
    def best(self) -> Candidate | None:
        """The top candidate that was measured, if any."""
        return next((c for c in self.candidates if c.status == OK), None)

    def to_json(self) -> dict[str, Any]:
        """``{"candidates": [...], ...}``, best first (``python -m core search --json``)."""
        return {
            "candidates": [c.to_json() for c in self.candidates],
            "data": self.data,
            "class_names": list(self.class_names),
            "train_images": self.train_images,
            "val_images": self.val_images,
            "duration_s": round(self.duration_s, 3),
            "features_computed": self.features_computed,
            "budget_s": self.budget_s,
            "budget_hit": self.budget_hit,
            "class_weight": self.class_weight,
            "seed": self.seed,
            "val_split": self.val_split,
            "heads": {
                "kinds": [k for k, _ in HEADS],
                "learning_rates": list(LEARNING_RATES),
                "epochs": HEAD_EPOCHS,
            },
            "size_mb_is": SIZE_NOTE,
            "latency_ms_is": f"median of {LATENCY_CALLS} compiled single-image calls of the "
            f"whole model (base + head) on this machine, lowest of {LATENCY_ROUNDS} rounds",
        }


# --------------------------------------------------------------------------- candidates


def smaller_size(default: int, min_size: int) -> int:
    """The "one smaller" image size: 3/4 of ``default`` down to a multiple of 32 (224 → 160)."""
    return max(min_size, int(default * SMALLER_SIZE_FACTOR) // 32 * 32)


def plan_candidates(
    backbones: Sequence[str] | str | None = None,
    sizes: Sequence[int] | None = None,
    weights: str = "imagenet",
) -> list[Candidate]:
    """The candidates to search, in the order they run.

    ``backbones``: names, ``"available"`` (those whose weights are bundled or cached), or
    ``None`` for every registered backbone (those needing the network are listed as such).
    ``sizes``: image sizes for every backbone; ``None``: each backbone's default and one smaller.
    """
    from core.models.backbones import get_backbone, list_backbones

    if weights not in ("imagenet", "none"):
        raise ConfigError(
            f"Search weights {weights!r} is invalid. Expected imagenet (pretrained) or none "
            "(random init, for trying the search out).",
            settings=("weights",),
        )
    if backbones is None or backbones == "available":
        specs = list_backbones()
        if backbones == "available" and weights == "imagenet":
            specs = [s for s in specs if s.works_offline()]
    elif isinstance(backbones, str):
        specs = [get_backbone(name.strip()) for name in backbones.split(",") if name.strip()]
    else:
        specs = [get_backbone(name) for name in backbones]
    if not specs:
        raise ConfigError(
            "No backbone to search. Choose at least one backbone, or all available ones.",
            settings=("backbone",),
        )
    for size in sizes or ():
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 1024:
            raise ConfigError(
                f"Image size {size!r} is invalid. Expected whole numbers from 1 to 1024 px, "
                "e.g. 224 and 160.",
                settings=("image_size",),
            )
    out: list[Candidate] = []
    for spec in specs:
        wanted = sizes or (spec.default_size, smaller_size(spec.default_size, spec.min_size))
        seen: list[int] = []
        for size in wanted:
            if size in seen:
                continue
            seen.append(size)
            candidate = Candidate(spec.name, size, weights)
            if size < spec.min_size:
                candidate.status = f"skipped: below {spec.name}'s minimum of {spec.min_size} px"
            elif weights == "imagenet" and not spec.works_offline():
                candidate.status = NEEDS_NETWORK
            out.append(candidate)
    return out


def _head_rank(head: HeadResult) -> tuple[float, float]:
    return (-head.val_accuracy, head.val_loss)


def rank_candidates(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Best first: measured candidates by validation accuracy (then loss, then latency), the
    others after them in their planned order. Marks the accuracy/latency Pareto front."""

    def key(c: Candidate) -> tuple[Any, ...]:
        if c.status != OK or c.val_accuracy is None:
            return (1, 0.0, 0.0, 0.0)
        return (0, -c.val_accuracy, c.val_loss or 0.0, c.latency_ms or math.inf)

    ranked = sorted(candidates, key=key)  # stable: unmeasured ones keep their order
    measured = [c for c in ranked if c.status == OK and c.val_accuracy is not None]
    for c in ranked:
        c.pareto = c in measured and not any(
            _dominates(other, c) for other in measured if other is not c
        )
    return ranked


def _dominates(a: Candidate, b: Candidate) -> bool:
    acc_a, acc_b = a.val_accuracy or 0.0, b.val_accuracy or 0.0
    lat_a, lat_b = a.latency_ms or math.inf, b.latency_ms or math.inf
    return acc_a >= acc_b and lat_a <= lat_b and (acc_a > acc_b or lat_a < lat_b)


# --------------------------------------------------------------------------- heads (NumPy)


def _glorot(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def train_head(
    train: tuple[np.ndarray, Sequence[int]],
    val: tuple[np.ndarray, Sequence[int]],
    num_classes: int,
    *,
    dense_units: int = 0,
    lr: float = 1e-3,
    epochs: int = HEAD_EPOCHS,
    batch_size: int = HEAD_BATCH,
    dropout: float = HEAD_DROPOUT,
    seed: int = 42,
    class_weight: np.ndarray | None = None,
) -> tuple[float, float]:
    """Train a head on features; ``(val_accuracy, val_loss)`` after the last epoch.

    The run's head layers (dropout → [Dense(``dense_units``, relu)] → Dense(softmax); linear
    when ``dense_units`` is 0) with Adam (Keras' defaults) on the sparse cross-entropy, each
    class's loss weighted by ``class_weight`` when given. Rows are visited in the order
    ``head_fit.epoch_rows`` gives a run; the initial weights depend only on the seed and the
    layer sizes, so learning rates are compared from the same start.
    """
    from core.training.head_fit import epoch_rows

    x, y = np.asarray(train[0], np.float32), np.asarray(train[1], np.int64)
    xv, yv = np.asarray(val[0], np.float32), np.asarray(val[1], np.int64)
    rng = np.random.default_rng([seed, dense_units, num_classes])
    widths = [x.shape[1], *([dense_units] if dense_units else []), num_classes]
    params: list[np.ndarray] = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
        params += [_glorot(rng, fan_in, fan_out), np.zeros(fan_out, np.float32)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    scratch = [np.empty_like(p) for p in params]
    beta1, beta2, eps, t = 0.9, 0.999, 1e-7, 0
    row_weight = np.ones(len(y), np.float32) if class_weight is None else class_weight[y]

    def forward(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if dense_units:
            hidden = np.maximum(xb @ params[0] + params[1], 0.0)
            return _softmax(hidden @ params[2] + params[3]), hidden
        return _softmax(xb @ params[0] + params[1]), None

    for epoch in range(epochs):
        order = epoch_rows(seed, epoch, len(y))
        for start in range(0, len(y), batch_size):
            rows = order[start : start + batch_size]
            xb = x[rows]
            if dropout:
                keep = rng.random(xb.shape, dtype=np.float32) >= dropout
                xb = xb * keep / (1.0 - dropout)
            probs, hidden = forward(xb)
            # d(sum(w_i * CE_i) / n) / d logits, as Keras averages a weighted batch loss.
            grad = probs
            grad[np.arange(len(rows)), y[rows]] -= 1.0
            grad *= (row_weight[rows] / len(rows))[:, None]
            if hidden is not None:
                grads = [hidden.T @ grad, grad.sum(0)]
                back = (grad @ params[2].T) * (hidden > 0)
                grads = [xb.T @ back, back.sum(0), *grads]
            else:
                grads = [xb.T @ grad, grad.sum(0)]
            t += 1
            step = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
            # Keras' Adam update, in place (fresh temporaries per step cost more than the math).
            for p, g, mi, vi, tmp in zip(params, grads, m, v, scratch, strict=True):
                np.subtract(g, mi, out=tmp)
                tmp *= 1 - beta1
                mi += tmp  # m += (g - m) * (1 - beta1)
                np.square(g, out=tmp)
                tmp -= vi
                tmp *= 1 - beta2
                vi += tmp  # v += (g^2 - v) * (1 - beta2)
                np.sqrt(vi, out=tmp)
                tmp += eps
                np.divide(mi, tmp, out=tmp)
                tmp *= step
                p -= tmp  # p -= step * m / (sqrt(v) + eps)
    probs, _ = forward(xv)
    picked = np.clip(probs[np.arange(len(yv)), yv], 1e-7, 1.0)
    return float(np.mean(probs.argmax(1) == yv)), float(np.mean(-np.log(picked)))


# --------------------------------------------------------------------------- measurements


def _measurements_path() -> Any:
    from core.paths import studio_home

    folder = studio_home() / "cache" / "search"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "measurements.json"


def _machine() -> str:
    return f"{platform.node()}/{platform.machine()}/{os.cpu_count()} cpus"


def _measurement_key(backbone: str, size: int, num_classes: int) -> str:
    # The installed version, not ``keras.__version__``: a repeated search must not import Keras.
    return f"{backbone}|{size}|{num_classes}|keras {_dist_version('keras')}|{_machine()}"


def _load_measurements() -> dict[str, Any]:
    try:
        data = json.loads(_measurements_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store_measurement(key: str, value: dict[str, Any]) -> None:
    from core.files import atomic_path

    data = _load_measurements()
    data[key] = value
    path = _measurements_path()
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))


def measure_latency(
    built: BuiltModel, calls: int = LATENCY_CALLS, rounds: int = LATENCY_ROUNDS
) -> float:
    """Single-image latency of the whole model, in ms: the median of ``calls`` compiled calls
    (after two warm-up calls, the first of which traces), the lowest of ``rounds`` rounds (the
    one least disturbed by other work on the machine)."""
    import tensorflow as tf

    model = built.model
    forward = tf.function(lambda x: model(x, training=False))
    size = built.image_size
    image = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)), tf.float32)
    for _ in range(2):
        forward(image).numpy()
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            forward(image).numpy()
            times.append(time.perf_counter() - started)
        medians.append(statistics.median(times))
    return 1000.0 * min(medians)


def _param_count(built: BuiltModel) -> int:
    return int(sum(math.prod(w.shape) for w in built.model.weights))


# --------------------------------------------------------------------------- the search


def _one_blas_thread() -> AbstractContextManager[object]:
    """BLAS on one thread while heads train: their matrices are small (a batch of 32 rows), and
    a multi-threaded BLAS sharing the cores with TensorFlow's threads was measured 2-3x slower
    per step on a busy 2-core machine."""
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _random_identity(seed: int) -> str:
    """The weights identity of a random-weight base built right after seeding with ``seed``:
    Keras' initialisers are deterministic then, so its features may be cached too."""
    return f"random-init:seed={seed}:tf={_dist_version('tensorflow', 'tensorflow-cpu')}"


# --------------------------------------------------------------------------- result cache
#
# A repeated identical search must cost next to nothing: importing TensorFlow (2.5-5 s) and
# scikit-learn (1-3 s) was most of a fully cached search on a small dataset. So each
# candidate's head results are kept under a key of everything that determines them (the data's
# files and split, the base's weights, the image size, the head grid, the seed, the class
# weights, this code), and the dataset's index (its checked files and seeded split) is kept
# under the folder's file listing. A repeat reads both, plus the latency measurement, and
# imports neither library. Delete ``$TRANSFER_STUDIO_HOME/cache/search`` to forget them.


def _dist_version(*names: str) -> str:
    """The installed version of the first distribution of ``names`` found (no import)."""
    from importlib import metadata

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "?"


@functools.cache
def _code_version() -> str:
    """A hash of the code that decides a candidate's results and a dataset's index."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for part in ("search.py", "training/head_fit.py", "data/index.py", "data/layout.py"):
        try:
            digest.update((here / part).read_bytes())
        except OSError:
            digest.update(part.encode())
    return digest.hexdigest()[:16]


def _search_cache(kind: str) -> Path:
    from core.paths import studio_home

    folder = studio_home() / "cache" / "search" / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _hash(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _stamp(path: str) -> list[int] | None:
    """What changes when a file is rewritten: ``[size, mtime_ns]``; ``None`` if it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _tree_listing(root: str) -> str:
    """A hash of every file under ``root`` with its size and mtime: a file added, removed or
    rewritten changes it (as make and rsync judge files, without reading them)."""
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            entries.append([os.path.relpath(path, root), _stamp(path)])
    return _hash(entries)


def load_index(data: str, val_split: float, seed: int) -> DatasetIndex:
    """``core.data.load_dataset(data, val_split, seed)``, read back from the last search's copy
    while no file of the data's folder changed (no image is opened, scikit-learn not imported)."""
    from core.data import DatasetIndex, load_dataset
    from core.data.sources import resolve_source

    root = str(resolve_source(data))
    key = _hash([RESULT_CACHE_VERSION, _code_version(), data, root, val_split, seed,
                 _dist_version("scikit-learn")])  # fmt: skip
    path = _search_cache("index") / f"{key}.json"
    listing = _tree_listing(root)
    stored = read_json(path)
    if isinstance(stored, dict) and stored.get("listing") == listing:
        stamps = stored.get("stamps") or {}
        try:
            # files reached through a symbolic link lie outside the listing: checked one by one
            if all(_stamp(p) == s for p, s in stamps.items()):
                return DatasetIndex(**stored["index"])
        except (TypeError, KeyError, AttributeError):
            pass  # a damaged or older copy: load the data again
    index = load_dataset(data, val_split=val_split, seed=seed)
    files = [*index.train_paths, *index.val_paths]
    try_write_json(
        path, {"listing": listing, "stamps": {p: _stamp(p) for p in files}, "index": asdict(index)}
    )
    return index


class _Searcher:
    """One search's state: the data, the clock, the counters."""

    def __init__(
        self,
        data: DatasetIndex,
        *,
        seed: int,
        class_weight: str,
        deadline: float | None,
        clock: Callable[[], float],
        should_stop: Callable[[], bool] | None,
        stage: StageFn | None,
        reuse_results: bool = True,
    ) -> None:
        self.data, self.seed, self.class_weight_setting = data, seed, class_weight
        self.deadline, self.clock = deadline, clock
        self.should_stop, self.stage = should_stop, stage
        self.reuse_results = reuse_results
        self.features_computed = 0
        self.budget_hit = False

    @functools.cached_property
    def class_weight(self) -> np.ndarray | None:
        """The heads' per-class loss weights (computed when a head first trains: scikit-learn
        is not imported by a search whose results are all stored)."""
        from core.training.head_fit import class_weights

        labels = self.data.train_labels
        return class_weights(self.class_weight_setting, labels, len(self.data.class_names))

    @functools.cached_property
    def data_id(self) -> str:
        """The classes, the split's files and labels, and each file's size and mtime."""
        d = self.data
        return _hash([
            d.class_names,
            [[p, y, _stamp(p)] for p, y in zip(d.train_paths, d.train_labels, strict=True)],
            [[p, y, _stamp(p)] for p, y in zip(d.val_paths, d.val_labels, strict=True)],
        ])  # fmt: skip

    def result_path(self, c: Candidate) -> Path | None:
        """Where candidate ``c``'s head results are kept; ``None``: not reusable."""
        from core.models.backbones import get_backbone, weights_identity

        identity = (
            _random_identity(self.seed)
            if c.weights == "none"
            else weights_identity(c.backbone, c.weights)
        )
        if identity is None:
            return None
        key = _hash({
            "version": RESULT_CACHE_VERSION, "code": _code_version(), "data": self.data_id,
            "backbone": c.backbone, "weights": identity, "image_size": c.image_size,
            "preprocessing": get_backbone(c.backbone).preprocessing,
            "keras": _dist_version("keras"), "heads": [list(h) for h in HEADS],
            "lrs": list(LEARNING_RATES), "epochs": HEAD_EPOCHS, "batch": HEAD_BATCH,
            "dropout": HEAD_DROPOUT, "seed": self.seed, "class_weight": self.class_weight_setting,
        })  # fmt: skip
        return _search_cache("results") / f"{key}.json"

    def stored_result(self, c: Candidate, path: Path | None) -> bool:
        """Fill ``c``'s heads from an identical earlier search; whether there was one."""
        stored = read_json(path) if path is not None and self.reuse_results else None
        if not isinstance(stored, dict):
            return False
        try:
            heads = [HeadResult(**h) for h in stored["heads"]]
        except (KeyError, TypeError):
            return False
        if len(heads) != len(HEADS) * len(LEARNING_RATES):
            return False
        c.heads, c.result_cached = heads, True
        feature_key = stored.get("feature_key")
        # Whether a run of it would still find its features (the cache may have evicted them);
        # the folder is ``embeddings.embedding_cache_dir()``, which imports Keras.
        if feature_key:
            from core.paths import studio_home

            npy = studio_home() / "cache" / "embeddings" / f"{feature_key}.npy"
            c.features_cached = npy.is_file()
        return True

    def check_time(self) -> None:
        """Raise ``_OutOfTime`` when a stop was asked for or the budget is spent."""
        if self.should_stop is not None and self.should_stop():
            raise _OutOfTime(SKIPPED_STOPPED)
        if self.deadline is not None and self.clock() >= self.deadline:
            self.budget_hit = True
            raise _OutOfTime(SKIPPED_BUDGET)

    def config(self, c: Candidate) -> RunConfig:
        """A feature-extraction config of candidate ``c`` (what a run of it would key on)."""
        return RunConfig(
            backbone=c.backbone, weights=c.weights, mode="feature_extraction",
            data=self.data.source, image_size=c.image_size, seed=self.seed, augment=False,
            dropout=HEAD_DROPOUT,
        ).validate()  # fmt: skip

    def build(self, c: Candidate, weights: str) -> BuiltModel:
        """The candidate's whole model (``weights``: its own, or "none" to time it only)."""
        import keras

        from core.training.model import Backbone, build_model, resolve_backbone

        config = self.config(c).with_changes(weights=weights)
        if weights == "none":
            keras.utils.set_random_seed(self.seed)  # the random init ``_random_identity`` keys
            backbone = Backbone(resolve_backbone(config).spec, None)
        else:
            backbone = resolve_backbone(config)
        return build_model(config, len(self.data.class_names), backbone)

    def features(self, c: Candidate) -> tuple[np.ndarray, BuiltModel | None, str | None]:
        """All images' pooled features (train then validation), the model built for them
        (``None`` when they came from the cache) and their embedding cache key."""
        from core.models.backbones import get_backbone, weights_identity
        from core.training.embeddings import cache_key, compute_features, load_cached, store_cached
        from core.training.model import Backbone

        config = self.config(c)
        spec = get_backbone(c.backbone)
        identity = (
            _random_identity(self.seed)
            if c.weights == "none"
            else weights_identity(c.backbone, c.weights)
        )
        paths = [*self.data.train_paths, *self.data.val_paths]
        key = cache_key(config, c.image_size, paths, Backbone(spec, identity))
        if key is not None:
            cached = load_cached(key)
            if cached is not None and cached.shape == (len(paths), spec.feature_width):
                c.features_cached = True
                return cached, None, key
        c.features_cached = False
        self.check_time()
        built = self.build(c, c.weights)

        def stage(done: int, total: int, **_more: Any) -> None:
            if self.stage is not None:
                self.stage(c, done, total)
            self.check_time()  # a budget that ends mid-pass stops at the next batch

        features = compute_features(built, paths, stage)
        self.features_computed += len(paths)
        if key is not None:
            store_cached(key, features)
        return features, built, key

    def measure(self, c: Candidate, built: BuiltModel | None) -> None:
        """Latency and size: from this machine's earlier measurement, else measured now."""
        key = _measurement_key(c.backbone, c.image_size, len(self.data.class_names))
        known = _load_measurements().get(key)
        if isinstance(known, dict) and {"latency_ms", "params"} <= known.keys():
            c.latency_ms, c.params, c.latency_cached = known["latency_ms"], known["params"], True
        else:
            self.check_time()
            # Weights don't change the arithmetic: time a random-init model if none is built.
            model = built or self.build(c, "none")
            c.latency_ms = round(measure_latency(model), 3)
            c.params, c.latency_cached = _param_count(model), False
            _store_measurement(key, {"latency_ms": c.latency_ms, "params": c.params})
        c.size_mb = round(c.params * 4 / 1e6, 2)

    def train_heads(self, c: Candidate, path: Path | None) -> BuiltModel | None:
        """Train the head grid on ``c``'s features and keep the results at ``path``; the model
        built for a feature pass, if one ran."""
        started = time.perf_counter()
        features, built, feature_key = self.features(c)
        c.feature_s = round(time.perf_counter() - started, 3)
        n = len(self.data.train_paths)
        train = (features[:n], self.data.train_labels)
        val = (features[n:], self.data.val_labels)
        with _one_blas_thread():
            for kind, units in HEADS:
                for lr in LEARNING_RATES:
                    self.check_time()
                    acc, loss = train_head(
                        train, val, len(self.data.class_names), dense_units=units, lr=lr,
                        seed=self.seed, class_weight=self.class_weight,
                    )  # fmt: skip
                    c.heads.append(HeadResult(kind, units or None, lr, acc, loss))
        if path is not None:  # only a complete grid is kept (a budget stop raised above)
            try_write_json(
                path, {"heads": [asdict(h) for h in c.heads], "feature_key": feature_key}
            )
        return built

    def run(self, c: Candidate) -> None:
        """Measure candidate ``c`` (its status says how it ended)."""
        started = time.perf_counter()
        try:
            self.check_time()
            built = None
            path = self.result_path(c)
            if not self.stored_result(c, path):
                built = self.train_heads(c, path)
            self.measure(c, built)
            best = c.best_head
            assert best is not None  # the grid is never empty
            c.val_accuracy, c.val_loss = best.val_accuracy, best.val_loss
            c.status = OK
        except _OutOfTime as out:
            c.status = out.status
        except WeightsUnavailableError:
            c.status = NEEDS_NETWORK
        except StudioError as exc:
            c.status = f"failed: {exc}"
        except Exception as exc:  # one candidate's failure must not end the search
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            c.status = f"failed: {type(exc).__name__}{': ' + first if first else ''}"
        c.duration_s = time.perf_counter() - started


def search(
    data: str,
    backbones: Sequence[str] | str | None = None,
    sizes: Sequence[int] | None = None,
    budget_s: float | None = None,
    seed: int = 42,
    val_split: float = 0.2,
    progress: ProgressFn | None = None,
    *,
    weights: str = "imagenet",
    class_weight: str = "none",
    stage: StageFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
    reuse_results: bool = True,
    feature_passes: FeaturePasses | None = None,
) -> SearchResult:
    """Search backbones × image sizes on ``data``; the candidates ranked best first.

    ``backbones``/``sizes``: see ``plan_candidates``. ``budget_s``: seconds after which what is
    left is ``skipped: budget`` (``None``: no limit). ``seed``/``val_split``: the fixed split
    every candidate is measured on. ``progress(candidate)``: called as each candidate is
    settled (listed as needing the network, measured, skipped or failed).
    ``weights``: ``"imagenet"`` or ``"none"`` (random init: tries the mechanics out).
    ``class_weight``: ``"none"`` or ``"balanced"``, for the heads' loss.
    ``stage(candidate, done, total)``: images through the base so far in a feature pass.
    ``should_stop()``: true to end the search now (the rest is ``skipped: stopped``).
    ``clock``: the budget's clock, in seconds.
    ``reuse_results``: read a candidate's head results back from an identical earlier search
    (same data files, split, weights, size, head grid, seed, class weights and code) instead of
    training its heads again; ``False`` trains them (on cached features when there are some).
    ``feature_passes``: the pending candidates' feature passes run there, all at once (the Ray
    cluster's, ``core.cluster.features.candidate_passes``); each candidate's heads are trained
    here as its pass ends, so ``progress`` sees candidates in the order their passes finish.
    """
    from core.data import load_dataset

    if budget_s is not None and (isinstance(budget_s, bool) or not budget_s >= 0):
        raise ConfigError(
            f"Search budget {budget_s!r} is invalid. Expected a number of minutes above 0, "
            "or no budget."
        )
    RunConfig(seed=seed, val_split=val_split, class_weight=class_weight).validate()
    candidates = plan_candidates(backbones, sizes, weights)
    started, wall = clock(), time.perf_counter()
    index = (
        load_index(data, val_split, seed)
        if reuse_results
        else load_dataset(data, val_split=val_split, seed=seed)
    )
    if not index.val_paths:
        raise DataError(
            f"No validation images: every class in {index.root} has a single usable image. "
            "Add at least 2 images per class (or a val/ folder) so accuracy can be measured."
        )
    searcher = _Searcher(
        index, seed=seed, class_weight=class_weight,
        deadline=None if budget_s is None else started + budget_s, clock=clock,
        should_stop=should_stop, stage=stage, reuse_results=reuse_results,
    )  # fmt: skip
    for c in candidates:
        if c.status != PENDING and progress is not None:
            progress(c)  # listed at once: needs network, or an impossible size
    pending = [c for c in candidates if c.status == PENDING]
    ready = feature_passes(pending) if feature_passes is not None else ((c, None) for c in pending)
    try:
        for c, error in ready:
            if error is not None:
                c.status = f"failed: {error}"
            else:
                searcher.run(c)  # features in the cache already when a pass made them
            if progress is not None:
                progress(c)
    finally:
        ready.close()  # a search that ends early (an error) stops waiting for the others
    return SearchResult(
        data=data,
        candidates=rank_candidates(candidates),
        class_names=list(index.class_names),
        train_images=len(index.train_paths),
        val_images=len(index.val_paths),
        duration_s=time.perf_counter() - wall,
        features_computed=searcher.features_computed,
        budget_s=budget_s,
        budget_hit=searcher.budget_hit,
        class_weight=class_weight,
        seed=seed,
        val_split=val_split,
    )


def format_table(result: SearchResult) -> str:
    """The ranked candidates as a text table (the CLI's output without ``--json``)."""
    lines = _table_rows(result.candidates)
    lines.append(
        f"{result.train_images} training / {result.val_images} validation images; "
        f"{result.features_computed} images through a base; {result.duration_s:.1f} s. "
        "* = on the accuracy/latency Pareto front."
    )
    return "\n".join(lines)


def format_ranking(settled: Sequence[Candidate]) -> str:
    """The candidates settled so far, ranked, as the table's rows under a ``ranked so far``
    line (what ``search --ray`` prints as each candidate's pass ends)."""
    return "\n".join([f"ranked so far ({len(settled)} settled):", *_table_rows(
        rank_candidates(settled)
    )])  # fmt: skip


def _table_rows(candidates: Sequence[Candidate]) -> list[str]:
    lines = [
        f"{'#':>2}  {'backbone':<20} {'size':>4}  {'val_acc':>7}  {'latency':>10}  "
        f"{'size':>8}  {'head':<22} status"
    ]
    for i, c in enumerate(candidates, 1):
        acc = "-" if c.val_accuracy is None else f"{c.val_accuracy:.3f}"
        lat = "-" if c.latency_ms is None else f"{c.latency_ms:.1f} ms"
        size = "-" if c.size_mb is None else f"{c.size_mb:.1f} MB"
        mark = "*" if c.pareto else " "
        lines.append(
            f"{i:>2}{mark} {c.backbone:<20} {c.image_size:>4}  {acc:>7}  {lat:>10}  {size:>8}  "
            f"{c.head or '-':<22} {c.status}"
        )
    return lines


SEARCH_TASK = "search"  # the background task kind (``core.tasks``)


def start_search(
    root: str | os.PathLike[str],
    data: str,
    *,
    budget_s: float | None = None,
    backbones: Sequence[str] | str | None = None,
    sizes: Sequence[int] | None = None,
    weights: str = "imagenet",
    class_weight: str = "none",
    seed: int = 42,
    val_split: float = 0.2,
) -> bool:
    """``search`` in a background process (``start_task``: ``False`` if one runs for ``root``).

    The state file holds the settings, the ranked candidates settled so far (``candidates``, as
    in ``search --json``), the feature pass under way (``stage``) and, once done, the result's
    other fields.
    """
    from core.data.sources import check_source

    # Bad settings and a missing folder are an error now, on the page, not a failed task later.
    RunConfig(data=data, seed=seed, val_split=val_split, class_weight=class_weight).validate()
    if budget_s is not None and not budget_s > 0:
        raise ConfigError(
            f"Search budget {budget_s!r} s is invalid. Expected a number of minutes above 0."
        )
    plan_candidates(backbones, sizes, weights)  # an unknown backbone or size: said now too
    check_source(data)
    settings = {
        "data": data, "budget_s": budget_s, "weights": weights, "class_weight": class_weight,
        "seed": seed, "val_split": val_split,
        "backbones": backbones if backbones is None or isinstance(backbones, str)
        else list(backbones),
        "sizes": None if sizes is None else list(sizes),
    }  # fmt: skip
    return start_task(root, SEARCH_TASK, None, {**settings, "candidates": [], "stage": None})


def search_task(initial: dict[str, Any]) -> TaskFn:
    """The search a task's state describes (``start_search`` put its settings there)."""
    missing = [key for key in ("data", "weights", "class_weight", "seed", "val_split")
               if key not in initial]  # fmt: skip
    if missing:
        raise ConfigError(
            f"The search task's state has no {', '.join(missing)}. Expected the settings "
            "start_search writes; start the search again from the Train page."
        )
    data, budget_s = str(initial["data"]), initial.get("budget_s")
    settings = {
        "backbones": initial.get("backbones"), "sizes": initial.get("sizes"),
        "budget_s": budget_s, "seed": initial["seed"], "val_split": initial["val_split"],
        "weights": initial["weights"], "class_weight": initial["class_weight"],
    }  # fmt: skip

    def run(update: UpdateFn, should_stop: Callable[[], bool]) -> dict[str, Any]:
        settled: list[Candidate] = []
        last_stage = [0.0]

        def progress(c: Candidate) -> None:
            settled.append(c)
            ranked = rank_candidates(settled)
            update({"candidates": [x.to_json() for x in ranked], "stage": None})

        def stage(c: Candidate, done: int, total: int) -> None:
            now = time.monotonic()
            if now - last_stage[0] >= 1.0 or done == total:  # a write a second at most
                last_stage[0] = now
                update({"stage": {"backbone": c.backbone, "image_size": c.image_size,
                                  "done": done, "total": total}})  # fmt: skip

        result = search(  # looked up at call time: tests replace it with a fast fake
            data, progress=progress, stage=stage, should_stop=should_stop, **settings
        )
        return {**result.to_json(), "stage": None}

    return run


register_task(SEARCH_TASK, search_task)
