"""Which submitted jobs still hold which cells: `RUN_DIR/jobs.json` checked against /proc or squeue.

One answer for `vtbench launch` (leave in-flight cells alone, follow them) and `vtbench cancel`
(signal or `scancel` the jobs that hold the chosen cells). Each entry of jobs.json pairs its
`cell_ids` with `task_job_ids`: a SLURM array task id (`123_4`), or a local job's id, which is its
controller's pid, with the pid's start time beside it (`task_pid_starts`, see `bench.pipeline.liveness`).
Several cells share one local job: a local worker runs its cells one after the other.

A task holds a cell while its job is queued or running and the cell's work is not over: it has no
record, its state file does not say `done` by that job, and it was not cancelled (`vtbench
cancel` leaves `cells/ID/cancelled.json`; the job skips or has stopped that cell).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import subprocess
from pathlib import Path
from typing import Any

from bench.pipeline.liveness import process_alive
from bench.pipeline.runner import CellPaths, cancel_mark
from bench.pipeline.status import read_jobs
from bench.core.util import MAX_STATE_BYTES, read_untrusted_json

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Task:
    """The job of one submission that was given one cell."""

    cell_id: str
    cluster: str
    task_id: str
    host: str | None = None
    pid_start: int | None = None   # local jobs: the controller pid's start time


def submitted_tasks(jobs: list[dict[str, Any]]) -> list[Task]:
    """Every (cell, job) pair of the local and SLURM submissions, oldest first."""
    tasks = []
    for entry in jobs:
        if entry.get("cluster") not in ("local", "slurm"):
            continue  # debug jobs run inside their launcher: nothing outside it to ask or stop
        task_ids = entry.get("task_job_ids", [])
        starts = entry.get("task_pid_starts") or [None] * len(task_ids)
        for cell_id, task_id, start in zip(entry.get("cell_ids", []), task_ids, starts):
            tasks.append(Task(cell_id, entry["cluster"], str(task_id), entry.get("host"), start))
    return tasks


def live_tasks(run_dir: Path, jobs: list[dict[str, Any]], queue: set[str] | None) -> list[Task]:
    """The tasks of `jobs` that still hold their cell (see the module doc).

    `queue` is what `slurm_queue` answered; None (SLURM could not be asked) counts every SLURM task
    as live: only the cancel path passes it, where a needless `scancel` is harmless.
    """
    here = socket.gethostname()
    held = []
    for task in submitted_tasks(jobs):
        if _cell_over(run_dir, task):
            continue
        if task.cluster == "slurm" and (queue is None or task.task_id in queue):
            held.append(task)
        elif task.cluster == "local" and task.host == here and local_job_alive(task.task_id, task.pid_start):
            held.append(task)
    return held


def cells_in_flight(run_dir: Path) -> set[str]:
    """Cells of earlier submissions whose job is still queued or running (asked of the cluster)."""
    jobs = read_jobs(run_dir)
    queue = slurm_queue(jobs)
    if queue is None:
        log.warning("cannot ask SLURM which earlier jobs still run; their cells may be submitted "
                    "again (each cell still writes one record)")
        queue = set()
    return {task.cell_id for task in live_tasks(run_dir, jobs, queue)}


def _cell_over(run_dir: Path, task: Task) -> bool:
    """Is `task`'s work on its cell over: recorded, finished by that job, or cancelled?"""
    paths = CellPaths(run_dir, task.cell_id)
    return paths.record.exists() or _cell_finished_by(run_dir, task.cell_id, task.task_id) \
        or cancel_mark(paths) is not None


def _cell_finished_by(run_dir: Path, cell_id: str, task_id: str) -> bool:
    """Has job `task_id` already finished `cell_id` (its state.json says `done`, written by it)?

    A job's process outlives its cell by a moment (submitit writes the result, the process exits),
    and a local worker goes on with its next cell: without this, a relaunch right after a record
    was deleted saw the job as still running the cell, left the cell to it, and then reported it
    failed for want of a record.
    """
    try:
        state = read_untrusted_json(CellPaths(run_dir, cell_id).state, MAX_STATE_BYTES)
    except (OSError, ValueError):
        return False
    if not isinstance(state, dict) or state.get("state") != "done":
        return False
    return str(task_id) in (str(state.get("job_id")), str(state.get("pid")))


def slurm_queue(jobs: list[dict[str, Any]]) -> set[str] | None:
    """Array task ids (`123_4`) SLURM still has queued or running; None if it cannot be asked."""
    if not any(entry.get("cluster") == "slurm" for entry in jobs):
        return set()
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %t"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("squeue failed: %s", exc)
        return None
    # A completing job (CG) has finished its cell's work: it is not in flight any more.
    return {line.split()[0] for line in out.splitlines() if line.strip() and line.split()[-1] != "CG"}


def local_job_alive(job_id: str, pid_start: int | None = None, run_dir: Path | None = None) -> bool:
    """A local job's id is its controller's PID: is that same process still alive (and, with
    `run_dir`, one of that run's submitit processes: `is_process_of_run`)?"""
    if not str(job_id).isdigit():
        return False
    if pid_start is not None and process_alive(socket.gethostname(), job_id, pid_start) is not True:
        return False
    if run_dir is not None:
        return is_process_of_run(int(job_id), run_dir)
    if pid_start is not None:
        return True
    # jobs.json written before start times were recorded: the pid must at least be a submitit process
    try:
        cmdline = Path(f"/proc/{job_id}/cmdline").read_bytes()
    except OSError:
        return False
    return b"submitit" in cmdline


def is_process_of_run(pid: int, run_dir: Path) -> bool:
    """Is `pid` a submitit controller or worker of the run in `run_dir`? Its command line names
    the run's submitit folder (`python -m submitit.local._local RUN/submitit`, `python -m
    submitit.core._submit RUN/submitit`; the worker's cell children inherit it). What `vtbench
    cancel` checks before it signals a pid read from the run folder, whose files anyone may edit.
    """
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    folder = str((Path(run_dir) / "submitit").resolve()).encode()
    return b"submitit" in cmdline and folder in cmdline
