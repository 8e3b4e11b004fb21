"""The VT vs baseline latency section of `vtbench report` (bench/analysis/section.py): do the VT
models' MAC savings become latency savings?

Every pair comes from `bench.analysis.compare.latency_pairs`: each VT configuration beside its
registry baseline's at identical latency settings, its one latency ratio (the geometric mean of the
per-round VT/baseline ratios over interleaved rounds, with a 95 % t interval on log ratios; the p50
ratio, "single pass, no interval", where there are no paired rounds), tested against 1 and against
the MACs ratio (the target: met / missed / not resolved), Holm-adjusted across the table's rows, and
no verdict where a measurement behind it is noisy or there are too few rounds (docs/statistics.md).

With ceilings (`peak_gemm_tflops`): each side's achieved TFLOP/s, 2 x MACs x batch / p50, and its
fraction of the measured GEMM ceiling. With stage times (`stage_ms_<stage>`): a second section, the
median time per stage and its share. The sections' CSVs (speed.csv, speed_stages.csv) hold the raw
numbers. This is the report's only VT / baseline latency ratio: the latency tables show each
configuration's own timing. Where a VT model was also timed in another attention form
(`attention_impl`), a third section gives the ratio form / reference of the same model
(`compare.form_pairs`, the same statistic). Torch-free.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.analysis import compare
from bench.analysis.compare import LatencyPair
from bench.analysis.load import input_size_label
from bench.analysis.section import StudySection
from bench.analysis.tables import latency_mode, sort_value

STAGE_PREFIX = "stage_ms_"
CSV_NAME, STAGES_CSV_NAME = "speed.csv", "speed_stages.csv"
TITLE = "VT vs baseline: latency"
RATIO_COLUMN = "latency ratio VT / baseline [95 % CI]"


def report_sections(data: Any, table: pd.DataFrame) -> list[StudySection]:
    """The latency comparison section (when any VT configuration has its baseline) and the stage times."""
    pairs = sorted(latency_pairs_of(data), key=_pair_order)
    sections = []
    if pairs:
        rows = [pair_summary(p) for p in pairs]
        shown = pd.DataFrame([pair_cells(r) for r in rows])
        if not any(r["vt_options"] for r in rows):  # the models' defaults throughout: nothing to show
            shown = shown.drop(columns="VT options")
        if not any(r.get("needed") for r in rows):
            shown = shown.drop(columns="to resolve")
        sections.append(StudySection(title=TITLE, intro=pairs_intro(pairs, rows), table=shown.fillna("-"),
                                     csv_name=CSV_NAME, data=pd.DataFrame(rows)))
    staged = [r for p in pairs for g in (p.base, p.vt) for r in g.records
              if any(k.startswith(STAGE_PREFIX) for k in (r.get("metrics") or {}))]
    staged = list({id(r): r for r in staged}.values())
    if pairs and staged:
        shown, raw = stage_tables(staged)
        intro = STAGES_INTRO + (f"\n\n{BOUND_INTRO}" if "x bound" in shown.columns else "")
        sections.append(StudySection(title="VT vs baseline: where the time goes", intro=intro, table=shown,
                                     csv_name=STAGES_CSV_NAME, data=raw))
    forms = form_section(data)
    return sections + ([forms] if forms else [])


# ------------------------------------------------------------------------------ attention forms --

FORM_OPTION, FORM_REFERENCE = "attention_impl", "reference"
FORMS_TITLE = "Attention forms: the same VT model, form / reference"
FORMS_CSV_NAME = "attention_forms.csv"
FORM_RATIO_COLUMN = "latency ratio form / reference [95 % CI]"


def form_section(data: Any) -> StudySection | None:
    """The VT models timed in another attention form beside the reference form (`attention_impl`), if any."""
    groups = getattr(data, "groups", None) or []
    pairs = sorted(compare.form_pairs(groups, FORM_OPTION, FORM_REFERENCE), key=_form_order)
    if not pairs:
        return None
    rows = [form_summary(p) for p in pairs]
    shown = pd.DataFrame([form_cells(r) for r in rows])
    if not any(r.get("needed") for r in rows):
        shown = shown.drop(columns="to resolve")
    return StudySection(title=FORMS_TITLE, intro=forms_intro(pairs), table=shown.fillna("-"),
                        csv_name=FORMS_CSV_NAME, data=pd.DataFrame(rows))


def _form_order(pair: compare.FormPair) -> tuple:
    latency = latency_of(pair.variant.config)
    return (str(latency["device"]), str(latency["dtype"]), pair.variant.facts.family, pair.variant.facts.depth or 0,
            pair.variant.model, sort_value(latency["batch_size"]), mode_of(latency), str(pair.variant_value))


def form_summary(pair: compare.FormPair) -> dict[str, Any]:
    """The raw numbers of one form pair (one row of attention_forms.csv)."""
    c, est = pair.versus_one, pair.versus_one.estimate
    latency = latency_of(pair.variant.config)
    others = {k: v for k, v in pair.variant.args.items() if k not in ("num_classes", pair.option)}
    return {"device": latency["device"], "device_name": pair.variant.device_name, "dtype": latency["dtype"],
            "batch": latency["batch_size"], "mode": mode_of(latency), "input_size": _input(pair.variant.config),
            "model": pair.variant.model, "options": ", ".join(f"{k}={v}" for k, v in others.items()),
            "option": pair.option, "form": pair.variant_value, "reference_form": FORM_REFERENCE,
            "reference_cell_ids": ";".join(r["cell_id"] for r in pair.reference.records),
            "form_cell_ids": ";".join(r["cell_id"] for r in pair.variant.records),
            "reference_ms_p50": c.extra["base_ms_p50"], "form_ms_p50": c.extra["vt_ms_p50"],
            "timing": c.extra.get("timing"), "latency_ratio": est.value, "latency_ratio_lo": est.lo,
            "latency_ratio_hi": est.hi, "statistic": est.method, "rounds": c.extra.get("rounds"),
            "noisy_measurements": c.extra.get("noisy_measurements"), "measurements": c.extra.get("measured"),
            "round_ratios": c.extra.get("round_ratios"), "p_holm": c.p_holm, "verdict": compare.verdict_text(c),
            "needed": c.needed}


def form_cells(p: dict[str, Any]) -> dict[str, str]:
    """One row of the shown forms table, as text."""
    cells = {"device": p["device"], "dtype": p["dtype"], "batch": str(p["batch"]), "mode": p["mode"],
             "input": p["input_size"], "model": p["model"], "form": str(p["form"]),
             "reference p50 ms": f"{p['reference_ms_p50']:.2f}", "form p50 ms": f"{p['form_ms_p50']:.2f}",
             FORM_RATIO_COLUMN: ratio_cell(p), "rounds": str(p["rounds"]) if p.get("rounds") else "-",
             "form vs reference": p["verdict"], "to resolve": f"vs 1: {p['needed']}" if p.get("needed") else ""}
    if p["options"]:
        cells["model"] = f"{p['model']} ({p['options']})"
    return cells


def forms_intro(pairs: list[compare.FormPair]) -> str:
    """What the forms table shows: which cells are paired, the statistic, the verdict and its Holm rule."""
    return (f"Each VT configuration timed in another form of `{FORM_OPTION}` beside the same model in the "
            f"`{FORM_REFERENCE}` form, every other option and latency setting the same: the forms have the same "
            f"weights, MACs and outputs (models.layers.ATTENTION_IMPLS), so the ratio is the form's own speed-up. "
            f"Latency ratio = geometric mean of the per-round form/reference ratios, 95 % t interval on log ratios "
            f"(the statistic of the VT vs baseline table; at least {compare.MIN_ROUNDS} rounds); 'faster' or 'slower' where "
            f"the ratio differs from 1, 'not resolved' where it does not; no verdict where a measurement behind "
            f"the row judged itself noisy or there are too few rounds. "
            + compare.holm_caption([p.versus_one for p in pairs], "Form vs reference"))


def latency_pairs_of(data: Any) -> list[LatencyPair]:
    """The run's latency pairs (`compare.latency_pairs` over its configurations)."""
    groups = getattr(data, "groups", None)
    if not groups and getattr(data, "records", None):
        from bench.analysis.load import aggregate

        aggregate(data)
        groups = data.groups
    return compare.latency_pairs(groups or [])


