"""`vtbench fidelity`: the paper's complexity numbers beside vtbench's models (bench/analysis/fidelity.py).

    vtbench fidelity --out results/fidelity             # the twelve models and the alternative readings
    vtbench fidelity --skip-seg --format csv            # without the (slow) FPN rows; the table as CSV

Writes fidelity.md, fidelity.csv, alternatives.csv and budget.csv into --out, then prints
fidelity.md (`--format table`), or the twelve-model table (fidelity.csv) as JSON lines (one row
each) or CSV.
MACs are counted, not timed: the timing flags of `speed`/`profile` do not apply here.
Exit status 0; 2 on bad input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.cli.commands import common

NAME = "fidelity"
HELP = ("Paper vs measured complexity of the twelve models, per stage, with the alternative readings of "
        "the paper's open choices; writes fidelity.md/csv.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vtbench fidelity` (the shared ones from bench.cli.commands.common)."""
    common.add_out(parser, "results/fidelity", "output folder (default results/fidelity)")
    common.add_format(parser)
    parser.add_argument("--skip-seg", action="store_true", help="leave out the FPN rows (the slow ones)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")


def run(args: argparse.Namespace) -> int:
    """Measure every reading, write the files, print as --format asks."""
    import pandas as pd
    import torch

    from bench.analysis import fidelity

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    fidelity.run(out, skip_seg=args.skip_seg)
    table = pd.read_csv(out / "fidelity.csv")
    rows = table.astype(object).where(table.notna(), None).to_dict(orient="records")
    common.emit(args.format, table=(out / "fidelity.md").read_text(), rows=rows,
                csv_text=(out / "fidelity.csv").read_text())
    return 0
