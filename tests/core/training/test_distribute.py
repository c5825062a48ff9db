"""One run over several devices (``distribute="mirrored"``), mixed precision, device set-up.

TensorFlow fixes its devices once per process, so everything that needs two (logical CPU)
devices runs in a subprocess started with ``TRANSFER_STUDIO_LOGICAL_CPUS=2``. The GPU test runs
only where a GPU is visible (``-m gpu``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.config import RunConfig
from core.errors import ConfigError
from tests.helpers import TINY

ROOT = Path(__file__).resolve().parents[3]
# Tiny, fast Lite0 runs: bundled ImageNet weights, 64 px, no augmentation (cached features).
LITE0 = [
    "--data", "builtin:textures", "--image-size", "64", "--no-augment", "--dropout", "0",
]  # fmt: skip
# A mirrored run's model and a single-device run's with the same global batch and learning rate
# train the same steps; they differ only by float rounding (the order of the all-reduce sums).
PROB_TOLERANCE = 1e-3


def _env(logical_cpus: str | None = None) -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    env.pop("TRANSFER_STUDIO_LOGICAL_CPUS", None)
    if logical_cpus is not None:
        env["TRANSFER_STUDIO_LOGICAL_CPUS"] = logical_cpus
    return env


def cli(*args: str, logical_cpus: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        cwd=ROOT, env=_env(logical_cpus), capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def script(code: str, logical_cpus: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT, env=_env(logical_cpus), capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def last_json(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-2", "two", "2.5", "65", "1e3"])
def test_bad_logical_cpu_counts_are_refused(value: str) -> None:
    from core.devices import requested_logical_cpus

    with pytest.raises(ConfigError, match="TRANSFER_STUDIO_LOGICAL_CPUS=.* is invalid"):
        requested_logical_cpus({"TRANSFER_STUDIO_LOGICAL_CPUS": value})
    assert requested_logical_cpus({"TRANSFER_STUDIO_LOGICAL_CPUS": " 3 "}) == 3
    assert requested_logical_cpus({"TRANSFER_STUDIO_LOGICAL_CPUS": ""}) is None
    assert requested_logical_cpus({}) is None


def test_a_bad_logical_cpu_count_is_one_line_for_any_command(tmp_path: Path) -> None:
    proc = cli("runs", "--runs-dir", str(tmp_path), logical_cpus="zero")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: TRANSFER_STUDIO_LOGICAL_CPUS='zero' is invalid")
    assert "Expected a whole number from 1 to 64" in proc.stderr


@pytest.mark.slow
def test_logical_cpus_asked_after_tensorflow_started_is_a_clear_error() -> None:
    proc = script(
        """
        import os
        import tensorflow as tf
        tf.constant(1.0) + 1.0  # TensorFlow is initialised: one CPU device
        os.environ["TRANSFER_STUDIO_LOGICAL_CPUS"] = "2"
        from core.devices import configure
        try:
            configure()
        except Exception as exc:
            print(type(exc).__name__, exc)
        """
    )
    assert "ConfigError TRANSFER_STUDIO_LOGICAL_CPUS=2 came too late" in proc.stdout, proc.stderr
    assert "with 1 CPU device" in proc.stdout


def test_config_round_trip_with_the_device_settings() -> None:
    config = RunConfig(distribute="mirrored", mixed_precision="off").validate()
    again = RunConfig.from_json(config.to_json())
    assert again == config and again.extra == {}
    assert json.loads(config.to_json())["distribute"] == "mirrored"
    # A config saved before these settings existed loads with the defaults.
    old = RunConfig().to_dict()
    del old["distribute"], old["mixed_precision"]
    loaded = RunConfig.from_dict(old).validate()
    assert (loaded.distribute, loaded.mixed_precision) == ("none", "auto")


@pytest.mark.parametrize(
    ("changes", "setting", "text"),
    [
        ({"distribute": "multiworker"}, "distribute", "Distribute 'multiworker' is invalid"),
        ({"mixed_precision": "fp16"}, "mixed_precision", "Mixed precision 'fp16' is invalid"),
        ({"distribute": 2}, "distribute", "Expected text"),
        ({"mixed_precision": True}, "mixed_precision", "Expected text"),
    ],
)
def test_bad_device_settings_name_the_setting(changes: dict, setting: str, text: str) -> None:
    with pytest.raises(ConfigError, match=text) as info:
        RunConfig(**changes).validate()
    assert info.value.settings == (setting,)


def test_train_flags_set_the_device_settings() -> None:
    from core.cli import build_parser
    from core.cli.flags import config_from_args

    args = build_parser().parse_args(
        ["train", "--distribute", "mirrored", "--mixed-precision", "off"]
    )
    config = config_from_args(args)
    assert (config.distribute, config.mixed_precision) == ("mirrored", "off")
    plain = config_from_args(build_parser().parse_args(["train"]))
    assert (plain.distribute, plain.mixed_precision) == ("none", "auto")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--distribute", "ring"])


def _no_gpu() -> bool:
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")


def test_on_a_cpu_mixed_precision_auto_is_off_and_forcing_it_is_linted() -> None:
    from core import devices
    from core.lint import lint_config

    if not _no_gpu():
        pytest.skip("a GPU is visible: auto may turn mixed precision on")
    assert devices.resolve_mixed_precision("auto") is False
    assert devices.resolve_mixed_precision("on") is True
    assert devices.resolve_mixed_precision("off") is False
    assert devices.mixed_precision_pays() is False
    codes = [f["code"] for f in lint_config(RunConfig(mixed_precision="on"))]
    assert codes == ["mixed_precision_on_cpu"]
    assert lint_config(RunConfig(mixed_precision="auto")) == []
    assert devices.run_devices(RunConfig()).label == "CPU"


def test_mirrored_over_one_device_trains_on_one_replica_and_says_so() -> None:
    from core import devices
    from core.lint import lint_config

    if not _no_gpu() or len(devices.training_devices()[1]) != 1:
        pytest.skip("this process sees several devices")
    config = RunConfig(distribute="mirrored")
    found = lint_config(config)
    assert [(f["level"], f["code"]) for f in found] == [("info", "mirrored_one_device")]
    assert "trains on 1 replica" in found[0]["message"]
    assert "TRANSFER_STUDIO_LOGICAL_CPUS=2" in found[0]["message"]
    run = devices.run_devices(config)
    assert (run.replicas, run.label) == (1, "CPU (mirrored, 1 replica)")
    assert run.global_batch(32) == 32 and run.scaled_lr(1e-3) == 1e-3


def test_the_precision_policy_is_restored_even_when_the_run_fails() -> None:
    import keras

    from core.devices import precision_policy

    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(RuntimeError), precision_policy(True):
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        raise RuntimeError("the run failed")
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow
def test_a_mixed_precision_run_outputs_float32_and_resets_the_policy(tmp_path: Path) -> None:
    """Mixed precision forced on, on a CPU (slow there, but the code path is the GPU's)."""
    import keras

    from core.training.jobs import JobQueue

    queue = JobQueue(tmp_path)
    # Feature extraction: the frozen pass in float16 and the head's own training loop, which
    # must scale the loss for the LossScaleOptimizer that compile sets under this policy.
    config = RunConfig(
        data="builtin:textures", image_size=64, augment=False, epochs=3, mixed_precision="on"
    )
    run_id = queue.submit(config)
    assert queue.wait(run_id, timeout=300) == "completed", queue.store.result(run_id)["error"]
    result = queue.store.result(run_id)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert [p["mixed_precision"] for p in result["phases"]] == [True]
    losses = [float("nan") if v is None else float(v) for v in result["history"]["loss"]]
    assert losses[-1] < losses[0] / 2, losses  # unscaled gradients would leave it where it was
    assert (result["device"], result["replicas"]) == ("CPU", 1)
    model = keras.saving.load_model(result["model_path"])
    assert model.get_layer("head_dense").dtype_policy.name == "mixed_float16"
    assert model.get_layer("predictions").dtype_policy.name == "float32"
    assert model.output.dtype == "float32"
    # The next run of the process is float32 again.
    plain = queue.submit(TINY.with_changes(mode="feature_extraction"))
    assert queue.wait(plain, timeout=300) == "completed"
    assert queue.store.result(plain)["phases"][0]["mixed_precision"] is False


def test_the_head_loop_scales_the_loss_under_mixed_precision() -> None:
    """``fit_head``'s own loop with the LossScaleOptimizer that compile sets under
    ``mixed_float16``: it learns as in float32 (gradients of the unscaled loss, unscaled by the
    optimizer, would be ~32768 times too small)."""
    import keras
    import numpy as np

    from core.devices import precision_policy
    from core.training.head_fit import fit_head
    from core.training.model import compile_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 16)).astype("float32")
    y = (x[:, 0] > 0).astype("int32").tolist()
    losses = {}
    for mixed in (False, True):
        with precision_policy(mixed):
            # Seeded before the layers are built: both heads start from the same weights,
            # whatever ran earlier in this test process.
            keras.utils.set_random_seed(0)
            inputs = keras.Input((16,))
            hidden = keras.layers.Dense(8, activation="relu")(inputs)
            out = keras.layers.Dense(2, activation="softmax", dtype="float32")(hidden)
            head = keras.Model(inputs, out)
            compile_model(head, 1e-2)
            assert type(head.optimizer).__name__ == ("LossScaleOptimizer" if mixed else "Adam")
            losses[mixed] = fit_head(head, (x, y), (x, y), batch_size=16, epochs=5)["loss"]
    assert losses[True][-1] < 0.7 * losses[True][0], losses
    assert losses[True][-1] == pytest.approx(losses[False][-1], abs=0.1), losses


