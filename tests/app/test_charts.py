"""app.views.charts: pure figure builders."""

from __future__ import annotations

import json
import math

import plotly.graph_objects as go
import pytest

from app.views import charts


def _result(**over):
    base = {
        "run_id": "20260101-000000-abcdef",
        "name": "",
        "mode": "fine_tuning",
        "backbone": "mobilenet_v2",
        "status": "completed",
        "planned_epochs": 4,
        "history": {
            "epoch": [1, 2, 3, 4],
            "accuracy": [0.5, 0.6, 0.7, 0.8],
            "val_accuracy": [0.55, 0.62, 0.71, 0.79],
            "loss": [1.2, 0.9, 0.7, 0.5],
            "val_loss": [1.1, 0.95, 0.8, float("nan")],
        },
        "phases": [
            {"phase": "head", "start_epoch": 1, "trainable_params": 10},
            {"phase": "fine_tune", "start_epoch": 3, "trainable_params": 100},
        ],
        "duration_s": 12.5,
        "best_val_accuracy": 0.79,
    }
    base.update(over)
    return base


def _batches(epochs=4, steps=5):
    rows, g = [], 0
    for e in range(1, epochs + 1):
        for s in range(1, steps + 1):
            g += 1
            rows.append(
                {
                    "global_step": g,
                    "epoch": e,
                    "step": s,
                    "steps_per_epoch": steps,
                    "phase": "head" if e < 3 else "fine_tune",
                    "loss": 1.0 / g,
                    "accuracy": min(g / 20, 1.0),
                    "t": float(g),
                }
            )
    return rows


def test_batch_position_is_fractional_epoch():
    assert charts.batch_position({"epoch": 2, "step": 5, "steps_per_epoch": 10}) == 1.5
    assert charts.batch_position({"epoch": 1, "step": 10, "steps_per_epoch": 10}) == 1.0


def test_training_curves_has_train_and_validation_per_batch_and_epoch():
    fig = charts.training_curves(_result(), _batches())
    assert isinstance(fig, go.Figure)
    names = {trace.name for trace in fig.data}
    assert names == {"train (per batch)", "train (epoch)", "validation"}
    assert len(fig.data) == 6  # three curves in each of accuracy and loss
    batch_trace = fig.data[0]
    assert batch_trace.x[0] == pytest.approx(0.2) and batch_trace.x[-1] == pytest.approx(4.0)
    # NaN validation loss is dropped, not drawn as a gap at 0
    val_loss = [t for t in fig.data if t.name == "validation"][1]
    assert list(val_loss.x) == [1, 2, 3]
    json.loads(fig.to_json())  # serialisable for st.plotly_chart


def test_training_curves_marks_fine_tuning_start():
    fig = charts.training_curves(_result(), _batches())
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(lines) == 2  # one per subplot
    assert {s.x0 for s in lines} == {2.0}  # fine-tuning starts at the beginning of epoch 3
    assert any("fine-tuning" in (a.text or "") for a in fig.layout.annotations)
    assert charts.fine_tune_starts(_result(phases=[{"phase": "head", "start_epoch": 1}])) == []


def test_training_curves_before_any_data_says_waiting():
    empty = _result(history={}, phases=[], planned_epochs=3)
    fig = charts.training_curves(empty, [])
    assert len(fig.data) == 0
    assert any("Waiting" in (a.text or "") for a in fig.layout.annotations)


def test_training_curves_loss_axis_fits_the_data():
    fig = charts.training_curves(_result(), _batches())
    top = fig.layout.yaxis2.range[1]
    assert top == pytest.approx(1.2 * 1.15)


def test_thin_keeps_last_row_and_limits_points():
    rows = [{"i": i} for i in range(10_001)]
    thinned = charts._thin(rows, limit=1000)
    assert len(thinned) <= 1001
    assert thinned[0] is rows[0] and thinned[-1] is rows[-1]
    assert charts._thin(rows[:5], limit=10) == rows[:5]


