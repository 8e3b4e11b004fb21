"""`vtbench speed` and `vtbench fidelity`: subcommands with the shared flags, also as `python -m bench NAME`.

Nothing is timed or counted here: `speed --render` rebuilds a committed study from its JSON, and the
measuring functions are replaced where the test is about the flags.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bench.analysis.fidelity
import bench.analysis.speed
from bench.core.errors import UsageError
from bench.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "results" / "speed_gpu" / "eager_cuda_graphs"


@pytest.fixture
def study(tmp_path) -> Path:
    """A copy of a committed GPU study's speed.json (re-rendered, never re-measured)."""
    shutil.copy(STUDY / "speed.json", tmp_path / "speed.json")
    return tmp_path


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_speed_render_prints_each_format(study, capsys, fmt):
    assert cli_main(["speed", "--render", str(study), "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "table":
        assert out == (STUDY / "speed.md").read_text()
    elif fmt == "csv":
        assert out == (STUDY / "speed.csv").read_text()
        assert next(csv.reader(io.StringIO(out)))[:4] == ["device", "dtype", "mode", "batch"]
    else:
        rows = [json.loads(line) for line in out.splitlines()]  # JSON lines, one pair row each
        committed = list(csv.DictReader(io.StringIO((STUDY / "speed.csv").read_text())))
        assert len(rows) == len(committed)
        assert [(r["baseline"], r["batch"], r["mode"]) for r in rows] == \
            [(r["baseline"], int(r["batch"]), r["mode"]) for r in committed]
        assert rows[0]["latency_ratio"] == pytest.approx(float(committed[0]["latency_ratio"]))


@pytest.fixture
def captured_speed(monkeypatch, tmp_path):
    """Replace the measuring study by one that records its options and writes empty outputs."""
    seen = {}

    def fake_run(opts):
        seen["opts"] = opts
        report = Path(opts.out) / "report"
        report.mkdir(parents=True)
        (report / "report.md").write_text("# report\n\n## Complexity\n\nx\n\n## Speed: pairs\n\nrow\n\n## Plots\n")
        (report / "speed.csv").write_text("a,b\n1,2\n")
        return []

    monkeypatch.setattr(bench.analysis.speed, "run", fake_run)
    return seen


@pytest.mark.parametrize("flag", ["--batch-size", "--batch-sizes"])
def test_speed_shared_flags_and_the_old_spelling(captured_speed, tmp_path, capsys, flag):
    out = tmp_path / "s"
    assert cli_main(["speed", "--out", str(out), flag, "1,8", "--min-time-s", "0.25", "--pairs", "r18"]) == 0
    opts = captured_speed["opts"]
    assert (opts.batch_sizes, opts.min_time_s, opts.pairs, opts.out) == ([1, 8], 0.25, ["r18"], str(out))
    assert capsys.readouterr().out == "## Speed: pairs\n\nrow\n"  # the report's speed section only
    assert cli_main(["speed", "--out", str(tmp_path / "c"), "--format", "csv"]) == 0
    assert capsys.readouterr().out == "a,b\n1,2\n"


def test_speed_writes_the_study_as_a_grid_of_every_pair_batch_and_mode():
    from bench.pipeline.grid import build_grid

    opts = bench.analysis.speed.study_options(pairs=["r18", "fpn"], batch_sizes=[1, 32], modes=["eager", "compile"],
                                              threads=2, min_time_s=0.5, out="unused")
    grid = build_grid(bench.analysis.speed.study_grid(opts))
    cells = [c.config for c in grid.cells]
    assert len(cells) == 4 * 2 * 2 and grid.duplicates == 0  # 4 models x 2 batch sizes x 2 modes
    key = {(c["model"], c["latency"]["batch_size"], c["latency"]["compile"]): c for c in cells}
    fpn = key[("vt_fpn_r50", 32, "default")]
    assert (fpn["input_size"], fpn["model_args"]["num_classes"]) == (473, 171)
    r18 = key[("resnet18", 1, None)]
    assert (r18["input_size"], r18["model_args"]["num_classes"], r18["seed"]) == (224, 1000, 0)
    assert r18["measure"] == ["complexity", "latency"]
    assert r18["latency"]["threads"] == 2 and r18["latency"]["min_time_s"] == 0.5
    assert key[("resnet18", 32, None)]["latency"]["min_iters"] == 3  # batch 32: the heavy timing
    assert key[("resnet18", 1, None)]["latency"]["min_iters"] == 10
    assert grid.resources.local_parallelism == 1


def test_speed_needs_two_rounds():
    with pytest.raises(UsageError, match="at least 2"):
        bench.analysis.speed.study_options(rounds=1)


def test_speed_old_spelling_is_hidden_and_bad_values_exit_2(captured_speed, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["speed", "--help"])
    help_text = capsys.readouterr().out
    assert "--batch-size" in help_text and "--batch-sizes" not in help_text and "--min-time-s" in help_text
    for bad in (["--batch-size", "0"], ["--pairs", "r19"], ["--min-time-s", "-1"], ["--format", "xml"],
                ["--render", str(tmp_path / "nothing")]):
        try:
            rc = cli_main(["speed", "--out", str(tmp_path / "s"), *bad] if bad[0] != "--render" else ["speed", *bad])
        except SystemExit as exc:  # argparse's own refusals
            rc = exc.code
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1, (bad, err)
    assert "opts" not in captured_speed


def test_min_time_s_replaces_the_timed_seconds_per_round():
    assert bench.analysis.speed.timing_options(1, "cpu", quick=False)["min_time_s"] == 2.0
    assert bench.analysis.speed.timing_options(1, "cpu", quick=False, min_time_s=0.3)["min_time_s"] == 0.3
    assert bench.analysis.speed.timing_options(64, "cuda", quick=True, min_time_s=3.0)["min_time_s"] == 3.0


@pytest.fixture
def fake_fidelity(monkeypatch):
    """Replace the counting by a run that writes a two-row table (fidelity.run's file names)."""
    seen = {}

    def fake_run(out_dir: Path, skip_seg: bool = False) -> None:
        seen["skip_seg"] = skip_seg
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "fidelity.csv").write_text("model,gmacs,paper_gmacs\nresnet18,1.814,1.814\nfpn_r50,164.5,\n")
        (out_dir / "fidelity.md").write_text("# Fidelity\n")

    monkeypatch.setattr(bench.analysis.fidelity, "run", fake_run)
    return seen


@pytest.mark.parametrize("fmt, expected", [
    ("table", "# Fidelity\n"),
    ("csv", "model,gmacs,paper_gmacs\nresnet18,1.814,1.814\nfpn_r50,164.5,\n"),
    ("json", [{"model": "resnet18", "gmacs": 1.814, "paper_gmacs": 1.814},
              {"model": "fpn_r50", "gmacs": 164.5, "paper_gmacs": None}]),
])
def test_fidelity_subcommand_formats(fake_fidelity, tmp_path, capsys, fmt, expected):
    assert cli_main(["fidelity", "--out", str(tmp_path / "f"), "--skip-seg", "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert ([json.loads(line) for line in out.splitlines()] if fmt == "json" else out) == expected
    assert fake_fidelity["skip_seg"] is True


@pytest.mark.parametrize("name, flag", [("speed", "--batch-size"), ("fidelity", "--skip-seg")])
def test_python_m_bench_runs_the_subcommand(name, flag):
    done = subprocess.run([sys.executable, "-m", "bench", name, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: vtbench {name}") and flag in done.stdout and "--format" in done.stdout
    assert done.stderr == ""  # no third-party warning before the command line's entry either


def test_python_m_bench_speed_render(study):
    done = subprocess.run([sys.executable, "-m", "bench", "speed", "--render", str(study), "--format", "csv"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (STUDY / "speed.csv").read_text()
    assert "FutureWarning" not in done.stderr


@pytest.mark.slow
def test_speed_runs_the_grid_interleaves_and_reports(tmp_path, capsys):
    """The whole flow at the smallest size: one pair, batch 1, eager, 2 rounds (about a minute on 2 cores)."""
    import json

    out = tmp_path / "speed"
    rc = cli_main(["speed", "--pairs", "r18", "--batch-size", "1", "--modes", "eager", "--rounds", "2",
                   "--min-time-s", "0.1", "--threads", "1", "--cluster", "debug", "--out", str(out), "--format", "json"])
    assert rc == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (row["baseline"], row["vt_model"], row["rounds"], row["timing"]) == ("resnet18", "vt_resnet18", 2,
                                                                                  "interleaved")
    assert row["latency_ratio"] == pytest.approx(sorted(row["round_ratios"])[0] / 2 + sorted(row["round_ratios"])[1] / 2)
    assert row["target_verdict"].split(" (")[0] in ("met", "missed", "not resolved")
    assert row["base_tflops"] == pytest.approx(2 * row["base_gmacs"] / row["base_ms_p50"])
    remeasured = sorted((out / "records" / "remeasured").glob("*.json"))
    assert len(remeasured) == 2 and (out / GRID_NAME).is_file() and (out / "report" / "speed_stages.csv").is_file()
    metrics = json.loads(remeasured[0].read_text())["metrics"]
    assert metrics["peak_gemm_tflops"] > 0 and metrics["stage_ms_stem"] > 0


GRID_NAME = "speed_grid.yaml"
