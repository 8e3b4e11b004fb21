"""`vtbench speed` and `vtbench fidelity`: subcommands with the shared flags, also as `python -m bench NAME`.

Nothing is timed or counted here: the measuring functions are replaced where the test is about the
flags, and `fidelity --no-measure` reads the committed run's records.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import bench.studies.fidelity
import bench.studies.speed
from bench.analysis.section import StudySection
from bench.cli import main as cli_main
from bench.core.errors import UsageError

REPO = Path(__file__).resolve().parents[1]


def _json_rows(text: str) -> list[dict]:
    """The rows of `--format json`: one JSON array (or, from a command that streams them, JSON lines)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def captured_speed(monkeypatch, tmp_path):
    """Replace the measuring study by one that records its options and returns one section object,
    beside a report.md whose text differs from it (the command must print the object, not the file)."""
    seen = {}

    def fake_run(opts):
        seen["opts"] = opts
        report = Path(opts.out) / "report"
        report.mkdir(parents=True)
        (report / "report.md").write_text("# report\n\n## Speed: stale text\n\nold row\n")
        section = StudySection("Speed: VT vs baseline latency", "Ratio per round.",
                               pd.DataFrame({"pair": ["vt_resnet18 / resnet18"], "ratio": ["0.93"]}),
                               csv_name="speed.csv", data=pd.DataFrame({"vt_model": ["vt_resnet18"],
                                                                        "latency_ratio": [0.93]}))
        return bench.studies.speed.StudyResult(sections=[section], rows=[{"vt_model": "vt_resnet18",
                                                                          "latency_ratio": 0.93}])

    monkeypatch.setattr(bench.studies.speed, "run", fake_run)
    return seen


@pytest.mark.parametrize("flag", ["--batch-size", "--batch-sizes"])
def test_speed_shared_flags_and_the_old_spelling(captured_speed, tmp_path, capsys, flag):
    out = tmp_path / "s"
    assert cli_main(["speed", "--out", str(out), flag, "1,8", "--min-time-s", "0.25", "--pairs", "r18"]) == 0
    opts = captured_speed["opts"]
    assert (opts.batch_sizes, opts.min_time_s, opts.pairs, opts.out) == ((1, 8), 0.25, ("r18",), str(out))
    printed = capsys.readouterr().out
    assert printed.splitlines()[:3] == ["## Speed: VT vs baseline latency", "", "Ratio per round."]
    assert "vt_resnet18 / resnet18" in printed and "stale" not in printed  # the object, not report.md
    assert cli_main(["speed", "--out", str(tmp_path / "c"), "--format", "csv"]) == 0
    assert capsys.readouterr().out == "vt_model,latency_ratio\nvt_resnet18,0.93\n"
    assert cli_main(["speed", "--out", str(tmp_path / "j"), "--format", "json"]) == 0
    assert _json_rows(capsys.readouterr().out) == [
        {"vt_model": "vt_resnet18", "latency_ratio": 0.93}]


def test_speed_flags_reach_the_study(captured_speed, tmp_path):
    """Every flag changes the options the study runs with (none is accepted and then ignored)."""
    assert cli_main(["speed", "--out", str(tmp_path / "s")]) == 0
    default = captured_speed["opts"]
    flags = {"--no-stages": ("stages", False), "--no-peak": ("peak", False), "--quick": ("quick", True),
             "--profile": ("profile", True), "--channels-last": ("channels_last", True),
             "--cluster=debug": ("cluster", "debug"), "--threads=3": ("threads", 3), "--rounds=5": ("rounds", 5),
             "--dtype=bf16": ("dtype", "bf16"), "--modes=compile": ("modes", ("compile",)),
             "--dry-run": ("dry_run", True)}
    for flag, (field, value) in flags.items():
        out = tmp_path / flag.strip("-").replace("=", "_")
        assert cli_main(["speed", "--out", str(out), flag]) == 0
        assert getattr(captured_speed["opts"], field) == value != getattr(default, field), flag


