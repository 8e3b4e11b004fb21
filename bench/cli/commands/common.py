"""Flags that the commands share, with one spelling each, and what `--format` prints.

    --out DIR            where the command writes its files
    --format FMT         what goes to stdout: table (for people, the default), json, jsonl or csv
    --min-time-s S       timed seconds per measurement (the command says per what)
    --batch-size B[,B]   comma-separated batch sizes

Older spellings (`--batch-sizes`, profile's `--min-time`, models' `--json`) stay as hidden aliases
where a command had them, so committed command lines keep working.

Every command's `--format` looks alike: `table` is the readable text; `json` is one JSON document,
an array of row objects (what `python3 -m json.tool` and `jq .` read; `jq '.[]'` gives the rows);
`jsonl` is JSON lines, one object per row (what `jq -c`, pandas' `read_json(lines=True)` and
stream readers take); NaN and infinities are null in both; `csv` is a header and one row per line,
a list or dict cell as JSON text, an empty cell for null. Only data goes to stdout: logs go to
stderr. Rows are flushed one by one in every format but `table`, so a reader (`| head -1`) sees
the first at once (the `json` array is complete, and parses, when the command ends).

Column names follow timm's results CSVs (timm's benchmark.py) where they mean the same thing
(`TIMM_NAMES`), so that vtbench's CSV merges with timm's on `model`; what timm has no column for
keeps vtbench's own name. Records (`--json PATH`, run folders) keep vtbench's names.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import difflib
import io
import json
import logging
import math
import re
import sys
from typing import Any, Callable, Iterable, Iterator, Sequence

from bench.core.errors import UsageError
from bench.core.util import image_hw

FORMATS = ("table", "json", "jsonl", "csv")


def add_out(parser: argparse.ArgumentParser, default: str | None, what: str) -> None:
    """--out DIR (default `default`; `what` says what goes there)."""
    parser.add_argument("--out", default=default, metavar="DIR", help=what)


def add_format(parser: argparse.ArgumentParser, table: str = "the markdown report") -> None:
    """--format table|json|csv, printed on stdout (`table` says what the table format is)."""
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help=f"what goes to stdout: table ({table}, default), json (one JSON document: an "
                             f"array of rows), jsonl (JSON lines, one row each) or csv; logs go to stderr")


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
    """Print the `table` text, the `rows` as one JSON array or as JSON lines, or `csv_text` (a file the
    command wrote), as --format asks."""
    if fmt in ("json", "jsonl"):
        write_json_rows(fmt, rows)
        return
    write_stdout(csv_text if fmt == "csv" else table)


def write_json_rows(fmt: str, rows: Iterable[dict[str, Any]]) -> None:
    """`json`: one array, written row by row ("[", the rows between commas, "]"); `jsonl`: a line each."""
    if fmt == "jsonl":
        for row in rows:
            write_stdout(json_line(row))
        return
    opened = False
    for row in rows:
        sys.stdout.write((",\n" if opened else "[\n") + json_line(row))
        sys.stdout.flush()
        opened = True
    write_stdout("\n]" if opened else "[]")


def emit_rows(fmt: str, rows: Iterable[dict[str, Any]], *, table: Callable[[list[dict[str, Any]]], str],
              fields: Sequence[str] | None = None) -> None:
    """Print `rows` as --format asks: `table(rows)`, JSON lines or CSV (see the module docstring).

    JSON rows go out as they come (an iterator may compute them one by one); so does CSV when its
    `fields` are given, else its header is every key of every row, in order of appearance.
    """
    if fmt in ("json", "jsonl"):
        write_json_rows(fmt, rows)
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
# milliseconds per batch, and samples/s = batch / step time in both. `param_count` is in millions in
# both. timm's `infer_gmacs` is fvcore's `FlopCountAnalysis(model, x).total()` with fvcore's own op
# handles, per image (timm profiles at batch 1): convolutions and matrix products, and batch/group/
# layer norms, adaptive pooling and upsampling too. So it takes vtbench's `gmacs_fvcore_default`,
# the same count; vtbench's headline `gmacs` (the paper's convention: convolutions and matrix
# products only, as executed) keeps its own name, as does `gmacs_fvcore` (fvcore's total with
# vtbench's extra handles: softmax, pooling, additions, ...). A train-step measurement takes timm's
# `train_` prefix for the timing columns (`train_samples_per_sec`, ...).
TIMM_NAMES = {
    "model": "model",
    "throughput_img_s": "infer_samples_per_sec",
    "latency_ms_p50": "infer_step_time",
    "batch_size_used": "infer_batch_size",
    "input_size": "infer_img_size",
    "gmacs_fvcore_default": "infer_gmacs",
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


# ------------------------------------------------------------------ help from the registries ------

class RegistryHelpFormatter(argparse.HelpFormatter):
    """Help texts that list a registry's entries (data sets, model options) are computed when --help
    prints them, from the registry itself: the registries import torch, which parsing never needs."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = getattr(action, "registry_help", None)
        return text().replace("%", "%%") if text is not None else super()._get_help_string(action)


