"""The GPU protocol without a GPU: scripts/gpu_check.sh's phases and budget, its CPU dry run, and the
speed study's GPU grid (modes, L2 flush, dry run).

The dry run is the script's CPU form: every phase's command runs, the gpu tests collected and each
speed phase's GPU grid built and checked by `vtbench speed --dry-run`, so that a phase broken by a
change fails here and not on the next lent GPU.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

import bench.studies.speed as speed
from bench.cli import main as cli_main
from bench.core.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
BUDGET_S = 8 * 60
SETUP_S = 30  # the dependency check before the first phase
PHASES = ("env", "tests", "speed", "compile", "flush", "fpn")


def phase_lines() -> dict[str, tuple[int, str]]:
    """name -> (time limit, the rest of its line, continuation joined) of every `phase NAME LIMIT ...` call."""
    text = re.sub(r"\\\n\s*", " ", SCRIPT.read_text())
    return {m.group(1): (int(m.group(2)), m.group(3))
            for m in re.finditer(r"^phase (\w+) (\d+) (.*)$", text, re.M)}


def test_the_phases_are_bounded_and_their_limits_fit_eight_minutes():
    lines = phase_lines()
    assert tuple(lines) == PHASES
    assert sum(limit for limit, _ in lines.values()) + SETUP_S <= BUDGET_S
    assert "timeout --signal=INT" in SCRIPT.read_text()  # each limit is enforced, not only stated


def speed_phase_args(rest: str, out: Path) -> list[str]:
    """A speed phase's `vtbench speed` flags after the shared ones, with its --out moved under `out`."""
    return shlex.split(rest.replace('"${speed[@]}"', "").replace('"$dest', '"' + str(out)))


def test_every_speed_phase_is_a_valid_gpu_grid_of_the_protocol(tmp_path, capsys):
    """Each speed phase's exact flags, with the script's shared ones and --dry-run, in this process:
    the cells are built and checked as a measurement checks them, and cover what the issue asks."""
    shared = shlex.split(re.search(r"^speed=\((.*)\)$", SCRIPT.read_text(), re.M).group(1))
    assert shared[:4] == ["python3", "-m", "bench", "speed"] and "--gpu" in shared
    planned = {}
    for name, (_, rest) in phase_lines().items():
        if '"${speed[@]}"' not in rest:
            continue
        args = speed_phase_args(rest, tmp_path)
        assert cli_main(shared[3:] + args + ["--dry-run", "--format", "json"]) == 0, name
        planned[name] = json.loads(capsys.readouterr().out)
        assert not Path(args[args.index("--out") + 1]).exists(), name  # a dry run writes nothing
    modes = {(row["mode"], row["flush_l2"]) for rows in planned.values() for row in rows}
    assert {("cuda_graphs", False), ("compile_reduce_overhead", False), ("compile_max_autotune", False),
            ("cuda_graphs", True)} <= modes
    targets = {(r["model"], r["batch_size"]) for r in planned["speed"] if r["mode"] == "cuda_graphs"}
    assert {(m, b) for m in ("resnet18", "vt_resnet18", "resnet50", "vt_resnet50") for b in (64, 256)} <= targets
    assert {r["model"] for r in planned["fpn"]} == {"fpn_r50", "vt_fpn_r50"}
    assert {r["dtype"] for rows in planned.values() for r in rows} == {"bf16"}


def test_the_gpu_grid_states_every_mode_key_so_no_mode_inherits_the_firsts():
    """The grid's first block is its base: a compile cell after a CUDA-graph one must not inherit
    cuda_graphs (torch.compile's reduce-overhead and max-autotune refuse it)."""
    opts = speed.study_options(gpu=True, dry_run=True, pairs=["r18"], batch_sizes=[64],
                               modes=["cuda_graphs", "compile_reduce_overhead", "compile_max_autotune", "eager"])
    rows = speed.planned_cells(opts)
    assert [(r["model"], r["mode"]) for r in rows] == [
        (m, mode) for mode in opts.modes for m in ("resnet18", "vt_resnet18")]
    from bench.pipeline.grid import build_grid

    latency = {(c.config["model"], c.config["latency"]["compile"]): c.config["latency"]
               for c in build_grid(speed.study_grid(opts)).cells}
    assert latency[("resnet18", "max-autotune")]["cuda_graphs"] is False
    assert latency[("resnet18", "reduce-overhead")]["cuda_graphs"] is False
    assert latency[("resnet18", None)]["cuda_graphs"] is False  # eager, last