def test_speed_gpu_flags_reach_the_study(captured_speed, tmp_path, monkeypatch):
    monkeypatch.setattr(bench.studies.speed, "_cuda_available", lambda: True)
    assert cli_main(["speed", "--gpu", "--out", str(tmp_path / "g")]) == 0
    assert not captured_speed["opts"].flush_l2
    assert cli_main(["speed", "--gpu", "--flush-l2", "--modes", "compile_max_autotune",
                     "--out", str(tmp_path / "f")]) == 0
    assert captured_speed["opts"].flush_l2 and captured_speed["opts"].modes == ("compile_max_autotune",)


def test_speed_defaults_write_under_runs_not_results():
    assert bench.studies.speed.study_options().out == "runs/speed_cpu"


def test_retired_speed_flags_are_refused(captured_speed, tmp_path, capsys):
    for flag in (["--not-shared"], ["--render", str(tmp_path)]):
        with pytest.raises(SystemExit) as exc:
            cli_main(["speed", "--out", str(tmp_path / "s"), *flag])
        assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli_main(["fidelity", "--threads", "2"])
    assert exc.value.code == 2
    assert "opts" not in captured_speed


def test_speed_writes_the_study_as_a_grid_of_every_pair_batch_and_mode():
    from bench.pipeline.grid import build_grid

    opts = bench.studies.speed.study_options(pairs=["r18", "fpn"], batch_sizes=[1, 32], modes=["eager", "compile"],
                                              threads=2, min_time_s=0.5, out="unused")
    grid = build_grid(bench.studies.speed.study_grid(opts))
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


def test_speed_forms_time_each_vt_model_in_every_form_and_each_baseline_once():
    from bench.pipeline.grid import build_grid

    opts = bench.studies.speed.study_options(pairs=["r18", "fpn"], batch_sizes=[1, 32], modes=["eager"],
                                              forms=["reference", "sdpa", "fused"], out="unused")
    cells = [c.config for c in build_grid(bench.studies.speed.study_grid(opts)).cells]
    forms = sorted((c["model"], c["latency"]["batch_size"], c["model_args"].get("attention_impl")) for c in cells)
    assert forms == sorted([(base, batch, None) for base in ("resnet18", "fpn_r50") for batch in (1, 32)]
                           + [(vt, batch, form) for vt in ("vt_resnet18", "vt_fpn_r50") for batch in (1, 32)
                              for form in ("reference", "sdpa", "fused")])
    fpn = next(c for c in cells if c["model"] == "vt_fpn_r50" and c["model_args"].get("attention_impl") == "fused")
    assert (fpn["input_size"], fpn["model_args"]["num_classes"]) == (473, 171)
    with pytest.raises(UsageError, match="unknown attention form 'flash'"):
        bench.studies.speed.study_options(forms=["flash"])


def test_speed_needs_two_rounds():
    with pytest.raises(UsageError, match="at least 2"):
        bench.studies.speed.study_options(rounds=1)


def test_speed_old_spelling_is_hidden_and_bad_values_exit_2(captured_speed, tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["speed", "--help"])
    help_text = capsys.readouterr().out
    assert "--batch-size" in help_text and "--batch-sizes" not in help_text and "--min-time-s" in help_text
    for bad in (["--batch-size", "0"], ["--pairs", "r19"], ["--min-time-s", "-1"], ["--format", "xml"],
                ["--profile", "--gpu"]):
        try:
            rc = cli_main(["speed", "--out", str(tmp_path / "s"), *bad])
        except SystemExit as exc:  # argparse's own refusals
            rc = exc.code
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1, (bad, err)
    assert "opts" not in captured_speed


def test_min_time_s_replaces_the_timed_seconds_per_round():
    assert bench.studies.speed.timing_options(1, "cpu", quick=False)["min_time_s"] == 2.0
    assert bench.studies.speed.timing_options(1, "cpu", quick=False, min_time_s=0.3)["min_time_s"] == 0.3
    assert bench.studies.speed.timing_options(64, "cuda", quick=True, min_time_s=3.0)["min_time_s"] == 3.0


