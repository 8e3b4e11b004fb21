"""Launch a grid: skip the cells already done, submit the rest as ONE job array with submitit.

`launch(grid_path, cluster=..., run_dir=..., dry_run=..., wait=...)`:

1. load and validate the grid (`bench.pipeline.grid.load_grid`, with `overrides`, the `--set` pairs, applied
   first): any problem stops here, nothing submitted;
2. write `RUN_DIR/grid.yaml` (the grid as given, or as overridden: then a YAML dump headed by the
   `--set`s, which relaunches as is) and `RUN_DIR/cells.json` (every resolved cell);
3. plan: a cell with an `ok` record is skipped; a cell still queued or running in an earlier job of
   this run is left alone; every other cell runs (new, failed, with a corrupt record, or stale: an
   ok record whose `model.defaults` differ from today's for an option the cell leaves unset, so it
   ran another model than the cell names now); failed, corrupt and stale records are moved to
   `RUN_DIR/superseded/` first, so status never shows a stale row);
4. submit them as one array (`executor.map_array(CellRunner, cells)`) with the grid's resources
   (`slurm_array_parallelism` and friends) through `submitit.AutoExecutor(folder=RUN_DIR/submitit,
   cluster=...)`; on the local executor as at most `local_parallelism` worker jobs, each running its
   share of the cells in turn (`bench.pipeline.runner.CellSequence`). Append the submission to
   `RUN_DIR/jobs.json` (under a file lock: two launches may append at once), and return at once.
   Each cell runs in a process of its own, watched by its job's worker (`bench.pipeline.runner`):
   a crash, `sys.exit` or out-of-memory kill ends that cell with an error record, and a cell past
   `resources.timeout_min` is killed and recorded as `timeout`; the worker goes on with its other
   cells. `timeout_min` is per cell: a SLURM array task (one cell) gets `timeout_min + 5` minutes,
   a local worker `(timeout_min + 5) x (its cells + 1)` (`job_timeout_min`);
5. with `wait`, follow the cells with a progress bar until each has a record (or its job ended
   without one); the result says which failed. Cells in flight in another launch are followed too,
   and so is a cell whose job found it locked by another launch's job (`busy`): its outcome is the
   record that other job writes, or a failure if that job ends without one.

SIGINT and SIGTERM, until `launch` returns (all of a `--wait`): the launcher stops following,
cancels the cells it submitted itself in this launch (`bench.pipeline.cancel`; other launches' cells are
left alone) and raises `bench.core.errors.Interrupted`, which says which cells were cancelled; the
command line exits 130 or 143. A signal that comes while the submission is being made is held
until the submission is in jobs.json, so that every job it started is cancelled too.

Clusters: `local` (subprocesses on this machine; the default, works anywhere), `debug` (in this
process, one cell after the other; always waits), `slurm` (needs `sbatch` and `SLURM_CONF`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import submitit
from filelock import FileLock
from submitit.local import local
from tqdm import tqdm

from bench.pipeline.cancel import cancel, wait_for_local_jobs
from bench.core.errors import Interrupted, UsageError
from bench.core.modelfacts import changed_defaults, describe_changed_defaults
from bench.pipeline.grid import Cell, Grid, Resources, load_grid
from bench.pipeline.jobs import cells_in_flight
from bench.pipeline.liveness import process_alive, process_start_ticks
from bench.pipeline.status import read_jobs  # noqa: F401  (re-exported: launch's callers read jobs.json too)
from bench.core.records import CorruptRecord, now_iso, read_record, write_json_atomic
from bench.pipeline.runner import CellPaths, CellRunner, CellSequence, cancel_mark, lock_holder
from bench.core.util import printable, write_text_atomic

log = logging.getLogger(__name__)

CLUSTERS = ("local", "debug", "slurm")
DEFAULT_RUNS_ROOT = Path("runs")


@dataclasses.dataclass
class Plan:
    """Which cells of a grid run and which are skipped, and why."""

    to_run: list[Cell] = dataclasses.field(default_factory=list)
    reasons: dict[str, str] = dataclasses.field(default_factory=dict)   # cell_id -> new|error|corrupt|stale
    done: list[Cell] = dataclasses.field(default_factory=list)
    in_flight: list[Cell] = dataclasses.field(default_factory=list)
    corrupt: dict[str, str] = dataclasses.field(default_factory=dict)   # cell_id -> message
    stale: dict[str, str] = dataclasses.field(default_factory=dict)     # cell_id -> the defaults that changed


@dataclasses.dataclass
class LaunchResult:
    """What `launch` did."""

    run_dir: Path
    grid: Grid
    plan: Plan
    cluster: str
    job_id: str | None = None
    task_job_ids: list[str] = dataclasses.field(default_factory=list)   # one per submitted cell
    submission: dict[str, Any] | None = None                            # its jobs.json entry
    finished: bool = False
    failed: dict[str, str] = dataclasses.field(default_factory=dict)    # cell_id -> one-line error
    followed: list[str] = dataclasses.field(default_factory=list)       # cells waited for to their end
    elsewhere: list[str] = dataclasses.field(default_factory=list)      # ... of which another launch ran

    @property
    def submitted(self) -> list[str]:
        return [] if self.job_id is None else [c.cell_id for c in self.plan.to_run]

    @property
    def ok(self) -> bool:
        """True unless a waited-for cell failed."""
        return not self.failed


def launch(grid_path: str | os.PathLike, cluster: str = "local", run_dir: str | os.PathLike | None = None,
           dry_run: bool = False, wait: bool = False, poll_s: float = 2.0,
           overrides: Sequence[tuple[str, Any]] = (),
           on_planned: Callable[[LaunchResult], None] | None = None) -> LaunchResult:
    """Launch the grid at `grid_path`, with `overrides` ((dotted key, value), `--set`) applied
    (see the module doc); returns at once unless `wait`.

    `on_planned(result)` is called once every cell's fate is known (`plan_rows`): after planning on a
    dry run, after the submission otherwise (the job ids known), before any following.
    SIGINT and SIGTERM raise `Interrupted` (before anything is submitted, with nothing to cancel).
    """
    if cluster not in CLUSTERS:
        raise UsageError(f"unknown cluster {cluster!r}; choose from {', '.join(CLUSTERS)}")
    with _stop_signals() as signals:
        result = plan_launch(grid_path, cluster, run_dir, overrides)
        if dry_run:
            if on_planned is not None:
                on_planned(result)
            return result
        try:
            submit_and_follow(result, signals, wait or cluster == "debug", poll_s, on_planned)
        except Interrupted as exc:
            signals.holding = True  # a second Ctrl-C must not cut the cancelling short
            # An overridden grid is relaunched from the run folder's copy, which has the overrides.
            rerun = result.run_dir / "grid.yaml" if overrides else grid_path
            raise cancel_own_cells(result, rerun, exc.signum) from None
    return result


def plan_launch(grid_path: str | os.PathLike, cluster: str, run_dir: str | os.PathLike | None,
                overrides: Sequence[tuple[str, Any]] = ()) -> LaunchResult:
    """Load the grid and plan its cells (what `--dry-run` shows); nothing is written."""
    grid = load_grid(grid_path, overrides=overrides)
    run_dir = Path(run_dir) if run_dir is not None else DEFAULT_RUNS_ROOT / grid.name
    if cluster == "slurm":
        check_slurm_reachable()
    plan = plan_cells(grid.cells, run_dir)
    log_plan(grid, plan, run_dir)
    return LaunchResult(run_dir=run_dir, grid=grid, plan=plan, cluster=cluster)


def submit_and_follow(result: LaunchResult, signals: _Signals, wait: bool, poll_s: float,
                      on_planned: Callable[[LaunchResult], None] | None = None) -> None:
    """Write the run files, submit (signals held until jobs.json has it), tell `on_planned` and, with
    `wait`, follow."""
    write_run_files(result.run_dir, result.grid)
    with signals.held():
        jobs = submit_plan(result)
    if on_planned is not None:
        on_planned(result)
    if wait:
        follow_to_the_end(result, jobs, poll_s)
    else:
        result.finished = not result.plan.to_run and not result.plan.in_flight


def follow_to_the_end(result: LaunchResult, jobs: list[Any], poll_s: float) -> None:
    """Follow the submitted and the in-flight cells until each has ended; fill in the outcomes."""
    plan = result.plan
    followed = follow(result.run_dir, plan.to_run, jobs, poll_s=poll_s, in_flight=plan.in_flight)
    result.followed = [cell.cell_id for cell in [*plan.to_run, *plan.in_flight]]
    result.elsewhere = sorted(followed.elsewhere)
    result.failed = {cell_id: why for cell_id, why in followed.outcomes.items() if why != "ok"}
    result.finished = True


def submit_plan(result: LaunchResult) -> list[Any]:
    """Submit the plan's cells to run (if any) and record the submission; returns the jobs."""
    plan, run_dir = result.plan, result.run_dir
    if not plan.to_run:
        log.info("nothing to submit: every cell of %s is done or in flight", result.grid.name)
        return []
    supersede_records(run_dir, plan)
    clear_cancel_marks(run_dir, plan)
    jobs = submit(result.grid, plan.to_run, run_dir, result.cluster)
    result.task_job_ids = [str(job.job_id) for job in jobs]
    result.job_id = array_job_id(result.task_job_ids, result.cluster)
    result.submission = record_submission(run_dir, result)
    return jobs


