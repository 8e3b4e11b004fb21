"""The command line says what is true: one line per error, the right exit code, hints that point to
the option that exists, help from the registries, results on stdout, and exact MACs answered fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.cli.commands import models as models_command
from tests.test_output_formats import vtbench  # noqa: F401 - the fixture: run vtbench in-process

REPO = Path(__file__).resolve().parents[1]
TINY = "tests.test_launch:tiny_net"
TRAIN_TINY = ["train", TINY, "--dataset", "digits", "--input-size", "8", "--threads", "1", "--epochs", "1",
              "--no-progress"]


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ------------------------------------------------------------------------------- hints and help
def test_a_model_option_given_as_a_flag_points_to_set(vtbench):
    rc, _, err = vtbench("train", "vt_resnet18", "--dataset", "digits", "--num-tokens", "8")
    assert rc == 2 and "--num-tokens is a model option: --set num_tokens=8" in err
    rc, _, err = vtbench("profile", "resnet18", "--label-smoothing=0.1", "--batch-szie", "2")
    assert rc == 2 and "--set label_smoothing=0.1" in err and "did you mean --batch-size?" in err
    assert len(_lines(err)) == 1


@pytest.mark.parametrize("command", [["train", "vt_resnet18", "--dataset", "digits"], ["profile", "vt_resnet18"]])
def test_an_unknown_set_key_gets_a_did_you_mean_before_anything_runs(vtbench, command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = vtbench(*command, "--set", "num_token=8")
    assert rc == 2 and out == ""
    (line,) = _lines(err)
    assert "--set num_token: not an option of vt_resnet18 (did you mean num_tokens?)" in line
    assert not (tmp_path / "runs").exists()  # nothing was trained, nothing recorded


def test_a_value_the_builder_refuses_is_bad_input_naming_every_choice(vtbench, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = vtbench("train", "vt_resnet18", "--dataset", "digits", "--set", "tokenizer=kmeans")
    (line,) = _lines(err)
    assert rc == 2 and "kmeans" in line and "recurrent" in line and "internal" not in line
    assert not (tmp_path / "runs").exists()


def test_data_root_is_refused_for_a_data_set_that_reads_no_files(vtbench, tmp_path):
    rc, _, err = vtbench(*TRAIN_TINY, "--data-root", str(tmp_path / "does-not-exist"), "--out", str(tmp_path / "o"))
    (line,) = _lines(err)
    assert rc == 2 and "--data-root: data set 'digits' reads no files" in line
    assert not (tmp_path / "o").exists()


def test_train_help_lists_the_registered_data_sets_and_model_choices(vtbench):
    from bench.measure.data import list_datasets

    rc, out, _ = vtbench("train", "--help")
    text = " ".join(out.split())
    assert rc == 0 and "fashion_mnist" in text and all(name in text for name in list_datasets())
    assert "tokenizer: filter, pooling, clustering, recurrent" in text and "transformer: paper, mhsa, none" in text


# ---------------------------------------------------------------------------------- train on stdout
def test_train_prints_its_result_and_records_the_models_macs(vtbench, tmp_path):
    rc, out, err = vtbench(*TRAIN_TINY, "--out", str(tmp_path), "--format", "json")
    assert rc == 0, err
    (row,) = json.loads(out)
    (path,) = (tmp_path / "records").glob("*.json")
    record = json.loads(path.read_text())
    assert record["config"]["measure"] == ["complexity", "train"]
    assert row["model"] == TINY and row["dataset"] == "digits" and row["epochs"] == 1
    assert row["top1"] == record["metrics"]["top1"] and row["gmacs"] == record["metrics"]["gmacs"] > 0
    assert row["params_m"] == record["metrics"]["params_m"]


def test_a_failed_training_is_one_error_line_exit_1(vtbench, tmp_path, monkeypatch):
    """The runner's own 'cell failed' line is not printed beside the command's error line."""
    from bench.measure import train as train_module

    def failing(*_, **__):
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(train_module, "train", failing)
    rc, out, err = vtbench(*TRAIN_TINY, "--no-macs", "--out", str(tmp_path))
    errors = [line for line in _lines(err) if "error" in line.lower() and "record written" not in line]
    assert rc == 1 and out == ""
    (line,) = errors
    assert line.startswith("vtbench train: error:") and line.endswith("RuntimeError: the disk went away")


# -------------------------------------------------------------------------------- vtbench models
@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("VTBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_models_answers_from_its_cache_exactly_and_without_torch(vtbench, cache):
    rc, counted, _ = vtbench("models", "--filter", "resnet18", "--format", "json")
    assert rc == 0 and [r["model"] for r in json.loads(counted)] == ["resnet18", "vt_resnet18"]
    assert json.loads(counted)[0]["gmacs"] == 1.814073344  # torchvision's ResNet-18, the paper's Table 8
    code = ("import sys; sys.modules['torch'] = None\n"
            "import bench.cli\n"
            "sys.exit(bench.cli.main(['models', '--filter', 'resnet18', '--format', 'json']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "VTBENCH_CACHE_DIR": str(cache)})
    assert done.returncode == 0, done.stderr
    assert done.stdout == counted  # the same figures, to the last digit
    done = subprocess.run([sys.executable, "-c", code.replace("'resnet18'", "'nope'")], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "VTBENCH_CACHE_DIR": str(cache)})
    assert done.returncode == 2 and "--filter 'nope' matches no registered model" in done.stderr


def test_the_cache_key_follows_the_source_and_the_library_versions(monkeypatch, tmp_path):
    key = models_command.cache_key()
    assert models_command.cache_key() == key
    monkeypatch.setattr(models_command.metadata, "version", lambda dist: "9.9" if dist == "torch" else "1")
    assert models_command.cache_key() != key
    monkeypatch.undo()
    changed = tmp_path / "zoo.py"
    changed.write_text("# another model\n")
    real = models_command._source_files
    monkeypatch.setattr(models_command, "_source_files", lambda: [*real(), changed])
    assert models_command.cache_key() != key


def test_a_cache_file_that_is_not_the_caches_is_ignored(vtbench, cache):
    cache.mkdir(parents=True)
    path = cache / f"models-{models_command.cache_key()}.json"
    path.write_text(json.dumps({"names": ["resnet18"], "rows": {"resnet18": {"name": "resnet18", "gmacs": 99.0,
                                                                           "params_m": "x"}}}))
    rc, out, _ = vtbench("models", "--filter", "resnet18", "--no-macs", "--format", "json")
    assert rc == 0  # a row without the parameters' keys is no parameters row: counted afresh
    assert [r["model"] for r in json.loads(out)] == ["resnet18"]
    path.write_text("not json")
    rc, out, _ = vtbench("models", "--filter", "vt_resnet18", "--no-macs", "--format", "json")
    assert rc == 0 and json.loads(out)[0]["param_count"] == pytest.approx(11.48, abs=0.01)


class _Mixed(nn.Module):
    """A convolution, a norm, a residual addition, a softmax and a matrix product."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 8)

    def forward(self, x):
        y = self.norm(self.conv(x))
        y = y + y
        tokens = y.flatten(2).transpose(1, 2)
        attention = torch.softmax(tokens @ tokens.transpose(1, 2), dim=-1)
        return self.fc(attention @ tokens)


def test_timms_infer_gmacs_is_fvcores_own_total():
    """The figure under timm's name is what timm's benchmark.py computes: FlopCountAnalysis(...).total()
    with fvcore's own handles; vtbench's extra handles (softmax, addition) are not in it."""
    from fvcore.nn import FlopCountAnalysis

    from bench.measure.complexity import measure_complexity

    model, x = _Mixed().eval(), torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        fvcore_own = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).total() / 1e9
    result = measure_complexity(model, 8)
    assert models_command.fvcore_default_gmacs(result) == pytest.approx(fvcore_own, rel=1e-12)
    assert result.gmacs_fvcore > fvcore_own > result.gmacs  # softmax and the addition; the norm


@pytest.mark.parametrize("name", ["vt_resnet18", "vt_fpn_r50"])
def test_a_parameters_only_row_built_on_the_meta_device_counts_what_the_cpu_build_does(name):
    from models import build_model

    meta = models_command.describe(name, macs=False)
    real = build_model(name)
    assert meta["params_m"] == sum(p.numel() for p in real.parameters()) / 1e6
    assert (meta["task"], meta["input_size"]) == (real.task, real.default_input_size)
