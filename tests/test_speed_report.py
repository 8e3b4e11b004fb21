"""The speed study as a report section (bench/analysis/speed_report.py), from a run folder built by
hand (records and re-measurements), every ratio and verdict checked against a hand computation."""

from __future__ import annotations

import csv
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from bench.analysis import speed_report
from bench.analysis.report import build_report, write_report
from bench.core.records import make_record, make_remeasurement, write_record, write_remeasurement

REPO = Path(__file__).resolve().parents[1]
GMACS = {"resnet18": 1.8, "vt_resnet18": 1.5, "resnet50": 4.0, "vt_resnet50": 3.4}
ENV = {"host": "test", "device": "cpu", "device_name": "cpu"}
SESSION = {"id": "aaaaaaaaaaaa", "protocol": "interleaved", "started_at": "2026-01-01T00:00:00+00:00",
           "finished_at": "2026-01-01T00:10:00+00:00", "rounds": 4, "cells": 6}


def _config(model: str, batch: int, compile_mode: str | None = None) -> dict:
    return {"model": model, "model_args": {"num_classes": 1000}, "measure": ["complexity", "latency"],
            "input_size": 224, "seed": 0, "complexity": {},
            "latency": {"device": "cpu", "batch_size": batch, "dtype": "fp32", "threads": 2,
                        "channels_last": False, "compile": compile_mode, "cuda_graphs": False, "train_step": False},
            "train": {}}


def _record(records: Path, model: str, batch: int, compile_mode: str | None = None) -> dict:
    metrics = {"gmacs": GMACS[model], "params_m": 10.0, "latency_ms_p50": 50.0, "latency_ms_p20": 49.0,
               "latency_ms_p80": 51.0, "throughput_img_s": 20.0, "batch_size_used": batch, "latency_verdict": "ok"}
    record = make_record(_config(model, batch, compile_mode), metrics=metrics, env=ENV, run="run")
    write_record(records, record)
    return record


def _remeasure(records: Path, record: dict, rounds: list[float], *, session: dict = SESSION,
               verdicts: list[str] | None = None, extra: dict | None = None) -> None:
    metrics = {"latency_ms_p50": statistics.median(rounds), "latency_ms_p20": min(rounds),
               "latency_ms_p80": max(rounds), "latency_ms_min": min(rounds), "latency_round_p50_ms": rounds,
               "latency_round_verdicts": verdicts or ["ok"] * len(rounds), "latency_protocol": "interleaved",
               "latency_rounds": len(rounds), "batch_size_used": record["config"]["latency"]["batch_size"],
               "latency_verdict": "ok", **(extra or {})}
    write_remeasurement(records, make_remeasurement(record, metrics, session=session, env=ENV))


PEAK = {"peak_gemm_tflops": 0.5, "peak_copy_gb_s": 10.0, "peak_gemm_tflops_start": 0.5, "peak_gemm_tflops_end": 0.4,
        "peak_copy_gb_s_start": 10.0, "peak_copy_gb_s_end": 9.0}
STAGES = {"resnet18": {"stage_ms_stem": 1.0, "stage_ms_stage2": 2.0, "stage_ms_stage3": 2.0, "stage_ms_stage4": 2.0,
                       "stage_ms_stage5": 2.0, "stage_ms_head": 1.0},
          "vt_resnet18": {"stage_ms_stem": 1.0, "stage_ms_stage2": 2.0, "stage_ms_stage3": 2.0,
                          "stage_ms_stage4": 2.0, "stage_ms_vt": 1.5, "stage_ms_head": 0.5}}