# -------------------------------------------------------------------------------------- planning
def plan_cells(cells: Sequence[Cell], run_dir: Path) -> Plan:
    """Split cells into done (ok record), in flight (queued/running in an earlier job) and to run."""
    plan = Plan()
    in_flight = cells_in_flight(run_dir)
    for cell in cells:
        state = record_state(CellPaths(run_dir, cell.cell_id).record, stale_defaults=True)
        if state == "ok":
            plan.done.append(cell)
        elif cell.cell_id in in_flight:
            plan.in_flight.append(cell)
        else:
            plan.to_run.append(cell)
            plan.reasons[cell.cell_id] = "new" if state is None else state.split(":")[0]
            if state and state.startswith(("corrupt", "stale")):
                problems = plan.corrupt if state.startswith("corrupt") else plan.stale
                problems[cell.cell_id] = state.split(":", 1)[1].strip()
    return plan


def record_state(path: Path, stale_defaults: bool = False) -> str | None:
    """`ok`, `error`, `corrupt: why`, or None when there is no record; with `stale_defaults`, an ok
    record whose cell leaves unset an option whose default has changed since is `stale: what changed`
    (it ran under another model than the cell now names, so it runs again)."""
    if not path.exists():
        return None
    try:
        record = read_record(path)
    except CorruptRecord as exc:
        return f"corrupt: {exc}"
    changed = changed_defaults(record) if stale_defaults and record["status"] == "ok" else {}
    if changed:
        return f"stale: {describe_changed_defaults(changed)}"
    return record["status"]


