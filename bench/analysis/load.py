"""Load: run folders -> typed records, their configurations (`Group`s) and one pandas DataFrame.

RUN_DIR/records/*.json (+ RUN_DIR/records/remeasured/*.json, whose newest per cell gives the cell's
latency, and RUN_DIR/cells.json for the pending cells) -> `load_runs` (the ok records as read, each
with its newest re-measurement applied; a frame row per record with config and scalar metrics
flattened) -> `aggregate` (a `Group` per configuration: records that differ only in seed, on one
device; and a frame row per group, seeds collapsed into mean, sample std with ddof=1, and count).

Column names of the aggregated frame: model options bare (`tokenizer`, `num_tokens`, ...), other
config sections dotted (`latency.device`, `train.dataset`), environment `env.*`, the model's facts
(`family`, `baseline`, `depth`, `task`); each numeric metric `M` appears as `M` (mean over seeds),
`M_std` (sample std, ddof=1; empty for a single seed) and `M_n` (how many records had it). List
metrics (per-round latencies, per-round verdicts) stay in the records, where `bench.analysis.compare`
reads them; the frame's text columns are for people and are never parsed back.
Torch-free: a model's facts come from its records (`bench.analysis.facts`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from bench.analysis import facts as model_facts
from bench.analysis.compare import Group
from bench.core.errors import UsageError
from bench.core.noise import judge_latency
from bench.core.records import CorruptRecord, iter_records, latest_remeasurements, record_outcome, with_remeasurement
from bench.pipeline.status import run_status

log = logging.getLogger(__name__)

SEED_KEYS = ("seed", "train.seed")
GROUP_ENV_KEYS = ("env.device_name",)  # latency on different hardware is never averaged together
EXPECTED_METRICS = {
    "complexity": {"cls": ("gmacs", "params_m"), "seg": ("gmacs", "params_m")},
    "latency": {"cls": ("latency_ms_p50", "throughput_img_s"), "seg": ("latency_ms_p50", "throughput_img_s")},
    "train": {"cls": ("top1",), "seg": ("miou",)},
}
FACT_COLUMNS = ("family", "baseline", "depth", "task")
# A cell's state, in `vtbench status`'s words and order (bench.pipeline.status.STATES): ok / error /
# timeout from its record (`bench.core.records.record_outcome`), running / pending / stopped without one.
STATES = ("ok", "error", "timeout", "running", "pending", "stopped")


@dataclass
class RunData:
    """Everything read from one or more run folders."""

    cells: pd.DataFrame                     # one row per `ok` record, flattened
    errors: pd.DataFrame                    # error records
    corrupt: pd.DataFrame                   # unreadable record files
    pending: pd.DataFrame                   # cells in cells.json without a usable record
    missing: pd.DataFrame                   # ok records lacking a metric their `measure` promises
    option_columns: list[str] = field(default_factory=list)   # flattened model options
    metric_columns: list[str] = field(default_factory=list)
    run_dirs: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)   # cell_id -> nested config
    # Every ok record as readers use it (its newest re-measurement applied; `run` set to the run
    # folder's name), unflattened: the studies' sections (bench/analysis/section.py) read these.
    records: list[dict[str, Any]] = field(default_factory=list)
    # One Group per configuration (`aggregate`), in the aggregated frame's order.
    groups: list[Group] = field(default_factory=list)

    def state_counts(self) -> dict[str, int]:
        """Cells per state, as `vtbench status` counts them: ok records, error and timeout records
        (`errors`' `state`), and the cells without a usable record (`pending`'s `state`)."""
        counts = dict.fromkeys(STATES, 0)
        counts["ok"] = len(self.cells)
        for frame in (self.errors, self.pending):
            for state in frame["state"]:
                counts[state] = counts.get(state, 0) + 1
        return counts



def check_run_dir(path: str | Path) -> Path:
    """The run folder as a Path; a missing folder or one without records/ is a UsageError."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"run folder {path} does not exist")
    if not (path / "records").is_dir():
        raise UsageError(f"{path} holds no records/ folder (is it a vtbench run folder?)")
    return path


