"""`vtbench profile` and `vtbench models`: one-line exit 2 on bad input, valid records, import paths."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import bench.cli
from bench.cli.commands.common import parse_overrides
from bench.cli.commands.profile import parse_batch_sizes, parse_input_size
from bench.core.errors import UsageError
from bench.core.records import read_record

QUICK = ["--min-time", "0.05", "--threads", "1"]


@pytest.fixture
def vtbench(monkeypatch, capsys):
    """Run `vtbench ARGS...` in-process with only this module's commands loaded; return (rc, out, err)."""
    monkeypatch.setattr(bench.cli, "COMMAND_MODULES", ("bench.cli.commands.models", "bench.cli.commands.profile"))

    def call(*argv: str):
        try:
            rc = bench.cli.main(list(argv))
        except SystemExit as exc:  # argparse's own errors
            rc = exc.code
        out, err = capsys.readouterr()
        return rc, out, err

    return call


def always_oom(**_):
    """A factory (used by import path) whose model runs out of memory at every batch size."""

    class OOM(nn.Module):
        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    return OOM()


def not_a_module(**_):
    return 42


@pytest.mark.parametrize("argv, message", [
    (["resnet999"], "unknown model 'resnet999'"),
    (["torchvision.models.resnet18"], "needs a colon"),
    (["torchvision.models:"], "malformed import path"),
    (["no_such_pkg.mod:fn"], "cannot import module"),
    (["torchvision.models:no_such_fn"], "has no attribute"),
    (["test_profile_cli:not_a_module"], "not a torch.nn.Module"),
    (["resnet18", "--batch-size", "0"], "batch sizes must be positive"),
    (["resnet18", "--batch-size", "1,x"], "batch sizes must be positive"),
    (["resnet18", "--input-size", "0"], "input size"),
    (["resnet18", "--device", "cuda"] if not torch.cuda.is_available() else ["resnet18", "--device", "tpu"],
     "device"),
    (["resnet18", "--dtype", "fp8"], "invalid choice"),
    (["resnet18", "--cuda-graphs"], "CUDA graphs need a CUDA device"),
    (["resnet18", "--set", "tokenizer=filter", "--no-latency"], "not an option of resnet18"),
    (["resnet18", "--set", "oops"], "KEY=VALUE"),
])
def test_bad_input_exits_2_with_one_line(vtbench, argv, message):
    rc, out, err = vtbench("profile", *argv)
    assert rc == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_json_record_for_an_import_path_model(vtbench, tmp_path):
    path = tmp_path / "r18.json"
    rc, out, _ = vtbench("profile", "torchvision.models:resnet18", "--set", "num_classes=10",
                         "--input-size", "32", "--batch-size", "1,2", "--json", str(path), *QUICK)
    assert rc == 0
    record = read_record(path)
    assert record["status"] == "ok" and record["config"]["model_args"] == {"num_classes": 10}
    assert record["config"]["latency"]["batch_size"] == [1, 2]
    metrics = record["metrics"]
    assert metrics["gmacs"] > 0 and metrics["params_m"] == pytest.approx(11.18, abs=0.01)
    assert [row["batch_size_used"] for row in metrics["latency"]] == [1, 2]
    assert "latency_ms_p50" not in metrics  # several batch sizes: rows only
    for key in ("torch", "cudnn_benchmark", "dtype", "threads", "input_size", "git_commit"):
        assert key in record["env"]
    assert "p50 ms" in out and "GMACs" in out


def test_registry_model_with_overrides_and_stage_table(vtbench, tmp_path):
    path = tmp_path / "vt.json"
    rc, out, _ = vtbench("profile", "vt_resnet18", "--set", "stem=cifar", "--set", "num_classes=10",
                         "--set", "num_tokens=8", "--input-size", "32", "--batch-size", "2",
                         "--json", str(path), *QUICK)
    assert rc == 0
    metrics = read_record(path)["metrics"]
    assert metrics["gmacs_vt"] > 0 and "params_m_stem" in metrics
    assert metrics["latency_ms_p50"] == metrics["latency"][0]["latency_ms_p50"]  # one batch: flattened
    assert "vt" in out and "stage2" in out


def test_oom_becomes_an_error_row_and_exit_1(vtbench, tmp_path):
    path = tmp_path / "oom.json"
    rc, out, _ = vtbench("profile", "test_profile_cli:always_oom", "--no-complexity", "--input-size", "8",
                         "--batch-size", "4", "--json", str(path), *QUICK)
    assert rc == 1
    row = read_record(path)["metrics"]["latency"][0]
    assert row["batch_size_requested"] == 4 and row["batch_size_tried"] == 1
    assert row["error"].startswith("OutOfMemory")
    assert "OutOfMemory" in out


def test_models_command_table_and_json(vtbench, tmp_path, monkeypatch):
    monkeypatch.setenv("VTBENCH_CACHE_DIR", str(tmp_path))
    rc, out, _ = vtbench("models", "--no-macs", "--filter", "resnet18")
    assert rc == 0 and "vt_resnet18" in out and "params M" in out
    rc, out, _ = vtbench("models", "--json", "--filter", "vt_resnet18")  # one JSON array, in timm's names
    rows = json.loads(out)
    assert rc == 0 and [r["model"] for r in rows] == ["vt_resnet18"]
    assert rows[0]["gmacs"] == pytest.approx(1.5, abs=0.1) and rows[0]["infer_img_size"] == 224