def log_plan(grid: Grid, plan: Plan, run_dir: Path) -> None:
    """Tell the user how many cells will run and are skipped, and which records are corrupt (the
    cells themselves are data: `plan_rows`, which `vtbench launch` prints on stdout)."""
    log.info("grid %s: %d cells -> %s: %d to run, %d done (skipped), %d in flight (skipped)",
             grid.name, len(grid.cells), run_dir, len(plan.to_run), len(plan.done), len(plan.in_flight))
    for cell_id, message in plan.corrupt.items():
        log.warning("corrupt record for cell %s (it runs again): %s", cell_id, message)
    for cell_id, message in plan.stale.items():
        log.warning("record of cell %s ran under an older default (it runs again): %s", cell_id, message)


PLAN_FIELDS = ("cell_id", "action", "reason", "job_id", "model", "model_args", "input_size", "seed", "measure")


def plan_rows(result: LaunchResult) -> list[dict[str, Any]]:
    """One row per cell of the grid (`PLAN_FIELDS`): `action` run or skip, `reason` new, error or
    corrupt (run) or `ok record`, `in flight` (skip), `job_id` the job given the cell by this launch
    (null on a dry run and for a skipped cell), then the cell's `model`, `model_args`, `input_size`,
    `seed` and `measure`."""
    plan = result.plan
    job_of = dict(zip(result.submitted, result.task_job_ids))
    entries = [(c, "run", plan.reasons[c.cell_id]) for c in plan.to_run]
    entries += [(c, "skip", "ok record") for c in plan.done] + [(c, "skip", "in flight") for c in plan.in_flight]
    return [dict(zip(PLAN_FIELDS, (c.cell_id, action, reason, job_of.get(c.cell_id), c.config.get("model"),
                                   c.config.get("model_args") or {}, c.config.get("input_size"),
                                   c.config.get("seed"), c.config.get("measure") or [])))
            for c, action, reason in entries]


