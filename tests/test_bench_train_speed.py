"""scripts/bench_train_speed.py: one row per lever, each with its images/s; bad input exits 2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_train_speed.py"


def _script():
    spec = importlib.util.spec_from_file_location("bench_train_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_grid(tmp_path):
    grid = {"name": "tiny", "description": "one tiny cell",
            "base": {"model": "resnet18", "model_args": {"num_classes": 10, "stem": "cifar", "width": 0.125},
                     "measure": ["train"], "input_size": 8,
                     "train": {"dataset": "digits", "epochs": 1, "batch_size": 8, "threads": 1}},
            "axes": {"seed": [0]}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_every_lever_gets_a_row_against_base(tiny_grid, tmp_path):
    argv = [str(tiny_grid), "--levers", "base,channels_last,tensors", "--batch-sizes", "4,8", "--threads", "1",
            "--rounds", "2", "--steps", "1", "--warmup-steps", "1", "--out", str(tmp_path / "out")]
    assert _script().main(argv) == 0
    rows = json.loads((tmp_path / "out" / "train_speed.json").read_text())["rows"]
    assert [(r["lever"], r["batch_size"]) for r in rows] == [
        ("base", 4), ("base", 8), ("channels_last", 4), ("channels_last", 8), ("tensors", 4), ("tensors", 8)]
    assert all(len(r["images_per_s"]) == 2 and r["images_per_s_median"] > 0 for r in rows)
    assert "| tensors | 8 | 1 |" in (tmp_path / "out" / "train_speed.md").read_text()


def test_unknown_cell_or_lever_exits_2(tiny_grid):
    script = _script()
    assert script.main([str(tiny_grid), "--cell", "zz"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        script.main([str(tiny_grid), "--levers", "fast"])
    assert exit_info.value.code == 2
