"""The model zoo's fidelity tolerances: default models, counted here, against the paper's complexity tables.

The fidelity report's own logic (verdicts, sections, the committed records) is tests/test_fidelity_report.py.
"""

from __future__ import annotations

import functools

import pytest
import torch

from bench.analysis import fidelity_report
from bench.studies import fidelity
from bench.analysis.reference import paper_value
from bench.measure.complexity import measure_complexity
from models import build_model


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# This test's own tolerances, not bench.analysis.fidelity_report's TOL_* (with which the fidelity report marks its
# rows): a change to that module cannot loosen what the models are held to here. Relative errors.
# torchvision's ResNets are the paper's baselines: they land within 0.01 % of Table 8 (its rounding);
# 0.5 % is the counting agreement the complexity module allows between two counters.
RESNET_GMACS_TOL = 0.005
# The paper leaves the VT widths open; the defaults land 1.3-2.8 % from Tables 2 and 8 (VT-R50 +2.8 %,
# results/fidelity/fidelity.md), so 3 % holds them there and catches a default that drifts.
VT_GMACS_TOL = 0.03
# Parameters: the defaults land 1.3-3.1 % from the tables (VT-R34 -3.1 %, its Table 2 figure).
VT_PARAMS_TOL = 0.05
# The VT-FPN module: the model-zoo issue's 15 %, for a module the paper gives to two digits
# (8.5 G and 2.0 G; measured 8.59 G, +1.1 %, and 2.11 G, +5.5 %).
VT_FPN_MODULE_TOL = 0.15
# torchvision's FeaturePyramidNetwork([256, 512, 1024, 2048], 256) counted with fvcore (PAPER.md).
FPN_MODULE_EXACT = {(800, 1216): 55.1, (473, 473): 12.9}


@functools.lru_cache(maxsize=None)
def _measure(name: str):
    return measure_complexity(build_model(name), 224)


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_resnet_macs_match_table8(depth):
    result = _measure(f"resnet{depth}")
    paper = paper_value(f"resnet{depth}", "gmacs", "T8", (224, 224))
    assert abs(result.gmacs - paper) / paper < RESNET_GMACS_TOL
    torchvision_params = {18: 11.690, 34: 21.798, 50: 25.557, 101: 44.549}[depth]
    assert result.params_m == pytest.approx(torchvision_params, abs=1e-3)


@pytest.mark.parametrize("name", ["vt_resnet18", "vt_resnet34", "vt_resnet50", "vt_resnet101"])
def test_vt_resnet_defaults_within_tolerance(name):
    result = _measure(name)
    table = fidelity_report.VT_TABLE[name]
    paper_g = paper_value(name, "gmacs", table, (224, 224))
    paper_p = paper_value(name, "params_m", table, (224, 224))
    assert abs(result.gmacs - paper_g) / paper_g < VT_GMACS_TOL, (result.gmacs, paper_g)
    assert abs(result.params_m - paper_p) / paper_p < VT_PARAMS_TOL, (result.params_m, paper_p)
    assert result.unsupported_ops == {}


def test_vt_resnet18_hand_count():
    """The module arithmetic written in the fidelity report (C=256, C_T=1024, L=16, HW=196)."""
    result = _measure("vt_resnet18")
    c, ct, n, hw = 256, 1024, 16, 196
    tokenizer1 = c * n * hw * 2 + n * c * ct  # logits + pixel average + adapter
    tokenizer2 = n * ct * c + c * n * hw * 2 + n * c * ct  # W_T->R + the same
    transformer = n * (2 * ct * ct // 2 + 2 * ct * ct) + n * n * (ct // 2 + ct)  # K, Q, F1, F2 + attention
    projector = hw * c * c + n * ct * c * 2 + hw * n * c * 2  # W_Q, W_K + W_V, attention
    assert result.stage_gmacs["vt"] * 1e9 == pytest.approx(tokenizer1 + tokenizer2 + 2 * transformer + projector)
    assert result.stage_gmacs["head"] * 1e9 == pytest.approx(ct * 1000)


@pytest.mark.parametrize("size", [(473, 473), pytest.param((800, 1216), marks=pytest.mark.slow)])
def test_fpn_module_exact(size):
    measured = fidelity.measure_fpn_module("fpn_r50", size)
    assert abs(measured - FPN_MODULE_EXACT[size]) / FPN_MODULE_EXACT[size] < 0.005


@pytest.mark.parametrize("size", [(473, 473), pytest.param((800, 1216), marks=pytest.mark.slow)])
def test_vt_fpn_module_within_15_percent(size):
    measured = fidelity.measure_fpn_module("vt_fpn_r50", size)
    table = "T9" if size == (800, 1216) else "T10"
    paper = paper_value("vt_fpn_r50", "gmacs_fpn", table, size)
    assert abs(measured - paper) / paper < VT_FPN_MODULE_TOL, (measured, paper)


@pytest.mark.slow
def test_fpn_totals_near_paper():
    fpn = measure_complexity(build_model("fpn_r50"), (800, 1216))
    vt_fpn = measure_complexity(build_model("vt_fpn_r50"), (800, 1216))
    assert abs(fpn.gmacs - 159) / 159 < 0.06 and abs(vt_fpn.gmacs - 113) / 113 < 0.06
    assert fpn.stage_gmacs["fpn"] == pytest.approx(55.1, rel=0.005)


def _main_frame():
    """The eight classification models at their defaults, counted here (cached), as the records hold them."""
    import pandas as pd

    names = [f"{p}resnet{d}" for p in ("", "vt_") for d in (18, 34, 50, 101)]
    return pd.DataFrame([{"model": n, **_measure(n).to_metrics()} for n in names])


def test_stage_budget_and_table1_verdicts():
    """VT-R50's stage costs ~229 M MACs against the 134 M Table 8 leaves: a miss, whatever the total says."""
    from models import model_facts

    names = [f"{p}resnet{d}" for p in ("", "vt_") for d in (18, 34, 50, 101)]
    facts = {n: {"name": n, "baseline": model_facts(n).baseline, "stages": list(model_facts(n).stages),
                 "replaced": model_facts(n).replaced} for n in names}  # what each record's model block holds
    budget = fidelity_report.budget_rows(_main_frame(), facts).set_index(["model", "table"])
    r50 = budget.loc[("vt_resnet50", "T8")]
    assert r50.measured_mmacs == pytest.approx(229, abs=1) and r50.budget_mmacs == pytest.approx(134, abs=1)
    assert r50.budget_verdict.startswith("misses: stage MACs +7")
    assert r50.t1_verdict == "misses: ratio MACs -42%"  # 3.55x against Table 1's 6.1x; params ratio within 15%
    assert budget.loc[("vt_resnet101", "T8")].t1_verdict == "misses: ratio MACs -49%"  # 3.55x vs 6.9x
    assert budget.loc[("vt_resnet34", "T8")].budget_verdict.startswith("misses: stage params +")  # held to T2
    total = _measure("vt_resnet50").gmacs
    paper = paper_value("vt_resnet50", "gmacs", "T8", (224, 224))
    assert fidelity_report.verdict({"model": "vt_resnet50", "delta_pct_gmacs": 100 * (total - paper) / paper,
                                    "delta_pct_params_m": 0.0}) == "ok"  # the totals' verdict alone says ok: +2.8 %
