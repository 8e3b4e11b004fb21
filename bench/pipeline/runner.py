"""What one job of a grid's array runs: one cell, measured, written as ONE record.

`CellRunner` is the callable submitit pickles (`executor.map_array(runner, cells)`). For its cell it
builds the model, runs the measurements the cell lists (complexity, latency, train) and writes
`RUN_DIR/records/CELL_ID.json` atomically (`bench.core.records.write_record`). Guarantees:

- an exception becomes an `error` record with the traceback and the metrics measured before it;
  an out-of-memory (`bench.measure.latency.OutOfMemory`) is such an error row, never a crash;
  an evaluation metric that comes out NaN or infinite (`EVALUATION_METRICS`) makes it an error
  too (`NonFiniteMetrics`): chance accuracy beside a NaN loss is no result;
- in a local or SLURM job each cell runs in a child process of its own (`CellRun.in_child`), which
  the job's worker watches: a segfault, `sys.exit`, `os._exit` or out-of-memory kill of the cell
  gives it an error record (`CellCrashed`: the signal or the exit status, and the last lines of
  its log, where faulthandler leaves a crash's Python traceback), and a cell still running at the
  grid's `timeout_min` is killed, after its threads' stacks are dumped to its log, with a
  `CellTimeout` record (`vtbench status` shows it as `timeout`). The worker then runs its other
  cells. Signals meant for the job (submitit's requeue on preemption or time-out, `scancel`,
  Ctrl-C) go to the worker, which kills the child and writes no record: the cell runs again. A
  cell cancelled by `vtbench cancel` is killed by its worker within a second, with no record;
- never two records, never half of one: a cell that already has an `ok` record is not run again,
  a per-cell lock keeps two processes from running the same cell at once, and the record is
  written by rank 0 only (multi-task jobs train distributed and give one record);
- preemption and time-outs: `CellRunner` is a `submitit.helpers.Checkpointable`; submitit calls
  `checkpoint()` on SLURM's signal and requeues the same cell, whose training resumes from the
  last epoch checkpoint in `RUN_DIR/cells/CELL_ID/` (`bench.measure.train.train(..., resume=True)`).
  A job requeued or cancelled by hand (`scontrol requeue`, `scancel` then `vtbench launch`)
  resumes from that checkpoint too.

One path: `record_cell` (measure a cell, build its record) is what a grid's job runs, and what
`vtbench profile` and `vtbench train` call for the cell their flags describe; they only write the
record somewhere else (a --json file or stdout; OUT/records/ beside OUT/checkpoint.pt).
`vtbench interleave` re-measures recorded cells with `measure_cell_latency`, the runner's own.

Local jobs: `CellSequence` is one local worker: it runs its share of the cells one after the other,
so a launch starts at most `local_parallelism` worker processes (the local executor starts every
job it is given at once: one job per cell was a process per cell, each waiting for a slot).

Cancelling (`vtbench cancel`, bench/pipeline/cancel.py): a cancelled cell has `cancelled.json` in its work
folder and no record. A job skips such a cell. A worker running it when it is cancelled, with
other cells still to run, gets submitit's preemption signal: `CellSequence.checkpoint` requeues it
in a fresh process with the cells it has left (a fresh process: a signal's exception may have
left any library, or a half-done import, in a broken state).

Per-cell work lives in `RUN_DIR/cells/CELL_ID/`: `checkpoint.pt` and `metrics.jsonl` (training),
`log` (this cell's log lines; in a child process all it writes to stdout and stderr), `state.json` (running/done, job id, host, pid and the pid's start
time: read by `vtbench status` without asking any cluster), `lock` (whose text names its holder
the same way, so a launch whose job found the cell locked can follow the holder to its end) and,
once cancelled, `cancelled.json`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import submitit

from bench.core.contracts import LatencyOptions, ValidationError
from bench.core.errors import MeasurementError, UsageError
from bench.pipeline.liveness import this_process
from bench.core.records import (NON_FINITE_ERROR, TIMEOUT_ERROR, CorruptRecord, capture_env, check_cell_id,
                                make_record, now_iso, read_record, write_json_atomic, write_record)
from bench.core.util import MAX_STATE_BYTES, image_hw, launcher_ranks, read_untrusted_json

# torch and the measuring modules (bench.measure.latency, bench.measure.complexity,
# bench.measure.train, bench.core.modelref) are imported inside the functions that run a cell: `vtbench status` and `vtbench cancel` import this
# module (CellPaths, cancel marks) and never measure, and torch alone takes 1.3 s to import.
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CellPaths:
    """Where one cell's files live inside a run folder."""

    run_dir: Path
    cell_id: str

    @property
    def records_dir(self) -> Path:
        return self.run_dir / "records"

    @property
    def record(self) -> Path:
        return self.records_dir / f"{self.cell_id}.json"

    @property
    def work(self) -> Path:
        return self.run_dir / "cells" / self.cell_id

    @property
    def state(self) -> Path:
        return self.work / "state.json"

    @property
    def lock(self) -> Path:
        return self.work / "lock"

    @property
    def log(self) -> Path:
        return self.work / "log"

    @property
    def cancelled(self) -> Path:
        return self.work / "cancelled.json"


