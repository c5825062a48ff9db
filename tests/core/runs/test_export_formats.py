"""Every export format round-trips in its own runtime, in a process that cannot import ``core``.

One tiny run (TINY: random-weight MobileNetV2, 32 px, 1 epoch) is exported with ``export_all``
once per module; the tests then load each file themselves with only the runtime imported, check
the benchmark rows and the model card, and the bad inputs of the command line.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

import core.runs.export as export_mod
from core.errors import ConfigError, StudioError
from core.runs import formats
from core.runs.export import (
    ARTIFACT_NAMES,
    FORMATS,
    INT8_MIN_AGREEMENT,
    ExportStep,
    ExportVerificationError,
    compare_predictions,
    export_all,
    export_run,
)
from core.runs.store import FAILED, RunStore
from tests.helpers import TINY, off_by_one_class

VERIFY = Path(export_mod.__file__).with_name("verify_export.py")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from core.training.jobs import JobQueue

    root = tmp_path_factory.mktemp("export-formats")
    queue = JobQueue(root / "runs")
    run_id = queue.submit(TINY)
    assert queue.wait(run_id, timeout=300) == "completed", queue.store.result(run_id)["error"]
    yield queue.store, run_id, root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def export_steps() -> list:
    """The ``ExportStep``s the module's ``export_all`` reported, in order."""
    return []


@pytest.fixture(scope="module")
def exported(tiny, export_steps):
    store, run_id, root = tiny
    return export_all(store, run_id, root / "all", progress=export_steps.append)


@pytest.mark.slow
def test_export_all_reports_each_format_as_it_is_converted_verified_and_done(
    exported, export_steps
):
    """A page shows where a minutes-long export is and each row as soon as it is ready."""
    total = len(FORMATS)
    assert export_steps[0].step == "preparing"
    expected = [
        (step, fmt, i) for i, fmt in enumerate(FORMATS, 1)
        for step in ("converting", "verifying", "done")
    ]  # fmt: skip
    assert [(s.step, s.format, s.index) for s in export_steps[1:]] == expected
    assert {s.total for s in export_steps} == {total}
    done = [s for s in export_steps if s.step == "done"]
    rows = exported["formats"]
    assert [s.row for s in done] == [{k: v for k, v in r.items() if k != "path"} for r in rows]
    assert export_steps[1].text == f"Converting keras (1/{total})…"
    assert export_steps[-2].text.startswith(f"Verifying and benchmarking openvino ({total}/")


