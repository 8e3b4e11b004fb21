"""Everything read from a run folder is untrusted: FIFOs, devices, symlinks out of the run and huge
files are refused before a byte is parsed; ids from jobs.json are checked before any path is built;
`vtbench cancel` signals only a process of this run. Status says why a cell is pending.

Commands that could hang on a FIFO run in a subprocess with a timeout, so a regression fails the
test instead of hanging the suite.
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

from bench.core import records
from bench.core.records import CorruptRecord, make_record, read_record, write_json_atomic, write_record
from bench.pipeline.liveness import process_start_ticks

REPO = Path(__file__).resolve().parents[1]
ENV = {"host": "fixture-host", "device_name": "Fixture CPU", "threads": 1}
CONFIG = {"model": "resnet18", "model_args": {"num_classes": 10, "stem": "cifar"}, "measure": ["complexity"],
          "input_size": 16, "seed": 0, "complexity": {}, "latency": {}, "train": {}}


def _run(tmp_path: Path, n_cells: int = 1) -> tuple[Path, list[str]]:
    """A run folder with `n_cells` cells (seeds 0..n-1), one ok record for the first."""
    run = tmp_path / "run"
    (run / "records").mkdir(parents=True)
    configs = [{**CONFIG, "seed": seed} for seed in range(n_cells)]
    first = make_record(configs[0], metrics={"gmacs": 1.0, "params_m": 2.0}, env=ENV)
    write_record(run / "records", first)
    cells = [{"cell_id": records.cell_id_of(c), "config": c} for c in configs]
    write_json_atomic(run / "cells.json", cells)
    (run / "grid.yaml").write_text("name: run\n")
    return run, [c["cell_id"] for c in cells]


def _vtbench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_a_fifo_or_a_device_among_the_records_is_corrupt_not_waited_on(tmp_path):
    run, _ = _run(tmp_path)
    os.mkfifo(run / "records" / ("a" * 12 + ".json"))
    (run / "records" / ("b" * 12 + ".json")).symlink_to("/dev/zero")
    done = _vtbench("status", str(run), timeout=60)  # the former code never returned
    assert done.returncode == 0, done.stderr
    assert "not a regular file (a FIFO)" in done.stdout
    assert "leads out of" in done.stdout or "a character device" in done.stdout


def test_a_record_above_its_size_cap_is_corrupt_unread(tmp_path, monkeypatch):
    run, (cell_id,) = _run(tmp_path)
    monkeypatch.setattr(records, "MAX_RECORD_BYTES", 100)
    with pytest.raises(CorruptRecord, match="above the 100-byte cap"):
        read_record(run / "records" / f"{cell_id}.json")


def test_a_fifo_checkpoint_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "checkpoint.pt"
    os.mkfifo(fifo)
    code = ("import sys\nfrom bench.measure.checkpoint import CheckpointError, read_checkpoint_file\n"
            f"try:\n    read_checkpoint_file({str(fifo)!r})\nexcept CheckpointError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "not a regular file (a FIFO)" in done.stdout, done.stderr


def test_jobs_json_cell_ids_never_become_paths_outside_the_run(tmp_path):
    from bench.pipeline.cancel import cancel

    run, _ = _run(tmp_path)
    escape = "../../../escaped"
    write_json_atomic(run / "jobs.json", [{"job_id": "1", "cell_ids": [escape], "task_job_ids": ["1"],
                                           "cluster": "slurm", "host": "h", "grid": "run"}])
    cancel(run)  # the former code wrote cancelled.json at run/cells/../../../escaped
    assert not (run / "cells" / escape).resolve().exists()
    assert not list(tmp_path.parent.glob("escaped*"))


def test_cancel_never_signals_a_process_that_is_not_of_this_run(tmp_path):
    from bench.pipeline.cancel import cancel

    run, cell_ids = _run(tmp_path, n_cells=2)
    victim = subprocess.Popen(["sleep", "60"])
    try:
        time.sleep(0.2)
        pid, start = victim.pid, process_start_ticks(victim.pid)
        import socket

        write_json_atomic(run / "jobs.json", [{"job_id": str(pid), "cell_ids": [cell_ids[1]], "task_job_ids": [str(pid)],
                                               "task_pid_starts": [start], "cluster": "local",
                                               "host": socket.gethostname(), "grid": "run"}])
        cancel(run)
        time.sleep(0.3)
        assert victim.poll() is None, "cancel signalled a process that is no job of this run"
    finally:
        victim.kill()
        victim.wait()


def test_status_says_why_a_cell_is_pending_after_its_worker_died(tmp_path, capsys):
    from bench.cli import main as cli_main

    run, cell_ids = _run(tmp_path, n_cells=2)
    dead = subprocess.Popen(["true"])
    dead.wait()
    import socket

    write_json_atomic(run / "jobs.json", [{"job_id": str(dead.pid), "cell_ids": [cell_ids[1]],
                                           "task_job_ids": [str(dead.pid)], "task_pid_starts": [1],
                                           "cluster": "local", "host": socket.gethostname(), "grid": "run"}])
    assert cli_main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"pending  {cell_ids[1]}" in out
    assert f"its local job {dead.pid} ended before starting it" in out


def test_status_escapes_control_characters_from_the_run_folder(tmp_path, capsys):
    from bench.cli import main as cli_main

    run, cell_ids = _run(tmp_path, n_cells=2)
    error = make_record({**CONFIG, "seed": 1}, error=RuntimeError("\x1b[2J\x1b[31mred alert"), env=ENV)
    write_record(run / "records", error)
    assert cli_main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[31mred alert" in out
