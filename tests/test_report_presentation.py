"""How a report reads (issue 13, item 6): tables rendered by tabulate with numbers right-aligned under
right-aligned headers (markdown, HTML, the CLI), no '(n=1)', 'default (V)' for an option a cell left at
the model's default, rows by family and depth, and plots that say what they show and can be read."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from mdtable import md_alignment, md_rows

from bench.core.records import make_record, write_json_atomic, write_record

ENV = {"host": "fixture-host", "device_name": "Fixture CPU", "torch": "2.x", "threads": 1}


def _cell(model, input_size=224, num_classes=1000, **options):
    config = {"model": model, "model_args": {"num_classes": num_classes, **options}, "measure": ["complexity"],
              "input_size": input_size, "seed": 0, "complexity": {}}
    return config


def _stage(model, gmacs):
    from models import model_facts

    return {f"gmacs_{model_facts(model).replaced}": gmacs}


# (config, gmacs, stage gmacs), listed out of order on purpose: the report orders them.
CELLS = [
    (_cell("vt_fpn_r101", 473, 20), 44.0, 2.1), (_cell("resnet50"), 4.089, 0.809),
    (_cell("fpn_r50", [800, 1216], 171), 164.5, 55.1), (_cell("vt_resnet18", tokenizer="pooling"), 1.45, 0.13),
    (_cell("fpn_r101", 473, 20), 55.4, 12.9), (_cell("vt_resnet34"), 3.9, 0.37),
    (_cell("vt_fpn_r50", 473, 20), 27.6, 2.1), (_cell("resnet18"), 1.814, 0.46),
    (_cell("vt_fpn_r101", [800, 1216], 171), 190.0, 8.6), (_cell("vt_resnet18"), 1.544, 0.20),
    (_cell("fpn_r50", 473, 20), 38.4, 12.9), (_cell("vt_resnet50"), 4.08, 0.80),
    (_cell("fpn_r101", [800, 1216], 171), 236.5, 55.1), (_cell("resnet34"), 3.664, 0.10),
    (_cell("vt_fpn_r50", [800, 1216], 171), 118.0, 8.6),
]
ORDER = [("resnet18", ""), ("vt_resnet18", "default (filter)"), ("vt_resnet18", "pooling"), ("resnet34", ""),
         ("vt_resnet34", "default (filter)"), ("resnet50", ""), ("vt_resnet50", "default (filter)"),
         ("fpn_r50", "473x473"), ("vt_fpn_r50", "473x473"), ("fpn_r50", "800x1216"), ("vt_fpn_r50", "800x1216"),
         ("fpn_r101", "473x473"), ("vt_fpn_r101", "473x473"), ("fpn_r101", "800x1216"), ("vt_fpn_r101", "800x1216")]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A complexity run of every family and depth, one record per cell (so every n is 1)."""
    from bench.analysis import report as report_module

    run = tmp_path_factory.mktemp("presentation") / "run"
    cells = []
    for config, gmacs, stage in CELLS:
        record = make_record(config, metrics={"gmacs": gmacs, "params_m": 11.0, **_stage(config["model"], stage)},
                             env=ENV, run="run")
        write_record(run / "records", record)
        cells.append({"cell_id": record["cell_id"], "config": config})
    write_json_atomic(run / "cells.json", cells)
    original = report_module._attention

    def no_attention(data):  # drawn by its own tests; a 224x224 VT build is slow on 2 cores
        from bench.analysis.plots import PlotSkipped

        raise PlotSkipped("not drawn in this test")

    report_module._attention = no_attention
    try:
        return report_module.write_report([run])
    finally:
        report_module._attention = original


def _md(report) -> str:
    return report.files["report.md"].read_text()


def test_rows_are_ordered_by_family_then_depth_baseline_first(report):
    rows = md_rows(_md(report), "Complexity")
    assert [(r["model"], r["tokenizer"] if r["model"].startswith(("resnet", "vt_resnet")) else r["input_size"])
            for r in rows] == ORDER


