"""bench.analysis.compare, against hand computations and scipy: the latency ratio over rounds, the
accuracy difference over seeds, the minimum rounds and seeds, no verdict from noisy measurements,
Holm across a table, the rounds/seeds needed, the pairing rule, and one ratio per pair in a report."""

from __future__ import annotations

import math
import re
import statistics

import numpy as np
import pytest
from scipy import stats

from bench.analysis import compare
from bench.analysis.compare import Facts, Group


# ------------------------------------------------------------------------------ latency ratio --

def test_latency_ratio_is_the_geometric_mean_with_a_t_interval_on_log_ratios():
    ratios = [0.80, 0.83, 0.78, 0.81, 0.84]
    logs = np.log(ratios)
    half = stats.t.ppf(0.975, 4) * logs.std(ddof=1) / math.sqrt(5)
    est = compare.latency_ratio(ratios)
    assert est.value == pytest.approx(math.exp(logs.mean()))
    assert (est.lo, est.hi) == pytest.approx((math.exp(logs.mean() - half), math.exp(logs.mean() + half)))
    assert est.p_value(1.0) == pytest.approx(stats.ttest_1samp(logs, 0.0).pvalue)
    assert est.p_value(0.85) == pytest.approx(stats.ttest_1samp(logs, math.log(0.85)).pvalue)


def test_fewer_than_the_minimum_rounds_get_no_interval_and_no_verdict():
    assert compare.MIN_ROUNDS == 4
    three = compare.latency_ratio([0.8, 0.9, 0.85])
    assert not three.has_interval and three.note == "3 rounds (an interval needs >= 4)"
    assert three.value == pytest.approx(statistics.geometric_mean([0.8, 0.9, 0.85]))
    c = compare.decide([compare.compare(three, 1.0)])[0]
    assert c.verdict is None and compare.verdict_text(c) == "no verdict: 3 rounds (an interval needs >= 4)"
    assert compare.ratio_text(three) == f"{three.value:.3f} (no interval: 3 rounds (an interval needs >= 4))"
    assert compare.latency_ratio([0.8, 0.9, 0.85, 0.82]).has_interval


def test_a_single_pass_ratio_is_labelled_and_never_a_verdict():
    est = compare.single_pass_ratio(9.0, 10.0, "single pass (no interleaved rounds)")
    assert est.value == pytest.approx(0.9) and est.method == "single pass, no interval"
    c = compare.decide([compare.compare(est, 1.0)])[0]
    assert c.verdict is None and c.why_no_verdict == "no verdict: single pass (no interleaved rounds)"
    assert compare.ratio_text(est) == "0.900 (single pass, no interval)"


def test_noisy_measurements_withhold_the_verdict_however_clear_the_ratio():
    # The loaded-machine case: 2 rounds, VT "twice as fast", 3 of 4 measurements noisy.
    est = compare.latency_ratio([0.387, 0.628])
    c = compare.decide([compare.compare(est, 0.85, noisy=3, measurements=4, words=("met", "missed", "not resolved"))])[0]
    assert c.verdict is None and compare.verdict_text(c) == "no verdict: 3 of 4 measurements noisy"
    clear = compare.latency_ratio([0.50, 0.51, 0.50, 0.52])
    c = compare.decide([compare.compare(clear, 0.85, noisy=1, measurements=8)])[0]
    assert c.verdict is None and c.needed is None and c.why_no_verdict == "no verdict: 1 of 8 measurements noisy"
    c = compare.decide([compare.compare(clear, 0.85, noisy_sides=["baseline"])])[0]
    assert c.verdict is None and c.why_no_verdict == "no verdict: baseline judged noisy"
    assert compare.decide([compare.compare(clear, 0.85, words=("met", "missed", "x"))])[0].verdict == "met"


# ------------------------------------------------------------------------------ accuracy --------

def test_seeds_that_pair_give_the_paired_interval():
    vt, base = {0: 91.0, 1: 92.5, 2: 90.0, 3: 93.0}, {0: 90.0, 1: 91.0, 2: 89.5, 3: 91.0}
    est = compare.seed_difference(vt, base)
    ci = stats.ttest_rel(list(vt.values()), list(base.values())).confidence_interval(0.95)
    assert est.method == compare.PAIRED_LABEL and (est.lo, est.hi) == pytest.approx((ci.low, ci.high))
    assert est.p_value(0.0) == pytest.approx(stats.ttest_rel(list(vt.values()), list(base.values())).pvalue)