def _scalar(value: Any) -> Any:
    """A config value as one table cell: lists become 'a,b' (input sizes 'HxW'), dicts JSON."""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value


def input_size_label(value: Any) -> str | None:
    """'224' / 224 / [224, 224] -> '224x224'; [800, 1216] -> '800x1216'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (list, tuple)):
        return "x".join(str(int(v)) for v in value)
    return f"{int(value)}x{int(value)}"


def flatten_config(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Flatten a cell config: model options bare, other sections dotted; returns (row, option names)."""
    row: dict[str, Any] = {}
    options = []
    for key, value in config.items():
        if key == "model_args" and isinstance(value, dict):
            continue
        if isinstance(value, dict):
            row.update({f"{key}.{k}": _scalar(v) for k, v in value.items()})
        elif key == "input_size":
            row[key] = input_size_label(value)
        else:
            row[key] = _scalar(value)
    for key, value in (config.get("model_args") or {}).items():
        name = key if key not in row else f"model_args.{key}"
        row[name] = _scalar(value)
        options.append(name)
    return row, options


def flatten_record(record: dict[str, Any], run: str) -> tuple[dict[str, Any], list[str], list[str]]:
    """One DataFrame row for an ok record; returns (row, option columns, metric columns)."""
    row, options = flatten_config(record["config"])
    row = {"run": run, "cell_id": record["cell_id"], **row}
    for key, value in (record.get("env") or {}).items():
        if not isinstance(value, (dict, list)):
            row[f"env.{key}"] = value
    facts = model_facts.remember(record)
    row.update(family=facts.family, baseline=facts.baseline, depth=facts.depth, task=facts.task)
    metrics = []
    for key, value in latency_quality(record).items():
        name = key if key not in row else f"metric.{key}"
        if key == "latency_noise_reasons" and isinstance(value, list):
            value = "; ".join(value) if value else None  # shown to people, never parsed back
        elif isinstance(value, (dict, list)):
            continue  # lists (per-round figures) stay in the record, where compare reads them
        row[name] = value
        metrics.append(name)
    row["finished_at"] = record.get("finished_at")
    row["duration_s"] = record.get("duration_s")
    return row, options, metrics



OLD_CPU_MEMORY_KINDS = ("process_peak_rss", "process_peak_rss_lifetime")  # before "rss_added" existed


def latency_quality(record: dict[str, Any]) -> dict[str, Any]:
    """A record's metrics with what the latency tables need, derived where the record predates it.

    - `latency_verdict` and friends: a record measured before verdicts were recorded is judged
      here by `bench.core.noise.judge_latency` from what it has (warm-up, spread, rounds), and
      `latency_verdict_by_report` says so.
    - `memory_added_mb` / `memory_process_peak_mb`: what the measurement added and the process
      peak; older CPU records hold only the process peak (in `peak_mem_mb`), so "added" stays empty.
    - `latency_session`: when the record's latency was re-timed by `vtbench interleave` (rounds of
      records with the same session were timed side by side and can be paired).
    - `latency_from`: 'interleaved re-measurement TIME, N rounds' when the latency comes from a
      re-measurement file (`bench.core.records.with_remeasurement`); absent for a record's own latency.
    """
    metrics = dict(record.get("metrics") or {})
    if metrics.get("latency_ms_p50") is None:
        return metrics
    if "latency_verdict" not in metrics:
        metrics.update(judge_latency(metrics), latency_verdict_by_report=True)
    kind = metrics.get("peak_mem_kind")
    if kind in OLD_CPU_MEMORY_KINDS:
        metrics.update(memory_added_mb=None, memory_process_peak_mb=metrics.get("peak_mem_mb"))
    else:
        metrics.update(memory_added_mb=metrics.get("peak_mem_mb") if kind != "cuda_max_allocated" else None,
                       memory_process_peak_mb=metrics.get("process_peak_rss_mb"))
        if kind == "cuda_max_allocated":
            metrics["memory_cuda_peak_mb"] = metrics.get("peak_mem_mb")
    if metrics.get("latency_protocol") == "interleaved":
        remeasured = record.get("remeasured_at") or {}
        metrics["latency_session"] = remeasured.get("started_at")
        if remeasured.get("file"):
            metrics["latency_from"] = (f"interleaved re-measurement {_utc_minute(remeasured.get('finished_at'))}, "
                                       f"{remeasured.get('rounds')} rounds")
    return metrics


