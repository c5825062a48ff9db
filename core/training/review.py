"""Review: the images a finished run's model most disagrees with, and a 2-D map of its embeddings.

How an image is scored (once per run, cached in the run folder as ``review_scores.npz``):

* the run's images are the ones it trained and validated on, as the run recorded them
  (``split.json``, ``core.runs.split``): a file whose content changed since is scored as it is
  now and flagged ``changed``, a file added since is listed as new, not scored (a run from before
  splits were recorded: for ``dataset:NAME`` the dataset as it was when the run started, else
  the source loaded again with the run's ``val_split`` and ``seed``);
* every image gets the features the model's head sees (the pooled base output): from the
  embedding cache the feature pass filled (feature extraction), else one pass of the saved
  model's base, kept in the score file;
* training images: out-of-fold probabilities from 5-fold logistic regression on those
  features, so each is scored by a head that never saw it (the saved model memorised its
  training labels, wrong ones included); validation images: the saved model's probabilities
  (it never saw them);
* ``loss`` is ``-log p(label)``; ranking by it puts the likely mistakes first.

Every call joins the cached scores with the dataset's current state (labels after edits,
excluded images, "keep" marks), so a second review is instant and shows the edits. An
unmanaged source (folder, zip, builtin) is edited through its managed copy (``edit_target``),
whose image ids are the same content hashes review reports.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.config import Mode, RunConfig
from core.errors import StudioError
from core.files import atomic_path, real_paths, sha256_file
from core.runs.store import COMPLETED, RunStore

if TYPE_CHECKING:
    from core.data.datasets import ImageInfo

SCORES_FILE = "review_scores.npz"
MAP_FILE = "review_map_{method}.npz"
# Bump when the scores' content or meaning changes, so older cached files are recomputed.
SCORES_VERSION = 3
FOLDS = 5
PROB_FLOOR = 1e-7  # -log of it (~16.1) is the largest loss reported (JSON has no infinity)
LOGREG_C = 0.01  # L2 strength of the k-fold heads on standardised features (see docs/review.md)
# The heads see at most this many principal components of the standardised features. A head's
# cost grows with images x width x classes; past this width (Lite0's 1,280 features) the widest
# 384 directions keep its scores: on 50 classes of a 200-class set (Lite0, 96 px), every
# out-of-fold loss within 0.1 of a fully converged full-width head's (lbfgs' own tolerance
# leaves 0.06), 47 of its 50 worst images the same, rank correlation 0.999, at ~2.5x less work.
HEAD_DIMS = 384
HEAD_LAYERS = ("head_dropout", "head_dense", "predictions")
MAP_METHODS = ("pca", "tsne")
# progress(step, done, total) while scores are computed: step "features" (the base's pass over the
# images, when they are not in the embedding cache), then "heads" (the k-fold heads, one by one).
ReviewProgress = Callable[[str, int, int], None]
# The map draws at most this many images (a stratified sample, every class kept): t-SNE of 50,000
# points takes many minutes, and a browser draws 5,000 markers without stutter.
MAP_MAX_POINTS = 5000
# t-SNE (openTSNE) runs on this many principal components of the features (the usual first step:
# the neighbours are found in 50 dimensions, not 1,280), for this many iterations: early
# exaggeration, then the rest (openTSNE's defaults). ``MapProgress`` hears every few of them.
TSNE_DIMS = 50
TSNE_ITERATIONS = (250, 500)
TSNE_EVERY = 25
# progress(step, done, total) of a map: the scores' steps (``ReviewProgress``) the first time,
# then "layout": t-SNE's iterations (PCA: 0 then 1 of 1).
MapProgress = ReviewProgress
TRAIN, VAL = "train", "val"


# --------------------------------------------------------------------------- the contract


@dataclass(frozen=True)
class Suspect:
    """One image the model may disagree with."""

    image: str  # the id ``dataset relabel/exclude`` accept (the managed copy's, for a source)
    path: str  # where the image file is now
    label: str  # its label now (after edits)
    predicted: str
    confidence: float  # probability of ``predicted``
    loss: float  # -log p(label)
    split: str  # "train" | "val"
    reviewed: bool  # the user chose "keep" (or relabelled it)
    changed: bool = False  # the file's content is not what the run trained on

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (``review --json``): ``changed`` only on a changed file (``true``)."""
        out = asdict(self)
        if not self.changed:
            del out["changed"]
        return out


@dataclass(frozen=True)
class Review:
    """A run's suspects joined with its dataset's current state."""

    run_id: str
    source: str  # the run's data source string
    dataset: str | None  # where edits go (None until an unmanaged source's first edit)
    suspects: list[Suspect]  # most suspicious first; reviewed ("keep") ones last
    new_images: list[str]  # ids in the dataset now that the run never saw
    gone_images: list[str]  # ids the run saw that are no longer in use
    method: str  # one sentence: how the scores were made
    changed_images: list[str] = field(default_factory=list)  # content changed since the run

    def to_json(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "run_id": self.run_id,
            "source": self.source,
            "dataset": self.dataset,
            "method": self.method,
            "new_images": list(self.new_images),
            "gone_images": list(self.gone_images),
            "changed_images": list(self.changed_images),
            "suspects": [s.to_json() for s in self.suspects],
        }