def registry_help(parser: argparse.ArgumentParser, action: argparse.Action, text: Callable[[], str]) -> None:
    """Give `action` a help text computed from a registry when --help prints it."""
    action.registry_help = text  # type: ignore[attr-defined]
    parser.formatter_class = RegistryHelpFormatter


def dataset_help() -> str:
    """The registered data sets, and which read files (`--data-root`) or need installing."""
    from bench.measure.data import dataset_spec, list_datasets

    specs = [dataset_spec(n) for n in list_datasets()]
    rooted = [s.name for s in specs if s.needs_root]
    return (f"a registered data set: {', '.join(s.name for s in specs)}; "
            f"{', '.join(rooted)} read --data-root DIR" + "".join(
                f"; {s.name}: {s.layout}" for s in specs if not s.needs_root and "apt-get" in s.layout))


def model_choices() -> dict[str, tuple[str, ...]]:
    """The named choices of the VT models' options (`tokenizer`, `transformer`, `stem`), from models/."""
    from models import factories, resnet, zoo

    return {"tokenizer": tuple(zoo.VT_RESNET_TOKENIZERS), "transformer": tuple(factories.TRANSFORMERS),
            "stem": tuple(resnet.STEMS)}


def model_set_help(what: str) -> str:
    """--set's help: `what`, then the named choices of the model options."""
    choices = "; ".join(f"{k}: {', '.join(v)}" for k, v in model_choices().items())
    return f"{what}; repeatable. Model options: `vtbench models` lists the models, and {choices}"


# ------------------------------------------------------------------------- checked options ------

def check_option_names(given: Iterable[str], known: Iterable[str], *, what: str, hint: str = "") -> None:
    """Refuse (UsageError, one line) a key not in `known`, with a did-you-mean and the known keys."""
    known = sorted(set(known))
    unknown = [k for k in given if k not in known]
    if not unknown:
        return
    key = unknown[0]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    raise UsageError(f"--set {key}: not {what}{f' (did you mean {close[0]}?)' if close else ''}; "
                     f"known: {', '.join(known)}{hint}")


def check_registry_model_args(model: str, model_args: dict[str, Any], *, also: Iterable[str] = (),
                              hint: str = "") -> None:
    """For a registered model: each key of `model_args` is one of its options (or of `also`, other
    keys --set takes), and the builder accepts the values, tried on the meta device (no memory, no
    time). A model given by import path or timm name is checked when it is built."""
    from models import is_registered, model_options

    if not is_registered(model):
        return
    check_option_names(model_args, [*model_options(model), *also], what=f"an option of {model}", hint=hint)
    import torch

    from models import build_model

    try:
        with torch.device("meta"):
            build_model(model, **model_args)
    except ValueError as exc:  # the builders' word for a value they refuse
        raise UsageError(f"{model}: {str(exc).strip().splitlines()[0]}") from exc
    except Exception as exc:  # noqa: BLE001 - something the meta device cannot do: the real build checks
        logging.getLogger(__name__).debug("meta-device check of %s skipped: %s", model, exc)


class _DropCellFailed(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("cell failed")


@contextlib.contextmanager
def error_said_once() -> Iterator[None]:
    """While a command runs its cell in-process and re-raises the failure (the command line then prints
    it as its one error line), the runner's own 'cell failed' log line is dropped (the record keeps
    the traceback, and -v prints it)."""
    runner_log = logging.getLogger("bench.pipeline.runner")
    dropped = _DropCellFailed()
    runner_log.addFilter(dropped)
    try:
        yield
    finally:
        runner_log.removeFilter(dropped)
