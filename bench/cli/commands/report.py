"""`vtbench report RUN [RUN ...]`: tables, plots and the paper's numbers from a run's records."""

from __future__ import annotations

import argparse
import logging

from bench.analysis.report import FORMATS, parse_formats, write_report

NAME = "report"
HELP = ("Report one or more runs: table.csv, report.md and report.html with complexity, latency and "
        "accuracy tables beside the paper's numbers, plots (PNG and SVG), and the cells that failed, timed out "
        "or have no record yet (pending, running, stopped), counted as `vtbench status` counts them.")

log = logging.getLogger("vtbench.report")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `vtbench report`."""
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s) holding records/ (and cells.json)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default: RUN/report for one run; required for several)")
    parser.add_argument("--format", default=",".join(FORMATS), metavar="LIST",
                        help=f"comma-separated subset of {','.join(FORMATS)} (default: all)")


def run(args: argparse.Namespace) -> int:
    """Write the report; bad input raises UsageError (exit 2 via bench.cli)."""
    formats = parse_formats(args.format)
    report = write_report(args.runs, out=args.out, formats=formats)
    for name, path in report.files.items():
        log.info("wrote %s", path)
    table = report.table
    if "latency_noisy" in table.columns and (table["latency_noisy"] == True).any():  # noqa: E712
        noisy = int((table["latency_noisy"] == True).sum())  # noqa: E712
        log.warning("%d of %d latency row(s) are noisy (see the latency tables' noise column); a comparison "
                    "they enter gets no verdict", noisy, int(table["latency_ms_p50"].notna().sum()))
    data = report.data
    if len(data.pending) or len(data.errors) or len(data.corrupt):
        counts = data.state_counts()
        log.warning("partial run: %s; %d corrupt record(s); see the report's last section",
                    ", ".join(f"{counts[s]} {s}" for s in counts if s != "ok" and counts[s]), len(data.corrupt))
    return 0