# -- two logical CPUs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mirrored_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """A mirrored feature-extraction run on 2 logical CPUs, and the same run on one device with
    the mirrored run's global batch (2 × 16) and learning rate (2 × 1e-3)."""
    runs = str(tmp_path_factory.mktemp("mirrored-runs"))
    common = ["train", *LITE0, "--epochs", "3", "--runs-dir", runs, "--json"]
    mirrored = last_json(
        cli(*common, "--distribute", "mirrored", "--batch-size", "16", logical_cpus="2")
    )
    single = last_json(cli(*common, "--batch-size", "32", "--lr", "0.002"))
    return {"mirrored": mirrored, "single": single}


@pytest.mark.slow
def test_a_mirrored_run_trains_on_two_logical_cpus(mirrored_runs: dict[str, dict]) -> None:
    result = mirrored_runs["mirrored"]
    assert result["status"] == "completed"
    assert result["replicas"] == 2 and result["device"] == "2 x CPU (mirrored)"
    assert result["config"]["distribute"] == "mirrored"
    history = result["history"]
    assert history["epoch"] == [1, 2, 3]
    assert all(len(history[k]) == 3 for k in ("loss", "accuracy", "val_loss", "val_accuracy"))
    assert history["loss"][-1] < history["loss"][0]
    (phase,) = result["phases"]
    assert phase["replicas"] == 2 and phase["global_batch"] == 32
    assert phase["base_lr"] == 1e-3 and phase["lr"] == pytest.approx(2e-3)
    assert "lr × replicas" in phase["lr_rule"]
    assert history["lr"] == pytest.approx([2e-3] * 3)
    assert phase["mixed_precision"] is False
    # The frozen pass ran on both replicas (Keras; the converted runtime is one device's).
    assert result["stage"]["runtime"] == "keras"
    single = mirrored_runs["single"]
    assert (single["replicas"], single["device"]) == (1, "CPU")
    # The feature cache is keyed without ``distribute``: the second run read the first's.
    assert single["stage"]["cached"] is True


