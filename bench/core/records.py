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
anyone may have edited or copied: `read_record` reads only a regular file inside the run folder,
at most `MAX_RECORD_BYTES` (`bench.core.util.read_untrusted_bytes`: a FIFO or `/dev/zero` planted
as a record is corrupt, never waited on or read), and checks it against the schema
(`bench.core.contracts.Record`: types, a finite number or null for each metric, a cell id matching the
file name) and raises CorruptRecord, and no path is ever built from a cell id that is not 12
lowercase hex digits. `vtbench.record/1` records (no `model` block) are read as they are, their
`model` left None: the registry's facts of today are not those the record was measured under.

Re-measurements. `vtbench interleave` never rewrites a record: it writes a re-measurement
(`bench.core.contracts.Remeasurement`, `vtbench.remeasurement/1`) beside it, one per cell and
invocation, as RECORDS_DIR/remeasured/ID.N.json (N = 1, 2, ...: the next free number, taken with
an exclusive create, so two writers never share a file). Each file has one path, made from its
own fields (`remeasures` and `number`), and a file whose fields do not match its name is corrupt,
as a record is. `latest_remeasurements` gives each cell's newest (highest N), and
`with_remeasurement` the record as readers use it: latency from the re-measurement, the rest from
the record. Records rewritten in place by the interleave of earlier checkouts (`remeasured_at`,
no remeasured/ file) are read as they are.
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
import tempfile
import traceback as _traceback
from pathlib import Path
from typing import Any, Iterator

from bench.core.contracts import (READABLE_SCHEMAS, REMEASUREMENT_SCHEMA, SCHEMA, Record,  # noqa: F401
                                  Remeasurement, ValidationError, model_block, problems_of)
from bench.core.errors import UsageError
from bench.core.util import (MAX_RECORD_BYTES, atomic_write, canonical_hash, fsync_dir,  # noqa: F401
                             read_untrusted_json, shared_file_mode, write_text_atomic)  # write_text_atomic: re-exported

STATUSES = ("ok", "error")
# The error types the runner gives what stopped a cell from outside the cell's own code: its
# deadline (status and report show `timeout`), and a measurement that ended with a non-finite
# evaluation metric (an error: a NaN top-1 is no result, and chance accuracy beside it is not one).
TIMEOUT_ERROR = "CellTimeout"
NON_FINITE_ERROR = "NonFiniteMetrics"

# What `cell_id_of` produces. A cell id names files and folders (records/ID.json, cells/ID/), and
# record files can come from anywhere (copied from a cluster, edited by hand), so an id read from
# data must match this before it becomes part of a path: "../../x" must never reach the disk.
CELL_ID_RE = re.compile(r"^[0-9a-f]{12}$")
# Any other name vtbench derives a path from (a run, a model in a default output folder): one
# path component, no separator, not "." or "..", nothing hidden.
PATH_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Re-measurements: RECORDS_DIR/remeasured/ID.N.json (the cell id, then a number from 1 up).
REMEASURED_DIR = "remeasured"
REMEASUREMENT_NAME_RE = re.compile(r"^([0-9a-f]{12})\.([1-9][0-9]{0,8})\.json$")


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


def remeasurement_path(records_dir: str | os.PathLike, cell_id: Any, number: Any) -> Path:
    """RECORDS_DIR/remeasured/CELL_ID.NUMBER.json for a validated cell id and a number >= 1."""
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number < 10**9:
        raise UsageError(f"invalid re-measurement number {number!r}: expected an integer from 1")
    folder = path_inside(records_dir, REMEASURED_DIR)
    return path_inside(folder, f"{check_cell_id(cell_id)}.{number}.json")


def now_iso() -> str:
    """Current UTC time, ISO-8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# Tracked paths whose changes do not change what a measurement runs: a launch rewrites its committed
# run folder's grid.yaml and jobs.json itself, so counting them would mark nearly every record of a
# committed study `-dirty` and leave the suffix meaning nothing about the code.
NOT_CODE_PATHSPECS = (":(top,exclude)results", ":(top,exclude)docs", ":(top,exclude,glob)**/*.md")


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The git commit of the source tree, with `-dirty` when tracked code differs from it (changes
    under results/ and docs/ and to Markdown files do not count: NOT_CODE_PATHSPECS).

    Outside git (a copy of the tree sent to another machine), `VTBENCH_GIT_COMMIT` names it, or None.
    """
    here = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                *NOT_CODE_PATHSPECS], cwd=here, capture_output=True, text=True,
                               timeout=5).stdout.strip()
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


