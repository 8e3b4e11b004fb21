"""`vtbench interleave RUN`: re-measure a run's latency cells side by side, in interleaved rounds."""

from __future__ import annotations

import argparse
import logging

NAME = "interleave"
HELP = ("Re-measure the latency cells of a finished run in interleaved rounds in one process (order "
        "reversed every other round), so a shared machine's drift hits every cell alike; updates "
        "their records (median over rounds, every round's p50 kept).")

log = logging.getLogger("vtbench.interleave")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vtbench interleave`."""
    parser.add_argument("run_dir", metavar="RUN", help="run folder whose latency cells have ok records")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5; at least 2)")
    parser.add_argument("--cells", nargs="+", default=None, metavar="ID",
                        help="only these cell ids (default: every latency cell of the run)")
    parser.add_argument("--min-time-s", type=float, default=None,
                        help="timed seconds per cell and round (default: the cell's own setting)")


def run(args: argparse.Namespace) -> int:
    """Measure and rewrite the records; bad input raises UsageError (exit 2 via bench.cli)."""
    from tqdm import tqdm

    from bench.interleave import interleave

    timing = {} if args.min_time_s is None else {"min_time_s": args.min_time_s}
    with tqdm(unit="measurement", desc="interleave", dynamic_ncols=True, disable=None) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        updated = interleave(args.run_dir, rounds=args.rounds, only=args.cells, timing=timing,
                             progress=progress)
    for record in updated:
        log.info("%s", cell_line(record))
    noisy = [r for r in updated if r["metrics"].get("latency_verdict") == "noisy"]
    if noisy:
        log.warning("%d of %d cell(s) are noisy (see bench.latency for the thresholds); their ratios are "
                    "marked in the report", len(noisy), len(updated))
    log.info("updated %d record(s) in %s/records; `vtbench report %s` rebuilds the tables",
             len(updated), args.run_dir, args.run_dir)
    return 0


def cell_line(record: dict) -> str:
    """One cell's line: p50, every round's p50, memory added, and its verdict (with reasons if noisy)."""
    m = record["metrics"]
    spread = ", ".join(f"{v:.1f}" for v in m["latency_round_p50_ms"])
    memory = f"  mem {m['peak_mem_mb']:.1f} MB" if m.get("peak_mem_mb") is not None else ""
    verdict = m.get("latency_verdict") or "?"
    if verdict == "noisy":
        verdict = "NOISY: " + "; ".join(m.get("latency_noise_reasons") or [])
    return f"{record['cell_id']}  p50 {m['latency_ms_p50']:.2f} ms (rounds: {spread}){memory}  {verdict}"
