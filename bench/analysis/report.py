"""Reports from run records: one pandas DataFrame, tables beside the paper's numbers, and plots.

Data flow (DESIGN.md): RUN_DIR/records/*.json (+ RUN_DIR/records/remeasured/*.json, whose newest per
cell gives the cell's latency, and RUN_DIR/cells.json for the pending cells) ->
`load_runs` (a row per record, config and metrics flattened) -> `aggregate` (a row per configuration,
seeds collapsed into mean, sample standard deviation with ddof=1, and count) -> `add_derived`
(stage GMACs, reductions and latency ratios against the baseline model) -> tables and plots.

Column names of the aggregated table: model options bare (`tokenizer`, `num_tokens`, ...), other
config sections dotted (`latency.device`, `train.dataset`), environment `env.*`; each numeric metric
`M` appears as `M` (mean over seeds), `M_std` (sample std, ddof=1; empty for a single seed) and `M_n`
(how many records had it). Reports are built from the records alone plus the shipped paper reference.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from bench.analysis import fidelity_report, speed_report
from bench.analysis.section import StudySection
from bench.analysis.stats import CONFIDENCE, mean_ci_halfwidth
from bench.core import tables as text_tables
from bench.core.errors import UsageError
from bench.core.records import (CorruptRecord, atomic_write, iter_records, latest_remeasurements, with_remeasurement,
                                write_text_atomic)
from bench.core.modelfacts import facts_of, family_of, family_order, is_baseline
from bench.core.tables import md_text

log = logging.getLogger(__name__)

SEED_KEYS = ("seed", "train.seed")
GROUP_ENV_KEYS = ("env.device_name",)  # latency on different hardware is never averaged together
EXPECTED_METRICS = {
    "complexity": {"cls": ("gmacs", "params_m"), "seg": ("gmacs", "params_m")},
    "latency": {"cls": ("latency_ms_p50", "throughput_img_s"), "seg": ("latency_ms_p50", "throughput_img_s")},
    "train": {"cls": ("top1",), "seg": ("miou",)},
}
BASELINE_KEYS_COMPLEXITY = ("input_size", "num_classes", "stem")
FORMATS = ("md", "csv", "html")


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


# --------------------------------------------------------------------------- loading

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
    metrics = []
    for key, value in latency_quality(record).items():
        name = key if key not in row else f"metric.{key}"
        if key == "latency_noise_reasons" and isinstance(value, list):
            value = "; ".join(value) if value else None  # text: aggregation joins seeds with ';'
        row[name] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
        metrics.append(name)
    row["finished_at"] = record.get("finished_at")
    row["duration_s"] = record.get("duration_s")
    return row, options, metrics


OLD_CPU_MEMORY_KINDS = ("process_peak_rss", "process_peak_rss_lifetime")  # before "rss_added" existed


def latency_quality(record: dict[str, Any]) -> dict[str, Any]:
    """A record's metrics with what the latency tables need, derived where the record predates it.

    - `latency_verdict` and friends: a record measured before verdicts were recorded is judged
      here by `bench.measure.latency.judge_latency` from what it has (warm-up, spread, rounds), and
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
        from bench.measure.latency import judge_latency

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


def _task(model: Any) -> str:
    """The model's task (the registry's; "cls" for a model it does not know), which picks the metrics expected."""
    return facts_of(model).task


def _missing_metrics(record: dict[str, Any]) -> list[str]:
    """Metrics that the cell's `measure` list promises but the record lacks (or holds as null)."""
    config, metrics = record["config"], record.get("metrics") or {}
    task = _task(config.get("model"))
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
            ok_records.append({**record, "run": run})
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
    cells = pd.DataFrame(rows)
    return RunData(cells=cells, errors=_frame(errors, ["run", "cell_id", "model", "cell", "error_type", "message",
                                          "metrics measured before the error", "path"]),
                   corrupt=_frame(corrupt, ["run", "path", "reason"]),
                   pending=_frame(pending, ["run", "cell_id", "model", "cell", "reason"]),
                   missing=_frame(missing, ["run", "cell_id", "model", "cell", "metric"]),
                   option_columns=list(options), metric_columns=list(metric_names), run_dirs=dirs, notes=notes,
                   configs=configs, records=ok_records)


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
    error = record.get("error") or {}
    kept = [k for k, v in (record.get("metrics") or {}).items() if v is not None]
    main = [k for k in ("gmacs", "params_m", "latency_ms_p50", "top1", "miou") if k in kept]
    more = len(kept) - len(main)
    return {"run": run, "cell_id": record["cell_id"], "model": record["config"].get("model"),
            "cell": _config_summary(record["config"]), "error_type": error.get("type", "?"),
            "message": error.get("message", ""), "metrics measured before the error": ", ".join(main) + (f" (+{more} more)" if more else ""),
            "path": str(path)}


def _pending_rows(run_dir: Path, seen: dict[str, str], notes: list[str]) -> list[dict[str, Any]]:
    """Cells listed in cells.json that have no ok/error record (none yet, or a corrupt one)."""
    cells = _read_cells_json(run_dir)
    if cells is None:
        notes.append(f"{run_dir.name}: no cells.json, so pending cells cannot be counted")
        return []
    rows = []
    for cell in cells:
        status = seen.get(cell["cell_id"])
        if status in ("ok", "error"):
            continue
        config = cell["config"] if isinstance(cell.get("config"), dict) else {}
        rows.append({"run": run_dir.name, "cell_id": cell["cell_id"], "model": config.get("model"),
                     "cell": _config_summary(config), "reason": status or "no record yet"})
    return rows


# --------------------------------------------------------------------------- aggregation

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
    """One row per configuration (config without seed, and device name); metrics mean, std (ddof=1), n."""
    cells = data.cells
    if cells.empty:
        return pd.DataFrame(columns=["group_id", "model", "n"])
    numeric = numeric_metrics(data)
    skip = set(data.metric_columns) | {"run", "cell_id", "finished_at", "duration_s"} | set(SEED_KEYS)
    config_cols = [c for c in cells.columns if c not in skip and not c.startswith("env.")]
    key_cols = config_cols + [c for c in GROUP_ENV_KEYS if c in cells.columns]
    keys = cells[key_cols].apply(lambda r: _json_key(r.values), axis=1)
    rows = [_aggregate_group(group, key, key_cols, numeric, data.metric_columns)
            for key, group in cells.groupby(keys, sort=False)]
    return _integer_columns(pd.DataFrame(rows), key_cols)


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
        else:
            row[name] = _joined(group[name])
    return row


