"""`vtbench report` from fixture records: files, aggregates, paper deltas, pending cells, plots.

The fixture run (written to a tmp dir) holds ok records of a complexity grid at 224x224 (ResNet-18 vs
VT-ResNet-18), a digits ablation (two seeds, a missing top1), FPN vs VT-FPN at 473x473, an error
record, a corrupt file, and two cells in cells.json that never ran. Aggregates use the sample
standard deviation (ddof=1), as the report states.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.core.errors import UsageError
from bench.core.records import make_record, write_json_atomic, write_record

ENV = {"host": "fixture-host", "device_name": "Fixture CPU", "torch": "2.x", "threads": 2}
LATENCY = {"device": "cpu", "batch_size": 1, "dtype": "fp32", "threads": 2}


def _config(model, seed=0, measure=("complexity", "latency", "train"), input_size=32, dataset="digits", **options):
    args = {"num_classes": 10, "stem": "cifar", **options} if dataset == "digits" else dict(options)
    if dataset == "digits" and model.startswith("vt_"):
        args["token_channels"] = 64  # a small VT keeps the attention-map plot (a real build) fast
    return {"model": model, "model_args": args, "measure": list(measure), "input_size": input_size, "seed": seed,
            "complexity": {}, "latency": dict(LATENCY), "train": {"dataset": dataset, "epochs": 3}}


def _latency(p50):
    return {"latency_ms_p50": p50, "latency_ms_p20": p50 * 0.9, "latency_ms_p80": p50 * 1.2,
            "throughput_img_s": 1000.0 / p50, "peak_mem_mb": 50.0, "batch_size_used": 1, "mode": "inference"}


# (config, metrics) of every ok record; top1 values chosen so the hand-computed aggregates are exact.
DIGITS = [
    (_config("resnet18", 0), {"gmacs": 0.56, "params_m": 11.2, "top1": 90.0, **_latency(4.0)}),
    (_config("resnet18", 1), {"gmacs": 0.56, "params_m": 11.2, "top1": 92.0, **_latency(4.0)}),
    (_config("vt_resnet18", 0, num_tokens=8, tokenizer="filter"), {"gmacs": 0.40, "params_m": 11.0, "top1": 93.0, **_latency(5.0)}),
    (_config("vt_resnet18", 1, num_tokens=8, tokenizer="filter"), {"gmacs": 0.40, "params_m": 11.0, "top1": 95.5, **_latency(5.0)}),
    (_config("vt_resnet18", 0, num_tokens=16, tokenizer="filter"), {"gmacs": 0.42, "params_m": 11.0, "top1": 94.0, **_latency(6.0)}),
    (_config("vt_resnet18", 1, num_tokens=16, tokenizer="filter"), {"gmacs": 0.42, "params_m": 11.0, "top1": 96.0, **_latency(6.0)}),
    # seed 2 lost its top1: counted in gmacs_n but not top1_n, and listed as a missing metric
    (_config("vt_resnet18", 2, num_tokens=16, tokenizer="filter"), {"gmacs": 0.42, "params_m": 11.0, **_latency(6.0)}),
    (_config("vt_resnet18", 0, num_tokens=8, tokenizer="pooling"), {"gmacs": 0.39, "params_m": 10.5, "top1": 91.0, **_latency(4.5)}),
    (_config("vt_resnet18", 0, num_tokens=16, tokenizer="pooling"), {"gmacs": 0.40, "params_m": 10.5, "top1": 92.0, **_latency(5.5)}),
]
PAPER_GRID = [
    (_config("resnet18", measure=("complexity",), input_size=224, dataset="imagenet", num_classes=1000),
     {"gmacs": 1.814, "params_m": 11.69, "gmacs_stage5": 0.462, "params_m_stage5": 8.39}),
    (_config("vt_resnet18", measure=("complexity",), input_size=224, dataset="imagenet", num_classes=1000),
     {"gmacs": 1.600, "params_m": 11.90, "gmacs_vt": 0.200, "params_m_vt": 8.00}),
]
FPN = [
    (_config("fpn_r50", measure=("complexity", "train"), input_size=473, dataset="lip"),
     {"gmacs": 37.0, "params_m": 28.0, "gmacs_fpn": 12.9, "miou": 46.0}),
    (_config("vt_fpn_r50", measure=("complexity", "train"), input_size=473, dataset="lip"),
     {"gmacs": 27.0, "params_m": 30.0, "gmacs_fpn": 2.5, "miou": 47.5}),
    (_config("fpn_r50", measure=("complexity",), input_size=[800, 1216], dataset="coco_stuff"),
     {"gmacs": 160.0, "params_m": 28.0, "gmacs_fpn": 55.1}),
    (_config("vt_fpn_r50", measure=("complexity",), input_size=[800, 1216], dataset="coco_stuff"),
     {"gmacs": 110.0, "params_m": 30.0, "gmacs_fpn": 9.0}),
]
ERROR_CONFIG = _config("vt_resnet18", 0, num_tokens=32, tokenizer="filter")
PENDING = [_config("vt_resnet18", 0, num_tokens=4, tokenizer="filter"), _config("vt_resnet18", 1, num_tokens=4, tokenizer="filter")]
CORRUPT_CONFIG = _config("vt_resnet18", 0, num_tokens=8, tokenizer="clustering")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A partial run folder with every kind of record the report must cope with."""
    run = tmp_path_factory.mktemp("runs") / "fixture"
    records = run / "records"
    cells = []
    for config, metrics in DIGITS + PAPER_GRID + FPN:
        rec = make_record(config, metrics=metrics, env=ENV, run="fixture", started_at="2026-11-25T10:00:00+00:00")
        write_record(records, rec)
        cells.append({"cell_id": rec["cell_id"], "config": config})
    try:
        raise MemoryError("CUDA out of memory at batch 1")
    except MemoryError as exc:
        err = make_record(ERROR_CONFIG, error=exc, env=ENV, run="fixture")
    write_record(records, err)
    cells.append({"cell_id": err["cell_id"], "config": ERROR_CONFIG})
    corrupt = make_record(CORRUPT_CONFIG, metrics={}, env=ENV)
    (records / f"{corrupt['cell_id']}.json").write_text('{"schema": "vtbench.record/1", "cell_')
    cells.append({"cell_id": corrupt["cell_id"], "config": CORRUPT_CONFIG})
    for config in PENDING:
        cells.append({"cell_id": make_record(config, env=ENV)["cell_id"], "config": config})
    write_json_atomic(run / "cells.json", cells)
    return run