def record_outcome(record: dict[str, Any]) -> str:
    """`ok`, `error`, or `timeout` (an error record whose cell ran past its deadline)."""
    if record.get("status") == "error" and (record.get("error") or {}).get("type") == TIMEOUT_ERROR:
        return "timeout"
    return str(record.get("status"))


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
        # Untrusted: a FIFO, a device or a huge file planted here must not hang or exhaust a reader.
        record = read_untrusted_json(path, MAX_RECORD_BYTES, inside=path.parent.parent)
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
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


# ------------------------------------------------------------------------------ re-measurements
# A record's latency metrics as one pass of the runner measured them: what `with_remeasurement`
# keeps under `latency_single_pass` when a re-measurement replaces them.
LATENCY_SINGLE_PASS_KEYS = ("latency_ms_p50", "latency_ms_p20", "latency_ms_p80", "latency_ms_mean",
                            "latency_ms_min", "latency_iters", "throughput_img_s", "peak_mem_mb",
                            "process_peak_rss_mb", "first_iter_ms", "warmup_settled", "latency_verdict",
                            "latency_noise_reasons")


def make_remeasurement(record: dict[str, Any], metrics: dict[str, Any], *, session: dict[str, Any],
                       env: dict[str, Any]) -> dict[str, Any]:
    """A re-measurement of `record` (an ok record as read), without its `number` (`write_remeasurement`
    gives it). `session`: `RemeasureSession`'s fields; `metrics`: the new latency metrics."""
    return {"schema": REMEASUREMENT_SCHEMA, "remeasures": record["cell_id"], "number": None,
            "run": record.get("run"), "session": dict(session), "record_finished_at": record.get("finished_at"),
            "env": env, "metrics": dict(metrics)}