def _joined(values: pd.Series) -> str | None:
    """Distinct non-null values, in order, joined by ';' (None when all are null)."""
    uniq = list(dict.fromkeys(str(v) for v in values if not (v is None or (isinstance(v, float) and math.isnan(v)))))
    return ";".join(uniq) if uniq else None


# --------------------------------------------------------------------------- derived columns

def baseline_of(model: str) -> str | None:
    """The baseline a VT model is compared with (the registry's: vt_resnet18 -> resnet18), else None."""
    return facts_of(model).baseline


def add_derived(agg: pd.DataFrame) -> pd.DataFrame:
    """Add stage GMACs/params, reductions against the baseline model, the latency ratio and its noise."""
    agg = agg.copy()
    if agg.empty:
        return agg
    agg["family"] = agg["model"].map(family_of)
    for kind in ("gmacs", "params_m"):
        agg[f"stage_{kind}"] = [_stage_value(row, kind) for _, row in agg.iterrows()]
    pairs = [("gmacs", "gmacs_reduction_x", BASELINE_KEYS_COMPLEXITY, True),
             ("stage_gmacs", "stage_gmacs_reduction_x", BASELINE_KEYS_COMPLEXITY, True),
             ("stage_params_m", "stage_params_reduction_x", BASELINE_KEYS_COMPLEXITY, True),
             ("latency_ms_p50", "latency_ratio_x", latency_baseline_keys(agg), False)]
    for metric, out, keys, inverse in pairs:
        if metric in agg.columns:
            agg[out] = _ratio_to_baseline(agg, metric, [k for k in keys if k in agg.columns], inverse)
    if "latency_ms_p50" in agg.columns:
        agg = _add_latency_noise(agg)
    return agg


def latency_baseline_keys(agg: pd.DataFrame) -> tuple[str, ...]:
    """What a VT row's latency baseline must share with it: input, classes, stem, every latency option, device."""
    return BASELINE_KEYS_COMPLEXITY + tuple(c for c in agg.columns if c.startswith("latency.")) + GROUP_ENV_KEYS


def accuracy_baseline_keys(agg: pd.DataFrame) -> tuple[str, ...]:
    """What a VT row's accuracy baseline must share with it: input, classes, stem and the training recipe."""
    return BASELINE_KEYS_COMPLEXITY + tuple(c for c in agg.columns if c.startswith("train."))


def baseline_positions(agg: pd.DataFrame, metric: str, keys: Iterable[str]) -> list[int | None]:
    """For each row, the position of its baseline row (same `keys`, `metric` present), or None."""
    keys = [k for k in keys if k in agg.columns]
    index: dict[tuple[str, str], int] = {}
    for pos, (_, row) in enumerate(agg.iterrows()):
        if metric in agg.columns and not pd.isna(row.get(metric)):
            index.setdefault((row["model"], _json_key(row[k] for k in keys)), pos)
    out = []
    for _, row in agg.iterrows():
        base = baseline_of(str(row["model"]))
        out.append(index.get((base, _json_key(row[k] for k in keys))) if base else None)
    return out


def _stage_value(row: pd.Series, kind: str) -> float:
    """The row's "stage" metric: the stage its model's family replaces or is replaced in (the registry's:
    ResNet stage 5, the VT stage, the FPN module); NaN for a model without one."""
    stage = facts_of(row["model"]).replaced
    value = row.get(f"{kind}_{stage}") if stage else None
    return float(value) if value is not None and not pd.isna(value) else np.nan


def _ratio_to_baseline(agg: pd.DataFrame, metric: str, keys: list[str], inverse: bool) -> list[float]:
    """baseline/value (a reduction, `inverse`) or value/baseline, matching the baseline on `keys`."""
    out = []
    for pos, base in enumerate(baseline_positions(agg, metric, keys)):
        value = agg[metric].iloc[pos]
        ref = agg[metric].iloc[base] if base is not None else None
        if ref is None or pd.isna(value) or not value or not ref:
            out.append(np.nan)
        else:
            out.append(float(ref) / float(value) if inverse else float(value) / float(ref))
    return out


def _true(value: Any) -> bool:
    """A table cell that holds a true flag (Python or numpy bool; None and NaN are not true)."""
    return isinstance(value, (bool, np.bool_)) and bool(value)


def _is_noisy(verdict: Any) -> bool:
    """A (seed-joined) `latency_verdict` cell holds 'noisy' for at least one record."""
    return isinstance(verdict, str) and "noisy" in verdict.split(";")


def _add_latency_noise(agg: pd.DataFrame) -> pd.DataFrame:
    """`latency_noisy` per row, `latency_ratio_noisy` when the row or its baseline is noisy, and the
    ratio's 95 % CI over interleaved rounds (`latency_ratio_ci_*`, see `ratio_ci_over_rounds`)."""
    verdicts = agg["latency_verdict"] if "latency_verdict" in agg.columns else pd.Series(None, index=agg.index)
    agg["latency_noisy"] = [_is_noisy(v) for v in verdicts]
    bases = baseline_positions(agg, "latency_ms_p50", latency_baseline_keys(agg))
    agg["latency_ratio_noisy"] = [bool(agg["latency_noisy"].iloc[p]) or (b is not None and bool(agg["latency_noisy"].iloc[b]))
                                  for p, b in enumerate(bases)]
    cis = [_rounds_ci(agg.iloc[p], agg.iloc[b]) if b is not None else None for p, b in enumerate(bases)]
    for key in ("ratio", "lo", "hi", "n", "paired", "resolved"):
        agg[f"latency_ratio_ci_{key}"] = [ci[key] if ci else None for ci in cis]
    return agg


# --------------------------------------------------------------------------- statistics

STAT_METRICS = (("top1", "top-1"), ("miou", "mIoU"))  # differences to the baseline, with a CI over seeds