@pytest.fixture(scope="module")
def report(run_dir):
    """The report of the fixture run, written once for all tests (plots included)."""
    from bench.analysis.report import write_report

    return write_report([run_dir])


def _row(table: pd.DataFrame, model: str, **options) -> pd.Series:
    sel = table["model"] == model
    for key, value in options.items():
        sel &= table[key].astype(str) == str(value)
    assert sel.sum() == 1, f"expected one row for {model} {options}, got {sel.sum()}"
    return table[sel].iloc[0]


def test_every_file_is_written(report, run_dir):
    out = run_dir / "report"
    for name in ("table.csv", "cells.csv", "paper_vs_measured.csv", "report.md", "report.html"):
        assert (out / name).stat().st_size > 0, name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(report.plots)  # self-contained
    for plot in report.plots:
        assert plot.png.exists() and plot.svg.exists()
    csv = pd.read_csv(out / "table.csv")
    assert {"top1", "top1_std", "top1_n", "gmacs", "latency_ms_p50", "tokenizer", "num_tokens", "latency.device"} <= set(csv.columns)


def test_aggregates_are_mean_and_sample_std(report):
    table = report.table
    vt16 = _row(table, "vt_resnet18", num_tokens=16, tokenizer="filter", input_size="32x32")
    assert vt16["n"] == 3 and vt16["gmacs_n"] == 3
    assert vt16["top1_n"] == 2  # seed 2 has no top1
    assert vt16["top1"] == pytest.approx(95.0)
    assert vt16["top1_std"] == pytest.approx(statistics.stdev([94.0, 96.0]))  # ddof=1: sqrt(2)
    vt8 = _row(table, "vt_resnet18", num_tokens=8, tokenizer="filter", input_size="32x32")
    assert vt8["top1"] == pytest.approx(94.25)
    assert vt8["top1_std"] == pytest.approx(float(np.std([93.0, 95.5], ddof=1)))
    single = _row(table, "vt_resnet18", num_tokens=8, tokenizer="pooling", input_size="32x32")
    assert single["top1_n"] == 1 and math.isnan(single["top1_std"])
    base = _row(table, "resnet18", input_size="32x32")
    assert base["top1"] == pytest.approx(91.0) and base["seeds"] == "0;1"


