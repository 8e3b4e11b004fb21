"""Grid files: schema, validation (all problems at once), expansion, short names, ids, shipped grids."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from bench.measure import latency
from bench.pipeline import runner
from bench.core.contracts import LatencyOptions
from bench.core.errors import UsageError
from bench.pipeline.grid import DEFAULT_LATENCY, EXTRA_LATENCY_KEYS, build_grid, load_grid
from bench.core.records import cell_id_of

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def grid(**overrides) -> dict:
    raw = {"name": "g", "description": "test",
           "base": {"model": "vt_resnet18", "model_args": {"num_classes": 10, "stem": "cifar"},
                    "measure": ["complexity"], "input_size": 32}}
    raw.update(overrides)
    return raw


def problems_of(raw: dict) -> str:
    with pytest.raises(UsageError) as info:
        build_grid(raw)
    message = str(info.value)
    assert "\n" not in message  # the command line prints one line
    return message


def test_cartesian_product_with_short_names_and_include():
    g = build_grid(grid(axes={"num_tokens": [4, 8], "tokenizer": ["filter", "pooling"], "seed": [0, 1]},
                        include=[{"model": "resnet18", "axes": {"seed": [0, 1]}}]))
    assert len(g.cells) == 8 + 2
    vt = [c.config for c in g.cells if c.config["model"] == "vt_resnet18"]
    assert {(c["model_args"]["num_tokens"], c["model_args"]["tokenizer"], c["seed"]) for c in vt} == {
        (n, t, s) for n in (4, 8) for t in ("filter", "pooling") for s in (0, 1)}
    resnets = [c.config for c in g.cells if c.config["model"] == "resnet18"]
    assert all(c["model_args"] == {"num_classes": 10, "stem": "cifar"} for c in resnets)


def test_short_names_resolve_per_architecture_doc():
    g = build_grid(grid(base={"model": "resnet18", "model_args": {"num_classes": 10}, "input_size": 32,
                              "measure": ["latency", "train"], "train": {"epochs": 1}},
                        axes={"batch_size": [1, 8], "train.batch_size": [32], "dtype": ["fp32"],
                              "epochs": [2], "threads": [1], "stem": ["cifar"]}))
    config = g.cells[0].config
    assert config["latency"]["batch_size"] in (1, 8) and config["train"]["batch_size"] == 32
    assert config["train"]["epochs"] == 2 and config["latency"]["threads"] == 1
    assert config["model_args"]["stem"] == "cifar" and config["latency"]["dtype"] == "fp32"


def test_cells_are_resolved_and_ids_stable():
    g = build_grid(grid(base={"model": "resnet18", "input_size": 224, "measure": ["complexity", "latency"]}))
    (cell,) = g.cells
    assert cell.config == {"model": "resnet18", "model_args": {}, "measure": ["complexity", "latency"],
                           "input_size": 224, "seed": 0, "complexity": {}, "latency": DEFAULT_LATENCY,
                           "train": {}}
    assert cell.cell_id == cell_id_of(cell.config)
    again = build_grid(grid(base={"measure": ["complexity", "latency"], "input_size": 224, "model": "resnet18"}))
    assert again.cells[0].cell_id == cell.cell_id  # key order does not matter


def test_unmeasured_sections_are_emptied_and_duplicates_merged():
    g = build_grid(grid(axes={"batch_size": [1, 2, 4]}))  # latency is not measured
    assert len(g.cells) == 1 and g.duplicates == 2 and g.cells[0].config["latency"] == {}


def test_exclude_rules_match_all_keys_lists_and_globs():
    g = build_grid(grid(axes={"model": ["vt_resnet18", "vt_resnet34", "vt_resnet50"], "num_tokens": [4, 8, 16]},
                        exclude=[{"model": "vt_resnet[35]*", "num_tokens": [4, 8]}, {"num_tokens": 16, "model": "vt_resnet18"}]))
    pairs = {(c.config["model"], c.config["model_args"]["num_tokens"]) for c in g.cells}
    assert pairs == {("vt_resnet18", 4), ("vt_resnet18", 8), ("vt_resnet34", 16), ("vt_resnet50", 16)}


def test_exclude_matches_list_values_when_wrapped():
    g = build_grid(grid(axes={"input_size": [224, [800, 1216]]}, exclude=[{"input_size": [[800, 1216]]}]))
    assert [c.config["input_size"] for c in g.cells] == [224]


def test_every_problem_is_reported_at_once_with_did_you_mean():
    message = problems_of({
        "name": "bad name!", "descripton": "x",
        "base": {"model": "vt_resnet18", "model_args": {"num_classes": 10}, "measure": ["complexity", "latncy"],
                 "input_size": 0},
        "axes": {"num_tokns": [4], "seed": [], "model": ["vt_resnet18", "resnet19"], "tokenizer": ["bogus"]},
        "resources": {"gpus": 1, "timeout_min": -1},
    })
    for expected in ("name:", "'descripton' (did you mean description?)", "'num_tokns' (did you mean num_tokens",
                     "axes.seed: an axis is a non-empty list", "'resnet19' (did you mean resnet18",
                     "'gpus' (did you mean gpus_per_node?)", "resources.timeout_min", "measure:", "input_size:",
                     "tokenizer must be one of"):
        assert expected in message, expected
    assert message.split(": ", 2)[1].startswith("10 problems")


def test_model_options_that_do_not_apply_are_problems():
    message = problems_of(grid(axes={"model": ["resnet18", "vt_resnet18"], "num_tokens": [4]}))
    assert "model_args.num_tokens: does not apply to 'resnet18'" in message
    assert "exclude rule" in message


def test_bad_latency_and_train_values():
    message = problems_of(grid(base={"model": "resnet18", "input_size": 32, "measure": ["latency", "train"],
                                     "latency": {"dtype": "fp8", "device": "tpu", "batch_size": 0},
                                     "train": {"epoch": 3}}))
    assert "latency.dtype" in message and "latency.device" in message and "latency.batch_size" in message
    assert "train: unknown key 'epoch' (did you mean epochs?)" in message


def _latency_call(monkeypatch, section: dict) -> dict:
    """The keywords `measure_latency` gets for a cell whose latency section is `section` (through the runner)."""
    calls = []
    monkeypatch.setattr(latency, "measure_latency", lambda model, **kwargs: calls.append(kwargs) or {})
    runner.measure_cell_latency(None, {"input_size": 8, "latency": dict(section)})
    (kwargs,) = calls
    return kwargs


def test_grid_latency_keys_are_the_options_of_measure_latency(monkeypatch):
    """Every latency key a grid accepts (`LatencyOptions`) reaches `measure_latency` as one of its
    options, every option can be set from a grid, and the contract's defaults are the function's own."""
    params = inspect.signature(latency.measure_latency).parameters
    options = {name for name, p in params.items() if p.kind is p.KEYWORD_ONLY} | set(latency.DEFAULT_TIMING)
    fields = LatencyOptions.model_fields
    every_key = {f.alias or name: f.default for name, f in fields.items()}
    assert set(every_key) == set(DEFAULT_LATENCY) | set(EXTRA_LATENCY_KEYS)
    assert len(every_key) == len(DEFAULT_LATENCY) + len(EXTRA_LATENCY_KEYS)  # no key in both
    passed = _latency_call(monkeypatch, every_key)
    assert set(passed) == options
    defaults = {name: p.default for name, p in params.items() if p.default is not p.empty}
    defaults.update(latency.DEFAULT_TIMING)
    assert {name: passed[name] for name in defaults if name in passed} == \
        {name: defaults[name] for name in defaults if name in passed}
    assert _latency_call(monkeypatch, DEFAULT_LATENCY)["compile_mode"] is None  # the one renamed key


def test_import_path_models_are_accepted_and_checked():
    g = build_grid(grid(base={"model": "torchvision.models:resnet18", "model_args": {"num_classes": 10},
                              "input_size": 32}))
    assert g.cells[0].config["model"] == "torchvision.models:resnet18"
    assert "cannot import" in problems_of(grid(base={"model": "nope.nothing:f", "input_size": 32}))


def test_load_grid_reads_yaml_and_reports_missing_file(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid()))
    g = load_grid(path)
    assert g.text == path.read_text() and g.name == "g"
    with pytest.raises(UsageError, match="not found"):
        load_grid(tmp_path / "missing.yaml")
    path.write_text("name: [unclosed")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_grid(path)


def test_resources_are_parsed():
    g = build_grid(grid(resources={"timeout_min": 30, "tasks_per_node": 2, "array_parallelism": 3,
                                   "partition": "gpu", "mem_gb": 8}))
    r = g.resources
    assert (r.timeout_min, r.tasks_per_node, r.array_parallelism, r.partition, r.mem_gb) == (30, 2, 3, "gpu", 8)


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_grids_validate(path):
    g = load_grid(path)
    assert g.name == path.stem and g.cells and g.description


def test_shipped_grids_have_the_promised_shape():
    names = {p.stem for p in EXPERIMENTS.glob("*.yaml")}
    assert {"paper_complexity", "token_sweep", "tokenizer_ablation", "projector_ablation", "transformer_ablation",
            "fpn_vs_vtfpn", "smoke", "digits_ablation", "imagenet_repro"} <= names
    paper = load_grid(EXPERIMENTS / "paper_complexity.yaml")
    assert len({c.config["model"] for c in paper.cells}) == 12
    assert all(c.config["measure"] == ["complexity"] for c in paper.cells)
    sweep = load_grid(EXPERIMENTS / "token_sweep.yaml")
    tokens = {c.config["model_args"]["num_tokens"] for c in sweep.cells if "num_tokens" in c.config["model_args"]}
    assert min(tokens) == 4 and max(tokens) == 64
    digits = load_grid(EXPERIMENTS / "digits_ablation.yaml")
    vt = [c for c in digits.cells if c.config["model"] == "vt_resnet18"]
    assert len(vt) == 4 * 4 * 2 and len(digits.cells) == len(vt) + 2
    repro = load_grid(EXPERIMENTS / "imagenet_repro.yaml")
    r = repro.resources
    assert r.nodes * r.tasks_per_node == 8 and r.nodes * r.gpus_per_node == 8
    train = repro.cells[0].config["train"]
    assert (train["epochs"], train["batch_size"], train["lr"], train["momentum"], train["weight_decay"]) == (
        90, 256, 0.1, 0.9, 4e-5)