def welch_ci(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int,
             confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Difference a - b of two means with Welch's t confidence interval (unequal variances).

    Returns `diff`, `lo`, `hi`, `df` and `resolved` (the interval excludes 0), with `note`
    saying why there is no interval: one seed on either side, or no spread at all (the
    Welch-Satterthwaite degrees of freedom are undefined). Without an interval it is never resolved.
    """
    from scipy import stats

    diff = float(mean_a) - float(mean_b)
    out = {"diff": diff, "lo": np.nan, "hi": np.nan, "df": np.nan, "resolved": False, "note": ""}
    if not (n_a >= 2 and n_b >= 2):
        out["note"] = f"{min(int(n_a), int(n_b))} seed" + ("s" if min(n_a, n_b) != 1 else "")
        return out
    var_a, var_b = float(std_a) ** 2 / n_a, float(std_b) ** 2 / n_b
    if var_a + var_b == 0:
        out["note"] = "no spread over seeds"
        return out
    df = (var_a + var_b) ** 2 / (var_a ** 2 / (n_a - 1) + var_b ** 2 / (n_b - 1))  # Welch-Satterthwaite
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(var_a + var_b)
    out.update(lo=diff - half, hi=diff + half, df=df, resolved=bool(diff - half > 0 or diff + half < 0))
    return out


def add_statistics(agg: pd.DataFrame) -> pd.DataFrame:
    """For top-1 and mIoU: each row's CI half-width over seeds (`M_ci95`) and, for VT rows, the
    difference to the baseline with Welch's 95 % CI (`M_diff`, `M_diff_lo`, `M_diff_hi`,
    `M_diff_df`, `M_resolved`, `M_diff_note`)."""
    agg = agg.copy()
    for metric, _ in STAT_METRICS:
        if metric not in agg.columns or agg[metric].isna().all():
            continue
        agg[f"{metric}_ci95"] = [mean_ci_halfwidth(s, n) for s, n in zip(agg[f"{metric}_std"], agg[f"{metric}_n"])]
        bases = baseline_positions(agg, metric, accuracy_baseline_keys(agg))
        results = []
        for pos, base in enumerate(bases):
            row = agg.iloc[pos]
            if base is None or pd.isna(row[metric]):
                results.append(None)
                continue
            ref = agg.iloc[base]
            results.append(welch_ci(row[metric], row[f"{metric}_std"], row[f"{metric}_n"],
                                    ref[metric], ref[f"{metric}_std"], ref[f"{metric}_n"]))
        for key, col in (("diff", "diff"), ("lo", "diff_lo"), ("hi", "diff_hi"), ("df", "diff_df"),
                         ("resolved", "resolved"), ("note", "diff_note")):
            agg[f"{metric}_{col}"] = [r[key] if r else None for r in results]
    return agg


def _round_values(value: Any) -> list[list[float]]:
    """The per-round p50 lists of a row: one JSON list per record, joined by ';' over seeds."""
    if not isinstance(value, str) or not value.strip():
        return []
    return [[float(v) for v in json.loads(part)] for part in value.split(";") if part.strip()]


def _rounds_ci(row: pd.Series, base: pd.Series) -> dict[str, Any] | None:
    """`ratio_ci_over_rounds` for a VT row and its baseline row (None unless both have rounds)."""
    vt_rounds, base_rounds = _round_values(row.get("latency_round_p50_ms")), _round_values(base.get("latency_round_p50_ms"))
    if not vt_rounds or not base_rounds:
        return None
    session, base_session = row.get("latency_session"), base.get("latency_session")
    # Rounds align only when both cells were timed, one record each, in the same interleave run.
    aligned = (len(vt_rounds) == len(base_rounds) == 1 and isinstance(session, str) and ";" not in session
               and session == base_session and len(vt_rounds[0]) == len(base_rounds[0]))
    return ratio_ci_over_rounds(sum(vt_rounds, []), sum(base_rounds, []), paired=aligned)


def ratio_ci_over_rounds(vt: list[float], base: list[float], *, paired: bool,
                         confidence: float = CONFIDENCE) -> dict[str, Any] | None:
    """Latency ratio vt / base over rounds with a t confidence interval, on the log scale.

    Paired (both timed in the same rounds): the geometric mean of the per-round ratios, with the
    t interval of the mean log ratio (n - 1 degrees of freedom). Unpaired: the ratio of geometric
    means with Welch's interval on the log latencies. A ratio is multiplicative, so logs make
    its interval symmetric. `resolved`: the interval excludes 1. None with fewer than 2 rounds.
    """
    from scipy import stats

    log_vt, log_base = np.log(np.asarray(vt, float)), np.log(np.asarray(base, float))
    if paired:
        d = log_vt - log_base
        n = len(d)
        if n < 2:
            return None
        center, sd = float(d.mean()), float(d.std(ddof=1))
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
        lo, hi = center - half, center + half
    else:
        n = min(len(log_vt), len(log_base))
        if n < 2:
            return None
        ci = welch_ci(log_vt.mean(), log_vt.std(ddof=1), len(log_vt), log_base.mean(), log_base.std(ddof=1),
                      len(log_base), confidence)
        center, lo, hi = ci["diff"], ci["lo"], ci["hi"]
        if pd.isna(lo):
            return None
    return {"ratio": math.exp(center), "lo": math.exp(lo), "hi": math.exp(hi), "n": n, "paired": paired,
            "resolved": bool(lo > 0 or hi < 0)}


# --------------------------------------------------------------------------- tables

def _family_rank(model: Any) -> tuple[int, int, int]:
    """Where a model sorts: its baseline's family (a baseline family and its VT family sit together:
    ResNet and VT-ResNet, then FPN and VT-FPN), its depth (0 unknown), then its own family, all from
    the registry, in its registration order; a model it does not know sorts last."""
    facts, order = facts_of(model), family_order()
    group = facts_of(facts.baseline).family if facts.baseline else facts.family
    return order.index(group), facts.depth or 0, order.index(facts.family)


def sort_rows(df: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Order rows by family (ResNet and VT-ResNet, then FPN and VT-FPN), then depth, then the setting a
    baseline shares with its VT rows (input size, classes, stem), baseline before VT, then the other
    given columns; a cell at the model's default (empty) comes before the values set explicitly."""
    if df.empty:
        return df
    by = [c for c in by or [] if c in df.columns]
    setting = [c for c in by if c in BASELINE_KEYS_COMPLEXITY]
    rest = [c for c in by if c not in setting]

    def key(i: int) -> tuple:
        row = df.iloc[i]
        group, depth, family = _family_rank(row["model"])
        return (group, depth, *[_sort_value(row[c]) for c in setting],
                family, str(row["model"]), *[_sort_value(row[c]) for c in rest])

    return df.iloc[sorted(range(len(df)), key=key)].reset_index(drop=True)


