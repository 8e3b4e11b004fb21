"""`vtbench fidelity`: the paper's complexity numbers beside vtbench's models (bench/analysis/fidelity.py).

    vtbench fidelity --out results/fidelity             # the twelve models and the alternative readings
    vtbench fidelity --skip-seg --format csv            # without the (slow) FPN rows; the table as CSV
    vtbench fidelity --no-measure                       # only rewrite the files from the run's records

Launches experiments/paper_complexity.yaml into --run-dir (default results/paper_complexity; cells
with an ok record are skipped) and waits, writes that run's report (its fidelity sections), then
fidelity.md, fidelity.csv, fidelity_alternatives.csv and fidelity_budget.csv into --out, and prints
fidelity.md (`--format table`), or the twelve-model table (fidelity.csv) as JSON lines (one row
each) or CSV.
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
    common.add_out(parser, "results/fidelity", "output folder (default results/fidelity)")
    common.add_format(parser)
    parser.add_argument("--run-dir", default=None, metavar="DIR",
                        help="run folder of experiments/paper_complexity.yaml (default results/paper_complexity)")
    parser.add_argument("--skip-seg", action="store_true", help="leave out the FPN rows (the slow ones)")
    parser.add_argument("--no-measure", action="store_true",
                        help="launch nothing: write the report and the files from the records already there")
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)  # ignored: cells set theirs


def run(args: argparse.Namespace) -> int:
    """Run the grid's missing cells, write the files, print as --format asks."""
    import pandas as pd

    from bench.analysis import fidelity

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
