"""`vtbench fidelity`: the paper's complexity numbers beside vtbench's models, as a grid and a report.

    vtbench fidelity [--out results/fidelity] [--run-dir results/paper_complexity] [--skip-seg]

A thin driver over the one runner: it launches `experiments/paper_complexity.yaml` into the run folder
(cells with an ok record are skipped, so on the committed run nothing is counted), waits, writes the
run's report (`vtbench report RUN`, whose fidelity sections come from bench/analysis/fidelity_report.py)
and then fidelity.md, fidelity.csv, fidelity_alternatives.csv and fidelity_budget.csv into --out, from
the same frames as those sections. Every number, tolerance and verdict is fidelity_report's: this
module measures nothing itself but the FPN module alone (`measure_fpn_module`, for the tests).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from bench.analysis import fidelity_report
from bench.analysis.fidelity_report import SEG_SIZES, _md_table  # noqa: F401 (_md_table: tests/test_report_presentation)
from bench.core.errors import UsageError
from bench.core.util import write_text_atomic
from bench.measure.complexity import count_executed, mha_fastpath_disabled
from models import build_model

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
GRID = REPO / "experiments" / "paper_complexity.yaml"
DEFAULT_RUN_DIR = REPO / "results" / "paper_complexity"
# --skip-seg: the grid without its FPN cells (a list input size is matched when wrapped, bench.pipeline.grid).
SKIP_SEG = [("exclude", [{"input_size": [list(size)]} for size, _ in SEG_SIZES.values()])]


def measure_fpn_module(model_name: str, input_size: tuple[int, int], **overrides) -> float:
    """G MACs (executed, paper convention) of the `fpn` child alone, fed C2..C5 of the right shapes."""
    model = build_model(model_name, **overrides).eval()
    h, w = input_size
    channels = [256, 512, 1024, 2048]
    feats = [torch.randn(1, c, _down(h, 2 ** (i + 2)), _down(w, 2 ** (i + 2))) for i, c in enumerate(channels)]
    with torch.no_grad(), mha_fastpath_disabled():
        total, _, _ = count_executed(model.fpn, feats)
    return total / 1e9


def _down(size: int, stride: int) -> int:
    """Spatial size after ResNet's stride-`stride` downsampling (ceil at each stride-2 step)."""
    while stride > 1:
        size = (size + 1) // 2
        stride //= 2
    return size


def launch_cells(run_dir: Path, skip_seg: bool = False, cluster: str = "local") -> None:
    """Run the grid's cells that have no ok record into `run_dir`, and wait for them."""
    from bench.pipeline.launch import launch

    result = launch(GRID, cluster=cluster, run_dir=run_dir, wait=True, overrides=SKIP_SEG if skip_seg else ())
    if not result.ok:
        raise UsageError(f"{len(result.failed)} fidelity cell(s) failed in {run_dir}: see `vtbench status {run_dir}`")


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
    write_text_atomic(out_dir / "fidelity.md", fidelity_report.render(f))
    return f


def run(out_dir: Path, skip_seg: bool = False, run_dir: Path | None = None, measure: bool = True) -> None:
    """Launch the grid's missing cells (unless not `measure`), write the run's report, then the study's files."""
    from bench.analysis.report import write_report

    run_dir = Path(run_dir) if run_dir is not None else DEFAULT_RUN_DIR
    if measure:
        launch_cells(run_dir, skip_seg)
    write_report([run_dir])
    write_files(run_dir, Path(out_dir), skip_seg)
    log.info("wrote %s and %s/report", out_dir, run_dir)
