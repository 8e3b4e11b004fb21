"""Statistics in reports, from synthetic records: accuracy differences with Welch's 95 % CI over
seeds (resolved, unresolved, one seed), latency ratios with a CI over interleaved rounds, the error
bars of the accuracy plot, and the counter-disagreement flag."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.core.records import make_record, write_json_atomic, write_record
from mdtable import md_rows

ENV = {"host": "fixture-host", "device_name": "Fixture CPU", "torch": "2.x", "threads": 1}
SESSION = "2026-12-01T10:00:00+00:00"


def _config(model, seed=0, measure=("complexity", "train"), **options):
    return {"model": model, "model_args": {"num_classes": 10, "stem": "cifar", **options}, "measure": list(measure),
            "input_size": 16, "seed": seed, "complexity": {},
            "latency": {"device": "cpu", "batch_size": 1, "dtype": "fp32", "threads": 1},
            "train": {"dataset": "digits", "epochs": 3}}


BASE_TOP1 = [80.0, 81.0, 82.0]
TOP1 = {  # num_tokens -> top-1 per seed
    8: [90.0, 91.0, 92.0],    # +10 points, tight: resolved
    16: [79.0, 83.0, 81.0],   # +0 points: not resolved
    32: [95.0],               # one seed: no interval, never resolved
}
BASE_ROUNDS = [10.0, 12.0, 11.0, 13.0, 10.5]           # a drifting machine: rounds differ by 30 %
FAST_ROUNDS = [0.8 * v * f for v, f in zip(BASE_ROUNDS, (1.0, 1.01, 0.99, 1.0, 1.005))]  # 0.8x in every round
SAME_ROUNDS = [v * f for v, f in zip(BASE_ROUNDS, (1.1, 0.9, 1.05, 0.95, 1.0))]          # 1.0x give or take


def _latency(rounds, settled=True):
    p50 = float(np.median(rounds))
    return {"latency_ms_p50": p50, "latency_ms_p20": p50 * 0.97, "latency_ms_p80": p50 * 1.03,
            "throughput_img_s": 1000.0 / p50, "peak_mem_mb": 12.0, "peak_mem_kind": "rss_added",
            "process_peak_rss_mb": 700.0, "batch_size_used": 1, "mode": "inference", "warmup_settled": settled,
            "latency_round_p50_ms": list(rounds), "latency_protocol": "interleaved", "latency_rounds": len(rounds)}


def _write(records_dir, config, metrics, remeasured=False):
    record = make_record(config, metrics=metrics, env=ENV, run="stats")
    if remeasured:
        record["remeasured_at"] = {"started_at": SESSION, "finished_at": SESSION, "protocol": "interleaved"}
    write_record(records_dir, record)
    return record


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from bench.analysis import report as report_module

    run = tmp_path_factory.mktemp("stats") / "stats"
    records, cells = run / "records", []
    for seed, top1 in enumerate(BASE_TOP1):
        cells.append(_write(records, _config("resnet18", seed), {"gmacs": 0.5, "params_m": 11.2, "top1": top1,
                                                                 "counter_agree": True, "counter_gap_pct": 0.01}))
    for tokens, values in TOP1.items():
        for seed, top1 in enumerate(values):
            metrics = {"gmacs": 0.4 + tokens / 1000, "params_m": 11.0, "top1": top1}
            if tokens == 8:
                metrics.update(counter_agree=False, counter_gap_pct=1.48)
            cells.append(_write(records, _config("vt_resnet18", seed, num_tokens=tokens), metrics))
    latency = ("latency",)
    cells.append(_write(records, _config("resnet18", measure=latency), _latency(BASE_ROUNDS), remeasured=True))
    cells.append(_write(records, _config("vt_resnet18", measure=latency, num_tokens=8), _latency(FAST_ROUNDS), remeasured=True))
    cells.append(_write(records, _config("vt_resnet18", measure=latency, num_tokens=16), _latency(SAME_ROUNDS, settled=False),
                        remeasured=True))
    write_json_atomic(run / "cells.json", [{"cell_id": c["cell_id"], "config": c["config"]} for c in cells])
    original = report_module._attention

    def no_attention(data):  # drawn by its own tests
        from bench.analysis.plots import PlotSkipped

        raise PlotSkipped("not drawn in this test")

    report_module._attention = no_attention
    try:
        return report_module.write_report([run], formats=["md", "csv"])
    finally:
        report_module._attention = original


def _acc(table, tokens):
    sel = (table["model"] == "vt_resnet18") & (table["num_tokens"].astype(str) == str(tokens)) & table["top1"].notna()
    assert sel.sum() == 1
    return table[sel].iloc[0]


def _lat(table, model, tokens=None):
    sel = (table["model"] == model) & table["latency_ms_p50"].notna()
    if tokens is not None:
        sel &= table["num_tokens"].astype(str) == str(tokens)
    assert sel.sum() == 1
    return table[sel].iloc[0]


def test_welch_interval_matches_scipy():
    from bench.analysis.report import welch_ci

    a, b = TOP1[16], BASE_TOP1
    ours = welch_ci(np.mean(a), np.std(a, ddof=1), len(a), np.mean(b), np.std(b, ddof=1), len(b))
    theirs = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert ours["lo"] == pytest.approx(theirs.low) and ours["hi"] == pytest.approx(theirs.high)
    assert ours["diff"] == pytest.approx(0.0) and not ours["resolved"]


def test_a_clear_difference_is_resolved(report):
    row = _acc(report.table, 8)
    assert row["top1_diff"] == pytest.approx(10.0)
    # both sides have s = 1, n = 3: se = sqrt(2/3), Welch df = 4
    half = stats.t.ppf(0.975, 4) * math.sqrt(2 / 3)
    assert row["top1_diff_lo"] == pytest.approx(10 - half) and row["top1_diff_hi"] == pytest.approx(10 + half)
    assert row["top1_resolved"]


def test_a_difference_inside_the_seed_spread_is_not_resolved(report):
    row = _acc(report.table, 16)
    assert row["top1_diff"] == pytest.approx(0.0)
    assert row["top1_diff_lo"] < 0 < row["top1_diff_hi"] and not row["top1_resolved"]


def test_one_seed_is_never_a_claim(report):
    row = _acc(report.table, 32)
    assert row["top1_diff"] == pytest.approx(95.0 - 81.0)
    assert pd.isna(row["top1_diff_lo"]) and not row["top1_resolved"] and row["top1_diff_note"] == "1 seed"


def test_the_accuracy_table_shows_differences_and_says_welch(report):
    md = (report.files["report.md"]).read_text()
    assert "Δ top-1 vs baseline (95 % CI, Welch)" in md and "Welch's t" in md
    rows = {int(r["num_tokens"]): r for r in md_rows(md, "Accuracy") if r["model"] == "vt_resnet18"}
    diff, resolved = "Δ top-1 vs baseline (95 % CI, Welch)", "Δ top-1 resolved?"
    assert rows[8][diff].startswith("+10.00 [+") and rows[8][resolved] == "yes"
    assert rows[16][diff].startswith("+0.00 [-") and rows[16][resolved] == "no"
    assert rows[32][diff] == "+14.00 (no CI: 1 seed)" and rows[32][resolved] == "no (1 seed)"
    assert rows[8]["top-1 (%)"] == "91.00 ± 1.00 (n=3)"
    assert rows[32]["top-1 (%)"] == "95.00"  # one record: its value, no '± ' and no '(n=1)'


def test_latency_ratio_over_rounds_is_paired_and_resolved_when_clear(report):
    fast, same = _lat(report.table, "vt_resnet18", 8), _lat(report.table, "vt_resnet18", 16)
    assert fast["latency_ratio_ci_paired"] and fast["latency_ratio_ci_n"] == 5
    logs = np.log(np.array(FAST_ROUNDS) / np.array(BASE_ROUNDS))
    half = stats.t.ppf(0.975, 4) * logs.std(ddof=1) / math.sqrt(5)
    assert fast["latency_ratio_ci_ratio"] == pytest.approx(math.exp(logs.mean()))
    assert fast["latency_ratio_ci_lo"] == pytest.approx(math.exp(logs.mean() - half))
    assert fast["latency_ratio_ci_hi"] < 1 and fast["latency_ratio_ci_resolved"]
    assert same["latency_ratio_ci_lo"] < 1 < same["latency_ratio_ci_hi"] and not same["latency_ratio_ci_resolved"]
    md = report.files["report.md"].read_text()
    assert "ratio over rounds (95 % CI)" in md
    rows = {r["num_tokens"]: r["ratio over rounds (95 % CI)"] for r in md_rows(md, "Latency") if r["model"] == "vt_resnet18"}
    assert rows["8"].startswith(f"{fast['latency_ratio_ci_ratio']:.2f}x [") and rows["8"].endswith("], resolved (paired, 5 rounds)")
    assert "not resolved (paired, 5 rounds)" in rows["16"]


def test_unaligned_rounds_fall_back_to_welch_on_logs():
    from bench.analysis.report import ratio_ci_over_rounds

    paired = ratio_ci_over_rounds(FAST_ROUNDS, BASE_ROUNDS, paired=True)
    unpaired = ratio_ci_over_rounds(FAST_ROUNDS, BASE_ROUNDS, paired=False)
    assert unpaired["paired"] is False
    assert unpaired["hi"] - unpaired["lo"] > paired["hi"] - paired["lo"]  # the drift is not paired away
    assert ratio_ci_over_rounds([10.0], [12.0], paired=True) is None


def test_a_noisy_row_marks_its_ratios(report):
    same = _lat(report.table, "vt_resnet18", 16)
    assert same["latency_noisy"] and same["latency_ratio_noisy"]
    assert not _lat(report.table, "vt_resnet18", 8)["latency_ratio_noisy"]
    md = report.files["report.md"].read_text()
    row = next(r for r in md_rows(md, "Latency") if r["model"] == "vt_resnet18" and r["num_tokens"] == "16")
    assert row["verdict"].startswith("noisy: warm-up did not settle") and row["p50 / baseline"].endswith("x (noisy)")


def test_accuracy_plot_bars_are_95_percent_intervals(report):
    from bench.analysis.plots import plot_accuracy_vs_gmacs

    vt8 = _acc(report.table, 8)
    assert vt8["top1_ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3))
    assert pd.isna(_acc(report.table, 32)["top1_ci95"])
    fig = plot_accuracy_vs_gmacs(report.table, ["num_tokens"])
    ax = fig.axes[0]
    spans = sorted(round(float(s[1][1] - s[0][1]), 6) for c in ax.containers for s in c.lines[2][0].get_segments())
    assert pytest.approx(2 * vt8["top1_ci95"]) in spans  # a bar is the CI, not the std
    assert "95 % CI" in " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "95 %" in fig._suptitle.get_text()


def test_counter_disagreement_is_flagged(report):
    md = report.files["report.md"].read_text()
    assert "counters (traced vs executed)" in md
    rows = {r["model"] + r["num_tokens"]: r["counters (traced vs executed)"] for r in md_rows(md, "Complexity")}
    assert rows["vt_resnet188"] == "disagree by +1.48 %" and rows["resnet18"] == "agree"
    assert "counters: some rows' traced" in md


def test_counters_column_is_absent_without_the_keys():
    from bench.analysis.report import complexity_table

    table = pd.DataFrame({"model": ["resnet18"], "gmacs": [1.8], "params_m": [11.7], "stage_gmacs": [0.4],
                          "family": ["resnet"]})
    assert "counters (traced vs executed)" not in complexity_table(table, []).columns