def _utc_minute(when: Any) -> str:
    """'2025-06-01T10:00:07+00:00' -> '2025-06-01 10:00 UTC' (the text itself if it is no such time)."""
    try:
        return pd.Timestamp(when).tz_convert("UTC").strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError):
        return str(when)



def _task(record: dict[str, Any]) -> str:
    """The record's model's task (its facts; "cls" for a model nothing is known of), which picks the metrics expected."""
    return model_facts.remember(record).task


def _missing_metrics(record: dict[str, Any]) -> list[str]:
    """Metrics that the cell's `measure` list promises but the record lacks (or holds as null)."""
    config, metrics = record["config"], record.get("metrics") or {}
    task = _task(record)
    expected = [m for step in config.get("measure") or [] for m in EXPECTED_METRICS.get(step, {}).get(task, ())]
    return [m for m in expected if metrics.get(m) is None]


def _config_summary(config: dict[str, Any]) -> str:
    """A short human label of a cell: model and its options."""
    args = config.get("model_args")
    options = ", ".join(f"{k}={v}" for k, v in (args if isinstance(args, dict) else {}).items())
    seed = config.get("seed")
    return f"{config.get('model')}({options})" + (f" seed={seed}" if seed is not None else "")


def _read_cells_json(run_dir: Path) -> list[dict[str, Any]] | None:
    """The run's resolved cells, or None when the run has no cells.json."""
    path = run_dir / "cells.json"
    if not path.exists():
        return None
    try:
        cells = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: unreadable cells.json ({exc})") from exc
    if not isinstance(cells, list) or not all(isinstance(c, dict) and "cell_id" in c for c in cells):
        raise UsageError(f"{path}: expected a JSON list of cells with cell_id and config")
    return cells


def load_runs(run_dirs: Iterable[str | Path]) -> RunData:
    """Read every record (and cells.json) of the runs; corrupt, error, missing and pending are kept aside."""
    rows, errors, corrupt, pending, missing, notes = [], [], [], [], [], []
    configs: dict[str, dict[str, Any]] = {}
    ok_records: list[dict[str, Any]] = []
    options: dict[str, None] = {}
    metric_names: dict[str, None] = {}
    dirs = [check_run_dir(d) for d in run_dirs]
    for run_dir in dirs:
        run = run_dir.name
        seen: dict[str, str] = {}
        remeasured, bad_remeasurements = latest_remeasurements(run_dir / "records")
        for path, problem in bad_remeasurements:  # listed; the cell keeps its record's latency
            log.warning("corrupt re-measurement: %s", problem)
            corrupt.append({"run": run, "path": str(path), "reason": str(problem).removeprefix(f"{path}: ")})
        for path, record in iter_records(run_dir / "records"):
            if isinstance(record, CorruptRecord):
                log.warning("corrupt record: %s", record)
                reason = str(record).removeprefix(f"{path}: ")
                corrupt.append({"run": run, "path": str(path), "reason": reason})
                seen.setdefault(path.stem, "corrupt record")
                continue
            seen[record["cell_id"]] = record["status"]
            if record["status"] == "error":
                errors.append(_error_row(record, run, path))
                continue
            if record["cell_id"] in remeasured:
                record = with_remeasurement(record, remeasured[record["cell_id"]][1])
            row, opts, mets = flatten_record(record, run)
            rows.append(row)
            # As readers use it: the newest re-measurement applied, the latency judged where the record
            # predates recorded verdicts (`latency_quality`), and the run folder's name.
            ok_records.append({**record, "metrics": latency_quality(record), "run": run})
            configs[record["cell_id"]] = record["config"]
            options.update(dict.fromkeys(opts))
            metric_names.update(dict.fromkeys(mets))
            missing += [{"run": run, "cell_id": record["cell_id"], "model": record["config"].get("model"),
                         "cell": _config_summary(record["config"]), "metric": m} for m in _missing_metrics(record)]
        unused = sorted(set(remeasured) - {cell_id for cell_id, status in seen.items() if status == "ok"})
        if unused:
            notes.append(f"{run}: {len(unused)} re-measurement(s) of cells without an ok record not used "
                         f"({', '.join(unused[:5])}{', ...' if len(unused) > 5 else ''})")
        pending += _pending_rows(run_dir, seen, notes)
    notes += _legacy_latency_notes(rows)
    notes += _unknown_facts_notes(ok_records)
    cells = pd.DataFrame(rows)
    return RunData(cells=cells, errors=_frame(errors, ["run", "cell_id", "model", "cell", "state", "error_type",
                                                       "message", "metrics measured before the error", "path"]),
                   corrupt=_frame(corrupt, ["run", "path", "reason"]),
                   pending=_frame(pending, ["run", "cell_id", "model", "cell", "state", "reason"]),
                   missing=_frame(missing, ["run", "cell_id", "model", "cell", "metric"]),
                   option_columns=list(options), metric_columns=list(metric_names), run_dirs=dirs, notes=notes,
                   configs=configs, records=ok_records)


