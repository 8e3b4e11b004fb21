"""Every command shown in the README and the docs is run, so the docs cannot drift from the tool.

The commands are read from the pages' ```bash code blocks (one command a line, `\\` continues a
line, `# ...` is a comment). Each must have an entry in COVERAGE, keyed by the command as shown;
a command without one, or an entry whose command no page shows any more, fails the test. An entry
says how the command is exercised:

- RUN: run as shown, in a temporary workspace (the repository's experiments/ copied, results/
  linked read-only, the files the pages show as `<!-- file: NAME -->` blocks written, and
  `runs/smoke` made cheaply by FIXTURE_LAUNCH, the main job's grid without its training);
- a cheaper command: run instead, because the shown one needs minutes of CPU (fewer epochs, a
  smaller input, a shorter timing), starts background jobs, or would write into results/;
- NOT_RUN: commands that need a GPU, a SLURM cluster, root, or the whole test suite; their entry
  says what stands in for them.

Besides, every `vtbench` command shown is parsed by vtbench's own parser exactly as shown (its
flags, choices and sub-command must exist), and every other program's command gets a check of its
own (the script exists and parses with `bash -n`, the pip extra exists, ...). `vtbench` runs in this
process (`bench.cli.main`), so torch is imported once. The main job itself, as the README shows it,
runs in the slow tier (a few minutes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/guide.md", "docs/models.md", "docs/results.md", "docs/records.md")
COMMAND_LANGUAGES = ("bash", "sh", "shell")
# The main job's grid, cheaply: no training, 32x32, a short timing, in this process (debug executor).
FIXTURE_LAUNCH = ("vtbench launch experiments/smoke.yaml --cluster debug --wait --run-dir runs/smoke"
                  " --set base.measure=[complexity,latency] --set base.input_size=32"
                  " --set base.latency.min_time_s=0.05 --set base.latency.warmup_max_iters=3"
                  " --set base.latency.min_iters=3")
SAME = "same"  # run the command as shown
NOT_RUN = None
TINY_TRAIN = "--set width=0.25 --input-size 16 --epochs 1"
TINY_VT = "--set token_channels=64"  # the VT stage at a quarter of the default 4C: as cheap as the trunk


@dataclasses.dataclass(frozen=True)
class Cover:
    """How one shown command is exercised: `run` (SAME, a cheaper command, or NOT_RUN), why,
    and an optional check of what it did (`expect(workspace, stdout, words of the command run)`).
    A cheaper command may be several, joined by ` && `, run in turn."""

    run: str | None
    why: str = ""
    expect: Callable[[Path, str, list[str]], None] | None = None
    slow: bool = False  # tens of seconds even in its cheap form: the slow tier
    requires: str | None = None  # a shown command whose cheap form must have run first (once per workspace)


# ------------------------------------------------------------------------------------- expectations
def _rows(stdout: str) -> list[dict]:
    """Rows of a `--format json` output: one JSON document (a list), or JSON lines."""
    text = stdout.strip()
    try:
        doc = json.loads(text)
        return doc if isinstance(doc, list) else doc.get("rows", [doc])
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def _cells(count: int) -> Callable[[Path, str, list[str]], None]:
    """Expect a `launch --dry-run` to plan `count` cells (asked again with --format json)."""

    def check(ws: Path, stdout: str, words: list[str]) -> None:
        code, rows = run_vtbench([*words[1:], "--format", "json"])
        assert code == 0 and len(_rows(rows)) == count, f"expected {count} cells, got {len(_rows(rows))}"

    return check


def _contains(*texts: str) -> Callable[[Path, str, list[str]], None]:
    def check(ws: Path, stdout: str, words: list[str]) -> None:
        for text in texts:
            assert text in stdout, f"{text!r} not in the command's stdout"

    return check


def _is_record(pattern: str) -> Callable[[Path, str, list[str]], None]:
    def check(ws: Path, stdout: str, words: list[str]) -> None:
        found = sorted(ws.glob(pattern))
        assert found, f"no record at {pattern}"
        record = json.loads(found[-1].read_text())
        assert record["schema"].startswith("vtbench.record/") and record["status"] == "ok"

    return check


def _report_written(folder: str, *names: str) -> Callable[[Path, str, list[str]], None]:
    def check(ws: Path, stdout: str, words: list[str]) -> None:
        for name in names:
            assert (ws / folder / name).is_file(), f"{folder}/{name} not written"

    return check


def _extended(ws: Path, stdout: str, words: list[str]) -> None:
    records = [json.loads(p.read_text()) for p in (ws / "runs/r18/records").glob("*.json")]
    assert any(r["metrics"].get("extended_from_epoch") == 1 for r in records), "no extended record"


def _logs_written(ws: Path, stdout: str, words: list[str]) -> None:
    assert (ws / "runs/r18/metrics.csv").is_file() and (ws / "runs/r18/tensorboard").is_dir()


def _is_json(ws: Path, stdout: str, words: list[str]) -> None:
    assert _rows(stdout), "no rows"


def _one_row(ws: Path, stdout: str, words: list[str]) -> None:
    assert len(stdout.splitlines()) == 1 and isinstance(json.loads(stdout), dict)


def _csv_rows(count: int) -> Callable[[Path, str, list[str]], None]:
    def check(ws: Path, stdout: str, words: list[str]) -> None:
        lines = [line for line in stdout.splitlines() if line.strip()]
        assert lines[0].startswith("cell_id,") and len(lines) == count + 1

    return check


# --------------------------------------------------------------------------------------- coverage
R18_FIRST = ("vtbench train resnet18 --dataset digits --set stem=cifar --epochs 15 --out runs/r18 --logger csv "
             "--logger tensorboard")
COVERAGE: dict[str, Cover] = {
    # README: set-up
    "pip install -e . && vtbench launch experiments/smoke.yaml --wait && vtbench report runs/smoke": Cover(
        NOT_RUN, "the main job: runs as shown in the slow tier (test_main_job_as_shown); in the default tier "
        "FIXTURE_LAUNCH runs the same grid without its training and `vtbench report runs/smoke` runs on it"),
    "bash scripts/test.sh": Cover(NOT_RUN, "the whole test suite: checked to be what .ci/run runs"),
    # README: the tour
    "vtbench models": Cover("vtbench models --filter resnet18", "every model takes too long in the default tier: "
                            "the registered ResNet-18 pair", _contains("vt_resnet18")),
    "vtbench profile vt_resnet18 --batch-size 1,32": Cover(
        "vtbench profile vt_resnet18 --batch-size 1,2 --input-size 32 --min-time-s 0.05",
        "batch 32 at 224x224 is seconds of timing: two batch sizes at 32x32", slow=True),
    "vtbench profile vt_resnet50 --set num_tokens=32 --set tokenizer=pooling --no-latency": Cover(
        "vtbench profile vt_resnet50 --set num_tokens=32 --set tokenizer=pooling --no-latency --input-size 64",
        "counted at 64x64, not 224x224"),
    "vtbench profile torchvision.models:mobilenet_v3_small --no-latency": Cover(SAME),
    "vtbench train vt_resnet18 --dataset digits --set stem=cifar --epochs 3 --out runs/vt18-digits": Cover(
        f"vtbench train vt_resnet18 --dataset digits --set stem=cifar --out runs/vt18-digits {TINY_TRAIN} {TINY_VT}",
        "one epoch of a quarter-width model at 16x16", _is_record("runs/vt18-digits/records/*.json")),
    "vtbench launch experiments/token_sweep.yaml --dry-run": Cover(SAME, expect=_cells(42)),
    "vtbench status runs/smoke": Cover(SAME, "on the fixture run", _contains("ok")),
    "vtbench interleave runs/smoke --rounds 5": Cover(
        "vtbench interleave runs/smoke --rounds 2 --min-time-s 0.05", "two short rounds on the fixture run",
        slow=True),
    "vtbench report runs/smoke": Cover(SAME, "on the fixture run",
                                       _report_written("runs/smoke/report", "report.md", "report.html", "table.csv")),
    "vtbench profile vt_resnet18 --no-latency --format csv": Cover(SAME, expect=_contains("model,", "vt_resnet18,")),
    # guide: installing
    "pip install -e .[test]": Cover(NOT_RUN, "installs: the extra is checked to exist in pyproject.toml"),
    "pip install -e .[timm]": Cover(NOT_RUN, "installs: the extra is checked to exist in pyproject.toml"),
    "pip install -e .[tensorboard]": Cover(NOT_RUN, "installs: the extra is checked to exist in pyproject.toml"),
    "vtbench --version": Cover(SAME, expect=_contains("vtbench ", "torch ")),
    "bash scripts/gpu_check.sh runs/gpu_check": Cover(NOT_RUN, "needs a GPU: checked to parse (bash -n)"),
    "bash scripts/gpu_check.sh --dry-run": Cover(
        NOT_RUN, "checked to parse (bash -n); tests/test_gpu_check.py runs it (slow tier)"),
    "apt-get install dataset-fashion-mnist": Cover(
        NOT_RUN, "needs root: checked to be the package scripts/test.sh installs and bench/measure/data.py names"),
    # guide: measuring
    "vtbench profile vt_resnet50 --set num_tokens=32 --set tokenizer=clustering --json out.json": Cover(
        "vtbench profile vt_resnet50 --set num_tokens=32 --set tokenizer=clustering --json out.json --no-latency "
        "--input-size 64", "complexity only, at 64x64", _is_record("out.json")),
    "vtbench profile vt_resnet18 --no-latency --depth 2": Cover(SAME, expect=_contains("stage2")),
    "vtbench profile timm:resnet18 --no-latency": Cover(SAME, "skipped where the timm extra is not installed"),
    "vtbench profile mynets:small --input-size 32": Cover(
        "vtbench profile mynets:small --input-size 32 --min-time-s 0.05", "mynets.py as the guide shows it"),
    "vtbench profile resnet50 --device cuda --dtype bf16 --batch-size 1,64,256 --cuda-graphs": Cover(
        NOT_RUN, "needs a GPU: parsed here; tests/test_gpu.py times CUDA graphs on a GPU"),
    "vtbench models --format csv": Cover("vtbench models --filter resnet18 --format csv", "the ResNet-18 pair",
                                         _contains("infer_gmacs")),
    # guide: grids
    "vtbench launch experiments/example.yaml --dry-run": Cover(SAME, "the guide's example grid", _cells(10)),
    "vtbench launch experiments/token_sweep.yaml --set axes.num_tokens=[8,16] --dry-run": Cover(
        SAME, "the cell count the guide announces", _cells(18)),
    "vtbench launch experiments/token_sweep.yaml --set base.latency.threads=2 --set resources.timeout_min=30 "
    "--dry-run": Cover(SAME, expect=_cells(42)),
    # guide: launching
    "vtbench launch experiments/smoke.yaml": Cover(
        "vtbench launch experiments/smoke.yaml --dry-run", "would start background jobs: its plan instead"),
    "vtbench launch experiments/smoke.yaml --wait": Cover(
        "vtbench launch experiments/smoke.yaml --dry-run", "minutes: its plan here, the whole in the slow tier"),
    "vtbench launch experiments/smoke.yaml --cluster debug": Cover(
        FIXTURE_LAUNCH, "the fixture: this launch without the training"),
    "vtbench cancel runs/smoke": Cover(SAME, "on the fixture run (nothing left to cancel)"),
    "vtbench cancel runs/smoke --cells CELL_ID": Cover(SAME, "CELL_ID: a cell of the fixture run"),
    "vtbench launch experiments/token_sweep.yaml --cluster slurm": Cover(
        NOT_RUN, "needs SLURM: parsed here; tests/test_slurm.py launches on a real cluster (slurm tier)"),
    "bash scripts/slurm_cluster.sh install": Cover(NOT_RUN, "needs root: checked to parse and to handle `install`"),
    "bash scripts/slurm_cluster.sh start /tmp/vtbench-slurm": Cover(
        NOT_RUN, "starts daemons: checked to parse and to handle `start`; scripts/test.sh runs it"),
    "SLURM_CONF=/tmp/vtbench-slurm/slurm.conf vtbench launch experiments/smoke.yaml --cluster slurm --wait": Cover(
        NOT_RUN, "needs SLURM: parsed here; tests/test_slurm.py launches on a real cluster (slurm tier)"),
    "bash scripts/slurm_cluster.sh stop /tmp/vtbench-slurm": Cover(
        NOT_RUN, "stops daemons: checked to parse and to handle `stop`; scripts/test.sh runs it"),
    # guide: training
    "vtbench train resnet18 --dataset fashion_mnist --set stem=cifar --set width=0.25 --input-size 48 --epochs 6 "
    "--set dataset_args.train_subset=20000 --set eval_every=6": Cover(
        "vtbench train resnet18 --dataset fashion_mnist --set stem=cifar --set width=0.25 --input-size 16 --epochs 1 "
        "--set dataset_args.train_subset=100 --set eval_every=1 --out runs/fashion-cell",
        "100 images, one epoch, 16x16; skipped where Fashion-MNIST is not installed", slow=True),
    "vtbench train vt_fpn_r50 --dataset shapes --input-size 32 --batch-size 16 --lr 3e-4 --set optimizer=adamw "
    "--set weight_decay=1e-4 --set dataset_args.shape_size=[0.2,0.35] --set dataset_args.max_shapes=2": Cover(
        "vtbench train vt_fpn_r50 --dataset shapes --input-size 32 --batch-size 16 --lr 3e-4 --set optimizer=adamw "
        "--set weight_decay=1e-4 --set dataset_args.shape_size=[0.2,0.35] --set dataset_args.max_shapes=2 "
        "--set dataset_args.num_samples=32 --epochs 1 --out runs/fpn-shapes", "32 images, one epoch", slow=True),
    R18_FIRST: Cover(
        "vtbench train resnet18 --dataset digits --set stem=cifar --out runs/r18 --logger csv --logger tensorboard "
        f"{TINY_TRAIN}", "one epoch of a quarter-width model at 16x16", _logs_written),
    "vtbench train resnet18 --dataset digits --set stem=cifar --epochs 30 --out runs/r18 --logger csv "
    "--logger tensorboard --resume": Cover(
        "vtbench train resnet18 --dataset digits --set stem=cifar --out runs/r18 --logger csv --logger tensorboard "
        "--set width=0.25 --input-size 16 --epochs 2 --resume",
        "the one-epoch run of the command before, extended to two", _extended, requires=R18_FIRST),
    "tensorboard --logdir runs/r18/tensorboard": Cover(
        NOT_RUN, "starts a server: the training before it is checked to write runs/r18/tensorboard"),
    # guide: reports and studies
    "vtbench report results/fashion_ablation results/fashion_r50 --out runs/fashion --format md,csv": Cover(
        SAME, "reads the committed runs, writes runs/fashion", _report_written("runs/fashion", "report.md", "table.csv")),
    "vtbench speed --out runs/speed_cpu": Cover(
        NOT_RUN, "13 minutes: parsed here; tests/test_study_commands.py runs one pair end to end (slow tier)"),
    "vtbench launch experiments/speed_cpu.yaml --run-dir runs/speed_cpu --wait": Cover(
        "vtbench launch experiments/speed_cpu.yaml --run-dir runs/speed_cpu --dry-run", "minutes: its plan"),
    "vtbench interleave runs/speed_cpu --rounds 4 --stages --peak": Cover(
        "vtbench interleave runs/smoke --rounds 2 --stages --peak --min-time-s 0.05",
        "the same flags, on the fixture run, two short rounds", slow=True),
    "vtbench report runs/speed_cpu": Cover(
        "vtbench report results/speed_cpu_grid --out runs/speed_cpu/report",
        "the committed speed study's run folder", _report_written("runs/speed_cpu/report", "report.md", "speed.csv")),
    "vtbench speed --gpu --channels-last": Cover(NOT_RUN, "needs a GPU: parsed here"),
    "vtbench fidelity --out runs/fidelity": Cover(
        "vtbench fidelity --no-measure --out runs/fidelity",
        "every cell of results/paper_complexity has its record, so only the writing is left to run"),
    "vtbench fidelity --no-measure --out runs/fidelity": Cover(
        SAME, "from the committed records; results/ is checked to stay as it was",
        _report_written("runs/fidelity", "fidelity.md", "fidelity.csv")),
    "python -m bench.studies.roofline --out runs/roofline": Cover(
        "python -m bench.studies.roofline --help", "builds and counts every model's stages: its --help here; "
        "tests/test_regeneration.py renders results/roofline_cpu"),
    # guide: output
    "vtbench status runs/smoke --format json | python3 -m json.tool": Cover(SAME, "on the fixture run", _is_json),
    "vtbench launch experiments/token_sweep.yaml --dry-run --format jsonl | head -1": Cover(SAME, expect=_one_row),
    "vtbench launch experiments/token_sweep.yaml --dry-run --format csv": Cover(SAME, expect=_csv_rows(42)),
    # models.md
    "vtbench profile torchvision.models:vit_b_16 --no-latency": Cover(SAME, expect=_contains("17.56")),
    "python -m bench.measure.counting_check --out runs/counting": Cover(
        "python -m bench.measure.counting_check --out runs/counting --models resnet18",
        "six minutes for all 80: one model"),
    # results.md
    "vtbench report results/token_sweep --out runs/token_sweep_report": Cover(
        NOT_RUN, "results/REGENERATE.yaml's render of token_sweep (checked to match): "
        "tests/test_regeneration.py runs it"),
    "vtbench launch experiments/paper_complexity.yaml --run-dir runs/paper_complexity --wait": Cover(
        "vtbench launch experiments/paper_complexity.yaml --run-dir runs/paper_complexity --dry-run",
        "4 minutes: its plan"),
}


# ------------------------------------------------------------------------------ reading the pages
def code_blocks(text: str) -> list[tuple[str, str, str | None]]:
    """(language, body, file name from a preceding `<!-- file: NAME -->`) of each fenced block."""
    pattern = re.compile(r"(?:<!--\s*file:\s*(?P<file>\S+)\s*-->\s*\n)?^```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)^```",
                         re.M | re.S)
    return [(m["lang"], m["body"], m["file"]) for m in pattern.finditer(text)]


def commands_of(text: str) -> list[str]:
    """The commands of the page's bash blocks, each as its words joined by one space."""
    commands = []
    for lang, body, _ in code_blocks(text):
        if lang not in COMMAND_LANGUAGES:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(" ".join(words))
    return commands