def test_seeds_that_do_not_pair_give_welchs_interval():
    vt, base = {5: 91.0, 6: 92.5, 7: 90.0}, {0: 90.0, 1: 91.0, 2: 89.5}
    est = compare.seed_difference(vt, base)
    test = stats.ttest_ind(list(vt.values()), list(base.values()), equal_var=False)
    assert est.method == compare.WELCH_LABEL
    assert (est.lo, est.hi) == pytest.approx((test.confidence_interval(0.95).low, test.confidence_interval(0.95).high))
    assert est.p_value(0.0) == pytest.approx(test.pvalue)


def test_seed_sets_that_differ_pair_on_the_common_seeds():
    # A grid still running: VT has seeds 0-3, the baseline 0-5. The paired test on seeds 0-3 is the
    # reference (scipy), not Welch's over all of them.
    vt = {0: 91.0, 1: 92.5, 2: 90.0, 3: 93.0}
    base = {0: 90.0, 1: 91.0, 2: 89.5, 3: 91.0, 4: 95.0, 5: 85.0}
    est = compare.seed_difference(vt, base)
    test = stats.ttest_rel([vt[s] for s in range(4)], [base[s] for s in range(4)])
    ci = test.confidence_interval(0.95)
    assert est.method == compare.PAIRED_COMMON_LABEL and est.n == 4
    assert est.value == pytest.approx(1.25) and (est.lo, est.hi) == pytest.approx((ci.low, ci.high))
    assert est.p_value(0.0) == pytest.approx(test.pvalue)
    # Records without seeds of their own never pair, whatever their positions.
    unseeded = {("record", i): v for i, v in enumerate(vt.values())}
    assert compare.seed_difference(unseeded, {("record", i): v for i, v in enumerate(base.values())}).method \
        == compare.WELCH_LABEL
    # Two common seeds are too few to pair on: Welch over every seed instead.
    few = compare.seed_difference({0: 91.0, 1: 92.5, 7: 90.0}, base)
    assert few.method == compare.WELCH_LABEL and few.n == 3


def test_one_seed_is_no_claim_and_two_seeds_no_interval():
    one = compare.seed_difference({0: 91.0}, {0: 90.0})
    assert one.value == pytest.approx(1.0) and one.note == "1 seed: no claim"
    assert one.method == compare.PAIRED_LABEL  # the same seed on both sides is a pair, not Welch
    assert compare.verdict_text(compare.decide([compare.compare(one, 0.0)])[0]) == "1 seed: no claim"
    two = compare.seed_difference({0: 91.0, 1: 92.0}, {0: 90.0, 1: 90.5})
    assert not two.has_interval and two.note == "2 seeds (an interval needs >= 3)"
    c = compare.decide([compare.compare(two, 0.0)])[0]
    assert c.needed is not None and c.needed.endswith("paired seeds (80 % power, alpha 0.05)")


# ------------------------------------------------------------------------------ Holm ------------

def test_holm_matches_the_textbook_step_down():
    p = [0.01, 0.04, 0.03, None, 0.2]
    # sorted 0.01, 0.03, 0.04, 0.2 (m = 4): 4 x 0.01, 3 x 0.03, max(2 x 0.04, previous), max(1 x 0.2, previous)
    assert compare.holm(p) == pytest.approx([0.04, 0.09, 0.09, None, 0.2])
    assert compare.holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])


def test_a_table_of_rows_is_decided_together():
    # Four rows, each of whose own p is below 0.05; after Holm only the clearest stay resolved.
    rounds = [[0.9, 0.91, 0.89, 0.9], [0.95, 0.97, 0.93, 0.96], [0.96, 0.985, 0.94, 0.97], [0.965, 0.99, 0.95, 0.975]]
    raw = [stats.ttest_1samp(np.log(r), 0.0).pvalue for r in rounds]
    assert all(p < 0.05 for p in raw) and sorted(compare.holm(raw))[-1] > 0.05
    rows = compare.decide([compare.compare(compare.latency_ratio(r), 1.0) for r in rounds])
    assert [c.p_holm for c in rows] == pytest.approx(compare.holm(raw))
    assert [c.verdict == "resolved" for c in rows] == [p < 0.05 for p in compare.holm(raw)]
    assert all(c.family_size == 4 for c in rows)
    assert "Holm" in compare.holm_caption(rows, "VT vs baseline") and "4 rows" in compare.holm_caption(rows, "x")


# ------------------------------------------------------------------------------ rounds needed ---