# ------------------------------------------------------------------------------ one pair -----

def latency_of(config: dict[str, Any]) -> dict[str, Any]:
    """A config's latency settings, the contract's defaults filled in."""
    section = config.get("latency") if isinstance(config.get("latency"), dict) else {}
    return {**compare.LATENCY_DEFAULTS, **section}


def mode_of(latency: dict[str, Any]) -> str:
    """The mode in the report's one wording (`bench.analysis.tables.latency_mode`): 'eager', 'compile',
    'compile max-autotune', with '+ CUDA graphs' and '+ channels_last'."""
    return latency_mode(latency)


def _options(config: dict[str, Any]) -> str:
    """The VT cell's model options beside the classes ('num_tokens=8, tokenizer=pooling'), '' for none."""
    args = config.get("model_args") or {}
    return ", ".join(f"{k}={v}" for k, v in args.items() if k != "num_classes")


def _input(config: dict[str, Any]) -> str:
    return input_size_label(config.get("input_size")) or ""


def pair_summary(pair: LatencyPair) -> dict[str, Any]:
    """The raw numbers of one pair (one row of speed.csv)."""
    vt, base, c = pair.vt, pair.base, pair.versus_one
    latency, est = latency_of(vt.config), c.estimate
    vm = vt.records[0]["metrics"]
    batch = int(vm.get("batch_size_used") or latency["batch_size"])
    out: dict[str, Any] = {
        "device": latency["device"], "device_name": vt.device_name, "dtype": latency["dtype"], "batch": batch,
        "mode": mode_of(latency), "channels_last": latency["channels_last"], "threads": latency["threads"],
        "input_size": _input(vt.config), "baseline": base.model, "vt_model": vt.model,
        "vt_options": _options(vt.config), "base_cell_ids": ";".join(r["cell_id"] for r in base.records),
        "vt_cell_ids": ";".join(r["cell_id"] for r in vt.records),
        "base_ms_p50": c.extra["base_ms_p50"], "vt_ms_p50": c.extra["vt_ms_p50"],
        "timing": c.extra.get("timing"), "latency_ratio": est.value, "latency_ratio_lo": est.lo,
        "latency_ratio_hi": est.hi, "statistic": est.method, "rounds": c.extra.get("rounds"),
        "noisy_measurements": c.extra.get("noisy_measurements"), "measurements": c.extra.get("measured"),
        "round_ratios": c.extra.get("round_ratios"), "p_holm": c.p_holm, "verdict": compare.verdict_text(c),
        "needed": c.needed, "macs_ratio": pair.macs_ratio,
        "target_p_holm": pair.target.p_holm if pair.target else None,
        "target_verdict": compare.verdict_text(pair.target) if pair.target else None,
        "target_needed": pair.target.needed if pair.target else None,
    }
    peak = _first(vt, base, "peak_gemm_tflops")
    out["peak_gemm_tflops"], out["peak_copy_gb_s"] = peak, _first(vt, base, "peak_copy_gb_s")
    for side, group, ms in (("base", base, out["base_ms_p50"]), ("vt", vt, out["vt_ms_p50"])):
        gmacs = compare.group_mean(group, "gmacs")
        if peak and gmacs:
            out[f"{side}_tflops"] = achieved_tflops(gmacs, batch, ms)
            out[f"{side}_fraction_of_peak"] = out[f"{side}_tflops"] / peak
    return out


