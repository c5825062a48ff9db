"""Render-time of the pages on one run, measured headless with Streamlit's AppTest (the page
scripts as a server runs them, without a browser's drawing time).

Run as ``python -m app.page_timing --run RUN_ID --image FILE [--data SOURCE]`` with
``TRANSFER_STUDIO_HOME`` set to the studio holding the run; prints one JSON object: seconds for
the Data page with ``SOURCE`` in use (its health check), the Run page's first render (reads and
parses the evaluation) and a rerun (cached), its review section (the suspects of every class,
scored beforehand) and embedding map, Compare, and Predict's top-5 of one image (first: the model
loads; second: loaded). The benchmark (``core.bench.scale``) runs it in a process of its own, so
the engine never imports Streamlit.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUN_PAGE = "pages/run.py"
PREDICT_PAGE = "pages/predict.py"
DATA_PAGE = "pages/data.py"
APP = "streamlit_app.py"
COMPARE_PAGE = "pages/compare.py"
TIMEOUT_S = 600.0


def _problems(at: Any) -> list[str]:
    return [str(e.value) for e in at.exception] + [str(e.value) for e in at.error]


def _peak_rss_mb() -> float:
    """This process's peak resident memory: ``VmHWM``, the high-water mark of its own memory
    (``ru_maxrss`` also keeps the parent's at the fork, for a process started by a large one)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _timed(at: Any) -> float:
    started = time.perf_counter()
    at.run()
    return round(time.perf_counter() - started, 3)


def time_pages(run_id: str, image: Path, top_k: int = 5, data: str | None = None) -> dict[str, Any]:
    """Seconds per render of the pages on ``run_id`` (Predict: ``top_k`` of ``image``; the Data
    page: ``data`` in use, when given), each page script run on its own (the studio holds this
    one run, so each page opens on it)."""
    from streamlit.testing.v1 import AppTest

    out: dict[str, Any] = {"run_id": run_id}
    if data is not None:
        from core.paths import runs_root
        from core.runs.drafts import save_chosen_data

        save_chosen_data(runs_root(), data)  # what "Use this data" keeps
        # Through the router (its page links need the app's pages): Home first, untimed.
        at = AppTest.from_file(str(ROOT / APP), default_timeout=TIMEOUT_S).run()
        at.switch_page(DATA_PAGE)
        out["data_page_s"] = _timed(at)
        out["data_page_rerun_s"] = _timed(at)
        out["data_page_problems"] = _problems(at)
        out["data_page_health"] = [e.value for e in at.success] + [e.value for e in at.warning]
    at = AppTest.from_file(str(ROOT / RUN_PAGE), default_timeout=TIMEOUT_S)
    out["run_page_s"] = _timed(at)
    out["run_page_rerun_s"] = _timed(at)
    out["run_page_problems"] = _problems(at)
    at.toggle(key=f"review_on_{run_id}").set_value(True)
    out["review_page_s"] = _timed(at)  # every class's suspects, from the run's cached scores
    out["review_cards"] = sum(1 for b in at.button if b.label == "Relabel")  # one per card
    at.toggle(key=f"review_map_on_{run_id}").set_value(True)
    out["review_map_s"] = _timed(at)
    out["review_problems"] = _problems(at)
    at = AppTest.from_file(str(ROOT / COMPARE_PAGE), default_timeout=TIMEOUT_S)
    out["compare_page_s"] = _timed(at)
    out["compare_page_problems"] = _problems(at)
    at = AppTest.from_file(str(ROOT / PREDICT_PAGE), default_timeout=TIMEOUT_S).run()
    at.slider(key="top_k").set_value(top_k)
    started = time.perf_counter()
    at.file_uploader(key="images").upload(image.name, image.read_bytes(), "image/jpeg").run()
    out["predict_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    at.run()  # the same image again: the model is loaded
    out["predict_again_s"] = round(time.perf_counter() - started, 3)
    out["predict_problems"] = _problems(at)
    out["predict_charts"] = len(at.get("plotly_chart"))
    out["tensorflow_imported"] = "tensorflow" in sys.modules
    out["max_rss_mb"] = _peak_rss_mb()
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: print ``time_pages``'s JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the run's id")
    parser.add_argument("--image", required=True, help="an image file to predict")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--data", help="the run's data source, to time the Data page on it")
    args = parser.parse_args(argv)
    print(json.dumps(time_pages(args.run, Path(args.image), args.top_k, args.data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