@pytest.mark.slow
def test_a_mirrored_model_predicts_like_a_single_device_one(
    mirrored_runs: dict[str, dict],
) -> None:
    """Both saved models load in a plain process (one device, no strategy; only the studio's
    layer registered) and agree: same top-1 on every image, probabilities within
    ``PROB_TOLERANCE``."""
    mirrored, single = mirrored_runs["mirrored"], mirrored_runs["single"]
    root = mirrored["dataset"]["root"]
    proc = script(
        f"""
        import json, pathlib
        import numpy as np
        import keras
        from PIL import Image
        import core.models.layers  # the studio's preprocessing layer, inside every model.keras
        paths = sorted(pathlib.Path({root!r}).rglob("*.png"))
        x = np.stack([np.asarray(Image.open(p).convert("RGB").resize((64, 64)), "float32")
                      for p in paths])
        classes = {mirrored["class_names"]!r}
        labels = np.array([classes.index(p.parent.name) for p in paths])
        a = keras.saving.load_model({mirrored["model_path"]!r}).predict(x, verbose=0)
        b = keras.saving.load_model({single["model_path"]!r}).predict(x, verbose=0)
        print(json.dumps({{
            "n": len(x), "max_diff": float(np.abs(a - b).max()),
            "same_top1": float(np.mean(a.argmax(1) == b.argmax(1))),
            "accuracy": float(np.mean(a.argmax(1) == labels)),
        }}))
        """
    )
    found = last_json(proc)
    assert found["n"] == 120
    assert found["same_top1"] == 1.0, found
    assert found["max_diff"] <= PROB_TOLERANCE, found
    assert found["accuracy"] >= 0.9, found  # the textures are easy for ImageNet features