def test_the_gpu_study_times_torch_compiles_cuda_graph_modes_beside_eager_and_cuda_graphs():
    assert speed.GRID_MODES["compile_reduce_overhead"] == {"compile": "reduce-overhead"}
    assert speed.GRID_MODES["compile_max_autotune"] == {"compile": "max-autotune"}
    assert set(speed.GPU_DEFAULTS["modes"]) == {"eager", "cuda_graphs", "compile", "compile_reduce_overhead",
                                                "compile_max_autotune"}
    assert speed.mode_of({"compile": "max-autotune", "cuda_graphs": False}) == "compile_max_autotune"
    assert speed.mode_of({"compile": None, "cuda_graphs": True}) == "cuda_graphs"


def test_flush_l2_is_a_cell_key_of_the_gpu_study_and_refused_on_a_cpu():
    opts = speed.study_options(gpu=True, dry_run=True, pairs=["r18"], batch_sizes=[1], modes=["cuda_graphs"],
                               flush_l2=True)
    grid = speed.study_grid(opts)
    assert grid["base"]["latency"]["flush_l2"] is True
    assert all(row["flush_l2"] for row in speed.planned_cells(opts))
    unflushed = speed.planned_cells(speed.study_options(gpu=True, dry_run=True, pairs=["r18"], batch_sizes=[1],
                                                        modes=["cuda_graphs"]))
    # Flushed and unflushed cells are different cells (never one measurement standing for the other).
    assert {r["cell_id"] for r in unflushed}.isdisjoint(r["cell_id"] for r in speed.planned_cells(opts))
    with pytest.raises(UsageError, match="--flush-l2 needs --gpu"):
        speed.study_options(flush_l2=True)


def test_the_dry_run_of_the_gpu_study_needs_no_gpu_but_the_study_does(monkeypatch):
    monkeypatch.setattr(speed, "_cuda_available", lambda: False)
    assert speed.study_options(gpu=True, dry_run=True).gpu
    with pytest.raises(UsageError, match="--gpu needs CUDA"):
        speed.study_options(gpu=True)


def test_speed_dry_run_prints_the_cells_and_measures_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(speed, "launch_cells", lambda *a, **k: pytest.fail("a dry run launched cells"))
    out = tmp_path / "s"
    assert cli_main(["speed", "--gpu", "--pairs", "r18", "--batch-size", "64", "--modes", "cuda_graphs",
                     "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("dry run: 2 cell(s) planned, nothing measured")
    assert "vt_resnet18" in printed and "&" not in printed and not out.exists()


@pytest.mark.slow
def test_the_scripts_dry_run_runs_every_phase_on_a_cpu(tmp_path):
    """`scripts/gpu_check.sh --dry-run`: every phase runs (gpu tests collected, grids checked), the
    results land in one folder and in $OUT's archive, and the script's status is the phases'."""
    dest, out = tmp_path / "check", tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OUT": str(out)}
    env.pop("GPU_CHECK_PHASES", None)
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(dest)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    statuses = dict(re.findall(r"^(\w+) rc=(\d+) ", (dest / "phases.txt").read_text(), re.M))
    assert statuses == {name: "0" for name in PHASES}
    assert "test_per_stage_cuda_graphs_time_every_stage_of_a_vt_model" in (dest / "tests.log").read_text()
    assert (dest / "junit.xml").is_file() and (dest / "env.txt").is_file()
    # speed and fpn: each VT model in the reference and the fused form beside its baseline
    for name, cells in (("speed", 12), ("compile", 4), ("flush", 4), ("fpn", 3)):
        assert f"dry run: {cells} cell(s) planned" in (dest / f"{name}.log").read_text(), name
    assert "fused" in (dest / "speed.log").read_text() and "fused" in (dest / "fpn.log").read_text()
    assert (out / "gpu_check.tar.gz").is_file() and (out / "phases.txt").is_file()


def test_the_dry_run_is_chosen_by_flag_or_variable_and_a_failed_phase_fails_the_script(tmp_path):
    """Only the env phase (GPU_CHECK_PHASES), once by GPU_CHECK_DRY_RUN=1 and once with a phase made
    to fail: the script's status says so."""
    env = {**os.environ, "GPU_CHECK_DRY_RUN": "1", "GPU_CHECK_PHASES": "env"}
    env.pop("OUT", None)
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "a")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0 and "dry run:" in done.stdout, done.stdout + done.stderr
    assert re.fullmatch(r"env rc=0 \d+s\n", (tmp_path / "a" / "phases.txt").read_text())
    broken = tmp_path / "scripts" / "gpu_check.sh"
    broken.parent.mkdir()
    broken.write_text(SCRIPT.read_text().replace("phase env 30 python3 -c '",
                                                 "phase env 30 python3 -c 'raise SystemExit(3)\n"))
    done = subprocess.run(["bash", str(broken), str(tmp_path / "b")], capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO)
    assert done.returncode == 1 and "env rc=3" in (tmp_path / "b" / "phases.txt").read_text()
