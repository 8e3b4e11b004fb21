"""`vtbench models`: the registered models with their parameters and MACs at their default input size.

    vtbench models                              # a readable table
    vtbench models --format csv > models.csv    # merges with timm's results CSVs on `model`
    vtbench models --format json | head -1      # JSON lines, one model each, printed as counted

`--format json|csv` rows, in timm's column names where they mean the same thing
(bench/cli/commands/common.py `TIMM_NAMES`): `model`, `infer_img_size` (the default input side),
`param_count` (millions), `infer_gmacs` (MACs per image, executed: the paper's convention,
bench/measure/complexity.py), then vtbench's own `task`, `gmacs_fvcore` and `unsupported_ops` (op -> count in
fvcore's trace). `--json` is the old spelling of `--format json`.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, Iterator

from bench.cli.commands import common

NAME = "models"
HELP = "List the registered models with parameters and MACs at their default input size."

log = logging.getLogger(__name__)

COLUMNS = (
    ("name", "model", ""), ("task", "task", ""), ("input_size", "input", ""),
    ("params_m", "params M", ".2f"), ("gmacs", "GMACs", ".3f"), ("gmacs_fvcore", "fvcore GMACs", ".3f"),
    ("unsupported", "unsupported ops", ""),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vtbench models`."""
    common.add_format(parser, "aligned columns")
    common.add_hidden_alias(parser, "--json", "format", const="json")
    parser.add_argument("--no-macs", action="store_true", help="parameters only (fast: no tracing)")
    parser.add_argument("--filter", default=None, metavar="TEXT", help="only models whose name contains TEXT")


def describe(name: str, *, macs: bool = True) -> dict[str, Any]:
    """One row: build `name` with its defaults, count parameters and (optionally) MACs."""
    import torch

    from bench.core.modelref import default_input_size
    from models import build_model

    torch.manual_seed(0)
    model = build_model(name).eval()
    size = default_input_size(model)
    row: dict[str, Any] = {"name": name, "task": getattr(model, "task", None), "input_size": size,
                           "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if macs:
        from bench.measure.complexity import measure_complexity

        metrics = measure_complexity(model, size, batch_size=1).to_metrics()
        unsupported = metrics.get("unsupported_ops") or {}
        row.update(params_m=metrics["params_m"], gmacs=metrics["gmacs"], gmacs_fvcore=metrics.get("gmacs_fvcore"),
                   unsupported_ops=unsupported,
                   unsupported=", ".join(f"{k} x{v}" for k, v in unsupported.items()) or "none")
    return row


# The keys of `describe`'s rows that --format json|csv prints (before their timm names).
ROW_KEYS = ("name", "task", "input_size", "params_m", "gmacs", "gmacs_fvcore", "unsupported_ops")


def output_row(row: dict[str, Any]) -> dict[str, Any]:
    """A `describe` row as --format json|csv prints it: timm's names where they mean the same."""
    kept = {("model" if k == "name" else k): row[k] for k in ROW_KEYS if k in row}
    return common.timm_row(kept)


def run(args: argparse.Namespace) -> int:
    """Entry point of `vtbench models`."""
    from models import list_models

    names = [n for n in list_models() if not args.filter or args.filter in n]
    columns = COLUMNS[:4] if args.no_macs else COLUMNS

    def rows() -> Iterator[dict[str, Any]]:
        for name in names:
            log.debug("describing %s", name)
            row = describe(name, macs=not args.no_macs)
            yield row if args.format == "table" else output_row(row)

    fields = list(output_row({k: None for k in ROW_KEYS[:4 if args.no_macs else None]}))
    common.emit_rows(args.format, rows(), table=lambda done: common.format_table(done, columns), fields=fields)
    return 0
