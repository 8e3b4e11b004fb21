"""Do the VT models' MAC savings become latency savings? ResNet vs VT-ResNet, side by side.

    vtbench speed --out runs/speed_cpu          # CPU, fp32 inference, batch 1 and 32
    vtbench speed --gpu --out runs/speed_gpu    # CUDA, bf16, batch 1/64/256, eager, CUDA graphs and
                                                # torch.compile default, reduce-overhead, max-autotune

(The command's flags are in bench/cli/commands/speed.py.)

The study is a grid plus interleaved rounds plus a report section, like any other run: `run` writes
the grid of the chosen pairs, batch sizes and modes into OUT (`study_grid`; every model built with
seed 0, ImageNet stem, 1000 classes at 224, segmentation models at 473), runs its cells through the
runner on the local executor (`vtbench launch`), re-measures every latency cell in ONE process in
alternating-order rounds (`vtbench interleave --stages --peak`: A B C D, then D C B A, ..., with
per-stage times and the machine's GEMM/copy ceilings before and after), and writes the report into
OUT/report, whose speed sections (bench/analysis/speed_report.py) give each pair's latency ratio
per round against the MACs ratio. The same study by hand: `vtbench launch experiments/speed_cpu.yaml
--run-dir DIR`, `vtbench interleave DIR --rounds 4 --stages --peak`, `vtbench report DIR`.

The GPU protocol: every mode is a cell of its own (`GRID_MODES`: eager, CUDA graphs, and
`torch.compile` in its default, `reduce-overhead` and `max-autotune` modes, the last two capturing
CUDA graphs themselves); `flush_l2` zeroes a 256 MB buffer before each timed iteration, outside the
timed events, so that every iteration starts from a cold L2 as in `triton.testing.do_bench`
(a cell key, `latency.flush_l2`, so flushed and unflushed cells never pair). A dry run
(`dry_run`) builds and validates the grid's cells and measures nothing: the GPU grid can be
checked on a CPU (scripts/gpu_check.sh --dry-run).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from bench.analysis import speed_report
from bench.analysis.section import StudySection
from bench.core.errors import UsageError
from models import model_facts
from models.layers import ATTENTION_IMPLS

log = logging.getLogger(__name__)

# The study's pairs (`--pairs`): a VT model each, timed beside the baseline the registry names for it.
PAIRS = {"r18": "vt_resnet18", "r50": "vt_resnet50", "fpn": "vt_fpn_r50"}
DEFAULT_PAIRS = ("r18", "r50")
INPUT_SIZE = 224
SEG_INPUT_SIZE = 473  # the paper's semantic-segmentation size (Table 6), for every segmentation model
# The defaults write under runs/ (ignored by git): a study never lands in the committed results/ unless asked.
CPU_DEFAULTS = dict(batch_sizes=(1, 32), modes=("eager",), dtype="fp32", device="cpu", out="runs/speed_cpu")
GPU_DEFAULTS = dict(batch_sizes=(1, 64, 256),
                    modes=("eager", "cuda_graphs", "compile", "compile_reduce_overhead", "compile_max_autotune"),
                    dtype="bf16", device="cuda", out="runs/speed_gpu")
# A mode's keys in a cell's latency section (bench.core.contracts.LatencyOptions).
GRID_MODES = {"eager": {}, "compile": {"compile": "default"},
              "compile_reduce_overhead": {"compile": "reduce-overhead"},
              "compile_max_autotune": {"compile": "max-autotune"}, "cuda_graphs": {"cuda_graphs": True}}
# Every block states every mode key: an include inherits the base's keys, and the base is the first mode's.
MODE_KEYS_OFF = {"compile": None, "cuda_graphs": False}
DTYPES = ("fp32", "bf16", "fp16")
GRID_FILE = "speed_grid.yaml"


@dataclass(frozen=True)
class StudyOptions:
    """The study's resolved options (`study_options` fills the defaults and checks the values)."""

    out: str
    pairs: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    modes: tuple[str, ...]
    dtype: str
    device: str
    rounds: int = 4
    threads: int | None = None
    channels_last: bool = False
    stages: bool = True
    peak: bool = True
    profile: bool = False
    quick: bool = False
    min_time_s: float | None = None
    cluster: str = "local"
    flush_l2: bool = False
    dry_run: bool = False
    forms: tuple[str, ...] = ()

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"


