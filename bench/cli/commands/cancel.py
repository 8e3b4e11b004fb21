"""`vtbench cancel RUN [--cells ID ...]`: stop a run's queued and running cells, local or SLURM.

    vtbench cancel runs/smoke                      # every cell a job still holds
    vtbench cancel runs/smoke --cells 1a2b3c4d5e6f  # just these

Local jobs are signalled (only a process whose recorded start time still matches); SLURM tasks are
`scancel`-ed. Cancelled cells get no record and show as `stopped` in `vtbench status`;
`vtbench launch` runs them again (training resumes from its last epoch checkpoint).
Prints one line per cancelled cell and a summary. Exit status 0 (also when nothing was running:
it says so); 2 when RUN is not a run folder or a cell id is not one of its cells.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "cancel"
HELP = "Cancel a run's queued and running cells (local jobs or SLURM); `vtbench launch` runs them again."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vtbench cancel`."""
    parser.add_argument("run_dir", metavar="RUN", help="run folder, e.g. runs/smoke")
    parser.add_argument("--cells", nargs="+", metavar="ID", default=None,
                        help="cancel only these cells (ids as `vtbench status` shows them)")


def run(args: argparse.Namespace) -> int:
    """Entry point of `vtbench cancel`."""
    from bench.pipeline.cancel import cancel, format_cancelled

    cancelled = cancel(args.run_dir, args.cells)
    sys.stdout.write(format_cancelled(Path(args.run_dir), cancelled, some_cells=args.cells is not None) + "\n")
    return 0
