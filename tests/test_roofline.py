"""The roofline: measured ceilings and the achieved rate (bench.measure.roofline), the cost model and its
bounds, the report (bench.analysis.roofline_report) and the study's driver (bench.studies.roofline)."""

import math

import pytest
import torch

from bench.measure.roofline import achieved, measure_peak


def test_achieved_is_two_flops_per_mac_over_the_latency():
    # 4 GMACs per image, batch 8, 16 ms: 2 * 4e9 * 8 / 0.016 = 4e12 FLOP/s.
    rate = achieved(4.0, 8, 16.0, {"gemm_tflops": 8.0})
    assert math.isclose(rate["achieved_tflops"], 4.0)
    assert math.isclose(rate["fraction_of_peak"], 0.5)
    assert "fraction_of_peak" not in achieved(4.0, 8, 16.0)


def test_measure_peak_on_cpu_is_positive_and_self_consistent(one_thread):
    peak = measure_peak("cpu", "fp32", threads=1, gemm_n=256, copy_mb=8, reps=3)
    assert peak["gemm_tflops"] > 0 and peak["copy_gb_s"] > 0
    assert math.isclose(peak["ridge_flop_per_byte"], peak["gemm_tflops"] * 1e12 / (peak["copy_gb_s"] * 1e9))
    # One core of any x86-64 this runs on does less than 1 TFLOP/s of fp32 GEMM (AVX-512 FMA at
    # 5 GHz: 2 x 16 x 2 x 5e9 = 0.32 TFLOP/s); a figure above that means the timer is wrong.
    assert peak["gemm_tflops"] < 1.0
    assert peak["threads"] == 1 and peak["device_name"] == "cpu"


def test_measure_peak_rejects_an_unknown_dtype():
    with pytest.raises(KeyError):
        measure_peak("cpu", "int3")


# ------------------------------------------------------------ operator costs and bounds --------

def test_operator_flops_add_up_to_the_executed_count_on_cpu_and_meta(one_thread):
    """The cost model's FLOPs come from its own dispatch recorder: they must equal bench.measure.complexity's
    executed count, on real tensors and on the meta device alike."""
    from bench.measure.complexity import measure_complexity
    from bench.measure.roofline import operator_costs
    from models import build_model

    for name in ("resnet18", "vt_resnet18"):
        torch.manual_seed(0)
        model = build_model(name).eval()
        executed = measure_complexity(model, 64).to_metrics()["gmacs"]
        cpu_ops, _ = operator_costs(model, 64, batch_size=2)
        meta_ops, _ = operator_costs(build_model(name).eval().to("meta"), 64, batch_size=2)
        for ops in (cpu_ops, meta_ops):
            assert sum(o.flops for o in ops) / 2 / 2 / 1e9 == pytest.approx(executed, rel=1e-9)
        assert [o.op for o in cpu_ops] == [o.op for o in meta_ops]


def test_stage_bounds_by_hand():
    from bench.measure.roofline import OpCost, stage_bounds

    ops = [OpCost("a", "mm", 2e12, 1e9), OpCost("a", "relu", 0.0, 4e9), OpCost("b", "add", 0.0, 1e6)]
    bounds = stage_bounds(ops, {"a": 2e9}, tflops=1.0, tb_s=1.0, launch_us=5.0)
    # mm: max(2 s compute, 1 ms memory) = 2 s; relu: 4 ms; fused: max(2 s, 2 ms) = 2 s.
    assert bounds["a"]["unfused_ms"] == pytest.approx(2004.0)
    assert bounds["a"]["fused_ms"] == pytest.approx(2000.0)
    assert bounds["a"]["kernels"] == 2 and bounds["a"]["launch_ms"] == pytest.approx(0.010)
    assert bounds["b"]["fused_bytes"] == 1e6  # no fused figure: the operators' own bytes


def test_fused_bytes_skip_an_input_the_stage_never_reads():
    from bench.measure.roofline import operator_costs

    class PassAlong(torch.nn.Module):
        def forward(self, x):
            return x, x.mean(dim=(2, 3))

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 5, bias=False)

        def forward(self, pair):
            _unused_map, pooled = pair
            return self.fc(pooled)

    model = torch.nn.Sequential()
    model.add_module("stage", PassAlong())
    model.add_module("head", Head())
    _, fused = operator_costs(model, 8, batch_size=4, float_bytes=2)
    # head: pooled (4 x 3) + weight (5 x 3) + output (4 x 5), at 2 bytes; the 4x3x8x8 map is not read.
    assert fused["head"] == 2 * (4 * 3 + 5 * 3 + 4 * 5)


def test_committed_h200_measurements_never_beat_their_bounds():
    """Every stage measured on the H200 (results/speed_gpu) takes at least its fused roofline bound
    at the card's measured ceilings: a violation means a count, a timer or a ceiling is wrong."""
    import csv
    from pathlib import Path

    from bench.analysis.roofline_report import violations

    path = Path(__file__).resolve().parents[1] / "results" / "roofline" / "roofline.csv"
    rows = []
    for row in csv.DictReader(path.open()):
        if row.get("measured_ms"):
            rows.append({**row, "batch": int(row["batch"]), "measured_ms": float(row["measured_ms"]),
                         "fused_ms": float(row["fused_ms"])})
    assert len(rows) >= 60, len(rows)
    assert violations(rows) == []