class CellRunner(submitit.helpers.Checkpointable):
    """Run one grid cell per call and write its record (the callable of the job array).

    Args:
        run_dir: the run folder (absolute once constructed).
        run_name: the grid's name, stored in each record's `run`.
        local_parallelism: on the local executor, how many cells may run at once: a launch starts
            that many workers, and workers of other launches of the run wait for a slot.
        timeout_min: each cell's deadline (the grid's `resources.timeout_min`); None: none.
        isolate: run each cell in a child process (`run_cell`); None: inside a local or SLURM job.
    """

    def __init__(self, run_dir: str | os.PathLike, run_name: str | None = None, local_parallelism: int = 1,
                 timeout_min: float | None = None, isolate: bool | None = None):
        self.run_dir = str(Path(run_dir).resolve())
        self.run_name = run_name
        self.local_parallelism = int(local_parallelism)
        self.timeout_min = timeout_min
        self.isolate = isolate

    def __call__(self, cell: dict[str, Any]) -> dict[str, Any]:
        """Run `cell` ({"cell_id", "config"}); returns a small summary (the record is the result)."""
        return run_cell(Path(self.run_dir), cell, run_name=self.run_name,
                        local_parallelism=self.local_parallelism, timeout_min=getattr(self, "timeout_min", None),
                        isolate=getattr(self, "isolate", None))

    def fresh(self) -> "CellRunner":
        """A copy of this runner for a requeued job."""
        return CellRunner(self.run_dir, self.run_name, self.local_parallelism, getattr(self, "timeout_min", None),
                          getattr(self, "isolate", None))

    def checkpoint(self, cell: dict[str, Any]) -> submitit.helpers.DelayedSubmission:
        """Requeue the same cell; its training resumes from the last epoch checkpoint on disk."""
        log.warning("cell %s: preempted or timed out; requeueing it (training resumes from %s)",
                    cell.get("cell_id"), CellPaths(Path(self.run_dir), cell.get("cell_id", "?")).work)
        return submitit.helpers.DelayedSubmission(self.fresh(), cell)