def _unknown_facts_notes(records: list[dict[str, Any]]) -> list[str]:
    """Say so where records carry no model facts (schema /1) and the registry cannot be asked here (no torch):
    their models' family, baseline and stages are unknown, so those cells are paired with nothing."""
    blind = [r for r in records if not isinstance(r.get("model"), dict)]
    if not blind or model_facts.registry_available():
        return []
    models = sorted({str(r["config"].get("model")) for r in blind})
    return [f"{len(blind)} record(s) ({', '.join(models)}) predate the records' model facts (schema "
            f"vtbench.record/1) and the model registry cannot be imported here (no torch): their baselines, stages "
            f"and option defaults are unknown, so no stage column, reduction, comparison or summary line is given "
            f"for them; run the report where torch imports"]


def _legacy_latency_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Say which latency rows the report had to judge itself, and which lack the memory added."""
    notes = []
    judged = sum(1 for r in rows if r.get("latency_verdict_by_report") is True)
    if judged:
        notes.append(f"{judged} latency record(s) predate recorded verdicts: judged here from their warm-up, "
                     f"spread and rounds alone (no load average or steal time was recorded)")
    old_memory = sum(1 for r in rows if r.get("peak_mem_kind") in OLD_CPU_MEMORY_KINDS)
    if old_memory:
        notes.append(f"{old_memory} CPU latency record(s) predate the memory-added figure: they give the "
                     f"process's peak RSS only (every model the process held), so 'memory added' is empty")
    return notes


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns)


def _error_row(record: dict[str, Any], run: str, path: Path) -> dict[str, Any]:
    """A failed cell: its state (`error`, or `timeout` when the runner stopped it at the grid's deadline),
    its error's type and message (a crash, a non-finite evaluation: each an error record), and which
    metrics it measured before failing (named only: a failed cell's metrics enter no table or plot)."""
    error = record.get("error") or {}
    kept = [k for k, v in (record.get("metrics") or {}).items() if v is not None]
    main = [k for k in ("gmacs", "params_m", "latency_ms_p50", "top1", "miou") if k in kept]
    more = len(kept) - len(main)
    return {"run": run, "cell_id": record["cell_id"], "model": record["config"].get("model"),
            "cell": _config_summary(record["config"]), "state": record_outcome(record),
            "error_type": error.get("type", "?"),
            "message": error.get("message", ""), "metrics measured before the error": ", ".join(main) + (f" (+{more} more)" if more else ""),
            "path": str(path)}


def _pending_rows(run_dir: Path, seen: dict[str, str], notes: list[str]) -> list[dict[str, Any]]:
    """Cells listed in cells.json that have no ok/error record (none yet, or a corrupt one), each with its
    state as `vtbench status` gives it: running, stopped (cancelled, or its process ended), or pending."""
    cells = _read_cells_json(run_dir)
    if cells is None:
        notes.append(f"{run_dir.name}: no cells.json, so pending cells cannot be counted")
        return []
    live = _live_states(run_dir)
    rows = []
    for cell in cells:
        status = seen.get(cell["cell_id"])
        if status in ("ok", "error"):
            continue
        config = cell["config"] if isinstance(cell.get("config"), dict) else {}
        state, note = live.get(cell["cell_id"], ("pending", None))
        reason = status or note or "no record yet"
        rows.append({"run": run_dir.name, "cell_id": cell["cell_id"], "model": config.get("model"),
                     "cell": _config_summary(config), "state": state, "reason": reason})
    return rows


def _live_states(run_dir: Path) -> dict[str, tuple[str, str | None]]:
    """cell id -> (state, note) of the cells without a record, from `bench.pipeline.status` (its state
    files, cancellation marks and the liveness of their processes); {} where the run folder cannot say."""
    try:
        cells = run_status(run_dir).cells
    except (UsageError, OSError, ValueError) as exc:
        log.warning("%s: cell states unknown (%s); cells without a record counted as pending", run_dir, exc)
        return {}
    return {c.cell_id: (c.state, c.note) for c in cells if c.state in ("running", "pending", "stopped")}



def _json_key(values: Iterable[Any]) -> str:
    """A hashable, NaN-safe key for a tuple of cell values."""
    def clean(v: Any) -> Any:
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            return None
        return v.item() if hasattr(v, "item") else v
    return json.dumps([clean(v) for v in values], default=str)


def numeric_metrics(data: RunData) -> list[str]:
    """Metric columns holding numbers (bool and text metrics such as `mode` are not averaged)."""
    out = []
    for name in data.metric_columns:
        col = data.cells[name]
        values = col.dropna()
        if len(values) and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values):
            out.append(name)
    return out


def aggregate(data: RunData) -> pd.DataFrame:
    """One row per configuration (config without seed, and device name); metrics mean, std (ddof=1), n.

    Also fills `data.groups`: the configurations as `Group`s (their records unflattened), in the
    frame's order, for `bench.analysis.compare`.
    """
    cells = data.cells
    if cells.empty:
        data.groups = []
        return pd.DataFrame(columns=["group_id", "model", "n"])
    numeric = numeric_metrics(data)
    skip = set(data.metric_columns) | {"run", "cell_id", "finished_at", "duration_s"} | set(SEED_KEYS)
    config_cols = [c for c in cells.columns if c not in skip and not c.startswith("env.")]
    key_cols = config_cols + [c for c in GROUP_ENV_KEYS if c in cells.columns]
    keys = cells[key_cols].apply(lambda r: _json_key(r.values), axis=1)
    by_cell = {(r["run"], r["cell_id"]): r for r in data.records}
    keys = _split_by_defaults(keys, cells, by_cell, data.notes)
    rows, groups = [], []
    for key, group in cells.groupby(keys, sort=False):
        row = _aggregate_group(group, key, key_cols, numeric, data.metric_columns)
        records = [by_cell[(run, cell)] for run, cell in zip(group["run"], group["cell_id"])]
        rows.append(row)
        groups.append(Group(group_id=row["group_id"], model=str(row["model"]), facts=model_facts.remember(records[0]),
                            config=records[0]["config"], records=records, device_name=row.get("env.device_name")))
    data.groups = groups
    return _integer_columns(pd.DataFrame(rows), key_cols)


def _split_by_defaults(keys: pd.Series, cells: pd.DataFrame, by_cell: dict, notes: list[str]) -> pd.Series:
    """Keep apart the records of one configuration that ran under different model defaults.

    A cell states only the options it sets; if a default it leaves unset changed between two of its
    records (their `model.defaults` say what each ran under), the two measured different models,
    and pooling their seeds would average them. Such records get the differing defaults in their
    key (a record without `defaults` counts as unknown), and the report's notes say so.
    """
    out = keys.copy()
    for key, index in keys.groupby(keys, sort=False).groups.items():
        records = [by_cell[(cells.at[i, "run"], cells.at[i, "cell_id"])] for i in index]
        recorded = [_recorded_defaults(r) for r in records]
        known = [d for d in recorded if d is not None]
        if len(records) < 2 or not known:
            continue
        given = set((records[0].get("config") or {}).get("model_args") or {})
        options = set.intersection(*(set(d) for d in known)) - given
        differing = sorted(k for k in options if len({json.dumps(d[k], sort_keys=True, default=str) for d in known}) > 1)
        if not differing:
            continue
        for i, defaults in zip(index, recorded):
            ran = {k: defaults[k] for k in differing} if defaults is not None else "unknown"
            out[i] = key + json.dumps(ran, sort_keys=True, default=str)
        note = (f"{records[0]['config'].get('model')}: records of one configuration ran under different "
                f"defaults of {', '.join(differing)}; each default is its own row")
        if note not in notes:
            notes.append(note)
    return out


def _recorded_defaults(record: dict[str, Any]) -> dict[str, Any] | None:
    block = record.get("model")
    defaults = block.get("defaults") if isinstance(block, dict) else None
    return defaults if isinstance(defaults, dict) else None


def _integer_columns(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Config columns holding whole numbers (num_tokens 16, not 16.0) as nullable integers."""
    for col in cols:
        values = df[col].dropna()
        if len(values) and all(_is_number(v) and float(v).is_integer() for v in values):
            df[col] = df[col].astype("Int64")
    return df


def _aggregate_group(group: pd.DataFrame, key: str, key_cols: list[str], numeric: list[str],
                     metrics: list[str]) -> dict[str, Any]:
    first = group.iloc[0]
    row: dict[str, Any] = {"group_id": hashlib.sha256(key.encode()).hexdigest()[:10]}
    row.update({c: first[c] for c in key_cols})
    row["n"] = len(group)
    seeds = group[[c for c in SEED_KEYS if c in group.columns]].stack()
    row["seeds"] = _joined(pd.Series(sorted(seeds, key=lambda v: (not _is_number(v), float(v) if _is_number(v) else 0, str(v)))))
    row["runs"] = _joined(group["run"])
    row["cell_ids"] = _joined(group["cell_id"])
    for col in [c for c in group.columns if c.startswith("env.") and c not in key_cols]:
        row[col] = _joined(group[col])
    for name in metrics:
        if name in numeric:
            values = pd.to_numeric(group[name], errors="coerce").dropna()
            row[name] = values.mean() if len(values) else np.nan
            row[f"{name}_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
            row[f"{name}_n"] = len(values)
        elif _all_flags(group[name]):
            row[name] = bool(group[name].dropna().all())  # a flag holds for the configuration if for every seed
        else:
            row[name] = _joined(group[name])
    if "latency_verdict" in group.columns:
        row["latency_noisy"] = bool((group["latency_verdict"] == "noisy").any())
    return row


def _all_flags(values: pd.Series) -> bool:
    present = values.dropna()
    return bool(len(present)) and all(isinstance(v, (bool, np.bool_)) for v in present)


def _joined(values: pd.Series) -> str | None:
    """Distinct non-null values, in order, joined by ';' for people (None when all are null); never parsed back."""
    uniq = list(dict.fromkeys(str(v) for v in values if not (v is None or (isinstance(v, float) and math.isnan(v)))))
    return ";".join(uniq) if uniq else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and not pd.isna(value)