def test_rounds_needed_is_the_smallest_n_with_the_power():
    # Paired t test, effect = 1 sd, alpha 0.05, 80 % power: n = 10 (the textbook figure).
    assert compare.rounds_needed(0.1, 0.1) == 10
    n = compare.rounds_needed(0.03, 0.05, alpha=0.05 / 8)

    def power(k):  # the two-sided one-sample t test's power, from scipy's noncentral t directly
        crit, nc = stats.t.ppf(1 - 0.05 / 16, k - 1), 0.03 / (0.05 / math.sqrt(k))
        return stats.nct.sf(crit, k - 1, nc) + stats.nct.cdf(-crit, k - 1, nc)

    assert power(n) >= 0.8 > power(n - 1)
    # Welch, effect = 1 sd on each side: 17 per side (two-sample textbook figure).
    assert compare.seeds_needed_welch(1.0, 1.0, 1.0) == 17
    assert compare.rounds_needed(0.0, 0.1) is None and compare.rounds_needed(0.1, None) is None


def test_an_unresolved_row_says_how_many_rounds_would_resolve_it():
    rounds = [0.90, 1.05, 0.95, 0.99]
    c = compare.decide([compare.compare(compare.latency_ratio(rounds), 1.0)])[0]
    assert c.verdict == "not resolved"
    logs = np.log(rounds)
    n = compare.rounds_needed(logs.mean(), logs.std(ddof=1))
    assert c.needed == f"{n} rounds (80 % power, alpha 0.05)"


# ------------------------------------------------------------------------------ pairing ---------

def _group(model, baseline=None, batch=1, device_name="cpu A", **args):
    config = {"model": model, "model_args": {"num_classes": 10, **args}, "input_size": 32,
              "latency": {"device": "cpu", "batch_size": batch}, "train": {"dataset": "digits", "epochs": 3, "seed": 0}}
    facts = Facts(name=model, family="vt_x" if baseline else "x", baseline=baseline,
                  defaults={"num_classes": 1000, "stem": "imagenet"})
    return Group(group_id=f"{model}{batch}{device_name}{args}", model=model, facts=facts, config=config, records=[],
                 device_name=device_name)


def test_one_pairing_rule_the_baseline_named_by_the_facts_at_identical_settings():
    vt = _group("my_vt", baseline="my_base", num_tokens=8)  # num_tokens: not an option of the baseline
    assert compare.is_pair(vt, _group("my_base"), "latency")
    assert not compare.is_pair(vt, _group("other_base"), "latency")              # not its baseline
    assert not compare.is_pair(vt, _group("my_base", batch=32), "latency")       # another batch
    assert not compare.is_pair(vt, _group("my_base", device_name="cpu B"), "latency")  # another machine
    assert compare.is_pair(vt, _group("my_base", batch=32), "train")             # batch is latency's only
    assert not compare.is_pair(vt, _group("my_base", stem="cifar"), "train")     # a shared option differs
    assert compare.is_pair(_group("my_vt", baseline="my_base", stem="cifar"), _group("my_base", stem="cifar"), "train")
    # the default spelled out is the default
    assert compare.is_pair(vt, _group("my_base", stem="imagenet"), "complexity")


def _with_latency(group, **latency):
    group.config["latency"] = {**group.config["latency"], **latency}
    return group


def test_every_latency_option_is_part_of_the_setting_a_pair_shares():
    """flush_l2 (a cold L2 before each timed iteration) and the timing options pair only with the same
    value; a cell that left one unset was timed at the contract's default, so pairs with one that set it."""
    vt = _with_latency(_group("my_vt", baseline="my_base"), flush_l2=True)
    assert not compare.is_pair(vt, _group("my_base"), "latency")
    assert compare.is_pair(vt, _with_latency(_group("my_base"), flush_l2=True), "latency")
    assert compare.is_pair(_group("my_vt", baseline="my_base"), _with_latency(_group("my_base"), flush_l2=False),
                           "latency")
    assert compare.LATENCY_DEFAULTS["flush_l2"] is False and compare.LATENCY_DEFAULTS["compile"] is None
    assert not compare.is_pair(_with_latency(_group("my_vt", baseline="my_base"), min_iters=3), _group("my_base"),
                               "latency")
    assert compare.is_pair(_with_latency(_group("my_vt", baseline="my_base"), min_iters=10), _group("my_base"),
                           "latency")  # 10 is the contract's default