def test_baseline_ratios(report):
    table = report.table
    vt = _row(table, "vt_resnet18", input_size="224x224")
    assert vt["stage_gmacs_reduction_x"] == pytest.approx(0.462 / 0.200)
    assert vt["gmacs_reduction_x"] == pytest.approx(1.814 / 1.600)
    vt16 = _row(table, "vt_resnet18", num_tokens=16, tokenizer="filter", input_size="32x32")
    # single-pass records only: the p50 ratio (medians over seeds), labelled, never a verdict
    assert vt16["latency_ratio"] == pytest.approx(6.0 / 4.0) and pd.isna(vt16["latency_ratio_lo"])
    assert vt16["latency_ratio_method"] == "single pass, no interval"
    assert vt16["latency_ratio_verdict"] == "no verdict: single pass (no interleaved rounds)"
    # two seeds on each side, the same seeds: paired, but too few for an interval
    vt8 = _row(table, "vt_resnet18", num_tokens=8, tokenizer="filter", input_size="32x32")
    assert vt8["top1_diff"] == pytest.approx((93.0 + 95.5) / 2 - (90.0 + 92.0) / 2)
    assert vt8["top1_diff_verdict"] == "no verdict: 2 seeds (an interval needs >= 3)"
    fpn = _row(table, "vt_fpn_r50", input_size="473x473")
    assert fpn["stage_gmacs_reduction_x"] == pytest.approx(12.9 / 2.5)
    assert _row(table, "vt_fpn_r50", input_size="800x1216")["gmacs_reduction_x"] == pytest.approx(160 / 110)


def test_paper_vs_measured_deltas(report):
    cmp = report.comparison
    def delta(table, model, metric):
        rows = cmp[(cmp["table"] == table) & (cmp["model"] == model) & (cmp["metric"] == metric)]
        assert len(rows) == 1, (table, model, metric, rows)
        return rows.iloc[0]
    assert delta("T8", "vt_resnet18", "gmacs")["delta"] == pytest.approx(1.600 - 1.569)
    assert delta("T2", "vt_resnet18", "gmacs")["delta"] == pytest.approx(1.600 - 1.579)
    assert delta("T8", "resnet18", "params_m")["delta_pct"] == pytest.approx(100 * (11.69 - 11.7) / 11.7)
    assert delta("T1", "vt_resnet18", "stage_gmacs_reduction_x")["measured"] == pytest.approx(0.462 / 0.2)
    assert delta("T10", "vt_fpn_r50", "miou")["delta"] == pytest.approx(47.5 - 47.39)
    assert delta("T10", "fpn_r50", "gmacs_fpn")["delta"] == pytest.approx(12.9 - 12.8)
    assert delta("T9", "vt_fpn_r50", "gmacs_fpn")["delta"] == pytest.approx(9.0 - 8.5)
    assert delta("T9", "vt_fpn_r50", "gmacs")["delta_pct"] == pytest.approx(100 * (110 - 113) / 113)
    assert not ((cmp["table"] == "T9") & (cmp["metric"] == "miou")).any()  # no COCO-stuff training
    # digits cells (10 classes, 32x32) are never compared with ImageNet numbers
    assert not (cmp["paper"] == 72.0).any()
    assert (cmp["table"] == "T3").sum() == 2  # filter tokenizer: gmacs and params from the note


