"""Where TensorFlow computes: device set-up, the run's distribution strategy, mixed precision.

TensorFlow fixes its devices when it first runs an op, once per process: ``configure()`` must
run after TensorFlow is imported and before any op. ``python -m core`` calls it before a command
that uses TensorFlow, and ``core.training.trainer.execute_run`` calls it again (a no-op once
done) for processes that train without the CLI (the dashboard, tests).

- ``TRANSFER_STUDIO_LOGICAL_CPUS=N`` splits the CPU into N logical devices, so that
  ``distribute="mirrored"`` can be tried, and tested, on a machine without GPUs.
- Every visible GPU gets memory growth: TensorFlow otherwise reserves (nearly) all of a GPU's
  memory at start-up, which starves anything else on it (another process, the next run).

A run's ``distribute`` setting chooses its strategy (``make_strategy``): ``none`` trains on the
default device (the first GPU, else the CPU); ``mirrored`` uses ``tf.distribute.MirroredStrategy``
over every visible GPU, else every logical CPU. ``mixed_precision`` (``resolve_mixed_precision``)
is on by default only where it pays: a GPU with compute capability 7.0 or more (tensor cores).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError

if TYPE_CHECKING:  # TensorFlow loads only where a command or run needs it
    import tensorflow as tf

    from core.config import RunConfig

__all__ = [
    "LOGICAL_CPUS_ENV",
    "MAX_LOGICAL_CPUS",
    "MIXED_POLICY",
    "MIXED_PRECISION_MIN_CAPABILITY",
    "DeviceSetup",
    "RunDevices",
    "configure",
    "configure_on_import",
    "describe_devices",
    "device_label",
    "gpu_capabilities",
    "make_strategy",
    "mixed_precision_pays",
    "precision_policy",
    "requested_logical_cpus",
    "resolve_mixed_precision",
    "run_devices",
    "training_devices",
]

LOGICAL_CPUS_ENV = "TRANSFER_STUDIO_LOGICAL_CPUS"
MAX_LOGICAL_CPUS = 64
MIXED_PRECISION_MIN_CAPABILITY = (7, 0)  # Volta and later: tensor cores run float16 fast
MIXED_POLICY = "mixed_float16"

_lock = threading.Lock()
_configured: DeviceSetup | None = None


@dataclass(frozen=True)
class DeviceSetup:
    """What ``configure`` did: logical CPUs made (``None``: left as one), GPUs and their memory
    growth (``False`` when TensorFlow had already initialised the GPU before ``configure``)."""

    logical_cpus: int | None
    gpus: int
    memory_growth: bool


@dataclass(frozen=True)
class RunDevices:
    """Where one run trains: its strategy (``None``: the default device), replica count, a label
    for the pages (``CPU``, ``GPU:0``, ``2 x CPU (mirrored)``) and whether mixed precision is on."""

    strategy: Any  # tf.distribute.Strategy | None
    replicas: int
    label: str
    mixed_precision: bool

    def global_batch(self, batch_size: int) -> int:
        """Images per training step over all replicas (``batch_size`` is per replica)."""
        return batch_size * self.replicas

    def scaled_lr(self, lr: float) -> float:
        """The learning-rate rule of a mirrored run: linear scaling, ``lr × replicas``.

        With the global batch ``replicas`` times larger, each step averages over that many more
        images; scaling the rate by the same factor keeps the update per image about what a
        single-device run makes (Goyal et al., 2017). One replica: ``lr`` unchanged.
        """
        return lr * self.replicas


def requested_logical_cpus(environ: dict[str, str] | None = None) -> int | None:
    """``TRANSFER_STUDIO_LOGICAL_CPUS`` as a count (``None`` when unset or empty).

    Raises ``ConfigError`` (one line: received, expected, fix) for anything but a whole number
    from 1 to ``MAX_LOGICAL_CPUS``. Reads no TensorFlow: the CLI checks it before loading it.
    """
    env = os.environ if environ is None else environ
    raw = env.get(LOGICAL_CPUS_ENV, "").strip()
    if not raw:
        return None
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_LOGICAL_CPUS:
        raise ConfigError(
            f"{LOGICAL_CPUS_ENV}={env.get(LOGICAL_CPUS_ENV)!r} is invalid. Expected a whole number "
            f"from 1 to {MAX_LOGICAL_CPUS} (logical CPU devices), e.g. {LOGICAL_CPUS_ENV}=2, or "
            "unset it."
        )
    return count


def configure() -> DeviceSetup:
    """Set TensorFlow's devices up for this process (idempotent): logical CPUs, GPU memory growth.

    Raises ``ConfigError`` for a bad ``TRANSFER_STUDIO_LOGICAL_CPUS``, or when it asks for a
    CPU split that TensorFlow, already initialised in this process, can no longer make.
    """
    global _configured
    with _lock:
        if _configured is not None:
            return _configured
        count = requested_logical_cpus()
        import tensorflow as tf

        if count is not None:
            _split_cpu(tf, count)
        gpus = tf.config.list_physical_devices("GPU")
        growth = True
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # initialised already: keep what it has
                growth = growth and bool(tf.config.experimental.get_memory_growth(gpu))
        _configured = DeviceSetup(count, len(gpus), growth and bool(gpus))
        return _configured


def _split_cpu(tf: Any, count: int) -> None:
    (cpu, *_) = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError:
        # TensorFlow ran an op before ``configure``: its devices are fixed for this process.
        # Fine if they are already what was asked (an earlier set-up), else say so.
        have = len(tf.config.list_logical_devices("CPU"))
        if have != count:
            raise ConfigError(
                f"{LOGICAL_CPUS_ENV}={count} came too late: TensorFlow was already initialised "
                f"in this process with {have} CPU device{'s' if have != 1 else ''}. Set it in "
                f"the environment of the command that starts the process, e.g. "
                f"`{LOGICAL_CPUS_ENV}={count} python -m core train ...`."
            ) from None


def training_devices() -> tuple[str, list[str]]:
    """``(kind, names)``: the devices a mirrored run replicates over (the GPUs, else the CPUs)."""
    import tensorflow as tf

    configure()
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if gpus:
        return "GPU", gpus
    return "CPU", [d.name for d in tf.config.list_logical_devices("CPU")]


def describe_devices() -> str:
    """What this process computes on, e.g. ``CPU``, ``GPU:0``, ``2 x CPU``, ``4 x GPU``."""
    kind, names = training_devices()
    if len(names) == 1:
        return "GPU:0" if kind == "GPU" else "CPU"
    return f"{len(names)} x {kind}"


def device_label(strategy: Any = None) -> str:
    """Where a run with ``strategy`` trains: ``CPU``, ``GPU:0``, ``2 x CPU (mirrored)``; a
    mirrored strategy over one device says so (``CPU (mirrored, 1 replica)``)."""
    kind, _names = training_devices()
    if strategy is None:
        return "GPU:0" if kind == "GPU" else "CPU"
    replicas = int(strategy.num_replicas_in_sync)
    if replicas == 1:
        return f"{'GPU:0' if kind == 'GPU' else 'CPU'} (mirrored, 1 replica)"
    return f"{replicas} x {kind} (mirrored)"


def gpu_capabilities() -> list[tuple[int, int]]:
    """The compute capability of each visible GPU (``(0, 0)`` when TensorFlow cannot tell)."""
    import tensorflow as tf

    configure()
    found = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu) or {}
        capability = details.get("compute_capability") or (0, 0)
        found.append((int(capability[0]), int(capability[1])))
    return found


def mixed_precision_pays() -> bool:
    """Whether ``mixed_float16`` speeds training up here: every visible GPU has compute
    capability >= 7.0 (tensor cores). Never on a CPU, where float16 is emulated and slower."""
    capabilities = gpu_capabilities()
    return bool(capabilities) and min(capabilities) >= MIXED_PRECISION_MIN_CAPABILITY


def resolve_mixed_precision(setting: str) -> bool:
    """A config's ``mixed_precision`` (auto/on/off) as on or off for this machine."""
    if setting == "auto":
        return mixed_precision_pays()
    return setting == "on"