class CellSequence(submitit.helpers.Checkpointable):
    """One local worker: run a list of cells one after the other (see the module doc).

    Args:
        runner: what runs each cell.
    """

    def __init__(self, runner: CellRunner):
        self.runner = runner

    def __call__(self, cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run each cell in turn; returns their summaries."""
        return [self.runner(cell) for cell in cells]

    def checkpoint(self, cells: list[dict[str, Any]]) -> submitit.helpers.DelayedSubmission:
        """Requeue the cells whose work is not over (no record, not cancelled); training resumes.

        Called on SIGUSR2: a preemption, a time-out, or `vtbench cancel` of the cell this worker
        runs while it has other cells left. Requeued even with none left: returning None would
        make submitit raise inside the running cell, which would record that as the cell's error.
        """
        paths = {cell["cell_id"]: CellPaths(Path(self.runner.run_dir), cell["cell_id"]) for cell in cells}
        unrecorded = [cell for cell in cells if not paths[cell["cell_id"]].record.exists()]
        cancelled = [cell["cell_id"] for cell in unrecorded if cancel_mark(paths[cell["cell_id"]]) is not None]
        for cell_id in cancelled:
            log.warning("cell %s cancelled (vtbench cancel): stopped; no record is written", cell_id)
        left = [cell for cell in unrecorded if cell["cell_id"] not in cancelled]
        log.warning("worker %s; requeueing it with its %d unfinished cell(s) (training resumes)",
                    "stopped by a cancel" if cancelled else "preempted or timed out", len(left))
        return submitit.helpers.DelayedSubmission(CellSequence(self.runner.fresh()), left)


# ------------------------------------------------------------------------------------ job context
@dataclasses.dataclass(frozen=True)
class JobContext:
    """Where this process stands: cluster, job id, array index, rank."""

    cluster: str | None = None
    job_id: str | None = None
    array_index: int | None = None
    rank: int = 0
    num_tasks: int = 1

    def as_record(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "array_index": self.array_index, "cluster": self.cluster,
                "num_tasks": self.num_tasks}


def job_context() -> JobContext:
    """Read the submitit job environment; outside a submitit job, the rank a torchrun launch or SLURM step gives."""
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (a direct call, e.g. from a test)
        ranks = launcher_ranks()
        return JobContext(rank=ranks.rank if ranks else 0, job_id=os.environ.get("SLURM_JOB_ID"))
    array_index = env.array_task_id
    return JobContext(cluster=env.cluster, job_id=str(env.job_id),
                      array_index=int(array_index) if array_index not in (None, "") else None,
                      rank=env.global_rank, num_tasks=env.num_tasks)


def _export_torch_distributed(ctx: JobContext) -> None:
    """In a multi-task job, export MASTER_ADDR/PORT, RANK, WORLD_SIZE for torch.distributed.

    The same for every executor (SLURM or local), with a port drawn from the job id, so two array
    tasks on one node do not collide (submitit's TorchDistributedEnvironment, as DeiT does).
    """
    if ctx.num_tasks <= 1 or "WORLD_SIZE" in os.environ:
        return
    denv = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    log.info("distributed: rank %d of %d, master %s:%d", denv.rank, denv.world_size,
             denv.master_addr, denv.master_port)


# -------------------------------------------------------------------------------------- the cell
def run_cell(run_dir: Path, cell: dict[str, Any], *, run_name: str | None = None,
             local_parallelism: int = 1, timeout_min: float | None = None,
             isolate: bool | None = None) -> dict[str, Any]:
    """Measure one cell and write its record (rank 0); see the module doc for the guarantees.

    `isolate`: measure in a child process watched by this one (default: inside a local or SLURM
    job, where this process is the worker that must outlive a crashing cell); `timeout_min`: the
    cell's deadline in that child.
    """
    _ensure_logging()
    cell_id, config = cell["cell_id"], cell["config"]
    paths = CellPaths(Path(run_dir), check_cell_id(cell_id))
    ctx = job_context()
    if isolate is None:
        isolate = ctx.cluster in ("local", "slurm")
    summary = {"cell_id": cell_id, "rank": ctx.rank, "status": None, "record": None}
    if ctx.rank == 0 and _has_ok_record(paths.record):
        log.info("cell %s already has an ok record; nothing to do", cell_id)
        return {**summary, "status": "ok", "skipped": True}
    if cancel_mark(paths) is not None:
        log.info("cell %s was cancelled (vtbench cancel); skipping it", cell_id)
        return {**summary, "status": "cancelled"}
    paths.work.mkdir(parents=True, exist_ok=True)
    _export_torch_distributed(ctx)
    slot = _local_slot(paths.run_dir / "submitit" / "slots", local_parallelism) \
        if ctx.cluster == "local" and ctx.rank == 0 else contextlib.nullcontext()
    with slot, _cell_lock(paths, ctx) as got_lock:
        if not got_lock:
            return {**summary, "status": "busy"}
        run = CellRun(paths, config, ctx, run_name, isolate, timeout_min)
        return run.locked(summary)


@dataclasses.dataclass
class CellRun:
    """One cell being run by this process, which holds its lock (and its slot on the local executor)."""

    paths: CellPaths
    config: dict[str, Any]
    ctx: JobContext
    run_name: str | None
    isolate: bool
    timeout_min: float | None

    def locked(self, summary: dict[str, Any]) -> dict[str, Any]:
        paths, ctx = self.paths, self.ctx
        if ctx.rank == 0:
            if _has_ok_record(paths.record):  # finished while we waited for a slot
                return {**summary, "status": "ok", "skipped": True}
            if cancel_mark(paths) is not None:  # cancelled while we waited for a slot
                return {**summary, "status": "cancelled"}
            _write_state(paths, "running", ctx, watches_cancel=self.isolate)
        if self.isolate:
            return self.in_child(summary)
        with _cell_log(paths.log):
            record, error = self.measure()
        if record is None:  # not rank 0
            return {**summary, "status": "error" if error else "ok"}
        return {**summary, **self.finish(record)}

    def measure(self) -> tuple[dict[str, Any] | None, BaseException | None]:
        log.info("cell %s (%s) starting: %s", self.paths.cell_id, self.config.get("model"), self.ctx)
        return record_cell(self.config, self.paths.work, rank=self.ctx.rank, run_name=self.run_name,
                           job=self.ctx.as_record())

    def finish(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write `record` as the cell's (rank 0) and mark the cell done; returns the summary's fields."""
        paths = self.paths
        if record["cell_id"] != paths.cell_id:
            # The config travelled through pickle/JSON; the launcher's id names the file.
            log.warning("cell id %s recomputed as %s; keeping the launcher's id", paths.cell_id, record["cell_id"])
            record["cell_id"] = paths.cell_id
        path = write_record(paths.records_dir, record)
        _write_state(paths, "done", self.ctx, status=record["status"])
        log.info("cell %s: %s record written to %s", paths.cell_id, record["status"], path)
        return {"status": record["status"], "record": str(path)}

    def error_record(self, exc: BaseException, **facts: Any) -> dict[str, Any]:
        """The cell's error record for `exc`, which stopped it outside `record_cell`'s own handling."""
        from bench.core.errors import UserCodeError

        if isinstance(exc, SystemExit):
            exc = UserCodeError(str(self.config.get("model")), exc)
        return make_record(self.config, error=exc, env=_env_without_a_device(self.config), run=self.run_name,
                           job=self.ctx.as_record(), **facts)

    # ---------------------------------------------------------------------- the cell's own process
    def in_child(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Measure in a forked child and watch it: its crash, exit or hang ends this cell only.

        The child writes the record. When it ends without one, this process writes the error
        record (what ended it: signal, exit status, or the deadline, with the last lines of the
        cell's log) -- unless the cell was cancelled or this worker itself is being stopped
        (a preemption, a time-out of the whole job, `scancel`): then the cell gets no record and
        runs again.
        """
        _preload_measuring_modules()
        _flush_std_streams()
        log_start = _file_size(self.paths.log)
        with _noted_stop_signals() as stops:
            pid = os.fork()
            if pid == 0:  # the child: never returns into the caller's code
                self._child_main()
            outcome = _watch_child(pid, self.paths, self.timeout_min)
        if stops:
            self.say(f"this worker got {'/'.join(signal.Signals(n).name for n in stops)} while the cell ran: "
                     f"stopped, no record; it runs again")
            return {**summary, "status": "stopped"}
        if outcome.kind == "cancelled":
            self.say("cancelled (vtbench cancel): its process was killed; no record is written")
            return {**summary, "status": "cancelled"}
        if self.ctx.rank != 0:
            return {**summary, "status": "ok" if outcome.kind == "exited" and outcome.code == 0 else "error"}
        if outcome.kind == "exited" and outcome.code == 0 and self.paths.record.exists():
            return {**summary, **_summary_of(self.paths)}
        error = outcome.error(self.timeout_min, _log_tail(self.paths.log, log_start))
        log.error("cell %s: %s", self.paths.cell_id, str(error).splitlines()[0])
        record = self.error_record(error, started_at=outcome.started_at, duration_s=outcome.duration_s)
        return {**summary, **self.finish(record)}

    def say(self, text: str) -> None:
        """A warning in this worker's log and in the cell's own log (what stopped the cell)."""
        log.warning("cell %s %s", self.paths.cell_id, text)
        with contextlib.suppress(OSError):
            fd = os.open(self.paths.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            with os.fdopen(fd, "a") as handle:
                handle.write(f"{now_iso()} WARNING {__name__}: cell {self.paths.cell_id} {text}\n")

    def _child_main(self) -> None:
        """The child's whole life: its own stdio (the cell's log), default signals, measure, exit."""
        code = 1
        try:
            _become_cell_process(self.paths.log)
            try:
                record, _ = self.measure()
            except SystemExit as exc:  # sys.exit in the model's code (the worker's signals are not ours)
                log.error("cell %s: the cell's code called sys.exit(%r)", self.paths.cell_id, exc.code)
                record = self.error_record(exc) if self.ctx.rank == 0 else None
            if record is not None:
                self.finish(record)
            code = 0
        except BaseException:  # noqa: BLE001 - the parent reports an exit without a record
            logging.getLogger(__name__).exception("cell %s: the runner itself failed", self.paths.cell_id)
        finally:
            _flush_std_streams()
            os._exit(code)


class CellCrashed(RuntimeError):
    """A cell's process ended without a record: killed by a signal, or exited (sys.exit, os._exit)."""


class CellTimeout(RuntimeError):
    """A cell ran past its deadline (the grid's `resources.timeout_min`) and was killed."""


assert CellTimeout.__name__ == TIMEOUT_ERROR  # the record's error type status and report read


@dataclasses.dataclass
class ChildOutcome:
    """How a cell's child process ended: `exited` (with `code`), `signalled` (`code` is the signal),
    `timeout`, or `cancelled`."""

    kind: str
    code: int = 0
    started_at: str = ""
    duration_s: float = 0.0

    def error(self, timeout_min: float | None, tail: list[str]) -> BaseException:
        """The exception the cell's error record carries: what happened, then its log's last lines."""
        if self.kind == "timeout":
            head, cls = f"timed out after {_minutes(timeout_min)} min (the grid's timeout_min); killed", CellTimeout
        elif self.kind == "signalled":
            head, cls = f"the cell's process was killed by {_signal_text(self.code)}", CellCrashed
        else:
            head, cls = (f"the cell's process exited with status {self.code} without writing a record "
                         f"(sys.exit or os._exit in the model's code?)"), CellCrashed
        tail = [line for line in tail if not line.startswith("Extension modules:")]  # faulthandler's list
        last = _telling_line(tail)
        first = f"{head}; last log line: {last}" if last else f"{head}; its log is empty"
        return cls("\n".join([first, "last lines of the cell's log:", *tail]))


def _telling_line(tail: list[str], width: int = 240) -> str:
    """The log line that says most: a fatal error, the innermost frame of a dump, an exception line,
    else the last one."""
    lines = [line.strip() for line in tail if line.strip()]
    fatal = [line for line in lines if line.startswith("Fatal Python error")]
    header = next((i for i, line in enumerate(lines) if line.endswith("(most recent call first):")), None)
    raised = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception|Exit|Interrupt)\b", line)]
    if fatal:
        line = fatal[-1]
    elif header is not None and header + 1 < len(lines):
        line = f"at {lines[header + 1]}"
    else:
        line = (raised or lines or [""])[-1]
    return line if len(line) <= width else line[:width] + "..."


def _signal_text(signum: int) -> str:
    try:
        name = signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
    why = {"SIGSEGV": "segmentation fault", "SIGBUS": "bus error", "SIGABRT": "aborted",
           "SIGKILL": "the kernel's out-of-memory killer sends it, as does kill -9",
           "SIGFPE": "arithmetic fault", "SIGILL": "illegal instruction"}.get(name)
    return f"{name} ({why})" if why else name


def _minutes(timeout_min: float | None) -> str:
    return f"{timeout_min:g}" if timeout_min is not None else "?"


def _watch_child(pid: int, paths: CellPaths, timeout_min: float | None, poll_s: float = 0.2) -> ChildOutcome:
    """Wait for the cell's child: its exit, its deadline, or a cancel of the cell. Whatever stops
    this process meanwhile (submitit's requeue exit, Ctrl-C) kills the child first."""
    started_at, t0 = now_iso(), time.monotonic()
    deadline = None if timeout_min is None else t0 + 60.0 * float(timeout_min)
    done = False
    try:
        while True:
            waited, status = os.waitpid(pid, os.WNOHANG)
            if waited:
                done = True
                kind = "signalled" if os.WIFSIGNALED(status) else "exited"
                code = os.WTERMSIG(status) if kind == "signalled" else os.waitstatus_to_exitcode(status)
                return ChildOutcome(kind, code, started_at, round(time.monotonic() - t0, 3))
            if deadline is not None and time.monotonic() > deadline:
                _stop_child(pid, dump_stacks=True)
                done = True
                return ChildOutcome("timeout", 0, started_at, round(time.monotonic() - t0, 3))
            if cancel_mark(paths) is not None:
                _stop_child(pid)
                done = True
                return ChildOutcome("cancelled", 0, started_at, round(time.monotonic() - t0, 3))
            time.sleep(poll_s)
    finally:
        if not done:
            _stop_child(pid)


def _stop_child(pid: int, dump_stacks: bool = False) -> None:
    """Kill the cell's child and reap it; with `dump_stacks` it first writes where each of its
    threads is (faulthandler, to the cell's log): what a hung cell was doing."""
    with contextlib.suppress(ProcessLookupError):
        if dump_stacks:
            os.kill(pid, signal.SIGUSR1)
            time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


@contextlib.contextmanager
def _noted_stop_signals() -> Iterator[list[int]]:
    """Note SIGINT, SIGTERM and SIGUSR2 reaching this process in the block, then hand each to the
    handler it had (submitit's: requeue on SIGUSR2, log SIGTERM): a cell whose child then ends was
    stopped from outside, and gets no record."""
    noted: list[int] = []
    if not _is_main_thread():
        yield noted
        return
    previous = {}

    def note(signum: int, frame: Any) -> None:
        noted.append(signum)
        handler = previous.get(signum)
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL and signum == signal.SIGINT:
            raise KeyboardInterrupt
        elif handler == signal.SIG_DFL:
            raise SystemExit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
        previous[signum] = signal.signal(signum, note)
    try:
        yield noted
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _become_cell_process(log_path: Path) -> None:
    """In the cell's child: stdout and stderr to the cell's log, crash tracebacks there too, the
    signals meant for the worker left to it, and death with the worker."""
    for signum in (signal.SIGINT, signal.SIGUSR2):  # the worker's to handle (cancel, requeue)
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    # The streams Python writes to may not be fds 1 and 2 (a caller that captured them): new ones are.
    sys.stdout = open(1, "w", buffering=1, closefd=False, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
    import faulthandler

    faulthandler.enable(file=sys.stderr, all_threads=True)  # a segfault leaves its Python traceback
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)  # the deadline's dump
    root = logging.getLogger()
    for handler in list(root.handlers):  # the worker's handlers point at its stdio: ours is the log now
        root.removeHandler(handler)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _preload_measuring_modules() -> None:
    """Import torch and the measuring code once in the worker, so each cell's child starts warm
    (forked with them loaded) instead of importing them again (seconds per cell). Importing starts
    no thread and touches no GPU, so the fork stays sound."""
    import bench.measure.complexity  # noqa: F401
    import bench.measure.latency  # noqa: F401
    import bench.core.modelref  # noqa: F401


def _die_with_parent() -> None:
    """Linux: the child gets SIGKILL when its worker dies (a kill -9 of the worker leaves no orphan)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the orphan ends with its cell
        pass


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _log_tail(path: Path, start: int = 0, lines: int = 40, max_bytes: int = 65536) -> list[str]:
    """The lines of the cell's log since offset `start` (what its child wrote) that tell most: from
    a crash's or a time-out's faulthandler dump on when there is one, else the last `lines`."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(start, size - max_bytes))
            text = handle.read(max_bytes).decode("utf-8", "replace")
    except OSError:
        return []
    every = text.splitlines()
    dumps = [i for i, line in enumerate(every) if line.startswith("Fatal Python error")] or \
        [i for i, line in enumerate(every) if line.endswith("(most recent call first):")][:1]
    if dumps:
        return every[max(0, dumps[-1] - 5):dumps[-1] + lines]
    return every[-lines:]


def _summary_of(paths: CellPaths) -> dict[str, Any]:
    """The summary fields of the record the child wrote."""
    try:
        return {"status": read_record(paths.record)["status"], "record": str(paths.record)}
    except CorruptRecord as exc:
        return {"status": "error", "record": str(paths.record), "corrupt": str(exc)}


def _env_without_a_device(config: dict[str, Any]) -> dict[str, Any]:
    """The record's env, taken in the worker, which must not touch the cell's device (CUDA in a
    process that forks later cells would break them): the device named, its name not asked."""
    env = capture_env(None)
    env["device"] = _device_of(config)
    return env


@dataclasses.dataclass(frozen=True)
class MeasureOptions:
    """How a command asks the runner to measure a cell (a grid's jobs use the defaults).

    Args:
        model: the cell's model, already built (`vtbench profile` builds it to read its default
            input size); None: built from the config, after seeding with the cell's seed.
        depth: also count MACs and params per module down to this depth (`modules` rows).
        resume: training continues from WORK/checkpoint.pt when there is one.
        progress: training shows a progress bar (on a terminal).
    """

    model: Any = None
    depth: int | None = None
    resume: bool = True
    progress: bool = False


def record_cell(config: dict[str, Any], work_dir: Path | None, *, rank: int = 0, run_name: str | None = None,
                job: dict[str, Any] | None = None, options: MeasureOptions = MeasureOptions(),
                ) -> tuple[dict[str, Any] | None, BaseException | None]:
    """Measure one cell and build its record: the one path of the grid's jobs, `vtbench profile`
    and `vtbench train` (the caller writes the record where it belongs).

    Returns (the record, or None on a rank other than 0; the exception that stopped the
    measurement, or None). A failure is an `error` record with the metrics measured before it.
    """
    started_at, t0 = now_iso(), time.perf_counter()
    metrics, error = measure_cell(config, work_dir, rank, options)
    if rank != 0:
        return None, error
    if error is None:
        error = non_finite_evaluation(metrics)
    facts = {"env": cell_env(config, metrics), "run": run_name, "started_at": started_at,
             "duration_s": round(time.perf_counter() - t0, 3), "job": job}
    try:
        record = make_record(config, metrics=metrics, error=error, **facts)
    except ValidationError as exc:  # a measurement gave what the record contract refuses: an error row
        log.error("cell %s: its record breaks the contract: %s", config.get("model"), exc)
        record = make_record(config, error=exc, **facts)
        error = exc
    return record, error


# Metrics that say how good a trained model is: one that is NaN or infinite means the evaluation
# failed (a model whose eval-mode output is NaN scores chance accuracy beside a NaN loss), so the
# cell has no result; the record says so as an error instead of showing chance as one.
EVALUATION_METRICS = ("test_loss", "top1", "top5", "best_top1", "miou", "pixel_acc", "best_miou")


# Failures of a measurement that are not vtbench bugs, known by name where their module is not
# imported here (bench.measure.train raises TrainingDiverged).
EXPECTED_FAILURES = ("TrainingDiverged",)


class NonFiniteMetrics(MeasurementError):
    """An evaluation metric of the cell came out NaN or infinite: no result (the record is an error)."""


assert NonFiniteMetrics.__name__ == NON_FINITE_ERROR


def non_finite_evaluation(metrics: dict[str, Any]) -> NonFiniteMetrics | None:
    """The error for `metrics` whose evaluation metrics are not all finite (or were dropped as
    such: `non_finite`), else None."""
    import math

    bad = [key for key in EVALUATION_METRICS
           if isinstance(metrics.get(key), float) and not math.isfinite(metrics[key])]
    bad += [key for key in metrics.get("non_finite") or [] if key in EVALUATION_METRICS and key not in bad]
    if not bad:
        return None
    shown = {key: metrics.get(key) for key in EVALUATION_METRICS if key in metrics}
    return NonFiniteMetrics(f"evaluation gave non-finite {', '.join(bad)} (NaN or inf): the model's output "
                            f"in eval mode is not finite, so {shown} is no result")


def measure_cell(config: dict[str, Any], work_dir: Path | None, rank: int = 0,
                 options: MeasureOptions = MeasureOptions()) -> tuple[dict[str, Any], BaseException | None]:
    """Run the cell's measurements; returns (metrics so far, the exception that stopped it or None).

    Complexity and latency run on rank 0 only; training runs on every rank (distributed).
    """
    metrics: dict[str, Any] = {}
    measure = list(config.get("measure") or [])
    out_of_memory: tuple[type[BaseException], ...] = ()  # known once torch is imported
    try:
        import torch  # here, not at the top: see the note under the imports

        from bench.measure.latency import OutOfMemory

        out_of_memory = (OutOfMemory, torch.OutOfMemoryError)
        torch.manual_seed(int(config.get("seed", 0)))
        if rank == 0 and ("complexity" in measure or "latency" in measure):
            metrics.update(_measure_model(config, measure, options))
        if "train" in measure:
            if work_dir is None:
                raise ValueError("a training cell needs a work folder")
            metrics.update(_train(config, work_dir, options))
    except Exception as exc:  # noqa: BLE001 - becomes an error record with its traceback
        from bench.core.modelref import raised_by_job_machinery

        if raised_by_job_machinery(exc):  # submitit's handler gave up on the job: not the cell's error
            raise
        kind = "out of memory" if isinstance(exc, out_of_memory) else type(exc).__name__
        # The traceback is for a failure nobody expected; a known one (bad input, a diverged
        # training, an out-of-memory) is one line, its traceback under -v and in the record.
        expected = isinstance(exc, (UsageError, MeasurementError, *out_of_memory)) \
            or type(exc).__name__ in EXPECTED_FAILURES
        log.error("cell failed (%s): %s", kind, exc, exc_info=log.isEnabledFor(logging.DEBUG) or not expected)
        return metrics, exc
    return metrics, None


def _measure_model(config: dict[str, Any], measure: list[str], options: MeasureOptions) -> dict[str, Any]:
    """Complexity and/or latency of the cell's model, built once."""
    from bench.core.modelref import resolve_model_ref

    metrics: dict[str, Any] = {}
    model = options.model
    if model is None:
        model = resolve_model_ref(config["model"]).build(**dict(config.get("model_args") or {}))
    # Measured as deployed: eval mode (latency switches to train mode itself for train steps).
    model.eval()
    size = image_hw(config["input_size"])
    if "complexity" in measure:
        from bench.measure.complexity import measure_complexity

        batch = int((config.get("complexity") or {}).get("batch_size", 1))
        result = measure_complexity(model, size, batch_size=batch)
        metrics.update(result.to_metrics())
        if options.depth is not None:
            metrics["modules"] = result.module_rows(options.depth)
        log.info("complexity: %.3f GMACs, %.2f M params", metrics.get("gmacs", float("nan")),
                 metrics.get("params_m", float("nan")))
    if "latency" in measure:
        batch_size = (config.get("latency") or {}).get("batch_size", 1)
        if isinstance(batch_size, list):  # `vtbench profile --batch-size 1,32`: a row per batch size
            rows = _latency_rows(model, config, batch_size)
            metrics.update({k: v for k, v in rows.items() if k not in metrics})
        else:
            metrics.update(measure_cell_latency(model, config))
            log.info("latency: %.2f ms (p50)", metrics.get("latency_ms_p50", float("nan")))
    return metrics


def _latency_rows(model: Any, config: dict[str, Any], batch_sizes: list[int]) -> dict[str, Any]:
    """`latency`: one `measure_latency` row per batch size, an out-of-memory as an error row in its
    place; with exactly one batch size its row is also copied to the top level, as a grid cell has it."""
    from bench.measure.latency import OutOfMemory

    rows = []
    for batch in batch_sizes:
        log.info("timing %s at batch %d on %s (%s)", config["model"], batch, config["latency"].get("device", "cpu"),
                 config["latency"].get("dtype", "fp32"))
        single = {**config, "latency": {**config["latency"], "batch_size": batch}}
        try:
            rows.append(measure_cell_latency(model, single))
        except OutOfMemory as exc:
            log.error("batch %d: %s", batch, exc)
            rows.append({"batch_size_requested": batch, "batch_size_tried": exc.batch_size_tried,
                         "error": f"OutOfMemory: {exc}"})
    metrics: dict[str, Any] = {"latency": rows}
    if len(rows) == 1 and "error" not in rows[0]:
        metrics.update(rows[0])
    return metrics


def measure_cell_latency(model: Any, config: dict[str, Any], timing: dict[str, Any] | None = None) -> dict[str, Any]:
    """`bench.measure.latency.measure_latency` with the cell's `latency` options (and timing overrides).

    The section is read through `LatencyOptions`, which maps the cell's `compile` to `compile_mode`.
    """
    from bench.measure.latency import measure_latency

    section = LatencyOptions.model_validate(config.get("latency") or {})
    opts = {**section.measure_kwargs(), **(timing or {})}
    return measure_latency(model, input_size=image_hw(config["input_size"]), batch_size=section.batch_size, **opts)


def _train(config: dict[str, Any], work_dir: Path, options: MeasureOptions) -> dict[str, Any]:
    """Train the cell's model (resuming from work_dir/checkpoint.pt when there is one and `options.resume`)."""
    from bench.measure.train import TrainConfig, train

    section = dict(config.get("train") or {})
    # The cell's seed and input size hold for every measurement unless training overrides them.
    section.setdefault("seed", config.get("seed", 0))
    section.setdefault("input_size", config.get("input_size"))
    cfg = TrainConfig.from_dict(section)
    return train(config["model"], dict(config.get("model_args") or {}), cfg, work_dir,
                 resume=options.resume, progress=options.progress)


def cell_env(config: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The record's `env`: the machine and software (`capture_env`), and for a latency cell the
    measurement's settings as timed (dtype, batch sizes, input size, threads, cuDNN autotuning)."""
    if "latency" not in (config.get("measure") or []):
        return capture_env(_device_of(config))
    from bench.measure.latency import latency_env

    latency = config.get("latency") or {}
    rows = [row for row in metrics.get("latency") or [metrics] if "threads" in row]
    return latency_env(device=latency.get("device", "cpu"), dtype=latency.get("dtype", "fp32"),
                       batch_size=latency.get("batch_size", 1), input_size=config.get("input_size"),
                       threads=rows[0]["threads"] if rows else latency.get("threads"),
                       cudnn_benchmark=rows[0].get("cudnn_benchmark") if rows else None)


def _device_of(config: dict[str, Any]) -> str:
    measure = config.get("measure") or []
    if "latency" in measure:
        return str((config.get("latency") or {}).get("device", "cpu"))
    if "train" in measure:
        return str((config.get("train") or {}).get("device", "cpu"))
    return "cpu"


# ------------------------------------------------------------------------------ files and locks
def _has_ok_record(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        return read_record(path)["status"] == "ok"
    except CorruptRecord as exc:
        log.warning("%s; the cell runs again", exc)
        return False


def _write_state(paths: CellPaths, state: str, ctx: JobContext, **extra: Any) -> None:
    """RUN_DIR/cells/ID/state.json: what `vtbench status` reads to tell running cells apart."""
    # host + pid + pid start time: a bare pid may name another process once this one is gone.
    write_json_atomic(paths.state, {"state": state, "job_id": ctx.job_id, "cluster": ctx.cluster,
                                    **this_process(), "updated_at": now_iso(), **extra})


@contextlib.contextmanager
def _cell_lock(paths: CellPaths, ctx: JobContext) -> Iterator[bool]:
    """Exclusive per-cell lock for rank 0 (other ranks follow their rank 0); False if held elsewhere."""
    if ctx.rank != 0:
        yield True
        return
    # Never through a symlink planted in the run folder: the lock's text is written.
    handle = os.fdopen(os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666), "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            got = True
        except BlockingIOError:
            got = False
            log.warning("cell %s is being run by another process right now; this job leaves it alone",
                        paths.cell_id)
        if got:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({**this_process(), "job_id": ctx.job_id}) + "\n")
            handle.flush()
        yield got
    finally:
        handle.close()  # releases the lock


def cancel_mark(paths: CellPaths) -> dict[str, Any] | None:
    """What `vtbench cancel` left in the cell's `cancelled.json`, or None when it is not cancelled."""
    try:
        mark = read_untrusted_json(paths.cancelled, MAX_STATE_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError):  # only cancel writes the file (atomically): it is cancelled all the same
        return {}
    return mark if isinstance(mark, dict) else {}


def lock_holder(paths: CellPaths) -> dict[str, Any] | None:
    """Who took the cell's lock last ({host, pid, pid_start, job_id}), or None if unknown.

    The text stays after the holder ends; `bench.pipeline.liveness.process_alive` tells whether it still runs.
    """
    try:
        holder = read_untrusted_json(paths.lock, MAX_STATE_BYTES)
    except (OSError, ValueError):  # no lock yet, or one written before holders were JSON
        return None
    return holder if isinstance(holder, dict) else None


@contextlib.contextmanager
def _local_slot(slots_dir: Path, n_slots: int, poll_s: float = 0.5) -> Iterator[int]:
    """Hold one of `n_slots` file locks: caps how many local jobs measure at once."""
    slots_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        for index in range(max(1, n_slots)):
            handle = open(slots_dir / f"slot{index}.lock", "a")  # noqa: SIM115 - closed below
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield index
            finally:
                handle.close()
            return
        if not waited:
            log.info("waiting for one of %d local slot(s)", n_slots)
            waited = True
        time.sleep(poll_s)


@contextlib.contextmanager
def _cell_log(path: Path) -> Iterator[None]:
    """Copy this process's log lines to the cell's own log file while the cell runs."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def _ensure_logging() -> None:
    """Inside a job nothing configured logging yet: send INFO lines to stderr (submitit's log)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
