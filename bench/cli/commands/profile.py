"""`vtbench profile MODEL_OR_IMPORT_PATH`: MACs and parameters by stage, latency and memory per batch.

    vtbench profile vt_resnet18 --batch-size 1,32                  # a readable report
    vtbench profile vt_resnet18 --batch-size 1,32 --format csv     # one row per batch size
    vtbench profile vt_resnet18 --json out.json                    # the report, and the record in a file
    vtbench profile vt_resnet18 --json - | jq .metrics.gmacs       # the record on stdout (report on stderr)

Prints the readable report (`--format table`), or one row per batch size (`json`: one JSON array;
`jsonl`: JSON lines; `csv`), in timm's column names where they mean the same thing
(bench/cli/commands/common.py `TIMM_NAMES`): `model`, `infer_samples_per_sec` (throughput_img_s),
`infer_step_time` (ms per batch, the median latency_ms_p50), `infer_batch_size` (the batch size
used), `infer_img_size`, `param_count` (millions), and `infer_gmacs` where the record has fvcore's
total with fvcore's own handles (`gmacs_fvcore_default`, timm's count); with `--train-step` the
timing columns are `train_*`. Every other key keeps vtbench's name: `gmacs` (the paper's
convention), the other complexity metrics (`gmacs_traced`, `gmacs_<stage>`, ...), the latency row's
(`latency_ms_p20`, `peak_mem_mb`, `latency_verdict`, ...), `model_args` and the latency settings
(`device`, `dtype`, ...). `--depth`'s modules are in the report and the record only.
With `--json PATH` it also writes one record (bench/core/records.py), in vtbench's names; `--json -`
writes it to stdout instead, and the report to stderr:

    config:  {"model": ..., "model_args": {...}, "measure": ["complexity", "latency"],
              "input_size": 224 | [H, W], "seed": 0, "complexity": {},
              "latency": {"device", "batch_size": [1, 32], "dtype", "threads", "channels_last",
                          "compile", "cuda_graphs", "train_step"}}
    metrics: the flat complexity metrics (`gmacs` executed, `gmacs_traced`, `gmacs_fvcore`,
             `counter_gap_pct`, `counter_agree`, `counter_warning`, `params_m`, `gmacs_<stage>`, ...;
             bench/measure/complexity.py says which counter gives which), with `--depth N` also
             `modules`: one row per module down to depth N ({"module", "depth", "gmacs",
             "gmacs_traced", "params_m"}, in the model's own order), and
             `latency`: one row per batch size asked for (the dict of `measure_latency`, or
             `{"batch_size_requested": B, "error": "..."}` where it ran out of memory).
             With exactly one batch size, that row's metrics are also copied to the top level
             (`latency_ms_p50`, `throughput_img_s`, ...), as a grid cell's record has them.

When the traced and executed MAC counts disagree by more than 0.5 %, a WARNING line goes to stderr
(bench.measure.complexity logs it) and the printed counters line says DISAGREE.

Exit status: 0, 1 when some batch size ran out of memory (its row says so), 2 on bad input (an
unknown `--set` key of a registered model is refused with a did-you-mean, and a value its builder
refuses, before anything is measured).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Any, Sequence

from bench.cli.commands import common
from bench.cli.commands.common import format_table  # noqa: F401  (models' and tests' table writer too)
from bench.core.errors import UsageError

NAME = "profile"
HELP = "Measure one model (registry name or package.module:callable): MACs, params, latency, memory."

log = logging.getLogger(__name__)

_NOT_STAGES = ("fvcore", "flopcounter", "traced")
GMACS_SPEC = ".4g"  # four significant digits: 0.0005123 G for a tiny net, 17.56 G for ViT-B/16
DEFAULT_MIN_TIME_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vtbench profile`."""
    from bench.core.contracts import COMPILE_MODES, DTYPES

    parser.add_argument("model", metavar="MODEL_OR_IMPORT_PATH",
                        help="a registered model (see `vtbench models`) or package.module:callable")
    parser.add_argument("--input-size", default=None,
                        help="square side or HxW (default: the model's default_input_size, else 224)")
    parser.add_argument("--batch-size", default="1", help="comma-separated batch sizes (default: 1)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="fp32, or bf16/fp16 autocast")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    parser.add_argument("--compile", dest="compile_mode", default=None, choices=COMPILE_MODES, metavar="MODE",
                        help=f"torch.compile mode ({', '.join(COMPILE_MODES)})")
    parser.add_argument("--cuda-graphs", action="store_true", help="time CUDA graph replays of the forward")
    parser.add_argument("--train-step", action="store_true", help="time forward+backward+SGD step, not inference")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: current)")
    overrides = parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                                    help="model option, repeatable (e.g. --set num_tokens=8 --set tokenizer=recurrent)")
    common.registry_help(parser, overrides, lambda: common.model_set_help(
        "model option (e.g. --set num_tokens=8 --set tokenizer=recurrent)"))
    common.add_min_time_s(parser, f"timed seconds per batch size, at least (default {DEFAULT_MIN_TIME_S:g})")
    common.add_hidden_alias(parser, "--min-time", "min_time_s", type=common.positive_seconds)
    parser.add_argument("--no-oom-retry", action="store_true", help="do not retry an out-of-memory at half batch")
    parser.add_argument("--no-latency", action="store_true", help="complexity only")
    parser.add_argument("--no-complexity", action="store_true", help="latency only")
    parser.add_argument("--depth", type=int, default=None, metavar="N",
                        help="also show MACs and params per module down to depth N (1: stages)")
    parser.add_argument("--json", dest="json_path", default=None, metavar="PATH",
                        help="write the record here; '-': to stdout (the report then goes to stderr)")
    common.add_format(parser, "the readable report")


