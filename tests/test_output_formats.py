"""Machine-readable stdout, for every command: `--format table|json|jsonl|csv`.

Each format is parsed back from stdout and checked against the table and the record; stdout holds
data only (every line parses), logs go to stderr; the rows use timm's column names where they mean
the same thing, records keep vtbench's; `--json -` is stdout; a reader that goes away ends the
command quietly. `vtbench interleave` is checked in test_interleave.py, the piped `vtbench launch`
in test_launch.py, `speed` and `fidelity` in test_study_commands.py.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import bench.cli
from bench.core.records import read_record
from bench.pipeline.status import run_status

REPO = Path(__file__).resolve().parents[1]
TINY = "tests.test_launch:tiny_net"
QUICK = ["--min-time-s", "0.05", "--threads", "1"]
TIMM_RENAMED = {"name", "input_size", "params_m", "gmacs_fvcore_default", "throughput_img_s", "latency_ms_p50",
                "batch_size_used"}


@pytest.fixture(autouse=True)
def models_cache(tmp_path, monkeypatch):
    """`vtbench models` caches its rows: each test counts afresh, in a cache of its own."""
    monkeypatch.setenv("VTBENCH_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def vtbench(capsys):
    """Run `vtbench ARGS...` in-process; return (exit code, stdout, stderr)."""

    def call(*argv: str):
        try:
            rc = bench.cli.main(list(argv))
        except SystemExit as exc:  # argparse's own exits (--help, bad flags)
            rc = exc.code
        out, err = capsys.readouterr()
        return rc, out, err

    return call


def json_rows(out: str) -> list[dict]:
    """`--format json`: stdout is one JSON document (nothing else is there), an array of row objects."""
    rows = json.loads(out)
    assert isinstance(rows, list) and all(isinstance(row, dict) for row in rows)
    return rows


def jsonl_rows(out: str) -> list[dict]:
    """`--format jsonl`: every line of stdout is one JSON object."""
    return [json.loads(line) for line in out.splitlines()]


def csv_rows(out: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(out)))


def number(text: str) -> float | None:
    return None if text == "" else float(text)


# ---------------------------------------------------------------------------------------- models
def test_models_json_csv_and_table_agree_in_timm_names(vtbench):
    rc, table, _ = vtbench("models", "--filter", "vt_resnet18")
    assert rc == 0
    rc, out, _ = vtbench("models", "--filter", "vt_resnet18", "--format", "json")
    assert rc == 0
    (row,) = json_rows(out)
    assert list(row) == ["model", "infer_img_size", "infer_gmacs", "param_count", "task", "gmacs", "gmacs_fvcore",
                         "unsupported_ops"]
    assert row["model"] == "vt_resnet18" and row["infer_img_size"] == 224 and row["task"] == "cls"
    assert row["gmacs"] == pytest.approx(1.5, abs=0.1) and row["param_count"] == pytest.approx(11.5, abs=0.1)
    # timm's infer_gmacs is fvcore's total (norms too): above the paper's count, below vtbench's fvcore total
    assert row["gmacs"] < row["infer_gmacs"] < row["gmacs_fvcore"]
    (line,) = [line for line in table.splitlines() if line.startswith("vt_resnet18 ")]
    assert line.split()[:6] == ["vt_resnet18", "cls", "224", f"{row['param_count']:.2f}", f"{row['gmacs']:.3f}",
                                f"{row['gmacs_fvcore']:.3f}"]
    rc, out, _ = vtbench("models", "--filter", "vt_resnet18", "--format", "jsonl")
    assert rc == 0 and jsonl_rows(out) == [row]
    rc, out, _ = vtbench("models", "--filter", "vt_resnet18", "--format", "csv")
    assert rc == 0
    (crow,) = csv_rows(out)
    assert list(crow) == list(row)
    assert crow["model"] == "vt_resnet18" and int(crow["infer_img_size"]) == 224
    assert float(crow["infer_gmacs"]) == row["infer_gmacs"] and float(crow["param_count"]) == row["param_count"]
    assert json.loads(crow["unsupported_ops"]) == row["unsupported_ops"]


def test_models_json_is_the_old_spelling_of_format_json(vtbench):
    old = vtbench("models", "--no-macs", "--filter", "resnet18", "--json")
    new = vtbench("models", "--no-macs", "--filter", "resnet18", "--format", "json")
    assert old[0] == new[0] == 0 and old[1] == new[1]
    assert [r["model"] for r in json_rows(new[1])] == ["resnet18", "vt_resnet18"]
    assert list(json_rows(new[1])[0]) == ["model", "infer_img_size", "param_count", "task"]
    _, help_text, _ = vtbench("models", "--help")
    assert "--format" in help_text and "--json" not in help_text


@pytest.mark.parametrize("reader", ["head -1", "true"])
def test_models_into_a_pipe_whose_reader_went_away_ends_quietly(tmp_path, reader):
    """`true` is gone before the first row is written; `head -1` after the first (each row is flushed
    as it is counted, and counting the next takes a while)."""
    status = tmp_path / "status"
    command = (f"{sys.executable} -m bench models --format jsonl --filter resnet | {reader}; "
               f"echo ${{PIPESTATUS[0]}} > {status}")
    done = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr and "Broken pipe" not in done.stderr, done.stderr
    assert "BrokenPipeError" not in done.stderr, done.stderr
    assert status.read_text().strip() == "141"
    if reader == "head -1":
        (row,) = jsonl_rows(done.stdout)
        assert row["model"] == "resnet101" and row["infer_gmacs"] > 7


# --------------------------------------------------------------------------------------- profile
@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_profile_rows_hold_the_records_values_in_timm_names(vtbench, tmp_path, fmt):
    path = tmp_path / "record.json"
    rc, out, err = vtbench("profile", "resnet18", "--input-size", "16", "--batch-size", "1,2", "--format", fmt,
                           "--json", str(path), *QUICK)
    assert rc == 0, err
    record = read_record(path)
    metrics = record["metrics"]
    assert "infer_gmacs" not in json.loads(path.read_text())["metrics"]  # the record keeps vtbench's names
    rows = {"json": json_rows, "jsonl": jsonl_rows, "csv": csv_rows}[fmt](out)
    assert len(rows) == 2
    for row, latency in zip(rows, metrics["latency"]):
        value = (lambda key: row[key]) if fmt != "csv" else (lambda key: number(row[key]))
        assert row["model"] == "resnet18"
        assert value("infer_img_size") == 16
        assert value("infer_batch_size") == latency["batch_size_used"]
        assert value("infer_samples_per_sec") == latency["throughput_img_s"]
        assert value("infer_step_time") == latency["latency_ms_p50"]
        assert value("gmacs") == metrics["gmacs"] and value("param_count") == metrics["params_m"]
        # timm's infer_gmacs only where the record has fvcore's default total (timm's count), never the paper's
        assert value("infer_gmacs") == metrics["gmacs_fvcore_default"] if "gmacs_fvcore_default" in metrics \
            else "infer_gmacs" not in row
        assert value("gmacs_stage5") == metrics["gmacs_stage5"] and value("latency_ms_p80") == latency["latency_ms_p80"]
        assert row["latency_verdict"] == latency["latency_verdict"] and row["device"] == "cpu"
        assert not TIMM_RENAMED & set(row)
    timm_gmacs = ["infer_gmacs"] if "gmacs_fvcore_default" in metrics else []
    assert list(rows[0])[:6 + len(timm_gmacs)] == ["model", "infer_samples_per_sec", "infer_step_time",
                                                   "infer_batch_size", "infer_img_size", *timm_gmacs, "param_count"]


def test_profile_logs_go_to_stderr_and_only_rows_to_stdout():
    done = subprocess.run([sys.executable, "-m", "bench", "profile", "resnet18", "--input-size", "16",
                           "--no-complexity", "--format", "csv", *QUICK], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    (row,) = csv_rows(done.stdout)
    assert done.stdout.splitlines()[0].startswith("model,infer_samples_per_sec,infer_step_time,")
    assert row["model"] == "resnet18" and float(row["infer_step_time"]) > 0
    assert "INFO bench.pipeline.runner: timing resnet18 at batch 1 on cpu (fp32)" in done.stderr


def test_profile_train_step_rows_take_timms_train_prefix(vtbench):
    rc, out, err = vtbench("profile", "resnet18", "--input-size", "16", "--batch-size", "2", "--no-complexity",
                           "--train-step", "--format", "json", *QUICK)
    assert rc == 0, err
    (row,) = json_rows(out)
    assert row["train_batch_size"] == 2 and row["train_img_size"] == 16 and row["mode"] == "train_step"
    assert row["train_samples_per_sec"] == pytest.approx(2000 / row["train_step_time"])
    assert not [key for key in row if key.startswith("infer_")]


def test_profile_table_and_json_agree(vtbench):
    rc, table, _ = vtbench("profile", "resnet18", "--input-size", "16", "--no-latency")
    assert rc == 0
    rc, out, _ = vtbench("profile", "resnet18", "--input-size", "16", "--no-latency", "--format", "json")
    (row,) = json_rows(out)
    (total,) = [line.split() for line in table.splitlines() if line.startswith("total ")]
    assert total == ["total", format(row["gmacs"], ".4g"), format(row["param_count"], ".4g")]
    (stem,) = [line.split() for line in table.splitlines() if line.startswith("stem ")]
    assert stem[1] == format(row["gmacs_stem"], ".4g")


def test_profile_json_dash_writes_the_record_to_stdout(vtbench, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = vtbench("profile", "resnet18", "--input-size", "16", "--no-latency", "--json", "-")
    assert rc == 0, err
    assert not (tmp_path / "-").exists()
    (tmp_path / "r.json").write_text(out)  # stdout is the record, whole, as a file would hold it
    record = read_record(tmp_path / "r.json")
    assert record["config"]["model"] == "resnet18" and record["metrics"]["gmacs"] > 0
    assert "total" in err and "GMACs executed" in err  # the report went to stderr
    rc, out, err = vtbench("profile", "resnet18", "--json", "-", "--format", "csv")
    assert rc == 2 and out == "" and "choose one" in err


def test_profile_min_time_s_is_the_flag_and_min_time_a_hidden_alias(vtbench):
    for flag in ("--min-time-s", "--min-time"):
        argv = ["profile", "resnet18", flag, "0.3"]
        assert bench.cli.build_parser(argv).parse_args(argv).min_time_s == 0.3
    _, help_text, _ = vtbench("profile", "--help")
    assert "--min-time-s S" in help_text and not re.search(r"--min-time(?!-s)", help_text)
    for flag in ("--min-time-s", "--min-time"):
        rc, _, err = vtbench("profile", "resnet18", flag, "0")
        assert rc == 2 and "positive number of seconds" in err


# ---------------------------------------------------------------------------------- status, launch
@pytest.fixture
def grid(tmp_path, monkeypatch) -> Path:
    """A grid of two complexity cells of the tiny net of test_launch, the second built to fail."""
    monkeypatch.syspath_prepend(str(REPO))
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({
        "name": "g", "base": {"model": TINY, "model_args": {"num_classes": 10}, "measure": ["complexity"],
                              "input_size": 8},
        "axes": {"model_args.fail": [False, True]}}))
    return path


def test_launch_dry_run_prints_the_plan_in_each_format(vtbench, grid, tmp_path):
    run = str(tmp_path / "run")
    rc, table, err = vtbench("-q", "launch", str(grid), "--dry-run", "--run-dir", run)
    assert rc == 0 and err == ""
    rc, out, err = vtbench("-q", "launch", str(grid), "--dry-run", "--run-dir", run, "--format", "json")
    assert rc == 0 and err == ""
    rows = json_rows(out)
    assert len(rows) == 2 and not (tmp_path / "run").exists()
    for row in rows:
        assert (row["action"], row["reason"], row["job_id"], row["model"]) == ("run", "new", None, TINY)
        assert row["measure"] == ["complexity"] and row["input_size"] == 8 and "fail" in row["model_args"]
        (line,) = [line for line in table.splitlines() if line.startswith(row["cell_id"])]
        assert "run (new)" in line and f"fail={row['model_args']['fail']}" in line
    rc, out, _ = vtbench("-q", "launch", str(grid), "--dry-run", "--run-dir", run, "--format", "csv")
    crows = csv_rows(out)
    assert [r["cell_id"] for r in crows] == [r["cell_id"] for r in rows]
    assert [json.loads(r["model_args"]) for r in crows] == [r["model_args"] for r in rows]
    assert all(r["job_id"] == "" and json.loads(r["measure"]) == ["complexity"] for r in crows)


def test_launch_then_status_in_each_format(vtbench, grid, tmp_path):
    run = tmp_path / "run"
    rc, out, err = vtbench("launch", str(grid), "--run-dir", str(run), "--cluster", "debug", "--format", "json")
    assert rc == 1, err  # the debug executor waits, and one cell failed
    launched = json_rows(out)  # the cells ran in this process: stdout has the rows only
    jobs = json.loads((run / "jobs.json").read_text())
    assert {r["cell_id"]: r["job_id"] for r in launched} == dict(zip(jobs[0]["cell_ids"], jobs[0]["task_job_ids"]))

    rc, table, _ = vtbench("status", str(run))
    assert rc == 0 and "1 ok, 1 error" in table
    rc, out, _ = vtbench("status", str(run), "--format", "json")
    rows = json_rows(out)
    assert {r["cell_id"]: r["state"] for r in rows} == {c.cell_id: c.state for c in run_status(run).cells}
    assert {r["cell_id"]: r["job_id"] for r in rows} == {r["cell_id"]: r["job_id"] for r in launched}
    (failed,) = [r for r in rows if r["state"] == "error"]
    assert "boom" in failed["error"] and f"error    {failed['cell_id']} {TINY}: {failed['error']}" in table
    assert all(r["cluster"] == "debug" and r["model"] == TINY for r in rows)
    rc, out, _ = vtbench("status", str(run), "--format", "csv")
    assert csv_rows(out) == [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows]