def test_the_setting_label_says_flush_l2_where_it_is_on():
    from bench.analysis.tables import latency_mode, latency_title

    assert latency_mode({"compile": None, "flush_l2": True}) == "eager + flush L2"
    assert latency_mode({"compile": "default", "cuda_graphs": True, "flush_l2": False}) == "compile + CUDA graphs"
    setting = {"latency.device": "cuda", "env.device_name": "H100", "latency.dtype": "bf16",
               "latency.batch_size": 8, "latency.flush_l2": True}
    assert latency_title(setting) == "cuda · H100 · bf16 · batch 8 · eager + flush L2"


# ------------------------------------------------------------------------------ in a report -----

def _interleaved_run(tmp_path, vt_rounds, base_rounds):
    return _interleaved_cells(tmp_path, [("resnet18", {}, 1.8, base_rounds), ("vt_resnet18", {}, 1.5, vt_rounds)])


def test_a_report_shows_one_latency_ratio_per_pair_and_setting(tmp_path, monkeypatch):
    from bench.analysis import report as report_module
    from bench.analysis.plots import PlotSkipped

    base = [10.0, 11.0, 10.5, 10.2, 10.8]
    vt = [8.1, 8.9, 8.4, 8.2, 8.7]
    run = _interleaved_run(tmp_path, vt, base)

    def no_attention(data):
        raise PlotSkipped("not drawn in this test")

    monkeypatch.setattr(report_module, "_attention", no_attention)
    rep = report_module.write_report([run], tmp_path / "out", formats=["md"])
    md = rep.files["report.md"].read_text()
    expected = compare.ratio_text(compare.latency_ratio([v / b for v, b in zip(vt, base)]))
    # every latency ratio figure in the report (3 decimals, or the old "0.80x" style) is that one figure
    figures = set(re.findall(r"\b[01]\.\d{3} \[[01]\.\d{3}-[01]\.\d{3}\]", md))
    assert figures == {expected}
    assert not re.search(r"\b\d\.\d\dx\b", md.split("## Complexity")[0] + md.split("## Latency")[1].split("## ")[0])
    assert "p50 / baseline |" not in md and "ratio over rounds" not in md  # the former second and third ratios
    summary = md.split("## Summary")[1].split("## ")[0]
    assert expected in summary and "MACs ratio VT / baseline 0.833" in summary
    assert "&gt;" not in md and "&lt;" not in md and "&amp;" not in md and "_none_" not in md


def _single_pass_summary(tmp_path, monkeypatch, cells, *, input_size: int, model_args: dict,
                         epochs: int) -> list[str]:
    """The report summary of a run of single-pass records: cells are (model, own model_args, measure,
    gmacs, top1, p50), top1 and p50 None for a MACs-only cell."""
    from bench.analysis import report as report_module
    from bench.analysis.plots import PlotSkipped
    from bench.core.records import make_record, write_record

    env = {"host": "t", "device": "cpu", "device_name": "cpu"}
    for model, args, measure, gmacs, top1, p50 in cells:
        config = {"model": model, "model_args": {**model_args, **args}, "measure": measure,
                  "input_size": input_size, "seed": 0, "complexity": {},
                  "latency": {"device": "cpu", "batch_size": 1}, "train": {"dataset": "digits", "epochs": epochs}}
        metrics = {"gmacs": gmacs, "params_m": 11.0}
        if top1 is not None:
            metrics.update(top1=top1, latency_ms_p50=p50, latency_verdict="ok")
        write_record(tmp_path / "run" / "records", make_record(config, metrics=metrics, env=env, run="run"))
    monkeypatch.setattr(report_module, "_attention", lambda data: (_ for _ in ()).throw(PlotSkipped("not here")))
    return report_module.build_report([tmp_path / "run"]).summary


TRAINED = ["complexity", "latency", "train"]


def test_the_summary_opens_with_macs_latency_and_accuracy_or_why_there_is_no_claim(tmp_path, monkeypatch):
    """The smoke grid's shape: ResNet-18 and VT-ResNet-18 at their defaults, one seed, single-pass latency."""
    cells = (("resnet18", {}, TRAINED, 0.56, 60.0, 4.0), ("vt_resnet18", {}, TRAINED, 0.42, 61.5, 3.0))
    summary = _single_pass_summary(tmp_path, monkeypatch, cells, input_size=64,
                                   model_args={"num_classes": 10, "stem": "cifar"}, epochs=2)
    assert summary[0].splitlines() == [
        "vt_resnet18 vs resnet18 (input 64x64): MACs ratio VT / baseline 0.750",
        "  latency ratio VT / baseline at cpu fp32 batch 1 eager: 0.750 (single pass, no interval), "
        "no verdict: single pass (no interleaved rounds)",
        "  top-1 difference VT - baseline, points: +1.50, 1 seed: no claim"]


