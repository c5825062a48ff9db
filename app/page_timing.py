"""Render-time of the Run and Predict pages on one run, measured headless with Streamlit's
AppTest (the page scripts as a server runs them, without a browser's drawing time).

Run as ``python -m app.page_timing --run RUN_ID --image FILE`` with ``TRANSFER_STUDIO_HOME`` set
to the studio holding the run; prints one JSON object: seconds for the Run page's first render
(reads and parses the evaluation) and a rerun (cached), and for Predict's top-5 of one image
(first: the model loads; second: loaded). The benchmark (``core.bench.scale``) runs it in a
process of its own, so the engine never imports Streamlit.
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
TIMEOUT_S = 600.0


def _problems(at: Any) -> list[str]:
    return [str(e.value) for e in at.exception] + [str(e.value) for e in at.error]


def time_pages(run_id: str, image: Path, top_k: int = 5) -> dict[str, Any]:
    """Seconds per render of the Run page and of Predict (``top_k`` of ``image``) on ``run_id``,
    each page script run on its own (the studio holds this one run, so each page opens on it)."""
    from streamlit.testing.v1 import AppTest

    out: dict[str, Any] = {"run_id": run_id}
    started = time.perf_counter()
    at = AppTest.from_file(str(ROOT / RUN_PAGE), default_timeout=TIMEOUT_S).run()
    out["run_page_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    at.run()
    out["run_page_rerun_s"] = round(time.perf_counter() - started, 3)
    out["run_page_problems"] = _problems(at)
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
    out["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: print ``time_pages``'s JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the run's id")
    parser.add_argument("--image", required=True, help="an image file to predict")
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)
    print(json.dumps(time_pages(args.run, Path(args.image), args.top_k)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
