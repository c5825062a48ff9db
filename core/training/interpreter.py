"""The converted feature extractor's runner: a LiteRT interpreter over batches of raw pixels.

Apart from ``core.training.litert`` (which converts and checks, and needs Keras and TensorFlow)
so that a process which only runs an already converted file (a Ray node's feature actor) loads
numpy and LiteRT alone: seconds, not TensorFlow's start and a model build.
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np

from core.runs.formats import litert_interpreter_class

__all__ = ["RUN_BATCH", "LiteRTExtractor"]

# Images per interpreter invocation. Measured (EfficientNet-Lite0, 224 px, 2 threads): 1 to 8
# run alike, ~5% ahead of 16 or 32 (activations stay in cache); small batches also bound memory.
RUN_BATCH = 8


class LiteRTExtractor:
    """A converted feature extractor: float32 ``(n, H, W, 3)`` raw pixels → ``(n, D)`` features.

    Runs ``batch`` images per invocation, resizing the input only when that count changes (a
    resize is cheap: re-allocating before every batch costs ~2%). One invocation at a time (an
    interpreter holds tensor state).
    """

    def __init__(
        self,
        path: Path | None,
        num_threads: int | None = None,
        batch: int = RUN_BATCH,
        *,
        content: bytes | None = None,
    ) -> None:
        """``path``: the converted file; or ``content``: its bytes (``path`` then only names
        it in errors)."""
        cls = litert_interpreter_class()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite's deprecation notice, when the fallback
            self.num_threads = num_threads or os.cpu_count() or 1
            source = (
                {"model_content": content} if content is not None else {"model_path": str(path)}
            )
            self._interpreter = cls(**source, num_threads=self.num_threads)
        (inp,) = self._interpreter.get_input_details()
        (out,) = self._interpreter.get_output_details()
        if inp["dtype"] != np.float32 or out["dtype"] != np.float32:
            raise ValueError(f"{path} is not a float32 model ({inp['dtype']} → {out['dtype']})")
        self.path, self.batch = path, max(1, batch)
        self.input_shape = tuple(int(d) for d in inp["shape_signature"])
        self.feature_shape = tuple(int(d) for d in out["shape_signature"][1:])
        self._input, self._output = int(inp["index"]), int(out["index"])
        self._allocated = int(inp["shape"][0])
        self._run_lock = threading.Lock()
        self._interpreter.allocate_tensors()  # fails here, not mid-pass, on a broken file

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        if len(chunk) != self._allocated:
            self._interpreter.resize_tensor_input(self._input, list(chunk.shape))
            self._interpreter.allocate_tensors()
            self._allocated = len(chunk)
        self._interpreter.set_tensor(self._input, chunk)
        self._interpreter.invoke()
        return np.array(self._interpreter.get_tensor(self._output))  # a copy: buffers are reused

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != self.input_shape[1:]:
            raise ValueError(f"expected a (n, {self.input_shape[1:]}) batch, got {x.shape}")
        out = np.empty((len(x), *self.feature_shape), np.float32)
        with self._run_lock:
            for start in range(0, len(x), self.batch):
                out[start : start + self.batch] = self._run(x[start : start + self.batch])
        return out
