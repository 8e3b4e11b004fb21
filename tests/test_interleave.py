"""`vtbench interleave`: a run's latency cells re-measured in alternating rounds, each into a new
re-measurement file (records/remeasured/ID.N.json) beside its record, which is left as it was."""

from __future__ import annotations

import csv
import io
import json
import statistics
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import bench.pipeline.interleave as inter
from bench.cli import main as cli_main
from bench.core.errors import UsageError
from bench.pipeline.launch import launch
from bench.core.contracts import Remeasurement
from bench.core.records import latest_remeasurements, read_record, read_remeasurement, with_remeasurement
from bench.pipeline.status import run_status

REPO = Path(__file__).resolve().parents[1]
SLEEPY = "tests.test_interleave:sleepy_net"
FAST = {"device": "cpu", "threads": 1, "min_iters": 3, "min_time_s": 0.05, "warmup_max_s": 0.2,
        "warmup_min_iters": 1}


class SleepyNet(nn.Module):
    """An inference step that takes `sleep_ms` (plus a tiny conv): a latency with a known floor."""

    task = "cls"
    default_input_size = 8

    def __init__(self, sleep_ms: float, alloc_mb: int = 0):
        super().__init__()
        self.num_classes = 2
        self.sleep_ms, self.alloc_mb = sleep_ms, alloc_mb
        self.stem = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = torch.ones(self.alloc_mb * 2**20 // 4) if self.alloc_mb else None  # touched: resident
        time.sleep(self.sleep_ms / 1000)
        out = self.stem(x)
        return out + block[-1] if block is not None else out


def sleepy_net(sleep_ms: float = 1.0, alloc_mb: int = 0) -> nn.Module:
    return SleepyNet(sleep_ms, alloc_mb)


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A finished run (debug executor) of two latency cells, 2 ms and 8 ms, and one complexity cell."""
    monkeypatch.syspath_prepend(str(REPO))
    grid = {"name": "sleepy", "description": "interleave tests",
            "base": {"model": SLEEPY, "measure": ["complexity", "latency"], "input_size": 8,
                     "latency": dict(FAST)},
            "axes": {"model_args.sleep_ms": [2.0, 8.0]},
            "include": [{"measure": ["complexity"], "model_args": {"sleep_ms": 0.0}}]}
    path = tmp_path / "sleepy.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    run = tmp_path / "run"
    result = launch(path, cluster="debug", run_dir=run)
    assert result.finished and result.ok and len(result.submitted) == 3
    return run


def _records(run: Path) -> dict[float, dict]:
    out = {}
    for path in (run / "records").glob("*.json"):
        record = read_record(path)
        out[record["config"]["model_args"]["sleep_ms"]] = record
    return out


def _seen(run: Path) -> dict[float, dict]:
    """The records as readers see them: each with its newest re-measurement applied."""
    latest, corrupt = latest_remeasurements(run / "records")
    assert not corrupt
    return {k: with_remeasurement(r, latest[r["cell_id"]][1]) if r["cell_id"] in latest else r
            for k, r in _records(run).items()}


def _record_bytes(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (run / "records").glob("*.json")}


def _cell_ids(run: Path) -> list[str]:
    return [r["cell_id"] for r in _records(run).values() if "latency" in r["config"]["measure"]]


def _parse_rows(out: str, fmt: str) -> list[dict]:
    """Rows of `--format json` (one array), `jsonl` (a document per line) or `csv`."""
    if fmt == "json":
        return json.loads(out)
    if fmt == "jsonl":
        return [json.loads(line) for line in out.splitlines()]
    return list(csv.DictReader(io.StringIO(out)))


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_cli_rows_hold_the_updated_records_values(run_dir, capsys, fmt):
    assert cli_main(["interleave", str(run_dir), "--rounds", "2", "--min-time-s", "0.02", "--format", fmt]) == 0
    out = capsys.readouterr().out
    rows = _parse_rows(out, fmt)
    records = {r["cell_id"]: r for r in _seen(run_dir).values()}
    assert sorted(row["cell_id"] for row in rows) == sorted(_cell_ids(run_dir))
    for row in rows:
        m = records[row["cell_id"]]["metrics"]
        value = (lambda key: row[key]) if fmt != "csv" else (lambda key: json.loads(row[key]))
        assert row["model"] == SLEEPY and value("infer_img_size") == 8
        assert value("infer_step_time") == m["latency_ms_p50"]
        assert value("infer_samples_per_sec") == m["throughput_img_s"]
        assert value("infer_batch_size") == m["batch_size_used"] and value("latency_rounds") == 2
        assert value("latency_round_p50_ms") == m["latency_round_p50_ms"]
        assert row["latency_verdict"] == m["latency_verdict"] and value("peak_mem_mb") == m["peak_mem_mb"]
    assert list(rows[0])[:6] == ["cell_id", "model", "infer_samples_per_sec", "infer_step_time", "infer_batch_size",
                                 "infer_img_size"]


def test_cli_table_shows_each_cells_p50_and_rounds(run_dir, capsys):
    assert cli_main(["interleave", str(run_dir), "--rounds", "2", "--min-time-s", "0.02"]) == 0
    table = capsys.readouterr().out
    for record in _seen(run_dir).values():
        if "latency" in record["config"]["measure"]:
            m = record["metrics"]
            (line,) = [line for line in table.splitlines() if line.startswith(record["cell_id"])]
            rounds = ", ".join(f"{v:.1f}" for v in m["latency_round_p50_ms"])
            assert f" {m['latency_ms_p50']:.2f} " in line and rounds in line


def test_round_orders_alternate_direction():
    assert inter.round_orders(3, 4) == [[0, 1, 2], [2, 1, 0], [0, 1, 2], [2, 1, 0]]


def test_combine_rounds_takes_medians_min_sum_and_max():
    rounds = [dict(latency_ms_p50=p, latency_ms_p20=p - 1, latency_ms_p80=p + 1, latency_ms_mean=p,
                   latency_ms_min=p - 2, latency_iters=10, peak_mem_mb=m, batch_size_used=4)
              for p, m in ((10.0, 100.0), (30.0, 120.0), (12.0, 90.0))]
    out = inter.combine_rounds(rounds)
    assert out["latency_ms_p50"] == 12.0 and out["latency_ms_p20"] == 11.0 and out["latency_ms_p80"] == 13.0
    assert out["latency_ms_min"] == 8.0 and out["latency_iters"] == 30 and out["peak_mem_mb"] == 120.0
    assert out["throughput_img_s"] == pytest.approx(4 / 0.012)
    assert out["latency_round_p50_ms"] == [10.0, 30.0, 12.0]
    assert out["latency_rounds"] == 3 and out["latency_protocol"] == "interleaved"


def test_combined_rounds_are_judged_again_and_keep_the_worst_machine_figures():
    def round_(p50, settled=True, load=0.5, steal=0.0, mem=10.0):
        return dict(latency_ms_p50=p50, latency_ms_p20=p50 * 0.98, latency_ms_p80=p50 * 1.02, latency_ms_mean=p50,
                    latency_ms_min=p50 * 0.9, latency_iters=10, peak_mem_mb=mem, process_peak_rss_mb=500 + mem,
                    warmup_settled=settled, loadavg_before=load, loadavg_after=load, steal_pct=steal, threads=1,
                    latency_verdict="ok" if settled else "noisy")

    calm = inter.combine_rounds([round_(10.0), round_(10.1, mem=12.0), round_(10.05)])
    assert calm["latency_verdict"] == "ok" and calm["latency_noise_reasons"] == []
    assert calm["peak_mem_mb"] == 12.0 and calm["process_peak_rss_mb"] == 512.0  # the cell's own worst round
    assert calm["warmup_settled"] is True and calm["latency_round_verdicts"] == ["ok", "ok", "ok"]
    rough = inter.combine_rounds([round_(10.0), round_(10.1, settled=False), round_(10.05, load=4.5, steal=3.0)])
    assert rough["latency_verdict"] == "noisy" and rough["warmup_settled"] is False
    assert rough["loadavg_after"] == 4.5 and rough["steal_pct"] == 3.0
    reasons = rough["latency_noise_reasons"]
    assert "warm-up did not settle (1 of 3 rounds)" in reasons
    assert any(r.startswith("load 4.50 before") for r in reasons) and any(r.startswith("steal 3.0") for r in reasons)
    drifting = inter.combine_rounds([round_(p) for p in (10.0, 14.0, 10.2, 13.8, 10.1)])
    assert any(r.startswith("rounds' p50 spread") for r in drifting["latency_noise_reasons"])


def test_each_cell_keeps_its_own_memory_figure(tmp_path, monkeypatch):
    """Cells interleaved in one process share its RSS; each keeps what ITS measurements added."""
    monkeypatch.syspath_prepend(str(REPO))
    grid = {"name": "hungry", "description": "memory per cell",
            "base": {"model": SLEEPY, "measure": ["latency"], "input_size": 8, "latency": dict(FAST)},
            "axes": {"model_args.alloc_mb": [4, 96]}}
    path = tmp_path / "hungry.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    run = tmp_path / "run"
    assert launch(path, cluster="debug", run_dir=run).ok
    updated = inter.interleave(run, rounds=2)
    memory = {r["config"]["model_args"]["alloc_mb"]: r["metrics"] for r in updated}
    if memory[96].get("peak_mem_method") is None:
        pytest.skip("no CPU memory figures on this platform")
    assert memory[96]["peak_mem_mb"] >= 90
    assert memory[4]["peak_mem_mb"] < 60  # not the 96 MiB cell's figure, nor the process's RSS
    assert memory[96]["process_peak_rss_mb"] > memory[96]["peak_mem_mb"]


def test_cli_marks_noisy_cells(run_dir, monkeypatch, caplog, capsys):
    import bench.measure.latency as latency

    monkeypatch.setattr(latency, "_loadavg_1min", lambda: 40.0)  # a machine far busier than 1 thread
    with caplog.at_level("INFO"):
        assert cli_main(["interleave", str(run_dir), "--rounds", "2", "--min-time-s", "0.02"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "vtbench.interleave"]
    table = capsys.readouterr().out.splitlines()  # the cells: a table on stdout, one line each
    cells = [line for line in table if line.startswith(tuple(_cell_ids(run_dir)))]
    assert len(cells) == 2 and all("NOISY: " in line and "load 40.00 before > 1 threads + 1" in line for line in cells)
    assert any("2 of 2 cell(s) are noisy" in line for line in lines)
    records = [r for r in _seen(run_dir).values() if "latency" in r["config"]["measure"]]
    assert all(r["metrics"]["latency_verdict"] == "noisy" for r in records)


def test_interleave_measures_in_alternating_order_and_updates_only_latency(run_dir, monkeypatch):
    before = _records(run_dir)
    order = []
    real_measure = inter._measure

    def spy(model, config, timing):
        order.append(config["model_args"]["sleep_ms"])
        return real_measure(model, config, timing)

    monkeypatch.setattr(inter, "_measure", spy)
    updated = inter.interleave(run_dir, rounds=3)
    assert order == [2.0, 8.0, 8.0, 2.0, 2.0, 8.0]  # the complexity-only cell is not a latency cell
    assert len(updated) == 2
    after = _seen(run_dir)
    assert after[0.0] == before[0.0]  # untouched
    for sleep_ms in (2.0, 8.0):
        m, old = after[sleep_ms]["metrics"], before[sleep_ms]["metrics"]
        assert m["latency_protocol"] == "interleaved" and m["latency_rounds"] == 3
        assert m["latency_cells_interleaved"] == 2
        assert m["latency_ms_p50"] == statistics.median(m["latency_round_p50_ms"])
        assert m["latency_ms_p50"] >= sleep_ms  # the sleep is a floor
        assert m["latency_single_pass"]["latency_ms_p50"] == old["latency_ms_p50"]
        assert m["gmacs"] == old["gmacs"] and m["params_m"] == old["params_m"]
        assert after[sleep_ms]["remeasured_at"]["previous_env"] == before[sleep_ms]["env"]
    assert after[8.0]["metrics"]["latency_ms_p50"] > after[2.0]["metrics"]["latency_ms_p50"] + 3
    assert [r["metrics"] for r in updated] == [after[2.0]["metrics"], after[8.0]["metrics"]]
    # A second pass keeps the ORIGINAL single-pass figures, not the first interleaved ones.
    inter.interleave(run_dir, rounds=2)
    again = _seen(run_dir)[2.0]["metrics"]
    assert again["latency_rounds"] == 2
    assert again["latency_single_pass"]["latency_ms_p50"] == before[2.0]["metrics"]["latency_ms_p50"]


def _fake_rounds(monkeypatch, p50: float) -> None:
    """Every round of every cell measures `p50` ms (latency_ms_p50; the other figures around it)."""
    def measure(model, config, timing):
        return {"latency_ms_p50": p50, "latency_ms_p20": p50 * 0.99, "latency_ms_p80": p50 * 1.01,
                "latency_ms_mean": p50, "latency_ms_min": p50 * 0.98, "latency_iters": 5, "batch_size_used": 1,
                "peak_mem_mb": 1.5, "warmup_settled": True, "threads": 1, "mode": "inference"}

    monkeypatch.setattr(inter, "_measure", measure)


def test_interleave_leaves_each_record_byte_identical(run_dir, monkeypatch):
    before = _record_bytes(run_dir)
    _fake_rounds(monkeypatch, 100.0)
    inter.interleave(run_dir, rounds=2)
    assert _record_bytes(run_dir) == before  # same files, same bytes: nothing rewritten, nothing added


def test_interleave_writes_a_remeasurement_that_points_to_the_record(run_dir, monkeypatch):
    records = {r["cell_id"]: r for r in _records(run_dir).values()}
    _fake_rounds(monkeypatch, 100.0)
    inter.interleave(run_dir, rounds=3)
    files = sorted((run_dir / "records" / "remeasured").glob("*.json"))
    assert sorted(p.name for p in files) == sorted(f"{c}.1.json" for c in _cell_ids(run_dir))
    sessions = set()
    for path in files:
        remeasurement = read_remeasurement(path)
        Remeasurement.model_validate(json.loads(path.read_text()))
        record = records[remeasurement["remeasures"]]
        assert path.name == f"{record['cell_id']}.1.json" and remeasurement["number"] == 1
        assert remeasurement["schema"] == "vtbench.remeasurement/1"
        assert remeasurement["record_finished_at"] == record["finished_at"] and remeasurement["run"] == record["run"]
        session = remeasurement["session"]
        assert session["rounds"] == 3 and session["cells"] == 2 and session["protocol"] == "interleaved"
        assert session["started_at"] <= session["finished_at"]
        assert remeasurement["env"]["host"] and remeasurement["env"]["device"] == "cpu"
        assert remeasurement["metrics"]["latency_ms_p50"] == 100.0
        assert remeasurement["metrics"]["latency_round_p50_ms"] == [100.0] * 3
        assert "gmacs" not in remeasurement["metrics"]  # latency only: the rest stays the record's
        sessions.add(session["id"])
    assert len(sessions) == 1  # one invocation, one session for every cell


def _table_row(run: Path, cell_id: str) -> dict:
    with open(run / "report" / "table.csv", newline="") as handle:
        (row,) = [r for r in csv.DictReader(handle) if r["cell_ids"] == cell_id]
    return row


def test_report_takes_latency_from_the_newest_remeasurement_and_the_rest_from_the_record(run_dir, monkeypatch):
    records = {r["cell_id"]: r for r in _records(run_dir).values() if "latency" in r["config"]["measure"]}
    _fake_rounds(monkeypatch, 100.0)
    inter.interleave(run_dir, rounds=2)
    _fake_rounds(monkeypatch, 300.0)
    inter.interleave(run_dir, rounds=3)
    folder = run_dir / "records" / "remeasured"
    assert sorted(p.name for p in folder.glob("*.json")) == sorted(f"{c}.{n}.json" for c in records for n in (1, 2))
    assert cli_main(["report", str(run_dir), "--format", "csv,md"]) == 0
    for cell_id, record in records.items():
        row = _table_row(run_dir, cell_id)
        assert float(row["latency_ms_p50"]) == 300.0 and float(row["latency_rounds"]) == 3  # the newer one
        assert float(row["gmacs"]) == record["metrics"]["gmacs"]  # complexity: the record's
        assert row["latency_from"].startswith("interleaved re-measurement ") and row["latency_from"].endswith(", 3 rounds")
        # The single pass stays in the re-measured record (checked above), not in the flat table.
        assert "latency_single_pass" not in row
        # A figure the re-measurement lacks is empty, not the record's single-pass one.
        assert record["metrics"]["process_peak_rss_mb"] and not row.get("process_peak_rss_mb")
    md = (run_dir / "report" / "report.md").read_text()
    assert "latency from" in md and "interleaved re-measurement" in md and ", 3 rounds" in md
    assert "records/remeasured/ID.N.json" in md and "0 corrupt" in md


def test_status_counts_a_remeasured_cell_once(run_dir, monkeypatch, capsys):
    _fake_rounds(monkeypatch, 100.0)
    inter.interleave(run_dir, rounds=2)
    inter.interleave(run_dir, rounds=2)
    assert len(list((run_dir / "records" / "remeasured").glob("*.json"))) == 4  # two per latency cell
    status = run_status(run_dir)
    assert len(status.cells) == 3 and status.counts["ok"] == 3
    assert status.corrupt == {} and status.stray_records == 0
    assert cli_main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "3 cells: 3 ok" in out and "corrupt" not in out and "no longer in the grid" not in out


def test_a_remeasurement_named_for_another_cell_is_corrupt_and_not_used(run_dir, monkeypatch, capsys):
    first, second = sorted(_cell_ids(run_dir))
    records = {r["cell_id"]: r for r in _records(run_dir).values()}
    _fake_rounds(monkeypatch, 100.0)
    inter.interleave(run_dir, rounds=2, only=[first])
    folder = run_dir / "records" / "remeasured"
    planted = folder / f"{second}.1.json"
    planted.write_bytes((folder / f"{first}.1.json").read_bytes())  # `remeasures` says `first`
    with pytest.raises(Exception, match="differs from its file name"):
        read_remeasurement(planted)
    assert cli_main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"corrupt record remeasured/{second}.1.json" in out and "3 cells: 3 ok" in out
    assert cli_main(["report", str(run_dir), "--format", "csv,md"]) == 0
    assert float(_table_row(run_dir, first)["latency_ms_p50"]) == 100.0
    # `second` keeps its record's own latency; the planted file is listed, not used.
    assert float(_table_row(run_dir, second)["latency_ms_p50"]) == records[second]["metrics"]["latency_ms_p50"]
    md = (run_dir / "report" / "report.md").read_text()
    assert "### Corrupt record files (1)" in md and f"{second}.1.json" in md


def test_interleave_refuses_unfinished_runs_and_bad_options(run_dir, tmp_path):
    with pytest.raises(UsageError, match="at least 2"):
        inter.interleave(run_dir, rounds=1)
    with pytest.raises(UsageError, match="not latency cells"):
        inter.interleave(run_dir, rounds=2, only=["nosuchcell"])
    victim = next(p for p in (run_dir / "records").glob("*.json")
                  if "latency" in read_record(p)["config"]["measure"])
    victim.unlink()
    with pytest.raises(UsageError, match="no ok record"):
        inter.interleave(run_dir, rounds=2)
    with pytest.raises(UsageError, match="not a run folder"):
        inter.interleave(tmp_path / "nowhere", rounds=2)


def test_cli_updates_records_and_rejects_a_non_run(run_dir, tmp_path, capsys):
    assert cli_main(["interleave", str(run_dir), "--rounds", "2", "--min-time-s", "0.02"]) == 0
    assert all(r["metrics"].get("latency_rounds") == 2 for r in _seen(run_dir).values()
               if "latency" in r["config"]["measure"])
    assert cli_main(["report", str(run_dir)]) == 0  # the re-measured cells make a report
    table = (run_dir / "report" / "table.csv").read_text()
    assert "latency_protocol" in table and "interleaved" in table and "latency_from" in table
    assert cli_main(["interleave", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a run folder" in err[0]


def test_combine_stages_takes_each_stages_median_over_rounds():
    rounds = [{"stem": 1.0, "head": 4.0}, {"stem": 3.0, "head": 2.0}, {"stem": 2.0}]
    assert inter.combine_stages(rounds) == {"stage_ms_stem": 2.0, "stage_ms_head": 3.0}


def test_ceiling_metrics_keep_the_higher_of_start_and_end_and_both():
    start = {"gemm_tflops": 0.5, "copy_gb_s": 9.0, "gemm_n": 2048, "copy_mib": 256, "dtype": "fp32"}
    end = {**start, "gemm_tflops": 0.7, "copy_gb_s": 8.0}
    m = inter.ceiling_metrics(start, end)
    assert m["peak_gemm_tflops"] == 0.7 and m["peak_copy_gb_s"] == 9.0
    assert (m["peak_gemm_tflops_start"], m["peak_gemm_tflops_end"]) == (0.5, 0.7)
    assert (m["peak_copy_gb_s_start"], m["peak_copy_gb_s_end"]) == (9.0, 8.0)
    assert m["peak_gemm_n"] == 2048 and m["peak_dtype"] == "fp32"


def test_interleave_without_flags_adds_no_stage_or_ceiling_figures(run_dir, monkeypatch):
    _fake_rounds(monkeypatch, 10.0)
    for record in inter.interleave(run_dir, rounds=2):
        assert not [k for k in record["metrics"] if k.startswith(("stage_ms_", "peak_gemm", "peak_copy"))]


def test_interleave_stages_and_peak_land_in_each_remeasurement(run_dir, monkeypatch):
    import bench.measure.roofline as roofline

    _fake_rounds(monkeypatch, 10.0)
    calls = []

    def fake_peak(device, dtype, *, threads=None):
        calls.append((device, dtype, threads))
        return {"gemm_tflops": 0.1 * len(calls), "copy_gb_s": 5.0, "gemm_n": 64, "copy_mib": 1, "dtype": dtype}

    monkeypatch.setattr(roofline, "measure_peak", fake_peak)
    updated = inter.interleave(run_dir, rounds=2, stages=True, peak=True)
    assert calls == [("cpu", "fp32", 1), ("cpu", "fp32", 1)]  # one setting: before and after the rounds
    for record in updated:
        m = record["metrics"]
        assert m["stage_ms_stem"] > 0 and m["stage_iters"] == 5 and m["stage_timing"] == "forward_hooks_eager"
        assert m["peak_gemm_tflops"] == 0.2 and m["peak_gemm_tflops_start"] == 0.1
        assert m["peak_gemm_tflops_end"] == 0.2 and m["peak_copy_gb_s"] == 5.0
    (path, remeasurement), *_ = latest_remeasurements(run_dir / "records")[0].values()
    assert "stage_ms_stem" in remeasurement["metrics"] and "peak_gemm_tflops" in remeasurement["metrics"]