def shown_commands() -> dict[str, list[str]]:
    """{command: [pages showing it]} over PAGES."""
    shown: dict[str, list[str]] = {}
    for page in PAGES:
        for command in commands_of((ROOT / page).read_text(encoding="utf-8")):
            shown.setdefault(command, []).append(page)
    return shown


def shown_files() -> dict[str, str]:
    """{name: text} of the `<!-- file: NAME -->` blocks of PAGES."""
    return {name: body for page in PAGES for _, body, name in code_blocks((ROOT / page).read_text()) if name}


def vtbench_parts(command: str) -> list[list[str]]:
    """The argument lists of the `vtbench` invocations in a command (`a && b`, `ENV=x vtbench ...`)."""
    parts = []
    for part in command.split(" && "):
        words = shlex.split(part.split(" | ")[0])
        while words and re.match(r"^[A-Z_]+=", words[0]):
            words = words[1:]
        if words and words[0] == "vtbench":
            parts.append(words[1:])
    return parts


# ---------------------------------------------------------------------------------- running them
def run_vtbench(argv: list[str]) -> tuple[int, str]:
    """(exit code, stdout) of `vtbench ARGV` in this process."""
    from bench.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's --help and usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue()


def run_python_module(argv: list[str]) -> tuple[int, str]:
    """(exit code, stdout) of `python -m MODULE ARGS` in this process, as its `__main__`."""
    assert argv[0] == "-m", argv
    out = io.StringIO()
    saved = sys.argv
    sys.argv = [argv[1], *argv[2:]]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    return code, out.getvalue()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder like a user's checkout: experiments/ (a copy), results/ (a link, read only), the
    pages' files, runs/smoke made by FIXTURE_LAUNCH, and a cache folder of its own."""
    ws = tmp_path_factory.mktemp("docs")
    shutil.copytree(ROOT / "experiments", ws / "experiments")
    (ws / "results").symlink_to(ROOT / "results")
    for name, text in shown_files().items():
        (ws / name).parent.mkdir(parents=True, exist_ok=True)
        (ws / name).write_text(text)
    cwd, cache = os.getcwd(), os.environ.get("VTBENCH_CACHE_DIR")
    os.chdir(ws)
    os.environ["VTBENCH_CACHE_DIR"] = str(ws / "cache")  # `vtbench models` caches here, not in the user's home
    sys.path.insert(0, str(ws))
    try:
        code, _ = run_vtbench(shlex.split(FIXTURE_LAUNCH)[1:])
        assert code == 0, "the fixture launch failed"
        yield ws
    finally:
        sys.path.remove(str(ws))
        os.chdir(cwd)
        if cache is None:
            os.environ.pop("VTBENCH_CACHE_DIR", None)
        else:
            os.environ["VTBENCH_CACHE_DIR"] = cache