def _first(vt: Any, base: Any, metric: str) -> float | None:
    for group in (vt, base):
        value = compare.group_mean(group, metric)
        if value:
            return value
    return None


def achieved_tflops(gmacs_per_image: float, batch: int, latency_ms: float) -> float:
    """TFLOP/s of a forward pass: 2 FLOPs per MAC, x batch, over the p50 (GMACs / ms -> TFLOP/s)."""
    return 2 * gmacs_per_image * batch / latency_ms


# ------------------------------------------------------------------------------ text ---------

def _f(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _rate(pair: dict[str, Any], side: str) -> str:
    tflops = pair.get(f"{side}_tflops")
    if tflops is None:
        return "-"
    return f"{tflops:.3g} ({100 * pair[f'{side}_fraction_of_peak']:.1f} %)"


def ratio_cell(p: dict[str, Any]) -> str:
    """The pair's latency ratio as shown: '0.921 [0.878-0.966]', or with why there is no interval."""
    if p["latency_ratio_lo"] is not None:
        return f"{p['latency_ratio']:.3f} [{p['latency_ratio_lo']:.3f}-{p['latency_ratio_hi']:.3f}]"
    if p["statistic"] == compare.SINGLE_PASS:
        return f"{p['latency_ratio']:.3f} ({compare.SINGLE_PASS})"
    return f"{p['latency_ratio']:.3f} (no interval: {p['rounds']} rounds)"


def pair_cells(p: dict[str, Any]) -> dict[str, str]:
    """One row of the shown table, as text."""
    cells = {"device": p["device"], "dtype": p["dtype"], "batch": str(p["batch"]), "mode": p["mode"],
             "input": p["input_size"], "baseline": p["baseline"], "VT model": p["vt_model"],
             "VT options": p["vt_options"], "baseline p50 ms": f"{p['base_ms_p50']:.2f}",
             "VT p50 ms": f"{p['vt_ms_p50']:.2f}", RATIO_COLUMN: ratio_cell(p),
             "rounds": str(p["rounds"]) if p.get("rounds") else "-",
             "VT vs baseline": p["verdict"], "MACs ratio": _f(p["macs_ratio"]),
             "target: ratio below MACs ratio": p.get("target_verdict") or "no verdict: no MACs ratio",
             "to resolve": _needed_cell(p)}
    if p.get("peak_gemm_tflops"):
        cells["TFLOP/s base / VT (% of GEMM ceiling)"] = f"{_rate(p, 'base')} / {_rate(p, 'vt')}"
    return cells


def _needed_cell(p: dict[str, Any]) -> str:
    """Rounds that would resolve each unresolved verdict ('vs 1: 51 rounds (...)'), '' where none is needed."""
    parts = [f"{what}: {p[key]}" for what, key in (("vs 1", "needed"), ("target", "target_needed")) if p.get(key)]
    return "; ".join(parts)


def pairs_intro(pairs: list[LatencyPair], rows: list[dict[str, Any]]) -> str:
    """What the table shows: the statistic, the verdicts and their multiple-comparison rule, the ceilings."""
    lines = [f"Each VT configuration beside its registry baseline at identical latency settings. Latency ratio "
             f"= {compare.GEOMEAN_LABEL}: each round's two measurements were taken next to each other "
             f"(`vtbench interleave`), and an interval needs at least {compare.MIN_ROUNDS} rounds. Where the "
             f"two sides have no paired rounds (a single pass, or different interleave sessions) the ratio is "
             f"VT p50 / baseline p50, '{compare.SINGLE_PASS}', and never a verdict. 'VT vs baseline': the "
             f"ratio differs from 1 (resolved) or not; target: the ratio is below the MACs ratio (met), above "
             f"it (missed), or neither is resolved. No verdict where a measurement behind the pair judged "
             f"itself noisy (the row says how many) or there are too few rounds. 'To resolve': the rounds at "
             f"which a difference of the observed size, at the observed spread, would be resolved with "
             f"{100 * compare.POWER:.0f} % power at the table's strictest Holm level (alpha / m, m the rows tested "
             f"together once each has its rounds). See docs/statistics.md.",
             compare.holm_caption([p.versus_one for p in pairs], "VT vs baseline") + " "
             + compare.holm_caption([p.target for p in pairs if p.target], "Target")]
    ceilings = sorted({(p["device"], p["dtype"], p["peak_gemm_tflops"], p["peak_copy_gb_s"])
                       for p in rows if p.get("peak_gemm_tflops")}, key=str)
    for device, dtype, gemm, copy in ceilings:
        lines.append(f"Measured ceilings on {device} ({dtype}, the cells' threads; the higher of before and after "
                     f"the rounds): GEMM {gemm:.3g} TFLOP/s, copy {_f(copy, '.4g')} GB/s. "
                     "Achieved TFLOP/s = 2 x MACs x batch / p50.")
    if any((p.get(f"{side}_fraction_of_peak") or 0) > 1 for p in rows for side in ("base", "vt")):
        lines.append("A share above 100 %: the model's forward ran at more TFLOP/s than the measured GEMM ceiling, "
                     "one square matrix product of one size (`peak_gemm_n`), which is a measured reference for "
                     "this machine, not an upper bound on every kernel.")
    return "\n\n".join(lines)


STAGES_INTRO = ("Median time per stage (ms, and its share of the stages' sum) over the interleaved rounds "
                "(`vtbench interleave --stages`). 'stage timing' says how: forward_hooks_eager (forward hooks on "
                "the eager model, CUDA events on a GPU; a compiled cell's stages are timed eager) or "
                "cuda_graphs_per_stage (each stage captured and replayed as its own CUDA graph).")
BOUND_INTRO = ("'x bound': the measured time of the stage the pair compares (stage 5, or the VT stage that "
               "replaces it) over its roofline lower bound, one fused kernel at the run's own measured GEMM and "
               "copy ceilings (`bench.measure.roofline.stage_bounds`; written by `vtbench interleave --stages "
               "--peak`); the issue's target is the VT stage within 2x its bound. speed_stages.csv holds every "
               "stage's bound (`bound_ms`, `over_bound`) and its unfused bound, each operator its own kernel "
               "(`unfused_bound_ms`).")
BOUND_PREFIX, UNFUSED_PREFIX = "stage_bound_ms_", "stage_bound_unfused_ms_"


def stage_tables(records: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(shown table: one row per cell, each stage 'ms (share %)', how the stages were timed and, with
    bounds, the compared stage's bound and measured / bound; raw rows: cell, stage, ms, share, bounds)."""
    order = stage_columns(records)
    shown, raw = [], []
    for record in sorted(records, key=_stage_row_order):
        metrics, latency = record["metrics"], latency_of(record["config"])
        times = {st: metrics[STAGE_PREFIX + st] for st in order if metrics.get(STAGE_PREFIX + st) is not None}
        total = sum(times.values())
        label = {"model": _model_label(record["config"]), "batch": str(latency["batch_size"]),
                 "mode": mode_of(latency), "device": latency["device"]}
        row = {**label, **{st: f"{times[st]:.2f} ({100 * times[st] / total:.0f}%)" if st in times else "-"
                           for st in order}}
        row["stage timing"] = str(metrics.get("stage_timing") or "-")
        row.update(_bound_cells(record, times))
        shown.append(row)
        raw += [{"run": record.get("run"), "cell_id": record["cell_id"], **label, "stage": st, "ms": ms,
                 "share": ms / total, "stage_timing": metrics.get("stage_timing"),
                 **_bounds_of(metrics, st, ms)} for st, ms in times.items()]
    shown_frame = pd.DataFrame(shown)
    if not any(BOUND_PREFIX + st in r["metrics"] for r in records for st in order):
        shown_frame = shown_frame.drop(columns=["compared stage", "bound (ms)", "x bound"])
    return shown_frame, pd.DataFrame(raw)


def _model_label(config: dict[str, Any]) -> str:
    """The model with its options beside the classes ('vt_resnet18 (attention_impl=sdpa)'): two forms or
    variants of one model get two rows, and each row says which it is."""
    options = _options(config)
    return f"{config.get('model')} ({options})" if options else str(config.get("model"))


def _bounds_of(metrics: dict[str, Any], stage: str, ms: float) -> dict[str, float | None]:
    """A stage's fused bound (ms), measured / bound, and its unfused bound (None where not measured)."""
    bound, unfused = metrics.get(BOUND_PREFIX + stage), metrics.get(UNFUSED_PREFIX + stage)
    return {"bound_ms": bound, "over_bound": ms / bound if bound else None, "unfused_bound_ms": unfused}


def compared_stage(record: dict[str, Any], times: dict[str, float]) -> str | None:
    """The stage a pair compares (the record's `model.replaced`: stage5 or vt), if it was timed."""
    stage = (record.get("model") or {}).get("replaced")
    return stage if stage in times else None


def _bound_cells(record: dict[str, Any], times: dict[str, float]) -> dict[str, str]:
    """The shown table's 'compared stage', 'bound (ms)' and 'x bound' (e.g. '2.80x'), '-' where unknown."""
    stage = compared_stage(record, times)
    bounds = _bounds_of(record["metrics"], stage, times[stage]) if stage else {}
    if not bounds.get("bound_ms"):
        return {"compared stage": stage or "-", "bound (ms)": "-", "x bound": "-"}
    return {"compared stage": stage, "bound (ms)": f"{bounds['bound_ms']:.3g}", "x bound": f"{bounds['over_bound']:.2f}x"}


def stage_columns(records: list[dict[str, Any]]) -> list[str]:
    """Every timed stage, in the models' own order (each record's `model.stages`), merged."""
    order: list[str] = []
    # Baselines first, so a VT stage lands after the stage it replaces (stage5, then vt).
    for record in sorted(records, key=lambda r: bool((r.get("model") or {}).get("baseline"))):
        named = [k[len(STAGE_PREFIX):] for k in record["metrics"] if k.startswith(STAGE_PREFIX)]
        stated = list(((record.get("model") or {}).get("stages")) or [])
        stages = [s for s in stated if s in named] + [s for s in named if s not in stated]
        for i, stage in enumerate(stages):
            if stage not in order:  # just before the first later stage already placed (vt after stage5)
                later = [order.index(s) for s in stages[i + 1:] if s in order]
                order.insert(min(later) if later else len(order), stage)
    return order


MODE_ORDER = ("eager", "compile", "eager + channels_last", "compile + channels_last")


def _mode_rank(mode: str) -> tuple[int, str]:
    return (MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER), mode)


def _pair_order(pair: LatencyPair) -> tuple:
    """Rows by device, dtype, mode (eager first), batch, then the pair's models and options."""
    latency = latency_of(pair.vt.config)
    return (str(latency["device"]), str(latency["dtype"]), _mode_rank(mode_of(latency)), int(latency["batch_size"]),
            str(pair.base.model), str(pair.vt.model), _options_order(pair.vt.config))


def _options_order(config: dict[str, Any]) -> tuple:
    """The VT options as a sort key, numbers by value (num_tokens 4, 8, 16, not '16' < '4')."""
    args = config.get("model_args") or {}
    return tuple((str(k), sort_value(v)) for k, v in args.items() if k != "num_classes")


def _stage_row_order(record: dict[str, Any]) -> tuple:
    latency = latency_of(record["config"])
    return (latency["device"], _mode_rank(mode_of(latency)), int(latency["batch_size"]),
            str(record["config"].get("model")))