def test_class_counts_figure_groups_train_and_val():
    counts = {"train": {"cat": 8, "dog": 2}, "val": {"cat": 2, "dog": 1}}
    fig = charts.class_counts_figure(counts)
    assert [t.name for t in fig.data] == ["train", "validation"]
    assert list(fig.data[0].x) == ["cat", "dog"] and list(fig.data[0].y) == [8, 2]
    assert list(fig.data[1].y) == [2, 1]
    assert fig.layout.barmode == "group"


def test_compare_curves_one_colour_and_legend_entry_per_run():
    a = _result(run_id="run-a", name="A")
    b = _result(run_id="run-b", name="B", mode="feature_extraction")
    fig = charts.compare_curves([a, b])
    assert len(fig.data) == 8  # (val + train) x (accuracy + loss) x 2 runs
    legend = [t.name for t in fig.data if t.showlegend]
    assert legend == ["A", "B"]
    colours = {t.legendgroup: set() for t in fig.data}
    for t in fig.data:
        colours[t.legendgroup].add(t.line.color)
    assert all(len(c) == 1 for c in colours.values())
    assert colours["run-a"] != colours["run-b"]


def test_compare_curves_without_runs_says_so():
    fig = charts.compare_curves([])
    assert any("Pick runs" in (a.text or "") for a in fig.layout.annotations)


def test_accuracy_vs_time_one_point_per_run_in_compare_colours():
    runs = [
        _result(run_id="a", mode="fine_tuning", duration_s=10.0, best_val_accuracy=0.9),
        _result(run_id="b", mode="feature_extraction", duration_s=3.0, best_val_accuracy=0.8),
        _result(run_id="c", mode="fine_tuning", duration_s=None, best_val_accuracy=0.7),
    ]
    fig = charts.accuracy_vs_time(runs)
    assert [t.customdata[0][1] for t in fig.data] == ["a", "b"]  # c has no wall time
    assert list(fig.data[0].x) == [10.0] and list(fig.data[0].text) == ["fine-tuning"]
    curves = charts.compare_curves(runs)
    colour = {t.legendgroup: t.line.color for t in curves.data}
    assert [t.marker.color for t in fig.data] == [colour["a"], colour["b"]]
    assert fig.layout.xaxis.range[1] == pytest.approx(11.5)
    empty = charts.accuracy_vs_time([_result(duration_s=None)])
    assert len(empty.data) == 0


def test_prediction_bars_best_on_top():
    preds = [
        {"label": "cat", "probability": 0.7},
        {"label": "dog", "probability": 0.2},
        {"label": "fox", "probability": 0.1},
    ]
    fig = charts.prediction_bars(preds, title="my run")
    bar = fig.data[0]
    assert bar.orientation == "h"
    assert list(bar.y) == ["fox", "dog", "cat"]  # plotly draws the last category on top
    assert list(bar.text) == ["10.0%", "20.0%", "70.0%"]
    assert fig.layout.title.text == "my run"
    assert math.isclose(sum(bar.x), 1.0)


def test_run_label_prefers_name():
    assert charts.run_label({"name": "mine"}) == "mine"
    label = charts.run_label({"mode": "scratch", "backbone": "vgg16", "run_id": "x-123456"})
    assert label == "from scratch · vgg16 · 123456"


# --------------------------------------------------------------------------- live chart cache


def _last(step, steps_per_epoch=10):
    return {"global_step": step, "steps_per_epoch": steps_per_epoch}


def test_curves_key_moves_with_status_epochs_and_steps():
    def run(**over):
        return _result(**{"run_id": "r", "status": "running", "planned_epochs": 4, **over})

    assert charts.curves_key(run(epochs_done=1), None) == ("r", "running", 1, -1)
    # a short run (40 planned steps): every new step is news
    assert charts.curves_key(run(), _last(11)) != charts.curves_key(run(), _last(12))
    assert charts.curves_key(run(epochs_done=2), _last(12)).epochs_done == 2
    assert charts.curves_key(run(status="completed"), _last(12)).status == "completed"