# ------------------------------------------------------------------------------- parsing -----

def parse_batch_sizes(text: str) -> list[int]:
    """`"1,32"` -> [1, 32]; raise UsageError on anything but positive integers."""
    sizes = []
    for part in str(text).split(","):
        part = part.strip()
        if not re.fullmatch(r"\d+", part) or int(part) < 1:
            raise UsageError(f"batch sizes must be positive integers separated by commas, got {text!r}")
        sizes.append(int(part))
    return sizes


def parse_input_size(text: str | None) -> int | list[int] | None:
    """`"224"` -> 224, `"224x320"` -> [224, 320], None -> None; UsageError otherwise."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+)\s*)?", str(text))
    if not match or int(match.group(1)) < 1 or (match.group(2) and int(match.group(2)) < 1):
        raise UsageError(f"input size must be a positive side or HxW, got {text!r}")
    if match.group(2) is None:
        return int(match.group(1))
    return [int(match.group(1)), int(match.group(2))]


def _check_device_options(args: argparse.Namespace, batch_sizes: Sequence[int]) -> None:
    """Fail before building anything when the device cannot run the options asked for."""
    from bench.measure.latency import check_dtype, check_options, resolve_device

    if args.no_latency:
        return
    device = resolve_device(args.device)
    check_options(device=device, batch_size=batch_sizes[0], compile_mode=args.compile_mode,
                  cuda_graphs=args.cuda_graphs, train_step=args.train_step, threads=args.threads)
    check_dtype(device, args.dtype)


# ----------------------------------------------------------------------------- measuring -----

def min_time_s(args: argparse.Namespace) -> float:
    """--min-time-s (or its old spelling --min-time), else the default."""
    return DEFAULT_MIN_TIME_S if args.min_time_s is None else args.min_time_s


def build_config(args: argparse.Namespace, overrides: dict[str, Any], input_size, batch_sizes) -> dict[str, Any]:
    """The record's fully resolved config, in the cell layout of docs/architecture.md."""
    measure = [m for m, off in (("complexity", args.no_complexity), ("latency", args.no_latency)) if not off]
    return {
        "model": args.model,
        "model_args": overrides,
        "measure": measure,
        "input_size": input_size,
        "seed": 0,
        "complexity": {},
        "latency": {"device": args.device, "batch_size": list(batch_sizes), "dtype": args.dtype,
                    "threads": args.threads, "channels_last": args.channels_last,
                    "compile": args.compile_mode, "cuda_graphs": args.cuda_graphs,
                    "train_step": args.train_step, "oom_retry": not args.no_oom_retry,
                    "min_time_s": min_time_s(args)},
    }


