"""Flags that the commands share, with one spelling each, and what `--format` prints.

    --out DIR            where the command writes its files
    --format FMT         what goes to stdout: table (for people, the default), json or csv
    --min-time-s S       timed seconds per measurement (the command says per what)
    --batch-size B[,B]   comma-separated batch sizes

Older spellings (`--batch-sizes`, profile's `--min-time`, models' `--json`) stay as hidden aliases
where a command had them, so committed command lines keep working.

Every command's `--format` looks alike: `table` is the readable text; `json` is JSON lines, one
object per row, NaN and infinities as null; `csv` is a header and one row per line, a list or dict
cell as JSON text, an empty cell for null. Only data goes to stdout: logs go to stderr. Rows of
`json` and `csv` are flushed one by one, so a reader (`| head -1`) sees the first at once.

Column names follow timm's results CSVs (timm's benchmark.py) where they mean the same thing
(`TIMM_NAMES`), so that vtbench's CSV merges with timm's on `model`; what timm has no column for
keeps vtbench's own name. Records (`--json PATH`, run folders) keep vtbench's names.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from typing import Any, Callable, Iterable, Sequence

from bench.core.errors import UsageError
from bench.core.util import image_hw

FORMATS = ("table", "json", "csv")


def add_out(parser: argparse.ArgumentParser, default: str | None, what: str) -> None:
    """--out DIR (default `default`; `what` says what goes there)."""
    parser.add_argument("--out", default=default, metavar="DIR", help=what)


def add_format(parser: argparse.ArgumentParser, table: str = "the markdown report") -> None:
    """--format table|json|csv, printed on stdout (`table` says what the table format is)."""
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help=f"what goes to stdout: table ({table}, default), json (JSON lines, one row "
                             f"each) or csv; logs go to stderr")


def add_min_time_s(parser: argparse.ArgumentParser, what: str) -> None:
    """--min-time-s S, a positive number of seconds."""
    parser.add_argument("--min-time-s", type=positive_seconds, default=None, metavar="S", help=what)


def add_batch_size(parser: argparse.ArgumentParser, what: str) -> None:
    """--batch-size B[,B...] (parsed by the command: `bench.cli.commands.profile.parse_batch_sizes`)."""
    parser.add_argument("--batch-size", default=None, metavar="B[,B...]", help=what)


def add_hidden_alias(parser: argparse.ArgumentParser, flag: str, dest: str, *, type: Callable | None = None,
                     const: Any = None) -> None:
    """An old spelling of a flag: accepted, not shown in --help. With `const`, a flag without a value
    that stores `const` (models' `--json`, which means `--format json`); else a value of `type`."""
    if const is not None:
        parser.add_argument(flag, dest=dest, action="store_const", const=const, default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS)
    else:
        parser.add_argument(flag, dest=dest, default=None, type=type, help=argparse.SUPPRESS)


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
    """Print the `table` text, the `rows` as JSON lines, or `csv_text` (a file the command wrote), as
    --format asks."""
    if fmt == "json":
        for row in rows:
            write_stdout(json_line(row))
        return
    write_stdout(csv_text if fmt == "csv" else table)


def emit_rows(fmt: str, rows: Iterable[dict[str, Any]], *, table: Callable[[list[dict[str, Any]]], str],
              fields: Sequence[str] | None = None) -> None:
    """Print `rows` as --format asks: `table(rows)`, JSON lines or CSV (see the module docstring).

    JSON lines go out as the rows come (an iterator may compute them one by one); so does CSV when
    its `fields` are given, else its header is every key of every row, in order of appearance.
    """
    if fmt == "json":
        for row in rows:
            write_stdout(json_line(row))
        return
    if fmt == "csv":
        if fields is None:
            rows = list(rows)
            fields = list(dict.fromkeys(key for row in rows for key in row))
        write_stdout(csv_line(fields))
        for row in rows:
            write_stdout(csv_line([row.get(field) for field in fields]))
        return
    write_stdout(table(list(rows)))


def json_line(row: dict[str, Any]) -> str:
    """One row as one line of JSON (NaN and infinities as null)."""
    return json.dumps(_finite(row), default=str)


def csv_line(values: Sequence[Any]) -> str:
    """One CSV line: null (and NaN) empty, a list or dict as JSON text, anything else as `str`."""
    cells = ["" if v is None else json.dumps(v, default=str) if isinstance(v, (list, dict)) else v
             for v in (_finite(v) for v in values)]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


def write_stdout(text: str) -> None:
    """Write `text` (with a final newline) to stdout and flush it: a pipe reader gets it now."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


# vtbench's key -> the column of timm's results CSVs (timm's benchmark.py) that means the same thing.
# timm's step time is a mean over the timed steps, vtbench's a median (latency_ms_p50); both are
# milliseconds per batch, and samples/s = batch / step time in both. `infer_gmacs` is per image (timm
# profiles at batch 1), as vtbench's gmacs; `param_count` is in millions in both. A train-step
# measurement takes timm's `train_` prefix for the timing columns (`train_samples_per_sec`, ...).
TIMM_NAMES = {
    "model": "model",
    "throughput_img_s": "infer_samples_per_sec",
    "latency_ms_p50": "infer_step_time",
    "batch_size_used": "infer_batch_size",
    "input_size": "infer_img_size",
    "gmacs": "infer_gmacs",
    "params_m": "param_count",
}
_TIMING = ("throughput_img_s", "latency_ms_p50", "batch_size_used", "input_size")


def timm_row(row: dict[str, Any], *, train_step: bool = False) -> dict[str, Any]:
    """`row` with timm's column names where they mean the same thing, those first (in timm's order),
    then vtbench's other keys as they come. A square input size is one side, as timm's `img_size`."""
    names = {k: (v.replace("infer_", "train_") if train_step and k in _TIMING else v) for k, v in TIMM_NAMES.items()}
    out = {names[k]: _img_size(row[k]) if k == "input_size" else row[k] for k in TIMM_NAMES if k in row}
    out.update((k, v) for k, v in row.items() if k not in TIMM_NAMES)
    return out


def _img_size(size: Any) -> Any:
    """224 and [224, 224] -> 224; [224, 320] stays [H, W]."""
    if not isinstance(size, (list, tuple)):
        return size
    height, width = image_hw(size)
    return height if height == width else [height, width]


def parse_overrides(items: Iterable[str], *, python_names: bool = False) -> list[tuple[str, Any]]:
    """`--set` items -> (KEY, VALUE) pairs in order: `["a=1", "b.c=x"]` -> [("a", 1), ("b.c", "x")].

    VALUE is read as YAML (an empty one is None). KEY may be dotted (`train.lr`, `base.num_tokens`)
    unless `python_names`, where it must be a Python name (a model option). UsageError when malformed.
    """
    import yaml  # here: every command's --help imports this module, and yaml adds 13 ms to it

    parsed = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or (python_names and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key)):
            raise UsageError(f"--set expects KEY=VALUE{' with KEY a Python name' if python_names else ''}, "
                             f"got {item!r}")
        try:
            parsed.append((key, yaml.safe_load(value) if value.strip() else None))
        except yaml.YAMLError as exc:
            raise UsageError(f"--set {key}: cannot parse value {value!r}") from exc
    return parsed


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """`rows` under `columns` = [(key, header, format spec)] (`bench.core.tables.text_table`): numeric columns
    right-aligned, text columns left-aligned; missing values print as '-'."""
    from bench.core.tables import is_numeric_column, text_table

    values = [["" if row.get(key) is None else (format(row[key], spec) if spec else str(row[key]))
               for key, _, spec in columns] for row in rows]
    align = ["right" if is_numeric_column(column) else "left" for column in zip(*values)] if values else \
        ["left"] * len(columns)
    cells = [[v or "-" for v in row] for row in values]
    return text_table(cells, [header for _, header, _ in columns], align)


def _finite(value: Any) -> Any:
    """NaN and infinities as null (JSON has no such numbers), in nested rows too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
