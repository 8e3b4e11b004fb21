"""Concurrency between launches, and trust in recorded pids (issue 12, items 4 to 7).

Two launches of one grid at once, `launch --wait` while another launch's cells are in flight,
concurrent appends to `jobs.json` and concurrent writes of the run files, and `status` / `launch`
telling a live process from a reused pid. "Another launch" is played by this test process or by
a small subprocess that holds a cell's lock the way a job does, so each race is reproduced on
purpose rather than hoped for. Cells are complexity-only runs of `tiny_net` below (seconds).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from torch import nn

from bench.pipeline.grid import load_grid
from bench.pipeline.launch import LaunchResult, Plan, cells_in_flight, launch, read_jobs, record_submission, write_run_files
from bench.core.records import read_record
from bench.pipeline.runner import CellPaths, CellRun, JobContext, _cell_lock, run_cell
from bench.pipeline.status import run_status

REPO = Path(__file__).resolve().parents[1]
TINY = "tests.test_concurrency:tiny_net"
WAIT_S = 90  # generous: local jobs start Python processes on two shared cores


def tiny_net(num_classes: int = 10, width: int = 4) -> nn.Module:
    """Factory used by the test grids (import path `tests.test_concurrency:tiny_net`)."""
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(width, num_classes))


# -------------------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def importable_tests(monkeypatch):
    """Jobs (subprocesses) import `tests.test_concurrency`: put the repo on their path."""
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


@pytest.fixture
def launch_log(caplog):
    """`wait_for(text, launcher)`: True once bench.pipeline.launch logged a line holding `text` (from any
    thread); False if the launcher thread ended first, or after a timeout."""
    caplog.set_level(logging.INFO, logger="bench.pipeline.launch")

    def wait_for(text: str, launcher: threading.Thread, timeout: float = WAIT_S) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in record.getMessage() for record in list(caplog.records)):
                return True
            if not launcher.is_alive():
                return False
            time.sleep(0.05)
        return False

    return wait_for


def write_grid(tmp_path: Path, widths=(4,), parallelism: int = 4) -> Path:
    """A grid of complexity-only cells, one per width."""
    grid = {"name": "conc", "description": "concurrency tests",
            "base": {"model": TINY, "model_args": {"num_classes": 10}, "measure": ["complexity"], "input_size": 8},
            "axes": {"model_args.width": list(widths)},
            "resources": {"timeout_min": 5, "local_parallelism": parallelism}}
    path = tmp_path / "conc.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


class InBackground(threading.Thread):
    """Call `fn(*args, **kwargs)` in a thread (a launcher following its cells); keep what it gave."""

    def __init__(self, fn, *args, **kwargs):
        super().__init__(daemon=True)
        self.call = (fn, args, kwargs)
        self.value, self.error = None, None
        self.start()

    def run(self):
        fn, args, kwargs = self.call
        try:
            self.value = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            self.error = exc

    def said(self):
        """What an ended launcher reported (its failures, or what it raised), for assertion messages."""
        return getattr(self.value, "failed", self.error)

    def outcome(self, timeout: float = WAIT_S):
        self.join(timeout)
        assert not self.is_alive(), f"still running after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.value


def start_ticks(pid: int) -> int:
    """Field 22 of /proc/PID/stat, read here independently of bench.pipeline.liveness."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[19])


HOLDER = """
import sys, time
from pathlib import Path
from bench.pipeline.runner import CellPaths, JobContext, _cell_lock
paths = CellPaths(Path(sys.argv[1]), sys.argv[2])
paths.work.mkdir(parents=True, exist_ok=True)
with _cell_lock(paths, JobContext()) as got:
    print("held" if got else "busy", flush=True)
    time.sleep(300)
"""


def stop(proc: subprocess.Popen) -> None:
    """Kill a helper process and reap it (a zombie still has a /proc entry)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


# ---------------------------------------------- item 4: two launches of one grid at the same instant
def test_a_cell_locked_by_another_launch_is_followed_to_its_record(tmp_path, launch_log):
    """Our local job finds the cell locked (`busy`): the launcher follows the holder's record."""
    grid_path, run_dir = write_grid(tmp_path), tmp_path / "run"
    (cell,) = load_grid(grid_path).cells
    paths = CellPaths(run_dir, cell.cell_id)
    paths.work.mkdir(parents=True)
    ctx = JobContext()
    with _cell_lock(paths, ctx) as got:  # this process plays the other launch's job
        assert got
        ours = InBackground(launch, grid_path, cluster="local", run_dir=run_dir, wait=True, poll_s=0.2)
        handed_over = launch_log("being run by another launch", ours)
        assert ours.is_alive(), f"the launcher returned while the other job held the cell: {ours.said()}"
        assert handed_over
        CellRun(paths, cell.config, ctx, "other", isolate=False, timeout_min=None).locked({"cell_id": cell.cell_id})
    result = ours.outcome()
    assert result.ok and result.finished, result.failed
    assert result.followed == [cell.cell_id] and result.elsewhere == [cell.cell_id]
    assert read_record(paths.record)["run"] == "other"


