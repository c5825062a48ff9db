"""Safe defaults: loopback only, XSRF on, an explicit upload cap, pinned safe Keras, no pickles."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def test_server_defaults() -> None:
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    server = config["server"]
    assert server["address"] == "127.0.0.1"
    assert server["enableXsrfProtection"] is True
    assert 1 <= server["maxUploadSize"] <= 1024  # MB; Streamlit refuses larger uploads itself


def test_keras_is_pinned_at_a_version_with_the_safe_mode_fixes() -> None:
    pins = [
        line.split("==")[1].split(";")[0].strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.startswith("keras==")
    ]
    assert pins and Version(pins[0]) >= Version("3.14")


def test_no_bare_unpickling_and_models_load_in_safe_mode() -> None:
    core = ROOT / "core"  # every module, in every subpackage
    sources = {p.relative_to(core).as_posix(): p.read_text() for p in core.rglob("*.py")}
    for name, text in sources.items():
        assert "pickle.load(" not in text and "pickle.loads(" not in text, name
        assert "safe_mode=False" not in text, name
    assert "safe_mode=True" in sources["runs/predict.py"]


def test_the_server_watches_no_files() -> None:
    """An idle server must stay idle: no watcher over .venv's thousands of files."""
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["fileWatcherType"] == "none"
