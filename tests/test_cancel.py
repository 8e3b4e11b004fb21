"""Stopping a local launch cleanly (issue 12, item 8): at most `local_parallelism` local workers.

Jobs are real local submitit jobs running `tiny_net` from tests/test_launch.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest
import yaml

from bench.launch import launch, read_jobs
from bench.liveness import process_alive
from bench.status import run_status

REPO = Path(__file__).resolve().parents[1]
TINY = "tests.test_launch:tiny_net"
WAIT_S = 120  # generous: local jobs start Python processes on two shared cores


@pytest.fixture(autouse=True)
def importable_tests(monkeypatch):
    """Jobs (subprocesses) import `tests.test_launch`: put the repo on their path."""
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


@pytest.fixture(autouse=True)
def reap_jobs(tmp_path):
    """After each test, stop the local jobs it left (a failing test must not leave long trainings
    to load the shared cores): interrupt each live controller, kill each live worker."""
    yield
    host = socket.gethostname()
    for jobs_file in tmp_path.rglob("jobs.json"):
        for entry in json.loads(jobs_file.read_text()):
            for task_id, start in zip(entry["task_job_ids"], entry.get("task_pid_starts") or []):
                if entry["cluster"] == "local" and process_alive(host, task_id, start):
                    os.kill(int(task_id), signal.SIGINT)
        for state_file in jobs_file.parent.glob("cells/*/state.json"):
            state = json.loads(state_file.read_text())
            if process_alive(host, state.get("pid"), state.get("pid_start")) and state["pid"] != os.getpid():
                os.kill(int(state["pid"]), signal.SIGKILL)


def write_grid(tmp_path: Path, base: dict, axes: dict, parallelism: int) -> Path:
    grid = {"name": "cancel", "description": "cancel tests", "base": base, "axes": axes,
            "resources": {"timeout_min": 10, "local_parallelism": parallelism}}
    path = tmp_path / "cancel.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def workers(run_dir: Path) -> dict[str, list[str]]:
    """Local job id (controller pid) -> the cells it was given, from jobs.json."""
    out: dict[str, list[str]] = {}
    for entry in read_jobs(run_dir):
        for cell_id, task_id in zip(entry["cell_ids"], entry["task_job_ids"]):
            out.setdefault(task_id, []).append(cell_id)
    return out


def states(run_dir: Path) -> dict[str, str]:
    return {cell.cell_id: cell.state for cell in run_status(run_dir).cells}


# ------------------------------------------------------------- at most local_parallelism workers
def test_local_workers_are_capped_at_local_parallelism(tmp_path):
    """Five cells, two slots: two worker jobs (not five processes each waiting for a slot)."""
    run_dir = tmp_path / "run"
    grid = write_grid(tmp_path, {"model": TINY, "model_args": {"num_classes": 10}, "measure": ["complexity"],
                                 "input_size": 8}, {"model_args.width": [2, 3, 4, 5, 6]}, parallelism=2)
    result = launch(grid, cluster="local", run_dir=run_dir, wait=True, poll_s=0.3)
    assert result.ok, result.failed
    assert len(set(result.task_job_ids)) == 2, f"{len(set(result.task_job_ids))} local jobs for 2 slots"
    assert sorted(len(cells) for cells in workers(run_dir).values()) == [2, 3]
    assert states(run_dir) == {cell.cell_id: "ok" for cell in result.grid.cells}