def make_strategy(config: RunConfig) -> tf.distribute.Strategy | None:
    """The run's ``tf.distribute`` strategy: ``None`` for ``distribute="none"`` (the default
    device), a ``MirroredStrategy`` over every visible GPU (else every logical CPU) for
    ``"mirrored"``."""
    if config.distribute != "mirrored":
        return None
    import tensorflow as tf

    _kind, names = training_devices()
    # Several CPUs: the default all-reduce (NCCL) is for GPUs; copying through the host works
    # for every device kind.
    cross = None if _kind == "GPU" else tf.distribute.ReductionToOneDevice()
    return tf.distribute.MirroredStrategy(devices=names, cross_device_ops=cross)


def run_devices(config: RunConfig) -> RunDevices:
    """Strategy, replicas, label and mixed precision of ``config``'s run on this machine."""
    configure()
    strategy = make_strategy(config)
    replicas = 1 if strategy is None else int(strategy.num_replicas_in_sync)
    mixed = resolve_mixed_precision(config.mixed_precision)
    return RunDevices(strategy, replicas, device_label(strategy), mixed)


@contextlib.contextmanager
def precision_policy(mixed: bool) -> Iterator[None]:
    """Keras' global dtype policy for one run: ``mixed_float16`` when ``mixed``, and the policy
    that was in force restored afterwards, whatever happens (a worker trains many runs)."""
    import keras

    before = keras.mixed_precision.global_policy()
    if mixed:
        keras.mixed_precision.set_global_policy(MIXED_POLICY)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


class _ConfigureAfterImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as usual, and runs ``configure`` as soon as its import completes:
    after the import, before any op, whichever module imports it first."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        _remove_hook()  # one import only; the real finders locate the package
        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            try:
                configure()
            except ConfigError:
                pass  # raised again by the run's own ``configure`` call, as a run failure

        loader.exec_module = exec_module
        return spec


_hook = _ConfigureAfterImport()


def _remove_hook() -> None:
    with contextlib.suppress(ValueError):
        sys.meta_path.remove(_hook)


def configure_on_import() -> None:
    """Configure TensorFlow's devices when it is first imported (at once if it already is).

    What ``python -m core`` calls before any command: a command that never loads TensorFlow
    (``runs``, ``show``…) does not pay for it. Raises ``ConfigError`` at once for a bad
    ``TRANSFER_STUDIO_LOGICAL_CPUS``, whatever the command.
    """
    requested_logical_cpus()
    if "tensorflow" in sys.modules:
        configure()
    elif _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)