def _isolated(code: str, cwd: Path) -> dict:
    """Run ``code`` with ``python -I`` outside the project: ``core`` is not importable there."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-I", "-c", textwrap.dedent(code)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _inputs(folder: Path, store: RunStore, run_id: str) -> Path:
    images, _ = export_mod.verification_images(store, run_id, 32, count=3)
    path = folder / "three.npy"
    np.save(path, images.astype(np.float32))
    return path


@pytest.mark.slow
def test_export_all_writes_every_format_with_its_benchmark_row(exported):
    out = Path(exported["path"])
    rows = {row["format"]: row for row in exported["formats"]}
    assert list(rows) == list(FORMATS) and not exported["skipped_formats"]
    for fmt, row in rows.items():
        assert (out / ARTIFACT_NAMES[fmt]).exists() and row["path"] == str(out / row["file"])
        assert row["bytes"] > 0 and row["latency_ms_p50"] > 0
        assert row["accuracy"] is not None and 0 <= row["accuracy"] <= 1
        if fmt != "tflite-int8":  # float formats: every image agrees
            assert row["top1_agreement"] == 1.0, row
    runtimes = {fmt: rows[fmt]["runtime"].split()[0] for fmt in rows}
    assert runtimes == {"keras": "keras", "savedmodel": "tensorflow", "tflite": "ai_edge_litert",
                        "tflite-fp16": "ai_edge_litert", "tflite-int8": "ai_edge_litert",
                        "onnx": "onnxruntime", "openvino": "openvino"}  # fmt: skip
    # fp16 halves the float file; int8 is smaller still.
    assert rows["tflite-fp16"]["bytes"] < 0.6 * rows["tflite"]["bytes"]
    assert rows["tflite-int8"]["bytes"] < rows["tflite-fp16"]["bytes"]
    assert exported["verified_on"] == "validation" and exported["verified_images"] == 24
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            *ARTIFACT_NAMES.values(),
            "model.bin",  # OpenVINO's weights, beside model.xml
            "labels.txt",
            "config.json",
            "model_card.md",
            "confusion_matrix.png",
        ]  # fmt: skip
    )


@pytest.mark.slow
def test_the_verifier_cannot_import_core(tiny, exported, tmp_path, monkeypatch):
    store, run_id, _ = tiny
    images = np.load(_inputs(tmp_path, store, run_id))
    # Even with the project on PYTHONPATH and as the current folder, the child cannot see it.
    monkeypatch.setenv("PYTHONPATH", str(Path(export_mod.__file__).parents[2]))
    monkeypatch.chdir(Path(export_mod.__file__).parents[2])
    ran = export_mod.verify_in_runtime(
        Path(exported["path"]) / "model.keras", "keras", images, latency_runs=1
    )
    assert ran["core_importable"] is False and ran["imported_core"] is False
    assert ran["probabilities"].shape == (3, 3)


def test_a_verifier_that_could_import_core_is_refused(tmp_path, monkeypatch):
    def fake_run(cmd, **kwargs):  # a child that reports seeing the studio on its path
        assert cmd[1] == "-I" and "PYTHONPATH" not in kwargs["env"]
        assert not Path(kwargs["cwd"]).is_relative_to(Path(export_mod.__file__).parents[2])
        out = {"probabilities": [[1.0]], "latency_ms_p50": 1.0, "runtime": "x",
               "imported_core": False, "core_importable": True}  # fmt: skip
        return subprocess.CompletedProcess(cmd, 0, json.dumps(out), "")

    monkeypatch.setattr(export_mod.subprocess, "run", fake_run)
    with pytest.raises(ExportVerificationError, match="could import Transfer Studio"):
        export_mod.verify_in_runtime(tmp_path / "m.keras", "keras", np.zeros((1, 4, 4, 3)))


@pytest.mark.slow
def test_model_keras_loads_with_only_keras_imported(tiny, exported, tmp_path):
    store, run_id, _ = tiny
    path = Path(exported["path"]) / "model.keras"
    inputs = _inputs(tmp_path, store, run_id)
    out = _isolated(
        f"""
        import json, sys
        import numpy as np, keras
        model = keras.saving.load_model({str(path)!r})  # safe_mode on: stock layers only
        probs = model.predict(np.load({str(inputs)!r}), verbose=0)
        custom = [type(layer).__module__ for layer in model.layers
                  if not type(layer).__module__.startswith("keras")]
        print(json.dumps({{"core": any(m.split(".")[0] == "core" for m in sys.modules),
                           "custom": custom, "probs": probs.tolist()}}))
        """,
        tmp_path,
    )
    assert out["core"] is False and out["custom"] == []
    from core.runs.predict import load_run

    live = np.asarray(load_run(store, run_id).model(np.load(inputs)))
    np.testing.assert_allclose(np.array(out["probs"]), live, atol=1e-5)


@pytest.mark.slow
def test_each_file_predicts_the_live_top1_in_its_runtime(tiny, exported, tmp_path):
    store, run_id, _ = tiny
    inputs = _inputs(tmp_path, store, run_id)
    from core.runs.predict import load_run

    live = np.asarray(load_run(store, run_id).model(np.load(inputs)))
    for fmt in ("tflite", "tflite-fp16", "tflite-int8", "onnx", "openvino"):
        path = Path(exported["path"]) / ARTIFACT_NAMES[fmt]
        out = _isolated(
            f"""
            import json, runpy, sys, io, contextlib
            sys.argv = ["verify", {fmt!r}, {str(path)!r}, {str(inputs)!r}, "1"]
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                try:
                    runpy.run_path({str(VERIFY)!r}, run_name="__main__")
                except SystemExit as exc:
                    assert exc.code == 0, exc.code
            result = json.loads(buf.getvalue().splitlines()[-1])
            result["tf"] = "tensorflow" in sys.modules
            print(json.dumps(result))
            """,
            tmp_path,
        )
        probs = np.array(out["probabilities"])
        assert out["tf"] is False, fmt  # LiteRT, onnxruntime and OpenVINO need no TensorFlow
        atol = {"tflite-fp16": 0.02, "tflite-int8": 0.1}.get(fmt, 1e-4)
        np.testing.assert_allclose(probs, live, atol=atol, err_msg=fmt)


@pytest.mark.slow
def test_int8_file_is_full_integer_with_uint8_io(exported):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(Path(exported["path"]) / "model_int8.tflite"))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.uint8 and out["dtype"] == np.uint8
    assert inp["quantization"] == (1.0, 0)  # raw 0-255 pixels go in unchanged
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert ops and not any("FLEX" in op.upper() for op in ops), ops


@pytest.mark.slow
def test_model_card_has_data_training_results_exports_and_usage(tiny, exported):
    store, run_id, _ = tiny
    card = Path(exported["card"]).read_text("utf-8")
    result = store.result(run_id)
    for name in result["class_names"]:
        assert name in card
    for heading in ("Data", "Training", "Results", "Exports", "Versions", "Usage"):
        assert f"## {heading}" in card
    assert "builtin:textures" in card and "mobilenet_v2" in card
    assert "| precision | recall | F1 |" in card and "confusion_matrix.png" in card
    for fmt in FORMATS:
        assert f"| {fmt} | {ARTIFACT_NAMES[fmt]} |" in card
        assert f"### {ARTIFACT_NAMES[fmt]}" in card  # a usage snippet per format
    assert "keras 3." in card and "onnxruntime" in card
    assert "core" not in card.split("## Usage")[1]  # snippets need nothing from the studio


@pytest.mark.slow
def test_a_tampered_export_is_an_error_and_not_kept(tiny, tmp_path, monkeypatch):
    store, run_id, _ = tiny
    real = export_mod.verify_in_runtime

    def shifted(path, fmt, images, latency_runs=1):  # a "runtime" whose classes are off by one
        ran = real(path, fmt, images, latency_runs=1)
        ran["probabilities"] = off_by_one_class(ran["probabilities"])
        return ran

    monkeypatch.setattr(export_mod, "verify_in_runtime", shifted)
    out = tmp_path / "out"
    with pytest.raises(ExportVerificationError):
        export_run(store, run_id, "onnx", out)
    assert list(out.iterdir()) == []


def test_int8_tolerance_is_stated_and_enforced():
    rng = np.random.default_rng(0)
    live = rng.dirichlet(np.ones(4) * 0.3, size=100).astype(np.float32)
    ordered = np.sort(live, axis=1)
    clear = ordered[:, -1] - ordered[:, -2] > export_mod.NEAR_TIE_QUANTIZED
    assert clear.sum() > 80
    ok = compare_predictions(live, live, kind="int8")
    assert ok["top1_agreement"] == 1.0 and "97%" in ok["tolerance"]
    # Flip the top-1 of 4 clear images (96 % agreement): below the stated 97 %.
    flipped = live.copy()
    for i in np.flatnonzero(clear)[:4]:
        flipped[i] = np.roll(flipped[i], 1)
    assert np.mean(flipped.argmax(1)[clear] == live.argmax(1)[clear]) < INT8_MIN_AGREEMENT
    with pytest.raises(ExportVerificationError, match="int8.*97%"):
        compare_predictions(live, flipped, kind="int8")
    # Float formats allow none of that.
    with pytest.raises(ExportVerificationError, match="top-1 differs"):
        compare_predictions(live, flipped, kind="fp16")


def test_unsupported_op_names_are_pulled_from_converter_errors():
    message = "loc(...): error: 'tf.Erfinv' op is neither a custom op nor a flex op"
    assert formats.unsupported_ops(message) == ["tf.Erfinv"]


# --------------------------------------------------------------------------- bad input


def _main(argv, capsys):
    from core.cli import main

    code = main(argv)
    return code, capsys.readouterr()


def test_unknown_format_lists_the_formats(tmp_path, capsys):
    code, out = _main(["export", "--run", "x", "--format", "coreml", "--runs-dir",
                       str(tmp_path)], capsys)  # fmt: skip
    assert code != 0 and "Traceback" not in out.err
    assert "Unknown export format 'coreml'" in out.err and ", ".join(FORMATS) in out.err
    with pytest.raises(ConfigError, match="tflite-int8"):
        export_mod.normalize_format("tensorrt")


def test_a_failed_run_without_a_model_is_one_line(tmp_path, capsys):
    store = RunStore(tmp_path)
    run_id = store.create_run(TINY)
    store.mark_finished(run_id, FAILED, error="boom")
    code, out = _main(["export", "--run", run_id, "--all", "--runs-dir", str(tmp_path)], capsys)
    assert code == 1 and out.err.count("\n") == 1
    assert "has no saved model (status: failed)" in out.err


def test_a_missing_converter_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else real(name, *a)
    )
    assert export_mod.missing_packages("onnx") == ["tf2onnx"]
    with pytest.raises(StudioError, match=r"needs tf2onnx.*pip install tf2onnx"):
        export_run(RunStore(tmp_path), "whatever", "onnx", tmp_path / "out")


def test_export_all_skips_formats_whose_converter_is_missing(tmp_path, monkeypatch):
    calls = []

    def fake_export(store, run_id, jobs, out_dir, overwrite, folder, skipped=(), progress=None):
        calls.append(([fmt for fmt, _ in jobs], list(skipped)))
        return {}

    monkeypatch.setattr(export_mod, "_export", fake_export)
    monkeypatch.setattr(
        export_mod, "missing_packages", lambda fmt: ["tf2onnx"] if fmt == "onnx" else []
    )
    export_all(RunStore(tmp_path), "r1")
    ((done, skipped),) = calls
    assert "onnx" not in done and done[0] == "keras" and len(done) == len(FORMATS) - 1
    assert skipped == [{"format": "onnx", "reason": "needs tf2onnx (pip install tf2onnx)"}]
    monkeypatch.setattr(export_mod, "missing_packages", lambda fmt: ["openvino"])
    with pytest.raises(StudioError, match="No export format can be written here: keras needs"):
        export_all(RunStore(tmp_path), "r1")


def test_quantize_with_all_is_refused(tmp_path, capsys):
    code, out = _main(["export", "--run", "x", "--all", "--quantize", "--runs-dir",
                       str(tmp_path)], capsys)  # fmt: skip
    assert code != 0 and "--quantize applies to --format tflite only" in out.err


@pytest.mark.slow
def test_out_not_writable_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    store, run_id, _ = tiny

    def denied(*args, **kwargs):  # what a read-only folder does (root ignores chmod, so fake it)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(export_mod.tempfile, "mkdtemp", denied)
    code, out = _main(["export", "--run", run_id, "--format", "keras", "--out",
                       str(tmp_path / "x"), "--runs-dir", str(store.root)], capsys)  # fmt: skip
    assert code == 1 and out.err.count("\n") == 1
    assert "is not writable (Permission denied). Choose a folder you can write to" in out.err


@pytest.mark.slow
def test_cli_all_json_and_out_checks(tiny, tmp_path, capsys):
    store, run_id, _ = tiny
    base = ["export", "--run", run_id, "--runs-dir", str(store.root)]
    blocker = tmp_path / "file.bin"
    blocker.write_bytes(b"x")
    code, out = _main([*base, "--all", "--out", str(blocker)], capsys)
    assert code == 1 and "is a file, not a folder" in out.err and out.err.count("\n") == 1
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("mine")
    code, out = _main([*base, "--all", "--out", str(full)], capsys)
    assert code == 1 and "not empty" in out.err and "--overwrite" in out.err
    code, out = _main([*base, "--format", "tflite-fp16", "--json", "--out",
                       str(tmp_path / "fp16")], capsys)  # fmt: skip
    assert code == 0, out.err
    info = json.loads(out.out.strip().splitlines()[-1])
    assert info["format"] == "tflite-fp16" and info["top1_agreement"] == 1.0
    assert info["runtime"].startswith("ai_edge_litert") and info["latency_ms_p50"] > 0
    assert (tmp_path / "fp16" / "model_card.md").exists()


@pytest.mark.slow
def test_cli_export_shows_its_progress_on_stderr_and_keeps_stdout_json(
    tiny, tmp_path, capsys, monkeypatch
):
    store, run_id, _ = tiny
    monkeypatch.setenv("TRANSFER_STUDIO_PROGRESS_AFTER_S", "0")  # every stage shows
    code, out = _main(["export", "--run", run_id, "--format", "keras", "--json", "--out",
                       str(tmp_path / "k"), "--runs-dir", str(store.root)], capsys)  # fmt: skip
    assert code == 0, out.err
    assert json.loads(out.out)["format"] == "keras"  # stdout: only the JSON
    lines = [line for line in out.err.splitlines() if line.startswith("exporting: formats")]
    assert lines[0].startswith("exporting: formats 0/1 (0%): Loading the model")
    assert lines[-1].startswith("exporting: formats 1/1 (100%)") and "took" in lines[-1]


# --------------------------------------------------------------------------- Run page


def _fake_all(folder: Path, run_id: str) -> dict:
    """What export_all returns, over small real files (the page only reads and zips them)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "saved_model" / "variables").mkdir(parents=True, exist_ok=True)
    (folder / "saved_model" / "saved_model.pb").write_bytes(b"pb")
    for name, data in (("model.onnx", b"onnx"), ("labels.txt", b"a\nb\n"),
                       ("model_card.md", b"# Model card: fake\n\n![Confusion matrix](x.png)\n"
                                         b"\n## Exports\n")):  # fmt: skip
        (folder / name).write_bytes(data)
    rows = [
        {"format": "onnx", "quantized": False, "file": "model.onnx", "bytes": 2_500_000,
         "runtime": "onnxruntime 1.32.0", "latency_ms_p50": 3.21, "top1_agreement": 1.0,
         "accuracy": 0.9, "tolerance": "top-1 100 %"},
        {"format": "tflite-int8", "quantized": False, "file": "model_int8.tflite",
         "bytes": 700_000, "runtime": "ai_edge_litert 2.3.0", "latency_ms_p50": 1.0,
         "top1_agreement": 0.975, "accuracy": None, "tolerance": "top-1 ≥ 97%"},
    ]  # fmt: skip
    files = [folder / n for n in ("saved_model", "model.onnx", "labels.txt", "model_card.md")]
    return {"run_id": run_id, "path": str(folder), "files": [str(f) for f in files],
            "formats": rows, "card": str(folder / "model_card.md"), "verified_images": 24,
            "verified_on": "validation", "live_accuracy": 0.9,
            "skipped_formats": [{"format": "coreml", "reason": "needs coremltools"}]}  # fmt: skip