def test_an_option_left_at_its_default_says_so(report):
    rows = md_rows(_md(report), "Complexity")
    by_model = {(r["model"], r["input_size"]): r for r in rows}
    assert by_model[("resnet18", "224x224")]["tokenizer"] == ""  # no tokenizer in a ResNet: empty
    assert by_model[("vt_fpn_r50", "473x473")]["tokenizer"] == "default (filter)"
    assert "'default (V)' in an option column" in _md(report)


def test_a_single_record_shows_no_n(report):
    md, html = _md(report), report.files["report.html"].read_text()
    assert "(n=1)" not in md and "(n=1)" not in html
    paper = {(r["table"], r["model"], r["metric"]): r["measured"] for r in md_rows(md, "Paper vs measured")}
    assert paper[("T8", "resnet18", "gmacs")] == "1.814"


def test_markdown_columns_align_numbers_right_and_text_left(report):
    md = _md(report)
    align = md_alignment(md, "Complexity")
    assert align["model"] == align["tokenizer"] == "left"
    for column in ("num_classes", "input_size", "GMACs", "params (M)", "total reduction vs baseline"):
        assert align[column] == "right", column
    # headers sit over their columns: every line of the table has its pipes at the same places
    lines = [ln for ln in md.split("## Complexity", 1)[1].split("##", 1)[0].splitlines() if ln.startswith("|")]
    pipes = {tuple(i for i, ch in enumerate(ln) if ch == "|") for ln in lines}
    assert len(pipes) == 1
    header = lines[0]
    gmacs_end = header.index("GMACs") + len("GMACs")
    assert header[gmacs_end:].startswith(" |")  # right-aligned header: its text ends at the column's edge


class _Cells(HTMLParser):
    """(tag, style, text) of every th/td, table by table."""

    def __init__(self):
        super().__init__()
        self.tables, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag in ("th", "td"):
            self._cell = [tag, dict(attrs).get("style") or "", ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2] += data

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None:
            self.tables[-1].append((self._cell[0], self._cell[1], self._cell[2].strip()))
            self._cell = None


def test_html_headers_align_with_their_columns(report):
    page = report.files["report.html"].read_text()
    parser = _Cells()
    parser.feed(page)
    cells = parser.tables[0]  # the complexity table
    headers = [c for c in cells if c[0] == "th"]
    width = len(headers)
    right = {h[2]: "text-align: right" in h[1] for h in headers}
    assert right["GMACs"] and right["num_classes"] and not right["model"] and not right["tokenizer"]
    body = [c for c in cells if c[0] == "td"]
    for i, cell in enumerate(body):
        column = headers[i % width][2]
        assert ("text-align: right" in cell[1]) == right[column], (column, cell)
    assert "th{background:#f0f0f0;text-align:left" in page  # left headers over left text, not centred


def test_stage5_annotation_says_same_or_gives_the_ratio(report):
    from bench.analysis.plots import plot_stage5, reduction_label

    assert reduction_label(0.46 / 0.20) == "2.3x fewer"
    assert reduction_label(0.809 / 0.80) == "same"
    assert reduction_label(0.80 / 0.809) == "same"
    assert reduction_label(0.10 / 0.37) == "3.7x more"
    fig = plot_stage5(report.table)
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["2.3x fewer", "3.7x more", "same"]
    assert not any("1.0x" in t for t in texts)


def _tick_boxes(fig, ax):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [(label.get_text(), label.get_window_extent(renderer)) for label in ax.get_xticklabels()]


def test_fpn_plot_title_promises_only_what_it_draws(report):
    from bench.analysis.plots import fpn_title, plot_fpn

    assert fpn_title(report.table) == "FPN vs VT-FPN: GMACs"
    assert [p.title for p in report.plots if p.name == "fpn_vs_vt_fpn"] == ["FPN vs VT-FPN: GMACs"]
    fig = plot_fpn(report.table)
    assert "mIoU" not in fig._suptitle.get_text() and len(fig.axes) == 2
    trained = report.table.copy()
    trained["miou"] = [40.0 if str(f).endswith("fpn") else None for f in trained["family"]]
    assert fpn_title(trained) == "FPN vs VT-FPN: GMACs and mIoU"
    fig = plot_fpn(trained)
    assert "mIoU" in fig._suptitle.get_text() and fig.axes[-1].get_ylabel() == "mIoU (%)"
    assert [t.get_text() for t in fig.axes[-1].get_xticklabels()] == ["R50", "R101"]


