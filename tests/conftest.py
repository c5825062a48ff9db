"""Shared test setup: each test session gets its own studio home, never ~/.transfer_studio."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

# Set before any core module (or TensorFlow) is imported by a test module.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="transfer-studio-test-home-"))
os.environ["TRANSFER_STUDIO_HOME"] = str(_SESSION_HOME)
# Feature passes run on Keras: converting each backbone/size the tests use to LiteRT would cost
# seconds per test module. tests/core/training/test_litert_features.py turns the runtime on where
# it is tested.
os.environ["TRANSFER_STUDIO_FEATURE_RUNTIME"] = "keras"

import pytest  # noqa: E402

# The page tests import it from here (it lives with the other shared helpers).
from tests.helpers import seeded_studio  # noqa: E402, F401

if TYPE_CHECKING:
    pass


@pytest.fixture(autouse=True)
def _no_worker_left_behind() -> Iterator[None]:
    """Worker and task processes a test started (the dashboard starts them) end with the test:
    none keeps training into a folder that is gone, or on the cores the next test needs."""
    yield
    jobs = sys.modules.get("core.training.jobs")
    if jobs is not None and jobs.spawned_workers():
        jobs.stop_spawned_workers(timeout=5.0)
    tasks = sys.modules.get("core.tasks")  # the Train page's LR finder and search tasks
    if tasks is not None and tasks.task_processes():
        tasks.stop_task_processes(timeout=5.0)


@pytest.fixture(scope="session")
def studio_home() -> Path:
    """The studio home of this test session (built-in datasets are generated once, here)."""
    return _SESSION_HOME


@pytest.fixture
def recorded_studio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A studio home of its own holding one completed run of ``builtin:textures``, recorded as
    the trainer records one but never trained (``helpers.fake_run``): ``(home, run_id)``. For
    pages and commands that only need a finished run's record."""
    from core.runs.store import RunStore
    from tests.helpers import fake_run

    home = tmp_path / "studio"
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(home))
    yield home, fake_run(RunStore(home), "builtin:textures")