def test_rows_short_of_seeds_plan_for_the_family_they_will_join():
    """16 two-seed rows: none has a verdict yet, but once each has its seeds the 16 are tested together,
    so each row's seeds-needed figure is at alpha 0.05/16; a zero difference says so."""
    rows = [compare.compare(compare.seed_difference({0: 90.0 + i / 10, 1: 91.0}, {0: 90.0, 1: 90.5}), 0.0)
            for i in range(16)]
    rows.append(compare.compare(compare.seed_difference({0: 90.0, 1: 91.0}, {0: 90.5, 1: 90.5}), 0.0))
    decided = compare.decide(rows)
    assert all(c.verdict is None and c.family_size == 0 for c in decided)
    first = decided[1]
    diffs = [90.1 - 90.0, 91.0 - 90.5]
    n = compare.rounds_needed(statistics.fmean(diffs), statistics.stdev(diffs), alpha=0.05 / 17)
    assert first.needed == f"{n} paired seeds (80 % power, alpha 0.05/17)"
    assert decided[-1].needed == "none: no difference observed"


def test_a_study_with_no_vt_cell_at_its_defaults_heads_with_the_compared_one(tmp_path, monkeypatch):
    """The main job's shape: every VT cell sets token_channels; the one timed and trained beside its
    baseline opens the summary, named with its option; the MACs-only tokenizer variants do not."""
    cells = (("resnet18", {}, TRAINED, 0.079, 40.0, 4.0),
             ("vt_resnet18", {"token_channels": 256}, TRAINED, 0.069, 35.0, 5.0),
             ("vt_resnet18", {"token_channels": 256, "tokenizer": "pooling"}, ["complexity"], 0.068, None, None),
             ("vt_resnet18", {"token_channels": 256, "tokenizer": "clustering"}, ["complexity"], 0.070, None, None))
    summary = _single_pass_summary(tmp_path, monkeypatch, cells, input_size=48,
                                   model_args={"num_classes": 10, "stem": "cifar", "width": 0.25}, epochs=3)
    assert summary[0].splitlines() == [
        "vt_resnet18 (token_channels=256) vs resnet18 (input 48x48): MACs ratio VT / baseline 0.873",
        "  latency ratio VT / baseline at cpu fp32 batch 1 eager: 1.250 (single pass, no interval), "
        "no verdict: single pass (no interleaved rounds)",
        "  top-1 difference VT - baseline, points: -5.00, 1 seed: no claim"]
    assert summary[1] == ("2 other VT configuration(s) (options set away from the model's defaults) are "
                          "compared in the tables below.")


# ------------------------------------------------------------------------------ attention forms --

def test_two_forms_of_one_model_pair_only_at_identical_everything_else():
    ref = _group("my_vt", baseline="my_base", attention_impl="reference")
    sdpa = _group("my_vt", baseline="my_base", attention_impl="sdpa")
    assert compare.is_form_pair(sdpa, ref, "attention_impl", "reference")
    assert not compare.is_form_pair(ref, sdpa, "attention_impl", "reference")        # the reference is the divisor
    assert not compare.is_form_pair(ref, ref, "attention_impl", "reference")
    assert not compare.is_form_pair(_group("my_vt", baseline="my_base", attention_impl="sdpa", num_tokens=8), ref,
                                    "attention_impl", "reference")                    # another option differs
    assert not compare.is_form_pair(_group("my_vt", baseline="my_base", batch=32, attention_impl="sdpa"), ref,
                                    "attention_impl", "reference")                    # another latency setting
    assert not compare.is_form_pair(_group("other_vt", baseline="my_base", attention_impl="sdpa"), ref,
                                    "attention_impl", "reference")                    # another model
    unset = _group("my_vt", baseline="my_base")  # the option left at a default this process does not know
    assert not compare.is_form_pair(sdpa, unset, "attention_impl", "reference")
    unset.facts = Facts(name="my_vt", family="vt_x", baseline="my_base", defaults={"attention_impl": "reference"})
    assert compare.is_form_pair(sdpa, unset, "attention_impl", "reference")          # the default spelled out