def write_remeasurement(records_dir: str | os.PathLike, remeasurement: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Write `remeasurement` as RECORDS_DIR/remeasured/ID.N.json with the next free N; never over a file.

    The file is written whole to a temp file, then linked to its name, which fails if the name is
    taken (a re-measurement written meanwhile): the next number is tried. Returns (path, the
    re-measurement as written, with its `number`).
    """
    cell_id = check_cell_id(remeasurement.get("remeasures"))
    folder = path_inside(records_dir, REMEASURED_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    number = 1 + max((n for n, _ in _remeasurement_files(folder, cell_id)), default=0)
    while True:
        payload = _with_finite_metrics({**remeasurement, "number": number})
        Remeasurement.model_validate(json.loads(json_text(payload)))  # as it will be read back
        path = remeasurement_path(records_dir, cell_id, number)
        if _create_new(path, json_text(payload)):
            return path, payload
        number += 1


def _create_new(path: Path, text: str) -> bool:
    """Write `text` to `path` whole (temp file, fsync, hard link); False if `path` exists already."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, shared_file_mode())
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: rename, checking first (a narrow race)
            if path.exists():
                return False
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def _remeasurement_files(folder: Path, cell_id: str | None = None) -> list[tuple[int, Path]]:
    """(number, path) of the files in `folder` named as re-measurements (of `cell_id`, if given)."""
    out = []
    for path in folder.glob("*.json"):
        match = REMEASUREMENT_NAME_RE.match(path.name)
        if match and (cell_id is None or match.group(1) == cell_id):
            out.append((int(match.group(2)), path))
    return sorted(out)


def read_remeasurement(path: str | os.PathLike) -> dict[str, Any]:
    """Read one re-measurement and check it (schema, and `remeasures` and `number` against its
    file name ID.N.json); raise CorruptRecord if it is unusable."""
    path = Path(path)
    match = REMEASUREMENT_NAME_RE.match(path.name)
    if not match:
        raise CorruptRecord(f"{path}: file name is not a re-measurement's (ID.N.json: 12 lowercase hex "
                            f"digits, a number from 1)")
    try:
        remeasurement = read_untrusted_json(path, MAX_RECORD_BYTES, inside=path.parent.parent.parent)
    except (OSError, ValueError) as exc:
        raise CorruptRecord(f"{path}: unreadable re-measurement ({exc})") from exc
    if not isinstance(remeasurement, dict):
        raise CorruptRecord(f"{path}: not a vtbench re-measurement (a JSON {type(remeasurement).__name__}, "
                            f"not an object)")
    try:
        Remeasurement.model_validate(remeasurement)
    except ValidationError as exc:
        raise CorruptRecord(f"{path}: {'; '.join(problems_of(exc, Remeasurement, remeasurement))}") from exc
    cell_id, number = match.group(1), int(match.group(2))
    if remeasurement["remeasures"] != cell_id:
        raise CorruptRecord(f"{path}: its remeasures {remeasurement['remeasures']!r} differs from its "
                            f"file name {cell_id!r}")
    if remeasurement["number"] != number:
        raise CorruptRecord(f"{path}: its number {remeasurement['number']!r} differs from its file name's {number}")
    problem = _non_finite_problem(remeasurement["metrics"])
    if problem:
        raise CorruptRecord(f"{path}: {problem}")
    return remeasurement


def iter_remeasurements(records_dir: str | os.PathLike) -> Iterator[tuple[Path, dict[str, Any] | CorruptRecord]]:
    """Yield (path, re-measurement) for every *.json in RECORDS_DIR/remeasured (none if there is no
    such folder); a corrupt or wrongly named file yields its CorruptRecord."""
    folder = Path(records_dir) / REMEASURED_DIR
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        try:
            yield path, read_remeasurement(path)
        except CorruptRecord as exc:
            yield path, exc


def latest_remeasurements(records_dir: str | os.PathLike) -> tuple[dict[str, tuple[Path, dict[str, Any]]],
                                                                   list[tuple[Path, CorruptRecord]]]:
    """({cell id: (path, its newest usable re-measurement)}, [(path, CorruptRecord) of the corrupt ones])."""
    latest: dict[str, tuple[Path, dict[str, Any]]] = {}
    corrupt: list[tuple[Path, CorruptRecord]] = []
    for path, found in iter_remeasurements(records_dir):
        if isinstance(found, CorruptRecord):
            corrupt.append((path, found))
        elif found["remeasures"] not in latest or found["number"] > latest[found["remeasures"]][1]["number"]:
            latest[found["remeasures"]] = (path, found)
    return latest, corrupt


def with_remeasurement(record: dict[str, Any], remeasurement: dict[str, Any]) -> dict[str, Any]:
    """`record` as readers use it once `remeasurement` re-measured it (neither is changed).

    The same shape an in-place interleave gave (so the report reads both alike): the metrics of
    the re-measurement over the record's (the record's `LATENCY_SINGLE_PASS_KEYS` dropped first,
    so none is left where the re-measurement has no figure), the record's single pass kept under
    `latency_single_pass`, the re-measurement's `env` (where the latency was taken), and
    `remeasured_at` with the session's times, the env replaced (`previous_env`) and where the
    re-measurement is (`file`, relative to the records folder), its `number`, `session` and `rounds`.
    """
    metrics = dict(record.get("metrics") or {})
    single_pass = metrics.pop("latency_single_pass", None)  # a record an earlier interleave rewrote
    if single_pass is None and metrics.get("latency_protocol") != "interleaved":
        single_pass = {k: metrics[k] for k in LATENCY_SINGLE_PASS_KEYS if k in metrics}
    for key in LATENCY_SINGLE_PASS_KEYS:  # none of the record's own survives beside the new figures
        metrics.pop(key, None)
    metrics.update(remeasurement["metrics"])
    if single_pass:
        metrics["latency_single_pass"] = single_pass
    session = remeasurement["session"]
    return {**record, "metrics": metrics, "env": remeasurement["env"],
            "remeasured_at": {"started_at": session["started_at"], "finished_at": session["finished_at"],
                              "protocol": session["protocol"], "previous_env": record.get("env"),
                              "file": f"{REMEASURED_DIR}/{remeasurement['remeasures']}.{remeasurement['number']}.json",
                              "number": remeasurement["number"], "session": session["id"],
                              "rounds": session["rounds"]}}
