"""What people compare against: `timm:NAME` models, and factories in the current directory."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bench.cli
from bench.core.errors import UsageError
from bench.core.modelref import TIMM_EXTRA, resolve_model_ref

HAS_TIMM = importlib.util.find_spec("timm") is not None
needs_timm = pytest.mark.skipif(not HAS_TIMM, reason="timm is an optional extra, not installed here: "
                                                     "pip install -e '.[timm]' to run the timm: tests")
FACTORY = textwrap.dedent("""
    from torch import nn

    def small(num_classes=10):
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
""")


@pytest.fixture
def profile(capsys):
    def call(*argv: str):
        try:
            rc = bench.cli.main(["profile", *argv])
        except SystemExit as exc:
            rc = exc.code
        out, err = capsys.readouterr()
        return rc, out, err

    return call


# ------------------------------------------------------------------------------------------ timm
def test_timm_absent_names_the_extra(monkeypatch, profile):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now fails as if it were not installed
    with pytest.raises(UsageError) as info:
        resolve_model_ref("timm:resnet18")
    assert TIMM_EXTRA in str(info.value) and "optional extra" in str(info.value)
    rc, _, err = profile("timm:resnet18", "--no-latency")
    assert rc == 2 and "pip install -e '.[timm]'" in err and len(err.strip().splitlines()) == 1


def test_malformed_timm_name_is_bad_input():
    with pytest.raises(UsageError, match="malformed timm model name"):
        resolve_model_ref("timm:res net")


@needs_timm
def test_timm_resnet18_is_counted_like_torchvision(profile):
    rc, out, err = profile("timm:resnet18", "--no-latency")
    assert rc == 0, err
    assert "timm:resnet18  input 224" in out        # the model's pretrained config gives its input size
    assert "GMACs executed (FlopCounterMode) 1.814" in out  # the same network as torchvision's resnet18
    model = resolve_model_ref("timm:resnet18").build(num_classes=7)
    assert model.num_classes == 7 and model.task == "cls" and model.default_input_size == 224


@needs_timm
@pytest.mark.parametrize("argv, message", [
    (["timm:resnet1"], "did you mean resnet18"),
    (["timm:resnet18", "--set", "num_tokens=8"], "unexpected keyword argument 'num_tokens'"),
])
def test_timm_bad_input_exits_2_with_one_line(profile, argv, message):
    rc, _, err = profile(*argv, "--no-latency")
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------------- the current directory
def test_a_factory_in_the_current_directory_resolves(tmp_path, monkeypatch):
    (tmp_path / "vtb_cwd_nets.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if os.path.abspath(p or os.curdir) != str(tmp_path)])
    monkeypatch.delitem(sys.modules, "vtb_cwd_nets", raising=False)
    model = resolve_model_ref("vtb_cwd_nets:small").build(num_classes=3)
    assert model[-1].out_features == 3
    assert sys.path[-1] == str(tmp_path)  # last: installed packages come first


def test_a_missing_module_says_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as info:
        resolve_model_ref("vtb_no_such_module:small")
    assert "cannot import module 'vtb_no_such_module'" in str(info.value)
    assert f"current directory {tmp_path}" in str(info.value) and "PYTHONPATH" in str(info.value)


def test_the_vtbench_script_finds_a_factory_in_the_current_directory(tmp_path):
    """As a user runs it: the console script, whose sys.path lacks the current directory."""
    (tmp_path / "mynets.py").write_text(FACTORY)
    script = shutil.which("vtbench")
    command = [script] if script else [sys.executable, "-c", "import sys; from bench.cli import main; "
                                                            "sys.path.remove(''); sys.exit(main())"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([*command, "profile", "mynets:small", "--input-size", "8", "--no-latency"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "mynets:small  input 8" in done.stdout


def test_a_folder_of_its_own_models_does_not_shadow_vtbench_models(tmp_path):
    """A folder with a `models/` package: resolving a factory there leaves `models` vtbench's."""
    (tmp_path / "mynets.py").write_text(FACTORY)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("raise ImportError('the folder shadowed vtbench models')\n")
    code = ("import sys\nsys.path = [p for p in sys.path if p not in ('', '.')]\n"
            "from bench.core.modelref import resolve_model_ref\nresolve_model_ref('mynets:small')\n"
            "from models import build_model\nprint(build_model('resnet18').num_classes)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1000"
