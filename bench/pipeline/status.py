"""Where a run stands, from its files alone: no cluster is asked (`vtbench status RUN`).

Reads `RUN_DIR/cells.json` (what the grid holds), `RUN_DIR/records/*.json` (what finished),
`RUN_DIR/cells/ID/state.json` (what a job is running now, written by the runner) and
`RUN_DIR/jobs.json` (what was submitted). A cell is

- `ok` / `error`: it has a record with that status;
- `pending` with a note, too, when `stale_defaults` is asked for (`vtbench status` does) and its ok
  record is stale: the cell leaves unset an option whose model default has changed since the record
  was written (`bench.core.modelfacts.changed_defaults`, which asks the model registry, hence torch:
  reports, torch-free, keep such records apart instead), so `vtbench launch` runs the cell again;
- `timeout`: its record is the error the runner writes when the cell ran past the grid's
  `timeout_min` (`bench.core.records.record_outcome`);
- `running`: no record, and its state file says a job is running it (on this host the process is
  checked to be alive and to be the same process, by its start time: a pid reused by another
  process does not count);
- `stopped`: no record, and `vtbench cancel` (or an interrupted `vtbench launch`) cancelled it
  (`cells/ID/cancelled.json`), or its state file says running but that process has ended (killed,
  or requeued and not restarted yet): it will not end by itself; `vtbench launch` runs it again;
- `pending`: anything else (queued, never submitted, or with a corrupt record); when the local job
  given the cell has ended without starting it (its worker was killed), the note says so.

Every file read here is untrusted (`bench.core.util.read_untrusted_json`: regular files under a
size cap; cell ids checked before any path is built), and every text printed is escaped
(`bench.core.util.printable`): a value from a record cannot drive the terminal.

Corrupt record files are listed, never fatal; `vtbench launch` runs their cells again.
Re-measurements (`RUN_DIR/records/remeasured/ID.N.json`, from `vtbench interleave`) are not cells:
a cell with several counts once, by its record; a corrupt one is listed (as `remeasured/NAME`) and
changes no cell's state.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any

from bench.core.errors import UsageError
from bench.pipeline.liveness import process_alive
from bench.core.records import (CELL_ID_RE, REMEASURED_DIR, CorruptRecord, iter_records, iter_remeasurements,
                                record_outcome)
from bench.core.util import MAX_RUN_FILE_BYTES, MAX_STATE_BYTES, printable, read_untrusted_json

log = logging.getLogger(__name__)

STATES = ("ok", "error", "timeout", "running", "pending", "stopped")
ROW_FIELDS = ("cell_id", "model", "state", "error", "note", "job_id", "cluster")  # status_rows' keys


@dataclasses.dataclass
class CellStatus:
    """One cell's state and, for failures, its one-line error."""

    cell_id: str
    state: str
    model: str | None = None
    error: str | None = None
    note: str | None = None


@dataclasses.dataclass
class RunStatus:
    """Counts and details of a run folder."""

    run_dir: Path
    cells: list[CellStatus]
    jobs: list[dict[str, Any]]
    corrupt: dict[str, str]          # file name -> why it is unusable
    stray_records: int = 0           # records of cells no longer in cells.json

    @property
    def counts(self) -> dict[str, int]:
        counts = {state: 0 for state in STATES}
        for cell in self.cells:
            counts[cell.state] += 1
        return counts

    @property
    def failed(self) -> list[CellStatus]:
        return [c for c in self.cells if c.state in ("error", "timeout")]


def run_status(run_dir: str | os.PathLike, stale_defaults: bool = False) -> RunStatus:
    """Collect the status of the run in `run_dir` (see the module doc)."""
    run_dir = Path(run_dir)
    cells = read_cells(run_dir)
    records, corrupt = _read_records(run_dir / "records")
    known = {c["cell_id"] for c in cells}
    jobs = read_jobs(run_dir)
    statuses = [_cell_status(run_dir, c, records.get(c["cell_id"]), corrupt, jobs, stale_defaults) for c in cells]
    return RunStatus(run_dir=run_dir, cells=statuses, jobs=jobs, corrupt=corrupt,
                     stray_records=len(set(records) - known))


def _read_records(records_dir: Path) -> tuple[dict[str, dict], dict[str, str]]:
    records: dict[str, dict] = {}
    corrupt: dict[str, str] = {}
    if not records_dir.is_dir():
        return records, corrupt
    for path, record in iter_records(records_dir):
        if isinstance(record, CorruptRecord):
            corrupt[path.name] = str(record)
        else:
            records[path.stem] = record
    for path, remeasurement in iter_remeasurements(records_dir):
        if isinstance(remeasurement, CorruptRecord):
            corrupt[f"{REMEASURED_DIR}/{path.name}"] = str(remeasurement)
    return records, corrupt