# What `vtbench interleave --stages --peak` adds: how the stages were timed, and each stage's roofline bounds
# (here only the compared stage's and the stem's, as a run may have them for some stages only).
BOUNDS = {"resnet18": {"stage_timing": "forward_hooks_eager", "stage_bound_ms_stage5": 1.0,
                       "stage_bound_unfused_ms_stage5": 1.6, "stage_bound_ms_stem": 0.25},
          "vt_resnet18": {"stage_timing": "cuda_graphs_per_stage", "stage_bound_ms_vt": 0.5,
                          "stage_bound_unfused_ms_vt": 0.9}}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Five pairs: batch 1 not resolved (one noisy round), batch 32 met, batch 8 missed (all one session);
    ResNet-50 timed in two sessions; batch 1 compiled single pass only."""
    run = tmp_path_factory.mktemp("speed") / "run"
    records = run / "records"
    b1 = {m: _record(records, m, 1) for m in ("resnet18", "vt_resnet18")}
    _remeasure(records, b1["resnet18"], [10.0, 11.0, 12.0, 10.0], extra={**PEAK, **STAGES["resnet18"],
                                                                        **BOUNDS["resnet18"]})
    _remeasure(records, b1["vt_resnet18"], [8.0, 9.0, 10.5, 8.5], verdicts=["ok", "noisy", "ok", "ok"],
               extra={**PEAK, **STAGES["vt_resnet18"], **BOUNDS["vt_resnet18"]})
    b32 = {m: _record(records, m, 32) for m in ("resnet18", "vt_resnet18")}
    _remeasure(records, b32["resnet18"], [100.0, 110.0, 100.0, 110.0])
    _remeasure(records, b32["vt_resnet18"], [70.0, 75.0, 70.0, 75.0])
    b8 = {m: _record(records, m, 8) for m in ("resnet18", "vt_resnet18")}
    _remeasure(records, b8["resnet18"], [10.0, 10.0, 10.0, 10.0])
    _remeasure(records, b8["vt_resnet18"], [9.0, 9.5, 9.0, 9.5])
    r50 = {m: _record(records, m, 1) for m in ("resnet50", "vt_resnet50")}
    _remeasure(records, r50["resnet50"], [20.0, 20.0])
    _remeasure(records, r50["vt_resnet50"], [18.0, 18.0], session={**SESSION, "id": "bbbbbbbbbbbb"})
    for m in ("resnet18", "vt_resnet18"):
        _record(records, m, 1, "default")  # compiled: single pass only (record p50 50 ms both)
    return run


def _pairs(run: Path) -> dict[tuple, dict]:
    report = build_report([run])
    (section, stages) = report.studies[:2]
    assert section.csv_name == "speed.csv" and stages.csv_name == "speed_stages.csv"
    return {(p["vt_model"], p["batch"], p["mode"]): p for p in section.data.to_dict("records")}


def _geomean_ci(ratios):
    logs = np.log(ratios)
    half = stats.t.ppf(0.975, len(logs) - 1) * logs.std(ddof=1) / math.sqrt(len(logs))
    return math.exp(logs.mean()), math.exp(logs.mean() - half), math.exp(logs.mean() + half)


def _holm_by_hand(p_values):
    """Holm for two tests, written out: the smaller p doubled; the larger kept, but never below that."""
    low, high = sorted(p_values)
    adjusted = {low: min(1.0, 2 * low), high: min(1.0, max(2 * low, high))}
    return [adjusted[p] for p in p_values]


B32 = np.array([70 / 100, 75 / 110, 70 / 100, 75 / 110])
B8 = np.array([9 / 10, 9.5 / 10, 9 / 10, 9.5 / 10])


def test_round_ratios_geometric_mean_and_verdicts_match_a_hand_computation(run):
    pairs = _pairs(run)
    assert len(pairs) == 5
    macs = 1.5 / 1.8
    one = pairs[("vt_resnet18", 1, "eager")]
    ratios = [8 / 10, 9 / 11, 10.5 / 12, 8.5 / 10]  # paired by round
    assert one["round_ratios"] == pytest.approx(ratios)
    assert (one["latency_ratio"], one["latency_ratio_lo"], one["latency_ratio_hi"]) == pytest.approx(_geomean_ci(ratios))
    assert one["macs_ratio"] == pytest.approx(macs)
    # one noisy round measurement of the eight behind the pair: no verdict, and the row says why
    assert one["verdict"] == one["target_verdict"] == "no verdict: 1 of 8 measurements noisy"
    # the two pairs with a verdict form the table's Holm family, for each question
    p_target = _holm_by_hand([stats.ttest_1samp(np.log(r), math.log(macs)).pvalue for r in (B32, B8)])
    p_one = _holm_by_hand([stats.ttest_1samp(np.log(r), 0.0).pvalue for r in (B32, B8)])
    met, missed = pairs[("vt_resnet18", 32, "eager")], pairs[("vt_resnet18", 8, "eager")]
    assert met["latency_ratio"] == pytest.approx(_geomean_ci(B32)[0]) and met["latency_ratio_hi"] < macs
    assert met["target_p_holm"] == pytest.approx(p_target[0]) and met["target_verdict"].startswith("met (Holm p")
    assert missed["latency_ratio_lo"] > macs and missed["target_verdict"].startswith("missed (Holm p")
    assert missed["target_p_holm"] == pytest.approx(p_target[1])
    assert (met["p_holm"], missed["p_holm"]) == pytest.approx(tuple(p_one))


def test_ceilings_give_achieved_tflops_and_fraction(run):
    one = _pairs(run)[("vt_resnet18", 1, "eager")]
    assert one["peak_gemm_tflops"] == 0.5
    assert one["base_tflops"] == pytest.approx(2 * 1.8 * 1 / 10.5)  # base p50 = median(10, 11, 12, 10)
    assert one["vt_tflops"] == pytest.approx(2 * 1.5 * 1 / 8.75)
    assert one["vt_fraction_of_peak"] == pytest.approx(2 * 1.5 / 8.75 / 0.5)
    assert "base_tflops" not in _pairs(run)[("vt_resnet18", 32, "eager")] or \
        pd_isna(_pairs(run)[("vt_resnet18", 32, "eager")]["base_tflops"])  # no ceilings measured there


def pd_isna(value) -> bool:
    return value is None or value != value


def test_different_sessions_and_single_pass_get_no_verdict(run):
    pairs = _pairs(run)
    split = pairs[("vt_resnet50", 1, "eager")]
    assert split["statistic"] == "single pass, no interval" and pd_isna(split["latency_ratio_lo"])
    assert split["verdict"] == "no verdict: timed in different interleave sessions: rounds cannot be paired"
    assert pd_isna(split["target_p_holm"]) and split["target_verdict"].startswith("no verdict: timed in different")
    assert split["latency_ratio"] == pytest.approx(18 / 20)
    single = pairs[("vt_resnet18", 1, "compile")]
    assert single["verdict"] == "no verdict: single pass (no interleaved rounds)"
    assert single["latency_ratio"] == pytest.approx(1.0)


def test_the_shown_table_and_the_stage_breakdown(run):
    report = build_report([run])
    section, stages = report.studies[:2]
    rows = {(r["VT model"], r["batch"], r["mode"]): r for r in section.table.to_dict("records")}
    one = rows[("vt_resnet18", "1", "eager")]
    ratio, lo, hi = _geomean_ci([8 / 10, 9 / 11, 10.5 / 12, 8.5 / 10])
    assert one["latency ratio VT / baseline [95 % CI]"] == f"{ratio:.3f} [{lo:.3f}-{hi:.3f}]"
    assert one["MACs ratio"] == "0.833" and one["rounds"] == "4"
    assert one["TFLOP/s base / VT (% of GEMM ceiling)"] == (f"{2 * 1.8 / 10.5:.3g} ({100 * 2 * 1.8 / 10.5 / 0.5:.1f} %) / "
                                                            f"{2 * 1.5 / 8.75:.3g} ({100 * 2 * 1.5 / 8.75 / 0.5:.1f} %)")
    split = rows[("vt_resnet50", "1", "eager")]
    assert split["target: ratio below MACs ratio"].startswith("no verdict: timed in different interleave sessions")
    assert split["latency ratio VT / baseline [95 % CI]"] == "0.900 (single pass, no interval)"
    assert "GEMM 0.5 TFLOP/s" in section.intro and "Holm" in section.intro
    assert list(stages.table.columns) == ["model", "batch", "mode", "device", "stem", "stage2", "stage3", "stage4",
                                          "stage5", "vt", "head", "stage timing", "compared stage", "bound (ms)",
                                          "x bound"]
    vt_row = stages.table[stages.table["model"] == "vt_resnet18"].iloc[0]
    assert vt_row["vt"] == "1.50 (17%)" and vt_row["stage5"] == "-"  # 1.5 of 9 ms
    raw = stages.data[(stages.data["model"] == "resnet18") & (stages.data["stage"] == "stem")].iloc[0]
    assert raw["ms"] == 1.0 and raw["share"] == pytest.approx(0.1)


def test_the_complexity_table_says_it_shows_each_models_macs_once(run):
    report = build_report([run])
    complexity = dict(report.sections)["Complexity"]
    assert list(complexity["model"]) == ["resnet18", "vt_resnet18", "resnet50", "vt_resnet50"]
    assert report.intros["Complexity"].startswith("10 configurations with MACs, 4 rows: configurations that "
                                                  "differ only in a measurement setting")


def test_stage_bounds_give_x_bound_of_the_compared_stage(run):
    """The VT stage's measured time over its fused roofline bound (1.5 / 0.5 ms), the baseline's stage 5
    (2.0 / 1.0 ms), how each was timed; every bounded stage's figures in speed_stages.csv."""
    stages = build_report([run]).studies[1]
    rows = {r["model"]: r for r in stages.table.to_dict("records")}
    vt, base = rows["vt_resnet18"], rows["resnet18"]
    assert (vt["compared stage"], vt["bound (ms)"], vt["x bound"]) == ("vt", "0.5", "3.00x")
    assert (base["compared stage"], base["bound (ms)"], base["x bound"]) == ("stage5", "1", "2.00x")
    assert (vt["stage timing"], base["stage timing"]) == ("cuda_graphs_per_stage", "forward_hooks_eager")
    assert "one fused kernel" in stages.intro and "within 2x" in stages.intro and "cuda_graphs_per_stage" in stages.intro
    raw = stages.data.set_index(["model", "stage"])
    assert raw.loc[("vt_resnet18", "vt"), "bound_ms"] == 0.5
    assert raw.loc[("vt_resnet18", "vt"), "over_bound"] == pytest.approx(3.0)
    assert raw.loc[("vt_resnet18", "vt"), "unfused_bound_ms"] == 0.9
    assert raw.loc[("resnet18", "stem"), "over_bound"] == pytest.approx(1.0 / 0.25)  # a stage not compared
    assert pd_isna(raw.loc[("resnet18", "stage2"), "bound_ms"]) and pd_isna(raw.loc[("resnet18", "stage2"), "over_bound"])