def describe_cell(config: dict[str, Any]) -> str:
    """One short line naming a cell: model, its options, input size, seed, measurements."""
    args = ",".join(f"{k}={v}" for k, v in sorted((config.get("model_args") or {}).items()))
    size = config.get("input_size")
    # Printed on a terminal: a grid's values are escaped (no ANSI sequence, no newline, gets through).
    return printable(f"{config.get('model')}({args}) @{size} seed={config.get('seed')} "
                     f"[{'+'.join(config.get('measure') or [])}]", newlines=False)


# ---------------------------------------------------------------------------------- run folder
def write_run_files(run_dir: Path, grid: Grid) -> None:
    """RUN_DIR/grid.yaml (as given) and RUN_DIR/cells.json (every resolved cell)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "records").mkdir(exist_ok=True)
    write_text_atomic(run_dir / "grid.yaml", grid.text)  # a temp file of its own: two launches may write at once
    write_json_atomic(run_dir / "cells.json", [{"cell_id": c.cell_id, "config": c.config} for c in grid.cells])


def supersede_records(run_dir: Path, plan: Plan) -> None:
    """Move failed, corrupt and stale records of cells about to run to RUN_DIR/superseded/."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for cell in plan.to_run:
        path = CellPaths(run_dir, cell.cell_id).record
        if path.exists():
            target = run_dir / "superseded" / f"{cell.cell_id}.{stamp}.json"
            target.parent.mkdir(exist_ok=True)
            shutil.move(str(path), target)
            log.info("moved the %s record of %s to %s", plan.reasons[cell.cell_id], cell.cell_id, target)


def clear_cancel_marks(run_dir: Path, plan: Plan) -> None:
    """Remove the `vtbench cancel` marks of the cells about to run again (status: `stopped` no more)."""
    for cell in plan.to_run:
        CellPaths(run_dir, cell.cell_id).cancelled.unlink(missing_ok=True)


def record_submission(run_dir: Path, result: LaunchResult) -> dict[str, Any]:
    """Append this submission to RUN_DIR/jobs.json; returns the entry."""
    entry = {"job_id": result.job_id, "cell_ids": result.submitted, "task_job_ids": result.task_job_ids,
             "cluster": result.cluster, "submitted_at": now_iso(), "host": socket.gethostname(),
             "grid": result.grid.name}
    if result.cluster == "local":
        # A local job's id is its controller's pid; its start time tells it from a later process
        # given the same pid (see bench.pipeline.liveness).
        entry["task_pid_starts"] = [process_start_ticks(task_id) for task_id in result.task_job_ids]
    append_job(run_dir, entry)
    log.info("submitted %d cell(s) as job %s on %s", len(result.submitted), result.job_id, result.cluster)
    return entry


def append_job(run_dir: Path, entry: dict[str, Any]) -> None:
    """Append `entry` to RUN_DIR/jobs.json, read-modify-write under a file lock.

    Without the lock two launches appending at once both read the old list and the second write
    drops the first one's entry (then its cells look never submitted, and run twice).
    """
    with FileLock(str(run_dir / ".jobs.json.lock")):
        jobs = read_jobs(run_dir)
        jobs.append(entry)
        write_json_atomic(run_dir / "jobs.json", jobs)


def array_job_id(task_job_ids: list[str], cluster: str) -> str:
    """The id naming the whole array: SLURM's array id, else the (distinct) ids themselves."""
    if cluster == "slurm":
        return task_job_ids[0].split("_")[0]
    distinct = list(dict.fromkeys(task_job_ids))  # a local worker job runs several cells
    if len(distinct) == 1:
        return distinct[0]
    return f"{distinct[0]}..{distinct[-1]}"