def _run_in(ws: Path, command: str) -> tuple[int, str, list[str]]:
    """Run `command` (parts joined by ` && ` in turn) in the workspace: (exit code, stdout, words of the last)."""
    code, stdout, words = 0, "", []
    for part in command.replace("CELL_ID", _first_cell(ws)).split(" && "):
        first, *piped = part.split(" | ")
        words = shlex.split(first)
        if words[0] == "python":
            code, stdout = run_python_module(words[1:])
        else:
            assert words[0] == "vtbench", part
            code, stdout = run_vtbench(words[1:])
        for reader in piped:  # `| python3 -m json.tool`, `| head -1`: fed what vtbench printed
            if code == 0:
                done = subprocess.run(shlex.split(reader), input=stdout, cwd=ws, capture_output=True, text=True,
                                      timeout=120)
                code, stdout = done.returncode, done.stdout + (done.stderr if done.returncode else "")
        if code != 0:
            break
    return code, stdout, words


def _first_cell(ws: Path) -> str:
    cells = ws / "runs/smoke/cells.json"
    return json.loads(cells.read_text())[0]["cell_id"] if cells.is_file() else "0" * 12


# ------------------------------------------------------------------------------------------- tests
def test_every_shown_command_is_covered_and_every_entry_is_shown():
    shown = shown_commands()
    assert len(shown) > 20
    missing = sorted(set(shown) - set(COVERAGE))
    stale = sorted(set(COVERAGE) - set(shown))
    assert not missing, "commands shown in the docs with no entry in COVERAGE:\n" + "\n".join(missing)
    assert not stale, "COVERAGE entries no page shows any more:\n" + "\n".join(stale)


