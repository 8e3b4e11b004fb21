"""The typed contracts (bench/core/contracts.py): cells and records, and the committed runs they must keep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.core.contracts import (SCHEMA, CellConfig, LatencyOptions, Record, TrainOptions, ValidationError,
                             problems_of)
from bench.measure.data import IGNORE_INDEX
from bench.pipeline.grid import load_grid
from bench.core.records import CorruptRecord, make_record, read_record, write_record
from models import model_facts

REPO = Path(__file__).resolve().parents[1]
ENV = {"host": "fixture-host", "device_name": "Fixture CPU", "threads": 1}
CELL = {"model": "vt_resnet18", "model_args": {"num_classes": 10, "stem": "cifar"}, "measure": ["complexity"],
        "input_size": 16, "seed": 0, "complexity": {}, "latency": {}, "train": {}}


def _problems(data: dict) -> list[str]:
    with pytest.raises(ValidationError) as info:
        CellConfig.model_validate(data)
    return problems_of(info.value, CellConfig, data)


def test_every_problem_of_a_bad_cell_is_reported_at_once():
    bad = {**CELL, "measure": ["complexity", "latncy"], "input_size": [8, 8, 8], "seed": -1,
           "latency": {"dtype": "fp8", "batch_size": 0, "compile": "fast"}, "train": {"epochs": "many"}}
    problems = _problems(bad)
    assert problems == [
        "measure: ['complexity', 'latncy'] is not a non-empty list of distinct complexity, latency, train",
        "input_size: [8, 8, 8] is not a positive integer or [H, W] (required)",
        "seed: -1 is not an integer >= 0",
        "latency.batch_size: 0 is not a positive integer",
        "latency.dtype: 'fp8' is not one of fp32, bf16, fp16",
        "latency.compile: 'fast' is not null or one of default, reduce-overhead, max-autotune, "
        "max-autotune-no-cudagraphs",
        "train.epochs: 'many' is not an integer",
    ]


def test_an_extra_key_is_refused_by_name():
    (problem,) = _problems({**CELL, "latency": {"batch_sise": 2}})
    assert problem.startswith("latency: unknown key 'batch_sise' (did you mean batch_size") and "allowed: device," in problem
    (problem,) = _problems({**CELL, "colour": "blue"})
    assert problem.startswith("cell: unknown key 'colour'")


def test_a_cell_is_kept_as_given_and_compile_is_the_one_alias():
    given = {**CELL, "measure": ["latency", "train"], "input_size": [16, 24],
             "latency": {"device": "cpu", "batch_size": 2, "compile": None, "min_time_s": 1},
             "train": {"lr": "1e-4", "warmup_epochs": 1, "amp": False}}
    cell = CellConfig.model_validate(given)
    assert cell.to_config() == given  # no value coerced, no default key added: the cell id stays
    assert cell.latency.measure_kwargs() == {"device": "cpu", "compile_mode": None, "min_time_s": 1}
    parsed = TrainOptions.parse(given["train"])
    assert parsed["lr"] == 1e-4 and isinstance(parsed["warmup_epochs"], float)
    assert LatencyOptions.model_fields["compile_mode"].alias == "compile"
    assert TrainOptions.model_fields["ignore_index"].default == IGNORE_INDEX


@pytest.mark.parametrize("run", ["fashion_ablation", "paper_complexity", "token_sweep"])
def test_committed_grids_give_the_cell_ids_of_their_committed_records(run):
    grid = load_grid(REPO / "experiments" / f"{run}.yaml")
    ids = {cell.cell_id for cell in grid.cells}
    recorded = {path.stem for path in (REPO / "results" / run / "records").glob("*.json")}
    assert recorded and ids == recorded
    for cell in grid.cells:
        assert CellConfig.model_validate(cell.config).to_config() == cell.config


def test_a_v1_record_is_read_without_a_model_block():
    path = next((REPO / "results" / "token_sweep" / "records").glob("*.json"))  # all 42 are vtbench.record/1
    assert json.loads(path.read_text())["schema"] == "vtbench.record/1"
    record = read_record(path)
    assert "model" not in record and Record.model_validate(record).model is None


def test_a_v2_record_round_trips(tmp_path):
    record = make_record(CELL, metrics={"gmacs": 0.5, "params_m": 11.0, "unsupported_ops": {"aten::x": 1}},
                         env=ENV, run="r")
    assert record["schema"] == SCHEMA == "vtbench.record/2"
    path = write_record(tmp_path, record)
    assert read_record(path) == record
    typed = Record.model_validate(record)
    assert typed.model_dump(by_alias=True, exclude_unset=True) == record


@pytest.mark.parametrize("metric", ["gmacs", "top1", "latency_ms_p50"])
@pytest.mark.parametrize("value", ["1.5", True, [1.0]])
def test_a_record_with_a_wrongly_typed_metric_is_corrupt(tmp_path, metric, value):
    record = make_record(CELL, metrics={"gmacs": 1.0}, env=ENV)
    path = tmp_path / f"{record['cell_id']}.json"
    path.write_text(json.dumps({**record, "metrics": {**record["metrics"], metric: value}}))
    with pytest.raises(CorruptRecord, match=f"metric {metric} must be a finite number or null"):
        read_record(path)


def test_the_model_block_is_the_registrys_for_a_registered_model():
    facts = model_facts("vt_resnet18")
    block = make_record(CELL, env=ENV)["model"]
    assert block == {"family": facts.family, "task": facts.task, "depth": facts.depth,
                     "baseline": facts.baseline, "stages": list(facts.stages), "replaced": facts.replaced,
                     "defaults": dict(facts.defaults)}
    assert block["family"] == "vt_resnet" and block["baseline"] == "resnet18" and block["depth"] == 18
    # what the cell leaves unset is stated, so a later change of a default cannot rewrite it
    assert block["defaults"]["num_modules"] == 2 and block["defaults"]["numerics"] == "centered"


def test_the_model_block_of_an_import_path_model_is_family_other():
    block = make_record({**CELL, "model": "torchvision.models:resnet18"}, env=ENV)["model"]
    assert block == {"family": "other", "task": "cls", "depth": None, "baseline": None, "stages": [],
                     "replaced": None, "defaults": None}