@pytest.mark.slow
def test_a_mirrored_fine_tuning_run_stops_resumes_and_predicts(tmp_path: Path) -> None:
    """Fine-tuning (activations at the cut, then Keras fit over both replicas), stopped inside
    its fine-tuning phase and resumed from the checkpoint (weights and the optimizer's state)
    in the same mirrored set-up."""
    proc = script(
        f"""
        import json
        from core.devices import configure_on_import
        configure_on_import()
        import keras
        import numpy as np
        from core.config import RunConfig
        from core.training.jobs import JobQueue

        queue = JobQueue({str(tmp_path)!r})
        config = RunConfig(data="builtin:textures", image_size=64, augment=False,
                           mode="fine_tuning", epochs=1, fine_tune_epochs=2, batch_size=16,
                           distribute="mirrored")
        holder = {{}}

        def stop_after_second(record):
            if record["epoch"] == 2:
                queue.stop(holder["id"])

        holder["id"] = run_id = queue.submit(config, progress=stop_after_second)
        first = queue.wait(run_id, timeout=300)
        queue.resume(run_id)
        second = queue.wait(run_id, timeout=300)
        result = queue.store.result(run_id)
        model = keras.saving.load_model(result["model_path"])
        probs = model.predict(np.zeros((3, 64, 64, 3), "float32"), verbose=0)
        print(json.dumps({{"first": first, "second": second, "result": result,
                           "sums": probs.sum(1).tolist()}}, default=str))
        """,
        logical_cpus="2",
    )
    found = last_json(proc)
    result = found["result"]
    assert (found["first"], found["second"]) == ("stopped", "completed"), result["error"]
    assert result["replicas"] == 2 and result["history"]["epoch"] == [1, 2, 3]
    assert result["history"]["phase"] == ["head", "fine_tune", "fine_tune"]
    head, fine = result["phases"]
    assert fine["lr"] == pytest.approx(2 * 1e-5) and fine["global_batch"] == 32
    assert fine["optimizer_restored"] is True  # Adam's mirrored state came back
    assert head["replicas"] == fine["replicas"] == 2
    assert found["sums"] == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)


# Training rows, global batch, validation rows: splits that are not multiples of the two
# replicas or of the batch (a last partial batch, a dataset smaller than one batch, a batch of
# one row that leaves a replica nothing).
UNEVEN = [(57, 32, 15), (3, 2, 1), (1, 2, 1)]