def test_the_readme_shows_the_two_setup_commands_and_stays_short():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = commands_of(readme)
    assert commands[:2] == [
        "pip install -e . && vtbench launch experiments/smoke.yaml --wait && vtbench report runs/smoke",
        "bash scripts/test.sh"]
    assert "bash scripts/test.sh" in (ROOT / ".ci/run").read_text()
    assert len(readme.splitlines()) <= 130
    import yaml

    side = yaml.safe_load((ROOT / "experiments/smoke.yaml").read_text())["base"]["input_size"]
    assert f"({side}x{side} inputs" in readme, f"the README's main job should say {side}x{side}, as smoke.yaml does"


@pytest.mark.parametrize("command", sorted(COVERAGE))
def test_shown_vtbench_commands_parse_as_shown(command):
    """Every flag, choice and sub-command a page shows exists today (also for commands not run)."""
    from bench.cli import build_parser

    for argv in vtbench_parts(command):
        if any(word == "CELL_ID" for word in argv):
            argv = [word.replace("CELL_ID", "0" * 12) for word in argv]
        try:
            build_parser(argv).parse_args(argv)
        except SystemExit as exc:  # --version and --help end here, with 0
            assert exc.code == 0, f"`vtbench {' '.join(argv)}` does not parse (exit {exc.code})"


