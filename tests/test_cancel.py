"""Stopping a local launch cleanly (issue 12, item 8): `vtbench cancel`, SIGINT/SIGTERM to a waiting
launcher, `stopped` cells in `vtbench status`, and at most `local_parallelism` local workers.

Jobs are real local submitit jobs running `tiny_net` from tests/test_launch.py; a cell that must
still be running when it is cancelled trains with a sleep in each step. The SLURM path is tested
here with a stand-in for `squeue`/`scancel` (the real one is in tests/test_slurm.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.cli import main as cli_main
from bench.pipeline.grid import load_grid
from bench.pipeline.launch import launch, read_jobs
from bench.pipeline.liveness import process_alive, process_start_ticks
from bench.pipeline.runner import CellPaths, run_cell
from bench.pipeline.status import run_status

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


def training(sleep_ms: float, epochs: int) -> dict:
    """A tiny digits training whose steps sleep `sleep_ms` (about 7 steps an epoch)."""
    return {"model": TINY, "model_args": {"num_classes": 10, "sleep_ms": sleep_ms}, "measure": ["train"],
            "input_size": 8, "train": {"dataset": "digits", "epochs": epochs, "batch_size": 256, "lr": 0.1,
                                       "threads": 1}}


def write_grid(tmp_path: Path, base: dict, axes: dict, parallelism: int) -> Path:
    grid = {"name": "cancel", "description": "cancel tests", "base": base, "axes": axes,
            "resources": {"timeout_min": 10, "local_parallelism": parallelism}}
    path = tmp_path / "cancel.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def wait_until(condition, what: str, timeout: float = WAIT_S, poll_s: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def running(run_dir: Path, cell_id: str) -> bool:
    """The cell's state file says running, written by a live process."""
    try:
        state = json.loads(CellPaths(run_dir, cell_id).state.read_text())
    except (OSError, ValueError):
        return False
    return state.get("state") == "running" and process_alive(state["host"], state["pid"], state["pid_start"])


def workers(run_dir: Path) -> dict[str, list[str]]:
    """Local job id (controller pid) -> the cells it was given, from jobs.json."""
    out: dict[str, list[str]] = {}
    for entry in read_jobs(run_dir):
        for cell_id, task_id in zip(entry["cell_ids"], entry["task_job_ids"]):
            out.setdefault(task_id, []).append(cell_id)
    return out


def jobs_alive(run_dir: Path) -> list[str]:
    host = socket.gethostname()
    return [task_id for entry in read_jobs(run_dir)
            for task_id, start in zip(entry["task_job_ids"], entry["task_pid_starts"])
            if process_alive(host, task_id, start)]


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