@pytest.fixture
def fake_fidelity(monkeypatch):
    """Replace the counting by a run that writes a two-row table (fidelity.run's file names)."""
    seen = {}

    def fake_run(out_dir: Path, skip_seg: bool = False, **kwargs) -> None:
        seen["skip_seg"] = skip_seg
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "fidelity.csv").write_text("model,gmacs,paper_gmacs\nresnet18,1.814,1.814\nfpn_r50,164.5,\n")
        (out_dir / "fidelity.md").write_text("# Fidelity\n")

    monkeypatch.setattr(bench.studies.fidelity, "run", fake_run)
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
    assert (_json_rows(out) if fmt == "json" else out) == expected
    assert fake_fidelity["skip_seg"] is True


@pytest.mark.parametrize("name, flag", [("speed", "--batch-size"), ("fidelity", "--skip-seg")])
def test_python_m_bench_runs_the_subcommand(name, flag):
    done = subprocess.run([sys.executable, "-m", "bench", name, "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: vtbench {name}") and flag in done.stdout and "--format" in done.stdout
    assert done.stderr == ""  # no third-party warning before the command line's entry either


def test_fidelity_no_measure_writes_only_its_out(tmp_path, capsys):
    """`--no-measure --out X` on a copy of the committed run: X gets the study's files, the run folder
    is left byte for byte as it was (its report is not rewritten)."""
    run = tmp_path / "run"
    shutil.copytree(REPO / "results" / "paper_complexity", run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert cli_main(["fidelity", "--no-measure", "--run-dir", str(run), "--out", str(tmp_path / "x"),
                     "--format", "csv"]) == 0
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["fidelity.csv", "fidelity.md",
                                                                 "fidelity_alternatives.csv", "fidelity_budget.csv"]
    assert capsys.readouterr().out == (tmp_path / "x" / "fidelity.csv").read_text()


def test_fidelity_on_a_complete_run_launches_nothing(tmp_path, monkeypatch):
    """Measuring on a run whose every cell has its record changes nothing in it."""
    import bench.pipeline.launch

    run = tmp_path / "run"
    shutil.copytree(REPO / "results" / "paper_complexity", run)
    calls = []
    real = bench.pipeline.launch.launch
    monkeypatch.setattr(bench.pipeline.launch, "launch", lambda *a, **k: calls.append(k) or real(*a, **k))
    assert bench.studies.fidelity.launch_cells(run) is False
    assert [c.get("dry_run") for c in calls] == [True]


@pytest.mark.slow
def test_speed_runs_the_grid_interleaves_and_reports(tmp_path, capsys):
    """The whole flow at the smallest size: one pair, batch 1, eager, 2 rounds (about a minute on 2 cores)."""
    import json

    out = tmp_path / "speed"
    rc = cli_main(["speed", "--pairs", "r18", "--batch-size", "1", "--modes", "eager", "--rounds", "2",
                   "--min-time-s", "0.1", "--threads", "1", "--cluster", "debug", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out  # the sections, from their objects
    titles = [line[3:] for line in printed.splitlines() if line.startswith("## ")]
    assert printed.startswith("## ") and "vt_resnet18" in printed and any("latency" in t for t in titles)
    (row,) = pd.read_csv(out / "report" / "speed.csv").to_dict("records")
    assert (row["baseline"], row["vt_model"], row["rounds"], row["timing"]) == ("resnet18", "vt_resnet18", 2,
                                                                                  "interleaved")
    assert row["latency_ratio"] > 0 and 0 < row["macs_ratio"] < 1
    remeasured = sorted((out / "records" / "remeasured").glob("*.json"))
    assert len(remeasured) >= 2 and (out / GRID_NAME).is_file() and (out / "report" / "speed_stages.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["speed"]  # nothing written outside --out
    metrics = json.loads(remeasured[0].read_text())["metrics"]
    assert metrics["peak_gemm_tflops"] > 0 and metrics["stage_ms_stem"] > 0


GRID_NAME = "speed_grid.yaml"
