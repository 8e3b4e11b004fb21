"""Cancel a run's queued and running cells: `vtbench cancel RUN [--cells ID ...]`, and what a
`vtbench launch` does with the cells it submitted when it gets SIGINT or SIGTERM.

`cancel(run_dir, cell_ids=None)` finds the jobs that still hold the chosen cells (`bench.pipeline.jobs`:
jobs.json checked against /proc and squeue), then for each such cell:

1. leaves `cells/ID/cancelled.json` (when, which job, who): `vtbench status` shows the cell as
   `stopped`, a job that reaches it skips it, and the next `vtbench launch` runs it again (and
   removes the mark). No record is written: the cell has none, as if it never ran;
2. SLURM: `scancel` of the recorded array task ids, in one call;
3. local: a worker job whose every remaining cell is cancelled gets SIGINT, as submitit cancels a
   local job (its controller interrupts the worker, and kills it a second later). A worker that
   keeps other cells gets SIGUSR2 if it is running a cancelled cell (submitit's preemption signal:
   it is requeued, in a fresh process, with the cells it has left; `bench.pipeline.runner.CellSequence`),
   and otherwise skips the cancelled cells when it reaches them. A pid is signalled only while its
   start time still matches the one recorded (`bench.pipeline.liveness`), and only if its command
   line shows it is a submitit process of this run (`bench.pipeline.jobs.is_process_of_run`):
   jobs.json and state files are untrusted, so never an unrelated process they name.

Training checkpoints are kept: a cancelled cell's training resumes from its last epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable

from bench.core.errors import UsageError
from bench.pipeline.jobs import Task, is_process_of_run, live_tasks, local_job_alive, slurm_queue
from bench.pipeline.liveness import process_alive, this_process
from bench.core.records import check_cell_id, now_iso, write_json_atomic
from bench.pipeline.runner import CellPaths
from bench.pipeline.status import read_cells, read_jobs
from bench.core.util import MAX_STATE_BYTES, printable, read_untrusted_json

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Cancelled:
    """A cancelled cell and how: `interrupted` (it was running), `dropped` (queued), `scancel`."""

    cell_id: str
    task: Task
    how: str


def cancel(run_dir: str | os.PathLike, cell_ids: Iterable[str] | None = None,
           submissions: list[dict[str, Any]] | None = None) -> list[Cancelled]:
    """Cancel the chosen cells (all by default) that a job still holds; see the module doc.

    Args:
        run_dir: the run folder.
        cell_ids: cells to cancel; each must be one of the run's cells.
        submissions: jobs.json entries to look in (default: all of them); a launcher passes its own.
    """
    run_dir = Path(run_dir)
    chosen = _check_cells(run_dir, cell_ids)
    jobs = read_jobs(run_dir) if submissions is None else submissions
    queue = slurm_queue(jobs)
    if queue is None:
        log.warning("cannot ask SLURM which tasks still run: cancelling every recorded task of the chosen "
                    "cells that has no record")
    held = live_tasks(run_dir, jobs, queue)
    targets = [task for task in held if chosen is None or task.cell_id in chosen]
    if any(task.cluster == "slurm" for task in targets) and shutil.which("scancel") is None:
        raise UsageError("scancel is not on PATH: cancel SLURM jobs from a node with SLURM's clients")
    for task in targets:
        _mark(run_dir, task)
    done = _scancel([task for task in targets if task.cluster == "slurm"])
    done += _stop_local(run_dir, [task for task in targets if task.cluster == "local"], held)
    return done


def _check_cells(run_dir: Path, cell_ids: Iterable[str] | None) -> set[str] | None:
    """The chosen cell ids, each checked to be one of the run's (UsageError otherwise)."""
    cells = read_cells(run_dir)  # UsageError unless a run folder whose cell ids are all valid
    if cell_ids is None:
        return None
    known = {cell["cell_id"] for cell in cells}
    unknown = sorted(set(cell_ids) - known)
    if unknown:
        raise UsageError(f"unknown cell id(s) in {run_dir}: {printable(', '.join(unknown), newlines=False)} "
                         f"(see `vtbench status {run_dir}`)")
    return set(cell_ids)


