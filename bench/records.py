"""Self-describing JSON records: the one contract between runs and reports.

A record is one JSON object per measured cell (DESIGN.md, "Contracts"):

    {
      "schema": "vtbench.record/1",
      "cell_id": "3f2a9c1b7d0e",          # stable hash of the resolved config
      "run": "smoke",                      # the run (grid) it belongs to, if any
      "config": {...},                     # fully resolved, flat cell config
      "env": {...},                        # see `capture_env`
      "status": "ok" | "error",
      "error": null | {"type": ..., "message": ..., "traceback": ...},
      "metrics": {"gmacs": ..., "params_m": ..., "latency_ms_p50": ..., "top1": ...},
      "started_at": ISO-8601, "finished_at": ISO-8601, "duration_s": float,
      "job": {"job_id": ..., "array_index": ...} | null
    }

Units live in metric key names (`gmacs`, `params_m`, `latency_ms_p50`, `throughput_img_s`,
`peak_mem_mb`, `top1` in %, `miou` in %). Records are written atomically (temp file in the same
folder, fsync, rename), so a crash never leaves half a record behind.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import socket
import subprocess
import tempfile
import traceback as _traceback
from pathlib import Path
from typing import Any, Iterator

SCHEMA = "vtbench.record/1"


def cell_id_of(config: dict[str, Any]) -> str:
    """Stable 12-hex id of a resolved cell config (key order does not matter)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def now_iso() -> str:
    """Current UTC time, ISO-8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The git commit of the source tree (with `-dirty` when modified), or None outside git."""
    here = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def capture_env(device: str | None = None) -> dict[str, Any]:
    """Describe the machine and software a measurement ran on."""
    import torch

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
    """Assemble a record; `error` turns it into an `error` record with the traceback."""
    record = {
        "schema": SCHEMA,
        "cell_id": cell_id_of(config),
        "run": run,
        "config": config,
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
    return record


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """Write JSON to `path` atomically: temp file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=False, default=_json_default)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    """Write `record` as RECORDS_DIR/CELL_ID.json, atomically."""
    return write_json_atomic(Path(records_dir) / f"{record['cell_id']}.json", record)


class CorruptRecord(ValueError):
    """A record file that is not valid JSON or lacks the schema's required keys."""


REQUIRED_KEYS = ("schema", "cell_id", "config", "status")


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """Read and minimally validate one record; raise CorruptRecord if it is unusable."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptRecord(f"{path}: unreadable record ({exc})") from exc
    if not isinstance(record, dict) or any(key not in record for key in REQUIRED_KEYS):
        raise CorruptRecord(f"{path}: not a vtbench record (needs keys {', '.join(REQUIRED_KEYS)})")
    if record["status"] not in ("ok", "error"):
        raise CorruptRecord(f"{path}: unknown status {record['status']!r}")
    return record


def iter_records(records_dir: str | os.PathLike) -> Iterator[tuple[Path, dict[str, Any] | CorruptRecord]]:
    """Yield (path, record) for every *.json in a folder; a corrupt file yields its CorruptRecord."""
    for path in sorted(Path(records_dir).glob("*.json")):
        try:
            yield path, read_record(path)
        except CorruptRecord as exc:
            yield path, exc