def test_pending_failed_corrupt_and_missing_are_listed(report, run_dir):
    data = report.data
    assert len(data.errors) == 1 and data.errors.iloc[0]["error_type"] == "MemoryError"
    assert len(data.corrupt) == 1
    assert len(data.pending) == 3  # two never ran, one has a corrupt record
    assert sorted(data.pending["reason"]) == ["corrupt record"] + ["never submitted; `vtbench launch` runs it"] * 2
    assert list(data.pending["state"]) == ["pending"] * 3
    assert list(data.missing["metric"]) == ["top1"]
    md = (run_dir / "report" / "report.md").read_text()
    assert ("cells: 15 ok, 1 error, 0 timeout, 0 running, 3 pending, 0 stopped (as `vtbench status` counts them); "
            "1 corrupt record file(s); 1 missing metric(s)") in md
    assert "### Cells without a record (pending, running or stopped) (3)" in md
    assert "CUDA out of memory" in md
    assert "94.25 ± 1.77 (n=2)" in md  # accuracy table shows mean ± sample std (n)


def _assert_not_blank(png: Path):
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB")).astype(np.int64)
    assert pixels.std() > 0
    packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    assert len(np.unique(packed)) > 2  # more than background and one ink colour


@pytest.mark.parametrize("name", ["accuracy_vs_gmacs", "latency_vs_tokens", "stage5_gmacs", "fpn_vs_vt_fpn"])
def test_plots_exist_and_are_not_blank(report, name):
    drawn = {p.name: p for p in report.plots}
    assert name in drawn, f"{name} skipped: {dict(report.skipped_plots).get(name)}"
    _assert_not_blank(drawn[name].png)
    assert drawn[name].svg.read_text().lstrip().startswith("<?xml")


def test_attention_plot_uses_models_token_attention(report):
    import models

    if not hasattr(models, "token_attention"):
        assert "token_attention" in dict(report.skipped_plots)
        pytest.skip("models.token_attention is not in this checkout yet")
    drawn = {p.name: p for p in report.plots}
    assert "token_attention" in drawn, dict(report.skipped_plots).get("token_attention")
    _assert_not_blank(drawn["token_attention"].png)


def test_complexity_only_run_skips_accuracy_plot(tmp_path, monkeypatch):
    from bench.analysis import report as report_module
    from bench.analysis.plots import PlotSkipped
    from bench.analysis.report import write_report

    def no_attention(data):  # drawn by the fixture report already; a 224x224 build is slow on 2 cores
        raise PlotSkipped("not drawn in this test")

    monkeypatch.setattr(report_module, "_attention", no_attention)

    records = tmp_path / "cplx" / "records"
    for config, metrics in PAPER_GRID:
        write_record(records, make_record(config, metrics=metrics, env=ENV))
    stale = tmp_path / "cplx" / "report" / "plots" / "accuracy_vs_gmacs.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    rep = write_report([tmp_path / "cplx"], formats=["md"])
    assert not stale.exists()  # a plot skipped now is not left over from an earlier report
    skipped = dict(rep.skipped_plots)
    assert "accuracy_vs_gmacs" in skipped and "latency_vs_tokens" in skipped
    md = (tmp_path / "cplx" / "report" / "report.md").read_text()
    assert "no cells.json" in md and "Skipped plots" in md


