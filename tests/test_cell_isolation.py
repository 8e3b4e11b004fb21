"""Each cell in a process of its own: a crash, an exit, a hang or a cancel ends that cell alone.

The runner is called as a job's worker calls it (`CellSequence(CellRunner(..., isolate=True))`), in
this process: each cell is forked from it, so the tests pay no start-up per cell. One slow test
launches a real local grid, as a user does.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from torch import nn

from bench.core.errors import UserCodeError
from bench.core.modelref import ModelRef
from bench.core.records import cell_id_of, read_record, record_outcome, write_json_atomic
from bench.pipeline.grid import resolve_cell
from bench.pipeline.runner import CellPaths, CellRunner, CellSequence
from bench.pipeline.status import format_status, run_status

REPO = Path(__file__).resolve().parents[1]
MODEL = "tests.test_cell_isolation:faulty_net"


class FaultyNet(nn.Module):
    """A tiny model whose forward crashes, exits, hangs or works, as `mode` says."""

    default_input_size = 8

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        if self.mode == "segfault":
            ctypes.string_at(0)
        if self.mode == "exit":
            raise SystemExit(3)
        if self.mode == "os_exit":
            os._exit(0)
        if self.mode == "killed":  # as the kernel's out-of-memory killer ends a process
            os.kill(os.getpid(), signal.SIGKILL)
        if self.mode == "hang":
            time.sleep(3600)
        return self.fc(x.mean((2, 3)))


def faulty_net(mode: str = "ok") -> nn.Module:
    """Factory of the cells below (import path `tests.test_cell_isolation:faulty_net`)."""
    return FaultyNet(mode)


def cell(mode: str) -> dict:
    config = resolve_cell({"model": MODEL, "model_args": {"mode": mode}, "measure": ["complexity"],
                           "input_size": 8})
    return {"cell_id": cell_id_of(config), "config": config}


def run_cells(run_dir: Path, modes: list[str], timeout_min: float | None = None) -> list[dict]:
    cells = [cell(mode) for mode in modes]
    write_json_atomic(run_dir / "cells.json", cells)
    summaries = CellSequence(CellRunner(run_dir, "t", timeout_min=timeout_min, isolate=True))(cells)
    return [dict(summary, mode=mode) for summary, mode in zip(summaries, modes)]


def record_of(run_dir: Path, mode: str) -> dict:
    return read_record(CellPaths(run_dir, cell(mode)["cell_id"]).record)


def test_a_crash_or_an_exit_ends_its_cell_alone_with_what_happened(tmp_path):
    run_cells(tmp_path, ["segfault", "exit", "os_exit", "killed", "ok"])
    segfault, exit_, os_exit, ok = (record_of(tmp_path, m) for m in ("segfault", "exit", "os_exit", "ok"))
    assert ok["status"] == "ok" and ok["metrics"]["params_m"] > 0  # the cell after three failures ran
    assert segfault["status"] == "error" and segfault["error"]["type"] == "CellCrashed"
    assert "SIGSEGV" in segfault["error"]["message"]
    assert "Fatal Python error: Segmentation fault" in segfault["error"]["traceback"]  # its own log's tail
    assert exit_["error"]["type"] == "UserCodeError" and "sys.exit(3)" in exit_["error"]["message"]
    assert os_exit["error"]["type"] == "CellCrashed" and "exited with status 0" in os_exit["error"]["message"]
    killed = record_of(tmp_path, "killed")
    assert killed["error"]["type"] == "CellCrashed" and "SIGKILL (the kernel's out-of-memory killer" in \
        killed["error"]["message"]
    assert "Fatal Python error" not in (CellPaths(tmp_path, cell("ok")["cell_id"]).log.read_text())


def test_a_hanging_cell_times_out_alone_and_status_says_timeout(tmp_path):
    started = time.monotonic()
    run_cells(tmp_path, ["hang", "ok"], timeout_min=0.05)  # a 3 s deadline
    assert time.monotonic() - started < 60
    hung = record_of(tmp_path, "hang")
    assert record_outcome(hung) == "timeout" and hung["error"]["type"] == "CellTimeout"
    assert "timed out after 0.05 min" in hung["error"]["message"]
    assert "time.sleep" in hung["error"]["traceback"] or "in forward" in hung["error"]["traceback"]
    assert record_of(tmp_path, "ok")["status"] == "ok"
    status = run_status(tmp_path)
    assert status.counts["timeout"] == 1 and status.counts["ok"] == 1
    assert "timeout  " + cell("hang")["cell_id"] in format_status(status)


def test_a_cell_cancelled_while_it_runs_is_killed_without_a_record_and_the_next_runs(tmp_path):
    hang = CellPaths(tmp_path, cell("hang")["cell_id"])
    worker = threading.Thread(target=run_cells, args=(tmp_path, ["hang", "ok"]))
    worker.start()
    deadline = time.monotonic() + 60
    while not (hang.state.exists() and json.loads(hang.state.read_text())["state"] == "running"):
        assert time.monotonic() < deadline, "the cell never started"
        time.sleep(0.1)
    write_json_atomic(hang.cancelled, {"cancelled_at": "now"})  # what `vtbench cancel` leaves
    worker.join(60)
    assert not worker.is_alive()
    assert not hang.record.exists()
    assert record_of(tmp_path, "ok")["status"] == "ok"
    assert run_status(tmp_path).counts["stopped"] == 1


def _exit_from(filename: str):
    """A function that calls sys.exit(-1) from code whose file is `filename` (as submitit's handler does)."""
    namespace: dict = {}
    exec(compile("import sys\ndef handler(**_):\n    sys.exit(-1)\n", filename, "exec"), namespace)  # noqa: S102
    return namespace["handler"]


def test_submitit_exits_pass_through_model_building_and_user_exits_do_not():
    submitit_exit = _exit_from(f"{os.sep}x{os.sep}submitit{os.sep}core{os.sep}job_environment.py")
    with pytest.raises(SystemExit):
        ModelRef("mine:f", "import", submitit_exit).build()
    with pytest.raises(UserCodeError, match="sys.exit"):
        ModelRef("mine:f", "import", _exit_from("/home/me/nets.py")).build()


@pytest.mark.slow
def test_a_launch_with_a_crashing_cell_runs_every_other_cell(tmp_path, monkeypatch):
    """The issue's case: local executor, one worker, a segfault and a sys.exit before a healthy cell."""
    from bench.cli import main as cli_main

    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    grid = {"name": "crashy", "base": {"model": MODEL, "measure": ["complexity"], "input_size": 8},
            "axes": {"model_args.mode": ["segfault", "exit", "ok"]},
            "resources": {"timeout_min": 5, "local_parallelism": 1}}
    path = tmp_path / "crashy.yaml"
    path.write_text(yaml.safe_dump(grid))
    run_dir = tmp_path / "run"
    assert cli_main(["launch", str(path), "--wait", "--run-dir", str(run_dir)]) == 1
    counts = run_status(run_dir).counts
    assert (counts["ok"], counts["error"], counts["pending"], counts["stopped"]) == (1, 2, 0, 0)
    # A relaunch runs exactly the two failed cells again, once each.
    assert cli_main(["launch", str(path), "--wait", "--run-dir", str(run_dir)]) == 1
    jobs = json.loads((run_dir / "jobs.json").read_text())
    assert sorted(jobs[-1]["cell_ids"]) == sorted(cell(m)["cell_id"] for m in ("segfault", "exit"))
    assert len(list((run_dir / "superseded").glob("*.json"))) == 2