def _sort_value(value: Any) -> tuple[int, float, str]:
    """A sort key of one cell: missing first, then numbers (an input 'HxW' by its pixels), then text."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return (0, 0.0, "")
    if _is_number(value):
        return (1, float(value), "")
    text = str(value)
    pixels = _pixels(text)
    return (1, float(pixels), text) if pixels else (2, 0.0, text)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and not pd.isna(value)


def varying_columns(agg: pd.DataFrame, candidates: Iterable[str]) -> list[str]:
    """The candidate columns that take more than one value across the table (they tell rows apart)."""
    out = []
    for col in candidates:
        if col in agg.columns and agg[col].map(lambda v: _json_key([v])).nunique() > 1:
            out.append(col)
    return out


def fmt(value: Any, digits: int = 2) -> str:
    """A number with fixed digits, '' for a missing value."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, str):
        return value
    return f"{float(value):.{digits}f}"


def fmt_pm(mean: Any, std: Any, n: Any, digits: int = 2) -> str:
    """'mean ± std (n=k)' over k > 1 records; a single record is its value alone (no ±, no n)."""
    if mean is None or pd.isna(mean):
        return ""
    count = "" if n is None or pd.isna(n) or int(n) <= 1 else f" (n={int(n)})"
    spread = "" if std is None or pd.isna(std) else f" ± {float(std):.{digits}f}"
    return f"{float(mean):.{digits}f}{spread}{count}"


def _ratio(value: Any, base: bool) -> str:
    if base:
        return "baseline"
    return "" if value is None or pd.isna(value) else f"{float(value):.2f}x"


def _label_frame(rows: pd.DataFrame, label_cols: list[str]) -> pd.DataFrame:
    out = pd.DataFrame({"model": rows["model"].astype(str).values})
    for col in label_cols:
        out[col] = [option_text(m, col, v) for m, v in zip(rows["model"], rows[col])]
    return out


def option_text(model: Any, column: str, value: Any) -> str:
    """A label cell: the value set; where none was set, 'default (V)' with the model's default V
    (the registry's), or '' where the option does not apply to the model."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        defaults = model_defaults(str(model))
        name = column.removeprefix("model_args.")
        if name not in defaults:
            return ""
        return "default" if defaults[name] is None else f"default ({defaults[name]})"
    return fmt(value) if _is_number(value) and not float(value).is_integer() else str(value)


@functools.lru_cache(maxsize=None)
def model_defaults(model: str) -> dict[str, Any]:
    """The options of a registered model with their defaults; {} for a model the registry does not know."""
    return dict(facts_of(model).defaults)


def complexity_table(agg: pd.DataFrame, label_cols: list[str]) -> pd.DataFrame:
    """Model, GMACs, params, stage-5/VT/FPN-module GMACs and reductions against the baseline."""
    if "gmacs" not in agg.columns:
        return pd.DataFrame()
    rows = sort_rows(agg[agg["gmacs"].notna()], label_cols)
    rows = rows.drop_duplicates(subset=["model", *label_cols, "gmacs", "params_m"]) if "params_m" in rows else rows
    out = _label_frame(rows, label_cols)
    is_base = rows["model"].map(is_baseline).values
    out["GMACs"] = [fmt(v, 3) for v in rows["gmacs"]]
    out["params (M)"] = [fmt(v, 2) for v in rows.get("params_m", pd.Series(np.nan, index=rows.index))]
    out["stage GMACs (stage 5 / VT / FPN module)"] = [fmt(v, 3) for v in rows["stage_gmacs"]]
    out["total reduction vs baseline"] = [_ratio(v, b) for v, b in zip(rows.get("gmacs_reduction_x", [np.nan] * len(rows)), is_base)]
    out["stage reduction vs baseline"] = [_ratio(v, b) for v, b in zip(rows.get("stage_gmacs_reduction_x", [np.nan] * len(rows)), is_base)]
    if "counter_agree" in rows.columns and rows["counter_agree"].notna().any():
        out["counters (traced vs executed)"] = [counter_note(a, g) for a, g in
                                                zip(rows["counter_agree"], _column(rows, "counter_gap_pct"))]
    return out


def counter_note(agree: Any, gap_pct: Any) -> str:
    """'disagree by +1.48 %' where a record's `counter_agree` is False (fvcore's traced count vs the
    executed count), 'agree' where it is True, '' where the record predates the check."""
    if agree is None or (not isinstance(agree, str) and pd.isna(agree)):
        return ""
    if "False" in str(agree).split(";"):
        return f"disagree by {float(gap_pct):+.2f} %" if _is_number(gap_pct) else "disagree"
    return "agree"


def _column(rows: pd.DataFrame, name: str) -> pd.Series:
    return rows[name] if name in rows.columns else pd.Series(np.nan, index=rows.index)


def latency_settings(agg: pd.DataFrame) -> list[str]:
    """Columns that define one latency table: device, device name, dtype, batch and any varying knob."""
    fixed = ["latency.device", "env.device_name", "latency.dtype", "latency.batch_size"]
    others = [c for c in agg.columns if c.startswith("latency.") and c not in fixed]
    return [c for c in fixed if c in agg.columns] + varying_columns(agg, others)


def latency_tables(agg: pd.DataFrame, label_cols: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """One table per (device, dtype, batch, ...): p50 (p20-p80), throughput, peak memory, ratio to baseline."""
    if "latency_ms_p50" not in agg.columns:
        return []
    rows = agg[agg["latency_ms_p50"].notna()]
    settings = latency_settings(rows)
    tables = []
    for key, group in rows.groupby(rows[settings].apply(lambda r: _json_key(r.values), axis=1), sort=False):
        group = sort_rows(group, label_cols)
        title = " · ".join(f"{c.split('.', 1)[-1]}={v}" for c, v in zip(settings, json.loads(key)))
        tables.append((title, _latency_rows(group, label_cols)))
    return tables


def _latency_rows(group: pd.DataFrame, label_cols: list[str]) -> pd.DataFrame:
    out = _label_frame(group, label_cols)
    col = lambda name: _column(group, name)  # noqa: E731
    out["p50 ms (p20-p80)"] = [f"{fmt(m)} ({fmt(lo)}-{fmt(hi)})" if not pd.isna(m) else ""
                               for m, lo, hi in zip(col("latency_ms_p50"), col("latency_ms_p20"), col("latency_ms_p80"))]
    out["throughput (img/s)"] = [fmt(v, 1) for v in col("throughput_img_s")]
    out["memory added (MB)"] = [fmt(v, 1) for v in col("memory_added_mb")]
    out["process peak RSS (MB)"] = [fmt(v, 1) for v in col("memory_process_peak_mb")]
    if col("memory_cuda_peak_mb").notna().any():
        out["CUDA peak allocated (MB)"] = [fmt(v, 1) for v in col("memory_cuda_peak_mb")]
    out["batch used"] = [fmt(v, 0) for v in col("batch_size_used")]
    out["verdict"] = [verdict_text(v, r) for v, r in zip(col("latency_verdict"), col("latency_noise_reasons"))]
    if col("latency_from").notna().any():
        out["latency from"] = [latency_from_text(v, p) for v, p in zip(col("latency_from"), col("latency_protocol"))]
    is_base = group["model"].map(is_baseline).values
    out["p50 / baseline"] = [_noisy_ratio(v, b, n) for v, b, n in
                             zip(col("latency_ratio_x"), is_base, col("latency_ratio_noisy"))]
    if col("latency_ratio_ci_ratio").notna().any():
        out["ratio over rounds (95 % CI)"] = [_rounds_ci_text(row) for _, row in group.iterrows()]
    return out


def latency_from_text(source: Any, protocol: Any) -> str:
    """Where a row's latency comes from: a re-measurement ('interleaved re-measurement TIME, N rounds'),
    the record rewritten by an earlier interleave, or the record's single pass."""
    if isinstance(source, str) and source:
        return source
    return "record (interleaved in place)" if protocol == "interleaved" else "record (single pass)"


