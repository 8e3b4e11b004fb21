"""Grids as untrusted text and as code: bounded YAML (aliases, nesting, size), resources in sane
ranges, escaped output, no import of a grid's modules before launch, and `--set axes.NAME`
reaching the include entries that sweep NAME.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.cli import main as cli_main
from bench.core.errors import UsageError
from bench.pipeline.grid import load_grid

REPO = Path(__file__).resolve().parents[1]
TINY = "tests.test_launch:tiny_net"


def _billion_laughs(indent: str) -> str:
    lines = [f'{indent}a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{indent}{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_inside_an_import_path_models_args_is_refused_fast(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text("name: bomb\nbase:\n  model: mypkg.nets:build\n  measure: [complexity]\n  input_size: 8\n"
                    "  model_args:\n" + _billion_laughs("    "))
    assert len(path.read_bytes()) < 1500
    started = time.monotonic()
    with pytest.raises(UsageError, match="aliases are expanded"):
        load_grid(path)
    assert time.monotonic() - started < 5


def test_an_alias_bomb_in_a_set_value_is_refused(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"name": "g", "base": {"model": "resnet18", "input_size": 32}}))
    laughs = ["lol"] * 10
    for _ in range(7):
        laughs = [laughs] * 10  # shared, as YAML aliases build it: 10^8 values once expanded
    with pytest.raises(UsageError, match="once aliases are expanded"):
        load_grid(path, overrides=[("base.model_args", {"x": laughs})])


def test_a_deeply_nested_grid_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("name: deep\nbase: " + "[" * 600 + "]" * 600 + "\n")
    assert cli_main(["launch", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "nested more than" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_resources_out_of_sane_ranges_are_refused(tmp_path):
    path = tmp_path / "res.yaml"
    path.write_text(yaml.safe_dump({"name": "res", "base": {"model": "resnet18", "input_size": 32},
                                    "resources": {"tasks_per_node": 100000, "cpus_per_task": 10**8,
                                                  "timeout_min": 10**21}}))
    with pytest.raises(UsageError) as caught:
        load_grid(path)
    for key in ("tasks_per_node", "cpus_per_task", "timeout_min"):
        assert f"resources.{key}" in str(caught.value)


def test_control_characters_in_a_grid_never_reach_the_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    path = tmp_path / "ansi.yaml"
    path.write_text(yaml.safe_dump({"name": "ansi", "base": {"model": TINY, "input_size": 8,
                                                             "model_args": {"fail": "\x1b[2J\x1b[31mhi"}}}))
    assert cli_main(["launch", str(path), "--dry-run", "--run-dir", str(tmp_path / "r")]) == 0
    captured = capsys.readouterr()
    assert "\x1b" not in captured.out and "\\x1b[31mhi" in captured.out


def test_an_error_about_a_key_with_a_newline_is_whole_on_one_line(tmp_path, capsys):
    path = tmp_path / "nl.yaml"
    path.write_text(yaml.safe_dump({"name": "nl", "base": {"model": "resnet18", "input_size": 32,
                                                           "model_args": {"num_to\nkens": 1}},
                                    "axes": {"seed": [0, 1]}}))
    assert cli_main(["launch", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model_args.num_to\\nkens: does not apply" in err
    assert err.endswith("give resnet18 its own include entry")  # the message is whole, not cut at the key


def _side_effect_module(tmp_path: Path, name: str) -> Path:
    marker = tmp_path / f"{name}.imported"
    (tmp_path / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('top-level code ran')\n"
        "def build(num_classes=10, width=4):\n    raise AssertionError('called')\n")
    return marker


def test_dry_run_neither_imports_nor_calls_an_import_path_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = _side_effect_module(tmp_path, "h4_sidefx_nets")
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"name": "g", "base": {"model": "h4_sidefx_nets:build", "input_size": 8,
                                                          "model_args": {"width": 8}}}))
    assert cli_main(["launch", str(path), "--dry-run", "--run-dir", str(tmp_path / "r")]) == 0
    assert not marker.exists(), "--dry-run ran the module's top-level code"
    assert "h4_sidefx_nets" not in sys.modules
    # ... and its options are still checked, from its source.
    path.write_text(yaml.safe_dump({"name": "g", "base": {"model": "h4_sidefx_nets:build", "input_size": 8,
                                                          "model_args": {"widht": 8}}}))
    with pytest.raises(UsageError, match="widht: does not apply"):
        load_grid(path)
    with pytest.raises(UsageError, match="has no attribute 'nope'"):
        from bench.pipeline.grid import build_grid

        build_grid({"name": "g", "base": {"model": "h4_sidefx_nets:nope", "input_size": 8}})
    assert not marker.exists()


def test_status_and_report_never_import_a_grids_modules(tmp_path, monkeypatch, capsys):
    from bench.core.records import make_record, write_json_atomic, write_record

    monkeypatch.chdir(tmp_path)
    marker = _side_effect_module(tmp_path, "h4_sidefx_report")
    config = {"model": "h4_sidefx_report:build", "model_args": {}, "measure": ["complexity"], "input_size": 8,
              "seed": 0, "complexity": {}, "latency": {}, "train": {}}
    run = tmp_path / "run"
    record = make_record(config, metrics={"gmacs": 1.0, "params_m": 1.0}, env={"host": "h"})
    write_record(run / "records", record)
    write_json_atomic(run / "cells.json", [{"cell_id": record["cell_id"], "config": config}])
    assert cli_main(["status", str(run)]) == 0
    assert cli_main(["report", str(run), "--format", "md"]) == 0
    assert not marker.exists() and "h4_sidefx_report" not in sys.modules


# ------------------------------------------------------------------ --set axes.NAME and include

def test_set_axis_reaches_the_include_entries_that_sweep_it(caplog):
    caplog.set_level(logging.INFO, logger="bench.pipeline.grid")
    grid = load_grid(REPO / "experiments" / "token_sweep.yaml", overrides=[("axes.num_tokens", [8, 16])])
    assert len(grid.cells) == 18  # 2 models x 3 tokenizers x 2 + 2 models x 2 (recurrent entry) + 2 ResNets
    tokens = {c.config["model_args"].get("num_tokens") for c in grid.cells}
    assert tokens == {8, 16, None}
    assert "include[0].axes.num_tokens is [8, 16] too" in caplog.text


def test_set_axis_names_an_include_entry_that_fixes_the_value(tmp_path, caplog):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"name": "g", "base": {"model": "vt_resnet18", "input_size": 32,
                                                          "model_args": {"num_classes": 10, "stem": "cifar"}},
                                    "axes": {"num_tokens": [4, 8]}, "include": [{"num_tokens": 32}]}))
    grid = load_grid(path, overrides=[("axes.num_tokens", [16])])
    assert sorted(c.config["model_args"]["num_tokens"] for c in grid.cells) == [16, 32]
    assert "include[0] keeps its own num_tokens=32" in caplog.text


@pytest.mark.parametrize("key, hint", [("axes.num_token", "did you mean num_tokens"),
                                       ("base.num_token", "did you mean num_tokens"),
                                       ("resources.timeout_mn", "did you mean timeout_min"),
                                       ("resourcs.timeout_min", "did you mean resources")])
def test_a_bad_set_key_gets_a_did_you_mean(key, hint):
    with pytest.raises(UsageError, match=hint):
        load_grid(REPO / "experiments" / "smoke.yaml", overrides=[(key, [8] if key.startswith("axes") else 8)])


def test_the_job_time_limit_derives_from_the_per_cell_timeout():
    from bench.core.contracts import Resources
    from bench.pipeline.launch import JOB_MARGIN_MIN, executor_parameters

    resources = Resources(timeout_min=30, local_parallelism=2)
    assert executor_parameters("slurm", resources, 100, "g")["timeout_min"] == 30 + JOB_MARGIN_MIN
    # a local worker runs 50 of the 100 cells in turn, and may wait one share for a slot
    assert executor_parameters("local", resources, 100, "g")["timeout_min"] == (30 + JOB_MARGIN_MIN) * 51
