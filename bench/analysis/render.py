"""Render: a built report (`bench.analysis.report.Report`) as report.md, report.html and CSV files.

Markdown cells are escaped with backslashes (`\\<`, `\\&`), never HTML entities, so that the text
reads the same in a terminal and in a renderer while a `<script>` in a record's error message stays
text. A section with nothing to show is left out, and the report says in words what is absent and
why. Torch-free.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from bench.analysis import compare
from bench.analysis.tables import shared_options
from bench.core import tables as text_tables
from bench.core.noise import NOISE_LOAD_MARGIN, NOISE_SPREAD_MAX, NOISE_STEAL_MAX_PCT
from bench.core.records import atomic_write

HTML_STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}th,td{border:1px solid #ccc;padding:3px 7px}
th{background:#f0f0f0;text-align:left;vertical-align:bottom}td{font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee}code{background:#f4f4f4}"""
# Table cells and headers carry their column's alignment (bench/core/tables.py): numbers right, text left.


# --------------------------------------------------------------------------- markdown text

def md_escape(text: Any) -> str:
    """Text safe in markdown without HTML entities: `\\`, `<`, `&` backslash-escaped (CommonMark), so
    no raw HTML can start, and the text reads as itself."""
    return str(text).replace("\\", "\\\\").replace("<", "\\<").replace("&", "\\&")


def _md_cell(value: Any) -> str:
    return md_escape(text_tables.cell_text(value)).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame | None) -> str:
    """A GitHub pipe table, cells escaped, numeric columns right-aligned ('' for no rows: callers say why)."""
    if df is None or df.empty:
        return ""
    rows = [[_md_cell(v) for v in row] for row in df.itertuples(index=False)]
    return tabulate(rows, headers=[_md_cell(c) for c in df.columns], tablefmt="pipe",
                    colalign=text_tables.column_alignment(df), disable_numparse=True, preserve_whitespace=True) + "\n"


def html_table(df: pd.DataFrame | None) -> str:
    return text_tables.html_table(df)


# --------------------------------------------------------------------------- header

def header_lines(report: Any) -> list[str]:
    """The title and the bullets above the tables: what was read, where and when, how to read it."""
    data = report.data
    cells = data.cells
    runs = ", ".join(d.name for d in data.run_dirs)
    devices = _joined(cells, "env.device_name")
    hosts = _joined(cells, "env.host")
    dates = sorted(str(v)[:10] for v in cells.get("finished_at", pd.Series(dtype=object)).dropna())
    when = f"{dates[0]} to {dates[-1]}" if dates and dates[0] != dates[-1] else (dates[0] if dates else "unknown")
    lines = [f"# vtbench report: {runs}", "",
             f"- {state_line(data)}",
             f"- configurations (seeds aggregated): {len(report.table)}",
             f"- measured on: {devices or 'unknown'} (host(s): {hosts or 'unknown'}), {when}",
             f"- report written {pd.Timestamp.now(tz='UTC').strftime('%Y-%m-%d %H:%M UTC')} by `vtbench report`",
             "- mean ± std is the sample standard deviation over seeds (ddof=1), (n=k) the number of records,"
             " shown where there is more than one; GMACs are multiply-accumulates per image (the paper's FLOPs);"
             " reductions are baseline / VT (the paper's convention), the latency ratio VT / baseline; each VT"
             " configuration is paired with its registry baseline at identical settings of the measurement"
             " compared (docs/statistics.md); 'default (V)' in an option column: the cell kept the model's"
             " default V, an empty option cell: the option does not apply to the model; rows are ordered by"
             " family (ResNet and VT-ResNet, then FPN and VT-FPN), depth and setting, baseline first"]
    shared = shared_options(report.table, data.option_columns) if not report.table.empty else ""
    if shared:
        lines.append(f"- every configuration shares {shared} (so no table has a column for these)")
    lines += method_lines(report.table)
    lines += [f"- note: {note}" for note in data.notes]
    return lines


def state_line(data: Any) -> str:
    """'cells: 15 ok, 1 error, 0 timeout, 0 running, 3 pending, 0 stopped; 1 corrupt record file(s); 1 missing
    metric(s)': the states in `vtbench status`'s words (a timeout: the runner stopped the cell at the grid's
    `timeout_min`)."""
    counts = data.state_counts()
    return (f"cells: {', '.join(f'{n} {state}' for state, n in counts.items())} (as `vtbench status` counts them); "
            f"{len(data.corrupt)} corrupt record file(s); {len(data.missing)} missing metric(s)")


