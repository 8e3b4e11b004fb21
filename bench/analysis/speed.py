"""Do the VT models' MAC savings become latency savings? ResNet vs VT-ResNet, side by side.

    vtbench speed                               # CPU, fp32 inference, batch 1 and 32 -> results/speed_cpu
    vtbench speed --gpu                         # CUDA, bf16, batch 1/64/256, eager/compile/CUDA graphs
                                                #   -> results/speed_gpu
    vtbench speed --render DIR                  # a legacy study (DIR/speed.json): rebuild speed.md/csv

(The command's flags are in bench/cli/commands/speed.py.)

The study is a grid plus interleaved rounds plus a report section, like any other run: `run` writes
the grid of the chosen pairs, batch sizes and modes into OUT (`study_grid`; every model built with
seed 0, ImageNet stem, 1000 classes at 224, segmentation models at 473), runs its cells through the
runner on the local executor (`vtbench launch`), re-measures every latency cell in ONE process in
alternating-order rounds (`vtbench interleave --stages --peak`: A B C D, then D C B A, ..., with
per-stage times and the machine's GEMM/copy ceilings before and after), and writes the report into
OUT/report, whose speed section (bench/analysis/speed_report.py) gives each pair's latency ratio
per round against the MACs ratio. The target (issue 3): the latency ratio is no worse than the MACs
ratio. The same study by hand: `vtbench launch experiments/speed_cpu.yaml --run-dir DIR`,
`vtbench interleave DIR --rounds 4 --stages --peak`, `vtbench report DIR`.

Studies measured before that (results/**/speed.json, written by this module's former own loop)
keep their renderer: `render` rebuilds their speed.md and speed.csv from speed.json alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import statistics
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
from torch import nn

from bench.analysis.stats import target_verdict
from bench.core.errors import UsageError
from bench.measure.roofline import achieved, stage_key_parts
from bench.core.tables import markdown_table
from models import build_model, model_facts, stage_order

log = logging.getLogger(__name__)

# The study's pairs (`--pairs`): a VT model each, timed beside the baseline the registry names for it.
PAIRS = {"r18": "vt_resnet18", "r50": "vt_resnet50", "fpn": "vt_fpn_r50"}
INPUT_SIZE = 224
SEG_INPUT_SIZE = 473  # the paper's semantic-segmentation size (Table 6), for every segmentation model
CPU_DEFAULTS = dict(batch_sizes=[1, 32], modes=["eager"], dtype="fp32", device="cpu", out="results/speed_cpu")
GPU_DEFAULTS = dict(batch_sizes=[1, 64, 256], modes=["eager", "compile", "cuda_graphs"], dtype="bf16",
                    device="cuda", out="results/speed_gpu")
DEFAULT_PAIRS = ("r18", "r50")
MODE_OPTIONS = {"eager": {}, "compile": {"compile_mode": "default"}, "cuda_graphs": {"cuda_graphs": True}}
GRID_MODES = {"eager": {}, "compile": {"compile": "default"}, "cuda_graphs": {"cuda_graphs": True}}  # a cell's keys
GRID_FILE = "speed_grid.yaml"


def input_size(name: str) -> int:
    """The side of the square input a model of the study is timed at (by the registry's task)."""
    return SEG_INPUT_SIZE if model_facts(name).task == "seg" else INPUT_SIZE


def pair_models(key: str) -> tuple[str, str]:
    """(baseline, VT model) of the pair `key`: r18 -> (resnet18, vt_resnet18)."""
    vt = PAIRS[key]
    return model_facts(vt).baseline, vt


# ------------------------------------------------------------------------------ timing ------

def timing_options(batch: int, device: str, quick: bool, min_time_s: float | None = None) -> dict[str, Any]:
    """Warm-up and iteration limits: short per round, since the rounds themselves repeat.
    `min_time_s` (`--min-time-s`), when given, replaces the timed seconds per model and round."""
    if device == "cpu":
        heavy = batch > 8
        options = dict(warmup_min_iters=1 if heavy else 3, warmup_max_s=2.0 if heavy else 3.0,
                       min_iters=3 if heavy else 10, min_time_s=0.5 if quick else (1.0 if heavy else 2.0),
                       max_time_s=60.0)
    else:
        options = dict(warmup_min_iters=10, warmup_max_s=10.0, min_iters=20, min_time_s=0.5 if quick else 1.0)
    if min_time_s is not None:
        options["min_time_s"] = min_time_s
        if "max_time_s" in options:
            options["max_time_s"] = max(options["max_time_s"], min_time_s)
    return options


def pair_summary(base: str, vt: str, rows: dict[str, list[dict[str, Any]]],
                 macs: dict[str, dict[str, Any]], *, batch: int = 1,
                 peak: dict[str, Any] | None = None) -> dict[str, Any]:
    """Median latencies and the per-round latency ratio of one pair, beside the MACs ratio, and
    each side's achieved TFLOP/s (2 FLOPs per MAC) with its fraction of the measured GEMM peak."""
    ok_b = {r["round"]: r for r in rows[base] if "error" not in r}
    ok_v = {r["round"]: r for r in rows[vt] if "error" not in r}
    rounds = sorted(set(ok_b) & set(ok_v))
    out: dict[str, Any] = {"baseline": base, "vt_model": vt, "rounds": len(rounds),
                           "macs_ratio": macs[vt]["gmacs"] / macs[base]["gmacs"],
                           "params_ratio": macs[vt]["params_m"] / macs[base]["params_m"],
                           "base_gmacs": macs[base]["gmacs"], "vt_gmacs": macs[vt]["gmacs"]}
    if not rounds:
        out["error"] = "; ".join(r["error"] for r in rows[base] + rows[vt] if "error" in r) or "no rounds"
        return out
    ratios = [ok_v[i]["latency_ms_p50"] / ok_b[i]["latency_ms_p50"] for i in rounds]
    for side, ok in (("base", ok_b), ("vt", ok_v)):
        for q in ("p50", "p20", "p80"):
            out[f"{side}_ms_{q}"] = statistics.median(ok[i][f"latency_ms_{q}"] for i in rounds)
        out[f"{side}_img_s"] = statistics.median(ok[i]["throughput_img_s"] for i in rounds)
        out[f"{side}_peak_mem_mb"] = max(ok[i]["peak_mem_mb"] for i in rounds)
        rate = achieved(macs[base if side == "base" else vt]["gmacs"], batch, out[f"{side}_ms_p50"], peak)
        out[f"{side}_tflops"] = rate["achieved_tflops"]
        out[f"{side}_fraction_of_peak"] = rate.get("fraction_of_peak")  # or later, by add_fractions
        # Round 0's first call holds torch.compile's compile time (later rounds reuse the graph).
        out[f"{side}_first_call_s"] = max(ok[i].get("first_iter_ms", 0.0) for i in rounds) / 1000.0
        out[f"{side}_noisy_rounds"] = sum(ok[i].get("latency_verdict") == "noisy" for i in rounds)
    out.update(latency_ratio=statistics.median(ratios), latency_ratio_min=min(ratios),
               latency_ratio_max=max(ratios), round_ratios=ratios)
    out["meets_target"] = out["latency_ratio"] <= out["macs_ratio"]
    out["target_verdict"] = target_verdict(out)
    return out


def profile_ops(model: nn.Module, batch: int, iters: int, threads: int | None, path: Path,
                size: int = INPUT_SIZE) -> str:
    """torch.profiler table (top ops by self CPU time) of `iters` forward passes, written to `path`."""
    from torch.profiler import ProfilerActivity, profile

    from bench.measure.latency import fixed_threads

    x = torch.randn(batch, 3, size, size)
    with fixed_threads(threads or torch.get_num_threads()), torch.inference_mode():
        model(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(iters):
                model(x)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    shapes = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25)
    path.write_text(f"{model.__class__.__name__} batch {batch}, {iters} forward passes\n\n{table}\n\n"
                    f"grouped by input shape\n\n{shapes}\n")
    return table


# ------------------------------------------------------------------------------ output ------

CSV_KEYS = ("device", "dtype", "mode", "batch", "baseline", "vt_model", "base_ms_p50", "base_ms_p20", "base_ms_p80",
            "vt_ms_p50", "vt_ms_p20", "vt_ms_p80", "latency_ratio", "latency_ratio_min", "latency_ratio_max",
            "macs_ratio", "base_gmacs", "vt_gmacs", "params_ratio", "meets_target", "rounds", "base_img_s",
            "vt_img_s", "base_peak_mem_mb", "vt_peak_mem_mb", "base_tflops", "vt_tflops", "base_fraction_of_peak",
            "vt_fraction_of_peak", "target_verdict", "base_noisy_rounds", "vt_noisy_rounds", "base_first_call_s",
            "vt_first_call_s", "error")


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def _summary_cells(s: dict[str, Any]) -> dict[str, str]:
    """One row of the ratio table, as text (an error row keeps every column)."""
    ok = "error" not in s
    return {
        "batch": str(s["batch"]), "mode": s["mode"], "baseline": s["baseline"], "VT model": s["vt_model"],
        "baseline p50 ms [p20-p80]": f"{s['base_ms_p50']:.2f} [{s['base_ms_p20']:.2f}-{s['base_ms_p80']:.2f}]"
        if ok else f"error: {s['error']}",
        "VT p50 ms [p20-p80]": f"{s['vt_ms_p50']:.2f} [{s['vt_ms_p20']:.2f}-{s['vt_ms_p80']:.2f}]" if ok else "-",
        "latency ratio [min-max]": f"**{s['latency_ratio']:.3f}** [{s['latency_ratio_min']:.3f}-"
                                   f"{s['latency_ratio_max']:.3f}]" if ok else "-",
        "MACs ratio": f"{s['macs_ratio']:.3f}", "params ratio": f"{s['params_ratio']:.3f}",
        "target": (s.get("target_verdict") or target_verdict(s)) if ok else "-",
        "TFLOP/s base / VT (% of peak)": f"{_rate(s, 'base')} / {_rate(s, 'vt')}",
        "first call s, base / VT": f"{_fmt(s.get('base_first_call_s'), '.2f')} / {_fmt(s.get('vt_first_call_s'), '.2f')}",
    }


def _rate(summary: dict[str, Any], side: str) -> str:
    """'12.3 (4.5 %)': achieved TFLOP/s and its fraction of the measured peak, where known."""
    tflops, fraction = summary.get(f"{side}_tflops"), summary.get(f"{side}_fraction_of_peak")
    if tflops is None:
        return "-"
    return f"{tflops:.3g}" + (f" ({100 * fraction:.1f} %)" if fraction is not None else "")


def markdown(summaries: list[dict[str, Any]], stages: dict[str, dict[str, float]], env_start: dict[str, Any],
             env_end: dict[str, Any], args: argparse.Namespace, peak: dict[str, Any] | None = None,
             stage_rates: dict[str, dict[str, dict[str, float]]] | None = None) -> str:
    """The committed report: machine, ratio table, per-stage breakdown."""
    dev = env_start["device_name"]
    lines = [
        f"# VT-ResNet vs ResNet latency on {dev}",
        "",
        f"- machine: {dev} ({env_start['cpu_count']} logical CPUs), host `{env_start['host']}`, {env_start['platform']}",
        f"- torch {env_start['torch']} (CUDA {env_start['cuda']}, cuDNN {env_start['cudnn']}), "
        f"torchvision {env_start['torchvision']}, Python {env_start['python']}",
        f"- device `{args.device}`, dtype {args.dtype}, threads {env_start['threads']}, input 224x224 "
        f"(473x473 for the FPN pair), inference (eval, inference_mode){', channels_last' if args.channels_last else ''}",
        f"- date {env_start['date']} -> {env_end['date']}; git {env_start['git_commit']}",
        f"- load average at start {_fmt(env_start['loadavg'])}, at end {_fmt(env_end['loadavg'])}"
        + (". **The machine was shared with other jobs during the run**: absolute times are noisy; the ratios "
           "come from adjacent measurements in alternating order and are the figures to read." if args.shared else ""),
        f"- {args.rounds} interleaved rounds per batch size{_timed_note(args)}; ratio = median over rounds of "
        "VT p50 / baseline p50 "
        "(min-max over rounds in brackets). Target: latency ratio <= MACs ratio; 'met' or 'missed' when every "
        "round agrees, else 'not resolved'. A round whose measurement judged itself noisy (bench.measure.latency: "
        "warm-up not settled or p80/p20 spread wide) is counted beside the verdict.",
        "",
    ]
    if peak:
        lines[-1:-1] = [f"- measured ceilings ({peak['dtype']}, same device and threads): GEMM {peak['gemm_n']}^3 "
                        f"{peak['gemm_tflops']:.3g} TFLOP/s, copy {peak['copy_mib']} MiB {peak['copy_gb_s']:.4g} GB/s "
                        f"(read + write); ridge {peak['ridge_flop_per_byte']:.3g} FLOP/byte{_start_end(peak)}. "
                        "Achieved TFLOP/s = 2 x MACs x batch / p50."]
    lines.append(markdown_table(pd.DataFrame([_summary_cells(s) for s in summaries])).rstrip("\n"))
    if stages:
        seen = list(dict.fromkeys(st for times in stages.values() for st in times))
        order = stage_order()
        all_stages = [st for st in order if st in seen] + [st for st in seen if st not in order]
        shares = [{"model, batch": key, **{st: f"{times[st]:.2f} ({100 * times[st] / sum(times.values()):.0f}%)"
                                           if st in times else "-" for st in all_stages}}
                  for key, times in stages.items()]
        lines += ["", "## Where the time goes: median time per stage (ms, forward hooks, same process; CUDA events "
                  "on a GPU)", "", markdown_table(pd.DataFrame(shares)).rstrip("\n")]
        if stage_rates:
            rates = [{"model, batch": key, **{st: _stage_rate(stage_rates.get(key, {}).get(st)) for st in all_stages}}
                     for key in stages]
            lines += ["", "Achieved TFLOP/s per stage (2 x the stage's executed MACs x batch / its median time)"
                      + (", with the fraction of the measured GEMM ceiling" if peak else "") + ":", "",
                      markdown_table(pd.DataFrame(rates)).rstrip("\n")]
    over = ceiling_exceeded(summaries, stage_rates or {})
    if over:
        lines += ["", f"**WARNING: {len(over)} figure(s) above 100 % of the measured GEMM ceiling** ({', '.join(over[:6])}"
                  f"{', ...' if len(over) > 6 else ''}): the ceiling was measured while the machine was busier than "
                  "during those timings, or torch.mm is not this machine's fastest kernel (oneDNN convolutions can "
                  "beat it on a CPU). Read the fractions as relative to each other, not as absolute efficiency."]
    return "\n".join(lines) + "\n"


def _timed_note(args: argparse.Namespace) -> str:
    """', N s timed per model and round' when --min-time-s set it (older studies' JSON has no key)."""
    seconds = getattr(args, "min_time_s", None)
    return f", {seconds:g} s timed per model and round" if seconds is not None else ""


def ceiling_exceeded(summaries: list[dict[str, Any]], stage_rates: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Every model or stage figure above the measured ceiling (a ceiling that cannot be one)."""
    model_of = {"base": "baseline", "vt": "vt_model"}
    over = [f"{s[model_of[side]]} b{s['batch']} {s['mode']}" for s in summaries for side in model_of
            if (s.get(f"{side}_fraction_of_peak") or 0) > 1]
    over += [f"{key} {stage}" for key, rates in stage_rates.items() for stage, rate in rates.items()
             if (rate.get("fraction_of_peak") or 0) > 1]
    return over


def _start_end(peak: dict[str, Any]) -> str:
    """' (GEMM 0.16 / 0.15 TFLOP/s before / after the study)' where both were measured."""
    both = peak.get("gemm_tflops_start_end")
    return f"; the higher of GEMM {both[0]:.3g} / {both[1]:.3g} TFLOP/s before / after the study" if both else ""


def _stage_rate(rate: dict[str, float] | None) -> str:
    if not rate:
        return "-"
    fraction = rate.get("fraction_of_peak")
    return f"{rate['achieved_tflops']:.3g}" + (f" ({100 * fraction:.1f} %)" if fraction is not None else "")


def write_outputs(out: Path, summaries: list[dict[str, Any]], raw: dict[str, Any], md: str) -> None:
    """speed.md, speed.csv and speed.json under `out` (JSON atomically)."""
    from bench.core.records import write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.md").write_text(md)
    with open(out / "speed.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_KEYS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(summaries)
    write_json_atomic(out / "speed.json", raw)


# ------------------------------------------------------------------------------ main --------

def study_options(*, gpu: bool = False, out: str | None = None, pairs: Sequence[str] | None = None,
                  batch_sizes: Sequence[int] | None = None, modes: Sequence[str] | None = None,
                  dtype: str | None = None, rounds: int = 4, threads: int | None = None,
                  channels_last: bool = False, no_stages: bool = False, profile: bool = False,
                  quick: bool = False, peak: bool = True, shared: bool = True,
                  min_time_s: float | None = None, cluster: str = "local") -> argparse.Namespace:
    """The study's resolved options (what speed.json keeps as `args`): `gpu` picks the CUDA
    defaults, anything not given takes them; UsageError on a bad value."""
    defaults = GPU_DEFAULTS if gpu else CPU_DEFAULTS
    opts = argparse.Namespace(
        gpu=gpu, out=out or defaults["out"], pairs=list(pairs or DEFAULT_PAIRS),
        batch_sizes=list(batch_sizes) if batch_sizes else list(defaults["batch_sizes"]),
        modes=list(modes) if modes else list(defaults["modes"]), dtype=dtype or defaults["dtype"],
        rounds=rounds, threads=threads or (os.cpu_count() if not gpu else None), channels_last=channels_last,
        no_stages=no_stages, profile=profile, quick=quick, peak=peak, shared=shared, min_time_s=min_time_s,
        device=defaults["device"], cluster=cluster)
    bad = [m for m in opts.modes if m not in MODE_OPTIONS] + [k for k in opts.pairs if k not in PAIRS]
    if bad:
        raise UsageError(f"unknown mode or pair {', '.join(map(repr, bad))}: modes are {', '.join(MODE_OPTIONS)}, "
                         f"pairs {', '.join(PAIRS)}")
    if rounds < 2:
        raise UsageError(f"--rounds must be at least 2 to interleave, got {rounds}")
    if opts.dtype not in ("fp32", "bf16", "fp16"):
        raise UsageError(f"--dtype must be fp32, bf16 or fp16, got {opts.dtype!r}")
    if gpu and not torch.cuda.is_available():
        raise UsageError("--gpu needs CUDA, which is not available on this machine")
    return opts


def study_grid(opts: argparse.Namespace) -> dict[str, Any]:
    """The study as a grid (experiments/*.yaml's format): every model of the pairs at every batch
    size and mode, at the study's device, dtype, threads and memory format, each batch size with
    its own warm-up and timing (`timing_options`); classification models at 224 with 1000 classes,
    segmentation models at 473 with their default classes."""
    groups: dict[tuple[int, int], list[str]] = {}
    for key in opts.pairs:
        for name in pair_models(key):
            facts = model_facts(name)
            classes = 1000 if facts.task == "cls" else int(facts.defaults["num_classes"])
            groups.setdefault((input_size(name), classes), []).append(name)
    blocks = []
    for mode in opts.modes:
        for batch in opts.batch_sizes:
            latency = {"device": opts.device, "batch_size": batch, "dtype": opts.dtype, "threads": opts.threads,
                       "channels_last": opts.channels_last, **GRID_MODES[mode],
                       **timing_options(batch, opts.device, opts.quick, getattr(opts, "min_time_s", None))}
            for (size, classes), models in groups.items():
                blocks.append({"input_size": size, "model_args": {"num_classes": classes}, "latency": latency,
                               "models": list(dict.fromkeys(models))})
    first, rest = blocks[0], blocks[1:]
    return {
        "name": "speed",
        "description": (f"vtbench speed: pairs {', '.join(opts.pairs)}, batch {', '.join(map(str, opts.batch_sizes))}, "
                        f"modes {', '.join(opts.modes)}, {opts.device} {opts.dtype}"
                        f"{', channels_last' if opts.channels_last else ''}; then vtbench interleave and report"),
        "base": {"model": first["models"][0], "model_args": first["model_args"], "measure": ["complexity", "latency"],
                 "input_size": first["input_size"], "seed": 0, "latency": first["latency"]},
        "axes": {"model": first["models"]},
        "include": [{"input_size": b["input_size"], "model_args.num_classes": b["model_args"]["num_classes"],
                     **{f"latency.{k}": v for k, v in b["latency"].items()}, "axes": {"model": b["models"]}}
                    for b in rest],
        "resources": {"timeout_min": 240, "cpus_per_task": os.cpu_count() or 1, "gpus_per_node": 1 if opts.gpu else 0,
                      "array_parallelism": 1, "local_parallelism": 1},
    }


def run(opts: argparse.Namespace) -> list[dict[str, Any]]:
    """The study: write its grid into OUT, run the cells through the runner (the local executor, as
    `vtbench launch`), re-measure them in interleaved rounds (`vtbench interleave`, with stage times
    and ceilings unless turned off), then `vtbench report` into OUT/report. Returns the report's
    speed pairs (speed_report's rows; `error` rows for cells that failed)."""
    import yaml

    from bench.analysis.report import write_report
    from bench.core.records import iter_records
    from bench.core.util import write_text_atomic
    from bench.pipeline.interleave import interleave
    from bench.pipeline.launch import launch

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    grid_path = out / GRID_FILE
    write_text_atomic(grid_path, yaml.safe_dump(study_grid(opts), sort_keys=False))
    result = launch(grid_path, cluster=getattr(opts, "cluster", "local"), run_dir=out, wait=True)
    wanted = {cell.cell_id for cell in result.grid.cells}
    ok = [r["cell_id"] for _, r in iter_records(out / "records")
          if isinstance(r, dict) and r["cell_id"] in wanted and r["status"] == "ok"]
    failed = sorted(wanted - set(ok))
    if ok:
        interleave(out, rounds=opts.rounds, only=ok, stages=not opts.no_stages, peak=opts.peak)
    if opts.profile and opts.device == "cpu":
        write_profiles(opts, out)
    report = write_report([out])
    rows = [row for study in report.studies if study.csv_name == "speed.csv"
            for row in study.csv_frame().to_dict("records")]
    return rows + [{"cell_id": cell, "error": f"no ok record (see {out / 'records'} and `vtbench status {out}`)"}
                   for cell in failed]


def write_profiles(opts: argparse.Namespace, out: Path) -> None:
    """`--profile`: torch.profiler op tables of every model of the pairs at every batch size (CPU)."""
    for key in opts.pairs:
        for name in pair_models(key):
            torch.manual_seed(0)
            model = build_model(name).eval()
            for batch in opts.batch_sizes:
                profile_ops(model, batch, 5 if batch <= 8 else 2, opts.threads, out / f"profile_{name}_b{batch}.txt",
                            size=input_size(name))


def render(out: Path) -> list[dict[str, Any]]:
    """Rebuild speed.md and speed.csv of a finished study from its speed.json alone (after a change
    of the summary or the report; nothing is measured again)."""
    raw = json.loads((out / "speed.json").read_text())
    args = argparse.Namespace(**raw["args"])
    macs, peak = raw["complexity"], raw.get("peak")
    summaries = []
    for key, rows in raw["rounds"].items():
        mode, batch = key.rsplit("_b", 1)
        for pair in args.pairs:
            summary = pair_summary(*pair_models(pair), rows, macs, batch=int(batch))
            summaries.append({"device": args.device, "dtype": args.dtype, "mode": mode, "batch": int(batch), **summary})
    add_fractions(summaries, peak)
    stages = raw.get("stages_ms") or {}
    stage_rates = rates_of_stages(stages, macs, peak)
    raw.update(summaries=summaries, stage_rates=stage_rates)
    write_outputs(out, summaries, raw, markdown(summaries, stages, raw["env"], raw["env_end"], args, peak, stage_rates))
    return summaries


def combined_ceiling(start: dict[str, Any] | None, end: dict[str, Any] | None) -> dict[str, Any] | None:
    """The higher of the ceilings measured before and after the study (a shared machine may have
    been busy at one of the two), with both kept and their gap stated."""
    if not start or not end:
        return start or end
    peak = dict(max(start, end, key=lambda p: p["gemm_tflops"]))
    peak["copy_gb_s"] = max(start["copy_gb_s"], end["copy_gb_s"])
    peak["ridge_flop_per_byte"] = peak["gemm_tflops"] * 1e12 / (peak["copy_gb_s"] * 1e9)
    peak["gemm_tflops_start_end"] = [start["gemm_tflops"], end["gemm_tflops"]]
    peak["copy_gb_s_start_end"] = [start["copy_gb_s"], end["copy_gb_s"]]
    return peak


def add_fractions(summaries: list[dict[str, Any]], peak: dict[str, Any] | None) -> None:
    """Each side's fraction of the ceiling, once the ceiling is known."""
    for summary in summaries:
        for side in ("base", "vt"):
            if peak and summary.get(f"{side}_tflops") is not None:
                summary[f"{side}_fraction_of_peak"] = summary[f"{side}_tflops"] / peak["gemm_tflops"]


def rates_of_stages(stages: dict[str, dict[str, float]], macs: dict[str, dict[str, Any]],
                    peak: dict[str, Any] | None) -> dict[str, dict[str, dict[str, float]]]:
    """Achieved TFLOP/s (and fraction of `peak`) of every timed stage, from its executed MACs."""
    rates = {}
    for key, times in stages.items():
        name, batch = stage_key_parts(key)
        rates[key] = {stage: achieved(macs[name][f"gmacs_{stage}"], batch, ms, peak)
                      for stage, ms in times.items() if f"gmacs_{stage}" in macs[name]}
    return rates
