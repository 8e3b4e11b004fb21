"""Training that people can watch and continue: loggers, extending a run, one checkpoint per run.

Tiny models on `digits` at 8x8 (tests/test_train.py's), a few seconds each.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from bench.measure import checkpoint as ckpt
from bench.core.errors import UsageError
from bench.measure.train import TrainConfig, config_fingerprint, lr_factor, train, warmup_iterations
from tests.test_train import TINY, _config, _Killed, _kill_after

REPO = Path(__file__).resolve().parents[1]


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _checkpoint_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "checkpoint" in p.name)


# ------------------------------------------------------------------------------------ loggers
def test_csv_logger_writes_a_header_and_one_row_per_epoch_and_rewrites_on_resume(tmp_path, monkeypatch):
    cfg = _config(epochs=3, logger=["csv", "jsonl"])
    _kill_after(monkeypatch, 2)
    with pytest.raises(_Killed):
        train(TINY, {}, cfg, tmp_path, progress=False)
    # killed after the checkpoint of epoch 2, before its row: whole rows only, epoch 1's
    assert [r["epoch"] for r in _csv_rows(tmp_path / "metrics.csv")] == ["1"]
    monkeypatch.undo()
    metrics = train(TINY, {}, cfg, tmp_path, progress=False)
    rows = _csv_rows(tmp_path / "metrics.csv")
    assert list(rows[0]) == ["epoch", "lr", "train_loss", "test_loss", "top1", "top5", "images_per_s",
                             "epoch_time_s", "eval_time_s", "time"]
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]  # epoch 2 rewritten from the checkpoint
    history = _jsonl(tmp_path / "metrics.jsonl")
    for row, line in zip(rows, history):
        for key in ("lr", "train_loss", "test_loss", "top1", "images_per_s"):
            assert float(row[key]) == pytest.approx(line[key], rel=1e-12)
    assert float(rows[-1]["top1"]) == pytest.approx(metrics["top1"])
    assert float(rows[0]["lr"]) > 0 and float(rows[0]["images_per_s"]) > 0


def test_csv_logger_leaves_the_cells_of_unevaluated_epochs_empty(tmp_path):
    train(TINY, {}, _config(epochs=2, eval_every=2, logger="csv"), tmp_path, progress=False)
    rows = _csv_rows(tmp_path / "metrics.csv")
    assert rows[0]["top1"] == "" and rows[0]["test_loss"] == "" and float(rows[1]["top1"]) >= 0
    assert not (tmp_path / "metrics.jsonl").exists()  # only the loggers asked for write


def test_jsonl_is_the_default_logger_and_its_lines_keep_their_keys(tmp_path):
    assert TrainConfig().logger == ["jsonl"]
    train(TINY, {}, _config(epochs=1), tmp_path, progress=False)
    (line,) = _jsonl(tmp_path / "metrics.jsonl")
    assert set(line) == {"epoch", "lr", "train_loss", "epoch_time_s", "images_per_s", "test_loss",
                         "top1", "top5", "eval_time_s", "time"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "metrics.jsonl"]


def test_tensorboard_logger_writes_scalars_that_tensorboard_reads_back(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed: "
                                              "pip install 'vtbench[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(TINY, {}, _config(epochs=2, logger=["tensorboard"]), tmp_path, progress=False)
    train(TINY, {}, _config(epochs=3, logger=["tensorboard"]), tmp_path, progress=False)  # extended
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/images_per_s", "test/loss", "test/top1", "test/top5"} <= set(scalars)
    history = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["history"]
    for tag, key in (("train/loss", "train_loss"), ("test/top1", "top1"), ("train/lr", "lr"),
                     ("train/images_per_s", "images_per_s")):
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [1, 2, 3], tag  # one curve across the resume
        assert [e.value for e in logged] == pytest.approx([h[key] for h in history], rel=1e-6), tag
    assert not (tmp_path / "metrics.jsonl").exists()


def test_tensorboard_without_its_package_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if absent
    with pytest.raises(UsageError, match=r"tensorboard package.*pip install 'vtbench\[tensorboard\]'"):
        train(TINY, {}, _config(epochs=1, logger=["jsonl", "tensorboard"]), tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()  # refused before any epoch


def test_logger_option_is_checked():
    assert TrainConfig(logger="csv").logger == ["csv"]
    assert TrainConfig(logger="csv, tensorboard").logger == ["csv", "tensorboard"]  # --set logger=a,b
    assert TrainConfig(logger=["csv", "tensorboard", "csv"]).logger == ["csv", "tensorboard"]
    with pytest.raises(UsageError, match="unknown logger 'wandb'; choose from jsonl, csv, tensorboard"):
        TrainConfig(logger=["csv", "wandb"])
    with pytest.raises(UsageError, match="non-empty list"):
        TrainConfig(logger=[])
    with pytest.raises(UsageError, match="keep_checkpoints must be at least 1"):
        TrainConfig(keep_checkpoints=0)


# ------------------------------------------------------------------ the new options change no id
def test_new_options_leave_fingerprints_and_cell_ids_unchanged():
    # the fingerprint of the default recipe before `logger` and `keep_checkpoints` existed
    assert config_fingerprint("resnet18", {"num_classes": 10}, TrainConfig()) == "fd1431417d2709b7"
    assert config_fingerprint("resnet18", {"num_classes": 10},
                              TrainConfig(logger=["csv"], keep_checkpoints=3)) == "fd1431417d2709b7"
    # the committed checkpoint still resumes under the config of its cell
    folder = REPO / "results" / "fashion_ablation" / "cells" / "40d52d68e2a1"
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    config = state["config"]
    assert config_fingerprint(config["model"], config["model_args"],
                              TrainConfig.from_dict(config["train"])) == state["fingerprint"]


@pytest.mark.parametrize("run", ["fashion_ablation", "shapes_seg"])
def test_committed_grids_expand_to_their_committed_cell_ids(run):
    from bench.pipeline.grid import load_grid

    grid = load_grid(REPO / "results" / run / "grid.yaml")
    committed = json.loads((REPO / "results" / run / "cells.json").read_text())
    assert sorted(c.cell_id for c in grid.cells) == sorted(c["cell_id"] for c in committed)


def test_a_grid_may_set_the_logger_and_keep_checkpoints(tmp_path):
    import yaml

    from bench.pipeline.grid import load_grid

    grid = {"name": "logs", "description": "loggers in a grid",
            "base": {"model": TINY, "model_args": {"num_classes": 10}, "measure": ["complexity", "train"], "input_size": 8,
                     "train": {"dataset": "digits", "epochs": 1}},
            "axes": {"logger": [["csv", "tensorboard"], "jsonl"], "train.keep_checkpoints": [2]}}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    cells = load_grid(tmp_path / "g.yaml").cells
    assert sorted(str(c.config["train"]["logger"]) for c in cells) == ["['csv', 'tensorboard']", "jsonl"]
    grid["axes"] = {"logger": ["wandb"]}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    with pytest.raises(UsageError, match="unknown logger 'wandb'"):
        load_grid(tmp_path / "g.yaml")


# ---------------------------------------------------------------------------- extending a run
def test_resume_with_more_epochs_extends_a_finished_run_over_the_new_schedule(tmp_path, caplog):
    first = train(TINY, {}, _config(epochs=2), tmp_path, progress=False)
    assert "extended_from_epoch" not in first
    done = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    iterations = done["scheduler"]["last_epoch"]
    steps = iterations // 2
    assert done["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine ended

    longer = _config(epochs=4)
    with caplog.at_level("WARNING", logger="bench.measure.train"):
        extended = train(TINY, {}, longer, tmp_path, progress=False)
    assert extended["resumed_from_epoch"] == 2 and extended["epochs"] == 4
    assert extended["extended_from_epoch"] == 2 and extended["extended_from_epochs"] == 2
    assert "extending the run" in caplog.text and "from epoch 3" in caplog.text
    lines = _jsonl(tmp_path / "metrics.jsonl")
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4]
    # epoch 3 starts where the 4-epoch cosine is at iteration 2 * steps, not at the old schedule's 0
    assert lines[2]["lr"] == pytest.approx(0.1 * lr_factor(iterations, steps, longer), rel=1e-9)
    warm = warmup_iterations(steps, longer)
    assert lines[2]["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * (2 * steps - warm) / (4 * steps - warm))),
                                           rel=1e-9)
    assert 0 < lines[3]["lr"] < lines[2]["lr"]
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["extensions"] == [{"at_epoch": 2, "from_epochs": 2, "to_epochs": 4}]
    assert state["config"]["train"]["epochs"] == 4

    again = train(TINY, {}, longer, tmp_path, progress=False)  # finished: the same final metrics
    assert again["top1"] == extended["top1"] and again["extended_from_epoch"] == 2


def test_an_interrupted_extension_resumes_exactly(tmp_path, monkeypatch):
    train(TINY, {}, _config(epochs=1), tmp_path / "a", progress=False)
    straight = train(TINY, {}, _config(epochs=3), tmp_path / "a", progress=False)
    train(TINY, {}, _config(epochs=1), tmp_path / "b", progress=False)
    _kill_after(monkeypatch, 2)
    with pytest.raises(_Killed):
        train(TINY, {}, _config(epochs=3), tmp_path / "b", progress=False)
    monkeypatch.undo()
    torch.manual_seed(999)
    resumed = train(TINY, {}, _config(epochs=3), tmp_path / "b", progress=False)
    assert resumed["resumed_from_epoch"] == 2 and resumed["extended_from_epoch"] == 1
    assert resumed["train_loss"] == straight["train_loss"] and resumed["top1"] == straight["top1"]


def test_another_config_is_refused_naming_every_differing_key(tmp_path):
    train(TINY, {}, _config(epochs=2), tmp_path, progress=False)
    other = _config(epochs=2, lr=0.05, momentum=0.8, dataset_args={"augment": False}, threads=2, logger="csv")
    with pytest.raises(ckpt.CheckpointError) as caught:
        train(TINY, {}, other, tmp_path, progress=False)
    message = str(caught.value)
    assert "another config: train.dataset_args.augment is true in the checkpoint and false now, " \
           "train.lr is 0.1 in the checkpoint and 0.05 now, train.momentum is 0.9 in the checkpoint and " \
           "0.8 now;" in message
    assert "threads" not in message and "logger" not in message  # they do not change the result
    with pytest.raises(ckpt.CheckpointError, match="train.epochs is 2 in the checkpoint and 1 now"):
        train(TINY, {}, _config(epochs=1), tmp_path, progress=False)  # shortening is not extending
    with pytest.raises(ckpt.CheckpointError, match=r"train.epochs is 2 .* 4 now, train.lr is 0.1"):
        train(TINY, {}, _config(epochs=4, lr=0.2), tmp_path, progress=False)  # more epochs AND another lr
    assert len(_jsonl(tmp_path / "metrics.jsonl")) == 2  # nothing touched


def test_config_differences_names_nested_and_missing_keys():
    saved = {"model": "m", "model_args": {"num_tokens": 16}, "train": {"lr": 0.1, "epochs": 2}}
    now = {"model": "m", "model_args": {"num_tokens": 8, "stem": "cifar"}, "train": {"lr": 0.1, "epochs": 2}}
    assert ckpt.config_differences(saved, now) == {"model_args.num_tokens": (16, 8),
                                                   "model_args.stem": (ckpt._ABSENT, "cifar")}


# ----------------------------------------------------------------------------- one checkpoint
def test_one_checkpoint_is_kept_by_default_and_more_when_asked(tmp_path):
    train(TINY, {}, _config(epochs=2), tmp_path / "one", progress=False)
    assert _checkpoint_files(tmp_path / "one") == ["checkpoint.pt"]

    many = tmp_path / "many"
    train(TINY, {}, _config(epochs=4, keep_checkpoints=3), many, progress=False)
    names = ["checkpoint.pt", "checkpoint.prev.pt", "checkpoint.prev2.pt"]
    assert _checkpoint_files(many) == sorted(names)
    assert [torch.load(many / n, weights_only=True)["epoch"] for n in names] == [4, 3, 2]
    # a later run in the folder that keeps one (here extending it) leaves one
    train(TINY, {}, _config(epochs=5), many, progress=False)
    assert _checkpoint_files(many) == ["checkpoint.pt"]


def test_a_crash_mid_write_leaves_the_last_checkpoint_whole(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, {"epoch": 1, "weights": torch.ones(3)})

    def dies_mid_write(obj, handle):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # a kill while the bytes go to disk

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, {"epoch": 2, "weights": torch.zeros(3)})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp file left either
    assert ckpt.read_checkpoint_file(tmp_path / "checkpoint.pt")["epoch"] == 1


def test_a_temp_file_of_a_killed_writer_is_removed_when_the_run_resumes(tmp_path):
    train(TINY, {}, _config(epochs=1), tmp_path, progress=False)
    stale = tmp_path / ".checkpoint.abc123.tmp"
    stale.write_bytes(b"x" * 1000)  # what a SIGKILL during torch.save leaves
    train(TINY, {}, _config(epochs=2), tmp_path, progress=False)
    assert not stale.exists()


def test_a_damaged_checkpoint_with_one_kept_is_an_error_that_deletes_nothing(tmp_path):
    train(TINY, {}, _config(epochs=1), tmp_path, progress=False)
    (tmp_path / ckpt.CHECKPOINT).write_bytes(b"damaged after it was written")
    with pytest.raises(ckpt.CheckpointError, match="corrupt or unreadable") as caught:
        train(TINY, {}, _config(epochs=1), tmp_path, progress=False)
    assert "previous good checkpoint" not in str(caught.value)
    assert (tmp_path / ckpt.CHECKPOINT).read_bytes() == b"damaged after it was written"


# --------------------------------------------------------------------------------- the command
def _cli(tmp_path, *extra):
    from tests.test_train import _cli_args

    return _cli_args(TINY, "--dataset", "digits", "--input-size", "8", "--threads", "1",
                     "--out", str(tmp_path), "--no-progress", *extra)


def _records(folder: Path) -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in (folder / "records").glob("*.json")),
                  key=lambda r: r["config"]["train"]["epochs"])


def test_cli_loggers_resume_extension_and_records(tmp_path, caplog):
    command, args = _cli(tmp_path, "--epochs", "1", "--logger", "csv", "--logger", "jsonl")
    assert command.run(args) == 0
    assert [r["epoch"] for r in _csv_rows(tmp_path / "metrics.csv")] == ["1"]
    assert len(_jsonl(tmp_path / "metrics.jsonl")) == 1
    command, args = _cli(tmp_path, "--epochs", "2", "--resume", "--logger", "csv", "--logger", "jsonl")
    with caplog.at_level("INFO"):
        assert command.run(args) == 0
    assert "extended: epochs 1-1 followed a 1-epoch schedule" in caplog.text
    first, second = _records(tmp_path)
    assert first["config"]["train"]["logger"] == ["csv", "jsonl"]
    assert "keep_checkpoints" not in first["config"]["train"]
    assert second["metrics"]["extended_from_epoch"] == 1 and second["metrics"]["epochs"] == 2
    assert [r["epoch"] for r in _csv_rows(tmp_path / "metrics.csv")] == ["1", "2"]
    assert _checkpoint_files(tmp_path) == ["checkpoint.pt"]


def test_cli_record_config_holds_only_the_training_options_given(tmp_path):
    """Options left at their defaults (the new `logger` and `keep_checkpoints` among them) are not in
    the cell, so adding an option never changes a cell id."""
    command, args = _cli(tmp_path, "--epochs", "1")
    assert command.run(args) == 0
    (record,) = _records(tmp_path)
    assert record["config"]["train"] == {"dataset": "digits", "threads": 1, "epochs": 1}
    assert record["config"]["input_size"] == 8 and record["config"]["seed"] == 0


def test_cli_record_has_the_cell_id_of_the_equivalent_grid_cell(tmp_path):
    """`vtbench train` and a grid naming the same training give the same cell (and cell id)."""
    import yaml

    from bench.pipeline.grid import load_grid

    command, args = _cli(tmp_path / "out", "--epochs", "1", "--seed", "3", "--set", "weight_decay=0.0001",
                         "--set", "dataset_args.augment=true", "--logger", "csv")
    assert command.run(args) == 0
    (record,) = _records(tmp_path / "out")
    grid = {"name": "same", "description": "the training of the command above, as a grid cell",
            "base": {"model": TINY, "model_args": {"num_classes": 10}, "measure": ["complexity", "train"], "input_size": 8,
                     "seed": 3, "train": {"dataset": "digits", "epochs": 1, "threads": 1, "weight_decay": 0.0001,
                                          "dataset_args": {"augment": True}, "logger": ["csv"]}}}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(grid))
    (cell,) = load_grid(tmp_path / "g.yaml").cells
    assert record["config"] == cell.config
    assert record["cell_id"] == cell.cell_id


def test_cli_refuses_an_unknown_logger(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _cli(tmp_path, "--logger", "wandb")
    assert "invalid choice: 'wandb'" in capsys.readouterr().err