# ------------------------------------------------------------------------------- vtbench cancel
def test_cancel_stops_every_local_job_and_status_says_stopped(tmp_path, capsys):
    run_dir = tmp_path / "run"
    grid = write_grid(tmp_path, training(sleep_ms=100, epochs=200), {"seed": [0, 1, 2]}, parallelism=2)
    result = launch(grid, cluster="local", run_dir=run_dir)
    cells = result.submitted
    shared = next(ids for ids in workers(run_dir).values() if len(ids) == 2)
    wait_until(lambda: running(run_dir, shared[0]), f"cell {shared[0]} to start")
    capsys.readouterr()

    assert cli_main(["cancel", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert all(f"cancelled {cell_id}" in out for cell_id in cells), out
    assert "3 cell(s)" in out and "vtbench launch" in out
    wait_until(lambda: not jobs_alive(run_dir), "the cancelled jobs to end", timeout=30)
    status = run_status(run_dir)
    assert status.counts["stopped"] == 3 and status.counts["pending"] == 0, states(run_dir)
    assert not list((run_dir / "records").glob("*.json")), "cancel writes no record"
    assert sorted(c.cell_id for c in launch(grid, cluster="local", run_dir=run_dir, dry_run=True).plan.to_run) \
        == sorted(cells), "a later launch reruns the cancelled cells"

    assert cli_main(["cancel", str(run_dir)]) == 0
    assert "nothing running" in capsys.readouterr().out


def test_cancel_one_cell_of_a_worker_lets_it_go_on_with_the_next(tmp_path, capsys):
    """The first cell of a two-cell worker is cancelled while it trains; the second still runs."""
    run_dir = tmp_path / "run"
    # Cells in grid order: a long training, then two short ones; two workers get [long, short2], [short1].
    grid = write_grid(tmp_path, training(sleep_ms=100, epochs=200), {"train.epochs": [200, 1, 2]}, parallelism=2)
    long_cell, *short = [c.cell_id for c in load_grid(grid).cells]
    launch(grid, cluster="local", run_dir=run_dir)
    assert [long_cell, short[1]] in workers(run_dir).values()
    wait_until(lambda: running(run_dir, long_cell), "the long cell to start")

    assert cli_main(["cancel", str(run_dir), "--cells", long_cell]) == 0
    out = capsys.readouterr().out
    assert f"cancelled {long_cell}" in out and short[0] not in out and short[1] not in out
    wait_until(lambda: not jobs_alive(run_dir), "both workers to end")
    assert states(run_dir) == {long_cell: "stopped", short[0]: "ok", short[1]: "ok"}
    assert "cancelled" in (run_dir / "cells" / long_cell / "log").read_text()


def test_cancel_signals_only_a_live_job_whose_pid_start_matches(tmp_path, capsys):
    """jobs.json names two local jobs: a live one, and a pid since reused by another process."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "cells.json").write_text(json.dumps([{"cell_id": c, "config": {"model": "m"}} for c in ("a" * 12, "b" * 12)]))
    # The child takes SIGINT's default action whatever it inherits: a test run started as a
    # background job of a non-interactive shell (`nohup bash -c ... &`) passes SIGINT down ignored.
    # Its command line names the run's submitit folder, as a local job controller's does: cancel
    # signals no process it cannot show is one of this run's.
    job = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, "
                            "signal.default_int_handler); print('ready', flush=True); time.sleep(300)",
                            "submitit.local._local", str((run_dir / "submitit").resolve())],
                           stdout=subprocess.PIPE, text=True)
    assert job.stdout.readline().strip() == "ready"  # its handler is set before the signal comes
    try:
        me = os.getpid()
        (run_dir / "jobs.json").write_text(json.dumps([{
            "job_id": "x", "cell_ids": ["a" * 12, "b" * 12], "task_job_ids": [str(job.pid), str(me)],
            "task_pid_starts": [process_start_ticks(job.pid), process_start_ticks(me) + 1],
            "cluster": "local", "host": socket.gethostname()}]))
        assert cli_main(["cancel", str(run_dir)]) == 0
        job.wait(timeout=30)  # interrupted (SIGINT, as submitit cancels a local job)
        assert job.returncode != 0
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
        job.stdout.close()
    out = capsys.readouterr().out
    assert f"cancelled {'a' * 12}" in out and "b" * 12 not in out
    assert states(run_dir) == {"a" * 12: "stopped", "b" * 12: "pending"}


def test_cancel_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert cli_main(["cancel", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a run folder" in err
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "cells.json").write_text(json.dumps([{"cell_id": "a" * 12, "config": {"model": "m"}}]))
    assert cli_main(["cancel", str(run_dir), "--cells", "a" * 12, "0123456789ab"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown cell id" in err and "0123456789ab" in err


# ------------------------------------------------------------------------------- SLURM, faked
class FakeSlurm:
    """Answers `squeue` with the given lines (or fails), records every `scancel` command line."""

    def __init__(self, queue: str | None):
        self.queue, self.scancels = queue, []

    def run(self, argv, **kwargs):
        if argv[0] == "squeue":
            if self.queue is None:
                raise subprocess.CalledProcessError(1, argv, stderr="slurm_load_jobs error")
            return subprocess.CompletedProcess(argv, 0, stdout=self.queue, stderr="")
        assert argv[0] == "scancel", argv
        self.scancels.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, stdout="", stderr="")


def slurm_run(tmp_path: Path) -> Path:
    """A SLURM run of four cells: one with an ok record, three without (123_1 queued, 123_2 and
    123_3 running or gone)."""
    run_dir = tmp_path / "run"
    cells = ["a" * 12, "b" * 12, "c" * 12, "d" * 12]
    (run_dir / "records").mkdir(parents=True)
    (run_dir / "cells.json").write_text(json.dumps([{"cell_id": c, "config": {"model": "m"}} for c in cells]))
    (run_dir / "jobs.json").write_text(json.dumps([{
        "job_id": "123", "cell_ids": cells, "task_job_ids": [f"123_{i}" for i in range(4)],
        "cluster": "slurm", "host": "login"}]))
    config = {"model": TINY, "model_args": {"num_classes": 10}, "measure": ["complexity"], "input_size": 8}
    assert run_cell(run_dir, {"cell_id": cells[0], "config": config})["status"] == "ok"
    return run_dir


@pytest.fixture
def fake_slurm(monkeypatch):
    """`install(queue)`: from then on every `subprocess.run` is the fake's (squeue and scancel only)."""
    import shutil

    def install(queue: str | None) -> FakeSlurm:
        fake = FakeSlurm(queue)
        monkeypatch.setattr(subprocess, "run", fake.run)
        monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
        return fake
    return install


def test_cancel_scancels_the_recorded_array_tasks(tmp_path, fake_slurm, capsys):
    run_dir = slurm_run(tmp_path)
    fake = fake_slurm("123_1 PD\n123_2 R\n")
    assert cli_main(["cancel", str(run_dir), "--cells", "c" * 12]) == 0
    assert fake.scancels == [["scancel", "123_2"]]
    assert cli_main(["cancel", str(run_dir)]) == 0
    assert fake.scancels[1:] == [["scancel", "123_1"]], "123_2 was cancelled already, 123_3 is gone"
    assert states(run_dir) == {"a" * 12: "ok", "b" * 12: "stopped", "c" * 12: "stopped", "d" * 12: "pending"}


def test_cancel_without_squeue_scancels_every_task_without_a_record(tmp_path, fake_slurm):
    run_dir = slurm_run(tmp_path)
    fake = fake_slurm(None)
    assert cli_main(["cancel", str(run_dir)]) == 0
    assert fake.scancels == [["scancel", "123_1", "123_2", "123_3"]]


# ----------------------------------------------------------------- a cancelled cell and launch
def test_a_cancelled_cell_is_skipped_by_its_job_and_rerun_by_the_next_launch(tmp_path):
    run_dir = tmp_path / "run"
    grid = write_grid(tmp_path, {"model": TINY, "model_args": {"num_classes": 10}, "measure": ["complexity"],
                                 "input_size": 8}, {"model_args.width": [4]}, parallelism=1)
    (cell,) = load_grid(grid).cells
    paths = CellPaths(run_dir, cell.cell_id)
    paths.work.mkdir(parents=True)
    paths.cancelled.write_text(json.dumps({"cancelled_at": "now", "task_id": "1"}))
    assert run_cell(run_dir, {"cell_id": cell.cell_id, "config": cell.config})["status"] == "cancelled"
    assert not paths.record.exists()

    result = launch(grid, cluster="debug", run_dir=run_dir)
    assert result.ok and result.submitted == [cell.cell_id]
    assert states(run_dir) == {cell.cell_id: "ok"} and not paths.cancelled.exists()


# ----------------------------------------------------------- SIGINT / SIGTERM to the launcher
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_a_waiting_launcher_cancels_its_jobs(tmp_path, signum):
    """`vtbench launch --wait` sent SIGINT or SIGTERM (alone, as `kill` does): it cancels the jobs
    it submitted, says which cells, and exits 128 + the signal number."""
    run_dir = tmp_path / "run"
    grid = write_grid(tmp_path, training(sleep_ms=100, epochs=200), {"seed": [0, 1]}, parallelism=1)
    first, second = [c.cell_id for c in load_grid(grid).cells]
    log_file = tmp_path / "launcher.log"  # not a pipe: the jobs inherit it and would hold it open
    with open(log_file, "w") as log:
        launcher = subprocess.Popen([sys.executable, "-m", "bench", "launch", str(grid), "--run-dir",
                                     str(run_dir), "--wait"], cwd=REPO, stdout=log, stderr=log,
                                    start_new_session=True)
    try:
        wait_until(lambda: running(run_dir, first) or launcher.poll() is not None, "the first cell to start")
        assert launcher.poll() is None, log_file.read_text()
        launcher.send_signal(signum)
        launcher.wait(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    err = log_file.read_text()
    assert launcher.returncode == 128 + signum, err
    last = err.strip().splitlines()[-1]
    assert "cancelled 2 cell(s)" in last and first in last and second in last and "vtbench launch" in last, last
    wait_until(lambda: not jobs_alive(run_dir), "the launcher's jobs to end", timeout=30)
    assert states(run_dir) == {first: "stopped", second: "stopped"}


def test_a_signal_while_submitting_is_held_until_the_submission_is_recorded():
    """A SIGTERM in the middle of a submission would leave started jobs out of jobs.json (and so
    out of the cancel): it takes effect once the held block (submit and record) is done."""
    from bench.core.errors import Interrupted
    from bench.pipeline.launch import _Signals

    signals, steps = _Signals(), []
    with pytest.raises(Interrupted) as caught:
        with signals.held():
            signals.handle(signal.SIGTERM, None)
            steps.append("recorded")
    assert steps == ["recorded"] and caught.value.signum == signal.SIGTERM
