"""`vtbench fidelity`: the paper's complexity numbers beside vtbench's models (bench/studies/fidelity.py).

    vtbench fidelity --out runs/fidelity                # the twelve models and the alternative readings
    vtbench fidelity --skip-seg --format csv            # without the (slow) FPN rows; the table as CSV
    vtbench fidelity --no-measure --out DIR             # only write the files from the run's records

Runs the cells of experiments/paper_complexity.yaml that have no ok record into --run-dir (default
results/paper_complexity) and waits; when any ran, rewrites that run's report. Then writes
fidelity.md, fidelity.csv, fidelity_alternatives.csv and fidelity_budget.csv into --out, and prints
fidelity.md (`--format table`), or the twelve-model table (fidelity.csv) as JSON lines (one row
each) or CSV. With --no-measure, or when every cell has its record, only --out is written.
MACs are counted, not timed: the timing flags of `speed`/`profile` do not apply here.
Exit status 0; 2 on bad input or a failed cell.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.cli.commands import common

NAME = "fidelity"
HELP = ("Paper vs measured complexity of the twelve models, per stage, with the alternative readings of "
        "the paper's open choices: runs the paper_complexity grid, then writes fidelity.md/csv.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vtbench fidelity` (the shared ones from bench.cli.commands.common)."""
    common.add_out(parser, "runs/fidelity", "output folder (default runs/fidelity); with --no-measure, or when "
                                            "every cell has its record, nothing is written outside it")
    common.add_format(parser, "fidelity.md")
    parser.add_argument("--run-dir", default=None, metavar="DIR",
                        help="run folder of experiments/paper_complexity.yaml (default results/paper_complexity)")
    parser.add_argument("--skip-seg", action="store_true", help="leave out the FPN rows (the slow ones)")
    parser.add_argument("--no-measure", action="store_true",
                        help="launch nothing: write the files into --out from the records already there")


def run(args: argparse.Namespace) -> int:
    """Run the grid's missing cells, write the files, print as --format asks."""
    import pandas as pd

    from bench.studies import fidelity

    out = Path(args.out)
    extra = {}
    if args.run_dir:
        extra["run_dir"] = Path(args.run_dir)
    if args.no_measure:
        extra["measure"] = False
    fidelity.run(out, skip_seg=args.skip_seg, **extra)
    table = pd.read_csv(out / "fidelity.csv")
    rows = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    common.emit(args.format, table=(out / "fidelity.md").read_text(), rows=rows,
                csv_text=(out / "fidelity.csv").read_text())
    return 0