def verdict_text(verdict: Any, reasons: Any) -> str:
    """'ok', or 'noisy: reason; reason' for a latency row ('' where there is no verdict)."""
    if _is_noisy(verdict):
        return "noisy" + (f": {reasons}" if isinstance(reasons, str) and reasons else "")
    return "ok" if isinstance(verdict, str) and verdict else ""


def _noisy_ratio(value: Any, base: bool, noisy: Any) -> str:
    """The ratio to the baseline, '0.69x (noisy)' when it is built from a noisy row (either side)."""
    text = _ratio(value, base)
    return f"{text} (noisy)" if text and _true(noisy) and not base else text


def _rounds_ci_text(row: pd.Series) -> str:
    """'0.89x [0.84-0.95], resolved (paired, 5 rounds)' from the row's `latency_ratio_ci_*`."""
    ratio = row.get("latency_ratio_ci_ratio")
    if ratio is None or pd.isna(ratio):
        return ""
    word = "resolved" if _true(row.get("latency_ratio_ci_resolved")) else "not resolved"
    how = "paired" if _true(row.get("latency_ratio_ci_paired")) else "unpaired, Welch"
    noisy = " (noisy)" if _true(row.get("latency_ratio_noisy")) else ""
    return (f"{ratio:.2f}x [{row['latency_ratio_ci_lo']:.2f}-{row['latency_ratio_ci_hi']:.2f}], {word} "
            f"({how}, {int(row['latency_ratio_ci_n'])} rounds){noisy}")


ACCURACY_COLUMNS = (("top1", "top-1 (%)"), ("top5", "top-5 (%)"), ("miou", "mIoU (%)"),
                    ("pixel_acc", "pixel acc. (%)"))


def accuracy_table(agg: pd.DataFrame, label_cols: list[str]) -> pd.DataFrame:
    """Top-1 / mIoU as mean ± sample std (n) per configuration, with data set, epochs and input, and
    for top-1 and mIoU the difference to the baseline with its 95 % CI (Welch) and whether it is resolved."""
    present = [(m, title) for m, title in ACCURACY_COLUMNS if m in agg.columns and agg[m].notna().any()]
    if not present:
        return pd.DataFrame()
    rows = sort_rows(agg[agg[[m for m, _ in present]].notna().any(axis=1)], label_cols)
    out = _label_frame(rows, label_cols)
    for col, title in (("train.dataset", "data set"), ("train.epochs", "epochs")):
        if col in rows.columns and col not in label_cols:
            out[title] = [fmt(v, 0) if _is_number(v) else str(v) for v in rows[col]]
    for metric, title in present:
        out[title] = [fmt_pm(m, s, n) for m, s, n in zip(rows[metric], rows[f"{metric}_std"], rows[f"{metric}_n"])]
    is_base = rows["model"].map(is_baseline).values
    for metric, name in STAT_METRICS:
        if f"{metric}_diff" not in rows.columns:
            continue
        out[f"Δ {name} vs baseline (95 % CI, Welch)"] = [
            "baseline" if b and not pd.isna(m) else diff_text(r, metric) for (_, r), b, m in
            zip(rows.iterrows(), is_base, rows[metric])]
        out[f"Δ {name} resolved?"] = [resolved_text(r, metric) if not b else "" for (_, r), b in zip(rows.iterrows(), is_base)]
    if "gmacs" in rows.columns:
        out["GMACs"] = [fmt(v, 3) for v in rows["gmacs"]]
    return out


def diff_text(row: pd.Series, metric: str) -> str:
    """'+1.50 [-0.30, +3.30]' (points), or '+1.50 (no CI: 1 seed)'; '' without a baseline."""
    diff, lo, hi = row.get(f"{metric}_diff"), row.get(f"{metric}_diff_lo"), row.get(f"{metric}_diff_hi")
    if diff is None or pd.isna(diff):
        return ""
    if lo is None or pd.isna(lo):
        return f"{diff:+.2f} (no CI: {row.get(f'{metric}_diff_note') or 'too few seeds'})"
    return f"{diff:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def resolved_text(row: pd.Series, metric: str) -> str:
    """'yes' when the CI excludes 0, 'no' otherwise (with the reason where there is no CI)."""
    diff = row.get(f"{metric}_diff")
    if diff is None or pd.isna(diff):
        return ""
    if _true(row.get(f"{metric}_resolved")):
        return "yes"
    note = row.get(f"{metric}_diff_note")
    return f"no ({note})" if note else "no"