def _joined(cells: pd.DataFrame, column: str) -> str | None:
    if column not in cells.columns:
        return None
    values = list(dict.fromkeys(str(v) for v in cells[column].dropna()))
    return ", ".join(values) or None


def method_lines(table: pd.DataFrame) -> list[str]:
    """Header bullets that say how the statistics, verdicts and memory figures in the tables are made."""
    lines = []
    if any(f"{m}_diff" in table.columns and table[f"{m}_diff"].notna().any() for m in ("top1", "miou")):
        lines.append(f"- accuracy vs baseline: Δ = VT - baseline in points, paired by seed on the seeds both sides"
                     f" hold (a seed gives both models the same data order; all of them, or at least"
                     f" {compare.MIN_SEEDS} in common while a grid runs), else Welch's t;"
                     f" an interval and a verdict need at least {compare.MIN_SEEDS} seeds per side; verdicts are"
                     f" Holm-adjusted across the accuracy table's comparisons; plot error bars are the 95 % t"
                     f" interval of each mean")
    if "latency_verdict" in table.columns:
        lines.append(f"- latency noise: a row is 'noisy' when its warm-up did not settle, its spread p80/p20 (or"
                     f" its rounds' p50 spread) exceeds {NOISE_SPREAD_MAX:g}, the 1-min load average before or"
                     f" after exceeds its threads + {NOISE_LOAD_MARGIN:g}, or steal time exceeds"
                     f" {NOISE_STEAL_MAX_PCT:g} % (bench/core/noise.py); a comparison a noisy measurement enters"
                     f" gets no verdict")
        lines.append("- memory: 'memory added' is the peak RSS during the measurement minus the RSS just before it"
                     " (CPU); 'process peak RSS' is the whole process's peak beside it")
    if "latency_from" in table.columns and table["latency_from"].notna().any():
        lines.append("- latency from: a row marked 'interleaved re-measurement TIME, N rounds' takes its latency"
                     " columns (p50, throughput, memory, noise) from the newest re-measurement of its cell"
                     " (records/remeasured/ID.N.json, written by `vtbench interleave` at TIME over N rounds), and"
                     " every other column (complexity, accuracy) from the cell's record (records/ID.json)")
    if "counter_agree" in table.columns and (table["counter_agree"] == False).any():  # noqa: E712
        lines.append("- counters: some rows' traced (fvcore) and executed (FlopCounterMode) MAC counts disagree"
                     " by more than the complexity check allows; see the Complexity table's counters column")
    return lines


# --------------------------------------------------------------------------- sections

STATUS_TITLES = (("errors", "Failed cells (error and timeout records)"), ("corrupt", "Corrupt record files"),
                 ("pending", "Cells without a record (pending, running or stopped)"),
                 ("missing", "Missing metrics (promised by the cell's `measure`, absent from its record)"))


def status_sections(data: Any) -> list[tuple[str, pd.DataFrame]]:
    """The non-empty problem lists: failed, corrupt, pending, incomplete."""
    out = []
    for attr, title in STATUS_TITLES:
        df = getattr(data, attr)
        if attr == "errors":
            df = df.drop(columns=["path"])
        if not df.empty:
            out.append((f"{title} ({len(df)})", df))
    return out


def section_markdown(section: Any) -> str:
    """A study's section (`bench.analysis.section.StudySection`) as markdown: '## title', its intro (markdown
    already, shown as written) and its table, cells escaped; report.md and `vtbench speed` both print it so."""
    intro = f"{section.intro.strip()}\n\n" if section.intro.strip() else ""
    return f"## {md_escape(section.title)}\n\n{intro}{markdown_table(section.table)}"


NO_PROBLEMS = ("None: every cell has an ok record, no record file is corrupt, and every record holds the"
               " metrics its cell's `measure` promises.")