# ------------------------------------------------------------------------------------ submitting
def check_slurm_reachable() -> None:
    """Fail early with one clear line when SLURM's clients cannot be used."""
    if shutil.which("sbatch") is None:
        raise UsageError("--cluster slurm: sbatch is not on PATH (is this a SLURM login node?)")
    if not os.environ.get("SLURM_CONF") and not Path("/etc/slurm/slurm.conf").exists():
        raise UsageError("--cluster slurm: set SLURM_CONF to the cluster's slurm.conf "
                         "(e.g. STATE_DIR/slurm.conf from scripts/slurm_cluster.sh start)")


def make_executor(cluster: str, folder: Path, resources: Resources, n_cells: int, name: str):
    """A submitit AutoExecutor carrying the grid's resources."""
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster,
                                     slurm_max_num_timeout=resources.max_num_timeout)
    executor.update_parameters(**executor_parameters(cluster, resources, n_cells, name))
    return executor


def executor_parameters(cluster: str, resources: Resources, n_cells: int, name: str) -> dict[str, Any]:
    """Translate the grid's resources into AutoExecutor parameters for `cluster`."""
    params: dict[str, Any] = {"name": f"vtbench-{name}", "timeout_min": job_timeout_min(resources.timeout_min, 1),
                              "nodes": resources.nodes, "tasks_per_node": resources.tasks_per_node,
                              "cpus_per_task": resources.cpus_per_task,
                              "gpus_per_node": resources.gpus_per_node}
    if resources.mem_gb is not None:
        params["mem_gb"] = resources.mem_gb
    if cluster == "slurm":
        params["slurm_array_parallelism"] = resources.array_parallelism
        for key in ("partition", "account", "qos", "constraint", "signal_delay_s"):
            if getattr(resources, key) is not None:
                params[f"slurm_{key}"] = getattr(resources, key)
        if resources.setup:
            params["slurm_setup"] = list(resources.setup)
    elif cluster == "local":
        if resources.nodes > 1:
            raise UsageError(f"the local executor runs one node; the grid asks for {resources.nodes}")
        # A local worker runs its share of the cells one after the other, each to its own deadline
        # (waiting for a slot when another launch of the run holds them all: one share more).
        waves = math.ceil(n_cells / max(1, resources.local_parallelism))
        params["timeout_min"] = job_timeout_min(resources.timeout_min, waves + 1)
        if resources.setup:
            params["local_setup"] = list(resources.setup)
    return params


# Minutes a job gets beyond its cells' deadlines: start-up, imports, writing records. The runner
# kills a cell at `timeout_min` and records `timeout`; the job's own limit is only a backstop.
JOB_MARGIN_MIN = 5


def job_timeout_min(cell_timeout_min: float, cells_per_job: int) -> int:
    """The time limit of a job that runs `cells_per_job` cells one after the other, each killed by the
    runner at `cell_timeout_min`: `(cell_timeout_min + JOB_MARGIN_MIN) x cells_per_job`, in whole
    minutes. A SLURM array task runs one cell; a local worker its share of the cells (plus one share
    for waiting on a slot)."""
    return int(math.ceil((float(cell_timeout_min) + JOB_MARGIN_MIN) * max(1, cells_per_job)))


def submit(grid: Grid, cells: list[Cell], run_dir: Path, cluster: str) -> list[Any]:
    """Submit `cells` as one job array; returns, for each of `cells` in order, the job running it."""
    executor = make_executor(cluster, (run_dir / "submitit").resolve(), grid.resources, len(cells), grid.name)
    runner = CellRunner(run_dir, grid.name, grid.resources.local_parallelism, timeout_min=grid.resources.timeout_min)
    payload = [{"cell_id": c.cell_id, "config": c.config} for c in cells]
    if cluster == "local":
        return submit_local_workers(executor, runner, payload, grid.resources.local_parallelism)
    return executor.map_array(runner, payload)


