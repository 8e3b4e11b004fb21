"""A noisy latency row is shown to the user: `vtbench profile` marks it and says why."""

from __future__ import annotations

import pytest
from torch import nn

import bench.cli

QUICK = ["--min-time", "0.05", "--threads", "1", "--no-complexity", "--input-size", "8"]


def tiny_net(**_):
    """A model small enough to time in a fraction of a second (used by import path)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


@pytest.fixture
def vtbench(monkeypatch, capsys):
    """Run `vtbench ARGS...` in-process with only `profile` loaded; return (rc, stdout, stderr)."""
    monkeypatch.setattr(bench.cli, "COMMAND_MODULES", ("bench.cli.commands.profile",))

    def call(*argv: str):
        rc = bench.cli.main(list(argv))
        out, err = capsys.readouterr()
        return rc, out, err

    return call


def test_profile_marks_a_noisy_row_and_says_why(vtbench, monkeypatch):
    import bench.measure.latency as latency

    monkeypatch.setattr(latency, "_loadavg_1min", lambda: 50.0)  # a machine far busier than one thread
    rc, out, _ = vtbench("profile", "test_noisy_latency:tiny_net", "--batch-size", "1,2", *QUICK)
    assert rc == 0
    header = next(line for line in out.splitlines() if line.split()[:1] == ["batch"])  # numbers: right-aligned
    assert "verdict" in header.split() and "process" in header
    rows = [line for line in out.splitlines() if line.split() and line.split()[0] in ("1", "2")]
    assert len(rows) == 2 and all(line.split()[-1] == "noisy" for line in rows)
    noisy = [line for line in out.splitlines() if line.startswith("NOISY at batch")]
    assert [line.split(":")[0] for line in noisy] == ["NOISY at batch 1", "NOISY at batch 2"]
    assert all("load 50.00 before > 1 threads + 1" in line for line in noisy)
    assert "peak MiB = RSS the measurement added" in out


def test_profile_render_of_a_clean_row_has_no_noisy_line():
    from bench.cli.commands.profile import render

    config = {"model": "m", "model_args": {}, "input_size": 8,
              "latency": {"device": "cpu", "dtype": "fp32", "channels_last": False, "compile": None,
                          "cuda_graphs": False, "train_step": False}}
    row = {"batch_size_requested": 1, "batch_size_used": 1, "latency_ms_p50": 1.0, "latency_ms_p20": 0.99,
           "latency_ms_p80": 1.01, "latency_iters": 100, "throughput_img_s": 1000.0, "peak_mem_mb": 3.0,
           "process_peak_rss_mb": 600.0, "peak_mem_kind": "rss_added", "timer": "t", "threads": 1,
           "latency_verdict": "ok", "latency_noise_reasons": []}
    text = render(config, {"latency": [row]})
    assert "NOISY" not in text
    assert text.splitlines()[[i for i, l in enumerate(text.splitlines()) if l.split()[:1] == ["batch"]][0] + 2].split()[-1] == "ok"
    noisy = dict(row, latency_verdict="noisy", latency_noise_reasons=["warm-up did not settle"])
    assert "NOISY at batch 1: warm-up did not settle" in render(config, {"latency": [noisy]})


def test_report_command_warns_about_noisy_rows_and_marks_the_ratio(tmp_path, caplog):
    import argparse

    from mdtable import md_rows

    from bench.cli.commands import report as cmd
    from bench.core.records import make_record, write_record

    def config(model):
        return {"model": model, "model_args": {"num_classes": 10, "stem": "cifar"}, "measure": ["latency"],
                "input_size": 16, "seed": 0, "latency": {"device": "cpu", "batch_size": 1, "threads": 1}}

    rows = {"resnet18": dict(warmup_settled=True, latency_ms_p20=9.9, latency_ms_p50=10.0, latency_ms_p80=10.1),
            # the smoke report's case: warm-up never settled, p20-p80 378-785 ms
            "vt_resnet18": dict(warmup_settled=False, latency_ms_p20=378.0, latency_ms_p50=6.9, latency_ms_p80=785.0)}
    for model, metrics in rows.items():
        write_record(tmp_path / "run" / "records", make_record(config(model), metrics=metrics, env={"device_name": "x"}))
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    with caplog.at_level("WARNING"):
        assert cmd.run(parser.parse_args([str(tmp_path / "run"), "--format", "md"])) == 0
    assert any("1 of 2 latency row(s) are noisy" in r.getMessage() for r in caplog.records)
    md = (tmp_path / "run" / "report" / "report.md").read_text()
    row = next(r for r in md_rows(md, "Latency") if r["model"] == "vt_resnet18")
    assert row["noise"] == "noisy: warm-up did not settle; spread p80/p20 2.08 > 1.25"
    (pair,) = md_rows(md, "VT vs baseline: latency")
    ratio = next(v for k, v in pair.items() if k.startswith("latency ratio"))
    assert ratio.startswith("0.690") and pair["VT vs baseline"].startswith("no verdict")
