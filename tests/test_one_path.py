"""One path for every run (issue 14 item 3): `vtbench profile` and `vtbench train` measure and
build their records through the runner (`bench.pipeline.runner.record_cell`), so a command's record
is the record a grid's job writes for the same cell."""

from __future__ import annotations

import argparse
import json

import pytest

from bench.core.errors import UsageError
from bench.core.records import read_record
from bench.pipeline import runner

TIMING_FIELDS = ("started_at", "finished_at", "duration_s", "job", "run")


def _parsed(command, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(list(argv))


def _grid_record(tmp_path, config: dict) -> dict:
    """What a grid's job writes for `config` (bench.pipeline.runner.run_cell)."""
    cell_id = read_record_id(config)
    summary = runner.run_cell(tmp_path / "run", {"cell_id": cell_id, "config": config})
    assert summary["status"] == "ok", summary
    return read_record(tmp_path / "run" / "records" / f"{cell_id}.json")


def read_record_id(config: dict) -> str:
    from bench.core.records import cell_id_of

    return cell_id_of(config)


def test_a_profile_record_is_the_grid_cell_record_of_its_config(tmp_path):
    """Same config -> same cell id, the same counted metrics, the same env fields, the same model block."""
    from bench.cli.commands import profile as command

    out = tmp_path / "profile.json"
    args = _parsed(command, "resnet18", "--set", "num_classes=10", "--set", "stem=cifar", "--input-size", "16",
                   "--no-latency", "--json", str(out), "--format", "json")
    assert command.run(args) == 0
    record = read_record(out)
    grid = _grid_record(tmp_path, record["config"])
    assert record["cell_id"] == grid["cell_id"]
    assert record["metrics"] == grid["metrics"] and record["metrics"]["gmacs"] > 0
    assert record["model"] == grid["model"] and set(record["env"]) == set(grid["env"])
    assert {k: v for k, v in record.items() if k not in (*TIMING_FIELDS, "env")} == \
        {k: v for k, v in grid.items() if k not in (*TIMING_FIELDS, "env")}


def test_a_timed_profile_record_has_the_measurement_settings_a_timed_grid_cell_has(tmp_path):
    """The runner gives every latency record the same env: machine, and the settings as timed."""
    from bench.cli.commands import profile as command

    out = tmp_path / "profile.json"
    args = _parsed(command, "resnet18", "--set", "num_classes=10", "--set", "stem=cifar", "--input-size", "16",
                   "--no-complexity", "--min-time-s", "0.05", "--threads", "1", "--json", str(out),
                   "--format", "json")
    assert command.run(args) == 0
    record = read_record(out)
    assert record["config"]["latency"]["min_time_s"] == 0.05 and record["config"]["latency"]["oom_retry"] is True
    assert [row["batch_size_requested"] for row in record["metrics"]["latency"]] == [1]
    assert record["metrics"]["latency_ms_p50"] == record["metrics"]["latency"][0]["latency_ms_p50"]
    grid_config = {**record["config"], "latency": {**record["config"]["latency"], "batch_size": 1}}
    grid = _grid_record(tmp_path, grid_config)
    assert set(record["env"]) == set(grid["env"])
    for env in (record["env"], grid["env"]):
        assert env["threads"] == 1 and env["dtype"] == "fp32" and env["input_size"] == [16, 16]


TINY = "tests.test_launch:tiny_net"


def _train_failing_with(exc: Exception, tmp_path, monkeypatch) -> None:
    """Run `vtbench train` on a tiny net with training replaced by a function raising `exc`."""
    from bench.cli.commands import train as command
    from bench.measure import train as train_module

    def failing(*_, **__):
        raise exc

    monkeypatch.setattr(train_module, "train", failing)
    command.run(_parsed(command, TINY, "--dataset", "digits", "--epochs", "1", "--input-size", "8",
                        "--out", str(tmp_path), "--no-progress"))


def test_train_records_an_error_through_the_runner_and_raises_it(tmp_path, monkeypatch):
    """A failure while training is an error record in OUT/records (traceback kept), then raised."""
    with pytest.raises(RuntimeError, match="the disk went away"):
        _train_failing_with(RuntimeError("the disk went away"), tmp_path, monkeypatch)
    (path,) = (tmp_path / "records").glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "error" and "the disk went away" in record["error"]["traceback"]
    assert record["config"]["measure"][-1] == "train"  # after the MACs `vtbench train` counts


def test_train_bad_input_found_while_training_is_not_recorded(tmp_path, monkeypatch):
    """A UsageError (bad input) leaves no record behind, as before the runner took over."""
    with pytest.raises(UsageError, match="colour"):
        _train_failing_with(UsageError("dataset_args.colour: unknown option"), tmp_path, monkeypatch)
    assert list((tmp_path / "records").glob("*.json")) == []
