"""Issue 12, items 9 and 12: a cap on grid size, validation cost per distinct model
configuration, and one-line errors (exit 1 or 2) for OS errors and the user's own code."""

from __future__ import annotations

import errno
import textwrap

import pytest
import yaml

from bench import cli
from bench.pipeline import grid
from bench.core.errors import UsageError
from bench.core.modelref import ModelRef


def _write_grid(path, axes, include=None, name="limits"):
    spec = {"name": name,
            "base": {"model": "vt_resnet18", "model_args": {"num_classes": 10},
                     "measure": ["complexity"], "input_size": 32},
            "axes": axes}
    if include is not None:
        spec["include"] = include
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def count_builds(monkeypatch):
    """Count model builds (the meta-device check calls ModelRef.build); start from an empty cache."""
    calls = []
    real_build = ModelRef.build

    def counting_build(self, **overrides):
        calls.append((self.ref, tuple(sorted(overrides.items()))))
        return real_build(self, **overrides)

    grid._meta_build_error.cache_clear()
    monkeypatch.setattr(ModelRef, "build", counting_build)
    yield calls
    grid._meta_build_error.cache_clear()


# ------------------------------------------------------------------------------ item 9: grid size
def test_cell_cap_is_checked_before_expanding(tmp_path, monkeypatch):
    """10^6 cells are refused from the axes' lengths alone: no cell is ever expanded."""
    def no_expansion(*args, **kwargs):
        raise AssertionError("the grid was expanded before its size was checked")

    monkeypatch.setattr(grid, "_expand", no_expansion)
    path = _write_grid(tmp_path / "huge.yaml", {"seed": list(range(1000)), "num_tokens": list(range(1, 1001))})
    with pytest.raises(UsageError, match=r"1000000 cells .*above the cap of 10000.*--max-cells"):
        grid.load_grid(path)


def test_cell_cap_sums_include_blocks_and_max_cells_raises_it(tmp_path, monkeypatch):
    monkeypatch.setattr(grid, "DEFAULT_MAX_CELLS", 5)
    path = _write_grid(tmp_path / "g.yaml", {"seed": [0, 1, 2]}, include=[{"axes": {"seed": [3, 4, 5]}}])
    with pytest.raises(UsageError, match=r"6 cells \(3 \+ 3, before exclude rules\), above the cap of 5"):
        grid.load_grid(path)
    assert len(grid.load_grid(path, max_cells=6).cells) == 6
    with grid.max_cells_allowed(6):
        assert len(grid.load_grid(path).cells) == 6


def test_launch_max_cells_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(grid, "DEFAULT_MAX_CELLS", 2)
    path = _write_grid(tmp_path / "g.yaml", {"seed": [0, 1, 2]})
    run_dir = str(tmp_path / "run")
    assert cli.main(["launch", str(path), "--dry-run", "--run-dir", run_dir]) == 2
    assert "above the cap of 2" in capsys.readouterr().err
    assert cli.main(["launch", str(path), "--dry-run", "--run-dir", run_dir, "--max-cells", "3"]) == 0
    assert not (tmp_path / "run").exists()


def test_one_meta_build_per_distinct_model_config(tmp_path, count_builds):
    """Cells that differ in seed (or anything outside model_args) share one build."""
    path = _write_grid(tmp_path / "g.yaml", {"num_tokens": [4, 8], "seed": list(range(500))})
    assert len(grid.load_grid(path).cells) == 1000
    assert len(count_builds) == 2


def test_meta_builds_are_capped_when_configs_are_many(tmp_path, monkeypatch, count_builds, caplog):
    """Past MAX_META_BUILDS distinct configurations the rest are checked by option names only."""
    monkeypatch.setattr(grid, "MAX_META_BUILDS", 3)
    path = _write_grid(tmp_path / "g.yaml", {"num_tokens": list(range(1, 21))})
    with caplog.at_level("WARNING", logger="bench.pipeline.grid"):
        assert len(grid.load_grid(path).cells) == 20
    assert len(count_builds) == 3
    assert "17 more are checked by option names only" in caplog.text


