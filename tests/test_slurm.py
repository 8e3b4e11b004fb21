"""Launching against a real SLURM cluster (marker `slurm`; `scripts/test.sh` starts one).

Needs SLURM_CONF pointing at a running cluster, as `scripts/slurm_cluster.sh start DIR` leaves it
(with accounting, so submitit sees real job states). Each test uses its own run folder; jobs are
small (the tiny CNN of tests/test_launch.py, or the smoke grid) so the tier stays within minutes
on two cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from bench.cli import main as cli_main
from bench.pipeline.launch import launch, read_jobs
from bench.core.records import CorruptRecord, iter_records, read_record
from bench.pipeline.status import run_status

REPO = Path(__file__).resolve().parents[1]
TINY = "tests.test_launch:tiny_net"

# The timeout turns a hung job into a failure instead of a stuck CI run.
pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]


def _cluster_problem() -> str | None:
    if not os.environ.get("SLURM_CONF"):
        return "SLURM_CONF is not set (start a cluster with scripts/slurm_cluster.sh start DIR)"
    if shutil.which("sbatch") is None:
        return "sbatch is not installed (scripts/slurm_cluster.sh install)"
    try:
        subprocess.run(["sinfo", "-h"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the SLURM cluster does not answer ({exc})"
    return None


@pytest.fixture(autouse=True)
def slurm_cluster(monkeypatch):
    """Skip without a cluster; let jobs import `tests.test_launch` (sbatch exports our environment)."""
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


# -------------------------------------------------------------------------------------- helpers
def write_grid(tmp_path: Path, name: str, base: dict, axes: dict | None = None, **resources) -> Path:
    grid = {"name": name, "description": "slurm tests", "base": base, "axes": axes or {},
            "resources": {"timeout_min": 15, "cpus_per_task": 1, "mem_gb": 1, "array_parallelism": 2, **resources}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def tiny_cell(**model_args) -> dict:
    return {"model": TINY, "model_args": {"num_classes": 10, **model_args}, "measure": ["complexity"],
            "input_size": 8}


def training_cell(epochs: int = 8, sleep_ms: float = 200) -> dict:
    """A tiny training whose epochs take about a second or two (sleep_ms per step)."""
    return {"model": TINY, "model_args": {"num_classes": 10, "sleep_ms": sleep_ms}, "measure": ["train"],
            "input_size": 8,
            "train": {"dataset": "digits", "epochs": epochs, "batch_size": 256, "lr": 0.1, "threads": 1}}


def records_of(run_dir: Path) -> dict[str, dict]:
    out = {}
    for path, record in iter_records(run_dir / "records"):
        assert not isinstance(record, CorruptRecord), record
        out[path.stem] = record
    assert not list((run_dir / "records").glob(".*")), "a temporary (half-written) record was left"
    return out


def wait_until(condition, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def squeue_states(job_id: str) -> dict[str, str]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T %r", "-j", job_id.split("_")[0]],
                         capture_output=True, text=True, timeout=30).stdout
    return {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines() if line.strip()}


def epochs_done(run_dir: Path, cell_id: str) -> int:
    path = run_dir / "cells" / cell_id / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def release_requeued(task_id: str) -> None:
    """SLURM holds a requeued job ~2 minutes (BeginTime); make it eligible now to keep tests short."""
    wait_until(lambda: "PENDING" in squeue_states(task_id).get(task_id, ""), 60, f"{task_id} to be requeued")
    subprocess.run(["scontrol", "update", f"JobId={task_id}", "StartTime=now"], check=True, timeout=30)


def assert_resumed_once(run_dir: Path, cell_id: str, epochs: int, killed_after: int) -> dict:
    records = records_of(run_dir)
    assert list(records) == [cell_id], "exactly one record for the cell"
    record = records[cell_id]
    assert record["status"] == "ok", record.get("error")
    metrics = record["metrics"]
    assert metrics["epochs"] == epochs
    assert killed_after <= metrics["resumed_from_epoch"] < epochs, "resumed from its checkpoint, not epoch 0"
    history = [json.loads(line)["epoch"] for line in
               (run_dir / "cells" / cell_id / "metrics.jsonl").read_text().splitlines()]
    assert history == list(range(1, epochs + 1)), "each epoch trained and logged exactly once"
    return record


# ---------------------------------------------------------------------------------------- tests
def test_smoke_grid_completes_on_slurm(tmp_path):
    run_dir = tmp_path / "smoke"
    result = launch(REPO / "experiments" / "smoke.yaml", cluster="slurm", run_dir=run_dir, wait=True, poll_s=2)
    assert result.ok, result.failed
    records = records_of(run_dir)
    assert len(records) == len(result.grid.cells) and all(r["status"] == "ok" for r in records.values())
    assert all(r["env"]["slurm_job_id"] for r in records.values())
    assert {r["job"]["cluster"] for r in records.values()} == {"slurm"}
    assert read_jobs(run_dir)[0]["job_id"] == result.job_id
    status = run_status(run_dir)
    assert status.counts["ok"] == len(records) and status.jobs[0]["cluster"] == "slurm"


def test_relaunch_submits_nothing_then_exactly_the_deleted(tmp_path):
    run_dir = tmp_path / "run"
    grid = write_grid(tmp_path, "relaunch", tiny_cell(), {"model_args.width": [4, 8, 16]})
    first = launch(grid, cluster="slurm", run_dir=run_dir, wait=True, poll_s=1)
    assert first.ok and len(first.submitted) == 3
    records = records_of(run_dir)
    assert len(records) == 3
    assert {r["job"]["array_index"] for r in records.values()} == {0, 1, 2}

    again = launch(grid, cluster="slurm", run_dir=run_dir)
    assert again.submitted == [] and again.job_id is None

    # A job leaves the queue a moment after writing its record; until then its cell is in flight.
    wait_until(lambda: not squeue_states(first.job_id), 60, "the first array to leave the queue")

    deleted = sorted(records)[:2]
    for cell_id in deleted:
        (run_dir / "records" / f"{cell_id}.json").unlink()
    third = launch(grid, cluster="slurm", run_dir=run_dir, wait=True, poll_s=1)
    assert sorted(third.submitted) == deleted and third.ok
    assert set(records_of(run_dir)) == set(records)
    assert [len(j["cell_ids"]) for j in read_jobs(run_dir)] == [3, 2]


def test_raising_cell_gives_error_record_and_the_others_complete(tmp_path):
    run_dir = tmp_path / "run"
    grid = write_grid(tmp_path, "raising", tiny_cell(), {"model_args.fail": [False, True], "seed": [0, 1]})
    result = launch(grid, cluster="slurm", run_dir=run_dir, wait=True, poll_s=1)
    assert len(result.failed) == 2 and all("boom" in e for e in result.failed.values())
    records = records_of(run_dir)
    assert len(records) == 4
    for record in records.values():
        if record["config"]["model_args"]["fail"]:
            assert record["status"] == "error" and "Traceback" in record["error"]["traceback"]
            assert "boom" in record["error"]["traceback"]
        else:
            assert record["status"] == "ok"
    assert run_status(run_dir).counts == {"ok": 2, "error": 2, "timeout": 0, "running": 0, "pending": 0, "stopped": 0}


def test_two_task_job_trains_with_gloo_and_gives_one_record(tmp_path):
    run_dir = tmp_path / "run"
    grid = write_grid(tmp_path, "twotask", training_cell(epochs=2, sleep_ms=0), tasks_per_node=2)
    result = launch(grid, cluster="slurm", run_dir=run_dir, wait=True, poll_s=1)
    assert result.ok, result.failed
    (record,) = records_of(run_dir).values()
    assert record["metrics"]["world_size"] == 2 and record["metrics"]["epochs"] == 2
    assert record["job"]["num_tasks"] == 2
    # each rank's cell process writes to the cell's own log (the job's log has the worker's lines)
    logs = "".join(p.read_text() for p in (run_dir / "cells").glob("*/log"))
    assert "gloo process group: rank 1 of 2" in logs and "gloo process group: rank 0 of 2" in logs


def test_scancel_mid_training_then_relaunch_resumes_from_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    grid = write_grid(tmp_path, "scancel", training_cell())
    first = launch(grid, cluster="slurm", run_dir=run_dir)
    (cell_id,), (task_id,) = first.submitted, first.task_job_ids
    wait_until(lambda: epochs_done(run_dir, cell_id) >= 2, 240, "two epochs")
    subprocess.run(["scancel", task_id], check=True, timeout=30)
    wait_until(lambda: not squeue_states(task_id), 60, f"{task_id} to leave the queue")
    killed_after = epochs_done(run_dir, cell_id)
    assert killed_after < 8 and not records_of(run_dir), "killed mid-training, no record"
    assert run_status(run_dir).counts["stopped"] == 1   # its process is gone: not `running`

    second = launch(grid, cluster="slurm", run_dir=run_dir, wait=True, poll_s=1)
    assert second.submitted == [cell_id] and second.ok
    assert_resumed_once(run_dir, cell_id, 8, killed_after)


def test_vtbench_cancel_scancels_running_and_queued_tasks_then_relaunch_resumes(tmp_path, capsys):
    """`vtbench cancel RUN`: scancel of the recorded array task ids (one running, one still queued
    behind array_parallelism 1); both cells `stopped`, no record; a relaunch resumes the trained one."""
    run_dir = tmp_path / "run"
    grid = write_grid(tmp_path, "cancel", training_cell(), {"seed": [0, 1]}, array_parallelism=1)
    first = launch(grid, cluster="slurm", run_dir=run_dir)
    cells = first.submitted
    trained = wait_until(lambda: next((c for c in cells if epochs_done(run_dir, c) >= 2), None), 240, "two epochs")
    capsys.readouterr()
    assert cli_main(["cancel", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert all(f"cancelled {cell_id}" in out and "scancel" in out for cell_id in cells), out
    wait_until(lambda: not squeue_states(first.job_id), 60, "the array to leave the queue")
    killed_after = epochs_done(run_dir, trained)
    assert killed_after < 8 and not records_of(run_dir), "cancelled mid-training: no record"
    assert {c.cell_id: c.state for c in run_status(run_dir).cells} == {c: "stopped" for c in cells}
    assert cli_main(["cancel", str(run_dir)]) == 0
    assert "nothing running" in capsys.readouterr().out

    second = launch(grid, cluster="slurm", run_dir=run_dir, wait=True, poll_s=1)
    assert sorted(second.submitted) == sorted(cells) and second.ok, second.failed
    record = records_of(run_dir)[trained]
    assert killed_after <= record["metrics"]["resumed_from_epoch"] < 8, "resumed from its checkpoint"
    assert run_status(run_dir).counts["ok"] == 2


def test_scontrol_requeue_mid_training_resumes_from_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    grid = write_grid(tmp_path, "requeue", training_cell())
    result = launch(grid, cluster="slurm", run_dir=run_dir)
    (cell_id,), (task_id,) = result.submitted, result.task_job_ids
    wait_until(lambda: epochs_done(run_dir, cell_id) >= 2, 240, "two epochs")
    subprocess.run(["scontrol", "requeue", task_id], check=True, timeout=30)
    killed_after = epochs_done(run_dir, cell_id)
    release_requeued(task_id)
    record_path = run_dir / "records" / f"{cell_id}.json"
    wait_until(record_path.exists, 300, "the requeued job's record")
    wait_until(lambda: not squeue_states(task_id), 60, f"{task_id} to finish")
    record = assert_resumed_once(run_dir, cell_id, 8, killed_after)
    assert record["job"]["job_id"] == task_id
    log_text = (run_dir / "cells" / cell_id / "log").read_text()
    assert log_text.count(f"cell {cell_id} (") == 2, "ran twice: before and after the requeue"


def test_preemption_signal_checkpoints_and_submitit_requeues(tmp_path):
    """SLURM's USR2 (time-out or preemption): submitit calls checkpoint() and requeues the cell."""
    run_dir = tmp_path / "run"
    grid = write_grid(tmp_path, "preempt", training_cell())
    result = launch(grid, cluster="slurm", run_dir=run_dir)
    (cell_id,), (task_id,) = result.submitted, result.task_job_ids
    wait_until(lambda: epochs_done(run_dir, cell_id) >= 2, 240, "two epochs")
    subprocess.run(["scancel", "--signal", "USR2", task_id], check=True, timeout=30)
    release_requeued(task_id)
    killed_after = 2
    wait_until((run_dir / "records" / f"{cell_id}.json").exists, 300, "the requeued job's record")
    record = assert_resumed_once(run_dir, cell_id, 8, killed_after)
    logs = "".join(p.read_text() for p in (run_dir / "submitit").glob("*_log.err"))
    assert "preempted or timed out; requeueing it" in logs and "Requeued job" in logs
    assert read_record(run_dir / "records" / f"{cell_id}.json") == record