def submit_local_workers(executor: Any, runner: CellRunner, payload: list[dict[str, Any]],
                         workers: int) -> list[Any]:
    """At most `workers` local jobs, cell i going to job i mod n; each runs its cells in turn.

    submitit's local executor starts every job it is given at once, each as a controller and a
    worker process: one job per cell was two processes per cell, all but a few waiting for a slot
    (about 65 MB each: a 10,000-cell grid would have needed some 650 GB).
    """
    n_jobs = min(len(payload), max(1, workers))
    with controllers_off_our_stdio(Path(executor.folder) / LOCAL_CONTROLLER_LOG):
        jobs = executor.map_array(CellSequence(runner), [payload[i::n_jobs] for i in range(n_jobs)])
    return [jobs[i % n_jobs] for i in range(len(payload))]


LOCAL_CONTROLLER_LOG = "local_controllers.log"


class _ControllerSubprocess:
    """`subprocess` as submitit's local module sees it while a launch submits: its `Popen` starts
    the job controller with stdin from /dev/null and stdout and stderr appended to `log`."""

    def __init__(self, log: Any) -> None:
        self._log = log

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    def Popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen:  # noqa: N802 - subprocess's name
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", self._log)
        kwargs.setdefault("stderr", subprocess.STDOUT)
        return subprocess.Popen(*args, **kwargs)


@contextlib.contextmanager
def controllers_off_our_stdio(log_path: Path) -> Iterator[None]:
    """For the block, submitit's local job controllers start without the launcher's stdio.

    `submitit.local.local.start_controller` starts each controller with `subprocess.Popen(cmd,
    env=env)`, so it inherits the launcher's stdin, stdout and stderr and holds them until its job
    ends: `vtbench launch GRID | cat` waited for the whole grid. The workers it starts already write
    to their own log files; only the controller (and the `local_setup` commands it runs) needs
    another place, `log_path`. Nothing else in this process is touched.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    real = local.subprocess
    with open(log_path, "ab") as log_file:
        local.subprocess = _ControllerSubprocess(log_file)
        try:
            yield
        finally:
            local.subprocess = real


# --------------------------------------------------------------------------- SIGINT and SIGTERM
class _Signals:
    """SIGINT and SIGTERM raise `Interrupted`; while `held`, they wait until the block is done."""

    def __init__(self) -> None:
        self.holding = False
        self.pending: int | None = None

    def handle(self, signum: int, frame: Any) -> None:
        if self.holding:
            self.pending = signum
            return
        raise Interrupted(signum)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold signals back for the block (a submission: its jobs must reach jobs.json first)."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending is not None:
            raise Interrupted(self.pending)


@contextlib.contextmanager
def _stop_signals() -> Iterator[_Signals]:
    """Route SIGINT and SIGTERM to a `_Signals` for the block, then restore the handlers."""
    signals = _Signals()
    if threading.current_thread() is not threading.main_thread():
        yield signals  # only the main thread gets signals (a launch run in a test's thread)
        return
    previous = {signum: signal.signal(signum, signals.handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield signals
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def cancel_own_cells(result: LaunchResult, grid_path: str | os.PathLike, signum: int) -> Interrupted:
    """Cancel what this launch submitted (its submission only); returns the `Interrupted` to raise,
    whose message names the cancelled cells and those left without a record (debug cells, or
    cells whose job a Ctrl-C to the whole process group ended first)."""
    name = signal.Signals(signum).name
    if result.submission is None:
        return Interrupted(signum, f"interrupted by {name}; this launch submitted nothing")
    done = cancel(result.run_dir, submissions=[result.submission])
    wait_for_local_jobs(done)  # gone before the launcher exits (and their last words come before its line)
    cancelled = list(dict.fromkeys(c.cell_id for c in done))
    for cell_id in cancelled:
        log.info("cancelled cell %s", cell_id)
    unrecorded = [c for c in result.submitted
                  if c not in cancelled and not CellPaths(result.run_dir, c).record.exists()]
    said = [f"cancelled {len(cancelled)} cell(s) of this launch ({_some(cancelled)})"] if cancelled else []
    if unrecorded:
        said.append(f"{len(unrecorded)} {'other ' if cancelled else ''}cell(s) of it have no record "
                    f"({_some(unrecorded)})")
    if not said:
        return Interrupted(signum, f"interrupted by {name}: every cell of this launch has its record")
    return Interrupted(signum, f"interrupted by {name}: {'; '.join(said)}; `vtbench launch {grid_path} "
                               f"--run-dir {result.run_dir}` runs them again")


def _some(cell_ids: list[str], shown: int = 8) -> str:
    """Up to `shown` ids, then how many more."""
    more = f", and {len(cell_ids) - shown} more" if len(cell_ids) > shown else ""
    return ", ".join(cell_ids[:shown]) + more


# ------------------------------------------------------------------------------------- following
BUSY = "busy"  # what our job returns when another launch's job holds the cell's lock


@dataclasses.dataclass
class Followed:
    """Each followed cell's outcome (`ok` or a one-line error), and which another launch ran."""

    outcomes: dict[str, str] = dataclasses.field(default_factory=dict)
    elsewhere: set[str] = dataclasses.field(default_factory=set)