# --------------------------------------------------------------------------- item 12: error lines
USER_MODULE = """
    import sys
    from torch import nn

    def boom(**kwargs):
        raise RuntimeError("factory exploded")

    def quits(**kwargs):
        sys.exit(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            raise RuntimeError("forward exploded")

    def net(**kwargs):
        return Net()
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "limits_usermod.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "limits_usermod"


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_factory_exception_is_a_user_code_error(user_module, capsys):
    assert cli.main(["profile", f"{user_module}:boom", "--input-size", "8", "--no-latency"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.endswith(f"error in user code {user_module}:boom: RuntimeError: factory exploded")


def test_sys_exit_in_factory_is_not_success(user_module, capsys):
    assert cli.main(["profile", f"{user_module}:quits", "--input-size", "8", "--no-latency"]) == 1
    assert f"error in user code {user_module}:quits: SystemExit" in _one_line(capsys.readouterr().err)


def test_forward_exception_names_the_forward(user_module, capsys):
    assert cli.main(["profile", f"{user_module}:net", "--input-size", "8", "--no-latency"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert f"error in user code {user_module}:Net.forward: RuntimeError: forward exploded" in line


def test_verbose_keeps_the_traceback(user_module, caplog):
    with caplog.at_level("DEBUG", logger="vtbench"):
        assert cli.main(["-v", "profile", f"{user_module}:boom", "--input-size", "8", "--no-latency"]) == 1
    logged = [r for r in caplog.records if r.name == "vtbench" and r.exc_info]
    assert logged and "factory exploded" in caplog.text


def _small_grid(tmp_path):
    return str(_write_grid(tmp_path / "g.yaml", {"seed": [0]}))


def test_enospc_is_one_line_with_path_exit_1(tmp_path, monkeypatch, capsys):
    import bench.pipeline.launch

    target = tmp_path / "run" / "cells.json"

    def full_disk(run_dir, grid_):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(bench.pipeline.launch, "write_run_files", full_disk)
    assert cli.main(["launch", _small_grid(tmp_path), "--run-dir", str(tmp_path / "run")]) == 1
    assert _one_line(capsys.readouterr().err).endswith(f"{target}: No space left on device")


def test_enotdir_on_user_run_dir_is_bad_input(tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder")
    run_dir = tmp_path / "afile" / "run"
    assert cli.main(["launch", _small_grid(tmp_path), "--run-dir", str(run_dir)]) == 2
    assert "Not a directory" in _one_line(capsys.readouterr().err)


def test_refused_submission_shows_sbatch_last_line(tmp_path, monkeypatch, capsys):
    import bench.pipeline.launch
    from submitit.core.utils import FailedJobError

    def refused(*args, **kwargs):
        raise FailedJobError("sbatch: warning: something\nsbatch: error: Unable to contact slurm controller")

    monkeypatch.setattr(bench.pipeline.launch, "submit", refused)
    assert cli.main(["launch", _small_grid(tmp_path), "--run-dir", str(tmp_path / "run")]) == 1
    assert _one_line(capsys.readouterr().err).endswith("sbatch: error: Unable to contact slurm controller")


def test_a_vtbench_bug_is_one_line_exit_1_with_its_traceback_under_v(tmp_path, monkeypatch, capsys):
    """An error raised only in vtbench's own frames is a bug: exit 1 (never 2, "bad input"), one line
    that names it and points to -v, and -v prints its traceback."""
    import bench.pipeline.launch

    # A bench function with the wrong contract (it cannot iterate a Path), so launch fails inside
    # bench/ (a stand-in defined in this test file would count as user code).
    monkeypatch.setattr(bench.pipeline.launch, "plan_cells", grid._get)
    argv = ["launch", _small_grid(tmp_path), "--dry-run", "--run-dir", str(tmp_path / "run")]
    assert cli.main(argv) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("vtbench launch: error: TypeError: ") and "run again with -v" in line
    assert cli.main(["-v", *argv]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_an_internal_value_error_is_exit_1_and_a_refused_model_option_exit_2(tmp_path, monkeypatch, capsys):
    """A ValueError is bad input (exit 2) only where a model's builder refused the user's option; one
    raised by vtbench itself or a library under it (pandas) is an internal error, exit 1."""
    import bench.pipeline.launch

    def pandas_like(*args, **kwargs):
        raise ValueError("cannot reindex on an axis with duplicate labels")

    monkeypatch.setattr(bench.pipeline.launch, "plan_cells", pandas_like)
    monkeypatch.setattr(cli, "_user_code_frame", lambda exc: None)  # the stand-in plays vtbench's own code
    assert cli.main(["launch", _small_grid(tmp_path), "--dry-run", "--run-dir", str(tmp_path / "run")]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "ValueError: cannot reindex" in line and "-v" in line
    assert cli.main(["profile", "vt_resnet18", "--set", "tokenizer=kmeans", "--no-latency"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("vtbench profile: error:") and "kmeans" in line and "internal" not in line


def test_a_measurement_without_a_result_is_one_line_exit_1(tmp_path, monkeypatch, capsys):
    """A diverged training or a NaN evaluation (MeasurementError) is no vtbench bug: one line, no hint."""
    import bench.pipeline.launch
    from bench.core.errors import MeasurementError

    def diverged(*args, **kwargs):
        raise MeasurementError("training diverged: loss is nan at epoch 2")

    monkeypatch.setattr(bench.pipeline.launch, "plan_cells", diverged)
    assert cli.main(["launch", _small_grid(tmp_path), "--dry-run", "--run-dir", str(tmp_path / "run")]) == 1
    assert _one_line(capsys.readouterr().err) == \
        "vtbench launch: error: MeasurementError: training diverged: loss is nan at epoch 2"