def _runnable() -> list:
    """The commands run (as shown or cheaper), the slow ones marked so."""
    return [pytest.param(command, marks=[pytest.mark.slow] if cover.slow else [])
            for command, cover in sorted(COVERAGE.items()) if cover.run is not NOT_RUN]


@pytest.mark.parametrize("command", _runnable())
def test_shown_command_runs(command, workspace):
    cover = COVERAGE[command]
    if "timm:" in command:
        pytest.importorskip("timm")
    if "fashion_mnist" in command and not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    if cover.run == FIXTURE_LAUNCH:
        assert (workspace / "runs/smoke/records").is_dir()  # the fixture ran it, exit 0
        return
    if cover.requires is not None:
        _run_once(workspace, cover.requires)
    results_before = _tree_state(ROOT / "results")
    code, stdout, words = _run_in(workspace, command if cover.run == SAME else cover.run)
    _done.add((workspace, command))
    assert code == 0, f"exit {code}: {' '.join(words)}\n{stdout[-2000:]}"
    if cover.expect is not None:
        cover.expect(workspace, stdout, words)
    assert _tree_state(ROOT / "results") == results_before, "the command changed the committed results/"


_done: set[tuple[Path, str]] = set()  # (workspace, shown command) already run


def _run_once(ws: Path, command: str) -> None:
    """Run a shown command's cheap form unless this workspace has run it already."""
    if (ws, command) not in _done:
        cover = COVERAGE[command]
        code, stdout, words = _run_in(ws, command if cover.run == SAME else cover.run)
        assert code == 0, f"prerequisite failed, exit {code}: {' '.join(words)}"
        _done.add((ws, command))