@dataclass(frozen=True)
class MapPoint:
    """One image on the embedding map."""

    image: str
    path: str
    label: str
    predicted: str
    correct: bool
    split: str
    x: float
    y: float


@dataclass(frozen=True)
class EmbeddingMap:
    """2-D positions of a run's image embeddings."""

    method: str
    points: list[MapPoint]
    scored: int = 0  # images the run scored
    drawn: int = 0  # of which the map's sample took (all of them up to ``MAP_MAX_POINTS``)
    classes: int = 0  # classes among the scored images (every one is in the sample)

    @property
    def sampled(self) -> bool:
        """Whether the map shows a sample of the scored images."""
        return self.drawn < self.scored

    def to_json(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "method": self.method,
            "points": [asdict(p) for p in self.points],
            "scored": self.scored,
            "drawn": self.drawn,
            "classes": self.classes,
        }


# --------------------------------------------------------------------------- scores


@dataclass
class _Scores:
    """Per-image scores of one run, in the order the run listed them (training, validation)."""

    source: str
    class_names: list[str]
    ids: list[str]  # the run's ids: a managed dataset's ids, else sha256[:12]
    shas: list[str]
    paths: list[str]  # where each file was found when scored
    labels: np.ndarray  # label index at training time
    splits: list[str]
    probs: np.ndarray  # (n, classes)
    features: np.ndarray | None  # (n, width); None until ``feature_matrix`` reads them
    method: str
    notes: list[str]
    changed: list[bool]  # content not what the run trained on (recorded split)
    roots: list[str] = field(default_factory=list)  # the recorded split's root (to find new files)
    scores_file: Path | None = None  # where ``features`` are, when read from the cache

    def feature_matrix(self) -> np.ndarray:
        """The features, read from the score file on first use (a review never needs them)."""
        if self.features is None:
            if self.scores_file is None:
                raise StudioError("These review scores hold no features; review the run again.")
            with np.load(self.scores_file, allow_pickle=False) as z:
                self.features = np.asarray(z["features"], np.float32)
        return self.features


def _check_run(store: RunStore, run_id: str) -> Path:
    """The run's saved model path, or a StudioError saying why the run cannot be reviewed."""
    from core.runs.predict import saved_model_path

    row = store.get_run(run_id)  # RunNotFoundError names the runs folder
    status = str(row["status"])
    if status != COMPLETED:
        raise RunNotReviewableError(
            f"Run {run_id} is {status}, not completed: review needs the model of a finished "
            f"run. {_NOT_REVIEWABLE_ADVICE.get(status, 'Pick a completed run.')}",
            run_id=run_id,
            status=status,
        )
    return saved_model_path(store, run_id)


# What to do with a run review cannot read yet, by its status (in the dashboard's words).
_NOT_REVIEWABLE_ADVICE = {
    "queued": "It is waiting to train: review it once it has completed, or pick a completed run.",
    "running": "It is still training: review it once it has completed, or pick a completed run.",
    "stopped": "Resume it to finish its training, or pick a completed run.",
    "interrupted": "Resume it to finish its training, or pick a completed run.",
    "failed": "It has no model: fix the cause its error names and train it again, or pick a "
    "completed run.",
}


class RunNotReviewableError(StudioError):
    """A run without a finished model to review; ``status`` is the run's status."""

    def __init__(self, message: str, *, run_id: str, status: str) -> None:
        super().__init__(message)
        self.run_id, self.status = run_id, status


def _fingerprint(model_path: Path) -> dict[str, Any]:
    st = model_path.stat()
    return {"version": SCORES_VERSION, "model_mtime_ns": st.st_mtime_ns, "model_bytes": st.st_size}


# The last score files read, by path, size and mtime: a page shows the review and its map on
# every rerun, and a 50,000-image file takes a second to read (features not included).
_READ: dict[tuple[str, int, int, str], _Scores] = {}
READ_KEPT = 2


def _read_scores(path: Path, fingerprint: dict[str, Any]) -> _Scores | None:
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns, json.dumps(fingerprint, sort_keys=True))
    if key in _READ:
        return _READ[key]
    scores = _read_scores_file(path, fingerprint)
    if scores is not None:
        while len(_READ) >= READ_KEPT:
            del _READ[next(iter(_READ))]
        _READ[key] = scores
    return scores


def _read_scores_file(path: Path, fingerprint: dict[str, Any]) -> _Scores | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("fingerprint") != fingerprint:
                return None
            return _Scores(
                source=meta["source"],
                class_names=list(meta["class_names"]),
                ids=[str(x) for x in z["ids"]],
                shas=[str(x) for x in z["shas"]],
                paths=[str(x) for x in z["paths"]],
                labels=np.asarray(z["labels"], np.int64),
                splits=[str(x) for x in z["splits"]],
                probs=np.asarray(z["probs"], np.float32),
                features=None,  # read when a map is laid out (a fifth of the file's size)
                scores_file=path,
                method=meta["method"],
                notes=list(meta.get("notes", [])),
                changed=[bool(x) for x in z["changed"]],
                roots=list(meta.get("roots", [])),
            )
    except (OSError, ValueError, KeyError):
        return None  # missing, half-written or from another version: recompute