def _interleaved_cells(tmp_path, cells):
    """A run of interleaved cells timed in one session: cells = [(model, model_args, gmacs, rounds)]."""
    from bench.core.records import make_record, make_remeasurement, write_record, write_remeasurement

    env = {"host": "t", "device": "cpu", "device_name": "cpu"}
    n = len(cells[0][3])
    session = {"id": "dddddddddddd", "protocol": "interleaved", "started_at": "2026-01-01T00:00:00+00:00",
               "finished_at": "2026-01-01T00:01:00+00:00", "rounds": n, "cells": len(cells)}
    records = tmp_path / "run" / "records"
    for model, args, gmacs, rounds in cells:
        config = {"model": model, "model_args": {"num_classes": 1000, **args}, "measure": ["complexity", "latency"],
                  "input_size": 224, "seed": 0, "complexity": {},
                  "latency": {"device": "cpu", "batch_size": 1, "dtype": "fp32", "threads": 2}, "train": {}}
        record = make_record(config, metrics={"gmacs": gmacs, "params_m": 11.0, "latency_ms_p50": 50.0,
                                              "latency_ms_p20": 49.0, "latency_ms_p80": 51.0, "latency_verdict": "ok"},
                             env=env, run="run")
        write_record(records, record)
        metrics = {"latency_ms_p50": statistics.median(rounds), "latency_ms_p20": min(rounds),
                   "latency_ms_p80": max(rounds), "latency_round_p50_ms": rounds,
                   "latency_round_verdicts": ["ok"] * n, "latency_protocol": "interleaved",
                   "latency_rounds": n, "latency_verdict": "ok"}
        write_remeasurement(records, make_remeasurement(record, metrics, session=session, env=env))
    return tmp_path / "run"


def test_a_report_sets_each_attention_form_beside_the_reference_form(tmp_path, monkeypatch):
    from bench.analysis import report as report_module
    from bench.analysis.plots import PlotSkipped
    from bench.analysis.speed_report import FORM_RATIO_COLUMN, FORMS_TITLE

    base = [10.0, 11.0, 10.5, 10.2, 10.8]
    reference = [8.1, 8.9, 8.4, 8.2, 8.7]
    sdpa = [7.0, 7.9, 7.1, 7.3, 7.5]
    run = _interleaved_cells(tmp_path, [("resnet18", {}, 1.8, base),
                                        ("vt_resnet18", {"attention_impl": "reference"}, 1.5, reference),
                                        ("vt_resnet18", {"attention_impl": "sdpa"}, 1.5, sdpa)])

    def no_attention(data):
        raise PlotSkipped("not drawn in this test")

    monkeypatch.setattr(report_module, "_attention", no_attention)
    rep = report_module.write_report([run], tmp_path / "out", formats=["md", "csv"])
    md = rep.files["report.md"].read_text()
    forms = md.split(f"## {FORMS_TITLE}")[1].split("\n## ")[0]
    expected = compare.latency_ratio([s / r for s, r in zip(sdpa, reference)])
    assert FORM_RATIO_COLUMN in forms and compare.ratio_text(expected) in forms
    assert expected.hi < 1 and "faster (p " in forms  # one row: no Holm family
    assert forms.count("| vt_resnet18 |") == 1
    csv = (tmp_path / "out" / "attention_forms.csv").read_text()
    assert "sdpa" in csv and "reference" in csv
    # both forms still stand beside their baseline, each with its own ratio
    versus_base = md.split("## VT vs baseline: latency")[1].split("\n## ")[0]
    for rounds in (reference, sdpa):
        assert compare.ratio_text(compare.latency_ratio([v / b for v, b in zip(rounds, base)])) in versus_base


def test_no_forms_section_without_two_forms(tmp_path, monkeypatch):
    from bench.analysis import report as report_module
    from bench.analysis.plots import PlotSkipped
    from bench.analysis.speed_report import FORMS_TITLE

    run = _interleaved_run(tmp_path, [8.1, 8.9, 8.4, 8.2, 8.7], [10.0, 11.0, 10.5, 10.2, 10.8])
    monkeypatch.setattr(report_module, "_attention", lambda data: (_ for _ in ()).throw(PlotSkipped("no")))
    md = report_module.write_report([run], tmp_path / "out", formats=["md", "csv"]).files["report.md"].read_text()
    assert FORMS_TITLE not in md and not (tmp_path / "out" / "attention_forms.csv").exists()


def test_stage_rows_name_the_form_they_timed():
    from bench.analysis.speed_report import _model_label

    assert _model_label({"model": "vt_resnet18", "model_args": {"num_classes": 10, "attention_impl": "sdpa"}}) == \
        "vt_resnet18 (attention_impl=sdpa)"
    assert _model_label({"model": "resnet18", "model_args": {"num_classes": 10}}) == "resnet18"