def test_a_busy_cell_whose_holder_dies_without_a_record_is_a_failure(tmp_path, launch_log):
    """The other launch's job is killed: the launcher says so instead of waiting forever."""
    grid_path, run_dir = write_grid(tmp_path), tmp_path / "run"
    (cell,) = load_grid(grid_path).cells
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), cell.cell_id],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        ours = InBackground(launch, grid_path, cluster="debug", run_dir=run_dir, wait=True, poll_s=0.2)
        handed_over = launch_log("being run by another launch", ours)
        assert ours.is_alive(), f"the launcher returned while the other job held the cell: {ours.said()}"
        assert handed_over
        time.sleep(0.5)
        assert ours.is_alive(), "the launcher stopped following while the holder still ran"
    finally:
        stop(holder)
    result = ours.outcome()
    assert not result.ok and "another launch" in result.failed[cell.cell_id]
    assert not CellPaths(run_dir, cell.cell_id).record.exists()


# ----------------------------------------------------- item 6: --wait while cells are in flight
def test_wait_follows_cells_in_flight_in_another_launch(tmp_path, launch_log):
    """Both cells are in another launch's live job: wait for one's record and the other's job end."""
    grid_path, run_dir = write_grid(tmp_path, widths=(4, 8)), tmp_path / "run"
    first, second = load_grid(grid_path).cells
    # A stand-in for the other launch's local job controller (a submitit process, as its cmdline says).
    controller = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "submitit-stand-in"])
    try:
        run_dir.mkdir()
        (run_dir / "jobs.json").write_text(json.dumps([{
            "job_id": str(controller.pid), "cell_ids": [first.cell_id, second.cell_id],
            "task_job_ids": [str(controller.pid)] * 2, "task_pid_starts": [start_ticks(controller.pid)] * 2,
            "cluster": "local", "host": socket.gethostname(), "grid": "conc"}]))
        ours = InBackground(launch, grid_path, cluster="local", run_dir=run_dir, wait=True, poll_s=0.2)
        following = launch_log("following 2 cell(s) in flight", ours)
        assert ours.is_alive(), f"launch --wait returned with the cells still in flight: {ours.said()}"
        assert following
        assert run_cell(run_dir, {"cell_id": first.cell_id, "config": first.config})["status"] == "ok"
        time.sleep(1.0)
        assert ours.is_alive(), "the launcher returned while the second cell was still in flight"
    finally:
        stop(controller)
    result = ours.outcome()
    assert result.finished and result.submitted == []
    assert result.followed == [first.cell_id, second.cell_id] and set(result.elsewhere) == set(result.followed)
    assert list(result.failed) == [second.cell_id] and "another launch" in result.failed[second.cell_id]
    # The runner records the pid's start time beside the pid (item 7).
    state = json.loads(CellPaths(run_dir, first.cell_id).state.read_text())
    assert state["pid"] == os.getpid() and state["pid_start"] == start_ticks(os.getpid())


# ------------------------------------------ item 5: jobs.json appends and run files, concurrently
def _append_submissions(run_dir: Path, grid, worker: int, count: int, barrier) -> None:
    barrier.wait()
    for index in range(count):
        result = LaunchResult(run_dir=run_dir, grid=grid, plan=Plan(), cluster="debug",
                              job_id=f"w{worker}-{index}", task_job_ids=[])
        record_submission(run_dir, result)