def test_fpn_plot_labels_do_not_overlap_and_panels_share_their_order(report):
    from bench.analysis.plots import plot_fpn

    fig = plot_fpn(report.table)
    orders = []
    for ax in fig.axes[:2]:
        boxes = _tick_boxes(fig, ax)
        orders.append([text for text, _ in boxes])
        for (_, left), (_, right) in zip(boxes, boxes[1:]):
            assert left.x1 < right.x0, "x tick labels overlap"
    assert orders[0] == orders[1] == ["R50\ntotal", "R50\nFPN module", "R101\ntotal", "R101\nFPN module"]


def test_tables_module_alignment_rules():
    from bench.core.tables import html_table, is_numeric_column, markdown_table

    assert is_numeric_column(["1.814", "", "baseline", "0.69x (noisy)", "+1.50 [-0.30, +3.30]", "default (16)"])
    assert is_numeric_column(["94.25 ± 1.77 (n=2)", "224x224", "-0.5%"])
    assert not is_numeric_column(["ok", "1.0"]) and not is_numeric_column(["", None]) and not is_numeric_column(["baseline"])
    df = pd.DataFrame({"model": ["a|b", "<b>"], "GMACs": ["1.5", "12.25"]})
    md = markdown_table(df)
    assert md.splitlines()[:2] == ["| model     |   GMACs |", "|:----------|--------:|"]
    assert "a\\|b" in md and "&lt;b&gt;" in md and "<b>" not in md
    page = html_table(df)
    assert "&lt;b&gt;" in page and "<b>" not in page and '<th style="text-align: right;">' in page
    assert markdown_table(pd.DataFrame()) == "_none_\n"


def test_fidelity_and_profile_tables_use_the_same_alignment():
    from bench.cli.commands.profile import format_table
    from bench.analysis.fidelity_report import _md_table

    md = _md_table(pd.DataFrame({"model": ["resnet18"], "measured GMACs": ["1.814"], "Δ MACs": ["+0.00%"],
                                 "verdict": ["ok"]}))
    assert md.splitlines()[1] == "|:---------|-----------------:|---------:|:----------|"
    text = format_table([{"stage": "stem", "gmacs": 0.0018, "params_m": None, "verdict": "ok"},
                         {"stage": "total", "gmacs": 1.8143, "params_m": 11.69, "verdict": "noisy: spread"}],
                        (("stage", "stage", ""), ("gmacs", "GMACs", ".4g"), ("params_m", "params M", ".4g"),
                         ("verdict", "verdict", "")))
    assert text.splitlines() == ["stage      GMACs    params M  verdict",
                                 "-------  -------  ----------  -------------",
                                 "stem      0.0018           -  ok",
                                 "total      1.814       11.69  noisy: spread"]


def test_report_html_is_written_once_per_plot(report):
    page = report.files["report.html"].read_text()
    assert page.count("<img ") == len(report.plots) >= 2  # stage 5 and FPN
    assert all(Path(p.png).exists() for p in report.plots)


def test_an_untrained_attention_figure_is_the_same_at_every_regeneration():
    """Without a checkpoint the figure shows initial weights: seeded by the cell's seed, not by chance."""
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from bench.analysis.plots import plot_attention

    config = {"model": "vt_resnet18", "model_args": {"num_classes": 10, "stem": "cifar", "token_channels": 64},
              "input_size": 16, "seed": 0}

    def draw() -> np.ndarray:
        fig = plot_attention(config, None, images=1)
        fig.canvas.draw()
        pixels = np.asarray(fig.canvas.buffer_rgba()).copy()
        plt.close(fig)
        return pixels

    torch.manual_seed(1)
    first = draw()
    torch.manual_seed(2)  # whatever the caller's random state, the same figure
    assert np.array_equal(first, draw())
    before = torch.random.get_rng_state()
    draw()
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's random stream is left alone