def test_export_views_table_zip_and_card(tmp_path):
    from app.views import run_page as run_views

    fake = _fake_all(tmp_path / "all", "r1")
    table = run_views.export_table(fake["formats"])
    assert table[0] == {
        "format": "onnx", "file": "model.onnx", "size (MB)": 2.5, "latency p50 (ms)": 3.21,
        "top-1 agreement": "100.0%", "accuracy": "90.0%", "runtime": "onnxruntime 1.32.0",
        "tolerance": "top-1 100 %",
    }  # fmt: skip
    assert table[1]["accuracy"] == "–" and table[1]["top-1 agreement"] == "97.5%"
    data = run_views.export_zip(fake["files"], "photos-7")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == [
            "photos-7/labels.txt", "photos-7/model.onnx", "photos-7/model_card.md",
            "photos-7/saved_model/saved_model.pb",
        ]  # fmt: skip
    assert run_views.export_zip_name({"name": "photos #7 / ü", "run_id": "r1"}) == (
        "photos-7-ü-r1-export.zip"
    )
    assert run_views.export_zip_name({"name": "", "run_id": "r1"}) == "run-r1-export.zip"
    card = run_views.card_for_page(Path(fake["card"]).read_text())
    assert "![Confusion" not in card and "## Exports" in card
    items = run_views.export_downloads(fake)
    assert [i["mime"] for i in items] == [
        "application/zip", "application/octet-stream", "text/plain", "text/markdown",
    ]  # fmt: skip
    one = {
        "format": "onnx",
        "runtime": "onnxruntime 1.32.0",
        "latency_ms_p50": 3.21,
        "verified_images": 24,
        "top1_agreement": 1.0,
        "max_abs_diff": 1e-7,
        "bytes": 2e6,
    }
    message = run_views.export_message(one)  # fmt: skip
    assert "verified it on 24 validation images in onnxruntime 1.32.0" in message
    assert "3.2 ms per image" in message


