"""`vtbench models`: the registered models with their parameters and MACs at their default input size.

A readable table on stdout, or with `--json` a JSON list of rows
(`name`, `task`, `input_size`, `params_m`, `gmacs`, `gmacs_fvcore`, `unsupported_ops`).
MACs are multiply-accumulates per image in the paper's convention (bench/complexity.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

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
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--no-macs", action="store_true", help="parameters only (fast: no tracing)")
    parser.add_argument("--filter", default=None, metavar="TEXT", help="only models whose name contains TEXT")


def describe(name: str, *, macs: bool = True) -> dict[str, Any]:
    """One row: build `name` with its defaults, count parameters and (optionally) MACs."""
    import torch

    from bench.modelref import default_input_size
    from models import build_model

    torch.manual_seed(0)
    model = build_model(name).eval()
    size = default_input_size(model)
    row: dict[str, Any] = {"name": name, "task": getattr(model, "task", None), "input_size": size,
                           "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if macs:
        from bench.complexity import measure_complexity

        metrics = measure_complexity(model, size, batch_size=1).to_metrics()
        unsupported = metrics.get("unsupported_ops") or {}
        row.update(params_m=metrics["params_m"], gmacs=metrics["gmacs"], gmacs_fvcore=metrics.get("gmacs_fvcore"),
                   unsupported_ops=unsupported,
                   unsupported=", ".join(f"{k} x{v}" for k, v in unsupported.items()) or "none")
    return row


def run(args: argparse.Namespace) -> int:
    """Entry point of `vtbench models`."""
    from bench.commands.profile import format_table
    from models import list_models

    names = [n for n in list_models() if not args.filter or args.filter in n]
    rows = []
    for name in names:
        log.debug("describing %s", name)
        rows.append(describe(name, macs=not args.no_macs))
    if args.json:
        json.dump([{k: v for k, v in r.items() if k != "unsupported"} for r in rows], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        columns = COLUMNS[:4] if args.no_macs else COLUMNS
        print(format_table(rows, columns))
    return 0
