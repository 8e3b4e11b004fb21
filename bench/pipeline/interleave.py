"""Re-measure the latency cells of a run side by side, in interleaved rounds, in one process.

    vtbench interleave RUN [--rounds 5] [--cells ID ...]

Why: a grid runs its cells one after another, minutes apart. On a shared machine (a VM with noisy
neighbours, a node running other jobs) each cell then sees a different load, and a curve across
cells, such as latency against the number of tokens, inherits the drift: neighbouring points can
differ by 30 % for no reason of their own. Measuring every cell in each of several short rounds,
with the order reversed every other round (A B C, then C B A, ...), spreads a slow drift over all
cells alike, as `bench.analysis.speed` does for its pairs.

What it writes: the cell's record (which must already be `ok`, from `vtbench launch`) is left as
it is; each selected cell gets a NEW re-measurement, RUN/records/remeasured/ID.N.json (one per
cell and invocation, N the next free number; `bench.core.records.write_remeasurement`,
`bench.core.contracts.Remeasurement`), which names the record it re-measures (`remeasures`, the
cell id), the invocation (`session`: an id shared by all its cells, `started_at`, `finished_at`,
`rounds`, `cells`), this process's `env` (machine and commit), and the combination of its rounds:

- `latency_ms_p50`, `latency_ms_p20`, `latency_ms_p80`, `latency_ms_mean`: the median over rounds
  of that round's figure; `latency_ms_min`: the minimum over rounds;
- `latency_iters`: timed iterations over all rounds; `throughput_img_s` from the combined p50;
- `peak_mem_mb` and `process_peak_rss_mb`: the largest of the cell's OWN rounds (on CPU, what each
  of its measurements added to the RSS, and the process peak beside it; see `bench.measure.latency`), so
  every cell keeps its own memory figure although all cells share one process;
- `latency_round_p50_ms`: every round's p50, in round order (the spread a reader can check);
- the verdict, judged again over the rounds (`bench.measure.latency.judge_latency`): `warmup_settled` only
  when every round settled (`warmup_unsettled_rounds` counts the others), `loadavg_before`,
  `loadavg_after` and `steal_pct` the worst round's, and the rounds' own p50 spread counts too;
  `latency_round_verdicts` keeps each round's verdict;
- `latency_protocol`: `"interleaved"`, with `latency_rounds` and `latency_cells_interleaved`.

With `--stages` (`stages=True`) each round also times each cell's stages (its top-level children,
the registry's stage names; `bench.measure.stages.measure_stages`: forward hooks on the eager model,
CUDA events on a GPU; for a cuda_graphs cell one captured CUDA graph per stage) right after its
latency, and the re-measurement keeps the median over rounds as `stage_ms_<stage>` (with
`stage_iters`, the forward passes timed per round, `stage_timing`, forward_hooks_eager or
cuda_graphs_per_stage, and `stage_timing_note` where a capture fell back to the hooks). With both,
each stage's roofline bounds at the cell's measured ceilings (`bench.measure.stages.stage_bound_metrics`):
`stage_bound_ms_<stage>` (one fused kernel) and `stage_bound_unfused_ms_<stage>`. With `--peak`
(`peak=True`) the machine's GEMM and copy ceilings (`bench.measure.roofline.measure_peak`, at the
cells' device, dtype and threads) are measured before the first round and after the last, and each
cell keeps the ones of its own dtype and threads: `peak_gemm_tflops` and `peak_copy_gb_s` (the
higher of start and end: a shared machine may have been busy at one of the two),
`peak_gemm_tflops_start`, `peak_gemm_tflops_end`, `peak_copy_gb_s_start`, `peak_copy_gb_s_end`,
`peak_gemm_n`, `peak_copy_mib` and `peak_dtype`. Both are off by default.

Readers (`vtbench report`) take a cell's latency from its newest re-measurement and everything else
(complexity, training, the single-pass latency as `latency_single_pass`) from its record
(`bench.core.records.with_remeasurement`). Records that an earlier checkout's interleave rewrote in
place (`remeasured_at` in the record) are read as they are, and re-measured like any other.
"""

from __future__ import annotations