def test_curves_key_of_a_long_run_moves_by_a_fraction_of_the_run():
    long = _result(run_id="r", status="running", planned_epochs=10, epochs_done=3)
    stride = 10_000 // charts.CURVES_STEPS  # 10 epochs of 1,000 steps planned
    at = 3_000 + stride
    key = charts.curves_key(long, _last(at, steps_per_epoch=1_000))
    assert charts.curves_key(long, _last(at + stride - 1, steps_per_epoch=1_000)) == key
    assert charts.curves_key(long, _last(at + stride, steps_per_epoch=1_000)) != key
    # no planned epochs or steps known yet: every step
    unplanned = _result(run_id="r", status="running", planned_epochs=0)
    odd = charts.curves_key(unplanned, _last(7, steps_per_epoch=None))
    assert odd.step_bucket == 7


def test_a_followed_runs_chart_is_rebuilt_only_when_it_moved_on(monkeypatch):
    from app import monitor

    class Store:
        samples = 0

        def batch_sample(self, run_id, points, tail=0):
            self.samples += 1
            return _batches(epochs=1, steps=3)

    monkeypatch.setattr(monitor.st, "session_state", {})
    store = Store()
    run = _result(run_id="r", status="running", planned_epochs=4, epochs_done=0)
    first = monitor._live_curves(store, run, _last(2))
    assert monitor._live_curves(store, run, _last(2)) is first  # nothing moved on: same figure
    assert store.samples == 1
    moved = monitor._live_curves(store, run, _last(3))
    assert moved is not first and store.samples == 2
    done = monitor._live_curves(store, {**run, "status": "completed"}, _last(3))
    assert done is not moved and store.samples == 3
    # before the first batch no batch row is read
    waiting = monitor._live_curves(store, {**run, "run_id": "s"}, None)
    assert store.samples == 3 and waiting is not done


def test_training_curves_of_a_thinned_sample_spans_the_run():
    rows = _batches(epochs=4, steps=500)  # 2,000 batches
    sample = rows[:: len(rows) // 100] + rows[-1:]
    fig = charts.training_curves(_result(), sample)
    per_batch = fig.data[0]
    assert len(per_batch.x) == len(sample) <= 102
    assert per_batch.x[0] == pytest.approx(rows[0]["step"] / 500)
    assert per_batch.x[-1] == pytest.approx(4.0)


# --------------------------------------------------------------------------- nothing cut off


def test_accuracy_markers_at_100_percent_are_drawn_whole():
    perfect = _result(history={"epoch": [1, 2], "accuracy": [0.9, 1.0], "val_accuracy": [1.0, 1.0],
                               "loss": [0.2, 0.1], "val_loss": [0.1, 0.05]})  # fmt: skip
    for fig in (charts.training_curves(perfect, _batches(2)), charts.compare_curves([perfect])):
        assert fig.layout.yaxis.range[1] > 1.04  # headroom above 1.0 for a marker's half
        markers = [t for t in fig.data if "markers" in (t.mode or "")]
        assert markers and all(t.cliponaxis is False for t in markers)


def test_accuracy_vs_time_keeps_the_label_above_a_point_at_100_percent():
    fig = charts.accuracy_vs_time([_result(best_val_accuracy=1.0, duration_s=5.0)])
    (point,) = fig.data
    assert point.textposition == "top center" and point.cliponaxis is False
    assert fig.layout.yaxis.range[1] >= 1.15  # the label sits above the marker, inside the plot


def test_prediction_bars_label_a_certain_prediction_inside_its_bar():
    preds = [{"label": "cat", "probability": 1.0}, {"label": "dog", "probability": 0.0}]
    bar = charts.prediction_bars(preds).data[0]
    assert list(bar.text) == ["0.0%", "100.0%"]
    # "100.0%" outside a full-width bar would run past the figure's right edge: it goes inside.
    assert list(bar.textposition) == ["outside", "inside"] and bar.cliponaxis is False
    assert bar.insidetextanchor == "end"


def test_prediction_bars_title_is_text_not_html():
    fig = charts.prediction_bars([{"label": "a", "probability": 1.0}], title="<b>run</b>")
    assert fig.layout.title.text == "&lt;b&gt;run&lt;/b&gt;"