def test_parsers():
    assert parse_batch_sizes("1, 32") == [1, 32]
    assert parse_input_size("224") == 224 and parse_input_size("224x320") == [224, 320]
    assert parse_overrides(["num_tokens=8", "projector=false", "x=0.5", "y=null", "tokenizer=filter"]) == [
        ("num_tokens", 8), ("projector", False), ("x", 0.5), ("y", None), ("tokenizer", "filter")]
    assert parse_overrides(["base.num_tokens=8", "axes.seed=[0, 1]"]) == [("base.num_tokens", 8), ("axes.seed", [0, 1])]
    with pytest.raises(UsageError, match="KEY a Python name"):
        parse_overrides(["base.num_tokens=8"], python_names=True)
    for bad in ("oops", "=1", "a=[1"):
        with pytest.raises(UsageError):
            parse_overrides([bad])
    for bad in ("", "-1", "2.5"):
        with pytest.raises(UsageError):
            parse_batch_sizes(bad)


class _HeadFirst(nn.Module):
    """Children registered head first: a custom model's own order, not vtbench's stage order."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.stem = nn.Conv2d(3, 4, 1, bias=False)

    def forward(self, x):
        return self.head(self.stem(x).mean(dim=(2, 3)))


def head_first(**_):
    return _HeadFirst()


class _DeadBranch(nn.Module):
    """Runs two 1x1 convs and returns one: the trace drops `unused`, execution pays for it."""

    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Conv2d(3, 4, 1, bias=False), nn.Conv2d(3, 4, 1, bias=False)

    def forward(self, x):
        self.unused(x)
        return self.used(x)


def dead_branch(**_):
    return _DeadBranch()


def test_depth_breakdown_of_a_vt_model(vtbench, tmp_path):
    path = tmp_path / "vt.json"
    rc, out, _ = vtbench("profile", "vt_resnet18", "--set", "stem=cifar", "--set", "num_classes=10",
                         "--input-size", "32", "--no-latency", "--depth", "3", "--json", str(path))
    assert rc == 0
    rows = read_record(path)["metrics"]["modules"]
    names = [r["module"] for r in rows]
    for part in ("tokenizer", "transformer", "projector"):
        assert f"vt.blocks.0.{part}" in names and f"      vt.blocks.0.{part}" in out  # indented by depth 3
    assert "vt.blocks.1.tokenizer" in names and "vt.blocks.1.projector" not in names  # none in the last module
    assert max(r["depth"] for r in rows) == 3
    by_name = {r["module"]: r for r in rows}
    assert by_name["(model)"]["gmacs"] == pytest.approx(sum(by_name[s]["gmacs"] for s in
                                                            ("stem", "stage2", "stage3", "stage4", "vt", "head")))
    assert "traced GMACs" not in out  # counters agree: no traced column


def test_custom_model_keeps_its_order_and_small_counts_show(vtbench, tmp_path):
    path = tmp_path / "hf.json"
    rc, out, _ = vtbench("profile", "test_profile_cli:head_first", "--input-size", "4", "--no-latency",
                         "--depth", "1", "--json", str(path))
    assert rc == 0
    lines = [ln.split() for ln in out.splitlines() if ln.split()[:1] in (["head"], ["stem"])]
    assert [ln[0] for ln in lines] == ["head", "stem", "head", "stem"]  # stage table, then module table
    assert lines[1][1] == "1.92e-07"  # 16 pixels x 3 x 4 MACs: significant digits, not 0.000
    assert [r["module"] for r in read_record(path)["metrics"]["modules"]] == ["(model)", "head", "stem"]


def test_counter_disagreement_warns_on_stderr_and_in_the_record(tmp_path):
    """A real `vtbench` process: the warning is a WARNING line on stderr, the record carries it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "dead.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench", "profile", "test_profile_cli:dead_branch", "--input-size", "2",
                           "--no-latency", "--json", str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if " WARNING " in ln]
    assert len(warnings) == 1 and "MAC counters disagree by -50.00 %" in warnings[0]
    assert "DISAGREE" in proc.stdout
    metrics = read_record(path)["metrics"]
    assert metrics["counter_agree"] is False and metrics["counter_gap_pct"] == pytest.approx(-50.0)
    assert metrics["counter_warning"] in warnings[0]
    assert metrics["gmacs"] == pytest.approx(2 * metrics["gmacs_traced"])


@pytest.mark.parametrize("argv, message", [
    (["resnet18", "--depth", "-1", "--no-latency"], "--depth needs"),
    (["resnet18", "--depth", "2", "--no-complexity"], "--depth needs"),
    (["resnet18", "--depth", "x"], "invalid int value"),
])
def test_bad_depth_exits_2_with_one_line(vtbench, argv, message):
    rc, _, err = vtbench("profile", *argv)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
