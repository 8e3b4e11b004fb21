"""Launching grids through submitit's local and debug executors, records, relaunch, status.

The cells use `tiny_net` below (given to the grid as the import path `tests.test_launch:tiny_net`,
which grids accept like a registered name) so that a job costs seconds on two shared cores; one
test builds real registered models end to end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from bench.cli import main as cli_main
from bench.pipeline.grid import load_grid
from bench.pipeline.launch import launch, read_jobs, write_run_files
from bench.core.records import CorruptRecord, iter_records, read_record
from bench.pipeline.runner import CellPaths, CellRunner, run_cell
from bench.pipeline.status import run_status

REPO = Path(__file__).resolve().parents[1]
TINY = "tests.test_launch:tiny_net"


# ----------------------------------------------------------------------------------- tiny model
class TinyNet(nn.Module):
    """A few-hundred-parameter CNN; `sleep_ms` slows each training step (to stop a job mid-run)."""

    task = "cls"
    default_input_size = 8

    def __init__(self, num_classes: int, width: int, sleep_ms: float, fail: bool):
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)
        self.sleep_ms = sleep_ms
        self.fail = fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail:
            raise RuntimeError("boom: this cell was built to fail")
        if self.training and self.sleep_ms:
            time.sleep(self.sleep_ms / 1000)
        return self.head(self.stem(x))


def tiny_net(num_classes: int = 10, width: int = 8, sleep_ms: float = 0.0, fail: bool = False) -> nn.Module:
    """Factory used by the test grids (import path `tests.test_launch:tiny_net`)."""
    return TinyNet(num_classes, width, sleep_ms, fail)


# -------------------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def importable_tests(monkeypatch):
    """Jobs (subprocesses, SLURM tasks) import `tests.test_launch`: put the repo on their path."""
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


FAST_LATENCY = {"threads": 1, "min_iters": 2, "min_time_s": 0.05, "warmup_max_s": 0.5, "warmup_min_iters": 1}


def tiny_train(epochs: int = 1, **extra) -> dict:
    """Training options for a tiny digits run."""
    return {"dataset": "digits", "epochs": epochs, "batch_size": 256, "lr": 0.1, "threads": 1, **extra}


def write_grid(tmp_path: Path, name: str = "tiny", **overrides) -> Path:
    """A grid of three cheap cells (two complexity+latency widths, one short training)."""
    grid = {
        "name": name,
        "description": "launch tests",
        "base": {"model": TINY, "model_args": {"num_classes": 10}, "measure": ["complexity", "latency"],
                 "input_size": 8, "latency": dict(FAST_LATENCY)},
        "axes": {"model_args.width": [4, 16]},
        "include": [{"measure": ["train"], "train": tiny_train()}],
        "resources": {"timeout_min": 10, "local_parallelism": 2},
    }
    grid.update(overrides)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def records_of(run_dir: Path) -> dict[str, dict]:
    out = {}
    for path, record in iter_records(run_dir / "records"):
        assert not isinstance(record, CorruptRecord), record
        out[path.stem] = record
    return out


def assert_no_partial_files(run_dir: Path) -> None:
    """Atomic writes leave no temp files behind."""
    assert not list((run_dir / "records").glob(".*.tmp")), "half-written record left behind"


# ---------------------------------------------------------------------------------------- tests
def test_local_grid_completes_relaunch_skips_and_reruns_deleted(tmp_path):
    run_dir = tmp_path / "run"
    grid = write_grid(tmp_path)
    first = launch(grid, cluster="local", run_dir=run_dir, wait=True, poll_s=0.5)
    assert first.ok, first.failed
    assert len(first.submitted) == 3
    records = records_of(run_dir)
    assert set(records) == set(first.submitted)
    assert all(r["status"] == "ok" for r in records.values())
    train_record = next(r for r in records.values() if "train" in r["config"]["measure"])
    assert train_record["metrics"]["epochs"] == 1 and "top1" in train_record["metrics"]
    latency_record = next(r for r in records.values() if "latency" in r["config"]["measure"])
    assert latency_record["metrics"]["latency_ms_p50"] > 0 and latency_record["metrics"]["params_m"] > 0
    assert latency_record["job"]["cluster"] == "local" and latency_record["run"] == "tiny"
    cells = json.loads((run_dir / "cells.json").read_text())
    assert {c["cell_id"] for c in cells} == set(records)
    assert (run_dir / "grid.yaml").read_text() == grid.read_text()

    again = launch(grid, cluster="local", run_dir=run_dir, wait=True)
    assert again.submitted == [] and again.job_id is None and len(again.plan.done) == 3

    deleted = sorted(records)[:2]
    for cell_id in deleted:
        (run_dir / "records" / f"{cell_id}.json").unlink()
    third = launch(grid, cluster="local", run_dir=run_dir, wait=True, poll_s=0.5)
    assert sorted(third.submitted) == deleted
    assert third.ok and set(records_of(run_dir)) == set(records)
    jobs = read_jobs(run_dir)
    assert [sorted(j["cell_ids"]) for j in jobs] == [sorted(first.submitted), deleted]
    assert_no_partial_files(run_dir)


def test_debug_raising_cell_gives_error_record_and_others_complete(tmp_path):
    run_dir = tmp_path / "run"
    grid = write_grid(tmp_path, axes={"model_args.width": [4, 8], "model_args.fail": [False, True]},
                      include=[])
    result = launch(grid, cluster="debug", run_dir=run_dir)
    assert result.finished and len(result.submitted) == 4
    assert len(result.failed) == 2 and all("boom" in line for line in result.failed.values())
    records = records_of(run_dir)
    assert len(records) == 4
    for record in records.values():
        failing = record["config"]["model_args"]["fail"]
        assert record["status"] == ("error" if failing else "ok")
        if failing:
            assert record["error"]["type"] == "RuntimeError"
            assert "boom" in record["error"]["message"]
            assert "Traceback" in record["error"]["traceback"] and "forward" in record["error"]["traceback"]
    status = run_status(run_dir)
    assert status.counts == {"ok": 2, "error": 2, "timeout": 0, "running": 0, "pending": 0, "stopped": 0}
    assert all("boom" in c.error for c in status.failed)


def test_corrupt_record_is_reported_by_status_and_rerun_by_launch(tmp_path, capsys):
    run_dir = tmp_path / "run"
    grid = write_grid(tmp_path, axes={"model_args.width": [4, 8, 16]}, include=[])
    first = launch(grid, cluster="debug", run_dir=run_dir)
    assert first.ok and len(first.submitted) == 3
    victim = sorted(first.submitted)[0]
    (run_dir / "records" / f"{victim}.json").write_text('{"schema": "vtbench.record/1", "cell_id": ')

    assert cli_main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "2 ok, 0 error, 0 timeout, 0 running, 1 pending" in out
    assert f"corrupt record {victim}.json" in out
    status = run_status(run_dir)
    assert list(status.corrupt) == [f"{victim}.json"]

    second = launch(grid, cluster="debug", run_dir=run_dir)
    assert second.submitted == [victim] and second.plan.reasons[victim] == "corrupt"
    assert read_record(run_dir / "records" / f"{victim}.json")["status"] == "ok"
    assert len(list((run_dir / "superseded").glob(f"{victim}.*.json"))) == 1
    assert run_status(run_dir).counts["ok"] == 3


def test_error_cells_are_rerun_and_their_old_records_superseded(tmp_path):
    run_dir = tmp_path / "run"
    grid = write_grid(tmp_path, axes={"model_args.fail": [False, True]}, include=[])
    first = launch(grid, cluster="debug", run_dir=run_dir)
    assert len(first.failed) == 1
    second = launch(grid, cluster="debug", run_dir=run_dir)
    assert second.submitted == list(first.failed) and second.plan.reasons[second.submitted[0]] == "error"
    assert len(records_of(run_dir)) == 2


def test_dry_run_lists_cells_and_writes_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    grid = write_grid(tmp_path)
    result = launch(grid, cluster="local", run_dir=run_dir, dry_run=True)
    assert len(result.plan.to_run) == 3 and result.job_id is None
    assert not run_dir.exists()
    assert cli_main(["launch", str(grid), "--run-dir", str(run_dir), "--dry-run"]) == 0
    assert not run_dir.exists()
    out = capsys.readouterr().out  # the cells are on stdout, one line each under the header
    listed = [c.cell_id for c in result.plan.to_run]
    lines = out.splitlines()
    assert all(any(line.startswith(cell_id) and "run (new)" in line for line in lines) for cell_id in listed)


def test_a_piped_local_launch_returns_once_submitted(tmp_path):
    """`vtbench launch GRID | cat` ends when the launcher does, not when the local jobs do: they do
    not hold its stdout (bench.pipeline.launch.controllers_off_our_stdio). The cell still runs to its record."""
    run_dir = tmp_path / "run"
    # One training cell that sleeps 2 s a step (the digits set is 6 steps of 256): it outlives the launcher.
    grid = tmp_path / "piped.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "piped", "resources": {"timeout_min": 10},
        "base": {"model": TINY, "model_args": {"num_classes": 10, "sleep_ms": 2000}, "measure": ["train"],
                 "input_size": 8, "train": tiny_train()}}))
    command = f"{sys.executable} -m bench launch {grid} --run-dir {run_dir} --format jsonl | cat"
    done = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    records = run_dir / "records"
    assert not list(records.glob("*.json")), "the pipe stayed open until the cell had finished"
    (row,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert row["action"] == "run" and row["job_id"] and "Traceback" not in done.stderr
    assert (run_dir / "submitit" / "local_controllers.log").exists()
    deadline = time.monotonic() + 240
    while not (records / f"{row['cell_id']}.json").exists() and time.monotonic() < deadline:
        time.sleep(1)
    assert read_record(records / f"{row['cell_id']}.json")["status"] == "ok"


def test_bad_grid_exits_2_with_every_problem_on_one_line(tmp_path, capsys):
    grid = write_grid(tmp_path, axes={"num_tokns": [4], "model_args.width": []}, resources={"gpus": 1})
    assert cli_main(["launch", str(grid), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "num_tokns" in err and "did you mean num_tokens" in err
    assert "model_args.width: an axis is a non-empty list" in err and "gpus_per_node" in err
    assert not (tmp_path / "run").exists()


def test_status_of_a_missing_run_is_a_usage_error(tmp_path, capsys):
    assert cli_main(["status", str(tmp_path / "nope")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_runner_skips_a_cell_with_an_ok_record_and_one_locked_elsewhere(tmp_path):
    config = {"model": TINY, "model_args": {"num_classes": 10}, "measure": ["complexity"], "input_size": 8,
              "seed": 0, "complexity": {}, "latency": {}, "train": {}}
    from bench.core.records import cell_id_of

    cell = {"cell_id": cell_id_of(config), "config": config}
    first = run_cell(tmp_path, cell, run_name="t")
    assert first["status"] == "ok"
    record_path = CellPaths(tmp_path, cell["cell_id"]).record
    stamp = record_path.stat().st_mtime_ns
    assert run_cell(tmp_path, cell)["skipped"] is True
    assert record_path.stat().st_mtime_ns == stamp

    import fcntl

    record_path.unlink()
    with open(CellPaths(tmp_path, cell["cell_id"]).lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert run_cell(tmp_path, cell)["status"] == "busy"
    assert not record_path.exists()


def test_checkpoint_requeues_the_same_cell(tmp_path):
    runner = CellRunner(tmp_path, "t", local_parallelism=3)
    cell = {"cell_id": "abc", "config": {}}
    delayed = runner.checkpoint(cell)
    assert isinstance(delayed.function, CellRunner) and delayed.args == (cell,)
    assert delayed.function.run_dir == runner.run_dir and delayed.function.local_parallelism == 3


def test_real_registered_models_end_to_end(tmp_path):
    """The real builders, complexity and latency, through the debug executor."""
    grid = {
        "name": "real",
        "base": {"model": "resnet18", "model_args": {"num_classes": 10, "stem": "cifar"},
                 "measure": ["complexity", "latency"], "input_size": 16, "latency": dict(FAST_LATENCY)},
        "axes": {"model": ["resnet18", "vt_resnet18"]},
        "include": [{"model": "vt_resnet18", "num_tokens": 4, "tokenizer": "pooling", "measure": ["complexity"]}],
    }
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(grid))
    result = launch(path, cluster="debug", run_dir=tmp_path / "run")
    assert result.ok, result.failed
    records = list(records_of(tmp_path / "run").values())
    assert len(records) == 3
    assert all(r["metrics"]["gmacs"] > 0 and r["metrics"]["params_m"] > 1 for r in records)
    assert sum("latency_ms_p50" in r["metrics"] for r in records) == 2
    pooled = next(r for r in records if r["config"]["model_args"].get("tokenizer") == "pooling")
    default_vt = next(r for r in records if r["config"]["model"] == "vt_resnet18" and r is not pooled)
    assert pooled["metrics"]["gmacs"] != default_vt["metrics"]["gmacs"]


@pytest.mark.slow
def test_real_vt_resnet_trains_through_the_local_executor(tmp_path):
    """A registered VT-ResNet trained one epoch on digits by a local job."""
    grid = {"name": "realtrain",
            "base": {"model": "vt_resnet18", "model_args": {"num_classes": 10, "stem": "cifar", "num_tokens": 4},
                     "measure": ["complexity", "train"], "input_size": 16,
                     "train": tiny_train(epochs=1, lr=0.05, clip_grad_norm=1.0)}}
    path = tmp_path / "realtrain.yaml"
    path.write_text(yaml.safe_dump(grid))
    result = launch(path, cluster="local", run_dir=tmp_path / "run", wait=True, poll_s=1)
    assert result.ok, result.failed
    (record,) = records_of(tmp_path / "run").values()
    assert record["metrics"]["epochs"] == 1 and 0 <= record["metrics"]["top1"] <= 100


@pytest.mark.slow
def test_local_interrupted_training_is_requeued_and_resumes(tmp_path):
    """submitit's preemption signal on the local executor: checkpoint(), requeue, resume."""
    run_dir = tmp_path / "run"
    grid = write_grid(tmp_path, base={"model": TINY, "model_args": {"num_classes": 10, "sleep_ms": 150},
                                      "measure": ["train"], "input_size": 8, "train": tiny_train(epochs=6)},
                      axes={}, include=[])
    result = launch(grid, cluster="local", run_dir=run_dir)
    (cell_id,) = result.submitted
    metrics_file = run_dir / "cells" / cell_id / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics_file.exists() and metrics_file.read_text().count("\n") >= 2):
        time.sleep(0.2)
    assert metrics_file.exists(), "training never reached its second epoch"
    # The local controller (the job id is its PID) forwards time-outs to its task with SIGUSR2;
    # send that signal to the task as a time-out would.
    controller = int(result.task_job_ids[0])
    (task,) = [int(p) for p in Path(f"/proc/{controller}/task/{controller}/children").read_text().split()]
    os.kill(task, signal.SIGUSR2)
    deadline = time.time() + 300
    record = run_dir / "records" / f"{cell_id}.json"
    while time.time() < deadline and not record.exists():
        time.sleep(0.5)
    rec = read_record(record)
    assert rec["status"] == "ok"
    assert 2 <= rec["metrics"]["resumed_from_epoch"] < 6
    # The worker (not the cell's own process, which logs to cells/ID/log) says why it requeued.
    worker_logs = "".join(p.read_text(errors="replace") for p in (run_dir / "submitit").rglob("*.err"))
    assert "preempted or timed out; requeueing it" in worker_logs