@dataclass
class StudyResult:
    """What `run` gives back: the report's speed sections, their pair rows, the cells without an ok
    record, and on a dry run the cells it would measure (`planned`, nothing measured)."""

    sections: list[StudySection]
    rows: list[dict[str, Any]]
    failed: list[dict[str, str]] = field(default_factory=list)
    planned: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def input_size(name: str) -> int:
    """The side of the square input a model of the study is timed at (by the registry's task)."""
    return SEG_INPUT_SIZE if model_facts(name).task == "seg" else INPUT_SIZE


def pair_models(key: str) -> tuple[str, str]:
    """(baseline, VT model) of the pair `key`: r18 -> (resnet18, vt_resnet18)."""
    vt = PAIRS[key]
    return model_facts(vt).baseline, vt


def timing_options(batch: int, device: str, quick: bool, min_time_s: float | None = None) -> dict[str, Any]:
    """Warm-up and iteration limits: short per round, since the rounds themselves repeat.
    `min_time_s` (`--min-time-s`), when given, replaces the timed seconds per model and round."""
    if device == "cpu":
        heavy = batch > 8
        options = dict(warmup_min_iters=1 if heavy else 3, warmup_max_s=2.0 if heavy else 3.0,
                       min_iters=3 if heavy else 10, min_time_s=0.5 if quick else (1.0 if heavy else 2.0),
                       max_time_s=60.0)
    else:
        options = dict(warmup_min_iters=10, warmup_max_s=10.0, min_iters=20, min_time_s=0.5 if quick else 1.0)
    if min_time_s is not None:
        options["min_time_s"] = min_time_s
        if "max_time_s" in options:
            options["max_time_s"] = max(options["max_time_s"], min_time_s)
    return options


def study_options(*, gpu: bool = False, out: str | None = None, pairs: Sequence[str] | None = None,
                  batch_sizes: Sequence[int] | None = None, modes: Sequence[str] | None = None,
                  dtype: str | None = None, rounds: int = 4, threads: int | None = None,
                  channels_last: bool = False, stages: bool = True, peak: bool = True, profile: bool = False,
                  quick: bool = False, min_time_s: float | None = None, cluster: str = "local",
                  flush_l2: bool = False, dry_run: bool = False, forms: Sequence[str] | None = None) -> StudyOptions:
    """The study's options: `gpu` picks the CUDA defaults, anything not given takes them; UsageError
    on a bad value. A dry run of the GPU study needs no GPU (it measures nothing)."""
    defaults = GPU_DEFAULTS if gpu else CPU_DEFAULTS
    opts = StudyOptions(
        out=out or defaults["out"], pairs=tuple(pairs or DEFAULT_PAIRS),
        batch_sizes=tuple(batch_sizes or defaults["batch_sizes"]), modes=tuple(modes or defaults["modes"]),
        dtype=dtype or defaults["dtype"], device=defaults["device"], rounds=rounds,
        threads=threads or (None if gpu else os.cpu_count()), channels_last=channels_last, stages=stages,
        peak=peak, profile=profile, quick=quick, min_time_s=min_time_s, cluster=cluster, flush_l2=flush_l2,
        dry_run=dry_run, forms=tuple(dict.fromkeys(forms or ())))
    unknown_forms = [f for f in opts.forms if f not in ATTENTION_IMPLS]
    if unknown_forms:
        raise UsageError(f"unknown attention form {', '.join(map(repr, unknown_forms))}: forms are "
                         f"{', '.join(ATTENTION_IMPLS)}")
    bad = [m for m in opts.modes if m not in GRID_MODES] + [k for k in opts.pairs if k not in PAIRS]
    if bad:
        raise UsageError(f"unknown mode or pair {', '.join(map(repr, bad))}: modes are {', '.join(GRID_MODES)}, "
                         f"pairs {', '.join(PAIRS)}")
    if rounds < 2:
        raise UsageError(f"--rounds must be at least 2 to interleave, got {rounds}")
    if opts.dtype not in DTYPES:
        raise UsageError(f"--dtype must be fp32, bf16 or fp16, got {opts.dtype!r}")
    if profile and gpu:
        raise UsageError("--profile writes CPU op tables; it does not apply with --gpu")
    if flush_l2 and not gpu:
        raise UsageError("--flush-l2 needs --gpu: it flushes the GPU's L2 cache between timed iterations")
    if gpu and not dry_run and not _cuda_available():
        raise UsageError("--gpu needs CUDA, which is not available on this machine")
    return opts


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def study_grid(opts: StudyOptions) -> dict[str, Any]:
    """The study as a grid (experiments/*.yaml's format): every model of the pairs at every batch
    size and mode, at the study's device, dtype, threads and memory format, each batch size with
    its own warm-up and timing (`timing_options`); classification models at 224 with 1000 classes,
    segmentation models at 473 with their default classes."""
    groups: dict[tuple[int, int], list[str]] = {}
    for key in opts.pairs:
        for name in pair_models(key):
            facts = model_facts(name)
            classes = 1000 if facts.task == "cls" else int(facts.defaults["num_classes"])
            groups.setdefault((input_size(name), classes), []).append(name)
    blocks = []
    for mode in opts.modes:
        for batch in opts.batch_sizes:
            latency = {"device": opts.device, "batch_size": batch, "dtype": opts.dtype, "threads": opts.threads,
                       "channels_last": opts.channels_last, **MODE_KEYS_OFF, **GRID_MODES[mode],
                       **({"flush_l2": True} if opts.flush_l2 else {}),
                       **timing_options(batch, opts.device, opts.quick, opts.min_time_s)}
            for (size, classes), models in groups.items():
                blocks += model_blocks(list(dict.fromkeys(models)), size, classes, latency, opts.forms)
    first, rest = blocks[0], blocks[1:]
    return {
        "name": "speed",
        "description": (f"vtbench speed: pairs {', '.join(opts.pairs)}, batch {', '.join(map(str, opts.batch_sizes))}, "
                        f"modes {', '.join(opts.modes)}, {opts.device} {opts.dtype}"
                        f"{', channels_last' if opts.channels_last else ''}; then vtbench interleave and report"),
        "base": {"model": first["models"][0], "model_args": first["model_args"], "measure": ["complexity", "latency"],
                 "input_size": first["input_size"], "seed": 0, "latency": first["latency"]},
        "axes": {"model": first["models"]},
        "include": [{"input_size": b["input_size"], **{f"model_args.{k}": v for k, v in b["model_args"].items()},
                     **{f"latency.{k}": v for k, v in b["latency"].items()}, "axes": {"model": b["models"]}}
                    for b in rest],
        "resources": {"timeout_min": 240, "cpus_per_task": os.cpu_count() or 1, "gpus_per_node": 1 if opts.gpu else 0,
                      "array_parallelism": 1, "local_parallelism": 1},
    }