def read_cells(run_dir: Path) -> list[dict[str, Any]]:
    """RUN_DIR/cells.json as a list of {"cell_id", "config"}, each id checked (UsageError otherwise).

    Untrusted like every file of a run folder: a regular file under its size cap, and no cell id
    that is not 12 lowercase hex digits, since each id becomes a path (records/ID.json, cells/ID/).
    """
    cells_file = run_dir / "cells.json"
    if not cells_file.is_file():
        raise UsageError(f"{run_dir} is not a run folder (no cells.json; run `vtbench launch GRID` first)")
    try:
        cells = read_untrusted_json(cells_file, MAX_RUN_FILE_BYTES, inside=run_dir)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{cells_file}: unreadable ({printable(exc, newlines=False)})") from exc
    bad = [c for c in cells if not isinstance(c, dict) or not _is_cell_id(c.get("cell_id"))] \
        if isinstance(cells, list) else [cells]
    if bad:
        raise UsageError(f"{cells_file}: not a list of cells with valid ids "
                         f"(first bad entry: {printable(repr(bad[0])[:80], newlines=False)})")
    return cells


def _is_cell_id(value: Any) -> bool:
    return isinstance(value, str) and CELL_ID_RE.match(value) is not None


def read_jobs(run_dir: Path) -> list[dict[str, Any]]:
    """RUN_DIR/jobs.json, or [] when there is none (an unreadable one is an error: it is our file).

    Untrusted: each entry is kept only with what `vtbench launch` writes there: its `cell_ids` all
    valid ids, its `task_job_ids` (and local `task_pid_starts`) one per cell, a known cluster. An
    entry that is not is dropped with a warning (a cell id such as `../../x` never becomes a path,
    and cancel never signals a pid taken from it).
    """
    path = run_dir / "jobs.json"
    try:
        jobs = read_untrusted_json(path, MAX_RUN_FILE_BYTES, inside=run_dir)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable ({printable(exc, newlines=False)})") from exc
    if not isinstance(jobs, list):
        raise UsageError(f"{path}: not a list of submissions")
    kept = [entry for entry in jobs if _job_entry_problem(entry) is None]
    for entry in jobs:
        problem = _job_entry_problem(entry)
        if problem is not None:
            log.warning("%s: ignoring a submission entry: %s", path, printable(problem, newlines=False))
    return kept


# A local controller's pid, or a SLURM job or array task (123, 123_4); debug jobs run in their
# launcher and are never signalled or asked about, whatever their ids.
_TASK_ID_RE = re.compile(r"^[0-9]+(_[0-9]+)?$")


def _job_entry_problem(entry: Any) -> str | None:
    """Why a jobs.json entry is not one `vtbench launch` wrote, or None."""
    if not isinstance(entry, dict):
        return f"not a mapping: {repr(entry)[:60]}"
    cell_ids, task_ids = entry.get("cell_ids") or [], entry.get("task_job_ids") or []
    if not isinstance(cell_ids, list) or not all(_is_cell_id(c) for c in cell_ids):
        return f"a cell id that is not 12 lowercase hex digits in {repr(cell_ids)[:80]}"
    if not isinstance(task_ids, list) or len(task_ids) != len(cell_ids):
        return f"task_job_ids {repr(task_ids)[:80]} are not one job id per cell"
    if entry.get("cluster") != "debug" and not all(_TASK_ID_RE.match(str(t)) for t in task_ids):
        return f"task_job_ids {repr(task_ids)[:80]} are not job ids (a pid, or a SLURM array task)"
    starts = entry.get("task_pid_starts")
    if starts is not None and (not isinstance(starts, list) or len(starts) != len(task_ids)
                               or not all(s is None or (isinstance(s, int) and s >= 0) for s in starts)):
        return f"task_pid_starts {repr(starts)[:80]} are not one start time per task"
    if entry.get("cluster") not in ("local", "slurm", "debug"):
        return f"unknown cluster {repr(entry.get('cluster'))[:40]}"
    return None


def _cell_status(run_dir: Path, cell: dict, record: dict | None, corrupt: dict[str, str],
                 jobs: list[dict[str, Any]], stale_defaults: bool = False) -> CellStatus:
    cell_id = cell["cell_id"]
    model = (cell.get("config") or {}).get("model")
    if record is not None:
        if stale_defaults and record.get("status") == "ok":
            from bench.core.modelfacts import changed_defaults, describe_changed_defaults  # the registry: torch
            stale = changed_defaults(record)
        else:
            stale = {}
        if stale:
            return CellStatus(cell_id, "pending", model,
                              note=f"stale record ({describe_changed_defaults(stale)}); runs again on the next launch")
        error = record.get("error") or {}
        line = f"{error.get('type', 'error')}: {error.get('message', '')}" if record["status"] == "error" else None
        return CellStatus(cell_id, record_outcome(record), model, error=line)
    if f"{cell_id}.json" in corrupt:
        return CellStatus(cell_id, "pending", model, note="corrupt record; runs again on the next launch")
    work = run_dir / "cells" / cell_id
    cancelled = _cancelled_note(work / "cancelled.json")
    if cancelled is not None:
        return CellStatus(cell_id, "stopped", model, note=cancelled)
    state, note = _running_state(work / "state.json")
    if state == "pending" and note is None:
        note = _why_pending(cell_id, jobs)
    return CellStatus(cell_id, state, model, note=note)