def cell_options(table: pd.DataFrame, option_columns: list[str]) -> dict[str, str]:
    """group_id -> the model options a configuration set explicitly ('' when none)."""
    out = {}
    for _, row in table.iterrows():
        opts = [f"{c}={row[c]}" for c in option_columns if c in table.columns and not pd.isna(row[c])]
        out[row["group_id"]] = ", ".join(opts) or "(defaults)"
    return out


def paper_table(comparison: pd.DataFrame, options: dict[str, str] | None = None) -> pd.DataFrame:
    """Paper vs measured, readable: delta = measured - paper, and in % of the paper's number."""
    if comparison.empty:
        return pd.DataFrame()
    digits = {"GMAC": 3, "M": 2, "%": 2, "x": 2}
    out = comparison[["table", "model", "variant", "metric", "unit", "input_size"]].copy()
    out.insert(3, "measured cell's options", comparison["group_id"].map(lambda g: (options or {}).get(g, "")))
    out["paper"] = [fmt(v, digits.get(u, 3)) for v, u in zip(comparison["paper"], comparison["unit"])]
    out["measured"] = [fmt_pm(v, s, n, digits.get(u, 3)) for v, s, n, u in
                       zip(comparison["measured"], comparison["measured_std"], comparison["n"], comparison["unit"])]
    out["delta"] = [f"{v:+.{digits.get(u, 3)}f}" for v, u in zip(comparison["delta"], comparison["unit"])]
    out["delta %"] = [f"{v:+.1f}%" if not pd.isna(v) else "" for v in comparison["delta_pct"]]
    return out


# --------------------------------------------------------------------------- rendering