def model_blocks(models: list[str], size: int, classes: int, latency: dict[str, Any],
                 forms: Sequence[str]) -> list[dict[str, Any]]:
    """The grid blocks of one input size and setting: every model once, or with `forms` (`--forms`) the
    baselines once and each VT model in every attention form named (`attention_impl` explicit), so that
    the report sets each form beside the reference form of the same model and beside the baseline."""
    if not forms:
        return [{"input_size": size, "model_args": {"num_classes": classes}, "latency": latency, "models": models}]
    baselines = [m for m in models if not model_facts(m).baseline]
    vts = [m for m in models if model_facts(m).baseline]
    blocks = [{"input_size": size, "model_args": {"num_classes": classes}, "latency": latency, "models": baselines}]
    blocks += [{"input_size": size, "model_args": {"num_classes": classes, "attention_impl": form}, "latency": latency,
                "models": vts} for form in forms]
    return [b for b in blocks if b["models"]]


def run(opts: StudyOptions) -> StudyResult:
    """The study: write its grid into OUT, run the cells through the runner (the local executor, as
    `vtbench launch`), re-measure them in interleaved rounds (`vtbench interleave`, with stage times
    and ceilings unless turned off), then `vtbench report` into OUT/report. Everything is written
    under OUT. A dry run validates the grid's cells and writes nothing (`planned`)."""
    if opts.dry_run:
        return StudyResult(sections=[], rows=[], planned=planned_cells(opts))
    out = Path(opts.out)
    ok, failed = launch_cells(opts, out)
    if ok:
        from bench.pipeline.interleave import interleave

        interleave(out, rounds=opts.rounds, only=ok, stages=opts.stages, peak=opts.peak)
    if opts.profile:
        write_profiles(opts, out)
    sections = report_sections(out)
    rows = [row for section in sections if section.csv_name == speed_report.CSV_NAME
            for row in section.csv_frame().to_dict("records")]
    return StudyResult(sections=sections, rows=rows,
                       failed=[{"cell_id": cell, "error": f"no ok record (see {out / 'records'} and "
                                                        f"`vtbench status {out}`)"} for cell in failed])


