"""`vtbench status RUN`: counts of ok / error / running / pending / stopped cells, failures, job ids.

Works from the run folder alone (records, cells.json, jobs.json, the runner's state files), so it
answers with no cluster reachable. `--format table` (default) prints the counts and the cells that
need a look; `json` (JSON lines) and `csv` print one row per cell: `cell_id`, `model`, `state`,
`error`, `note`, `job_id` (the task's job id in its latest submission) and `cluster`
(bench.pipeline.status.status_rows). Exit status 0; 2 when RUN is not a run folder.

    vtbench status runs/smoke --format json | jq -r 'select(.state == "error") | .cell_id'
"""

from __future__ import annotations

import argparse

from bench.cli.commands import common

NAME = "status"
HELP = "Show a run's ok/error/running/pending/stopped cells, each failure's error and the job ids."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vtbench status`."""
    parser.add_argument("run_dir", metavar="RUN", help="run folder, e.g. runs/smoke")
    common.add_format(parser, "the counts and the cells that need a look")


def run(args: argparse.Namespace) -> int:
    """Entry point of `vtbench status`."""
    from bench.pipeline.status import ROW_FIELDS, format_status, run_status, status_rows

    status = run_status(args.run_dir, stale_defaults=True)
    common.emit_rows(args.format, status_rows(status), table=lambda _: format_status(status),
                     fields=ROW_FIELDS)
    return 0