def test_concurrent_appends_to_jobs_json_all_survive(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    grid = load_grid(write_grid(tmp_path))
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(8)
    workers = [context.Process(target=_append_submissions, args=(run_dir, grid, w, 25, barrier)) for w in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT_S)
    assert [w.exitcode for w in workers] == [0] * 8
    job_ids = [entry["job_id"] for entry in read_jobs(run_dir)]
    assert sorted(job_ids) == sorted(f"w{w}-{i}" for w in range(8) for i in range(25))


def _write_run_files_often(run_dir: Path, grid, count: int, barrier) -> None:
    barrier.wait()
    failures = 0
    for _ in range(count):
        try:
            write_run_files(run_dir, grid)
        except OSError:
            failures += 1
    sys.exit(min(failures, 100))


def test_concurrent_write_run_files_never_fail(tmp_path):
    run_dir = tmp_path / "run"
    grid = load_grid(write_grid(tmp_path))
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    workers = [context.Process(target=_write_run_files_often, args=(run_dir, grid, 200, barrier)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT_S)
    assert [w.exitcode for w in workers] == [0, 0], "exit code = number of failed write_run_files calls"
    assert (run_dir / "grid.yaml").read_text() == grid.text
    assert not list(run_dir.glob(".*.tmp")), "temp files left behind"


# ----------------------------------------------------------- item 7: a recorded pid may be reused
def write_states(run_dir: Path, states: dict[str, dict]) -> None:
    """A run folder whose cells have no record and the given runner state files."""
    run_dir.mkdir()
    (run_dir / "cells.json").write_text(json.dumps([{"cell_id": c, "config": {"model": "m"}} for c in states]))
    for cell_id, state in states.items():
        path = CellPaths(run_dir, cell_id).state
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"state": "running", "job_id": "1", "updated_at": "now", **state}))


def test_status_counts_running_only_the_same_live_process(tmp_path):
    host, me = socket.gethostname(), os.getpid()
    write_states(tmp_path / "run", {
        "aaaaaaaaaaaa": {"host": host, "pid": me, "pid_start": start_ticks(me)},           # this process
        "bbbbbbbbbbbb": {"host": host, "pid": me, "pid_start": start_ticks(me) + 1},       # pid reused
        "cccccccccccc": {"host": host, "pid": 1, "pid_start": start_ticks(me)},            # another live one
        "dddddddddddd": {"host": "another-node", "pid": 1, "pid_start": 1},               # cannot be seen
    })
    states = {cell.cell_id: cell.state for cell in run_status(tmp_path / "run").cells}
    # A dead process (or a reused pid) left its cell stopped: not running, and not coming (item 8).
    assert states == {"aaaaaaaaaaaa": "running", "bbbbbbbbbbbb": "stopped", "cccccccccccc": "stopped",
                      "dddddddddddd": "running"}


def test_launch_in_flight_check_tells_a_reused_pid_apart(tmp_path):
    """launch's check of earlier local jobs uses the same start-time comparison as status."""
    me = os.getpid()

    def in_flight_with(pid_start: int) -> set[str]:
        run_dir = tmp_path / f"run{pid_start}"
        run_dir.mkdir()
        (run_dir / "jobs.json").write_text(json.dumps([{
            "job_id": str(me), "cell_ids": ["aaaaaaaaaaaa"], "task_job_ids": [str(me)],
            "task_pid_starts": [pid_start], "cluster": "local", "host": socket.gethostname()}]))
        return cells_in_flight(run_dir)

    assert in_flight_with(start_ticks(me)) == {"aaaaaaaaaaaa"}
    assert in_flight_with(start_ticks(me) + 1) == set()


def test_a_live_job_that_already_finished_the_cell_does_not_hold_it_in_flight(tmp_path):
    """A job's process outlives its cell by a moment. A relaunch in that moment, after the cell's
    record was deleted, used to leave the cell to the finished job and then call it failed
    ('run by another launch, whose job ended without a record'); seen in CI-like runs of
    test_local_grid_completes_relaunch_skips_and_reruns_deleted on two loaded cores."""
    me = os.getpid()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "jobs.json").write_text(json.dumps([{
        "job_id": str(me), "cell_ids": ["aaaaaaaaaaaa", "bbbbbbbbbbbb"], "task_job_ids": [str(me), str(me)],
        "task_pid_starts": [start_ticks(me)] * 2, "cluster": "local", "host": socket.gethostname()}]))
    for cell_id, state in (("aaaaaaaaaaaa", "done"), ("bbbbbbbbbbbb", "running")):
        paths = CellPaths(run_dir, cell_id)
        paths.work.mkdir(parents=True)
        paths.state.write_text(json.dumps({"state": state, "job_id": str(me), "pid": me}))
    assert cells_in_flight(run_dir) == {"bbbbbbbbbbbb"}
