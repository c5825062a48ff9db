"""Shared test setup: each test session gets its own studio home, never ~/.transfer_studio."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Set before any core module (or TensorFlow) is imported by a test module.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="transfer-studio-test-home-"))
os.environ["TRANSFER_STUDIO_HOME"] = str(_SESSION_HOME)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def studio_home() -> Path:
    """The studio home of this test session (built-in datasets are generated once, here)."""
    return _SESSION_HOME
