"""`vtbench interleave RUN`: re-measure a run's latency cells side by side, in interleaved rounds.

Prints one row per re-measured cell: `--format table` (default) its p50, every round's p50, the
memory it added and its verdict; `json` (JSON lines) and `csv` `cell_id`, then timm's names where
they mean the same thing (bench/cli/commands/common.py `TIMM_NAMES`: `model`, `infer_samples_per_sec`,
`infer_step_time` = the median over rounds of latency_ms_p50, `infer_batch_size`, `infer_img_size`;
`train_*` for a train-step cell), then vtbench's `latency_ms_p20`, `latency_ms_p80`,
`latency_ms_min`, `latency_round_p50_ms`, `latency_rounds`, `peak_mem_mb`, `latency_verdict` and
`latency_noise_reasons`. `--stages` adds each cell's per-stage times and `--peak` the machine's
GEMM and copy ceilings to its re-measurement (not to the rows). The re-measurements it writes (RUN/records/remeasured/ID.N.json; the
cells' records are left as they are) keep vtbench's names (bench/pipeline/interleave.py).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from bench.cli.commands import common

NAME = "interleave"
HELP = ("Re-measure the latency cells of a finished run in interleaved rounds in one process (order "
        "reversed every other round), so a shared machine's drift hits every cell alike; writes "
        "a re-measurement beside each cell's record (median over rounds, every round's p50 kept), "
        "which the report's latency columns then use.")

log = logging.getLogger("vtbench.interleave")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vtbench interleave`."""
    parser.add_argument("run_dir", metavar="RUN", help="run folder whose latency cells have ok records")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5; at least 2)")
    parser.add_argument("--cells", nargs="+", default=None, metavar="ID",
                        help="only these cell ids (default: every latency cell of the run)")
    common.add_min_time_s(parser, "timed seconds per cell and round (default: the cell's own setting)")
    parser.add_argument("--stages", action="store_true",
                        help="also time each cell's stages in every round (forward hooks, eager): "
                             "stage_ms_<stage>, the median over rounds")
    parser.add_argument("--peak", action="store_true",
                        help="also measure the GEMM and copy ceilings (bench.measure.roofline) before the first "
                             "round and after the last: peak_gemm_tflops, peak_copy_gb_s")
    common.add_format(parser, "one line per cell")


def run(args: argparse.Namespace) -> int:
    """Measure and write the re-measurements; bad input raises UsageError (exit 2 via bench.cli)."""
    from tqdm import tqdm

    from bench.pipeline.interleave import interleave

    timing = {} if args.min_time_s is None else {"min_time_s": args.min_time_s}
    with tqdm(unit="measurement", desc="interleave", dynamic_ncols=True, disable=None) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        updated = interleave(args.run_dir, rounds=args.rounds, only=args.cells, timing=timing,
                             progress=progress, stages=args.stages, peak=args.peak)
    common.emit_rows(args.format, [output_row(r) for r in updated], table=lambda _: cells_table(updated))
    noisy = [r for r in updated if r["metrics"].get("latency_verdict") == "noisy"]
    if noisy:
        log.warning("%d of %d cell(s) are noisy (see bench.core.noise for the thresholds); their ratios are "
                    "marked in the report", len(noisy), len(updated))
    log.info("wrote %d re-measurement(s) to %s/records/remeasured (the records are unchanged); "
             "`vtbench report %s` rebuilds the tables", len(updated), args.run_dir, args.run_dir)
    return 0


ROW_KEYS = ("latency_ms_p50", "throughput_img_s", "batch_size_used", "latency_ms_p20", "latency_ms_p80",
            "latency_ms_min", "latency_round_p50_ms", "latency_rounds", "peak_mem_mb", "latency_verdict",
            "latency_noise_reasons")


def output_row(record: dict[str, Any]) -> dict[str, Any]:
    """One re-measured cell as --format json|csv prints it (see the module docstring)."""
    config, metrics = record["config"], record["metrics"]
    row = {"model": config.get("model"), "input_size": config.get("input_size"),
           **{k: metrics.get(k) for k in ROW_KEYS}}
    return {"cell_id": record["cell_id"],
            **common.timm_row(row, train_step=bool((config.get("latency") or {}).get("train_step")))}


TABLE_COLUMNS = (("cell_id", "cell", ""), ("model", "model", ""), ("latency_ms_p50", "p50 ms", ".2f"),
                 ("rounds", "rounds p50 ms", ""), ("peak_mem_mb", "mem MiB", ".1f"), ("verdict", "verdict", ""))


def cells_table(records: list[dict[str, Any]]) -> str:
    """The table: each cell's p50, every round's p50, memory added, and its verdict (reasons if noisy)."""
    rows = []
    for record in records:
        m = record["metrics"]
        verdict = m.get("latency_verdict") or "?"
        if verdict == "noisy":
            verdict = "NOISY: " + "; ".join(m.get("latency_noise_reasons") or [])
        rows.append({"cell_id": record["cell_id"], "model": record["config"].get("model"),
                     "latency_ms_p50": m["latency_ms_p50"], "peak_mem_mb": m.get("peak_mem_mb"), "verdict": verdict,
                     "rounds": ", ".join(f"{v:.1f}" for v in m["latency_round_p50_ms"])})
    return common.format_table(rows, TABLE_COLUMNS)
