"""`vtbench speed`: do the VT models' MAC savings become latency savings? ResNet vs VT-ResNet.

    vtbench speed                                       # CPU, fp32, batch 1 and 32 -> runs/speed_cpu
    vtbench speed --gpu --channels-last --out DIR       # CUDA, bf16, batch 1/64/256, eager, CUDA graphs,
                                                        # torch.compile default/reduce-overhead/max-autotune
    vtbench speed --gpu --modes cuda_graphs --flush-l2  # a cold L2 before every timed iteration
    vtbench speed --gpu --dry-run                       # the GPU grid's cells, validated; nothing measured
    vtbench speed --pairs r18 --batch-size 1 --rounds 2 --min-time-s 0.5 --format json

A driver of the one flow every study takes (bench/studies/speed.py `run`): it writes the grid of
the chosen pairs, batch sizes and modes into --out (speed_grid.yaml), runs the cells through the
runner on the local executor (`vtbench launch`), re-measures them in interleaved rounds with stage
times and ceilings (`vtbench interleave --stages --peak`), and writes the report into OUT/report
(the speed sections, OUT/report/speed.csv and speed_stages.csv). Everything goes under --out
(default runs/speed_cpu, or runs/speed_gpu with --gpu). It prints the speed sections
(`--format table`), or their pair rows as JSON (`json`, `jsonl`) or CSV (`csv`). `--dry-run`
builds and validates the study's cells and prints them (one row each), measuring and writing
nothing, on any machine (`--gpu` needs no GPU then). The old `--batch-sizes` still works. Exit
status 0; 1 when a cell has no ok record (e.g. out of memory); 2 on bad input.
"""

from __future__ import annotations

import argparse
import io

from bench.cli.commands import common

NAME = "speed"
HELP = ("ResNet vs VT-ResNet latency side by side: a grid run through the runner, re-measured in interleaved "
        "rounds with per-stage times and the measured GEMM/copy ceilings, reported (OUT/report).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vtbench speed` (the shared ones from bench.cli.commands.common)."""
    common.add_out(parser, None, "output folder, the study's run folder (default runs/speed_cpu, or "
                                 "runs/speed_gpu with --gpu); nothing is written outside it")
    common.add_format(parser, "the report's speed sections")
    common.add_batch_size(parser, "comma-separated batch sizes (default 1,32 on CPU; 1,64,256 with --gpu)")
    common.add_hidden_alias(parser, "--batch-sizes", "batch_size")
    common.add_min_time_s(parser, "timed seconds per model and round (default on CPU 2 at batch <= 8, else 1; "
                                  "1 on CUDA; 0.5 with --quick)")
    parser.add_argument("--gpu", action="store_true", help="CUDA: bf16, batch 1/64/256, eager, compile, CUDA graphs")
    parser.add_argument("--pairs", default="r18,r50", help="comma-separated of r18, r50, fpn (default r18,r50)")
    parser.add_argument("--modes", default=None,
                        help="comma-separated of eager, cuda_graphs, compile, compile_reduce_overhead, "
                             "compile_max_autotune (torch.compile's default, reduce-overhead and max-autotune modes; "
                             "default eager on CPU, all five with --gpu)")
    parser.add_argument("--dtype", default=None, help="fp32 (CPU default) or bf16 (GPU default) or fp16")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4; at least 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all logical CPUs)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    parser.add_argument("--no-stages", dest="stages", action="store_false",
                        help="skip the per-stage times (and the report's 'where the time goes' section)")
    parser.add_argument("--profile", action="store_true",
                        help="also write torch.profiler op tables into OUT (CPU only)")
    parser.add_argument("--quick", action="store_true", help="shorter timing per round (smoke test)")
    parser.add_argument("--no-peak", dest="peak", action="store_false",
                        help="skip measuring the GEMM and copy ceilings (bench.measure.roofline)")
    parser.add_argument("--flush-l2", action="store_true",
                        help="with --gpu: zero a 256 MB buffer before each timed iteration, outside the timed "
                             "events, so every iteration starts from a cold L2 (as triton's do_bench)")
    parser.add_argument("--forms", default=None,
                        help="comma-separated attention forms of the VT models (reference, sdpa, fused: "
                             "models.layers.ATTENTION_IMPLS): each VT model timed in each form, the baseline once; "
                             "the report sets each form beside the reference form (default: the models' default)")
    parser.add_argument("--dry-run", action="store_true",
                        help="build and validate the study's cells and print them; measure and write nothing")
    parser.add_argument("--cluster", choices=("local", "debug"), default="local",
                        help="executor of the cells: local (default, as `vtbench launch`) or debug (in this process)")


def run(args: argparse.Namespace) -> int:
    """Measure the study, then print its speed sections as --format asks."""
    from bench.studies import speed

    result = speed.run(speed.study_options(**_study_kwargs(args)))
    if args.dry_run:
        common.emit_rows(args.format, result.planned, table=planned_table)
        return 0
    common.emit(args.format, table=sections_text(result.sections, args.out), rows=result.rows + result.failed,
                csv_text=_csv_text(result.rows))
    return 0 if result.ok else 1


def planned_table(rows: list[dict]) -> str:
    """A dry run's cells as a markdown table, under one line saying nothing was measured."""
    import pandas as pd

    from bench.analysis.render import markdown_table

    return f"dry run: {len(rows)} cell(s) planned, nothing measured\n\n{markdown_table(pd.DataFrame(rows)).rstrip()}\n"


def sections_text(sections: list, out: str | None) -> str:
    """The speed sections as markdown, each from its section object as report.md prints it."""
    from bench.analysis.render import section_markdown

    if not sections:
        return f"no VT/baseline pair with an ok record in {out or 'the run'}\n"
    return "\n".join(f"{section_markdown(section).rstrip()}\n" for section in sections)


def _csv_text(rows: list[dict]) -> str:
    """The pair rows as CSV (what OUT/report/speed.csv holds)."""
    import pandas as pd

    if not rows:
        return ""
    buffer = io.StringIO()
    pd.DataFrame(rows).to_csv(buffer, index=False)
    return buffer.getvalue()


def _study_kwargs(args: argparse.Namespace) -> dict:
    """The flags as `bench.studies.speed.study_options` takes them (lists parsed, defaults left to it)."""
    from bench.cli.commands.profile import parse_batch_sizes

    return dict(gpu=args.gpu, out=args.out, pairs=_words(args.pairs), modes=_words(args.modes),
                batch_sizes=parse_batch_sizes(args.batch_size) if args.batch_size else None,
                dtype=args.dtype, rounds=args.rounds, threads=args.threads, channels_last=args.channels_last,
                stages=args.stages, profile=args.profile, quick=args.quick, peak=args.peak,
                min_time_s=args.min_time_s, cluster=args.cluster, flush_l2=args.flush_l2, dry_run=args.dry_run,
                forms=_words(args.forms))


def _words(text: str | None) -> list[str] | None:
    """'a,b' -> ['a', 'b']; None or '' -> None (the study's default)."""
    words = [w.strip() for w in (text or "").split(",") if w.strip()]
    return words or None