@pytest.mark.slow
def test_uneven_splits_train_as_on_one_device() -> None:
    """The head loop (``fit_head``) and Keras ``fit`` (``_fit_keras``: images, activations) over
    two replicas, with class weights, on splits that do not divide evenly: the weights after
    two epochs equal one device's (same global batch, same rows in the same order), and so do
    the logged accuracies (padding rows are not counted)."""
    proc = script(
        f"""
        import json
        from core.devices import configure_on_import
        configure_on_import()
        import keras, numpy as np, tensorflow as tf
        from core.data.pipeline import array_dataset
        from core.training.callbacks import fit_until_stopped
        from core.training.head_fit import fit_head
        from core.training.model import compile_model
        from core.training.sources import _fit_keras

        mirrored = tf.distribute.MirroredStrategy(
            ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
        cw = np.array([1.0, 3.0], "float32")

        def head(strategy):
            with strategy.scope():
                keras.utils.set_random_seed(0)
                inputs = keras.Input((6,))
                out = keras.layers.Dense(2, activation="softmax")(keras.layers.Dense(4)(inputs))
                model = keras.Model(inputs, out)
                compile_model(model, 0.05)
            return model

        found = []
        for n, batch, n_val in {UNEVEN!r}:
            rng = np.random.default_rng(n)
            x = rng.normal(size=(n, 6)).astype("float32")
            y = (np.arange(n) % 2).astype("int32")
            xv = rng.normal(size=(n_val, 6)).astype("float32")
            yv = (np.arange(n_val) % 2).astype("int32")
            row = {{"case": [n, batch, n_val]}}
            start = np.concatenate([w.ravel() for w in head(mirrored).get_weights()])
            for path in ("head", "keras"):
                weights, logs = [], []
                for strategy in (tf.distribute.get_strategy(), mirrored):
                    model = head(strategy)
                    if path == "head":
                        hist = fit_head(model, (x, y), (xv, yv), batch_size=batch, epochs=2,
                                        class_weight=cw)
                    else:
                        history = keras.callbacks.History()
                        callbacks = keras.callbacks.CallbackList([history], model=model)
                        train = array_dataset(x, y, batch, training=False)
                        val = array_dataset(xv, yv, batch, training=False)
                        _fit_keras(model, train, val, callbacks, 2, 0, cw, batch)
                        hist = history.history
                    weights.append(np.concatenate([w.ravel() for w in model.get_weights()]))
                    logs.append([hist["accuracy"], hist["val_accuracy"]])
                row[path] = {{"diff": float(np.abs(weights[0] - weights[1]).max()),
                             "moved": float(np.abs(weights[0] - start).max()), "acc": logs}}
            found.append(row)
        print(json.dumps(found))
        """,
        logical_cpus="2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [row["case"] for row in rows] == [list(case) for case in UNEVEN]
    for row in rows:
        for path in ("head", "keras"):
            assert row[path]["moved"] > 1e-2, row  # the runs trained
            assert row[path]["diff"] < 1e-5, row
            single, mirrored = row[path]["acc"]
            assert sum(mirrored, []) == pytest.approx(sum(single, []), abs=1e-6), row


@pytest.mark.slow
def test_a_mirrored_run_on_three_training_images_completes(tmp_path: Path) -> None:
    """The smallest uneven run: 3 training images at a global batch of 2 (batch 1 on each of
    two replicas), fine-tuning (head on features, then Keras fit on activations)."""
    from tests.helpers import write_pngs

    write_pngs(tmp_path / "data" / "a", 3, side=32)
    write_pngs(tmp_path / "data" / "b", 2, side=32)
    result = last_json(
        cli(
            "train", "--data", str(tmp_path / "data"), "--backbone", "mobilenet_v2",
            "--weights", "none", "--image-size", "32", "--no-augment", "--mode", "fine_tuning",
            "--epochs", "1", "--fine-tune-epochs", "1", "--batch-size", "1",
            "--distribute", "mirrored", "--runs-dir", str(tmp_path / "runs"), "--json",
            logical_cpus="2",
        )
    )  # fmt: skip
    assert result["status"] == "completed", result["error"]
    assert (result["train_images"], result["replicas"]) == (3, 2)
    assert result["history"]["phase"] == ["head", "fine_tune"]
    assert all(0.0 <= a <= 1.0 for a in result["history"]["accuracy"])


def _pins(name: str) -> dict[str, str]:
    """``{package: requirement line}`` of a requirements file (comments dropped)."""
    lines = (ROOT / name).read_text().splitlines()
    found = {}
    for line in (raw.split("#", 1)[0].strip() for raw in lines):
        if line:
            found[line.split("==")[0].split("[")[0].strip()] = line
    return found


def test_the_gpu_requirements_pin_what_the_cpu_ones_do() -> None:
    cpu, gpu = _pins("requirements.txt"), _pins("requirements-gpu.txt")
    tf_version = cpu["tensorflow-cpu"].split("==")[1].split(";")[0].strip()
    assert gpu.pop("tensorflow") == f'tensorflow[and-cuda]=={tf_version}; sys_platform == "linux"'
    cpu = {k: v for k, v in cpu.items() if k not in ("tensorflow", "tensorflow-cpu")}
    assert gpu == cpu


# -- GPU -------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_on_a_gpu_mixed_precision_trains_with_float32_output_and_memory_growth(
    tmp_path: Path,
) -> None:
    """Runs only where TensorFlow sees a GPU (install requirements-gpu.txt; ``pytest -m gpu``)."""
    if _no_gpu():
        pytest.skip("no GPU visible to TensorFlow")
    proc = script(
        f"""
        import json
        from core.devices import configure_on_import, mixed_precision_pays
        configure_on_import()
        import keras
        import tensorflow as tf
        from core.training.jobs import JobQueue
        from tests.helpers import TINY

        growth = [tf.config.experimental.get_memory_growth(g)
                  for g in tf.config.list_physical_devices("GPU")]
        queue = JobQueue({str(tmp_path)!r})
        run_id = queue.submit(TINY.with_changes(mixed_precision="on"))
        status = queue.wait(run_id, timeout=600)
        result = queue.store.result(run_id)
        model = keras.saving.load_model(result["model_path"])
        print(json.dumps({{
            "status": status, "growth": growth, "device": result["device"],
            "mixed": [p["mixed_precision"] for p in result["phases"]],
            "output": str(model.output.dtype), "policy": keras.mixed_precision.global_policy().name,
            "pays": mixed_precision_pays(),
        }}))
        """
    )
    found = last_json(proc)
    assert found["status"] == "completed"
    assert found["growth"] and all(found["growth"])
    assert found["device"].startswith("GPU")
    assert found["mixed"] == [True] and found["output"] == "float32"
    assert found["policy"] == "float32"
