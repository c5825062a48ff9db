"""Calibrated confidence: temperature scaling, expected calibration error and conformal sets.

Pure numpy/scipy on class probabilities; nothing here loads a model.

* **Temperature scaling** divides the logits by one scalar ``T`` fitted to minimise the negative
  log-likelihood of held-out labels (Guo et al., 2017). The models output softmax probabilities,
  and ``log p`` differs from the logits by a per-row constant, so ``softmax(log p / T)`` is
  exactly ``softmax(logits / T)``: no second model output is needed.
* **ECE** (expected calibration error): the images are binned by their top probability; ECE is
  the image-weighted mean gap between each bin's mean confidence and its accuracy.
* **Split conformal prediction** (Angelopoulos & Bates, 2021): the score of a validation image
  is ``1 - p(true label)``; for coverage ``1 - alpha`` the threshold ``qhat`` is the
  ``ceil((n + 1)(1 - alpha)) / n`` quantile of those scores, and a new image's set is every class
  with ``p >= 1 - qhat``. On exchangeable data the set holds the true label with probability at
  least the coverage.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import StudioError
from core.files import atomic_write_text

__all__ = [
    "CALIBRATION_FILE",
    "DEFAULT_COVERAGE",
    "ECE_BINS",
    "FOLDS",
    "PROB_FLOOR",
    "SMALL_VALIDATION",
    "T_RANGE",
    "calibrate",
    "Calibration",
    "check_coverage",
    "conformal_scores",
    "conformal_threshold",
    "diagram_bins",
    "ece",
    "fit_temperature",
    "model_key",
    "prediction_set",
    "read_calibration",
    "reliability",
    "scale",
    "write_calibration",
]

CALIBRATION_FILE = "calibration.json"
ECE_BINS = 15
PROB_FLOOR = 1e-12  # log(0) guard: a softmax output can underflow to exactly 0
T_RANGE = (0.05, 20.0)  # temperatures searched (log-spaced bounds)
# Below this many validation images the ECE after scaling is measured out-of-fold: the
# temperature is fitted on the other folds, so few images cannot flatter it.
SMALL_VALIDATION = 100
FOLDS = 5
DEFAULT_COVERAGE = 0.9


def model_key(model_path: Path) -> dict[str, Any]:
    """What ties a stored result to one model file (a retrained or replaced file is another)."""
    st = model_path.stat()
    return {"model_mtime_ns": st.st_mtime_ns, "model_bytes": st.st_size}


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / T)`` row-wise: the probabilities the logits divided by T give."""
    p = np.asarray(probs, np.float64)
    if p.size == 0 or temperature == 1.0:
        return p.astype(np.float64)
    z = np.log(np.clip(p, PROB_FLOOR, 1.0)) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = scale(probs, temperature)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p, PROB_FLOOR, 1.0)).mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` (1.0 for no data)."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels, np.int64)
    if len(labels) == 0:
        return 1.0
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    found = minimize_scalar(
        lambda log_t: _nll(probs, labels, math.exp(log_t)), bounds=(lo, hi), method="bounded"
    )
    return float(math.exp(found.x))


def reliability(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> list[dict[str, Any]]:
    """Per confidence bin (equal width on [0, 1]): ``{lo, hi, count, confidence, accuracy}``;
    ``confidence``/``accuracy`` are ``None`` for an empty bin."""
    p = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    conf = p.max(axis=1) if len(p) else np.zeros(0)
    hit = (p.argmax(axis=1) == labels) if len(p) else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Right-closed bins, the first one closed on both sides: a confidence of exactly 1 counts.
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        rows.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "count": n,
                "confidence": float(conf[mask].mean()) if n else None,
                "accuracy": float(hit[mask].mean()) if n else None,
            }
        )
    return rows


def diagram_bins(images: int) -> int:
    """Bins of a reliability diagram over ``images``: about ten images a bin, 5 to ``ECE_BINS``
    (24 images in 15 bins would draw noise)."""
    return max(5, min(ECE_BINS, images // 10))


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: the image-weighted mean |accuracy - confidence| of the bins."""
    rows = reliability(probs, labels, bins)
    total = sum(r["count"] for r in rows)
    if total == 0:
        return 0.0
    return float(
        sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"]) / total
    )


def _out_of_fold_ece(probs: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """ECE of probabilities each scaled by a temperature fitted without them (k folds)."""
    from sklearn.model_selection import KFold

    n = len(labels)
    scaled = np.zeros_like(np.asarray(probs, np.float64))
    for fit, held in KFold(min(FOLDS, n), shuffle=True, random_state=seed).split(probs):
        scaled[held] = scale(probs[held], fit_temperature(probs[fit], labels[fit]))
    return ece(scaled, labels)


@dataclass
class Calibration:
    """A run's temperature and what it does to the calibration error, plus the conformal scores
    of its validation images (under the temperature), stored as ``calibration.json``."""

    temperature: float
    ece_before: float
    ece_after: float
    method: str  # how ece_after was measured: "validation" or "out-of-fold"
    images: int
    fitted_temperature: float  # the NLL optimum, even where it was not kept
    note: str
    scores: list[float] = field(default_factory=list)  # 1 - p(true label), calibrated
    model_key: dict[str, Any] = field(default_factory=dict)  # which model file it belongs to

    def summary(self) -> dict[str, Any]:
        """The public ``calibration`` object of ``evaluate --json``."""
        return {
            "temperature": round(self.temperature, 4),
            "ece_before": round(self.ece_before, 4),
            "ece_after": round(self.ece_after, 4),
            "method": self.method,
            "images": self.images,
            "fitted_temperature": round(self.fitted_temperature, 4),
            "note": self.note,
        }


def calibrate(probs: np.ndarray, labels: np.ndarray, seed: int = 0) -> Calibration:
    """Fit the temperature on validation probabilities and measure what it changes.

    With fewer than ``SMALL_VALIDATION`` images ``ece_after`` is measured out-of-fold. A
    temperature that does not lower the measured ECE is not kept (``T = 1``): scaling that makes
    the held-out confidence worse would be a calibration in name only. Nor is one fitted on a
    validation set without a mistake (it would only sharpen).
    """
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels, np.int64)
    n = len(y)
    before = ece(p, y)
    fitted = fit_temperature(p, y)
    if n < 2:
        return Calibration(1.0, before, before, "validation", n, fitted,
                           "too few validation images to fit a temperature",
                           conformal_scores(p, y))  # fmt: skip
    if bool((p.argmax(axis=1) == y).all()):
        # Without a single mistake the likelihood only grows as T falls to 0: a fitted
        # temperature would make every future answer more confident on no evidence.
        return Calibration(1.0, before, before, "validation", n, fitted,
                           "every validation image was predicted right: there is no mistake "
                           "to calibrate the confidence on", conformal_scores(p, y))  # fmt: skip
    small = n < SMALL_VALIDATION
    method = "out-of-fold" if small else "validation"
    after = _out_of_fold_ece(p, y, seed) if small else ece(scale(p, fitted), y)
    if after <= before:
        temperature = fitted
        note = f"temperature {fitted:.2f} lowers the calibration error ({method})"
    else:
        temperature, after = 1.0, before
        note = (
            f"the fitted temperature {fitted:.2f} did not lower the calibration error "
            f"({method}); probabilities are left as the model gives them"
        )
    return Calibration(temperature, before, after, method, n, fitted, note,
                       conformal_scores(scale(p, temperature), y))  # fmt: skip


def conformal_scores(probs: np.ndarray, labels: np.ndarray) -> list[float]:
    """Nonconformity scores ``1 - p(true label)``, one per image."""
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels, np.int64)
    if len(y) == 0:
        return []
    return [round(float(s), 6) for s in 1.0 - p[np.arange(len(y)), y]]


def check_coverage(coverage: float) -> float:
    """``coverage`` as a float in (0, 1), or a StudioError naming the setting."""
    if not 0.0 < float(coverage) < 1.0:
        raise StudioError(
            f"Coverage {coverage!r} is not a fraction between 0 and 1 (exclusive); use e.g. 0.9 "
            "for prediction sets that hold the true label 9 times in 10."
        )
    return float(coverage)


def conformal_threshold(scores: list[float] | np.ndarray, coverage: float) -> float:
    """``qhat``: classes with ``p >= 1 - qhat`` form the set. 1.0 (every class) when there are
    too few scores for the coverage asked (fewer than ``1 / (1 - coverage) - 1``)."""
    coverage = check_coverage(coverage)
    s = np.sort(np.asarray(scores, np.float64))
    n = len(s)
    rank = math.ceil((n + 1) * coverage)
    if n == 0 or rank > n:
        return 1.0
    return float(s[rank - 1])


def prediction_set(probs: np.ndarray, qhat: float) -> list[int]:
    """Class indices in the conformal set of one image, most probable first (never empty: the
    top class is always in it)."""
    p = np.asarray(probs, np.float64)
    order = np.argsort(-p)
    chosen = [int(i) for i in order if p[i] >= 1.0 - qhat - 1e-12]
    return chosen or [int(order[0])]


def write_calibration(folder: Path, calibration: Calibration) -> None:
    """``calibration.json`` in the run folder (write-then-rename)."""
    atomic_write_text(folder / CALIBRATION_FILE, json.dumps(asdict(calibration)))


def read_calibration(folder: Path, model_key: dict[str, Any] | None = None) -> Calibration | None:
    """The run's stored calibration; ``None`` if missing, unreadable or for another model file."""
    try:
        data = json.loads((folder / CALIBRATION_FILE).read_text(encoding="utf-8"))
        calibration = Calibration(**data)
    except (OSError, ValueError, TypeError):
        return None
    if model_key is not None and calibration.model_key != model_key:
        return None
    return calibration
