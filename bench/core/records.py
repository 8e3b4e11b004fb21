"""Self-describing JSON records: the one contract between runs and reports.

A record is one JSON object per measured cell (DESIGN.md, "Contracts"):

    {
      "schema": "vtbench.record/2",
      "cell_id": "3f2a9c1b7d0e",          # stable hash of the resolved config
      "run": "smoke",                      # the run (grid) it belongs to, if any
      "config": {...},                     # fully resolved, flat cell config
      "model": {"family": ..., "task": ..., "depth": ..., "baseline": ..., "stages": [...], "replaced": ...},
      "env": {...},                        # see `capture_env`
      "status": "ok" | "error",
      "error": null | {"type": ..., "message": ..., "traceback": ...},
      "metrics": {"gmacs": ..., "params_m": ..., "latency_ms_p50": ..., "top1": ...},
      "started_at": ISO-8601, "finished_at": ISO-8601, "duration_s": float,
      "job": {"job_id": ..., "array_index": ...} | null
    }

Units live in metric key names (`gmacs`, `params_m`, `latency_ms_p50`, `throughput_img_s`,
`peak_mem_mb`, `top1` in %, `miou` in %). Records are written atomically (temp file in the same
folder, fsync, rename), so a crash never leaves half a record behind, with the mode the umask gives
(a run folder on a shared file system stays readable by the group). Record files are data that
anyone may have edited or copied: `read_record` checks them against the schema
(`bench.core.contracts.Record`: types, a finite number or null for each metric, a cell id matching the
file name) and raises CorruptRecord, and no path is ever built from a cell id that is not 12
lowercase hex digits. `vtbench.record/1` records (no `model` block) are read as they are, their
`model` left None: the registry's facts of today are not those the record was measured under.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import math
import platform
import re
import socket
import subprocess
import traceback as _traceback
from pathlib import Path
from typing import Any, Iterator

from bench.core.contracts import READABLE_SCHEMAS, SCHEMA, Record, ValidationError, model_block, problems_of  # noqa: F401
from bench.core.errors import UsageError
from bench.core.util import atomic_write, canonical_hash, write_text_atomic  # noqa: F401  (write_text_atomic: re-exported)

STATUSES = ("ok", "error")

# What `cell_id_of` produces. A cell id names files and folders (records/ID.json, cells/ID/), and
# record files can come from anywhere (copied from a cluster, edited by hand), so an id read from
# data must match this before it becomes part of a path: "../../x" must never reach the disk.
CELL_ID_RE = re.compile(r"^[0-9a-f]{12}$")
# Any other name vtbench derives a path from (a run, a model in a default output folder): one
# path component, no separator, not "." or "..", nothing hidden.
PATH_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def cell_id_of(config: dict[str, Any]) -> str:
    """Stable 12-hex id of a resolved cell config (key order does not matter)."""
    return canonical_hash(config, 12)


def check_cell_id(cell_id: Any) -> str:
    """`cell_id` if it is a cell id as `cell_id_of` makes them (12 lowercase hex); else UsageError."""
    if not isinstance(cell_id, str) or not CELL_ID_RE.match(cell_id):
        raise UsageError(f"invalid cell id {cell_id!r}: expected 12 lowercase hex digits (as vtbench makes them)")
    return cell_id


def check_path_name(name: Any, what: str) -> str:
    """`name` if it is safe as one path component (letters, digits, '_', '-', '.'); else UsageError."""
    if not isinstance(name, str) or not PATH_NAME_RE.match(name):
        raise UsageError(f"invalid {what} {name!r} for a file name: use letters, digits, '_', '-' or '.', "
                         f"starting with a letter or digit")
    return name


def path_inside(folder: str | os.PathLike, name: str) -> Path:
    """FOLDER/NAME, refused (UsageError) unless it resolves inside FOLDER (no '..', no absolute NAME).

    The name patterns above already exclude separators; resolving too also catches a symlink
    planted in the folder that points elsewhere.
    """
    folder = Path(folder)
    target = folder / name
    if not target.resolve().is_relative_to(folder.resolve()):
        raise UsageError(f"refusing to write {target}: it resolves outside {folder}")
    return target


def record_path(records_dir: str | os.PathLike, cell_id: Any) -> Path:
    """RECORDS_DIR/CELL_ID.json for a validated cell id."""
    return path_inside(records_dir, f"{check_cell_id(cell_id)}.json")


def now_iso() -> str:
    """Current UTC time, ISO-8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The git commit of the source tree (with `-dirty` when modified).

    Outside git (a copy of the tree sent to another machine), `VTBENCH_GIT_COMMIT` names it, or None.
    """
    here = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("VTBENCH_GIT_COMMIT") or None
    return f"{sha}-dirty" if dirty else sha


def capture_env(device: str | None = None) -> dict[str, Any]:
    """Describe the machine and software a measurement ran on."""
    import torch  # here: `vtbench status` and `report` read records and never need torch (1.3 s)

    env: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "git_commit": git_commit(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
    use_cuda = device is not None and str(device).startswith("cuda") and torch.cuda.is_available()
    env["device"] = str(device or "cpu")
    env["device_name"] = torch.cuda.get_device_name(torch.device(device)) if use_cuda else env["cpu"]
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover - torchvision is a dependency
        env["torchvision"] = None
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_record(config: dict[str, Any], *, metrics: dict[str, Any] | None = None,
                error: BaseException | None = None, env: dict[str, Any] | None = None,
                run: str | None = None, started_at: str | None = None,
                duration_s: float | None = None, job: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble a record (checked against `bench.core.contracts.Record`); `error` turns it into an
    `error` record with the traceback. Its `model` block holds the registry's facts of `config["model"]`."""
    record = {
        "schema": SCHEMA,
        "cell_id": cell_id_of(config),
        "run": run,
        "config": config,
        "model": model_block(config.get("model")),
        "env": env if env is not None else capture_env(config.get("device")),
        "status": "error" if error is not None else "ok",
        "error": None,
        "metrics": dict(metrics or {}),
        "started_at": started_at,
        "finished_at": now_iso(),
        "duration_s": duration_s,
        "job": job,
    }
    if error is not None:
        record["error"] = {
            "type": type(error).__name__,
            "message": str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__,
            "traceback": "".join(_traceback.format_exception(type(error), error, error.__traceback__)),
        }
    Record.model_validate(json.loads(json_text(_with_finite_metrics(record))))  # as written and read back
    return record


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """Write JSON to `path` atomically: temp file in the same folder, fsync, then rename."""
    with atomic_write(path) as handle:
        handle.write(json_text(payload))
    return Path(path)


