"""Where a run stands, from its files alone: no cluster is asked (`vtbench status RUN`).

Reads `RUN_DIR/cells.json` (what the grid holds), `RUN_DIR/records/*.json` (what finished),
`RUN_DIR/cells/ID/state.json` (what a job is running now, written by the runner) and
`RUN_DIR/jobs.json` (what was submitted). A cell is

- `ok` / `error`: it has a record with that status;
- `running`: no record, and its state file says a job is running it (on this host the process is
  checked to be alive and to be the same process, by its start time: a pid reused by another
  process does not count);
- `stopped`: no record, and `vtbench cancel` (or an interrupted `vtbench launch`) cancelled it
  (`cells/ID/cancelled.json`), or its state file says running but that process has ended (killed,
  or requeued and not restarted yet): it will not end by itself; `vtbench launch` runs it again;
- `pending`: anything else (queued, never submitted, or with a corrupt record).

Corrupt record files are listed, never fatal; `vtbench launch` runs their cells again.
Re-measurements (`RUN_DIR/records/remeasured/ID.N.json`, from `vtbench interleave`) are not cells:
a cell with several counts once, by its record; a corrupt one is listed (as `remeasured/NAME`) and
changes no cell's state.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from bench.core.errors import UsageError
from bench.pipeline.liveness import process_alive
from bench.core.records import REMEASURED_DIR, CorruptRecord, iter_records, iter_remeasurements

STATES = ("ok", "error", "running", "pending", "stopped")
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
        return [c for c in self.cells if c.state == "error"]


def run_status(run_dir: str | os.PathLike) -> RunStatus:
    """Collect the status of the run in `run_dir` (see the module doc)."""
    run_dir = Path(run_dir)
    cells_file = run_dir / "cells.json"
    if not cells_file.is_file():
        raise UsageError(f"{run_dir} is not a run folder (no cells.json; run `vtbench launch GRID` first)")
    try:
        cells = json.loads(cells_file.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{cells_file}: not valid JSON ({exc})") from exc
    records, corrupt = _read_records(run_dir / "records")
    known = {c["cell_id"] for c in cells}
    statuses = [_cell_status(run_dir, c, records.get(c["cell_id"]), corrupt) for c in cells]
    return RunStatus(run_dir=run_dir, cells=statuses, jobs=read_jobs(run_dir), corrupt=corrupt,
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


def read_jobs(run_dir: Path) -> list[dict[str, Any]]:
    """RUN_DIR/jobs.json, or [] when there is none (a corrupt one is an error: it is our file)."""
    path = run_dir / "jobs.json"
    if not path.exists():
        return []
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from exc


def _cell_status(run_dir: Path, cell: dict, record: dict | None, corrupt: dict[str, str]) -> CellStatus:
    cell_id = cell["cell_id"]
    model = (cell.get("config") or {}).get("model")
    if record is not None:
        error = record.get("error") or {}
        line = f"{error.get('type', 'error')}: {error.get('message', '')}" if record["status"] == "error" else None
        return CellStatus(cell_id, record["status"], model, error=line)
    if f"{cell_id}.json" in corrupt:
        return CellStatus(cell_id, "pending", model, note="corrupt record; runs again on the next launch")
    work = run_dir / "cells" / cell_id
    cancelled = _cancelled_note(work / "cancelled.json")
    if cancelled is not None:
        return CellStatus(cell_id, "stopped", model, note=cancelled)
    state, note = _running_state(work / "state.json")
    return CellStatus(cell_id, state, model, note=note)


def _cancelled_note(path: Path) -> str | None:
    """Why the cell is stopped, if `vtbench cancel` marked it (the file `bench.pipeline.runner.cancel_mark` reads)."""
    if not path.exists():
        return None
    try:
        mark = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        mark = {}
    mark = mark if isinstance(mark, dict) else {}
    return f"cancelled {mark.get('cancelled_at', '?')} ({mark.get('cluster')} job {mark.get('task_id')})"


def _running_state(path: Path) -> tuple[str, str | None]:
    """`running` if the runner's state file says so and its process lives (or is on another host,
    which cannot be seen from here: trusted); `stopped` if that process has ended."""
    if not path.exists():
        return "pending", None
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return "pending", "unreadable state file"
    if state.get("state") != "running":
        return "pending", None
    where = f"job {state.get('job_id')} on {state.get('host')}"
    if process_alive(state.get("host"), state.get("pid"), state.get("pid_start")) is False:
        return "stopped", f"{where} ended before writing a record (killed, or requeued and not restarted)"
    return "running", f"{where} since {state.get('updated_at')}"


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
        lines.append(f"  error    {cell.cell_id} {cell.model}: {cell.error}")
    for cell in status.cells:
        if cell.state in ("running", "stopped") or (cell.state == "pending" and cell.note):
            lines.append(f"  {cell.state:<8} {cell.cell_id} {cell.model}: {cell.note}")
    for name, why in status.corrupt.items():
        lines.append(f"  corrupt record {name}: {why}")
    if status.stray_records:
        lines.append(f"  {status.stray_records} record(s) of cells no longer in the grid")
    if counts["stopped"]:
        lines.append(f"  stopped cells run again with `vtbench launch {status.run_dir / 'grid.yaml'} "
                     f"--run-dir {status.run_dir}`")
    for job in status.jobs:
        lines.append(f"  job {job.get('job_id')} ({job.get('cluster')}, {len(job.get('cell_ids', []))} "
                     f"cells, submitted {job.get('submitted_at')})")
    if not status.jobs:
        lines.append("  no jobs submitted yet")
    return "\n".join(lines)