import json
import logging
import secrets
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from bench.core.errors import UsageError
from bench.measure.latency import judge_latency
from bench.core.modelref import resolve_model_ref
from bench.core.records import (CorruptRecord, capture_env, make_remeasurement, now_iso, read_record, record_path,
                                with_remeasurement, write_remeasurement)
from bench.pipeline.runner import measure_cell_latency

log = logging.getLogger(__name__)

PROTOCOL = "interleaved"
MEDIAN_KEYS = ("latency_ms_p50", "latency_ms_p20", "latency_ms_p80", "latency_ms_mean")
# Machine figures of a round: the combined row takes the worst (largest) round's.
WORST_KEYS = ("peak_mem_mb", "process_peak_rss_mb", "loadavg_before", "loadavg_after", "steal_pct")


def round_orders(n_cells: int, rounds: int) -> list[list[int]]:
    """Cell indices per round: forward in even rounds, reversed in odd ones (drift hits all alike)."""
    forward = list(range(n_cells))
    return [forward if r % 2 == 0 else forward[::-1] for r in range(rounds)]


def combine_rounds(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One cell's metrics from its rounds (see the module docstring for each key)."""
    if not rounds:
        raise ValueError("no rounds to combine")
    combined = dict(rounds[-1])  # descriptive fields: device, dtype, batch_size_used, threads, ...
    for key in MEDIAN_KEYS:
        values = [r[key] for r in rounds if r.get(key) is not None]
        if values:
            combined[key] = statistics.median(values)
    combined["latency_ms_min"] = min(r["latency_ms_min"] for r in rounds)
    combined["latency_iters"] = sum(int(r.get("latency_iters") or 0) for r in rounds)
    batch = combined.get("batch_size_used") or combined.get("batch_size_requested") or 1
    p50 = combined["latency_ms_p50"]
    combined["throughput_img_s"] = batch / (p50 / 1000.0) if p50 > 0 else float("inf")
    for key in WORST_KEYS:
        values = [r[key] for r in rounds if r.get(key) is not None]
        if values:
            combined[key] = max(values)
    combined["latency_round_p50_ms"] = [r["latency_ms_p50"] for r in rounds]
    combined["latency_protocol"] = PROTOCOL
    combined["latency_rounds"] = len(rounds)
    combined.update(_combined_verdict(rounds, combined))
    return combined


def _combined_verdict(rounds: Sequence[dict[str, Any]], combined: dict[str, Any]) -> dict[str, Any]:
    """The verdict of the combined row: every round must have settled, and the combined figures judged."""
    unsettled = sum(1 for r in rounds if r.get("warmup_settled") is False)
    out: dict[str, Any] = {"latency_round_verdicts": [r.get("latency_verdict") for r in rounds]}
    if any("warmup_settled" in r for r in rounds):
        out["warmup_settled"] = unsettled == 0
        out["warmup_unsettled_rounds"] = unsettled
    out.update(judge_latency({**combined, **out}))
    return out


def latency_cells(run_dir: Path, only: Sequence[str] | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """(record path, ok record) of every cell of the run that measures latency, in cells.json order.

    Raises UsageError when the run has no such cell, when a selected cell has no ok record (run
    `vtbench launch` first), or when the cells span several devices.
    """
    cells_file = run_dir / "cells.json"
    if not cells_file.is_file():
        raise UsageError(f"{run_dir} is not a run folder (no cells.json); make one with `vtbench launch GRID`")
    cells = json.loads(cells_file.read_text())
    cells = cells["cells"] if isinstance(cells, dict) else cells
    wanted = [c for c in cells if "latency" in (c.get("config", c).get("measure") or [])]
    if only:
        unknown = sorted(set(only) - {c["cell_id"] for c in wanted})
        if unknown:
            raise UsageError(f"not latency cells of {run_dir}: {', '.join(unknown)}")
        wanted = [c for c in wanted if c["cell_id"] in set(only)]
    if not wanted:
        raise UsageError(f"{run_dir} has no cell that measures latency")
    selected, missing = [], []
    for cell in wanted:
        # cells.json is data: its ids are validated before they name a file (record_path).
        path = record_path(run_dir / "records", cell["cell_id"])
        try:
            record = read_record(path) if path.is_file() else None
        except CorruptRecord:
            record = None
        if record is None or record["status"] != "ok":
            missing.append(cell["cell_id"])
        else:
            selected.append((path, record))
    if missing:
        raise UsageError(f"{len(missing)} latency cell(s) of {run_dir} have no ok record "
                         f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); "
                         f"finish the run with `vtbench launch` first")
    devices = {str((r["config"].get("latency") or {}).get("device", "cpu")) for _, r in selected}
    if len(devices) > 1:
        raise UsageError(f"the latency cells of {run_dir} use several devices ({', '.join(sorted(devices))}); "
                         f"select one device's cells with --cells")
    return selected


def _build(config: dict[str, Any]):
    """The cell's model, built as the runner builds it (seeded, eval mode)."""
    torch.manual_seed(int(config.get("seed", 0)))
    return resolve_model_ref(config["model"]).build(**dict(config.get("model_args") or {})).eval()


def _measure(model, config: dict[str, Any], timing: dict[str, Any]) -> dict[str, Any]:
    """One round of one cell: measured exactly as the runner measures it."""
    return measure_cell_latency(model, config, timing)


def _latency_section(config: dict[str, Any]):
    """The cell's latency options (`LatencyOptions`), the defaults filled in."""
    from bench.core.contracts import LatencyOptions

    return LatencyOptions.model_validate(config.get("latency") or {})


def stage_iters(device: str, batch: int) -> int:
    """Forward passes timed per round for the stage breakdown: many on a GPU, few for a large CPU batch."""
    return 20 if device.startswith("cuda") else (5 if batch <= 8 else 2)


def _measure_stages(model, config: dict[str, Any]):
    """One round's median time (ms) of each stage of the cell's model: `bench.measure.stages.StageTimes`
    (eager forward hooks; one CUDA graph per stage for a cuda_graphs cell)."""
    from bench.measure.stages import measure_stages

    opts = _latency_section(config)
    return measure_stages(model, opts.batch_size, stage_iters(opts.device, opts.batch_size), opts.threads,
                          size=config["input_size"], device=opts.device, dtype=opts.dtype,
                          channels_last=opts.channels_last, cuda_graphs=opts.cuda_graphs)


def stage_timing_metrics(rounds: Sequence[Any]) -> dict[str, Any]:
    """`stage_timing` (how the stages were timed, the last round's) and `stage_timing_note` when a round fell back."""
    out: dict[str, Any] = {"stage_timing": rounds[-1].method}
    notes = list(dict.fromkeys(r.note for r in rounds if r.note))
    if notes:
        out["stage_timing_note"] = "; ".join(notes)
    return out


def _stage_bounds(model, config: dict[str, Any], ceilings: dict[str, Any]) -> dict[str, float]:
    """Each stage's roofline bounds at the cell's measured ceilings (`stage_bound_ms_<stage>`, ...)."""
    from bench.measure.stages import stage_bound_metrics

    opts = _latency_section(config)
    return stage_bound_metrics(model, config["input_size"], opts.batch_size, opts.dtype,
                               ceilings["peak_gemm_tflops"], ceilings["peak_copy_gb_s"])


def combine_stages(rounds: Sequence[dict[str, float]]) -> dict[str, float]:
    """`stage_ms_<stage>`: the median over rounds of each stage's time, in the stages' own order."""
    names = list(dict.fromkeys(name for times in rounds for name in times))
    return {f"stage_ms_{name}": statistics.median(t[name] for t in rounds if name in t) for name in names}


def _ceiling_key(config: dict[str, Any]) -> tuple[str, str, int | None]:
    """(device, dtype, threads) of a cell: the settings its ceilings are measured at."""
    opts = _latency_section(config)
    return opts.device, opts.dtype, opts.threads


def measure_ceilings(keys: Sequence[tuple[str, str, int | None]]) -> dict[tuple, dict[str, Any]]:
    """The GEMM and copy ceilings (bench.measure.roofline.measure_peak) at each distinct setting."""
    from bench.measure.roofline import measure_peak

    out = {}
    for key in dict.fromkeys(keys):
        device, dtype, threads = key
        out[key] = measure_peak(device, dtype, threads=threads)
        log.info("ceilings %s %s threads %s: GEMM %.3g TFLOP/s, copy %.4g GB/s", device, dtype, threads,
                 out[key]["gemm_tflops"], out[key]["copy_gb_s"])
    return out


def ceiling_metrics(start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    """A cell's ceiling metrics from the ceilings measured before and after the rounds."""
    return {"peak_gemm_tflops": max(start["gemm_tflops"], end["gemm_tflops"]),
            "peak_copy_gb_s": max(start["copy_gb_s"], end["copy_gb_s"]),
            "peak_gemm_tflops_start": start["gemm_tflops"], "peak_gemm_tflops_end": end["gemm_tflops"],
            "peak_copy_gb_s_start": start["copy_gb_s"], "peak_copy_gb_s_end": end["copy_gb_s"],
            "peak_gemm_n": start["gemm_n"], "peak_copy_mib": start["copy_mib"], "peak_dtype": start["dtype"]}


def interleave(run_dir: str | Path, *, rounds: int = 5, only: Sequence[str] | None = None,
               timing: dict[str, Any] | None = None,
               progress: Callable[[int, int], None] | None = None,
               stages: bool = False, peak: bool = False) -> list[dict[str, Any]]:
    """Measure the run's latency cells in `rounds` interleaved rounds and write a re-measurement of each.

    Args:
        run_dir: a run folder whose latency cells all have ok records.
        rounds: rounds (at least 2; odd numbers give a true median).
        only: cell ids to measure (default: every latency cell of the run).
        timing: overrides of `bench.measure.latency.DEFAULT_TIMING` for every round (e.g. `min_time_s`).
        progress: called with (measurements done, measurements in total) after each one.
        stages: also time each cell's stages in every round (`stage_ms_<stage>`, the median over rounds).
        peak: also measure the GEMM and copy ceilings before the first round and after the last (`peak_*`).

    Returns:
        The cells' records as readers now see them (`bench.core.records.with_remeasurement`: the
        new latency over the record; `remeasured_at.file` names the re-measurement), in cells.json
        order. Nothing is written until every round is done, so an interrupted run writes nothing;
        the records themselves are never written.
    """
    run_dir = Path(run_dir)
    if rounds < 2:
        raise UsageError(f"--rounds must be at least 2 to interleave (got {rounds})")
    selected = latency_cells(run_dir, only)
    configs = [record["config"] for _, record in selected]
    log.info("building %d models", len(configs))
    models = [_build(config) for config in configs]
    measured: list[list[dict[str, Any]]] = [[] for _ in configs]
    staged: list[list[Any]] = [[] for _ in configs]  # StageTimes per round
    total, done = rounds * len(configs), 0
    started = now_iso()
    ceiling_keys = [_ceiling_key(config) for config in configs]
    ceilings_start = measure_ceilings(ceiling_keys) if peak else {}
    for number, order in enumerate(round_orders(len(configs), rounds), start=1):
        log.info("round %d of %d", number, rounds)
        for index in order:
            measured[index].append(_measure(models[index], configs[index], dict(timing or {})))
            if stages:
                staged[index].append(_measure_stages(models[index], configs[index]))
            done += 1
            if progress:
                progress(done, total)
    ceilings_end = measure_ceilings(ceiling_keys) if peak else {}
    device = str((configs[0].get("latency") or {}).get("device", "cpu"))
    env = capture_env(device)
    session = {"id": secrets.token_hex(6), "protocol": PROTOCOL, "started_at": started, "finished_at": now_iso(),
               "rounds": rounds, "cells": len(configs)}
    remeasurements = []
    for index, ((_, record), cell_rounds) in enumerate(zip(selected, measured)):
        combined = combine_rounds(cell_rounds)
        combined["latency_cells_interleaved"] = len(configs)
        if stages:
            batch = _latency_section(configs[index]).batch_size
            combined.update(combine_stages([r.times for r in staged[index]]), **stage_timing_metrics(staged[index]),
                            stage_iters=stage_iters(device, batch))
        if peak:
            key = ceiling_keys[index]
            combined.update(ceiling_metrics(ceilings_start[key], ceilings_end[key]))
        if stages and peak:
            combined.update(_stage_bounds(models[index], configs[index], combined))
        remeasurements.append(make_remeasurement(record, combined, session=session, env=env))
    seen = []
    for (path, record), remeasurement in zip(selected, remeasurements):
        # Named by the record's cell_id, which read_record has checked against `path`.
        _, written = write_remeasurement(path.parent, remeasurement)
        seen.append(with_remeasurement(record, written))
    return seen
