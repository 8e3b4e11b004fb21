"""`vtbench speed`: do the VT models' MAC savings become latency savings? ResNet vs VT-ResNet.

    vtbench speed --out results/speed_cpu               # CPU, fp32, batch 1 and 32, interleaved rounds
    vtbench speed --gpu --channels-last                 # CUDA, bf16, batch 1/64/256, eager/compile/CUDA graphs
    vtbench speed --pairs r18 --batch-size 1 --rounds 2 --min-time-s 0.5 --format json
    vtbench speed --render results/speed_cpu --format csv   # a legacy study: rebuild from its speed.json

A driver of the one flow every study takes (bench/analysis/speed.py `run`): it writes the grid of
the chosen pairs, batch sizes and modes into --out (speed_grid.yaml), runs the cells through the
runner on the local executor (`vtbench launch`), re-measures them in interleaved rounds with stage
times and ceilings (`vtbench interleave --stages --peak`), and writes the report into OUT/report
(the speed section and OUT/report/speed.csv). It prints that section (`--format table`), or its
pair rows as JSON lines (`json`) or CSV (`csv`). `--render DIR` rebuilds a legacy study's speed.md
and speed.csv from DIR/speed.json (measured by the former own loop) and prints them. The old
`--batch-sizes` still works. Exit status 0; 1 when a cell has no ok record (e.g. out of memory);
2 on bad input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.cli.commands import common
from bench.core.errors import UsageError

NAME = "speed"
HELP = ("ResNet vs VT-ResNet latency side by side: a grid run through the runner, re-measured in interleaved "
        "rounds with per-stage times and the measured GEMM/copy ceilings, reported (OUT/report).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vtbench speed` (the shared ones from bench.cli.commands.common)."""
    common.add_out(parser, None, "output folder (default results/speed_cpu, or results/speed_gpu with --gpu)")
    common.add_format(parser)
    common.add_batch_size(parser, "comma-separated batch sizes (default 1,32 on CPU; 1,64,256 with --gpu)")
    common.add_hidden_alias(parser, "--batch-sizes", "batch_size")
    common.add_min_time_s(parser, "timed seconds per model and round (default on CPU 2 at batch <= 8, else 1; "
                                  "1 on CUDA; 0.5 with --quick)")
    parser.add_argument("--gpu", action="store_true", help="CUDA: bf16, batch 1/64/256, eager, compile, CUDA graphs")
    parser.add_argument("--pairs", default="r18,r50", help="comma-separated of r18, r50, fpn (default r18,r50)")
    parser.add_argument("--modes", default=None, help="comma-separated of eager, compile, cuda_graphs")
    parser.add_argument("--dtype", default=None, help="fp32 (CPU default) or bf16 (GPU default) or fp16")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4; at least 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all logical CPUs)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    parser.add_argument("--no-stages", action="store_true", help="skip the per-stage breakdown")
    parser.add_argument("--profile", action="store_true", help="write torch.profiler op tables (CPU)")
    parser.add_argument("--quick", action="store_true", help="shorter timing per round (smoke test)")
    parser.add_argument("--no-peak", dest="peak", action="store_false",
                        help="skip measuring the GEMM and copy ceilings (bench.measure.roofline)")
    parser.add_argument("--not-shared", dest="shared", action="store_false",
                        help=argparse.SUPPRESS)  # the legacy report's wording; accepted, no effect now
    parser.add_argument("--cluster", choices=("local", "debug"), default="local",
                        help="executor of the cells: local (default, as `vtbench launch`) or debug (in this process)")
    parser.add_argument("--render", metavar="DIR", default=None,
                        help="measure nothing: rebuild DIR/speed.md and speed.csv from DIR/speed.json")


def run(args: argparse.Namespace) -> int:
    """Measure (or re-render) the study, then print it as --format asks."""
    from bench.analysis import speed

    if args.render:
        if args.out is not None:
            raise UsageError("--render DIR rewrites DIR's own speed.md and speed.csv; --out does not apply")
        out = Path(args.render)
        if not (out / "speed.json").is_file():
            raise UsageError(f"--render {args.render}: no speed.json there")
        summaries = speed.render(out)
        common.emit(args.format, table=(out / "speed.md").read_text(), rows=summaries,
                    csv_text=(out / "speed.csv").read_text())
    else:
        opts = speed.study_options(**_study_kwargs(args))
        out = Path(opts.out)
        summaries = speed.run(opts)
        csv_path = out / "report" / "speed.csv"
        common.emit(args.format, table=_section_text(out / "report" / "report.md"), rows=summaries,
                    csv_text=csv_path.read_text() if csv_path.is_file() else "")
    return 0 if all("error" not in s for s in summaries) else 1


def _section_text(report_md: Path) -> str:
    """The speed sections of OUT/report/report.md (from their heading to the next section's)."""
    lines, keep = [], False
    for line in report_md.read_text().splitlines():
        if line.startswith("## "):
            keep = line.startswith("## Speed")
        if keep:
            lines.append(line)
    return "\n".join(lines).rstrip("\n") + "\n" if lines else f"no speed pair in {report_md}\n"


def _study_kwargs(args: argparse.Namespace) -> dict:
    """The flags as `bench.analysis.speed.study_options` takes them (lists parsed, defaults left to it)."""
    from bench.cli.commands.profile import parse_batch_sizes

    return dict(gpu=args.gpu, out=args.out, pairs=_words(args.pairs), modes=_words(args.modes),
                batch_sizes=parse_batch_sizes(args.batch_size) if args.batch_size else None,
                dtype=args.dtype, rounds=args.rounds, threads=args.threads, channels_last=args.channels_last,
                no_stages=args.no_stages, profile=args.profile, quick=args.quick, peak=args.peak,
                shared=args.shared, min_time_s=args.min_time_s, cluster=args.cluster)


def _words(text: str | None) -> list[str] | None:
    """'a,b' -> ['a', 'b']; None or '' -> None (the study's default)."""
    words = [w.strip() for w in (text or "").split(",") if w.strip()]
    return words or None