def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub pipe table (`bench.core.tables`: tabulate, cells escaped, numbers right-aligned); '_none_' when empty."""
    return text_tables.markdown_table(df)


# --------------------------------------------------------------------------- the report

@dataclass
class Report:
    """What `write_report` built and wrote."""

    data: RunData
    table: pd.DataFrame                       # aggregated + derived: table.csv
    comparison: pd.DataFrame                  # paper vs measured (raw numbers)
    sections: list[tuple[str, Any]]           # (heading, markdown text or DataFrame) in order
    studies: list[StudySection] = field(default_factory=list)  # the studies' own sections, after those
    plots: list[Any] = field(default_factory=list)
    skipped_plots: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


PLOT_TITLES = {
    "accuracy_vs_gmacs": "Accuracy vs GMACs, Pareto front marked",
    "latency_vs_tokens": "Latency vs number of tokens, one line per tokenizer",
    "stage5_gmacs": "Stage-5 GMACs: ResNet vs VT-ResNet",
    "fpn_vs_vt_fpn": "FPN vs VT-FPN: GMACs, and mIoU where trained",  # drawn: plots.fpn_title says which
    "token_attention": "Tokenizer attention maps, one panel per token",
}


def parse_formats(text: str) -> list[str]:
    """'md,csv,html' -> ['md', 'csv', 'html']; an unknown format is a UsageError."""
    formats = [f.strip().lower() for f in str(text).split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise UsageError(f"unknown report format(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    return formats


def build_report(run_dirs: Iterable[str | Path]) -> Report:
    """Load the runs and build every table (nothing written yet)."""
    from bench.analysis.reference import compare

    data = load_runs(run_dirs)
    table = add_statistics(add_derived(aggregate(data)))
    label_cols = varying_columns(table, [*data.option_columns, "input_size"]) if not table.empty else []
    comparison = compare(table) if not table.empty else compare(pd.DataFrame(columns=["model"]))
    sections: list[tuple[str, Any]] = [
        ("Complexity", complexity_table(table, label_cols) if not table.empty else pd.DataFrame()),
        *[(f"Latency: {title}", df) for title, df in (latency_tables(table, label_cols) if not table.empty else [])],
        ("Accuracy", accuracy_table(table, label_cols) if not table.empty else pd.DataFrame()),
        ("Paper vs measured", paper_table(comparison, cell_options(table, data.option_columns)
                                          if not table.empty else {})),
    ]
    if not any(title.startswith("Latency") for title, _ in sections):
        sections.insert(1, ("Latency", pd.DataFrame()))
    return Report(data=data, table=table, comparison=comparison, sections=sections,
                  studies=study_sections(data, table))


def study_sections(data: RunData, table: pd.DataFrame) -> list[StudySection]:
    """The sections of the studies the records support (bench/analysis/section.py), in this order."""
    return [*speed_report.report_sections(data, table), *fidelity_report.report_sections(data, table)]


def draw_plots(report: Report, out_dir: Path) -> None:
    """Draw every plot whose data exist into OUT/plots; the others are listed with the reason."""
    table, label_cols = report.table, varying_columns(report.table, report.data.option_columns)
    drawn, skipped = report.plots, report.skipped_plots
    plot_dir = out_dir / "plots"
    _draw_each_plot(report, plot_dir, table, label_cols, drawn, skipped)
    # A plot skipped now must not survive from an earlier report. Removed only once every plot is
    # drawn (each replaced atomically), so a failure midway (a full disk) leaves the former plots
    # whole rather than deleted or truncated.
    for name in dict(skipped):
        for suffix in (".png", ".svg"):
            (plot_dir / f"{name}{suffix}").unlink(missing_ok=True)


def _draw_each_plot(report: Report, plot_dir: Path, table: pd.DataFrame, label_cols: list[str],
                    drawn: list[Any], skipped: list[tuple[str, str]]) -> None:
    from bench.analysis import plots

    if table.empty:
        skipped.extend((name, "no ok records") for name in PLOT_TITLES)
        return
    timed = table[table["latency_ms_p50"].notna()] if "latency_ms_p50" in table.columns else table.iloc[0:0]
    settings = latency_settings(timed) if not timed.empty else []
    plots.draw("accuracy_vs_gmacs", PLOT_TITLES["accuracy_vs_gmacs"], lambda: plots.plot_accuracy_vs_gmacs(table, label_cols), plot_dir, drawn, skipped)
    plots.draw("latency_vs_tokens", PLOT_TITLES["latency_vs_tokens"], lambda: plots.plot_latency_vs_tokens(table, settings), plot_dir, drawn, skipped)
    plots.draw("stage5_gmacs", PLOT_TITLES["stage5_gmacs"], lambda: plots.plot_stage5(table), plot_dir, drawn, skipped)
    plots.draw("fpn_vs_vt_fpn", plots.fpn_title(table), lambda: plots.plot_fpn(table), plot_dir, drawn, skipped)
    plots.draw("token_attention", PLOT_TITLES["token_attention"], lambda: _attention(report.data), plot_dir, drawn, skipped)


def attention_cell(data: RunData) -> tuple[dict[str, Any], Path | None] | None:
    """The VT cell whose tokenizer attention is drawn: one with a checkpoint first, classification first."""
    cells = data.cells
    if cells.empty:
        return None
    vt = cells[cells["model"].map(lambda m: family_of(m) in ("vt_resnet", "vt_fpn"))]
    candidates = []
    run_dirs = {d.name: d for d in data.run_dirs}
    for _, row in vt.iterrows():
        ckpt = run_dirs[row["run"]] / "cells" / row["cell_id"] / "checkpoint.pt"
        top1 = row.get("top1") if "top1" in row else None
        score = (not ckpt.exists(), family_of(row["model"]) != "vt_resnet",
                 -(float(top1) if top1 is not None and not pd.isna(top1) else -1.0),
                 _pixels(row.get("input_size")), facts_of(row["model"]).depth or 0)  # then the cheapest to draw
        candidates.append((score, row["cell_id"], ckpt if ckpt.exists() else None))
    if not candidates:
        return None
    _, cell_id, ckpt = min(candidates, key=lambda c: c[0])
    return data.configs[cell_id], ckpt


def _pixels(size: Any) -> int:
    """'224x224' -> 50176 (0 when unknown), to prefer small inputs."""
    try:
        height, width = str(size).split("x")
        return int(height) * int(width)
    except ValueError:
        return 0


def _attention(data: RunData):
    from bench.analysis.plots import PlotSkipped, plot_attention

    chosen = attention_cell(data)
    if chosen is None:
        raise PlotSkipped("no VT-ResNet or VT-FPN cell in the records")
    return plot_attention(*chosen)


def _header(report: Report) -> str:
    data = report.data
    cells = data.cells
    runs = ", ".join(d.name for d in data.run_dirs)
    devices = _joined(cells["env.device_name"]) if "env.device_name" in cells.columns else None
    hosts = _joined(cells["env.host"]) if "env.host" in cells.columns else None
    dates = sorted(str(v)[:10] for v in cells.get("finished_at", pd.Series(dtype=object)).dropna())
    when = f"{dates[0]} to {dates[-1]}" if dates and dates[0] != dates[-1] else (dates[0] if dates else "unknown")
    lines = [f"# vtbench report: {runs}", "",
             f"- records: {len(cells)} ok, {len(data.errors)} failed, {len(data.corrupt)} corrupt; "
             f"{len(data.pending)} pending cell(s); {len(data.missing)} missing metric(s)",
             f"- configurations (seeds aggregated): {len(report.table)}",
             f"- measured on: {devices or 'unknown'} (host(s): {hosts or 'unknown'}), {when}",
             f"- report written {pd.Timestamp.now(tz='UTC').strftime('%Y-%m-%d %H:%M UTC')} by `vtbench report`",
             "- mean ± std is the sample standard deviation over seeds (ddof=1), (n=k) the number of records,"
             " shown where there is more than one; GMACs are multiply-accumulates per image (the paper's FLOPs);"
             " reductions are baseline / VT (ResNet-N for VT-ResNet-N, FPN-RN for VT-FPN-RN, same input),"
             " latency ratios VT / baseline; 'default (V)' in an option column: the cell kept the model's"
             " default V, an empty option cell: the option does not apply to the model; rows are ordered by"
             " family (ResNet and VT-ResNet, then FPN and VT-FPN), depth and setting, baseline first"]
    lines += _method_lines(report.table)
    lines += [f"- note: {note}" for note in data.notes]
    return "\n".join(lines) + "\n"


def _method_lines(table: pd.DataFrame) -> list[str]:
    """Header bullets that say how the statistics, verdicts and memory figures in the tables are made."""
    from bench.measure.latency import NOISE_LOAD_MARGIN, NOISE_SPREAD_MAX, NOISE_STEAL_MAX_PCT

    lines = []
    if any(f"{m}_diff" in table.columns for m, _ in STAT_METRICS):
        lines.append("- accuracy vs baseline: Δ = VT mean - baseline mean in points, with a 95 % confidence interval"
                     " from Welch's t (unequal variances, Welch-Satterthwaite degrees of freedom) over seeds;"
                     " 'resolved' means the interval excludes 0; one seed on either side gives no interval and"
                     " is never resolved; plot error bars are the 95 % t interval of each mean")
    if "latency_verdict" in table.columns:
        lines.append(f"- latency verdict: a row is 'noisy' when its warm-up did not settle, its spread p80/p20 (or"
                     f" its rounds' p50 spread) exceeds {NOISE_SPREAD_MAX:g}, the 1-min load average before or"
                     f" after exceeds its threads + {NOISE_LOAD_MARGIN:g}, or steal time exceeds"
                     f" {NOISE_STEAL_MAX_PCT:g} % (bench/measure/latency.py); a ratio built from a noisy row (either"
                     f" side) is marked '(noisy)'")
        lines.append("- memory: 'memory added' is the peak RSS during the measurement minus the RSS just before it"
                     " (CPU); 'process peak RSS' is the whole process's peak beside it")
    if "latency_from" in table.columns and table["latency_from"].notna().any():
        lines.append("- latency from: a row marked 'interleaved re-measurement TIME, N rounds' takes its latency"
                     " columns (p50, throughput, memory, verdict, ratios) from the newest re-measurement of its"
                     " cell (records/remeasured/ID.N.json, written by `vtbench interleave` at TIME over N rounds),"
                     " and every other column (complexity, accuracy) from the cell's record (records/ID.json)")
    if "latency_ratio_ci_ratio" in table.columns and table["latency_ratio_ci_ratio"].notna().any():
        lines.append("- latency ratio over rounds (`vtbench interleave`): geometric mean of VT / baseline with a"
                     " 95 % t interval on log latencies, paired by round when both cells were timed in the same"
                     " interleave run (else Welch's t); 'resolved' means the interval excludes 1")
    if "counter_agree" in table.columns and table["counter_agree"].astype(str).str.contains("False").any():
        lines.append("- counters: some rows' traced (fvcore) and executed (FlopCounterMode) MAC counts disagree"
                     " by more than the complexity check allows; see the Complexity table's counters column")
    return lines


def _status_sections(data: RunData) -> list[tuple[str, pd.DataFrame]]:
    return [("Failed cells (error records)", data.errors.drop(columns=["path"])),
            ("Corrupt record files", data.corrupt),
            ("Pending cells (in cells.json, no record yet)", data.pending),
            ("Missing metrics (promised by the cell's `measure`, absent from its record)", data.missing)]


def render_markdown(report: Report, out_dir: Path) -> str:
    """report.md: header, tables, plots (linked) with the skipped ones and why, then the problem cells."""
    parts = [md_text(_header(report))]  # host and device names come from the records
    for title, df in report.sections:
        parts.append(f"## {title}\n\n{markdown_table(df)}")
    for study in report.studies:
        intro = f"{study.intro.strip()}\n\n" if study.intro.strip() else ""
        parts.append(f"## {study.title}\n\n{intro}{markdown_table(study.table)}")
    parts.append("## Plots\n")
    for plot in report.plots:
        parts.append(f"### {plot.title}\n\n![{plot.title}]({plot.png.relative_to(out_dir).as_posix()}) "
                     f"([SVG]({plot.svg.relative_to(out_dir).as_posix()}))\n")
    if report.skipped_plots:
        parts.append("Skipped plots:\n\n" + "\n".join(f"- {PLOT_TITLES.get(n, n)}: {md_text(why)}"
                                                      for n, why in report.skipped_plots) + "\n")
    parts.append("## Pending, failed and incomplete cells\n")
    for title, df in _status_sections(report.data):
        parts.append(f"### {title} ({len(df)})\n\n{markdown_table(df)}")
    return "\n".join(parts)


HTML_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}th,td{border:1px solid #ccc;padding:3px 7px}
th{background:#f0f0f0;text-align:left;vertical-align:bottom}td{font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee}code{background:#f4f4f4}"""
# Table cells and headers carry their column's alignment (bench/core/tables.py): numbers right, text left.