def _write_scores(path: Path, scores: _Scores, fingerprint: dict[str, Any]) -> None:
    meta = {
        "fingerprint": fingerprint,
        "source": scores.source,
        "class_names": scores.class_names,
        "method": scores.method,
        "notes": scores.notes,
        "roots": scores.roots,
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            meta=np.asarray(json.dumps(meta)),
            ids=np.asarray(scores.ids, dtype=str),
            shas=np.asarray(scores.shas, dtype=str),
            paths=np.asarray(scores.paths, dtype=str),
            labels=scores.labels,
            splits=np.asarray(scores.splits, dtype=str),
            probs=scores.probs.astype(np.float32),
            features=scores.feature_matrix().astype(np.float32),
            changed=np.asarray(scores.changed, dtype=bool),
        )


def _load_model(store: RunStore, run_id: str) -> Any:
    """The run's saved Keras model (a seam: tests check a cached review never calls it)."""
    from core.runs.predict import load_run

    return load_run(store, run_id).model


def _scores(store: RunStore, run_id: str, progress: ReviewProgress | None = None) -> _Scores:
    """The run's per-image scores: from the run folder, else computed once and kept there."""
    model_path = _check_run(store, run_id)
    fingerprint = _fingerprint(model_path)
    path = store.run_dir(run_id) / SCORES_FILE
    cached = _read_scores(path, fingerprint)
    if cached is not None:
        return cached
    scores = _compute_scores(store, run_id, progress)
    _write_scores(path, scores, fingerprint)
    return scores


@dataclass
class _RunImages:
    """The images a run trained on, training images first then validation images, each in the
    order the trainer listed them."""

    ids: list[str] = field(default_factory=list)
    shas: list[str] = field(default_factory=list)  # of the content now
    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    changed: list[bool] = field(default_factory=list)  # content not what the run trained on
    roots: list[str] = field(default_factory=list)


def _run_images(store: RunStore, run_id: str, config: RunConfig) -> _RunImages:
    """The run's images from the split it recorded (a run without one: derived again)."""
    from core.data.datasets import open_dataset, parse_dataset_source

    split = store.split(run_id)
    if split is None:
        return _derived_images(store, run_id, config)
    label_of = {name: i for i, name in enumerate(store.result(run_id)["class_names"])}
    found = _RunImages(roots=[split.root])
    id_of_sha: dict[str, str] = {}
    path_of_id: dict[str, str] = {}
    name = parse_dataset_source(config.data)
    if name is not None:  # a managed dataset: its ids, and where each file is now
        with open_dataset(name) as ds:
            id_of_sha = {sha: i for i, sha in ds.shas().items()}
            path_of_id = {i.id: i.path for i in ds.images()}
    left_out: set[str] = set()
    missing = 0
    for where, image in split.images():
        if image.label not in label_of:
            left_out.add(image.label)
            continue
        image_id = id_of_sha.get(image.sha256, image.sha256[:12])
        path = path_of_id.get(image_id) or split.absolute(image)
        try:  # a managed dataset's files are named by their content: only a folder's can change
            sha = image.sha256 if name is not None and os.path.isfile(path) else sha256_file(path)
        except OSError:
            missing += 1
            continue
        found.ids.append(image_id if sha == image.sha256 else sha[:12])
        found.shas.append(sha)
        found.paths.append(path)
        found.labels.append(label_of[image.label])
        found.splits.append(where)
        found.changed.append(sha != image.sha256)
    if left_out:
        found.notes.append(
            f"class(es) {', '.join(map(repr, sorted(left_out)))} are not the run's; their images "
            "were left out"
        )
    if missing:
        found.notes.append(f"{missing} image(s) the run trained on are gone and were not scored")
    return found