def json_text(payload: Any) -> str:
    """`payload` as the JSON text vtbench's files hold (indented, a final newline)."""
    return json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n"


def _json_default(value: Any) -> Any:
    """Make numpy scalars, paths and tensors JSON-serialisable."""
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            pass
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def write_record(records_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write `record` as RECORDS_DIR/CELL_ID.json, atomically.

    The file name comes from the record's `cell_id`, so it is validated first (UsageError for
    anything but 12 hex digits). Non-finite metrics (NaN, inf) are written as null and named in
    `metrics.non_finite`: JSON has no such numbers, and `read_record` would call the file corrupt.
    """
    path = record_path(records_dir, record.get("cell_id"))
    return write_json_atomic(path, _with_finite_metrics(record))


def _with_finite_metrics(record: dict[str, Any]) -> dict[str, Any]:
    metrics = record.get("metrics")
    if not isinstance(metrics, dict):
        return record
    dropped: list[str] = []
    cleaned = _finite_or_none(metrics, "", dropped)
    if not dropped:
        return record
    cleaned["non_finite"] = sorted(set(dropped) | set(metrics.get("non_finite") or []))
    return {**record, "metrics": cleaned}


def _finite_or_none(value: Any, where: str, dropped: list[str]) -> Any:
    """`value` with every NaN / inf float (at any depth) replaced by None; their keys go to `dropped`."""
    if isinstance(value, float) and not math.isfinite(value):
        dropped.append(where)
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v, f"{where}.{k}" if where else str(k), dropped) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v, f"{where}[{i}]", dropped) for i, v in enumerate(value)]
    return value


class CorruptRecord(ValueError):
    """A record file that is not valid JSON, or does not follow the record schema."""


def schema_problem(record: Any, cell_id: str | None = None) -> str | None:
    """Why `record` does not follow the record schema (`bench.core.contracts.Record`), or None when it does.

    Args:
        record: the parsed JSON.
        cell_id: the id the record must carry (the one its file is named by), if known.
    """
    if not isinstance(record, dict):
        return f"not a vtbench record (a JSON {type(record).__name__}, not an object)"
    try:
        Record.model_validate(record)
    except ValidationError as exc:
        return "; ".join(problems_of(exc, Record, record))
    if cell_id is not None and record["cell_id"] != cell_id:
        return f"its cell_id {record['cell_id']!r} differs from its file name {cell_id!r}"
    return _non_finite_problem(record.get("metrics") or {})


def _non_finite_problem(metrics: dict[str, Any]) -> str | None:
    dropped: list[str] = []
    _finite_or_none(metrics, "", dropped)
    if dropped:  # json.loads reads 1e400 as inf, and NaN / Infinity literals as such
        return f"non-finite metric(s) {', '.join(dropped[:5])} (a metric is a finite number or null)"
    return None


def read_record(path: str | os.PathLike, *, cell_id: str | None = None) -> dict[str, Any]:
    """Read one record and check it against the schema; raise CorruptRecord if it is unusable.

    Args:
        path: the record file.
        cell_id: the id the record must carry. Default: the file's name when it is named as
            records are (ID.json with a valid id), so `records/ID.json` can never hold another
            cell's record (whose id would then lead readers and writers to another file).
    """
    path = Path(path)
    if cell_id is None and CELL_ID_RE.match(path.stem):
        cell_id = path.stem
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CorruptRecord(f"{path}: unreadable record ({exc})") from exc
    problem = schema_problem(record, cell_id)
    if problem:
        raise CorruptRecord(f"{path}: {problem}")
    return record


def iter_records(records_dir: str | os.PathLike) -> Iterator[tuple[Path, dict[str, Any] | CorruptRecord]]:
    """Yield (path, record) for every *.json in a folder; a corrupt file yields its CorruptRecord.

    Every file here must be named by its cell id: one that is not is corrupt too.
    """
    for path in sorted(Path(records_dir).glob("*.json")):
        if not CELL_ID_RE.match(path.stem):
            yield path, CorruptRecord(f"{path}: file name is not a cell id (12 lowercase hex digits)")
            continue
        try:
            yield path, read_record(path, cell_id=path.stem)
        except CorruptRecord as exc:
            yield path, exc
