"""`vtbench launch GRID`: validate a grid, skip the cells already done, submit the rest as one array.

    vtbench launch experiments/smoke.yaml --wait            # local executor, follow to the end
    vtbench launch experiments/imagenet_repro.yaml --cluster slurm
    vtbench launch experiments/digits_ablation.yaml --dry-run
    vtbench launch experiments/digits_ablation.yaml --dry-run --format csv > cells.csv
    vtbench launch experiments/token_sweep.yaml --set base.latency.threads=2 --set axes.num_tokens=[8,16]

Prints every cell of the grid on stdout, once it is planned (`--dry-run`) or submitted (else; then
before following with `--wait`): `--format table` (default) its id, action, job and a short
description; `json` (JSON lines) and `csv` `cell_id`, `action` (run|skip), `reason` (new, error,
corrupt; ok record, in flight), `job_id` (null on a dry run and for a skipped cell), `model`,
`model_args`, `input_size`, `seed`, `measure` (bench.pipeline.launch.plan_rows). Logs go to stderr. Local
jobs hold none of the launcher's stdio (their controllers write to RUN_DIR/submitit/
local_controllers.log): `vtbench launch GRID | cat` returns once the cells are submitted.

`--set KEY=VALUE` (repeatable; VALUE is YAML) changes the grid before it is validated, as hydra
does: `base.KEY` (a cell key, a dotted path into it, or a short name), `axes.NAME` (replaces or
adds an axis), `resources.KEY`, `include.N.KEY`, `name`, ... (bench.pipeline.grid.apply_overrides). The
run folder's grid.yaml is the overridden grid.

Exit status: 0 when submitted (or, with --wait, when every cell ended with an ok record);
1 when a waited-for cell failed; 2 on bad input (the grid's problems, all on one line);
130 (SIGINT, Ctrl-C) or 143 (SIGTERM) when stopped before it returned: it first cancels the cells
it submitted itself (as `vtbench cancel` would; other launches' cells are left alone) and says
which on one line. With --wait, cells another launch is running are followed to their end and
counted too.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from bench.cli.commands import common

NAME = "launch"
HELP = "Launch a grid (experiments/*.yaml) on the local, debug or SLURM executor."

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vtbench launch`."""
    from bench.pipeline.launch import CLUSTERS

    parser.add_argument("grid", metavar="GRID", help="grid file, e.g. experiments/smoke.yaml")
    parser.add_argument("--cluster", choices=CLUSTERS, default="local",
                        help="submitit executor: local (default, this machine), debug (in this process), "
                             "slurm (needs SLURM_CONF)")
    parser.add_argument("--run-dir", default=None, metavar="DIR", help="run folder (default: runs/<grid name>)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the cells and which would be skipped; write and submit nothing")
    parser.add_argument("--wait", action="store_true",
                        help="follow the cells with a progress bar; exit 1 if one fails")
    parser.add_argument("--max-cells", type=_positive_int, default=None, metavar="N",
                        help="refuse grids above N cells (default: 10000, counted before exclude rules)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change the grid without editing it (YAML value; repeatable): base.KEY=VALUE, "
                             "axes.NAME=[V1,V2], resources.KEY=VALUE, include.N.KEY=VALUE")
    common.add_format(parser, "one line per cell")


def run(args: argparse.Namespace) -> int:
    """Entry point of `vtbench launch`."""
    from bench.pipeline.grid import max_cells_allowed
    from bench.pipeline.launch import PLAN_FIELDS, launch, plan_rows

    overrides = common.parse_overrides(getattr(args, "overrides", []))
    if overrides:
        log.info("grid %s with %s", args.grid, ", ".join(f"{k}={v!r}" for k, v in overrides))
    # bench.pipeline.launch.launch loads the grid itself and takes no cap; the scoped override reaches it.
    with max_cells_allowed(getattr(args, "max_cells", None)):
        result = launch(args.grid, cluster=args.cluster, run_dir=args.run_dir, dry_run=args.dry_run,
                        wait=args.wait, overrides=overrides,
                        on_planned=lambda planned: common.emit_rows(
                            args.format, plan_rows(planned), fields=PLAN_FIELDS,
                            table=lambda rows: plan_table(rows, jobs=not args.dry_run)))
    if args.dry_run:
        log.info("dry run: %d cell(s) would run, %d skipped; nothing written", len(result.plan.to_run),
                 len(result.plan.done) + len(result.plan.in_flight))
        return 0
    if result.finished:
        from bench.core.util import printable

        for cell_id, error in result.failed.items():
            log.error("cell %s failed: %s", cell_id, printable(error, newlines=False))
        log.info("%s: %d ok, %d failed%s, %d done before; `vtbench status %s` for details, "
                 "`vtbench report %s` for tables", result.run_dir, len(result.followed) - len(result.failed),
                 len(result.failed), _elsewhere_note(result), len(result.plan.done),
                 result.run_dir, result.run_dir)
        return 0 if result.ok else 1
    if result.job_id is not None or result.plan.in_flight:
        log.info("follow with: vtbench status %s", result.run_dir)
    return 0


def plan_table(rows: list[dict[str, Any]], jobs: bool) -> str:
    """The cells as a table: id, action (reason), the job given the cell (`jobs`), a short description."""
    from bench.pipeline.launch import describe_cell

    shown = [{**row, "action": f"{row['action']} ({row['reason']})", "cell": describe_cell(row)} for row in rows]
    columns = [("cell_id", "cell", ""), ("action", "action", ""), ("job_id", "job", ""), ("cell", "config", "")]
    return common.format_table(shown, columns if jobs else columns[:2] + columns[3:])


def _elsewhere_note(result) -> str:
    """' (N run by another launch)' when some followed cells were another launch's."""
    return f" ({len(result.elsewhere)} run by another launch)" if result.elsewhere else ""


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the ValueError into exit 2)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value