@pytest.mark.slow
def test_local_two_task_job_trains_distributed_and_gives_one_record(tmp_path):
    """tasks_per_node=2 on the local executor: torch.distributed (gloo) from submitit's environment."""
    run_dir = tmp_path / "run"
    grid = write_grid(tmp_path, base={"model": TINY, "model_args": {"num_classes": 10}, "measure": ["train"],
                                      "input_size": 8, "train": tiny_train(epochs=1)},
                      axes={}, include=[], resources={"timeout_min": 10, "tasks_per_node": 2})
    result = launch(grid, cluster="local", run_dir=run_dir, wait=True, poll_s=1)
    assert result.ok, result.failed
    (record,) = records_of(run_dir).values()
    assert record["metrics"]["world_size"] == 2 and record["job"]["num_tasks"] == 2


def test_a_record_run_under_an_older_default_is_stale_and_runs_again(tmp_path):
    """A cell states only the options it sets: when a default it leaves unset has changed since its
    record was written (the record's `model.defaults` say what it ran under), the record describes
    another model, so launch runs the cell again and supersedes the record; a cell that sets the
    option itself, and a record that carries no defaults, stay done."""
    from bench.core.records import make_record, write_json_atomic
    from models import model_options

    run_dir = tmp_path / "run"
    grid = write_grid(tmp_path, base={"model": "resnet18", "model_args": {"num_classes": 10, "width": 0.25},
                                      "measure": ["complexity"], "input_size": 32},
                      axes={"seed": [0, 1, 2]}, include=[{"model_args.residual_init": "small", "seed": 0}])
    cells = {(c.config["seed"], c.config["model_args"].get("residual_init")): c for c in load_grid(grid).cells}
    assert len(cells) == 4
    for (seed, given), cell in cells.items():
        record = make_record(cell.config, metrics={"gmacs": 0.1})
        if seed == 1 or given:  # written when the trunk's default init was another
            record["model"]["defaults"]["residual_init"] = "torchvision"
        if seed == 2:  # written before records carried their defaults
            del record["model"]["defaults"]
        write_json_atomic(run_dir / "records" / f"{cell.cell_id}.json", record)

    stale, today = cells[(1, None)].cell_id, model_options("resnet18")["residual_init"]
    planned = launch(grid, cluster="debug", run_dir=run_dir, dry_run=True).plan
    assert [c.cell_id for c in planned.to_run] == [stale] and planned.reasons[stale] == "stale"
    assert planned.stale[stale] == f"model default residual_init 'torchvision' -> {today!r}"
    assert len(planned.done) == 3
    write_run_files(run_dir, load_grid(grid))
    shown = {c.cell_id: c for c in run_status(run_dir, stale_defaults=True).cells}  # status agrees with the plan
    assert shown[stale].state == "pending" and f"'torchvision' -> {today!r}" in shown[stale].note
    assert sorted(c.state for c in shown.values()) == ["ok", "ok", "ok", "pending"]

    result = launch(grid, cluster="debug", run_dir=run_dir)
    assert result.submitted == [stale] and result.ok
    rerun = read_record(run_dir / "records" / f"{stale}.json")
    assert rerun["model"]["defaults"]["residual_init"] == today and rerun["metrics"]["gmacs"] > 0
    assert len(list((run_dir / "superseded").glob(f"{stale}.*.json"))) == 1
    assert launch(grid, cluster="debug", run_dir=run_dir, dry_run=True).plan.to_run == []
