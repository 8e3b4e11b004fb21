"""`vtbench report`: run records -> load -> compare -> tables and plots -> report.md, report.html, CSV.

The flow, one module per step (DESIGN.md):
`bench.analysis.load` (records into typed `Group`s and one DataFrame) -> `bench.analysis.compare`
(each VT configuration paired with its baseline by one rule, one statistic per metric, verdicts
only on a sound basis) -> `bench.analysis.tables` (the frames shown, the summary) and
`bench.analysis.plots` -> `bench.analysis.render` (md, html, csv). This module is the thin
orchestrator (`build_report`, `write_report`); the studies add their sections
(bench/analysis/section.py). Torch-free, except the attention figure, which builds the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from bench.analysis import compare, fidelity_report, render, speed_report
from bench.analysis.compare import welch_ci  # noqa: F401  (the name callers used)
from bench.analysis.facts import facts_of, family_of
from bench.analysis.load import (RunData, aggregate, check_run_dir, flatten_config, flatten_record,  # noqa: F401
                                 input_size_label, latency_quality, load_runs)
from bench.analysis.section import StudySection
from bench.analysis.tables import (accuracy_intro, accuracy_table, add_comparisons, add_derived, cell_options,  # noqa: F401
                                   complexity_table, fmt, fmt_pm, latency_settings, latency_tables, option_text,
                                   paper_table, pixels_of, sort_rows, summary_lines, varying_columns,
                                   with_latency_defaults)
from bench.core.errors import UsageError
from bench.core.records import write_text_atomic

log = logging.getLogger(__name__)

FORMATS = ("md", "csv", "html")
PLOT_TITLES = {
    "accuracy_vs_gmacs": "Accuracy vs GMACs, Pareto front marked",
    "latency_vs_tokens": "Latency vs number of tokens, one line per tokenizer",
    "stage5_gmacs": "Stage-5 GMACs: ResNet vs VT-ResNet",
    "fpn_vs_vt_fpn": "FPN vs VT-FPN: GMACs, and mIoU where trained",  # drawn: plots.fpn_title says which
    "token_attention": "Tokenizer attention maps, one panel per token",
}


@dataclass
class Report:
    """What `write_report` built and wrote."""

    data: RunData
    table: pd.DataFrame                       # aggregated + derived + comparisons: table.csv
    comparison: pd.DataFrame                  # paper vs measured (raw numbers)
    sections: list[tuple[str, Any]]           # (heading, DataFrame) in order, only those with rows
    studies: list[StudySection] = field(default_factory=list)  # the comparison and studies' sections
    summary: list[str] = field(default_factory=list)           # the opening lines: what VT buys
    absent: list[str] = field(default_factory=list)            # what the report does not show, and why
    intros: dict[str, str] = field(default_factory=dict)       # a section's caption, by its heading
    plots: list[Any] = field(default_factory=list)
    skipped_plots: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    @staticmethod
    def plot_title(name: str) -> str:
        return PLOT_TITLES.get(name, name)


def parse_formats(text: str) -> list[str]:
    """'md,csv,html' -> ['md', 'csv', 'html']; an unknown format is a UsageError."""
    formats = [f.strip().lower() for f in str(text).split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise UsageError(f"unknown report format(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    return formats


def build_report(run_dirs: Iterable[str | Path]) -> Report:
    """Load the runs, compare every VT configuration with its baseline and build every table (nothing written)."""
    from bench.analysis.reference import compare as paper_compare

    data = load_runs(run_dirs)
    table = aggregate(data)
    latency = compare.latency_pairs(data.groups)
    accuracy = {m: compare.accuracy_pairs(data.groups, m) for m, _ in (("top1", ""), ("miou", ""))}
    table = add_comparisons(add_derived(table, data.groups), latency, accuracy)
    label_cols = varying_columns(table, [*data.option_columns, "input_size"]) if not table.empty else []
    comparison = paper_compare(table) if not table.empty else paper_compare(pd.DataFrame(columns=["model"]))
    shown = [("Complexity", complexity_table(table, label_cols) if not table.empty else pd.DataFrame()),
             *[(f"Latency: {title}", df) for title, df in (latency_tables(table, label_cols) if not table.empty else [])],
             ("Accuracy", accuracy_table(table, label_cols) if not table.empty else pd.DataFrame()),
             ("Paper vs measured", paper_table(comparison, cell_options(table, data.option_columns)
                                               if not table.empty else {}))]
    sections = [(title, df) for title, df in shown if df is not None and not df.empty]
    return Report(data=data, table=table, comparison=comparison, sections=sections,
                  studies=study_sections(data, table), summary=summary_lines(data.groups, latency, accuracy),
                  absent=absent_lines(shown, table),
                  intros={"Accuracy": accuracy_intro(accuracy), "Complexity": complexity_intro(table, shown[0][1])})


def complexity_intro(table: pd.DataFrame, shown: pd.DataFrame) -> str:
    """The Complexity table's caption where it shows fewer rows than there are configurations with MACs:
    configurations that differ only in how they were timed or trained count the same MACs, shown once."""
    counted = int(table["gmacs"].notna().sum()) if "gmacs" in table.columns else 0
    if shown is None or shown.empty or len(shown) == counted:
        return ""
    return (f"{counted} configurations with MACs, {len(shown)} rows: configurations that differ only in a "
            f"measurement setting (latency batch or mode, training recipe) count the same MACs and are shown once.")


def absent_lines(shown: list[tuple[str, pd.DataFrame]], table: pd.DataFrame) -> list[str]:
    """A line for each standard table left out, saying why it has no rows."""
    why = {"Complexity": "no record holds GMACs (no cell measured complexity)",
           "Accuracy": "no record holds top-1 or mIoU (no cell trained)",
           "Paper vs measured": "no configuration matches a model, variant and input of the paper's tables"}
    present = {title.split(":")[0] for title, df in shown if df is not None and not df.empty}
    lines = [f"{title}: {reason}" for title, reason in why.items() if title not in present]
    if "Latency" not in present:
        lines.insert(1, "Latency: no record holds a latency p50 (no cell measured latency)")
    if table.empty:
        return ["Every table: the runs hold no ok record yet"]
    return lines


def study_sections(data: RunData, table: pd.DataFrame) -> list[StudySection]:
    """The sections of the studies the records support (bench/analysis/section.py), in this order."""
    return [*speed_report.report_sections(data, table), *fidelity_report.report_sections(data, table)]


def draw_plots(report: Report, out_dir: Path) -> None:
    """Draw every plot whose data exist into OUT/plots; the others are listed with the reason."""
    table, label_cols = report.table, varying_columns(report.table, report.data.option_columns)
    drawn, skipped = report.plots, report.skipped_plots
    plot_dir = out_dir / "plots"
    _draw_each_plot(report, plot_dir, table, label_cols, drawn, skipped)
    _draw_mask_samples(report, plot_dir)
    # A plot skipped now must not survive from an earlier report. Removed only once every plot is
    # drawn (each replaced atomically), so a failure midway (a full disk) leaves the former plots
    # whole rather than deleted or truncated.
    for name in dict(skipped):
        for suffix in (".png", ".svg"):
            (plot_dir / f"{name}{suffix}").unlink(missing_ok=True)


def _draw_each_plot(report: Report, plot_dir: Path, table: pd.DataFrame, label_cols: list[str],
                    drawn: list[Any], skipped: list[tuple[str, str]]) -> None:
    from bench.analysis import plots

    if table.empty:
        skipped.extend((name, "no ok records") for name in PLOT_TITLES)
        return
    timed = with_latency_defaults(table[table["latency_ms_p50"].notna()] if "latency_ms_p50" in table.columns
                                  else table.iloc[0:0])
    settings = latency_settings(timed) if not timed.empty else []
    plots.draw("accuracy_vs_gmacs", PLOT_TITLES["accuracy_vs_gmacs"], lambda: plots.plot_accuracy_vs_gmacs(table, label_cols),
               plot_dir, drawn, skipped, lambda: plots.accuracy_caption(table))
    plots.draw("latency_vs_tokens", PLOT_TITLES["latency_vs_tokens"], lambda: plots.plot_latency_vs_tokens(with_latency_defaults(table), settings),
               plot_dir, drawn, skipped, lambda: plots.latency_caption(table))
    plots.draw("stage5_gmacs", PLOT_TITLES["stage5_gmacs"], lambda: plots.plot_stage5(table), plot_dir, drawn, skipped,
               lambda: plots.stage5_caption(table))
    plots.draw("fpn_vs_vt_fpn", plots.fpn_title(table), lambda: plots.plot_fpn(table), plot_dir, drawn, skipped,
               lambda: plots.fpn_caption(table))
    plots.draw("token_attention", PLOT_TITLES["token_attention"], lambda: _attention(report.data), plot_dir, drawn, skipped)


def _draw_mask_samples(report: Report, plot_dir: Path) -> None:
    """The predicted-masks figure where cells wrote mask samples; a run without any gets no figure and
    no skipped line (classification runs never have them), and loses one left by an earlier report."""
    from bench.analysis import plots

    columns, notes = plots.mask_sample_columns(report.data)
    if not columns:
        for note in notes:
            log.warning("%s", note)
        for suffix in (".png", ".svg"):
            (plot_dir / f"mask_samples{suffix}").unlink(missing_ok=True)
        return
    plots.draw("mask_samples", plots.mask_samples_title(columns), lambda: plots.plot_mask_samples(columns),
               plot_dir, report.plots, report.skipped_plots, lambda: plots.mask_samples_caption(columns, notes))


def attention_cell(data: RunData) -> tuple[dict[str, Any], Path | None] | None:
    """The VT cell whose tokenizer attention is drawn: one with a checkpoint first, classification first."""
    cells = data.cells
    if cells.empty:
        return None
    vt = cells[cells["model"].map(lambda m: family_of(m) in ("vt_resnet", "vt_fpn"))]
    candidates = []
    run_dirs = {d.name: d for d in data.run_dirs}
    for _, row in vt.iterrows():
        ckpt = run_dirs[row["run"]] / "cells" / row["cell_id"] / "checkpoint.pt"
        top1 = row.get("top1") if "top1" in row else None
        score = (not ckpt.exists(), family_of(row["model"]) != "vt_resnet",
                 -(float(top1) if top1 is not None and not pd.isna(top1) else -1.0),
                 pixels_of(row.get("input_size")), facts_of(row["model"]).depth or 0)  # then the cheapest to draw
        candidates.append((score, row["cell_id"], ckpt if ckpt.exists() else None))
    if not candidates:
        return None
    _, cell_id, ckpt = min(candidates, key=lambda c: c[0])
    return data.configs[cell_id], ckpt


def _attention(data: RunData):
    from bench.analysis.plots import PlotSkipped, plot_attention

    chosen = attention_cell(data)
    if chosen is None:
        raise PlotSkipped("no VT-ResNet or VT-FPN cell in the records")
    try:
        import torch  # noqa: F401  (the one figure that builds a model)
    except ImportError as exc:
        raise PlotSkipped(f"torch cannot be imported here, and the figure builds the model ({exc})") from exc
    return plot_attention(*chosen)


def default_out_dir(run_dirs: list[str | Path], out: str | Path | None) -> Path:
    """--out, or RUN/report for a single run; several runs need --out."""
    if out is not None:
        return Path(out)
    if len(run_dirs) != 1:
        raise UsageError("several runs need --out DIR for the combined report")
    return Path(run_dirs[0]) / "report"


def write_report(run_dirs: list[str | Path], out: str | Path | None = None,
                 formats: Iterable[str] = FORMATS) -> Report:
    """Build the report of the runs and write table.csv, cells.csv, report.md, report.html and plots.

    Every file is written to a temp file beside it and renamed into place, so a full disk or a
    kill midway leaves the former report's files whole instead of truncated.
    """
    formats = list(formats)
    out_dir = default_out_dir(run_dirs, out)
    report = build_report(run_dirs)
    out_dir.mkdir(parents=True, exist_ok=True)
    if "csv" in formats:
        report.files["table.csv"] = render.write_csv(report.table, out_dir / "table.csv")
        report.files["cells.csv"] = render.write_csv(report.data.cells, out_dir / "cells.csv")
        report.files["paper_vs_measured.csv"] = render.write_csv(report.comparison, out_dir / "paper_vs_measured.csv")
        for study in report.studies:
            if study.csv_name:
                report.files[study.csv_name] = render.write_csv(study.csv_frame(), out_dir / study.csv_name)
    if "md" in formats or "html" in formats:
        draw_plots(report, out_dir)
    if "md" in formats:
        report.files["report.md"] = write_text_atomic(out_dir / "report.md", render.render_markdown(report, out_dir))
    if "html" in formats:
        report.files["report.html"] = write_text_atomic(out_dir / "report.html", render.render_html(report))
    log.info("report of %d record(s) written to %s (%s)", len(report.data.cells), out_dir, ", ".join(report.files))
    return report
