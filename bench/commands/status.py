"""`vtbench status RUN`: counts of ok / error / running / pending / stopped cells, failures, job ids.

Works from the run folder alone (records, cells.json, jobs.json, the runner's state files), so it
answers with no cluster reachable. Exit status 0; 2 when RUN is not a run folder.
"""

from __future__ import annotations

import argparse
import sys

NAME = "status"
HELP = "Show a run's ok/error/running/pending/stopped cells, each failure's error and the job ids."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vtbench status`."""
    parser.add_argument("run_dir", metavar="RUN", help="run folder, e.g. runs/smoke")


def run(args: argparse.Namespace) -> int:
    """Entry point of `vtbench status`."""
    from bench.status import format_status, run_status

    sys.stdout.write(format_status(run_status(args.run_dir)) + "\n")
    return 0
