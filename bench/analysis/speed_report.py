"""The speed study as a section of `vtbench report` (bench/analysis/section.py): do the VT models'
MAC savings become latency savings?

The study is a grid (experiments/speed_cpu.yaml, speed_fpn.yaml, or what `vtbench speed` writes)
whose latency cells `vtbench interleave RUN --stages --peak` re-measured side by side in alternating
rounds. For each VT cell whose registry baseline (the record's `model.baseline`) has a cell at the
same latency settings (device, dtype, batch, compile, CUDA graphs, channels_last, threads, train
step, input size, classes) and whose latency came from the same interleave session:

- the latency ratio VT / baseline of every round (`latency_round_p50_ms`, paired by round: two
  measurements taken next to each other), its median and [min-max];
- the MACs ratio (`gmacs`), and the verdict against it (`bench.analysis.stats.target_verdict`:
  met / missed / not resolved, with the count of noisy round measurements);
- with ceilings (`peak_gemm_tflops`): each side's achieved TFLOP/s, 2 x MACs x batch / p50, and its
  fraction of the measured GEMM ceiling;
- with stage times (`stage_ms_<stage>`): a second section, the median time per stage and its share.

A pair whose sides were timed in different sessions, or by a single pass only, gets its p50 ratio
and a note, never a verdict. The sections' CSVs (speed.csv, speed_stages.csv) hold the raw numbers.
Torch-free: it reads the records as `bench.analysis.report.load_runs` keeps them (`data.records`).
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable

import pandas as pd

from bench.analysis.section import StudySection
from bench.analysis.stats import target_verdict

# The latency settings a VT cell and its baseline share (the cell's `latency` section), beside the input.
PAIR_LATENCY_KEYS = ("device", "dtype", "batch_size", "compile", "cuda_graphs", "channels_last", "threads",
                     "train_step")
LATENCY_DEFAULTS = {"device": "cpu", "dtype": "fp32", "batch_size": 1, "compile": None, "cuda_graphs": False,
                    "channels_last": False, "threads": None, "train_step": False}
STAGE_PREFIX = "stage_ms_"
CSV_NAME, STAGES_CSV_NAME = "speed.csv", "speed_stages.csv"


def report_sections(data: Any, table: pd.DataFrame) -> list[StudySection]:
    """The speed sections the run's records support: pairs (when any VT cell has its baseline) and stages."""
    records = [r for r in getattr(data, "records", None) or [] if _latency_of(r) is not None]
    pairs = sorted((pair_summary(vt, base) for vt, base in find_pairs(records)), key=_pair_order)
    sections = []
    if pairs:
        shown = pd.DataFrame([pair_cells(p) for p in pairs])
        if not any(p["vt_options"] for p in pairs):  # the models' defaults throughout: nothing to show
            shown = shown.drop(columns="VT options")
        shown = shown.fillna("-")
        sections.append(StudySection(title="Speed: VT vs baseline latency", intro=pairs_intro(pairs), table=shown,
                                     csv_name=CSV_NAME, data=pd.DataFrame(pairs)))
    staged = [r for r in records if any(k.startswith(STAGE_PREFIX) for k in r["metrics"])]
    if pairs and staged:
        shown, raw = stage_tables(staged)
        sections.append(StudySection(title="Speed: where the time goes", intro=STAGES_INTRO, table=shown,
                                     csv_name=STAGES_CSV_NAME, data=raw))
    return sections


# ------------------------------------------------------------------------------ pairing ------

def _latency_of(record: dict[str, Any]) -> dict[str, Any] | None:
    """The record's latency settings (defaults filled in), or None if it has no latency figure."""
    config, metrics = record.get("config") or {}, record.get("metrics") or {}
    if "latency" not in (config.get("measure") or []) or metrics.get("latency_ms_p50") is None:
        return None
    section = config.get("latency") if isinstance(config.get("latency"), dict) else {}
    return {k: section.get(k, LATENCY_DEFAULTS[k]) for k in PAIR_LATENCY_KEYS}


def settings_key(record: dict[str, Any]) -> tuple:
    """What a VT cell and its baseline must share: run, latency settings, input size, classes."""
    config = record["config"]
    classes = (config.get("model_args") or {}).get("num_classes")
    return (record.get("run"), tuple(_latency_of(record).items()), _size(config.get("input_size")), classes)


def _size(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)  # type: ignore[return-value]
    return int(value), int(value)


def baseline_name(record: dict[str, Any]) -> str | None:
    """The registry's baseline of the record's model, as the record states it (`model.baseline`)."""
    block = record.get("model")
    if isinstance(block, dict):
        return block.get("baseline")
    from bench.core.modelfacts import facts_of  # a /1 record has no model block: ask the registry

    return facts_of(record["config"].get("model")).baseline


