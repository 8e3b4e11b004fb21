"""Tables: the aggregated frame (`bench.analysis.load`) and the comparisons (`bench.analysis.compare`)
as the frames a report shows (complexity, latency, accuracy, paper vs measured) and the summary.

No statistics here: every ratio, interval and verdict beside a baseline comes from
`bench.analysis.compare`, once per pair; these functions choose rows, columns, order and digits.
Torch-free.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable

import numpy as np
import pandas as pd

from bench.analysis import compare
from bench.analysis.compare import Comparison, Group, LatencyPair, mean_ci_halfwidth
from bench.analysis.facts import defaults_of, facts_of, family_rank, is_baseline
from bench.analysis.load import _is_number, _json_key, input_size_label

BASELINE_KEYS_COMPLEXITY = ("input_size", "num_classes", "stem")
STAT_METRICS = (("top1", "top-1"), ("miou", "mIoU"))  # differences to the baseline, with an interval over seeds
LATENCY_RATIO_TITLE = "latency ratio VT / baseline [95 % CI]"


# --------------------------------------------------------------------------- derived columns

def add_derived(agg: pd.DataFrame, groups: list[Group]) -> pd.DataFrame:
    """Stage GMACs/params and the reductions against the baseline (paired by `compare.complexity_pairs`)."""
    agg = agg.copy()
    if agg.empty:
        return agg
    for kind in ("gmacs", "params_m"):
        agg[f"stage_{kind}"] = [_stage_value(row, kind) for _, row in agg.iterrows()]
    bases = compare.complexity_pairs(groups)
    position = {g: i for i, g in enumerate(agg["group_id"])}
    for metric, out in (("gmacs", "gmacs_reduction_x"), ("stage_gmacs", "stage_gmacs_reduction_x"),
                        ("stage_params_m", "stage_params_reduction_x")):
        if metric in agg.columns:
            agg[out] = [_reduction(agg, metric, position, gid, bases) for gid in agg["group_id"]]
    return agg


def _reduction(agg: pd.DataFrame, metric: str, position: dict[str, int], group_id: str,
               bases: dict[str, Group]) -> float:
    """baseline / VT of a counted metric (the paper's "reduction"), NaN without a baseline."""
    base = bases.get(group_id)
    if base is None or base.group_id not in position:
        return np.nan
    value, ref = agg[metric].iloc[position[group_id]], agg[metric].iloc[position[base.group_id]]
    if pd.isna(value) or pd.isna(ref) or not value or not ref:
        return np.nan
    return float(ref) / float(value)


def add_comparisons(agg: pd.DataFrame, latency: list[LatencyPair], accuracy: dict[str, dict[str, Comparison]]) -> pd.DataFrame:
    """The comparisons' numbers as columns of table.csv, on each VT row (empty elsewhere)."""
    agg = agg.copy()
    if agg.empty:
        return agg
    by_group = {p.vt.group_id: p for p in latency}
    cols: dict[str, list[Any]] = {}
    for gid in agg["group_id"]:
        pair = by_group.get(gid)
        row = _comparison_columns("latency_ratio", pair.versus_one if pair else None)
        row["latency_ratio_macs_ratio"] = pair.macs_ratio if pair else None
        row["baseline_latency_ms_p50"] = pair.versus_one.extra.get("base_ms_p50") if pair else None
        row["latency_ratio_target"] = (compare.verdict_text(pair.target) if pair and pair.target else None)
        for metric, comps in accuracy.items():
            row.update(_comparison_columns(f"{metric}_diff", comps.get(gid)))
        for key, value in row.items():
            cols.setdefault(key, []).append(value)
    for key, values in cols.items():
        agg[key] = values
    for metric, _ in STAT_METRICS:  # each mean's own interval over seeds (the plots' error bars)
        if metric in agg.columns and f"{metric}_std" in agg.columns:
            agg[f"{metric}_ci95"] = [mean_ci_halfwidth(s, n) for s, n in zip(agg[f"{metric}_std"], agg[f"{metric}_n"])]
    return agg


def _comparison_columns(prefix: str, c: Comparison | None) -> dict[str, Any]:
    est = c.estimate if c else None
    return {prefix: est.value if est else None, f"{prefix}_lo": est.lo if est else None,
            f"{prefix}_hi": est.hi if est else None, f"{prefix}_n": est.n if est else None,
            f"{prefix}_method": est.method if est else None, f"{prefix}_p_holm": c.p_holm if c else None,
            f"{prefix}_verdict": compare.verdict_text(c) if c else None, f"{prefix}_needed": c.needed if c else None}


def pixels_of(size: Any) -> int:
    """'224x224' -> 50176 (0 when unknown), to prefer small inputs."""
    try:
        height, width = str(size).split("x")
        return int(height) * int(width)
    except ValueError:
        return 0


def _stage_value(row: pd.Series, kind: str) -> float:
    """The row's "stage" metric: the stage its model's family replaces or is replaced in (the registry's:
    ResNet stage 5, the VT stage, the FPN module); NaN for a model without one."""
    stage = facts_of(row["model"]).replaced
    value = row.get(f"{kind}_{stage}") if stage else None
    return float(value) if value is not None and not pd.isna(value) else np.nan



# --------------------------------------------------------------------------- tables

def _family_rank(model: Any) -> tuple:
    """Where a model sorts (`bench.analysis.facts.family_rank`): a baseline family and its VT family together
    (ResNet and VT-ResNet, then FPN and VT-FPN), by depth, baseline first."""
    return family_rank(model)


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
        group, depth, is_vt = _family_rank(row["model"])
        return (group, depth, *[sort_value(row[c]) for c in setting],
                is_vt, str(row["model"]), *[sort_value(row[c]) for c in rest])

    return df.iloc[sorted(range(len(df)), key=key)].reset_index(drop=True)


def sort_value(value: Any) -> tuple[int, float, str]:
    """A sort key of one cell: missing first, then numbers (an input 'HxW' by its pixels), then text."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return (0, 0.0, "")
    if _is_number(value):
        return (1, float(value), "")
    text = str(value)
    pixels = pixels_of(text)
    return (1, float(pixels), text) if pixels else (2, 0.0, text)


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
        if defaults is None:
            return "default"  # the model's defaults cannot be known in this process (no registry)
        if name not in defaults:
            return ""
        return "default" if defaults[name] is None else f"default ({defaults[name]})"
    return fmt(value) if _is_number(value) and not float(value).is_integer() else str(value)


def model_defaults(model: str) -> dict[str, Any] | None:
    """The model's options with their defaults (`bench.analysis.facts`); None where not known here."""
    defaults = defaults_of(model)
    return dict(defaults) if defaults is not None else None


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
    if agree is None or (not isinstance(agree, (str, bool, np.bool_)) and pd.isna(agree)):
        return ""
    if agree is False or agree is np.False_:
        return f"disagree by {float(gap_pct):+.2f} %" if _is_number(gap_pct) else "disagree"
    return "agree"


def _column(rows: pd.DataFrame, name: str) -> pd.Series:
    return rows[name] if name in rows.columns else pd.Series(np.nan, index=rows.index)


# The knobs `latency_mode` names: every table's heading says them, whether or not they vary.
MODE_KEYS = ("latency.compile", "latency.cuda_graphs", "latency.channels_last", "latency.flush_l2")


def latency_settings(agg: pd.DataFrame) -> list[str]:
    """Columns that define one latency table: device, device name, dtype, batch and any varying knob."""
    fixed = ["latency.device", "env.device_name", "latency.dtype", "latency.batch_size", *MODE_KEYS]
    others = [c for c in agg.columns if c.startswith("latency.") and c not in fixed]
    return [c for c in fixed if c in agg.columns] + varying_columns(agg, others)


def latency_tables(agg: pd.DataFrame, label_cols: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """One table per (device, dtype, batch, ...): p50 (p20-p80), throughput, peak memory, ratio to baseline."""
    if "latency_ms_p50" not in agg.columns:
        return []
    rows = with_latency_defaults(agg[agg["latency_ms_p50"].notna()])
    settings = latency_settings(rows)
    tables = []
    for key, group in rows.groupby(rows[settings].apply(lambda r: _json_key(r.values), axis=1), sort=False):
        group = sort_rows(group, label_cols)
        setting = dict(zip(settings, json.loads(key)))
        tables.append((setting_order(setting), latency_title(setting), _latency_rows(group, label_cols)))
    return [(title, table) for _, title, table in sorted(tables, key=lambda t: t[0])]


def with_latency_defaults(agg: pd.DataFrame) -> pd.DataFrame:
    """The frame with each unset latency option (`latency.*`) at the contract's default, so that a cell
    that left `flush_l2` unset and one that set it false are one setting."""
    agg = agg.copy()
    for column in [c for c in agg.columns if c.startswith("latency.")]:
        default = compare.LATENCY_DEFAULTS.get(column.split(".", 1)[1])
        if default is not None:
            agg[column] = agg[column].map(lambda v: default if _missing_text(v) else v)
    return agg


def setting_order(setting: dict[str, Any]) -> tuple:
    """Latency tables by device, device name, dtype, batch, then eager before compiled (as the summary)."""
    batch = setting.get("latency.batch_size")
    mode = latency_mode({k.split(".", 1)[1]: v for k, v in setting.items() if k in MODE_KEYS})
    return (str(setting.get("latency.device")), str(setting.get("env.device_name")), str(setting.get("latency.dtype")),
            float(batch) if _is_number(batch) else 0.0, mode != "eager", mode, json.dumps(setting, default=str))




def latency_title(setting: dict[str, Any]) -> str:
    """A latency table's heading in the words every other part of the report uses for the setting:
    'cpu · AMD EPYC · fp32 · batch 1 · compile · warmup_max_s=3' (the mode as `latency_mode` names it)."""
    words = [str(setting[k]) for k in ("latency.device", "env.device_name", "latency.dtype") if setting.get(k) is not None]
    if setting.get("latency.batch_size") is not None:
        words.append(f"batch {setting['latency.batch_size']}")
    words.append(latency_mode({k.split(".", 1)[1]: v for k, v in setting.items() if k in MODE_KEYS}))
    words += [f"{k.split('.', 1)[1]}={v}" for k, v in setting.items()
              if k not in (*MODE_KEYS, "latency.device", "env.device_name", "latency.dtype", "latency.batch_size")]
    return " · ".join(words)


def latency_mode(latency: dict[str, Any]) -> str:
    """'eager', 'compile' (mode default), 'compile max-autotune', with '+ CUDA graphs', '+ channels_last'
    and '+ flush L2' (every timed iteration started with a cold L2 cache)."""
    compile_mode = latency.get("compile")
    parts = [("compile" if compile_mode == "default" else f"compile {compile_mode}")
             if compile_mode not in (None, "None", False) and not _missing_text(compile_mode) else "eager"]
    for key, words in (("cuda_graphs", "CUDA graphs"), ("channels_last", "channels_last"), ("flush_l2", "flush L2")):
        if latency.get(key) in (True, "True"):
            parts.append(words)
    return " + ".join(parts)


def _missing_text(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _latency_rows(group: pd.DataFrame, label_cols: list[str]) -> pd.DataFrame:
    """Each configuration's own timing; the ratio to its baseline is in the comparison section only."""
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
    out["noise"] = [noise_text(v, r) for v, r in zip(col("latency_verdict"), col("latency_noise_reasons"))]
    if col("latency_from").notna().any():
        out["latency from"] = [latency_from_text(v, p) for v, p in zip(col("latency_from"), col("latency_protocol"))]
    return out


def latency_from_text(source: Any, protocol: Any) -> str:
    """Where a row's latency comes from: a re-measurement ('interleaved re-measurement TIME, N rounds'),
    the record rewritten by an earlier interleave, or the record's single pass."""
    if isinstance(source, str) and source:
        return source
    return "record (interleaved in place)" if protocol == "interleaved" else "record (single pass)"


def noise_text(verdict: Any, reasons: Any) -> str:
    """'ok', or 'noisy: reason; reason' for a latency row ('' where it was not judged)."""
    if isinstance(verdict, str) and "noisy" in verdict.split(";"):
        return "noisy" + (f": {reasons}" if isinstance(reasons, str) and reasons else "")
    return "ok" if isinstance(verdict, str) and verdict else ""


ACCURACY_COLUMNS = (("top1", "top-1 (%)"), ("top5", "top-5 (%)"), ("miou", "mIoU (%)"),
                    ("pixel_acc", "pixel acc. (%)"))
TRAIN_COLUMNS = (("train.dataset", "data set"), ("train.epochs", "epochs"))


def accuracy_intro(accuracy: dict[str, dict[str, Comparison]]) -> str:
    """The accuracy table's caption: the statistic, the minimum seeds and the Holm family."""
    comps = [c for found in accuracy.values() for c in found.values()]
    if not comps:
        return ""
    return (f"Δ = VT - baseline in points, paired by seed on the seeds both sides hold (all of them, or at least "
            f"{compare.MIN_SEEDS} in common while a grid runs: then Δ is over those seeds), else Welch's t; 95 % t "
            f"intervals; an interval and a verdict need at least {compare.MIN_SEEDS} seeds per "
            f"side. " + " ".join(compare.holm_caption(list(found.values()), f"Δ {dict(STAT_METRICS)[m]}")
                                  for m, found in accuracy.items() if found)
            + " 'To resolve': the seeds at which a difference of the observed size, at the observed spread, would "
              f"be resolved with {100 * compare.POWER:.0f} % power at the table's strictest Holm level (alpha / m, m the "
              f"rows tested together once each has its seeds).")


def accuracy_table(agg: pd.DataFrame, label_cols: list[str]) -> pd.DataFrame:
    """Top-1 / mIoU as mean ± sample std (n) per configuration, with data set and epochs, and on each VT
    row its difference to the baseline from `bench.analysis.compare` (interval, verdict, seeds needed)."""
    present = [(m, title) for m, title in ACCURACY_COLUMNS if m in agg.columns and agg[m].notna().any()]
    if not present:
        return pd.DataFrame()
    # the data set and schedule sort within a configuration, so one init's 3 and 8 epochs sit in that order
    rows = sort_rows(agg[agg[[m for m, _ in present]].notna().any(axis=1)],
                     [*label_cols, *(c for c, _ in TRAIN_COLUMNS if c not in label_cols)])
    out = _label_frame(rows, label_cols)
    for col, title in TRAIN_COLUMNS:
        if col in rows.columns and col not in label_cols:
            out[title] = [fmt(v, 0) if _is_number(v) else str(v) for v in rows[col]]
    for metric, title in present:
        out[title] = [fmt_pm(m, s, n) for m, s, n in zip(rows[metric], rows[f"{metric}_std"], rows[f"{metric}_n"])]
    is_base = rows["model"].map(is_baseline).values
    for metric, name in STAT_METRICS:
        if f"{metric}_diff" not in rows.columns or rows[f"{metric}_diff"].isna().all():
            continue
        out[f"Δ {name} vs baseline, points [95 % CI]"] = [
            "baseline" if b and not pd.isna(m) else diff_text(r, metric)
            for (_, r), b, m in zip(rows.iterrows(), is_base, rows[metric])]
        out[f"Δ {name} verdict"] = [_cell(r.get(f"{metric}_diff_verdict")) for _, r in rows.iterrows()]
        if rows[f"{metric}_diff_needed"].notna().any():
            out[f"Δ {name}: to resolve"] = [_cell(r.get(f"{metric}_diff_needed")) for _, r in rows.iterrows()]
    if "gmacs" in rows.columns:
        out["GMACs"] = [fmt(v, 3) for v in rows["gmacs"]]
    return out


def _cell(value: Any) -> str:
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def diff_text(row: pd.Series, metric: str) -> str:
    """'+1.50 [-0.30, +3.30] (paired by seed, 3 seeds)', '... (paired on the 4 seeds both sides hold)' or
    '+1.50 (Welch, no interval)'; '' without a baseline."""
    diff = row.get(f"{metric}_diff")
    if diff is None or pd.isna(diff):
        return ""
    lo, hi, n, method = (row.get(f"{metric}_diff_{k}") for k in ("lo", "hi", "n", "method"))
    how = "paired by seed" if method in (compare.PAIRED_LABEL, compare.PAIRED_COMMON_LABEL) else "Welch"
    if lo is None or pd.isna(lo):
        return f"{diff:+.2f} ({how}, no interval)"
    if method == compare.PAIRED_COMMON_LABEL:
        return f"{diff:+.2f} [{lo:+.2f}, {hi:+.2f}] (paired on the {int(n)} seeds both sides hold)"
    return f"{diff:+.2f} [{lo:+.2f}, {hi:+.2f}] ({how}, {int(n)} seeds)"


def shared_options(agg: pd.DataFrame, option_columns: list[str]) -> str:
    """'input_size=32x32, num_classes=10, stem=cifar, width=0.25': the model options (and input) that hold one
    value in every configuration, which the tables' label columns therefore leave out ('' for none)."""
    shown = set(varying_columns(agg, [*option_columns, "input_size"]))
    out = []
    for col in ["input_size", *option_columns]:
        if col in agg.columns and col not in shown and agg[col].notna().any():
            value = agg[col].dropna().iloc[0]
            out.append(f"{col.removeprefix('model_args.')}={fmt(value) if _is_number(value) and not float(value).is_integer() else value}")
    return ", ".join(out)


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
    # Cells that differ only in a setting the paper's number does not depend on (latency batch, compile)
    # measure the same figure: shown once.
    return out.drop_duplicates().reset_index(drop=True)




# --------------------------------------------------------------------------- the summary

def _headline(vt: Group, base: Group) -> bool:
    """A VT configuration at its model's defaults: every option it sets that its baseline does not share
    holds the VT model's default value."""
    shared = set(base.args) | set(base.facts.defaults or {})
    defaults = vt.facts.defaults or {}
    return all(key in shared or (key in defaults and defaults[key] == value) for key, value in vt.args.items())


MAX_STUDY_HEADLINES = 3    # a run with no VT configuration at its defaults heads with at most this many


def _headline_ids(vt_ids: list[str], by_id: dict[str, Group], base_of: dict[str, Group | None],
                  measured: set[str]) -> set[str]:
    """The VT configurations the summary opens with: those at their model's defaults; where a VT model
    and input have none (a study that sets, say, token_channels for a narrow trunk), the few that were
    compared beyond MACs (timed or trained beside their baseline), named with their options."""
    chosen: set[str] = set()
    by_model: dict[tuple, list[str]] = {}
    for gid in vt_ids:
        base = base_of.get(gid)
        if base is not None:
            by_model.setdefault((by_id[gid].model, _input(by_id[gid])), []).append(gid)
    for ids in by_model.values():
        at_defaults = [gid for gid in ids if _headline(by_id[gid], base_of[gid])]
        compared = [gid for gid in ids if gid in measured]
        if at_defaults:
            chosen.update(at_defaults)
        elif 0 < len(compared) <= MAX_STUDY_HEADLINES:
            chosen.update(compared)
    return chosen


def summary_lines(groups: list[Group], latency: list[LatencyPair], accuracy: dict[str, dict[str, Comparison]]) -> list[str]:
    """The opening lines: for each VT model at its defaults beside its baseline (or, where none is at
    its defaults, the few configurations compared beyond MACs), the MACs ratio, the latency ratio with
    its verdict or why there is none, and the accuracy difference with its interval or why there is
    none (all from `bench.analysis.compare`); then how many other pairs the tables hold."""
    bases = compare.complexity_pairs(groups)
    by_id = {g.group_id: g for g in groups}
    measured = {p.vt.group_id for p in latency} | {gid for comps in accuracy.values() for gid in comps}
    vt_ids = list(dict.fromkeys([*bases, *(p.vt.group_id for p in latency),
                                 *(gid for comps in accuracy.values() for gid in comps)]))
    vt_ids.sort(key=lambda gid: (family_rank(by_id[gid].model), pixels_of(_input(by_id[gid]))))
    base_of = {gid: bases.get(gid) or next((p.base for p in latency if p.vt.group_id == gid), None)
               for gid in vt_ids}
    headlines = _headline_ids(vt_ids, by_id, base_of, measured)
    lines, others = [], 0
    seen: set[tuple] = set()
    for gid in vt_ids:
        vt = by_id[gid]
        base = base_of[gid]
        if gid not in headlines:
            others += 1
            continue
        key = (vt.model, base.model, _input(vt), _train_key(vt))
        if key in seen:
            continue
        seen.add(key)
        lines.append(_summary_line(vt, base, [p for p in latency if _same_model_setting(p.vt, vt)],
                                   {m: c for m, comps in accuracy.items()
                                    for g, c in comps.items() if _same_model_setting(by_id[g], vt)}))
    if others:
        lines.append(f"{others} other VT configuration(s) (options set away from the model's defaults) are "
                     f"compared in the tables below.")
    return lines


def _input(group: Group) -> str:
    return input_size_label(group.config.get("input_size")) or "?"


def _train_key(group: Group) -> str:
    train = dict(group.config.get("train") or {})
    train.pop("seed", None)
    return json.dumps(train, sort_keys=True, default=str)


def _same_model_setting(a: Group, b: Group) -> bool:
    return a.model == b.model and a.args == b.args and _input(a) == _input(b)


def _summary_line(vt: Group, base: Group, latency: list[LatencyPair], accuracy: dict[str, Comparison]) -> str:
    """One pair's summary: a line, then indented lines (two spaces) for each latency setting and metric."""
    macs = compare.macs_ratio(vt, base)
    lines = [f"{vt.model}{_set_options(vt, base)} vs {base.model} (input {_input(vt)}): "
             + (f"MACs ratio VT / baseline {macs:.3f}" if macs else "MACs not measured")]
    for pair in sorted(latency, key=_latency_order):
        same_reason = pair.target is not None and pair.target.verdict is None and \
            pair.target.why_no_verdict == pair.versus_one.why_no_verdict  # said once
        target = (f"; target (latency ratio below the MACs ratio {pair.macs_ratio:.3f}): "
                  f"{compare.verdict_text(pair.target)}" if pair.target and not same_reason else "")
        lines.append(f"  latency ratio VT / baseline at {_latency_label(pair.vt.config)}: "
                     f"{compare.ratio_text(pair.estimate)}, {compare.verdict_text(pair.versus_one)}{target}")
    if not latency:
        lines.append("  latency: not timed side by side at the same settings")
    for metric, c in accuracy.items():
        name = dict(STAT_METRICS).get(metric, metric)
        diff = compare.difference_text(c.estimate) if c.estimate.has_interval else f"{c.estimate.value:+.2f}"
        lines.append(f"  {name} difference VT - baseline, points: {diff}, {compare.verdict_text(c)}")
    if not accuracy:
        lines.append("  accuracy: no trained pair (only one side, or neither, was trained at the same recipe)")
    return "\n".join(lines)


def _set_options(vt: Group, base: Group) -> str:
    """The options a headline VT configuration sets away from its defaults, e.g. " (token_channels=256)"."""
    if _headline(vt, base):
        return ""
    shared = set(base.args) | set(base.facts.defaults or {})
    defaults = vt.facts.defaults or {}
    own = [f"{k}={v}" for k, v in sorted(vt.args.items())
           if k not in shared and not (k in defaults and defaults[k] == v)]
    return f" ({', '.join(own)})" if own else ""


def _latency_order(pair: LatencyPair) -> tuple:
    """Summary lines by device, dtype, batch, then eager before compiled."""
    latency = {**compare.LATENCY_DEFAULTS, **(pair.vt.config.get("latency") or {})}
    mode = latency_mode(latency)
    return str(latency["device"]), str(latency["dtype"]), int(latency["batch_size"]), mode != "eager", mode


def _latency_label(config: dict[str, Any]) -> str:
    latency = {**compare.LATENCY_DEFAULTS, **(config.get("latency") or {})}
    return f"{latency['device']} {latency['dtype']} batch {latency['batch_size']} {latency_mode(latency)}"
