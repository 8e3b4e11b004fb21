"""The analysis room never needs torch: every `bench.analysis` module imports, and `vtbench report`
writes a report, in a process where importing torch fails (a meta-path finder refuses it)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import bench.analysis

REPO = Path(__file__).resolve().parents[1]
BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked in this test ({name})")
        return None
sys.meta_path.insert(0, _NoTorch())
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def analysis_modules() -> list[str]:
    return sorted(f"bench.analysis.{m.name}" for m in pkgutil.iter_modules(bench.analysis.__path__))


def test_the_blocker_really_blocks_torch():
    result = _run("import torch")
    assert result.returncode != 0 and "torch is blocked" in result.stderr


def test_every_analysis_module_imports_without_torch():
    modules = analysis_modules()
    assert {"bench.analysis.compare", "bench.analysis.load", "bench.analysis.report"} <= set(modules)
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "assert 'torch' not in sys.modules\n"
    result = _run(code)
    assert result.returncode == 0, result.stderr[-2000:]


def test_vtbench_report_runs_without_torch(tmp_path):
    out = tmp_path / "report"
    code = ("from bench.cli import main\n"
            f"code = main(['report', {str(REPO / 'results' / 'speed_cpu_grid')!r}, '--out', {str(out)!r}])\n"
            "assert 'torch' not in sys.modules\n"
            "sys.exit(code)\n")
    result = _run(code)
    assert result.returncode == 0, result.stderr[-3000:]
    md = (out / "report.md").read_text()
    assert "## VT vs baseline: latency" in md and "## Summary" in md
    assert "torch cannot be imported here" in md  # the attention figure says why it is absent


def test_a_torch_free_report_of_records_without_model_facts_says_what_it_cannot_give(tmp_path):
    """Schema /1 records carry no model block; without torch the registry cannot stand in, so the report
    says which records lost their baselines and stages instead of silently showing no comparison."""
    out = tmp_path / "report"
    code = ("from bench.analysis.report import write_report\n"
            f"write_report([{str(REPO / 'results' / 'fashion_ablation')!r}], {str(out)!r}, formats=['md'])\n"
            "assert 'torch' not in sys.modules\n")
    result = _run(code)
    assert result.returncode == 0, result.stderr[-3000:]
    md = (out / "report.md").read_text()
    assert "51 record(s) (resnet18, vt_resnet18) predate the records' model facts" in md
    assert "cannot be imported here (no torch)" in md
