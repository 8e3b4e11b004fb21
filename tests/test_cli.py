"""The command line itself: quiet by default, -v/-q anywhere, --version, a --help that imports no torch.

Subprocess tests run the installed `vtbench` script (or `python -m bench`) as a user would, so that
warnings filters and sys.path are the command line's own, not pytest's.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

import bench
import bench.cli
from bench.cli import COMMAND_MODULES, build_parser, silence_known_noise

REPO = Path(__file__).resolve().parents[1]
NOISE = ("FutureWarning", "torch.jit.script", "CUDA_HOME", "No CUDA runtime")


def vtbench(*argv: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed `vtbench` script (else `python -m bench`) in a fresh process."""
    script = shutil.which("vtbench")
    command = [script] if script else [sys.executable, "-m", "bench"]
    return subprocess.run([*command, *argv], cwd=cwd or REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_help_imports_neither_torch_nor_pandas():
    code = ("import sys, bench.cli\n"
            "try:\n    bench.cli.main(['--help'])\nexcept SystemExit as exc:\n    assert exc.code == 0\n"
            "print(sorted(m for m in ('torch', 'pandas', 'fvcore', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "profile" in done.stdout and "report" in done.stdout  # every command is listed...
    assert done.stdout.strip().splitlines()[-1] == "[]"           # ...and none of them imported torch


def test_commands_listed_without_import_match_their_modules():
    """The NAME and HELP read from each command's source are the module's own."""
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        assert bench.cli._literal_constants(module.__file__, ("NAME", "HELP")) == {"NAME": module.NAME,
                                                                                   "HELP": module.HELP}


def test_only_the_named_command_is_built():
    parser = build_parser(["status", "runs/x"])
    assert parser.parse_args(["status", "runs/x"]).run_dir == "runs/x"
    with pytest.raises(SystemExit):  # an unknown command is still refused with the list of commands
        build_parser(["nope"]).parse_args(["nope"])


@pytest.mark.parametrize("argv, verbose, quiet", [
    (["-v", "status", "r"], True, False),
    (["status", "r", "-v"], True, False),
    (["-q", "status", "r"], False, True),
    (["status", "-q", "r"], False, True),
    (["status", "r"], False, False),
])
def test_verbose_and_quiet_before_or_after_the_command(argv, verbose, quiet):
    args = build_parser(argv).parse_args(argv)
    assert (args.verbose, args.quiet) == (verbose, quiet)


def test_verbose_and_quiet_together_is_bad_input(capsys):
    with pytest.raises(SystemExit) as info:
        bench.cli.main(["-v", "status", "r", "-q"])
    assert info.value.code == 2 and "-q/--quiet" in capsys.readouterr().err


def test_version_names_vtbench_torch_torchvision_fvcore():
    from importlib import metadata

    done = vtbench("--version")
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith(f"vtbench {bench.__version__} (")
    for dist in ("torch", "torchvision", "fvcore"):
        assert f"{dist} {metadata.version(dist)}" in line


def _tiny_grid(tmp_path: Path) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"name": "g", "base": {"model": "resnet18", "model_args": {"num_classes": 10},
                                                          "measure": ["complexity"], "input_size": 32}}))
    return path


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_leaves_only_warnings(tmp_path, where):
    grid = str(_tiny_grid(tmp_path))
    loud = vtbench("launch", grid, "--dry-run", "--run-dir", str(tmp_path / "run"))
    assert loud.returncode == 0 and "INFO" in loud.stderr, loud.stderr
    argv = ["-q", "launch", grid, "--dry-run"] if where == "before" else ["launch", grid, "--dry-run", "-q"]
    quiet = vtbench(*argv, "--run-dir", str(tmp_path / "run"))
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_models_prints_no_third_party_warning():
    done = vtbench("models", "--filter", "resnet18")
    assert done.returncode == 0, done.stderr
    assert "vt_resnet18" in done.stdout
    assert not [n for n in NOISE if n in done.stderr], done.stderr


def test_profile_prints_no_third_party_warning(tmp_path):
    # A CUDA_HOME folder that exists, on a machine without a GPU, is what makes torch log its line.
    env = {"CUDA_HOME": str(tmp_path)}
    counted = vtbench("profile", "resnet18", "--input-size", "32", "--no-latency", env=env)
    assert counted.returncode == 0, counted.stderr
    assert not [n for n in NOISE if n in counted.stderr], counted.stderr
    timed = vtbench("profile", "resnet18", "--input-size", "16", "--no-complexity", "--min-time", "0.05",
                    "--threads", "1", env=env)
    assert timed.returncode == 0, timed.stderr
    assert not [n for n in NOISE if n in timed.stderr], timed.stderr


def test_the_filters_are_narrow():
    """Other FutureWarnings, and torch's other log lines, still come through."""
    import logging

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        silence_known_noise()
        warnings.warn("something else is deprecated", FutureWarning)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]
    logger = logging.getLogger("torch.utils.cpp_extension")
    record = logging.LogRecord(logger.name, logging.WARNING, __file__, 1, "another line", (), None)
    assert logger.filter(record)
    dropped = logging.LogRecord(logger.name, logging.WARNING, __file__, 1,
                                "No CUDA runtime is found, using CUDA_HOME='%s'", ("/x",), None)
    assert not logger.filter(dropped)