def render_markdown(report: Any, out_dir: Path) -> str:
    """report.md: header, summary, tables, comparison sections, plots (linked) with the skipped ones and
    why, then the problem cells; absent sections are named in words."""
    parts = ["\n".join(md_escape(line) for line in header_lines(report)) + "\n"]
    if report.summary:
        parts.append("## Summary\n\n" + "\n".join(_bullets(report.summary)) + "\n")
    for title, df in report.sections:
        intro = report.intros.get(title, "")
        parts.append(f"## {md_escape(title)}\n\n" + (f"{md_escape(intro)}\n\n" if intro else "") + markdown_table(df))
    parts += [section_markdown(study) for study in report.studies]
    if report.absent:
        parts.append("## Not in this report\n\n" + "\n".join(f"- {md_escape(a)}" for a in report.absent) + "\n")
    if report.plots or report.skipped_plots:
        parts.append("## Plots\n")
    for plot in report.plots:
        caption = f"\n\n{md_escape(plot.caption)}" if getattr(plot, "caption", "") else ""
        parts.append(f"### {md_escape(plot.title)}\n\n![{md_escape(plot.title)}]({plot.png.relative_to(out_dir).as_posix()}) "
                     f"([SVG]({plot.svg.relative_to(out_dir).as_posix()})){caption}\n")
    if report.skipped_plots:
        parts.append("Skipped plots:\n\n" + "\n".join(f"- {md_escape(report.plot_title(n))}: {md_escape(why)}"
                                                      for n, why in report.skipped_plots) + "\n")
    parts.append("## Pending, failed and incomplete cells\n")
    problems = status_sections(report.data)
    for title, df in problems:
        parts.append(f"### {md_escape(title)}\n\n{markdown_table(df)}")
    if not problems:
        parts.append(NO_PROBLEMS + "\n")
    return "\n".join(parts)


def _bullets(entries: list[str]) -> list[str]:
    """Summary entries as markdown bullets: an entry's indented lines (two spaces) as nested bullets."""
    out = []
    for entry in entries:
        for line in entry.split("\n"):
            nested = line.startswith("  ")
            out.append(("  - " if nested else "- ") + md_escape(line.strip()))
    return out


def render_html(report: Any) -> str:
    """One self-contained page: the same content as report.md, plots embedded as base64 PNG."""
    lines = header_lines(report)
    items = "".join(f"<li>{html.escape(line[2:])}</li>" for line in lines if line.startswith("- "))
    body = [f"<h1>{html.escape(lines[0].lstrip('# '))}</h1><ul>{items}</ul>"]
    if report.summary:
        body.append("<h2>Summary</h2><ul>" + "".join(f"<li>{html.escape(line.strip())}</li>" for entry in report.summary
                                                      for line in entry.split("\n")) + "</ul>")
    for title, df in report.sections:
        intro = report.intros.get(title, "")
        body.append(f"<h2>{html.escape(title)}</h2>" + (f"<p>{html.escape(intro)}</p>" if intro else "") + html_table(df))
    for study in report.studies:  # the intro is markdown: shown as preformatted text
        intro = f"<pre style='white-space:pre-wrap'>{html.escape(study.intro.strip())}</pre>" if study.intro.strip() else ""
        body.append(f"<h2>{html.escape(study.title)}</h2>{intro}" + html_table(study.table))
    if report.absent:
        body.append("<h2>Not in this report</h2><ul>" + "".join(f"<li>{html.escape(a)}</li>" for a in report.absent)
                    + "</ul>")
    if report.plots or report.skipped_plots:
        body.append("<h2>Plots</h2>")
    for plot in report.plots:
        data = base64.b64encode(plot.png.read_bytes()).decode()
        caption = f"<p>{html.escape(plot.caption)}</p>" if getattr(plot, "caption", "") else ""
        body.append(f"<h3>{html.escape(plot.title)}</h3><img alt='{html.escape(plot.title)}' "
                    f"src='data:image/png;base64,{data}'>{caption}")
    if report.skipped_plots:
        body.append("<p>Skipped plots:</p><ul>" + "".join(
            f"<li>{html.escape(report.plot_title(n))}: {html.escape(why)}</li>" for n, why in report.skipped_plots) + "</ul>")
    body.append("<h2>Pending, failed and incomplete cells</h2>")
    problems = status_sections(report.data)
    for title, df in problems:
        body.append(f"<h3>{html.escape(title)}</h3>" + html_table(df))
    if not problems:
        body.append(f"<p>{html.escape(NO_PROBLEMS)}</p>")
    title = "vtbench report: " + ", ".join(d.name for d in report.data.run_dirs)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{HTML_STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def write_csv(df: pd.DataFrame, path: Path) -> Path:
    """`df` as CSV at `path`, written beside it and renamed into place."""
    with atomic_write(path) as handle:
        df.to_csv(handle, index=False)
    return path