def test_segmentation_only_run_plots_miou(tmp_path, monkeypatch):
    """A run of segmentation cells alone (no top1 column anywhere) still gets its accuracy plots."""
    from bench.analysis import report as report_module
    from bench.analysis.plots import PlotSkipped
    from bench.analysis.report import write_report

    def no_attention(data):
        raise PlotSkipped("not drawn in this test")

    monkeypatch.setattr(report_module, "_attention", no_attention)
    records = tmp_path / "seg" / "records"
    for config, metrics in FPN[:2]:
        write_record(records, make_record(config, metrics=metrics, env=ENV))
    rep = write_report([tmp_path / "seg"], formats=["md", "csv"])
    assert "accuracy_vs_gmacs" not in dict(rep.skipped_plots)
    assert "fpn_vs_vt_fpn" not in dict(rep.skipped_plots)
    for name in ("accuracy_vs_gmacs", "fpn_vs_vt_fpn"):
        _assert_not_blank(tmp_path / "seg" / "report" / "plots" / f"{name}.png")
    assert "47.5" in (tmp_path / "seg" / "report" / "report.md").read_text()


def test_command_rejects_bad_runs(tmp_path):
    from bench.cli.commands import report as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    with pytest.raises(UsageError, match="does not exist"):
        cmd.run(parser.parse_args([str(tmp_path / "nope")]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no records"):
        cmd.run(parser.parse_args([str(tmp_path / "empty")]))
    with pytest.raises(UsageError, match="format"):
        cmd.run(parser.parse_args([str(tmp_path / "empty"), "--format", "pdf"]))


def test_command_writes_report(run_dir, tmp_path):
    from bench.cli.commands import report as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    assert cmd.run(parser.parse_args([str(run_dir), "--out", str(tmp_path / "o"), "--format", "csv"])) == 0
    assert (tmp_path / "o" / "table.csv").exists() and not (tmp_path / "o" / "report.md").exists()


def test_reference_ships_and_names_tables():
    from bench.analysis.reference import CSV_PATH, load_paper_csv, load_reference

    assert CSV_PATH.exists()
    ref = load_reference()
    assert set(ref["table"]) == set(load_paper_csv()["table"])
    t10 = ref[(ref["table"] == "T10") & (ref["model"] == "vt_fpn_r50")].set_index("metric")["value"]
    assert t10["gmacs"] == pytest.approx(26.4) and t10["gmacs_fpn"] == pytest.approx(2.0)
    t6 = ref[(ref["table"] == "T6") & (ref["metric"] == "gmacs")]
    assert sorted(m["num_tokens"] for m in t6["match"]) == [32, 32, 64, 64]
    t5 = ref[(ref["table"] == "T5") & (ref["variant"] == "token_op=none")]
    assert all(m == {"transformer": "none"} for m in t5["match"])


def test_paper_defaults_are_the_registry_defaults_with_the_papers_readings():
    """The paper's default variant (section 5.1) is read from the registry, not kept beside it: L = 16
    tokens for VT-ResNet, 8 per level for VT-FPN, a filter tokenizer, recurrence and projector on; the
    transformer is either reading of the paper's equations; baselines and unknown models have none."""
    from bench.analysis.reference import paper_defaults

    for name in ("vt_resnet18", "vt_resnet34", "vt_resnet50", "vt_resnet101"):
        assert paper_defaults(name) == {"tokenizer": "filter", "num_tokens": 16, "projector": True,
                                        "transformer": ("paper", "mhsa"), "recurrent": True}, name
    for name in ("vt_fpn_r50", "vt_fpn_r101"):
        assert paper_defaults(name) == {"tokenizer": "filter", "num_tokens": 8, "transformer": ("paper", "mhsa")}
    for name in ("resnet18", "fpn_r50", "timm:resnet18", "mypkg.nets:vt_resnet18"):
        assert paper_defaults(name) == {}, name


def test_several_runs_combine_and_need_out(run_dir, tmp_path):
    from bench.analysis.report import write_report

    other = tmp_path / "other"
    for config, metrics in PAPER_GRID:
        write_record(other / "records", make_record(dict(config, seed=1), metrics=metrics, env=ENV))
    with pytest.raises(UsageError, match="--out"):
        write_report([run_dir, other])
    rep = write_report([run_dir, other], out=tmp_path / "both", formats=["csv"])
    vt = _row(rep.table, "vt_resnet18", input_size="224x224")
    assert vt["n"] == 2 and vt["runs"] == "fixture;other" and vt["gmacs_std"] == pytest.approx(0.0)


def test_load_weights_reads_trainer_checkpoints(tmp_path):
    """bench.measure.train saves {'model': state_dict, 'epoch': ...}; the attention plot loads it, or says untrained."""
    import torch

    from bench.analysis.plots import PlotSkipped, load_weights

    net = torch.nn.Linear(3, 2)
    assert load_weights(net, None) == "untrained weights"
    assert load_weights(net, tmp_path / "missing.pt") == "untrained weights"
    trained = torch.nn.Linear(3, 2)
    torch.save({"model": trained.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pt")
    assert load_weights(net, tmp_path / "checkpoint.pt") == "trained weights (epoch 3)"
    assert torch.equal(net.weight, trained.weight)
    torch.save({"model": torch.nn.Linear(4, 2).state_dict()}, tmp_path / "bad.pt")
    with pytest.raises(PlotSkipped, match="does not fit"):
        load_weights(net, tmp_path / "bad.pt")


def test_tokenization_label_separates_recurrent_from_repeated_tokenizers():
    """The latency-vs-tokens plot draws one line per tokenization, named as the tables name the options."""
    import pandas as pd

    from bench.analysis.plots import tokenization_label
    from bench.analysis.tables import option_text

    def label(**row):
        return tokenization_label(pd.Series(row))

    assert label(model="vt_resnet18") == "tokenizer=default (filter), recurrent=default (True)"  # paper default
    assert label(model="vt_resnet18", tokenizer="filter", recurrent=False) == "tokenizer=filter, recurrent=False"
    assert label(model="vt_resnet18", tokenizer="clustering", recurrent=True) == "tokenizer=clustering, recurrent=True"
    assert label(model="vt_fpn_r50", tokenizer="filter") == "tokenizer=filter"  # no recurrence in VT-FPN
    # the legend's words are the table's words for the same setting
    assert label(model="vt_resnet18").startswith(f"tokenizer={option_text('vt_resnet18', 'tokenizer', None)}")


def test_a_study_section_is_shown_after_the_tables_and_written_as_csv(tmp_path, monkeypatch):
    """bench/analysis/section.py: what a study's report_sections returns reaches report.md, the HTML
    page and its CSV file; a run the study does not recognise gets none."""
    from bench.analysis import report as report_module
    from bench.analysis import speed_report
    from bench.analysis.plots import PlotSkipped
    from bench.analysis.section import StudySection
    from bench.analysis.report import write_report

    def no_attention(data):
        raise PlotSkipped("not drawn in this test")

    def sections(data, table):
        seen = sorted(set(table["model"]))
        return [StudySection("Side by side (test)", "Two *models* seen.",
                             pd.DataFrame({"models": [", ".join(seen)]}), csv_name="side.csv",
                             data=pd.DataFrame({"n_models": [len(seen)]}))]

    monkeypatch.setattr(report_module, "_attention", no_attention)
    monkeypatch.setattr(speed_report, "report_sections", sections)
    records = tmp_path / "run" / "records"
    for config, metrics in FPN[:2]:
        write_record(records, make_record(config, metrics=metrics, env=ENV))
    rep = write_report([tmp_path / "run"], formats=["md", "csv", "html"])
    out = tmp_path / "run" / "report"
    md = (out / "report.md").read_text()
    assert "## Side by side (test)\n\nTwo *models* seen." in md
    assert md.index("## Side by side (test)") > md.index("## Paper vs measured")
    assert "fpn_r50, vt_fpn_r50" in md
    assert "Side by side (test)" in (out / "report.html").read_text()
    assert pd.read_csv(out / "side.csv")["n_models"].tolist() == [2]
    assert rep.files["side.csv"] == out / "side.csv"


def test_timeout_crash_non_finite_and_stopped_cells_are_states_never_results(tmp_path, monkeypatch):
    """A cell stopped at its deadline counts as `timeout`, a crashed one and one whose evaluation gave NaN
    as `error`: each listed with its message, and no metric of theirs (the NaN cell's chance top-1)
    enters a table, table.csv or a plot; a cancelled cell without a record is `stopped`."""
    from bench.analysis import report as report_module
    from bench.analysis.plots import PlotSkipped
    from bench.analysis.report import write_report
    from bench.core.records import NON_FINITE_ERROR, TIMEOUT_ERROR, record_outcome

    monkeypatch.setattr(report_module, "_attention", lambda data: (_ for _ in ()).throw(PlotSkipped("not here")))
    run = tmp_path / "faults"
    records = run / "records"
    ok_configs = [_config("resnet18", 0), _config("vt_resnet18", 0, num_tokens=8, tokenizer="filter")]
    cells = []
    for config, top1 in zip(ok_configs, (90.0, 91.0)):
        rec = make_record(config, metrics={"gmacs": 0.5, "params_m": 11.0, "top1": top1, **_latency(4.0)}, env=ENV)
        write_record(records, rec)
        cells.append({"cell_id": rec["cell_id"], "config": config})
    failures = {TIMEOUT_ERROR: ("cell timed out after 1 min", {}),
                NON_FINITE_ERROR: ("evaluation gave non-finite test_loss", {"top1": 9.72, "gmacs": 0.5}),
                "CellCrashed": ("the cell's process was killed by SIGSEGV", {})}
    for i, (kind, (message, metrics)) in enumerate(failures.items()):
        config = _config("vt_resnet18", 0, num_tokens=4 + i, tokenizer="filter")
        rec = make_record(config, metrics=metrics, error=type(kind, (RuntimeError,), {})(message), env=ENV)
        write_record(records, rec)
        cells.append({"cell_id": rec["cell_id"], "config": config})
        assert record_outcome(rec) == ("timeout" if kind == TIMEOUT_ERROR else "error")
    stopped = _config("vt_resnet18", 0, num_tokens=32, tokenizer="filter")
    stopped_id = make_record(stopped, env=ENV)["cell_id"]
    cells.append({"cell_id": stopped_id, "config": stopped})
    (run / "cells" / stopped_id).mkdir(parents=True)
    write_json_atomic(run / "cells" / stopped_id / "cancelled.json",
                      {"cancelled_at": "2026-12-06T10:00:00+00:00", "cluster": "local", "task_id": "1"})
    write_json_atomic(run / "cells.json", cells)

    rep = write_report([run], formats=["md", "csv"])
    assert rep.data.state_counts() == {"ok": 2, "error": 2, "timeout": 1, "running": 0, "pending": 0, "stopped": 1}
    md = (run / "report" / "report.md").read_text()
    assert "cells: 2 ok, 2 error, 1 timeout, 0 running, 0 pending, 0 stopped" not in md  # stopped is counted
    assert "cells: 2 ok, 2 error, 1 timeout, 0 running, 0 pending, 1 stopped" in md
    failed = md.split("### Failed cells (error and timeout records) (3)")[1].split("###")[0]
    for kind, (message, _) in failures.items():
        assert kind in failed and message in failed
    assert re.search(r"\| timeout +\| CellTimeout +\|", failed) and re.search(r"\| error +\| CellCrashed +\|", failed)
    assert "### Cells without a record (pending, running or stopped) (1)" in md and "stopped" in md
    assert "9.72" not in md.split("## Pending, failed and incomplete cells")[0]  # the NaN cell's top-1 is no result
    table = pd.read_csv(run / "report" / "table.csv")
    assert len(table) == 2 and 9.72 not in set(table["top1"])
    assert set(rep.data.cells["cell_id"]) == {c["cell_id"] for c in cells[:2]}
