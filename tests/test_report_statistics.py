"""Statistics in reports, from synthetic records, each checked against scipy or a hand computation:
accuracy differences over seeds (paired by seed, Welch, one seed, too few seeds, Holm across the
table), the latency ratio over interleaved rounds and its verdict (withheld when noisy), the error
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


BASE_TOP1 = {0: 80.0, 1: 81.0, 2: 82.0}   # seed -> top-1
TOP1 = {  # num_tokens -> {seed: top-1}
    8: {0: 90.5, 1: 91.0, 2: 92.5},       # the baseline's seeds: paired, about +10 points: resolved
    16: {10: 79.0, 11: 83.0, 12: 81.0},   # other seeds: Welch, +0 points: not resolved
    32: {0: 95.0},                        # one seed: no claim
    4: {0: 85.0, 1: 86.0},                # two seeds: no interval (the minimum is 3)
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
    for seed, top1 in BASE_TOP1.items():
        cells.append(_write(records, _config("resnet18", seed), {"gmacs": 0.5, "params_m": 11.2, "top1": top1,
                                                                 "counter_agree": True, "counter_gap_pct": 0.01}))
    for tokens, values in TOP1.items():
        for seed, top1 in values.items():
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
    from bench.analysis.compare import welch_ci

    a, b = list(TOP1[16].values()), list(BASE_TOP1.values())
    ours = welch_ci(np.mean(a), np.std(a, ddof=1), len(a), np.mean(b), np.std(b, ddof=1), len(b))
    theirs = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert ours["lo"] == pytest.approx(theirs.low) and ours["hi"] == pytest.approx(theirs.high)
    assert ours["diff"] == pytest.approx(0.0) and not ours["resolved"]


def _holm_by_hand(p_values):
    """Holm for two tests, written out: the smaller p doubled; the larger kept, but never below that."""
    low, high = sorted(p_values)
    adjusted = {low: min(1.0, 2 * low), high: min(1.0, max(2 * low, high))}
    return [adjusted[p] for p in p_values]


def _accuracy_p_values():
    vt8, base = [TOP1[8][s] for s in BASE_TOP1], list(BASE_TOP1.values())
    paired = stats.ttest_rel(vt8, base).pvalue
    welch = stats.ttest_ind(list(TOP1[16].values()), base, equal_var=False).pvalue
    return _holm_by_hand([paired, welch])


def test_seeds_that_pair_are_compared_by_seed_and_resolved(report):
    row = _acc(report.table, 8)
    diffs = [TOP1[8][s] - BASE_TOP1[s] for s in BASE_TOP1]
    assert row["top1_diff"] == pytest.approx(np.mean(diffs))
    half = stats.t.ppf(0.975, 2) * np.std(diffs, ddof=1) / math.sqrt(3)  # paired: n - 1 = 2 df
    assert row["top1_diff_lo"] == pytest.approx(np.mean(diffs) - half)
    assert row["top1_diff_hi"] == pytest.approx(np.mean(diffs) + half)
    assert row["top1_diff_method"].startswith("paired by seed")
    assert row["top1_diff_p_holm"] == pytest.approx(_accuracy_p_values()[0])
    assert row["top1_diff_verdict"].startswith("resolved (Holm p")


def test_seeds_that_do_not_pair_use_welch_and_stay_unresolved_with_seeds_needed(report):
    from bench.analysis.compare import seeds_needed_welch

    row = _acc(report.table, 16)
    base = list(BASE_TOP1.values())
    theirs = stats.ttest_ind(list(TOP1[16].values()), base, equal_var=False).confidence_interval(0.95)
    assert row["top1_diff"] == pytest.approx(0.0)
    assert row["top1_diff_lo"] == pytest.approx(theirs.low) and row["top1_diff_hi"] == pytest.approx(theirs.high)
    assert row["top1_diff_method"].startswith("Welch")
    assert row["top1_diff_p_holm"] == pytest.approx(_accuracy_p_values()[1])
    assert row["top1_diff_verdict"].startswith("not resolved")
    # a zero observed difference: no number of seeds resolves it
    assert seeds_needed_welch(0.0, 2.0, 1.0) is None and row["top1_diff_needed"] == "none: no difference observed"


def test_one_seed_is_never_a_claim_and_two_get_no_interval(report):
    one, two = _acc(report.table, 32), _acc(report.table, 4)
    assert one["top1_diff"] == pytest.approx(95.0 - 81.0)
    assert pd.isna(one["top1_diff_lo"]) and one["top1_diff_verdict"] == "1 seed: no claim"
    assert pd.isna(two["top1_diff_lo"]) and pd.isna(two["top1_diff_p_holm"])
    assert two["top1_diff_verdict"] == "no verdict: 2 seeds (an interval needs >= 3)"


def test_the_accuracy_table_shows_differences_verdicts_and_holm(report):
    md = (report.files["report.md"]).read_text()
    diff, verdict = "Δ top-1 vs baseline, points [95 % CI]", "Δ top-1 verdict"
    rows = {int(r["num_tokens"]): r for r in md_rows(md, "Accuracy") if r["model"] == "vt_resnet18"}
    assert rows[8][diff].startswith("+10.33 [+") and rows[8][diff].endswith("(paired by seed, 3 seeds)")
    assert rows[16][diff].startswith("+0.00 [-") and rows[16][diff].endswith("(Welch, 3 seeds)")
    assert rows[8][verdict].startswith("resolved (Holm p") and rows[16][verdict].startswith("not resolved (Holm p")
    assert rows[32][diff] == "+14.00 (Welch, no interval)" and rows[32][verdict] == "1 seed: no claim"
    assert rows[8]["top-1 (%)"] == "91.33 ± 1.04 (n=3)"
    assert rows[32]["top-1 (%)"] == "95.00"  # one record: its value, no '± ' and no '(n=1)'
    assert "Holm-adjusted across the accuracy table" in md


def _pair(report, tokens):
    return next(r for r in md_rows(report.files["report.md"].read_text(), "VT vs baseline: latency")
                if f"num_tokens={tokens}" in r["VT options"])


def test_latency_ratio_over_rounds_is_the_paired_geometric_mean_and_resolved_when_clear(report):
    logs = np.log(np.array(FAST_ROUNDS) / np.array(BASE_ROUNDS))
    half = stats.t.ppf(0.975, 4) * logs.std(ddof=1) / math.sqrt(5)
    fast = _lat(report.table, "vt_resnet18", 8)
    assert fast["latency_ratio"] == pytest.approx(math.exp(logs.mean()))
    assert fast["latency_ratio_lo"] == pytest.approx(math.exp(logs.mean() - half))
    assert fast["latency_ratio_hi"] == pytest.approx(math.exp(logs.mean() + half))
    assert fast["latency_ratio_n"] == 5
    p = stats.ttest_1samp(logs, 0.0).pvalue  # the only latency comparison with a verdict: Holm is p itself
    assert fast["latency_ratio_p_holm"] == pytest.approx(p)
    row = _pair(report, 8)
    assert row["latency ratio VT / baseline [95 % CI]"] == (f"{math.exp(logs.mean()):.3f} "
                                                           f"[{math.exp(logs.mean() - half):.3f}-{math.exp(logs.mean() + half):.3f}]")
    assert row["VT vs baseline"] == f"resolved (p {p:.3g})"


def test_a_noisy_measurement_withholds_the_verdict_and_says_why(report):
    same = _lat(report.table, "vt_resnet18", 16)
    assert same["latency_noisy"] and pd.isna(same["latency_ratio_p_holm"])
    # the record's warm-up did not settle and it kept no per-round verdicts: the record as a whole is noisy
    assert same["latency_ratio_verdict"] == "no verdict: VT (as a whole) judged noisy"
    assert _pair(report, 16)["VT vs baseline"] == "no verdict: VT (as a whole) judged noisy"
    md = report.files["report.md"].read_text()
    row = next(r for r in md_rows(md, "Latency") if r["model"] == "vt_resnet18" and r["num_tokens"] == "16")
    assert row["noise"].startswith("noisy: warm-up did not settle")


def test_accuracy_plot_bars_are_95_percent_intervals(report):
    from bench.analysis.plots import plot_accuracy_vs_gmacs

    vt8 = _acc(report.table, 8)
    assert vt8["top1_ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * np.std(list(TOP1[8].values()), ddof=1) / math.sqrt(3))
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


def test_a_difference_paired_on_common_seeds_says_so_in_the_table():
    from bench.analysis import compare, tables

    est = compare.seed_difference({0: 91.0, 1: 92.5, 2: 90.0, 3: 93.0}, {0: 90.0, 1: 91.0, 2: 89.5, 3: 91.0, 4: 95.0})
    row = pd.Series({"top1_diff": est.value, "top1_diff_lo": est.lo, "top1_diff_hi": est.hi, "top1_diff_n": est.n,
                     "top1_diff_method": est.method})
    text = tables.diff_text(row, "top1")
    assert text.startswith("+1.25 [") and text.endswith("(paired on the 4 seeds both sides hold)")


def test_accuracy_rows_of_one_configuration_sort_by_schedule():
    """Rows that differ only in epochs sit in epoch order, whatever order the records came in."""
    from bench.analysis.tables import accuracy_table

    rows = [("vt_resnet50", "zero", 8), ("resnet50", "zero_stage4", 8), ("resnet50", "zero", 3),
            ("resnet50", "zero_stage4", 3), ("resnet50", "zero", 8), ("vt_resnet50", "zero", 3)]
    agg = pd.DataFrame({"model": [m for m, _, _ in rows], "residual_init": [i for _, i, _ in rows],
                        "train.dataset": "digits", "train.epochs": [e for _, _, e in rows],
                        "top1": 90.0, "top1_std": 1.0, "top1_n": 3})
    table = accuracy_table(agg, ["residual_init"])
    assert list(zip(table["model"], table["residual_init"], table["epochs"])) == [
        ("resnet50", "zero", "3"), ("resnet50", "zero", "8"), ("resnet50", "zero_stage4", "3"),
        ("resnet50", "zero_stage4", "8"), ("vt_resnet50", "zero", "3"), ("vt_resnet50", "zero", "8")]