def _derived_images(store: RunStore, run_id: str, config: RunConfig) -> _RunImages:
    """The images of a run that recorded no split: a managed dataset as it was when the run
    started, else the source loaded again with the run's ``val_split`` and ``seed``."""
    from core.data.datasets import open_dataset, parse_dataset_source
    from core.data.index import load_dataset, stratified_split

    result = store.result(run_id)
    class_names = list(result["class_names"])
    label_of = {name: i for i, name in enumerate(class_names)}
    notes: list[str] = []
    name = parse_dataset_source(config.data)
    if name is not None:
        with open_dataset(name) as ds:
            then: list[ImageInfo] = ds.images_at(float(result["started_at"] or 0.0))
            sha_of = ds.shas()
        unknown = sorted({i.label for i in then} - set(label_of))
        if unknown:
            notes.append(
                f"class(es) {', '.join(map(repr, unknown))} of the dataset then are not the "
                "run's; their images were left out"
            )
        then = [i for i in then if i.label in label_of]
        # load_dataset's order: classes sorted, files by name within a class (images_at's).
        then.sort(key=lambda i: (label_of[i.label], Path(i.path).name))
        labels = [label_of[i.label] for i in then]
        keys = [Path(i.path).name for i in then]  # the loader's stable split of a dataset
        train_idx, val_idx = stratified_split(
            labels, float(config.val_split), int(config.seed), keys
        )
        order = [(i, TRAIN) for i in train_idx] + [(i, VAL) for i in val_idx]
        ids = [then[i].id for i, _ in order]
        shas = [sha_of[then[i].id] for i, _ in order]
        paths = [then[i].path for i, _ in order]
        out_labels = [labels[i] for i, _ in order]
        splits = [s for _, s in order]
    else:
        data = load_dataset(config.data, val_split=config.val_split, seed=config.seed)
        unknown = sorted(set(data.class_names) - set(label_of))
        if unknown:
            notes.append(
                f"class(es) {', '.join(map(repr, unknown))} are new in the source; their images "
                "were left out"
            )
        ids, shas, paths, out_labels, splits = [], [], [], [], []
        for split, split_paths, split_labels in (
            (TRAIN, data.train_paths, data.train_labels),
            (VAL, data.val_paths, data.val_labels),
        ):
            for p, y in zip(split_paths, split_labels, strict=True):
                label = data.class_names[y]
                if label not in label_of:
                    continue
                sha = sha256_file(p)
                ids.append(sha[:12])  # the id the source's managed copy gives this picture
                shas.append(sha)
                paths.append(p)
                out_labels.append(label_of[label])
                splits.append(split)
    counts = _counts(class_names, out_labels, splits)
    trained = (result.get("dataset") or {}).get("class_counts")
    if trained and trained != counts:
        notes.append(
            "the data differs from what the run trained on (images per class and split "
            "changed), so some scores are for images it never saw"
        )
    return _RunImages(ids, shas, paths, out_labels, splits, notes, [False] * len(ids))


def _counts(class_names: list[str], labels: list[int], splits: list[str]) -> dict[str, Any]:
    counts = {s: dict.fromkeys(class_names, 0) for s in (TRAIN, VAL)}
    for y, s in zip(labels, splits, strict=True):
        counts[s][class_names[y]] += 1
    return counts


def _compute_scores(
    store: RunStore, run_id: str, progress: ReviewProgress | None = None
) -> _Scores:
    config = store.config(run_id)
    class_names = list(store.result(run_id)["class_names"])
    found = _run_images(store, run_id, config)
    ids, shas, paths, labels, splits = (
        found.ids,
        found.shas,
        found.paths,
        found.labels,
        found.splits,
    )
    if not ids:
        raise StudioError(
            f"None of the images run {run_id} trained on can be found in {config.data!r}; "
            "there is nothing to review."
        )
    model = _load_model(store, run_id)
    size = int(model.inputs[0].shape[1])
    features, from_cache = _features(config, model, paths, size, progress)
    y = np.asarray(labels, np.int64)
    train = np.asarray([s == TRAIN for s in splits])
    probs = np.zeros((len(ids), len(class_names)), np.float32)
    classes, seed = len(class_names), int(config.seed)
    folds = _fold_count(y[train])
    heads = [0, folds if folds else int((~train).any())]

    def fitted_one() -> None:
        heads[0] += 1
        if progress is not None:
            progress("heads", heads[0], heads[1])

    x = _head_inputs(features, train, seed)
    probs[train], fitted = _out_of_fold(
        x[train], y[train], classes, seed, fitted_one, others=x[~train]
    )
    if (~train).any():
        # Neither the saved model nor the k-fold heads saw these: the mean of the saved model's
        # and the heads' mean is steadier than either (a short run's model can be barely
        # trained). Without folds (one training image), one head on the training images.
        val_paths = [p for p, s in zip(paths, splits, strict=True) if s == VAL]
        saved = _head_probs(model, features[~train], val_paths)
        if fitted is None:
            fitted = _fit_predict(x[train], y[train], x[~train], classes)
            fitted_one()
        probs[~train] = (saved + fitted) / 2
    where = "the embedding cache" if from_cache else "one pass of the saved model's base"
    method = (
        f"Training images: out-of-fold probabilities of {FOLDS}-fold logistic-regression heads on "
        f"the run's {config.backbone} features ({where}; standardised, at most {HEAD_DIMS} "
        "principal components), so no image is scored by a head that "
        "saw it; validation images: the mean of the saved model's probabilities and those "
        "heads' mean (none saw them); "
        "loss = -log p(label)."
    )
    return _Scores(
        source=config.data, class_names=class_names, ids=ids, shas=shas, paths=paths,
        labels=y, splits=splits, probs=probs, features=features, method=method,
        notes=found.notes, changed=found.changed, roots=found.roots,
    )  # fmt: skip


def _features(
    config: RunConfig,
    model: Any,
    paths: list[str],
    size: int,
    progress: ReviewProgress | None = None,
) -> tuple[np.ndarray, bool]:
    """Pooled base features of ``paths`` as the saved model's head sees them; whether they came
    from the embedding cache (only where the base stayed frozen: feature extraction)."""
    import keras

    from core.training.embeddings import cache_key, forward_once, load_cached

    pooled = model.get_layer("avg_pool").output
    width = int(pooled.shape[-1])
    if config.mode == Mode.FEATURE_EXTRACTION:
        # The trainer's key: the same base, size and file list (training then validation).
        key = cache_key(config, size, paths)
        if key is not None:
            cached = load_cached(key)
            if cached is not None and cached.shape == (len(paths), width):
                return np.asarray(cached, np.float32), True
    extractor = keras.Model(model.inputs, pooled)
    stage = None
    if progress is not None:

        def stage(done: int, total: int, **_more: Any) -> None:
            progress("features", done, total)

    return forward_once(extractor, paths, size, stage=stage), False