def test_the_stage5_plot_says_how_many_cells_it_leaves_out_and_why(report):
    stage5 = next(p for p in report.plots if p.name == "stage5_gmacs")
    # 7 ResNet / VT-ResNet cells have stage GMACs; VT-R18 with tokenizer=pooling is not the paper's default
    assert stage5.caption.startswith("Drawn: 6 of 7 configurations with stage GMACs")
    assert "Left out: 1, with options away from the paper's defaults (tokenizer)" in stage5.caption
    assert stage5.caption in _md(report)
    fpn = next(p for p in report.plots if p.name == "fpn_vs_vt_fpn")
    assert fpn.caption == ""  # every FPN / VT-FPN cell is drawn


def test_empty_sections_are_named_in_words_and_markdown_has_no_entities(report):
    md = _md(report)
    assert "_none_" not in md and "&gt;" not in md and "&lt;" not in md and "&amp;" not in md
    assert "## Accuracy" not in md and "## Latency" not in md
    absent = md.split("## Not in this report")[1].split("## ")[0]
    assert "Latency: no record holds a latency p50" in absent and "Accuracy: no record holds top-1 or mIoU" in absent
    assert "None: every cell has an ok record" in md.split("## Pending, failed and incomplete cells")[1]


def test_latency_tables_name_a_mode_every_row_shares_and_come_in_setting_order():
    """A run compiled throughout says 'compile' in every heading (not 'eager': the mode is named whether or
    not it varies), an unset option reads as its default (flush_l2 unset and false are one table), and the
    tables come by batch, eager before compiled, as the summary orders its lines."""
    from bench.analysis.tables import latency_tables

    def row(model, batch, flush_l2=None):
        return {"model": model, "latency.device": "cpu", "env.device_name": "CPU X", "latency.dtype": "fp32",
                "latency.batch_size": batch, "latency.compile": "default", "latency.flush_l2": flush_l2,
                "latency_ms_p50": 10.0 * batch}

    agg = pd.DataFrame([row("resnet18", 32), row("vt_resnet18", 32, False), row("resnet18", 1, False),
                        row("vt_resnet18", 1)])
    titles = [title for title, _ in latency_tables(agg, [])]
    assert titles == ["cpu · CPU X · fp32 · batch 1 · compile", "cpu · CPU X · fp32 · batch 32 · compile"]
    agg["latency.compile"] = [None, None, "default", "default"]
    titles = [title for title, _ in latency_tables(agg, [])]
    assert titles == ["cpu · CPU X · fp32 · batch 1 · compile", "cpu · CPU X · fp32 · batch 32 · eager"]
    agg["latency.flush_l2"] = [True, True, None, None]
    assert [t for t, _ in latency_tables(agg, [])][1] == "cpu · CPU X · fp32 · batch 32 · eager + flush L2"


def test_a_study_section_renders_as_report_md_shows_it():
    """`render.section_markdown`, which report.md and `vtbench speed` both print: heading, intro as written,
    the table escaped with backslashes, never HTML entities."""
    from bench.analysis.render import section_markdown
    from bench.analysis.section import StudySection

    section = StudySection(title="VT vs baseline: <latency>", intro="Ratio = VT / baseline.",
                           table=pd.DataFrame({"model": ["a<b"], "ratio": ["0.9 & 1.0"]}))
    md = section_markdown(section)
    assert md.startswith("## VT vs baseline: \\<latency>\n\nRatio = VT / baseline.\n\n| model")
    assert "a\\<b" in md and "0.9 \\& 1.0" in md and "&lt;" not in md and "&amp;" not in md
    assert section_markdown(StudySection("Empty", "", pd.DataFrame())) == "## Empty\n\n"
