"""`vtbench launch GRID --set KEY=VALUE`: a grid changed from the command line (bench.pipeline.grid.apply_overrides)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bench.cli import main as cli_main
from bench.core.errors import UsageError
from bench.pipeline.grid import apply_overrides, load_grid

RAW = {
    "name": "g",
    "base": {"model": "vt_resnet18", "model_args": {"num_classes": 10, "stem": "cifar"},
             "measure": ["complexity"], "input_size": 32},
    "axes": {"num_tokens": [4, 8, 16]},
    "include": [{"model": "resnet18"}],
}


def write(tmp_path: Path, raw: dict = RAW) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_base_keys_nested_and_short():
    raw = apply_overrides(RAW, [("base.input_size", 16), ("base.model_args.stem", "imagenet"),
                                ("base.num_tokens", 2), ("base.latency.threads", 1)])
    assert raw["base"]["input_size"] == 16
    assert raw["base"]["model_args"] == {"num_classes": 10, "stem": "imagenet", "num_tokens": 2}
    assert raw["base"]["latency"] == {"threads": 1}
    assert RAW["base"]["input_size"] == 32  # the given mapping is left alone


def test_axes_replace_add_and_same_setting_spelled_otherwise():
    raw = apply_overrides(RAW, [("axes.num_tokens", [8, 16]), ("axes.train.batch_size", [32, 64])])
    assert raw["axes"] == {"num_tokens": [8, 16], "train.batch_size": [32, 64]}  # a dotted axis name stays one key
    raw = apply_overrides(RAW, [("axes.model_args.num_tokens", [2])])
    assert raw["axes"] == {"model_args.num_tokens": [2]}  # replaces `num_tokens`, does not multiply it


def test_include_entries_whole_sections_and_resources():
    raw = apply_overrides(RAW, [("include.0.seed", 3), ("include.0.axes.seed", [0, 1]), ("exclude", []),
                                ("resources.timeout_min", 5), ("name", "g2")])
    assert raw["include"] == [{"model": "resnet18", "seed": 3, "axes": {"seed": [0, 1]}}]
    assert raw["exclude"] == [] and raw["resources"] == {"timeout_min": 5} and raw["name"] == "g2"


def test_every_bad_key_is_named_at_once():
    with pytest.raises(UsageError) as info:
        apply_overrides(RAW, [("bse.input_size", 1), ("base.num_tokns", 1), ("include.4.seed", 1),
                              ("base.input_size.x", 1)])
    message = str(info.value)
    assert "4 problems" in message and "\n" not in message
    assert "did you mean base" in message and "did you mean num_tokens" in message
    assert "include has 1 entry" in message and "base.input_size is 32" in message


def test_values_are_checked_with_the_rest_of_the_grid(tmp_path):
    with pytest.raises(UsageError) as info:
        load_grid(write(tmp_path), overrides=[("axes.num_tokns", [8]), ("base.input_size", -1)])
    assert "did you mean num_tokens" in str(info.value) and "input_size: -1" in str(info.value)


def test_launch_set_changes_the_cells_and_writes_the_overridden_grid(tmp_path, capsys):
    grid, run_dir = write(tmp_path), tmp_path / "run"
    argv = ["launch", str(grid), "--run-dir", str(run_dir), "--cluster", "debug",
            "--set", "axes.num_tokens=[8,16]", "--set", "base.input_size=16", "--set", "include=[]"]
    assert cli_main(argv) == 0
    cells = json.loads((run_dir / "cells.json").read_text())
    assert sorted(c["config"]["model_args"]["num_tokens"] for c in cells) == [8, 16]
    assert all(c["config"]["input_size"] == 16 for c in cells)
    written = (run_dir / "grid.yaml").read_text()
    assert written.startswith(f"# {grid} with --set axes.num_tokens=[8, 16] --set base.input_size=16")
    # the run folder's grid relaunches as is: the same cells, all done
    again = load_grid(run_dir / "grid.yaml")
    assert {c.cell_id for c in again.cells} == {c["cell_id"] for c in cells}
    assert yaml.safe_load(grid.read_text()) == RAW  # the grid file itself is untouched


def test_dry_run_with_set_and_bad_set_exit_2(tmp_path, capsys):
    grid = write(tmp_path)
    assert cli_main(["launch", str(grid), "--dry-run", "--set", "axes.num_tokens=[4]", "--set", "include=[]",
                     "--run-dir", str(tmp_path / "run")]) == 0
    assert not (tmp_path / "run").exists()
    capsys.readouterr()
    for bad in ("oops", "bse.input_size=1", "axes.num_tokens=[0]"):
        assert cli_main(["launch", str(grid), "--dry-run", "--set", bad]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
