"""Records of one configuration that ran under different model defaults are not pooled in a report."""

from __future__ import annotations

from bench.analysis.load import aggregate, load_runs
from bench.core.records import make_record, write_record

ENV = {"host": "fixture-host", "device_name": "Fixture CPU", "torch": "2.x", "threads": 1}


def _write(records_dir, seed, top1, residual_init="zero_stage4", defaults=True):
    config = {"model": "resnet18", "model_args": {"num_classes": 10, "stem": "cifar"}, "measure": ["train"],
              "input_size": 32, "seed": seed, "train": {"dataset": "digits", "epochs": 3}}
    record = make_record(config, metrics={"top1": top1}, env=ENV, run="defaults")
    if defaults:
        record["model"]["defaults"]["residual_init"] = residual_init
    else:
        record["model"].pop("defaults")
    write_record(records_dir, record)


def _groups(run):
    data = load_runs([run])
    table = aggregate(data)
    return data, sorted((int(n), round(float(t), 3)) for n, t in zip(table["n"], table["top1"]))


def test_a_default_that_changed_between_seeds_splits_the_configuration(tmp_path):
    run = tmp_path / "run"
    for seed, top1 in ((0, 96.0), (1, 95.0), (2, 97.0)):
        _write(run / "records", seed, top1)
    for seed, top1 in ((3, 67.0), (4, 68.0), (5, 66.0)):  # the same cell under the older trunk init
        _write(run / "records", seed, top1, residual_init=None)
    data, groups = _groups(run)
    assert groups == [(3, 67.0), (3, 96.0)]  # not one row of 6 seeds at 81.5
    assert any("different defaults of residual_init" in note for note in data.notes)


def test_the_same_defaults_or_unknown_ones_pool_as_before(tmp_path):
    run = tmp_path / "run"
    for seed, top1 in ((0, 96.0), (1, 95.0), (2, 97.0)):
        _write(run / "records", seed, top1)
    _write(run / "records", 3, 92.0, defaults=False)  # written before records carried defaults
    data, groups = _groups(run)
    assert groups == [(4, 95.0)]
    assert not any("different defaults" in note for note in data.notes)