def _export_frames(at) -> list:
    """The export benchmark tables on the page (the per-class table is a dataframe too)."""
    return [f for f in at.dataframe if "latency p50 (ms)" in f.value.columns]


@pytest.mark.slow
def test_run_page_exports_every_format_with_table_card_and_zip(tmp_path_factory, monkeypatch):
    from streamlit.testing.v1 import AppTest

    import core.runs.export
    from tests.helpers import seeded_studio

    root = Path(__file__).resolve().parents[3]
    calls = []

    def fake_export_all(store, run_id, *args, progress=None, **kwargs):
        calls.append(run_id)
        done = _fake_all(tmp_path_factory.mktemp("fake-export") / "all", run_id)
        total = len(done["formats"])
        for i, row in enumerate(done["formats"], 1):
            for step in ("converting", "verifying", "done"):
                progress(ExportStep(step, row["format"], i, total, row if step == "done" else None))
        return done

    with seeded_studio(tmp_path_factory.mktemp("export-page-home"), TINY) as (_, run_id):
        monkeypatch.setattr(core.runs.export, "export_all", fake_export_all)
        at = AppTest.from_file(str(root / "streamlit_app.py"), default_timeout=120).run()
        at.switch_page("pages/run.py").run()
        assert not at.exception
        assert at.radio(key="export_format").options == list(FORMATS)
        assert not _export_frames(at) and not calls
        at.button(key="export_all").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert calls == [run_id]
        # Where the export went, step by step: the progress ends on the last format, done.
        (bar,) = at.get("progress")
        assert bar.proto.text == "Done: tflite-int8 (2/2)" and bar.proto.value == 100
        (frame,) = _export_frames(at)
        assert list(frame.value["format"]) == ["onnx", "tflite-int8"]
        assert list(frame.value["latency p50 (ms)"]) == [3.21, 1.0]
        assert "coreml" in at.warning[0].value and "coremltools" in at.warning[0].value
        labels = [d.proto.label for d in at.get("download_button")]
        assert labels[0] == "Download all (zip)"
        assert labels[1:] == ["saved_model.zip", "model.onnx", "labels.txt", "model_card.md"]
        assert any("Model card: fake" in m.value for m in at.markdown)
        at.run()  # a rerun keeps the table without exporting again
        assert calls == [run_id] and len(_export_frames(at)) == 1