def _tree_state(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("command", sorted(c for c in COVERAGE if not c.startswith(("vtbench", "SLURM_CONF", "python"))))
def test_other_programs_commands_are_checked(command):
    """pip, bash, apt-get, tensorboard: what can be checked without running them."""
    words = shlex.split(command.split(" && ")[0])
    if words[:2] == ["pip", "install"]:
        spec = words[-1]
        extra = re.fullmatch(r"\.\[(\w+)\]", spec)
        pyproject = (ROOT / "pyproject.toml").read_text()
        assert spec == "." or (extra and re.search(rf"^{extra[1]} = \[", pyproject, re.M)), spec
    elif words[0] == "bash":
        script = ROOT / words[1]
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, f"{script} does not parse"
        if words[1] == "scripts/slurm_cluster.sh":
            assert re.search(rf"^\s*[\w|]*\b{words[2]}\b[\w|]*\)", script.read_text(), re.M), f"{script} has no `{words[2]}`"
    elif words[:2] == ["apt-get", "install"]:
        assert f"apt-get install -y -qq {words[2]}" in (ROOT / "scripts/test.sh").read_text()
        assert words[2] in (ROOT / "bench/measure/data.py").read_text()
    elif words[0] == "tensorboard":
        assert words[1:3] == ["--logdir", "runs/r18/tensorboard"]
    else:
        pytest.fail(f"no check for {command!r}")


def test_results_commands_are_the_regeneration_commands():
    """The render shown in results.md is results/REGENERATE.yaml's, so tests/test_regeneration.py runs it."""
    import yaml

    renders = {entry["render"] for entry in yaml.safe_load((ROOT / "results/REGENERATE.yaml").read_text()).values()
               if isinstance(entry, dict) and "render" in entry}
    for command in commands_of((ROOT / "docs/results.md").read_text()):
        if command.startswith("vtbench report results/"):
            assert re.sub(r"--out \S+", "--out {out}", command) in renders, command


def test_records_page_names_every_field_of_the_contract():
    from bench.core import contracts

    page = (ROOT / "docs/records.md").read_text(encoding="utf-8")
    for model in (contracts.Record, contracts.CellConfig, contracts.LatencyOptions, contracts.TrainOptions,
                  contracts.ComplexityOptions, contracts.Resources, contracts.ModelBlock, contracts.RecordError,
                  contracts.Remeasurement, contracts.RemeasureSession):
        for name, field in model.model_fields.items():
            assert f"`{field.alias or name}`" in page, f"docs/records.md does not name {model.__name__}.{name}"
    for metric in contracts.NUMERIC_METRICS:
        assert f"`{metric}`" in page, f"docs/records.md does not name the metric {metric}"
    assert f"`{contracts.SCHEMA}`" in page


def test_results_page_names_every_committed_result():
    page = (ROOT / "docs/results.md").read_text(encoding="utf-8")
    for folder in sorted(p.name for p in (ROOT / "results").iterdir() if p.is_dir()):
        assert f"`{folder}`" in page or f"results/{folder}/" in page, f"docs/results.md does not name results/{folder}"


def test_guide_names_every_grid_and_every_data_set():
    """The guide's tables list every grid of experiments/ and every registered data set."""
    from bench.measure.data import list_datasets

    guide = (ROOT / "docs/guide.md").read_text(encoding="utf-8")
    for grid in sorted(p.name for p in (ROOT / "experiments").glob("*.yaml")):
        assert f"`{grid}`" in guide, f"docs/guide.md does not list experiments/{grid}"
    for name in list_datasets():
        assert f"`{name}`" in guide, f"docs/guide.md does not list the data set {name}"


def test_links_between_pages_resolve():
    """Every relative link of the README and docs/ names a file that exists, and an anchor it has."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.exists(), f"{page.relative_to(ROOT)}: link to missing {target}"
            if anchor and file.suffix == ".md":
                assert anchor in _anchors(file), f"{page.relative_to(ROOT)}: no #{anchor} in {file.name}"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    anchors = set()
    for heading in re.findall(r"^#+\s+(.*)$", page.read_text(encoding="utf-8"), re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return anchors


@pytest.mark.slow
def test_main_job_as_shown(tmp_path):
    """The README's main job, exactly as shown (the install apart): launch, wait, report."""
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments")
    main_job = commands_of((ROOT / "README.md").read_text())[0]
    for part in main_job.split(" && ")[1:]:
        done = subprocess.run(shlex.split(part), cwd=tmp_path, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, f"{part}: exit {done.returncode}\n{done.stderr[-3000:]}"
    report = tmp_path / "runs/smoke/report"
    assert (report / "report.md").is_file() and (report / "table.csv").is_file()
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs/smoke/records").glob("*.json")]
    trained = {r["config"]["model"] for r in records if r["status"] == "ok" and "top1" in r["metrics"]}
    assert {"resnet18", "vt_resnet18"} <= trained, trained