def test_stages_without_bounds_have_no_bound_columns():
    record = {"cell_id": "a" * 12, "config": {"model": "resnet18", "latency": {"batch_size": 1}},
              "model": {"replaced": "stage5", "stages": ["stem", "stage5"]},
              "metrics": {"stage_ms_stem": 1.0, "stage_ms_stage5": 3.0}}
    shown, raw = speed_report.stage_tables([record])
    assert "x bound" not in shown.columns and shown.iloc[0]["stage timing"] == "-"
    assert raw["bound_ms"].isna().all()


def test_the_report_writes_the_sections_csv(run, tmp_path):
    out = tmp_path / "report"
    write_report([run], out, formats=["csv"])
    with open(out / "speed.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 and {"latency_ratio", "macs_ratio", "target_verdict", "round_ratios"} <= set(rows[0])
    assert (out / "speed_stages.csv").is_file()


def test_a_run_without_pairs_has_no_speed_section(tmp_path):
    records = tmp_path / "run" / "records"
    _remeasure(records, _record(records, "vt_resnet18", 1), [5.0, 5.0])
    assert speed_report.report_sections(build_report([tmp_path / "run"]).data, None) == []


def test_speed_report_imports_no_torch():
    code = "import bench.analysis.speed_report, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_pairs_sort_their_options_by_value(tmp_path):
    """num_tokens 4, 8, 16 in that order (not '16' < '4' < '8' as text)."""
    records = tmp_path / "run" / "records"
    base = _record(records, "resnet18", 1)
    _remeasure(records, base, [10.0, 10.0, 10.0, 10.0])
    for tokens in (16, 4, 8):
        config = _config("vt_resnet18", 1)
        config["model_args"] = {"num_classes": 1000, "num_tokens": tokens}
        record = make_record(config, metrics={"gmacs": 1.5, "params_m": 10.0, "latency_ms_p50": 9.0,
                                              "latency_verdict": "ok"}, env=ENV, run="run")
        write_record(records, record)
        _remeasure(records, record, [9.0, 9.1, 9.0, 9.1])
    section = build_report([tmp_path / "run"]).studies[0]
    assert list(section.table["VT options"]) == ["num_tokens=4", "num_tokens=8", "num_tokens=16"]
