"""Flags that the measuring commands share, with one spelling each, and what `--format` prints.

    --out DIR            where the command writes its files
    --format FMT         what goes to stdout: table (markdown, the default), json or csv
    --min-time-s S       timed seconds per measurement (the command says per what)
    --batch-size B[,B]   comma-separated batch sizes

Older spellings (`--batch-sizes`, ...) stay as hidden aliases where a command had them, so
committed command lines keep working.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Iterable

FORMATS = ("table", "json", "csv")


def add_out(parser: argparse.ArgumentParser, default: str | None, what: str) -> None:
    """--out DIR (default `default`; `what` says what goes there)."""
    parser.add_argument("--out", default=default, metavar="DIR", help=what)


def add_format(parser: argparse.ArgumentParser) -> None:
    """--format table|json|csv, printed on stdout."""
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="what goes to stdout: table (the markdown report, default), json or csv (the rows)")


def add_min_time_s(parser: argparse.ArgumentParser, what: str) -> None:
    """--min-time-s S, a positive number of seconds."""
    parser.add_argument("--min-time-s", type=positive_seconds, default=None, metavar="S", help=what)


def add_batch_size(parser: argparse.ArgumentParser, what: str) -> None:
    """--batch-size B[,B...] (parsed by the command: `bench.commands.profile.parse_batch_sizes`)."""
    parser.add_argument("--batch-size", default=None, metavar="B[,B...]", help=what)


def add_hidden_alias(parser: argparse.ArgumentParser, flag: str, dest: str) -> None:
    """An old spelling of a flag: accepted, not shown in --help."""
    parser.add_argument(flag, dest=dest, default=None, help=argparse.SUPPRESS)


def positive_seconds(text: str) -> float:
    """argparse type: a finite number > 0 (argparse turns the error into exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def emit(fmt: str, *, table: str, rows: Iterable[dict[str, Any]], csv_text: str) -> None:
    """Print the markdown `table`, the `rows` as JSON, or `csv_text`, as --format asks."""
    if fmt == "json":
        text = json.dumps([_finite(row) for row in rows], indent=2, default=str)
    else:
        text = csv_text if fmt == "csv" else table
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _finite(value: Any) -> Any:
    """NaN and infinities as null (JSON has no such numbers), in nested rows too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