def follow(run_dir: Path, cells: list[Cell], jobs: list[Any], poll_s: float = 2.0,
           in_flight: Sequence[Cell] = ()) -> Followed:
    """Wait with a progress bar until each cell has a record or the job running it ended.

    `cells` run in our `jobs`; `in_flight` cells run in another launch's jobs. A job of ours that
    found its cell locked by another launch's job (`busy`) hands the cell over to that job.
    """
    watched: dict[str, Any] = {cell.cell_id: job for cell, job in zip(cells, jobs)}
    watched.update({cell.cell_id: None for cell in in_flight})  # None: another launch's job runs it
    followed = Followed(elsewhere={cell.cell_id for cell in in_flight})
    if in_flight:
        log.info("following %d cell(s) in flight in another launch", len(in_flight))
    # The bar shows on a terminal; elsewhere (CI logs) each finished cell is one log line.
    with tqdm(total=len(watched), unit="cell", desc=run_dir.name, dynamic_ncols=True, disable=None,
              mininterval=1.0) as bar:
        while watched:
            _poll_once(run_dir, watched, followed, bar)
            if watched:
                time.sleep(poll_s)
    return followed


def _poll_once(run_dir: Path, watched: dict[str, Any], followed: Followed, bar: Any) -> None:
    """Look at every watched cell once; move the finished ones from `watched` to `followed`."""
    # Asked once per round (squeue on SLURM), only when some cell is another launch's.
    live = cells_in_flight(run_dir) if any(job is None for job in watched.values()) else set()
    for cell_id, job in list(watched.items()):
        outcome = _outcome(run_dir, cell_id, job) if job is not None else _outcome_elsewhere(run_dir, cell_id, live)
        if outcome == BUSY:
            log.info("cell %s is being run by another launch's job; following it to its record", cell_id)
            watched[cell_id] = None
            followed.elsewhere.add(cell_id)
            continue
        if outcome is None:
            continue
        del watched[cell_id]
        followed.outcomes[cell_id] = outcome
        bar.update(1)
        if outcome != "ok":
            log.warning("cell %s failed: %s", cell_id, printable(outcome, newlines=False))
        elif bar.disable:
            log.info("cell %s ok (%d/%d done)", cell_id, len(followed.outcomes), bar.total)
    bar.set_postfix(failed=sum(o != "ok" for o in followed.outcomes.values()), refresh=False)


def _outcome(run_dir: Path, cell_id: str, job: Any) -> str | None:
    """`ok`, a one-line error, `busy` (another launch runs it), or None while the cell is still going."""
    debug_error = _run_debug_job(job) if _is_debug(job) else None
    path = CellPaths(run_dir, cell_id).record
    recorded = _record_outcome(path) or _cancelled_outcome(run_dir, cell_id)
    if recorded is not None:
        return recorded
    if debug_error is not None:
        return f"debug job {job.job_id} raised without a record: {debug_error}"
    if not job.done():
        return None
    time.sleep(0.5)  # the record is written before the job's result; re-check once
    if record_state(path) is not None:
        return _outcome(run_dir, cell_id, job)
    if _cell_summary(job, cell_id).get("status") == BUSY:
        return BUSY
    return f"job {job.job_id} ended without a record: {_job_failure(job)}"