def render_html(report: Report) -> str:
    """One self-contained page: the same content as report.md, plots embedded as base64 PNG."""
    import base64
    import html

    body = [_header_html(report)]
    for title, df in report.sections:
        body.append(f"<h2>{html.escape(title)}</h2>" + _html_table(df))
    for study in report.studies:  # the intro is markdown: shown as preformatted text
        intro = f"<pre>{html.escape(study.intro.strip())}</pre>" if study.intro.strip() else ""
        body.append(f"<h2>{html.escape(study.title)}</h2>{intro}" + _html_table(study.table))
    body.append("<h2>Plots</h2>")
    for plot in report.plots:
        data = base64.b64encode(plot.png.read_bytes()).decode()
        body.append(f"<h3>{html.escape(plot.title)}</h3><img alt='{html.escape(plot.title)}' src='data:image/png;base64,{data}'>")
    if report.skipped_plots:
        body.append("<p>Skipped plots:</p><ul>" + "".join(
            f"<li>{html.escape(PLOT_TITLES.get(n, n))}: {html.escape(why)}</li>" for n, why in report.skipped_plots) + "</ul>")
    body.append("<h2>Pending, failed and incomplete cells</h2>")
    for title, df in _status_sections(report.data):
        body.append(f"<h3>{html.escape(title)} ({len(df)})</h3>" + _html_table(df))
    title = "vtbench report: " + ", ".join(d.name for d in report.data.run_dirs)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{HTML_STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def _header_html(report: Report) -> str:
    """The markdown header (a title and a bullet list) as HTML."""
    import html

    lines = _header(report).splitlines()
    items = "".join(f"<li>{html.escape(line[2:])}</li>" for line in lines if line.startswith("- "))
    return f"<h1>{html.escape(lines[0].lstrip('# '))}</h1><ul>{items}</ul>"


def _html_table(df: pd.DataFrame) -> str:
    return text_tables.html_table(df)


def default_out_dir(run_dirs: list[str | Path], out: str | Path | None) -> Path:
    """--out, or RUN/report for a single run; several runs need --out."""
    if out is not None:
        return Path(out)
    if len(run_dirs) != 1:
        raise UsageError("several runs need --out DIR for the combined report")
    return Path(run_dirs[0]) / "report"


def write_report(run_dirs: list[str | Path], out: str | Path | None = None,
                 formats: Iterable[str] = FORMATS) -> Report:
    """Build the report of the runs and write table.csv, cells.csv, report.md, report.html and plots.

    Every file is written to a temp file beside it and renamed into place, so a full disk or a
    kill midway leaves the former report's files whole instead of truncated.
    """
    formats = list(formats)
    out_dir = default_out_dir(run_dirs, out)
    report = build_report(run_dirs)
    out_dir.mkdir(parents=True, exist_ok=True)
    if "csv" in formats:
        report.files["table.csv"] = _write_csv(report.table, out_dir / "table.csv")
        report.files["cells.csv"] = _write_csv(report.data.cells, out_dir / "cells.csv")
        report.files["paper_vs_measured.csv"] = _write_csv(report.comparison, out_dir / "paper_vs_measured.csv")
        for study in report.studies:
            if study.csv_name:
                report.files[study.csv_name] = _write_csv(study.csv_frame(), out_dir / study.csv_name)
    if "md" in formats or "html" in formats:
        draw_plots(report, out_dir)
    if "md" in formats:
        report.files["report.md"] = write_text_atomic(out_dir / "report.md", render_markdown(report, out_dir))
    if "html" in formats:
        report.files["report.html"] = write_text_atomic(out_dir / "report.html", render_html(report))
    log.info("report of %d record(s) written to %s (%s)", len(report.data.cells), out_dir, ", ".join(report.files))
    return report


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    with atomic_write(path) as handle:
        df.to_csv(handle, index=False)
    return path