def _why_pending(cell_id: str, jobs: list[dict[str, Any]]) -> str | None:
    """Why a cell that never started is pending when the job given it has ended (local jobs: this
    host's /proc tells); None while it may still start (queued, or a SLURM job, not asked here)."""
    latest = None
    for entry in jobs:  # submission order: the latest one holding the cell wins
        if cell_id in (entry.get("cell_ids") or []):
            latest = entry
    if latest is None or latest.get("cluster") != "local":
        return None if latest is not None else "never submitted; `vtbench launch` runs it"
    i = latest["cell_ids"].index(cell_id)
    task = str(latest["task_job_ids"][i])
    starts = latest.get("task_pid_starts") or [None] * len(latest["cell_ids"])
    if process_alive(latest.get("host"), task, starts[i]) is not False:
        return None  # still queued in a live worker (or on another host)
    return (f"its local job {task} ended before starting it (the worker was killed or crashed); "
            f"`vtbench launch` runs it again")


def _cancelled_note(path: Path) -> str | None:
    """Why the cell is stopped, if `vtbench cancel` marked it (the file `bench.pipeline.runner.cancel_mark` reads)."""
    try:
        mark = read_untrusted_json(path, MAX_STATE_BYTES)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        mark = {}
    mark = mark if isinstance(mark, dict) else {}
    return printable(f"cancelled {mark.get('cancelled_at', '?')} ({mark.get('cluster')} job {mark.get('task_id')})",
                     newlines=False)


def _running_state(path: Path) -> tuple[str, str | None]:
    """`running` if the runner's state file says so and its process lives (or is on another host,
    which cannot be seen from here: trusted); `stopped` if that process has ended."""
    try:
        state = read_untrusted_json(path, MAX_STATE_BYTES)
    except FileNotFoundError:
        return "pending", None
    except (OSError, ValueError):
        return "pending", "unreadable state file"
    if not isinstance(state, dict) or state.get("state") != "running":
        return "pending", None
    where = printable(f"job {state.get('job_id')} on {state.get('host')}", newlines=False)
    if process_alive(state.get("host"), state.get("pid"), state.get("pid_start")) is False:
        return "stopped", f"{where} ended before writing a record (killed, or requeued and not restarted)"
    return "running", f"{where} since {printable(state.get('updated_at'), newlines=False)}"


def status_rows(status: RunStatus) -> list[dict[str, Any]]:
    """One row per cell (`vtbench status --format json|csv`): `cell_id`, `model`, `state`, `error`
    (failures), `note` (running, stopped, corrupt), and the `job_id` and `cluster` of the latest
    submission that holds the cell (null if none did)."""
    jobs: dict[str, tuple[Any, Any]] = {}
    for job in status.jobs:  # jobs.json is in submission order: a later one wins
        task_ids = job.get("task_job_ids") or []
        for i, cell_id in enumerate(job.get("cell_ids") or []):
            jobs[cell_id] = (task_ids[i] if i < len(task_ids) else job.get("job_id"), job.get("cluster"))
    return [dict(zip(ROW_FIELDS, (c.cell_id, c.model, c.state, c.error, c.note, *jobs.get(c.cell_id, (None, None)))))
            for c in status.cells]


def format_status(status: RunStatus) -> str:
    """The text `vtbench status` prints."""
    counts = status.counts
    lines = [f"run {status.run_dir}: {len(status.cells)} cells: "
             + ", ".join(f"{counts[s]} {s}" for s in STATES)]
    for cell in status.failed:
        lines.append(f"  {cell.state:<8} {cell.cell_id} {printable(cell.model, newlines=False)}: "
                     f"{printable(cell.error, newlines=False)}")
    for cell in status.cells:
        if cell.state in ("running", "stopped") or (cell.state == "pending" and cell.note):
            lines.append(f"  {cell.state:<8} {cell.cell_id} {printable(cell.model, newlines=False)}: "
                         f"{printable(cell.note, newlines=False)}")
    for name, why in status.corrupt.items():
        lines.append(f"  corrupt record {printable(name, newlines=False)}: {printable(why, newlines=False)}")
    if status.stray_records:
        lines.append(f"  {status.stray_records} record(s) of cells no longer in the grid")
    if counts["stopped"]:
        lines.append(f"  stopped cells run again with `vtbench launch {status.run_dir / 'grid.yaml'} "
                     f"--run-dir {status.run_dir}`")
    for job in status.jobs:
        lines.append(printable(f"  job {job.get('job_id')} ({job.get('cluster')}, {len(job.get('cell_ids', []))} "
                               f"cells, submitted {job.get('submitted_at')})", newlines=False))
    if not status.jobs:
        lines.append("  no jobs submitted yet")
    return "\n".join(lines)
