"""Beyond one machine, on Ray: the frozen feature pass sharded over a cluster, queued runs on
its nodes.

An optional extra (``pip install -r requirements-ray.txt``): nothing outside this package
imports Ray, and a laptop user never needs it. Ray does placement, retries and the object
store; this package decides what a shard is (``core.cluster.shards``), where a feature pass's
result goes (the ordinary embedding cache, ``core.cluster.features``) and how a run trained on
a node reports back to the run store on the head (``core.cluster.runs``).

``connect(address)`` joins a cluster for the length of a ``with`` block: ``"auto"`` (the
cluster this machine belongs to, as ``ray start`` set it up), ``HOST:PORT`` of a head, or
``"local"`` (a Ray instance of this machine alone, started and stopped here).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from core.errors import StudioError

__all__ = [
    "ClusterError",
    "ClusterInfo",
    "alive_nodes",
    "connect",
    "lost_cluster",
    "ray_output_to_stderr",
    "require_ray",
    "worker_env",
]

RAY_REQUIREMENTS = "requirements-ray.txt"
INSTALL_HINT = f"pip install -r {RAY_REQUIREMENTS} (it pins ray)"
# Environment every Ray worker of ours gets from the driver: the project on the import path,
# and the settings that change what a feature pass computes (the runtime choice).
PASSED_ENV = (
    "TRANSFER_STUDIO_FEATURE_RUNTIME",
    "TRANSFER_STUDIO_LOGICAL_CPUS",
    "TF_CPP_MIN_LOG_LEVEL",
)
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ClusterError(StudioError):
    """The Ray cluster is missing, unreachable or went away."""


def require_ray() -> ModuleType:
    """The ``ray`` module, or a one-line ``ClusterError`` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ClusterError(
            f"The Ray extra is not installed, so a Ray cluster cannot be used. "
            f"Install it with: {INSTALL_HINT}."
        ) from None
    return ray


@dataclass(frozen=True)
class ClusterInfo:
    """What the driver sees of the cluster it joined."""

    address: str
    nodes: int  # alive nodes
    cpus: float
    gpus: float


def worker_env() -> dict[str, str]:
    """The environment our Ray workers run with (the driver's project and feature settings)."""
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": path}
    env.update({k: os.environ[k] for k in PASSED_ENV if k in os.environ})
    return env


def alive_nodes(ray: Any) -> list[dict[str, Any]]:
    """``ray.nodes()`` that are alive, in a stable order (by node id)."""
    return sorted((n for n in ray.nodes() if n.get("Alive")), key=lambda n: n["NodeID"])


@contextmanager
def connect(address: str) -> Iterator[ClusterInfo]:
    """Join the Ray cluster at ``address`` for the block (``auto``, ``HOST:PORT`` or ``local``).

    Raises ``ClusterError`` (one line, with the fix) when Ray is missing or no cluster answers.
    A driver that was already connected (a test's cluster) is left connected.
    """
    ray = require_ray()
    owned = not ray.is_initialized()
    if owned:
        # Ray's own C++ log lines would bury the one-line error a lost cluster gets here.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        try:
            ray.init(
                address=None if address == "local" else address,
                logging_level=logging.ERROR,
                log_to_driver=False,  # worker logs stay on the nodes; errors come back raised
                include_dashboard=False if address == "local" else None,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ClusterError(
                f"No Ray cluster answers at {address!r} ({first}). Start one with "
                "`ray start --head` (then `ray start --address HEAD:6379` on the other machines) "
                "and pass its address, or 'auto' on a machine of the cluster."
            ) from None
    try:
        resources = ray.cluster_resources()
        yield ClusterInfo(
            address=address,
            nodes=len(alive_nodes(ray)),
            cpus=float(resources.get("CPU", 0.0)),
            gpus=float(resources.get("GPU", 0.0)),
        )
    finally:
        if owned:
            ray.shutdown()


def lost_cluster(exc: BaseException, what: str) -> ClusterError | None:
    """A ``ClusterError`` for Ray's "the cluster went away" exceptions, else ``None``."""
    if "ray" not in sys.modules:
        return None
    from ray import exceptions as rx

    gone = (rx.RaySystemError, rx.GetTimeoutError, rx.NodeDiedError, rx.ActorUnavailableError)
    if isinstance(exc, gone) or isinstance(exc, ConnectionError):
        return ClusterError(
            f"The Ray cluster stopped answering during {what} ({type(exc).__name__}). "
            "Check it with `ray status` on the head, then run the command again."
        )
    return None


@contextmanager
def ray_output_to_stderr() -> Iterator[None]:
    """While connected to Ray, whatever is written to stdout (Ray's own notices, e.g. when an
    actor dies, from Python or from its C++ core) goes to stderr: stdout carries the command's
    result alone (``--json`` output stays one parseable object)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