def _head_probs(model: Any, features: np.ndarray, paths: list[str]) -> np.ndarray:
    """The saved model's probabilities from pooled features (its own head layers); from the
    images if the model's head is not the studio's usual one."""
    if len(features) == 0:
        return np.zeros((0, int(model.outputs[0].shape[-1])), np.float32)
    try:
        x: Any = features
        for name in HEAD_LAYERS:
            x = model.get_layer(name)(x)
        return np.asarray(x, np.float32)
    except ValueError:  # another head: run the whole model on the images
        from core.runs.evaluate import predict_paths

        return predict_paths(model, paths, int(model.inputs[0].shape[1]), 32)


def _head_inputs(features: np.ndarray, train: np.ndarray, seed: int) -> np.ndarray:
    """What the heads see: the features standardised on the training images and, wider than
    ``HEAD_DIMS``, cut to their first ``HEAD_DIMS`` principal components (a rotation of the
    standardised space, so the heads' L2 penalty sees the same geometry, less its narrowest
    directions). Neither step looks at a label, so no head learns from an image it scores."""
    from sklearn.preprocessing import StandardScaler

    fit_rows = features[train] if train.any() else features
    x = StandardScaler().fit(fit_rows).transform(features).astype(np.float32)
    if x.shape[1] > HEAD_DIMS and len(fit_rows) > HEAD_DIMS:
        from sklearn.decomposition import PCA

        # Exact, through the features' covariance: cheap for many more images than features.
        pca = PCA(HEAD_DIMS, svd_solver="covariance_eigh", random_state=seed)
        with _one_blas_thread():
            x = pca.fit(x[train] if train.any() else x).transform(x).astype(np.float32)
    return x


def _one_blas_thread() -> Any:
    """One BLAS thread: on a busy CPU a thread pool made the same fits ~40x slower (4 s instead
    of 0.1 s for 160 images), spinning, not computing."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def _fit_predict(
    features: np.ndarray, labels: np.ndarray, rows: np.ndarray, classes: int
) -> np.ndarray:
    """Probabilities of ``rows`` from a logistic-regression head fitted on ``features`` (the
    standardised ``_head_inputs``)."""
    out = np.zeros((len(rows), classes), np.float32)
    seen = np.unique(labels)
    if len(rows) == 0 or len(seen) == 0:
        return out + 1.0 / classes
    if len(seen) == 1:
        out[:, seen[0]] = 1.0
        return out
    from sklearn.linear_model import LogisticRegression

    with _one_blas_thread():
        head = LogisticRegression(C=LOGREG_C, max_iter=2000).fit(features, labels)
        out[:, seen] = head.predict_proba(rows)
    return out


def _fold_count(labels: np.ndarray) -> int:
    """How many folds ``_out_of_fold`` fits for ``labels`` (0 below two images)."""
    n = len(labels)
    if n < 2:
        return 0
    smallest = int(np.bincount(labels)[np.unique(labels)].min())
    return min(FOLDS, n, smallest) if smallest >= 2 else min(FOLDS, n)


def _out_of_fold(
    features: np.ndarray,
    labels: np.ndarray,
    classes: int,
    seed: int,
    fitted: Callable[[], None] | None = None,
    others: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities of each row from a logistic-regression head fitted without it (k folds);
    ``fitted()`` after each fold's head. Second: the k heads' mean probabilities of ``others``
    (rows none of them trained on; None without folds)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(labels)
    probs = np.full((n, classes), 1.0 / classes, np.float32)  # no evidence: uniform
    if n < 2:
        return probs, None
    extra = None if others is None else np.zeros((len(others), classes), np.float32)
    smallest = int(np.bincount(labels)[np.unique(labels)].min())
    splitter: KFold | StratifiedKFold
    if smallest >= 2:
        splitter = StratifiedKFold(_fold_count(labels), shuffle=True, random_state=seed)
    else:
        splitter = KFold(_fold_count(labels), shuffle=True, random_state=seed)
    heads = 0
    for fit, held in splitter.split(features, labels):
        heads += 1
        rows = features[held] if extra is None else np.concatenate([features[held], others])
        out = _fit_predict(features[fit], labels[fit], rows, classes)
        probs[held] = out[: len(held)]
        if extra is not None:
            extra += out[len(held) :]
        if fitted is not None:
            fitted()
    return probs, (None if extra is None or heads == 0 else extra / heads)


# --------------------------------------------------------------------------- joining


@dataclass
class _Row:
    index: int  # into the scores
    image: str
    path: str
    label: str
    predicted: str
    confidence: float
    loss: float
    split: str
    reviewed: bool
    relabelled: bool
    changed: bool


@dataclass
class _Joined:
    dataset: str | None
    rows: list[_Row]  # images still in use, one per id
    new: list[str]
    gone: list[str]
    changed: list[str]


def _managed_name(source: str) -> str | None:
    from core.data.datasets import find_copy, parse_dataset_source

    name = parse_dataset_source(source)
    return name if name is not None else find_copy(source)


def _join(scores: _Scores) -> _Joined:
    """The scores with each image's state now (label, file, excluded, kept)."""
    from core.data.datasets import open_dataset, parse_dataset_source

    names = scores.class_names
    index_of = {c: i for i, c in enumerate(names)}
    dataset = _managed_name(scores.source)
    now: dict[str, ImageInfo] = {}
    id_of_sha: dict[str, str] = {}
    if dataset is not None:
        with open_dataset(dataset) as ds:
            now = {i.id: i for i in ds.images()}
            id_of_sha = {sha: i for i, sha in ds.shas().items()}
    own_ids = parse_dataset_source(scores.source) is not None
    rows: dict[str, _Row] = {}
    gone: list[str] = []
    seen: set[str] = set()
    for k, (run_id, sha) in enumerate(zip(scores.ids, scores.shas, strict=True)):
        image = run_id if own_ids or dataset is None else id_of_sha.get(sha, run_id)
        seen.add(image)
        p = scores.probs[k]
        trained_label = names[int(scores.labels[k])]
        if dataset is None:  # an unmanaged source not edited yet: as it was, if still there
            if not os.path.exists(scores.paths[k]):
                gone.append(image)
                continue
            label, path, reviewed = trained_label, scores.paths[k], False
        else:
            info = now.get(image)
            if info is None or info.excluded:
                gone.append(image)
                continue
            label, path, reviewed = info.label, info.path, info.reviewed
        pred = int(np.argmax(p))
        p_label = float(p[index_of[label]]) if label in index_of else 0.0
        row = _Row(
            index=k, image=image, path=path, label=label, predicted=names[pred],
            confidence=round(float(p[pred]), 6),
            loss=round(-math.log(max(p_label, PROB_FLOOR)), 6),
            split=scores.splits[k], reviewed=reviewed, relabelled=label != trained_label,
            changed=scores.changed[k],
        )  # fmt: skip
        # The same picture twice in a source: one image in its copy; keep its worse score.
        if image not in rows or row.loss > rows[image].loss:
            rows[image] = row
    if dataset is None:
        new = _new_in_folder(scores)
    else:
        new = [i.id for i in now.values() if not i.excluded and i.id not in seen]
    changed = sorted({r.image for r in rows.values() if r.changed})
    return _Joined(dataset, list(rows.values()), new, sorted(set(gone)), changed)


