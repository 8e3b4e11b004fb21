"""`vtbench fidelity`: the paper's complexity numbers beside vtbench's models, as a grid and a report.

    vtbench fidelity --out DIR [--run-dir results/paper_complexity] [--skip-seg] [--no-measure]

A thin driver over the one runner: it runs the cells of `experiments/paper_complexity.yaml` that have
no ok record into the run folder and waits; when it ran any, it rewrites that run's report (its
records changed; the fidelity sections come from bench/analysis/fidelity_report.py). Then it writes
fidelity.md, fidelity.csv, fidelity_alternatives.csv and fidelity_budget.csv into --out, from the
same frames as those sections. On a run with every record (the committed one), or with
`--no-measure`, it writes --out and nothing else. Every number, tolerance and verdict is
fidelity_report's: this module counts nothing itself but the FPN module alone (`measure_fpn_module`,
for the tests).
"""

from __future__ import annotations

import logging
from pathlib import Path

from bench.analysis import fidelity_report, fidelity_text
from bench.analysis.fidelity_report import SEG_SIZES
from bench.analysis.fidelity_text import downsampled_side
from bench.core.errors import UsageError
from bench.core.util import write_text_atomic

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
GRID = REPO / "experiments" / "paper_complexity.yaml"
DEFAULT_RUN_DIR = REPO / "results" / "paper_complexity"
# --skip-seg: the grid without its FPN cells (a list input size is matched when wrapped, bench.pipeline.grid).
SKIP_SEG = [("exclude", [{"input_size": [list(size)]} for size, _ in SEG_SIZES.values()])]


def measure_fpn_module(model_name: str, input_size: tuple[int, int], **overrides) -> float:
    """G MACs (executed, paper convention) of the `fpn` child alone, fed C2..C5 of the right shapes."""
    import torch

    from bench.measure.complexity import count_executed, mha_fastpath_disabled
    from models import build_model

    model = build_model(model_name, **overrides).eval()
    h, w = input_size
    channels = [256, 512, 1024, 2048]
    feats = [torch.randn(1, c, downsampled_side(h, 2 ** (i + 2)), downsampled_side(w, 2 ** (i + 2))) for i, c in enumerate(channels)]
    with torch.no_grad(), mha_fastpath_disabled():
        total, _, _ = count_executed(model.fpn, feats)
    return total / 1e9


def launch_cells(run_dir: Path, skip_seg: bool = False, cluster: str = "local") -> bool:
    """Run the grid's cells that have no ok record into `run_dir` and wait; True when any ran.

    A run whose every cell has its record is left untouched (not even its grid files are rewritten)."""
    from bench.pipeline.launch import launch

    overrides = SKIP_SEG if skip_seg else ()
    plan = launch(GRID, cluster=cluster, run_dir=run_dir, dry_run=True, overrides=overrides).plan
    if not plan.to_run and not plan.in_flight:
        return False
    result = launch(GRID, cluster=cluster, run_dir=run_dir, wait=True, overrides=overrides)
    if not result.ok:
        raise UsageError(f"{len(result.failed)} fidelity cell(s) failed in {run_dir}: see `vtbench status {run_dir}`")
    return True


def write_files(run_dir: Path, out_dir: Path, skip_seg: bool = False) -> fidelity_report.Fidelity:
    """fidelity.md and the CSVs in `out_dir`, from the records of `run_dir` (what the report's sections show)."""
    from bench.analysis.report import load_runs

    f = fidelity_report.fidelity_frames(load_runs([run_dir]), skip_seg=skip_seg)
    if f is None:
        raise UsageError(f"{run_dir} holds no complexity records of the eight classifiers at their defaults")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in ((fidelity_report.MAIN_CSV, f.main), (fidelity_report.ALTERNATIVES_CSV, f.alts),
                        (fidelity_report.BUDGET_CSV, f.budget)):
        write_text_atomic(out_dir / name, frame.to_csv(index=False))
    write_text_atomic(out_dir / "fidelity.md", fidelity_text.render(f))
    return f


def run(out_dir: Path, skip_seg: bool = False, run_dir: Path | None = None, measure: bool = True) -> None:
    """Run the grid's missing cells (unless not `measure`) and, if any ran, the run's report; then the
    study's files into `out_dir`."""
    run_dir = Path(run_dir) if run_dir is not None else DEFAULT_RUN_DIR
    if measure and launch_cells(run_dir, skip_seg):
        from bench.analysis.report import write_report

        write_report([run_dir])
        log.info("new records: rewrote %s/report", run_dir)
    write_files(run_dir, Path(out_dir), skip_seg)
    log.info("wrote %s", out_dir)
