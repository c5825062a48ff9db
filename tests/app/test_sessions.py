"""Two browser sessions of the Train page share the process-wide job queue (``st.cache_resource``).

Session A launches two runs and session B one, interleaved, with extra reruns after every click;
the store must end up with exactly those three runs, trained one at a time in submission order,
by one worker process (the server process never trains).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "streamlit_app.py")
TIMEOUT = 120


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """An empty studio home of this test's own (the pages find it via TRANSFER_STUDIO_HOME)."""
    monkeypatch.setenv("TRANSFER_STUDIO_HOME", str(tmp_path))
    return tmp_path


def _session() -> AppTest:
    """A new browser session on the Train page, its form set to a tiny run."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("pages/train.py").run()
    at.selectbox(key="backbone").select("mobilenet_v3_small")
    at.radio(key="weights").set_value("none")
    at.number_input(key="size").set_value(32)
    at.selectbox(key="data").select("builtin:textures")
    at.number_input(key="epochs").set_value(1)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _launch(at: AppTest) -> str:
    at.button(key="launch").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    run_id = at.session_state["run_id"]
    at.run()  # the same click seen again by a rerun, and a plain rerun: no new run
    at.run()
    assert at.session_state["run_id"] == run_id
    return run_id


@pytest.mark.slow
def test_two_sessions_share_one_queue(home):
    from core.training.jobs import get_job_queue

    a, b = _session(), _session()
    submitted = [_launch(a), _launch(b), _launch(a)]
    assert len(set(submitted)) == 3

    queue = get_job_queue(home, processes=True)  # what both got through loaders.job_queue()
    for run_id in submitted:
        assert queue.wait(run_id, timeout=300) == "completed", queue.store.result(run_id)["error"]
    runs = queue.store.list_runs()
    assert sorted(r["run_id"] for r in runs) == sorted(submitted)  # no copies from reruns
    results = sorted((queue.store.result(r) for r in submitted), key=lambda r: r["created_at"])
    assert [r["run_id"] for r in results] == submitted  # created in click order
    for earlier, later in zip(results, results[1:], strict=False):
        started, finished = later["started_at"], earlier["finished_at"]
        assert started is not None and finished is not None
        assert started >= finished  # one at a time, in order
    assert all(r["config"]["backbone"] == "mobilenet_v3_small" for r in results)
    owners = {queue.store.get_run(r)["owner"] for r in submitted}
    assert len(owners) == 1, "one worker process trained them all"
    assert not str(owners.pop()).startswith(f"{os.getpid()}:"), "not in the server process"

    with sqlite3.connect(queue.store.db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for at in (a, b):  # both sessions still render and follow their own latest run
        at.run()
        assert not at.exception
    assert a.selectbox[-1].value == submitted[2] and b.selectbox[-1].value == submitted[1]