def _outcome_elsewhere(run_dir: Path, cell_id: str, live: set[str]) -> str | None:
    """Outcome of a cell another launch's job runs: its record, or None while that job still runs."""
    paths = CellPaths(run_dir, cell_id)
    recorded = _record_outcome(paths.record) or _cancelled_outcome(run_dir, cell_id)
    if recorded is not None:
        return recorded
    if cell_id in live or _lock_holder_alive(paths):
        return None
    time.sleep(0.5)  # the record is written before the job ends; re-check once
    recorded = _record_outcome(paths.record)
    if recorded is not None:
        return recorded
    return "run by another launch, whose job ended without a record"


def _record_outcome(path: Path) -> str | None:
    """`ok` or the one-line error of the record at `path`; None when there is none."""
    state = record_state(path)
    if state == "error":
        error = read_record(path).get("error") or {}
        return f"{error.get('type', 'error')}: {error.get('message', '')}"
    # `ok`, or corrupt: cannot happen for a record written atomically, but say so.
    return state


def _cancelled_outcome(run_dir: Path, cell_id: str) -> str | None:
    """The outcome of a cell that `vtbench cancel` cancelled (no record will come), else None."""
    if cancel_mark(CellPaths(run_dir, cell_id)) is None:
        return None
    return "cancelled (vtbench cancel); `vtbench launch` runs it again"


def _lock_holder_alive(paths: CellPaths) -> bool:
    """Does the process that took the cell's lock last still run (on this host)?

    On another host it cannot be seen; there the cluster's queue (`cells_in_flight`) answers.
    """
    holder = lock_holder(paths) or {}
    return process_alive(holder.get("host"), holder.get("pid"), holder.get("pid_start")) is True


def _cell_summary(job: Any, cell_id: str) -> dict[str, Any]:
    """What a finished job's `CellRunner` returned for `cell_id` ({} when it raised or returned nothing).

    A local worker job (`CellSequence`) returns one summary per cell it ran.
    """
    try:
        if _is_debug(job):  # result() of an unfinished debug submission would run it again
            submission = job.submission()
            summary = submission.result() if submission.done() else None
        else:
            summary = job.result()
    except Exception:  # noqa: BLE001 - a job that raised is reported by _job_failure
        return {}
    if isinstance(summary, list):
        summary = next((s for s in summary if isinstance(s, dict) and s.get("cell_id") == cell_id), None)
    return summary if isinstance(summary, dict) else {}


def _is_debug(job: Any) -> bool:
    return isinstance(job, submitit.DebugJob)


def _run_debug_job(job: Any) -> str | None:
    """Run a debug job in this process; returns its error line, if it raised.

    Calls the submission directly rather than `DebugJob.result()`, which opens pdb on an error.
    """
    submission = job.submission()
    if submission.done():
        return None
    saved = os.environ.get("SUBMITIT_DEBUG_JOB_ID")
    os.environ["SUBMITIT_DEBUG_JOB_ID"] = str(job.job_id)  # so submitit.JobEnvironment() works
    try:
        submission.result()
    except Exception as exc:  # noqa: BLE001 - reported as the cell's failure by the caller
        log.error("debug job %s raised", job.job_id, exc_info=True)
        return f"{type(exc).__name__}: {exc}"
    finally:
        if saved is None:
            os.environ.pop("SUBMITIT_DEBUG_JOB_ID", None)
        else:
            os.environ["SUBMITIT_DEBUG_JOB_ID"] = saved
    return None


def _job_failure(job: Any) -> str:
    """One line on why a job ended without a record (state and last error line)."""
    try:
        exc = job.exception()
    except Exception as err:  # noqa: BLE001 - asking the cluster can fail; say what we know
        return f"state {getattr(job, 'state', '?')} ({err})"
    if exc is None:
        return f"state {job.state}"
    lines = [line for line in str(exc).splitlines() if line.strip() and not line.startswith("-")]
    return f"state {job.state}: {lines[-1] if lines else type(exc).__name__}"