def planned_cells(opts: StudyOptions) -> list[dict[str, Any]]:
    """The study's cells, built and validated as a launch would, and each cell's latency options checked
    as the measurement checks them (UsageError on a bad one: e.g. a compile mode that captures CUDA
    graphs itself, with cuda_graphs), one row each: cell_id, model, input_size, batch_size, mode,
    device, dtype, flush_l2."""
    import torch

    from bench.core.contracts import LatencyOptions
    from bench.measure.latency import check_options
    from bench.pipeline.grid import build_grid

    rows = []
    for cell in build_grid(study_grid(opts)).cells:
        latency = cell.config["latency"]
        section = LatencyOptions.model_validate(latency)
        check_options(device=torch.device(section.device), batch_size=section.batch_size,
                      compile_mode=section.compile_mode, cuda_graphs=section.cuda_graphs,
                      train_step=section.train_step, threads=section.threads, flush_l2=section.flush_l2)
        rows.append({"cell_id": cell.cell_id, "model": cell.config["model"],
                     "attention_impl": (cell.config.get("model_args") or {}).get("attention_impl"),
                     "input_size": cell.config["input_size"],
                     "batch_size": latency["batch_size"], "mode": mode_of(latency), "device": latency["device"],
                     "dtype": latency["dtype"], "flush_l2": bool(latency.get("flush_l2", False))})
    return rows


def mode_of(latency: dict[str, Any]) -> str:
    """The study mode (`GRID_MODES`) of a cell's latency section."""
    def key(section: dict[str, Any]) -> tuple[Any, bool]:
        return section.get("compile"), bool(section.get("cuda_graphs"))

    return next(name for name, keys in GRID_MODES.items() if key(keys) == key(latency))


def launch_cells(opts: StudyOptions, out: Path) -> tuple[list[str], list[str]]:
    """Write the study's grid into `out` and run its cells; (ok cell ids, cell ids without an ok record)."""
    import yaml

    from bench.core.records import iter_records
    from bench.core.util import write_text_atomic
    from bench.pipeline.launch import launch

    out.mkdir(parents=True, exist_ok=True)
    grid_path = out / GRID_FILE
    write_text_atomic(grid_path, yaml.safe_dump(study_grid(opts), sort_keys=False))
    result = launch(grid_path, cluster=opts.cluster, run_dir=out, wait=True)
    wanted = {cell.cell_id for cell in result.grid.cells}
    ok = [r["cell_id"] for _, r in iter_records(out / "records")
          if isinstance(r, dict) and r["cell_id"] in wanted and r["status"] == "ok"]
    return ok, sorted(wanted - set(ok))


def report_sections(run_dir: Path) -> list[StudySection]:
    """Write the run's report into RUN/report and give back its speed sections, as objects."""
    from bench.analysis.report import write_report

    report = write_report([run_dir])
    return speed_report.report_sections(report.data, report.table)


def write_profiles(opts: StudyOptions, out: Path) -> None:
    """`--profile`: torch.profiler op tables of every model of the pairs at every batch size (CPU)."""
    import torch

    from models import build_model

    for key in opts.pairs:
        for name in pair_models(key):
            torch.manual_seed(0)
            model = build_model(name).eval()
            for batch in opts.batch_sizes:
                profile_ops(model, batch, 5 if batch <= 8 else 2, opts.threads, out / f"profile_{name}_b{batch}.txt",
                            size=input_size(name))


def profile_ops(model: Any, batch: int, iters: int, threads: int | None, path: Path, size: int = INPUT_SIZE) -> str:
    """torch.profiler table (top ops by self CPU time) of `iters` forward passes, written to `path`."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench.measure.latency import fixed_threads

    x = torch.randn(batch, 3, size, size)
    with fixed_threads(threads or torch.get_num_threads()), torch.inference_mode():
        model(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(iters):
                model(x)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    shapes = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25)
    path.write_text(f"{model.__class__.__name__} batch {batch}, {iters} forward passes\n\n{table}\n\n"
                    f"grouped by input shape\n\n{shapes}\n")
    return table