_SETTLED_NS = 2_000_000_000  # a folder changed this recently is read again every time
# ``_new_in_folder``'s answers: (the folder's state, the new ids) by the scored files.
_NEW_IN_FOLDER: dict[tuple[str, tuple[str, ...], int, int], tuple[str, list[str]]] = {}
NEW_IN_FOLDER_KEPT = 8


def _folder_state(roots: Sequence[str]) -> tuple[str, list[str]] | None:
    """A digest of every entry's name, size and modification time under ``roots`` (symlinked
    folders followed once) and the image files found, or None when something changed in the last
    two seconds (timestamps tick coarsely: a change within one tick could keep the same state)
    or cannot be read."""
    from core.data.layout import is_image_name

    digest = hashlib.sha256()
    images: list[str] = []
    recent = time.time_ns() - _SETTLED_NS
    for root in roots:
        seen: set[str] = set()
        stack = [root]
        while stack:
            folder = stack.pop()
            real = os.path.realpath(folder)
            if real in seen:
                continue
            seen.add(real)
            try:
                with os.scandir(folder) as entries:
                    listed = sorted(entries, key=lambda e: e.name)
                    for entry in listed:
                        st = entry.stat()
                        if st.st_mtime_ns > recent:
                            return None
                        if entry.is_dir():
                            stack.append(entry.path)
                        elif is_image_name(entry.name):
                            images.append(entry.path)
                        digest.update(f"{entry.path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:
                return None
    return digest.hexdigest(), images


def _new_in_folder(scores: _Scores) -> list[str]:
    """Ids of the files in an unmanaged source now that the run did not train on (only known
    for a run that recorded its split; the ids are content hashes, as the managed copy's).
    Remembered in this process while the folder stays as it was."""
    if not scores.roots:
        return []
    # The review section and its map ask on every rerun: scanning a 50,000-file folder again
    # took seconds each time, its state (one ``stat`` per file) a tenth of that.
    found = _folder_state(scores.roots)
    if found is None:
        return _read_new_in_folder(scores)
    state, images = found
    # The scored files by value: a review just computed and the same scores read back from the
    # run folder are two objects.
    key = (scores.source, tuple(scores.roots), len(scores.paths), hash(tuple(scores.paths)))
    known = _NEW_IN_FOLDER.get(key)
    if known is not None and known[0] == state:
        return list(known[1])
    plain = {os.path.abspath(p) for p in scores.paths}
    if all(os.path.abspath(p) in plain for p in images):
        new: list[str] = []  # every image file there was scored: no scan needed
    else:
        new = _read_new_in_folder(scores)
    while len(_NEW_IN_FOLDER) >= NEW_IN_FOLDER_KEPT:
        del _NEW_IN_FOLDER[next(iter(_NEW_IN_FOLDER))]
    _NEW_IN_FOLDER[key] = (state, new)
    return list(new)


def _read_new_in_folder(scores: _Scores) -> list[str]:
    from core.data.index import load_dataset

    try:
        data = load_dataset(scores.source)
    except StudioError:  # the source is gone or unreadable: nothing new to list
        return []
    # A file at a scored path is not new; only the others are resolved (symlinks, another
    # spelling of the root): resolving 100,000 paths on every look took seconds.
    plain = {os.path.abspath(p) for p in scores.paths}
    maybe = [p for p in (*data.train_paths, *data.val_paths) if os.path.abspath(p) not in plain]
    scored = set(real_paths(list(scores.paths))) if maybe else set()
    now = [p for p, real in zip(maybe, real_paths(maybe), strict=True) if real not in scored]
    return sorted({sha256_file(p)[:12] for p in now})


# --------------------------------------------------------------------------- public API


def review_run(
    store: RunStore, run_id: str, top: int | None = None, progress: ReviewProgress | None = None
) -> Review:
    """Rank a completed run's images by how strongly the model disagrees with their label.
    ``progress`` follows the scores' computation (see ``ReviewProgress``), the first time only.

    ``top``: keep the first ``top`` suspects (None: all scored images). Excluded images and
    images relabelled to what the model predicts drop out; "kept" ones are listed last. The
    scores are computed once (cached in the run folder); every call joins them with the
    dataset's current state.
    """
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise StudioError(f"top must be a whole number of at least 1, got {top!r}; e.g. 20.")
    scores = _scores(store, run_id, progress)
    joined = _join(scores)
    rows = [r for r in joined.rows if not (r.relabelled and r.label == r.predicted)]
    rows.sort(key=lambda r: (r.reviewed, -r.loss, r.image))
    suspects = [
        Suspect(
            r.image,
            r.path,
            r.label,
            r.predicted,
            r.confidence,
            r.loss,
            r.split,
            r.reviewed,
            r.changed,
        )  # fmt: skip
        for r in rows[:top]
    ]
    method = scores.method
    if scores.notes:
        method += " Note: " + "; ".join(scores.notes) + "."
    return Review(
        run_id=run_id, source=scores.source, dataset=joined.dataset, suspects=suspects,
        new_images=joined.new, gone_images=joined.gone, method=method,
        changed_images=joined.changed,
    )  # fmt: skip


def suspects_by_class(review: Review, per_class: int) -> dict[str, list[Suspect]]:
    """The first ``per_class`` suspects of each current label, in review order."""
    out: dict[str, list[Suspect]] = {}
    for s in review.suspects:
        group = out.setdefault(s.label, [])
        if len(group) < per_class:
            group.append(s)
    return out


def stratified_sample(labels: Sequence[int] | np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``limit`` items, every label kept (when ``limit`` allows one
    each) and the rest shared in proportion to each label's count; all items if they fit. With
    more labels than ``limit``, one item of each label (more than ``limit``)."""
    y = np.asarray(labels, dtype=np.int64)
    if len(y) <= limit:
        return np.arange(len(y))
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) >= limit:
        take = np.ones_like(counts)
    else:  # one each, the rest in proportion to what each class has left (largest remainder)
        rest = counts - 1
        share = rest / rest.sum() * (limit - len(classes))
        extra = np.floor(share).astype(np.int64)
        spare = limit - len(classes) - int(extra.sum())
        extra[np.argsort(-(share - extra), kind="stable")[:spare]] += 1
        take = 1 + extra
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(y == c), size=int(n), replace=False)
        for c, n in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def embedding_map(
    store: RunStore,
    run_id: str,
    method: str = "pca",
    max_points: int = MAP_MAX_POINTS,
    progress: MapProgress | None = None,
) -> EmbeddingMap:
    """2-D positions of the run's image embeddings (the scored features): ``pca`` (default,
    instant) or ``tsne`` (openTSNE on their first ``TSNE_DIMS`` principal components; seconds
    for a few thousand images). Past ``max_points`` scored images the map is a stratified sample
    of them (``stratified_sample`` by the labels the run trained on: every class shown). The
    layout is computed once and cached, so edits recolour the map without moving it.
    ``progress`` follows the scores (the first time) and the layout (see ``MapProgress``)."""
    if method not in MAP_METHODS:
        raise StudioError(
            f"Unknown map method {method!r}; expected one of {', '.join(MAP_METHODS)}."
        )
    scores = _scores(store, run_id, progress)
    seed = int(store.config(run_id).seed)
    sample = stratified_sample(scores.labels, max_points, seed)
    xy = np.zeros((len(scores.labels), 2), np.float64)
    xy[sample] = _layout(store, run_id, scores, method, sample, progress)
    keep = np.zeros(len(scores.labels), dtype=bool)
    keep[sample] = True
    joined = _join(scores)
    points = [
        MapPoint(
            image=r.image,
            path=r.path,
            label=r.label,
            predicted=r.predicted,
            correct=r.label == r.predicted,
            split=r.split,
            x=float(xy[r.index, 0]),
            y=float(xy[r.index, 1]),
        )  # fmt: skip
        for r in joined.rows
        if keep[r.index]
    ]
    classes = len(np.unique(np.asarray(scores.labels)))
    return EmbeddingMap(
        method, points, scored=len(scores.labels), drawn=len(sample), classes=classes
    )


def _layout(
    store: RunStore,
    run_id: str,
    scores: _Scores,
    method: str,
    sample: np.ndarray,
    progress: MapProgress | None = None,
) -> np.ndarray:
    """Positions of the ``sample`` images (in its order), cached by their content."""
    path = store.run_dir(run_id) / MAP_FILE.format(method=method)
    key = np.asarray(scores.shas, dtype=str)[sample]
    try:
        with np.load(path, allow_pickle=False) as z:
            if z["shas"].shape == key.shape and bool(np.all(z["shas"] == key)):
                return np.asarray(z["xy"], np.float64)
    except (OSError, ValueError, KeyError):
        pass
    xy = _project(scores.feature_matrix()[sample], method, int(store.config(run_id).seed), progress)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, shas=key, xy=xy)
    return xy


def _project(
    features: np.ndarray, method: str, seed: int, progress: MapProgress | None = None
) -> np.ndarray:
    n = len(features)
    xy = np.zeros((n, 2), np.float64)
    if n < 2:
        return xy
    x = features.astype(np.float64)
    if method == "tsne" and n >= 5:
        out = _tsne(x, seed, progress)
    else:
        from sklearn.decomposition import PCA

        if progress is not None:
            progress("layout", 0, 1)
        out = PCA(min(2, n, x.shape[1]), random_state=seed).fit_transform(x)
        if progress is not None:
            progress("layout", 1, 1)
    xy[:, : out.shape[1]] = out
    return np.nan_to_num(xy)


def _tsne(x: np.ndarray, seed: int, progress: MapProgress | None = None) -> np.ndarray:
    """openTSNE's 2-D embedding of ``x`` (its first ``TSNE_DIMS`` principal components), PCA
    initialised, ``TSNE_ITERATIONS`` long; ``progress("layout", done, total)`` every
    ``TSNE_EVERY`` iterations."""
    from openTSNE import TSNE
    from sklearn.decomposition import PCA

    n = len(x)
    if x.shape[1] > TSNE_DIMS and n > TSNE_DIMS:
        x = PCA(TSNE_DIMS, random_state=seed).fit_transform(x)
    early, rest = TSNE_ITERATIONS
    total, done = early + rest, [0]

    def tick(_iteration: int, _error: float, _embedding: np.ndarray) -> bool:
        done[0] += TSNE_EVERY  # openTSNE counts each phase's iterations from 1
        if progress is not None:
            progress("layout", min(done[0], total), total)
        return False  # never stop early

    if progress is not None:
        progress("layout", 0, total)
    tsne = TSNE(
        perplexity=float(min(30.0, (n - 1) / 3)), initialization="pca", random_state=seed,
        early_exaggeration_iter=early, n_iter=rest, n_jobs=os.cpu_count() or 1,
        callbacks=tick if progress is not None else None, callbacks_every_iters=TSNE_EVERY,
        verbose=False,
    )  # fmt: skip
    return np.asarray(tsne.fit(x), np.float64)


def edit_target(store: RunStore, run_id: str) -> tuple[str, bool]:
    """The managed dataset edits of this run's images go to: ``(name, made_now)``.

    ``dataset:NAME`` → ``(NAME, False)``; an unmanaged source → its managed copy, made on the
    first call (named after the source, ``photos.zip`` → ``photos``, a taken name gets `` 2``),
    found again by every later call, from any run on the same source.
    """
    from core.data.datasets import copy_of, dataset_path, parse_dataset_source

    source = store.config(run_id).data
    name = parse_dataset_source(source)
    if name is not None:
        return dataset_path(name).name, False  # DataError listing the datasets if it is gone
    return copy_of(source)


def retrain_config(store: RunStore, run_id: str) -> RunConfig:
    """The run's config on its edited dataset (``dataset:<edit target>``), named
    ``"<run name> · fixed"``; makes the managed copy if the run's source has none yet."""
    from core.runs.store import MAX_RUN_NAME

    name, _made = edit_target(store, run_id)
    run_name = str(store.result(run_id)["name"])
    suffix = " · fixed"
    cut = run_name[: MAX_RUN_NAME - len(suffix)].rstrip()
    return store.config(run_id).with_changes(data=f"dataset:{name}", name=cut + suffix)


__all__ = [
    "MAP_MAX_POINTS",
    "MapProgress",
    "ReviewProgress",
    "EmbeddingMap",
    "MapPoint",
    "Review",
    "Suspect",
    "edit_target",
    "embedding_map",
    "retrain_config",
    "review_run",
    "stratified_sample",
    "suspects_by_class",
    "RunNotReviewableError",
]