def test_a_cpu_study_gives_a_cpu_roofline_at_its_dtype_and_batches(tmp_path):
    """Measured on a CPU: only the CPU's ceilings (no bf16 datasheets beside it), bytes at the study's
    dtype (fp32: twice the bf16 bytes) and the batch sizes the study measured, its times beside them."""
    import json

    from bench.measure.roofline import operator_costs
    from bench.studies.roofline import main
    from models import build_model

    study = {"peak": {"device": "cpu", "device_name": "cpu", "dtype": "fp32", "gemm_tflops": 0.2, "copy_gb_s": 30.0},
             "stages_ms": {"resnet18, b2": {"stage5": 500.0, "stem": 400.0}}}
    (tmp_path / "speed.json").write_text(json.dumps(study))
    assert main(["--out", str(tmp_path / "out"), "--measured", str(tmp_path / "speed.json")]) == 0
    written = json.loads((tmp_path / "out" / "roofline.json").read_text())
    assert list(written["devices"]) == ["cpu, measured ceilings"]
    rows = written["rows"]
    assert {(r["model"], r["batch"]) for r in rows} == {("resnet18", 2)}
    stage5 = next(r for r in rows if r["stage"] == "stage5")
    assert stage5["measured_ms"] == 500.0
    bf16_ops, _ = operator_costs(build_model("resnet18").eval().to("meta"), 224, 2, float_bytes=2)
    bf16_mb = sum(o.bytes for o in bf16_ops if o.stage == "stage5") / 1e6
    assert stage5["mb"] == pytest.approx(2 * bf16_mb, rel=0.01)  # float tensors are all there is
    assert "4 bytes per float (fp32)" in (tmp_path / "out" / "roofline.md").read_text()
    assert (tmp_path / "out" / "roofline.png").stat().st_size > 0


def test_a_run_folder_reads_as_a_study_of_stage_times_and_ceilings(tmp_path):
    """`--measured RUN`: a run re-measured by `vtbench interleave --stages --peak` in speed.json's shape."""
    from bench.core.records import make_record, make_remeasurement, write_record, write_remeasurement
    from bench.analysis.roofline_report import study_of_run

    records = tmp_path / "run" / "records"
    session = {"id": "cccccccccccc", "protocol": "interleaved", "started_at": "2026-01-01T00:00:00+00:00",
               "finished_at": "2026-01-01T00:01:00+00:00", "rounds": 2, "cells": 2}
    for model, compile_mode, stem in (("resnet18", None, 2.0), ("resnet18", "default", 9.0)):
        config = {"model": model, "model_args": {"num_classes": 1000}, "measure": ["latency"], "input_size": 224,
                  "latency": {"device": "cpu", "batch_size": 1, "dtype": "fp32", "compile": compile_mode}}
        record = make_record(config, metrics={"latency_ms_p50": 10.0}, env={"device_name": "cpu"}, run="run")
        write_record(records, record)
        metrics = {"latency_ms_p50": 10.0, "latency_round_p50_ms": [10.0, 10.0], "latency_protocol": "interleaved",
                   "stage_ms_stem": stem, "stage_ms_head": 0.5, "peak_gemm_tflops": 0.2, "peak_copy_gb_s": 8.0,
                   "peak_dtype": "fp32"}
        write_remeasurement(records, make_remeasurement(record, metrics, session=session,
                                                        env={"device_name": "Test CPU"}))
    study = study_of_run(tmp_path / "run")
    assert study["stages_ms"] == {"resnet18, b1": {"stem": 2.0, "head": 0.5}}  # the eager cell's
    assert study["peak"] == {"device": "cpu", "device_name": "Test CPU", "dtype": "fp32", "gemm_tflops": 0.2,
                             "copy_gb_s": 8.0}


def test_the_driver_writes_only_its_out_and_refuses_a_missing_study(tmp_path, monkeypatch, capsys):
    """By default the study goes to runs/roofline (ignored by git), never the committed results/roofline;
    a --measured path that is not there is bad input (exit 2), not a silently unmeasured table."""
    from bench.studies import roofline as study

    assert study.DEFAULT_OUT == "runs/roofline"
    monkeypatch.chdir(tmp_path)
    assert study.main(["--measured", str(tmp_path / "nothing.json")]) == 2
    assert "nothing.json" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_bound_rows_and_the_measured_join_by_hand():
    """The bounds of one stage on one device, then its measured time joined by 'model, bN'."""
    from bench.analysis.roofline_report import attach_measured
    from bench.measure.roofline import OpCost, bound_rows

    costs = {("m", 2): ([OpCost("s", "mm", 4e12, 1e12)], {"s": 1e12})}
    rows = bound_rows(costs, {"dev": (1.0, 1.0, "by hand")})
    assert rows[0]["fused_ms"] == pytest.approx(4000.0) and rows[0]["bound"] == "compute"
    (joined,) = attach_measured(rows, {"m, b2": {"s": 8000.0}}, "dev")
    assert joined["measured_over_unfused"] == pytest.approx(2.0)
    assert joined["achieved_tflops"] == pytest.approx(0.5)
    assert "measured_ms" not in attach_measured(rows, {"m, b2": {"s": 1.0}}, "other device")[0]
