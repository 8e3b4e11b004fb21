"""What the runner calls a result: a NaN evaluation is an error record, never `ok` at chance
accuracy; a known failure (a diverged training) is one log line, its traceback only under -v.
"""

from __future__ import annotations

import logging
import math

import pytest

import bench.pipeline.runner as runner
from bench.core.records import read_record, write_record

CONFIG = {"model": "resnet18", "model_args": {"num_classes": 10, "stem": "cifar"}, "measure": ["train"],
          "input_size": 16, "seed": 0, "complexity": {}, "latency": {}, "train": {"dataset": "digits", "epochs": 1}}
ENV = {"host": "fixture-host"}


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.setattr(runner, "cell_env", lambda config, metrics: ENV)


def _measured(monkeypatch, metrics=None, error=None):
    monkeypatch.setattr(runner, "measure_cell", lambda *a, **k: (dict(metrics or {}), error))


@pytest.mark.parametrize("metrics", [{"top1": 9.72, "top5": 50.0, "test_loss": math.nan, "train_loss": 2.3},
                                     {"top1": math.inf, "test_loss": 1.0},
                                     {"miou": math.nan, "pixel_acc": 40.0, "test_loss": 1.0}],
                         ids=["nan-loss-chance-top1", "inf-top1", "nan-miou"])
def test_a_non_finite_evaluation_makes_an_error_record(tmp_path, monkeypatch, no_env, metrics):
    _measured(monkeypatch, metrics)
    record, error = runner.record_cell(CONFIG, tmp_path)
    assert error is not None and type(error).__name__ == "NonFiniteMetrics"
    assert record["status"] == "error" and record["error"]["type"] == "NonFiniteMetrics"
    written = read_record(write_record(tmp_path / "records", record))
    assert written["status"] == "error" and "non-finite" in written["error"]["message"]


def test_finite_metrics_stay_ok(tmp_path, monkeypatch, no_env):
    _measured(monkeypatch, {"top1": 91.0, "test_loss": 0.3, "train_loss": math.nan})  # not an evaluation metric
    record, error = runner.record_cell(CONFIG, tmp_path)
    assert error is None and record["status"] == "ok"


class TrainingDiverged(RuntimeError):
    """Stands for bench.measure.train.TrainingDiverged (known to the runner by name)."""


def test_a_diverged_training_is_one_log_line_and_a_traceback_only_under_debug(tmp_path, monkeypatch, caplog):
    def diverge(*args, **kwargs):
        raise TrainingDiverged("training diverged: loss is nan at epoch 1")

    monkeypatch.setattr(runner, "_train", diverge)
    caplog.set_level(logging.INFO, logger="bench.pipeline.runner")
    metrics, error = runner.measure_cell(CONFIG, tmp_path)
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert isinstance(error, TrainingDiverged) and len(failures) == 1 and not failures[0].exc_info
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="bench.pipeline.runner")
    runner.measure_cell(CONFIG, tmp_path)
    assert [r for r in caplog.records if r.levelno == logging.ERROR][0].exc_info