def _mark(run_dir: Path, task: Task) -> None:
    """Leave `cells/ID/cancelled.json`, before any signal: the worker reads it to tell its cell was cancelled."""
    paths = CellPaths(run_dir, check_cell_id(task.cell_id))  # read_jobs checked it; a path is built here
    paths.work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(paths.cancelled, {"cancelled_at": now_iso(), "cluster": task.cluster,
                                        "task_id": task.task_id, "by": this_process()})


def _scancel(tasks: list[Task]) -> list[Cancelled]:
    """`scancel` the SLURM array tasks holding `tasks`' cells, in one call."""
    if not tasks:
        return []
    task_ids = list(dict.fromkeys(task.task_id for task in tasks))
    done = subprocess.run(["scancel", *task_ids], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:  # e.g. a task that ended meanwhile; the others are cancelled all the same
        log.warning("scancel exited %d: %s", done.returncode, (done.stderr.strip().splitlines() or [""])[-1])
    return [Cancelled(task.cell_id, task, "scancel") for task in tasks]


def _stop_local(run_dir: Path, tasks: list[Task], held: list[Task]) -> list[Cancelled]:
    """Signal the local jobs holding `tasks`' cells (see the module doc, step 3)."""
    done = []
    for task_id in dict.fromkeys(task.task_id for task in tasks):
        mine = [task for task in tasks if task.task_id == task_id]
        keeps_others = any(t.task_id == task_id and t not in mine for t in held)
        for task in mine:
            worker, watches = _running_worker(run_dir, task)
            if worker is not None and keeps_others and not watches:
                _signal(worker, signal.SIGUSR2)  # submitit's default preemption signal
            # A worker that runs its cell in a child process watches the mark (cancelled.json):
            # it kills that child within a second and goes on with its other cells.
            done.append(Cancelled(task.cell_id, task, "dropped" if worker is None else "interrupted"))
        if not keeps_others and local_job_alive(task_id, mine[0].pid_start, run_dir):
            _signal(int(task_id), signal.SIGINT)
    return done


def wait_for_local_jobs(cancelled: list[Cancelled], timeout_s: float = 10.0) -> None:
    """Wait (at most `timeout_s`) until the local jobs of `cancelled` cells have ended."""
    jobs = {(c.task.task_id, c.task.pid_start) for c in cancelled if c.task.cluster == "local"}
    deadline = time.monotonic() + timeout_s
    while any(local_job_alive(*job) for job in jobs) and time.monotonic() < deadline:
        time.sleep(0.1)


def _running_worker(run_dir: Path, task: Task) -> tuple[int | None, bool]:
    """(the pid of the live worker of `task`'s job that is running its cell now, or None; whether
    that worker watches the cell's cancel mark itself). The pid, read from the run folder, counts
    only if it is alive with its recorded start time and is a process of this run."""
    try:
        state = read_untrusted_json(CellPaths(run_dir, task.cell_id).state, MAX_STATE_BYTES)
    except (OSError, ValueError):
        return None, False
    if not isinstance(state, dict) or state.get("state") != "running" or str(state.get("job_id")) != task.task_id:
        return None, False
    alive = process_alive(state.get("host"), state.get("pid"), state.get("pid_start"))
    if alive is not True or not is_process_of_run(int(state["pid"]), run_dir):
        return None, False
    return int(state["pid"]), state.get("watches_cancel") is True


def _signal(pid: int, signum: signal.Signals) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:  # it ended between the check and the signal: nothing left to stop
        pass
    log.debug("sent %s to %d", signum.name, pid)


def format_cancelled(run_dir: Path, cancelled: list[Cancelled], some_cells: bool = False) -> str:
    """What `vtbench cancel` prints: one line per cancelled cell and a summary.

    `some_cells`: only chosen cells were to be cancelled (`--cells`), which the no-op line says.
    """
    if not cancelled:
        which = "the chosen cells" if some_cells else "any of its cells"
        return f"nothing running in {run_dir}: no queued or running job holds {which}; nothing cancelled"
    how = {"interrupted": "running, interrupted", "dropped": "queued, dropped", "scancel": "scancel"}
    lines = [f"cancelled {c.cell_id}  ({c.task.cluster} job {c.task.task_id}: {how[c.how]})" for c in cancelled]
    lines.append(f"{run_dir}: cancelled {len({c.cell_id for c in cancelled})} cell(s); "
                 f"`vtbench launch {run_dir / 'grid.yaml'} --run-dir {run_dir}` runs them again")
    return "\n".join(lines)