def profile(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Validate, build, measure through the runner (`bench.pipeline.runner.record_cell`, as a grid's
    cell is); return (config, metrics, record). A failure other than an out-of-memory is raised."""
    import torch

    from bench.core.modelref import default_input_size, resolve_model_ref
    from bench.pipeline.runner import MeasureOptions, record_cell

    batch_sizes = parse_batch_sizes(args.batch_size)
    input_size = parse_input_size(args.input_size)
    overrides = dict(common.parse_overrides(args.overrides, python_names=True))
    if args.no_latency and args.no_complexity:
        raise UsageError("nothing to measure: --no-latency and --no-complexity together")
    if args.depth is not None and (args.depth < 0 or args.no_complexity):
        raise UsageError(f"--depth needs complexity and a depth >= 0, got {args.depth}"
                         f"{' with --no-complexity' if args.no_complexity else ''}")
    _check_device_options(args, batch_sizes)
    common.check_registry_model_args(args.model, overrides)
    ref = resolve_model_ref(args.model)
    torch.manual_seed(0)
    model = ref.build(**overrides).eval()  # complexity traces inference; latency sets its own mode
    if input_size is None:
        input_size = default_input_size(model)
    config = build_config(args, overrides, input_size, batch_sizes)
    with common.error_said_once():
        record, error = record_cell(config, None, options=MeasureOptions(model=model, depth=args.depth))
    if error is not None:
        raise error
    return config, record["metrics"], record


# ------------------------------------------------------------------------------- output ------

def stage_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-stage MACs and params from the flat `gmacs_<stage>` / `params_m_<stage>` metrics.

    A stage is a key with both a `gmacs_` and a `params_m_` entry (so `gmacs_traced` is not one), in
    the order the metrics hold them: the model's own child order (a registered model's is its
    `models.model_facts(name).stages`; a custom model's children are not reordered).
    """
    stages = [k[len("gmacs_"):] for k in metrics
              if k.startswith("gmacs_") and k[len("gmacs_"):] not in _NOT_STAGES and f"params_m_{k[len('gmacs_'):]}" in metrics]
    rows = [{"stage": s, "gmacs": metrics.get(f"gmacs_{s}"), "params_m": metrics.get(f"params_m_{s}")}
            for s in stages]
    rows.append({"stage": "total", "gmacs": metrics.get("gmacs"), "params_m": metrics.get("params_m")})
    return rows


def module_table(rows: Sequence[dict[str, Any]], agree: bool) -> str:
    """The `--depth` breakdown, names indented by depth; a traced column when the counters disagree."""
    shown = [{**r, "module": "  " * r["depth"] + r["module"]} for r in rows]
    columns = [("module", "module", ""), ("gmacs", "GMACs", GMACS_SPEC), ("params_m", "params M", GMACS_SPEC)]
    if not agree:
        columns.insert(2, ("gmacs_traced", "traced GMACs", GMACS_SPEC))
    return format_table(shown, columns)


def counters_line(metrics: dict[str, Any]) -> str:
    """Which counter gave what, their agreement, and fvcore's unsupported ops, in one line."""
    unsupported = metrics.get("unsupported_ops") or {}
    gap = metrics.get("counter_gap_pct")
    agreement = "agree" if metrics.get("counter_agree", True) else "DISAGREE (see the warning)"
    return (f"GMACs executed (FlopCounterMode) {format(metrics['gmacs'], GMACS_SPEC)}; traced (fvcore) "
            f"{format(metrics.get('gmacs_traced', float('nan')), GMACS_SPEC)}, gap "
            f"{'n/a' if gap is None else f'{gap:+.2f} %'}: {agreement}; fvcore total "
            f"{format(metrics.get('gmacs_fvcore', float('nan')), GMACS_SPEC)}; unsupported ops: "
            f"{', '.join(f'{k} x{v}' for k, v in unsupported.items()) or 'none'}")


LATENCY_COLUMNS = (
    ("batch_size_requested", "batch", ""), ("batch_size_used", "used", ""),
    ("latency_ms_p50", "p50 ms", ".2f"), ("latency_ms_p20", "p20 ms", ".2f"), ("latency_ms_p80", "p80 ms", ".2f"),
    ("latency_iters", "iters", ""), ("throughput_img_s", "img/s", ".1f"), ("peak_mem_mb", "peak MiB", ".0f"),
    ("process_peak_rss_mb", "process MiB", ".0f"), ("latency_verdict", "verdict", ""),
    ("error", "error", ""),
)


def render(config: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The readable report of one profile: header, stages, modules (with --depth), counters, latency."""
    lat = config["latency"]
    head = (f"{config['model']} {config['model_args'] or ''} input {config['input_size']}  "
            f"device {lat['device']} {lat['dtype']}{' channels_last' if lat['channels_last'] else ''}"
            f"{' compile=' + lat['compile'] if lat['compile'] else ''}{' cuda_graphs' if lat['cuda_graphs'] else ''}"
            f"  {'train step' if lat['train_step'] else 'inference'}")
    parts = [head]
    if "gmacs" in metrics:
        parts.append(format_table(stage_rows(metrics), (("stage", "stage", ""), ("gmacs", "GMACs", GMACS_SPEC),
                                                        ("params_m", "params M", GMACS_SPEC))))
        if "modules" in metrics:
            parts.append(module_table(metrics["modules"], metrics.get("counter_agree", True)))
        parts.append(counters_line(metrics))
    if "latency" in metrics:
        from bench.measure.latency import latency_notes

        rows = metrics["latency"]
        parts.append(format_table(rows, LATENCY_COLUMNS if any("error" in r for r in rows) else LATENCY_COLUMNS[:-1]))
        done = [r for r in rows if "error" not in r]
        if done:
            parts.append(f"timer: {done[0]['timer']}; threads {done[0]['threads']}; "
                         f"peak memory = {done[0]['peak_mem_kind']}")
            parts.append("\n".join(latency_notes(done)))  # memory meaning, and a NOISY line per noisy row
    return "\n\n".join(p for p in parts if p)


def output_rows(config: dict[str, Any], metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of --format json|csv: one per batch size (one in all with --no-latency), each with the
    scalar complexity metrics, the latency settings and that batch's latency row, in timm's names
    where they mean the same thing (see the module docstring)."""
    lat = config["latency"]
    base = {"model": config["model"], "model_args": config["model_args"] or {}, "input_size": config["input_size"]}
    base.update((k, v) for k, v in metrics.items() if k not in ("latency", "modules", "counting"))
    measured = metrics.get("latency")
    if measured is None:
        return [common.timm_row(base)]
    settings = {k: lat[k] for k in ("device", "dtype", "channels_last", "compile", "cuda_graphs", "train_step")}
    return [common.timm_row({**base, **settings, **row}, train_step=lat["train_step"]) for row in measured]


def run(args: argparse.Namespace) -> int:
    """Entry point of `vtbench profile`."""
    from bench.core.records import json_text, write_json_atomic

    record_to_stdout = args.json_path == "-"
    if record_to_stdout and args.format != "table":
        raise UsageError(f"--json - writes the record to stdout, where --format {args.format} writes its rows: "
                         f"choose one (or --json PATH)")
    config, metrics, record = profile(args)
    if record_to_stdout:
        if not getattr(args, "quiet", False):
            print(render(config, metrics), file=sys.stderr)
    else:
        common.emit_rows(args.format, output_rows(config, metrics), table=lambda _: render(config, metrics))
    if args.json_path:
        if record_to_stdout:
            common.write_stdout(json_text(record))
        else:
            path = write_json_atomic(args.json_path, record)
            log.info("record written to %s", path)
    return 1 if any("error" in r for r in metrics.get("latency", [])) else 0