def find_pairs(records: Iterable[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(VT record, baseline record) for every VT cell with a baseline cell at the same settings; among
    several baselines, one of the same interleave session and seed first."""
    records = list(records)
    by_key: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        by_key.setdefault((record["config"].get("model"), settings_key(record)), []).append(record)
    pairs = []
    for record in records:
        base = baseline_name(record)
        candidates = by_key.get((base, settings_key(record)), []) if base else []
        if candidates:
            pairs.append((record, min(candidates, key=lambda c: _preference(record, c))))
    return pairs


def _preference(vt: dict[str, Any], base: dict[str, Any]) -> tuple[int, int]:
    return (session_of(base) is None or session_of(base) != session_of(vt),
            base["config"].get("seed") != vt["config"].get("seed"))


def session_of(record: dict[str, Any]) -> str | None:
    """The interleave session that timed the record's latency (its id; the start time for a record an
    earlier interleave rewrote in place), or None for a single pass."""
    if (record.get("metrics") or {}).get("latency_protocol") != "interleaved":
        return None
    remeasured = record.get("remeasured_at") or {}
    return remeasured.get("session") or remeasured.get("started_at")


# ------------------------------------------------------------------------------ one pair -----

def mode_of(latency: dict[str, Any]) -> str:
    """'eager', 'compile' (mode default), 'compile max-autotune', 'cuda_graphs' or both."""
    parts = []
    if latency.get("compile"):
        parts.append("compile" if latency["compile"] == "default" else f"compile {latency['compile']}")
    if latency.get("cuda_graphs"):
        parts.append("cuda_graphs")
    return " + ".join(parts) or "eager"


def pair_summary(vt: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The raw numbers of one pair (one row of speed.csv)."""
    latency, vm, bm = _latency_of(vt), vt["metrics"], base["metrics"]
    batch = int(vm.get("batch_size_used") or latency["batch_size"])
    out: dict[str, Any] = {
        "run": vt.get("run"), "device": latency["device"], "dtype": latency["dtype"], "batch": batch,
        "mode": mode_of(latency), "channels_last": latency["channels_last"], "threads": latency["threads"],
        "input_size": "x".join(map(str, _size(vt["config"].get("input_size")) or ())),
        "baseline": base["config"].get("model"), "vt_model": vt["config"].get("model"),
        "vt_options": _options(vt), "base_cell_id": base["cell_id"], "vt_cell_id": vt["cell_id"],
        "base_ms_p50": bm["latency_ms_p50"], "vt_ms_p50": vm["latency_ms_p50"],
        "p50_ratio": vm["latency_ms_p50"] / bm["latency_ms_p50"],
        "base_gmacs": bm.get("gmacs"), "vt_gmacs": vm.get("gmacs"),
        "macs_ratio": vm["gmacs"] / bm["gmacs"] if vm.get("gmacs") and bm.get("gmacs") else None,
    }
    out.update(_rounds(vt, base))
    if out.get("round_ratios") and out["macs_ratio"] is not None:
        out["target_verdict"] = target_verdict(out)
    peak = vm.get("peak_gemm_tflops") or bm.get("peak_gemm_tflops")
    out["peak_gemm_tflops"], out["peak_copy_gb_s"] = peak, vm.get("peak_copy_gb_s") or bm.get("peak_copy_gb_s")
    for side, metrics in (("base", bm), ("vt", vm)):
        if peak and metrics.get("gmacs"):
            out[f"{side}_tflops"] = achieved_tflops(metrics["gmacs"], batch, metrics["latency_ms_p50"])
            out[f"{side}_fraction_of_peak"] = out[f"{side}_tflops"] / peak
    return out


def _rounds(vt: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Per-round ratios when both sides come from one interleave session, else the reason there are none."""
    session = session_of(vt)
    if session is None or session_of(base) is None:
        return {"timing": "single pass", "note": "single-pass latency (no interleaved rounds): no verdict"}
    if session != session_of(base):
        return {"timing": "different sessions",
                "note": "timed in different interleave sessions: rounds cannot be paired, no verdict"}
    vt_rounds, base_rounds = _round_list(vt), _round_list(base)
    n = min(len(vt_rounds), len(base_rounds))
    if n == 0:
        return {"timing": "interleaved", "note": "no per-round latencies recorded: no verdict"}
    ratios = [vt_rounds[i] / base_rounds[i] for i in range(n)]
    return {"timing": "interleaved", "session": session, "rounds": n, "round_ratios": ratios,
            "latency_ratio": statistics.median(ratios), "latency_ratio_min": min(ratios),
            "latency_ratio_max": max(ratios), "base_noisy_rounds": _noisy_rounds(base, n),
            "vt_noisy_rounds": _noisy_rounds(vt, n)}


def _options(record: dict[str, Any]) -> str:
    """The VT cell's model options beside the classes ('num_tokens=8, tokenizer=pooling'), '' for none."""
    args = record["config"].get("model_args") or {}
    return ", ".join(f"{k}={v}" for k, v in args.items() if k != "num_classes")


def _round_list(record: dict[str, Any]) -> list[float]:
    values = record["metrics"].get("latency_round_p50_ms") or []
    return [float(v) for v in values] if isinstance(values, list) else []


def _noisy_rounds(record: dict[str, Any], n: int) -> int:
    """How many of the first `n` rounds judged themselves noisy (`latency_round_verdicts`)."""
    verdicts = record["metrics"].get("latency_round_verdicts") or []
    return sum(v == "noisy" for v in list(verdicts)[:n])


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


def pair_cells(p: dict[str, Any]) -> dict[str, str]:
    """One row of the shown table, as text."""
    rounds = p.get("round_ratios")
    cells = {"device": p["device"], "dtype": p["dtype"], "batch": str(p["batch"]), "mode": p["mode"],
             "input": p["input_size"], "baseline": p["baseline"], "VT model": p["vt_model"],
             "VT options": p["vt_options"], "baseline p50 ms": f"{p['base_ms_p50']:.2f}", "VT p50 ms": f"{p['vt_ms_p50']:.2f}",
             "latency ratio [min-max]": (f"**{p['latency_ratio']:.3f}** [{p['latency_ratio_min']:.3f}-"
                                         f"{p['latency_ratio_max']:.3f}]" if rounds
                                         else f"{p['p50_ratio']:.3f} ({p['timing']})"),
             "rounds": str(p.get("rounds", "-")), "MACs ratio": _f(p["macs_ratio"]),
             "target": p.get("target_verdict") or f"- ({p.get('note', 'no MACs ratio')})"}
    if p.get("peak_gemm_tflops"):
        cells["TFLOP/s base / VT (% of GEMM ceiling)"] = f"{_rate(p, 'base')} / {_rate(p, 'vt')}"
    return cells


def pairs_intro(pairs: list[dict[str, Any]]) -> str:
    """What the table shows, and the ceilings measured."""
    lines = ["Each VT cell beside its registry baseline at the same latency settings. Latency ratio = median "
             "over interleaved rounds of VT p50 / baseline p50, each round's two measurements taken next to "
             "each other (`vtbench interleave`), [min-max] over rounds. Target: latency ratio <= MACs ratio; "
             "'met' or 'missed' when every round agrees, else 'not resolved'; round measurements that judged "
             "themselves noisy are counted beside the verdict. A pair timed in different sessions or by a "
             "single pass shows its p50 ratio and no verdict."]
    ceilings = sorted({(p["device"], p["dtype"], p["peak_gemm_tflops"], p["peak_copy_gb_s"])
                       for p in pairs if p.get("peak_gemm_tflops")}, key=str)
    for device, dtype, gemm, copy in ceilings:
        lines.append(f"Measured ceilings on {device} ({dtype}, the cells' threads; the higher of before and after "
                     f"the rounds): GEMM {gemm:.3g} TFLOP/s, copy {_f(copy, '.4g')} GB/s. "
                     "Achieved TFLOP/s = 2 x MACs x batch / p50.")
    unpaired = [p for p in pairs if not p.get("round_ratios")]
    if unpaired:
        lines.append(f"{len(unpaired)} pair(s) without paired rounds: "
                     + "; ".join(f"{p['vt_model']} b{p['batch']} {p['mode']}: {p['note']}" for p in unpaired[:6]))
    return "\n\n".join(lines)


STAGES_INTRO = ("Median time per stage (ms, and its share of the stages' sum) over the interleaved rounds "
                "(`vtbench interleave --stages`: forward hooks on the eager model, CUDA events on a GPU; a "
                "compiled cell's stages are timed eager).")


def stage_tables(records: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(shown table: one row per cell, each stage 'ms (share %)'; raw rows: cell, stage, ms, share)."""
    order = stage_columns(records)
    shown, raw = [], []
    for record in sorted(records, key=_stage_row_order):
        metrics, latency = record["metrics"], _latency_of(record)
        times = {st: metrics[STAGE_PREFIX + st] for st in order if metrics.get(STAGE_PREFIX + st) is not None}
        total = sum(times.values())
        label = {"model": record["config"].get("model"), "batch": str(latency["batch_size"]),
                 "mode": mode_of(latency), "device": latency["device"]}
        shown.append({**label, **{st: f"{times[st]:.2f} ({100 * times[st] / total:.0f}%)" if st in times else "-"
                                  for st in order}})
        raw += [{"run": record.get("run"), "cell_id": record["cell_id"], **label, "stage": st, "ms": ms,
                 "share": ms / total} for st, ms in times.items()]
    return pd.DataFrame(shown), pd.DataFrame(raw)


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


MODE_ORDER = ("eager", "compile", "cuda_graphs")


def _mode_rank(mode: str) -> tuple[int, str]:
    return (MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER), mode)


def _pair_order(pair: dict[str, Any]) -> tuple:
    """Rows by run, device, dtype, mode (eager first), batch, then the pair's models."""
    return (str(pair["run"]), pair["device"], pair["dtype"], _mode_rank(pair["mode"]), pair["batch"],
            str(pair["baseline"]), str(pair["vt_model"]), pair["vt_options"])


def _stage_row_order(record: dict[str, Any]) -> tuple:
    latency = _latency_of(record)
    return (latency["device"], _mode_rank(mode_of(latency)), int(latency["batch_size"]),
            str(record["config"].get("model")))
