"""Model facts live in the registry: each registered variant's facts match the model it builds, the
registry does not import the zoo, and bench/ asks the registry instead of parsing model names."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from models import build_model, list_models, model_facts, model_options, stage_order

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("name", list_models())
def test_facts_match_the_built_model(name):
    """Stages are the model's top-level children in order, the task is the model's own, and the
    defaults are the factory's signature (a fresh instance: nothing shared with other tests)."""
    facts = model_facts(name)
    model = build_model(name, num_classes=5)
    assert facts.name == name
    assert facts.stages == tuple(child for child, _ in model.named_children())
    assert facts.task == model.task
    assert facts.replaced in facts.stages
    assert dict(facts.defaults) == model_options(name)
    assert isinstance(facts.depth, int) and facts.depth in (18, 34, 50, 101)


@pytest.mark.parametrize("name", [n for n in list_models() if model_facts(n).baseline])
def test_baseline_is_registered_and_comparable(name):
    """A VT model's baseline is a registered baseline of the same task and depth, sharing its trunk."""
    vt, base = model_facts(name), model_facts(model_facts(name).baseline)
    assert base.baseline is None and base.family != vt.family
    assert (base.task, base.depth) == (vt.task, vt.depth)
    trunk = base.stages.index(base.replaced)
    assert vt.stages[:trunk] == base.stages[:trunk]


def test_every_family_has_its_pairs():
    """Every registered model is a baseline of some VT model or has one (the report's pairs)."""
    facts = [model_facts(n) for n in list_models()]
    baselines = {f.baseline for f in facts if f.baseline}
    assert all(f.name in baselines or f.baseline for f in facts)


def test_facts_are_frozen():
    facts = model_facts("vt_resnet18")
    with pytest.raises(dataclasses.FrozenInstanceError):
        facts.depth = 50  # type: ignore[misc]
    with pytest.raises(TypeError):
        facts.defaults["num_tokens"] = 4  # type: ignore[index]
    assert model_facts("vt_resnet18").defaults["num_tokens"] == 16


def test_unknown_model_facts_raise_with_a_hint():
    with pytest.raises(ValueError, match="did you mean vt_resnet18"):
        model_facts("vt_resnet81")


def test_stage_order_is_every_models_order_merged():
    assert stage_order() == ("stem", "stage2", "stage3", "stage4", "stage5", "vt", "fpn", "head")
    for name in list_models():
        stages = model_facts(name).stages
        assert [s for s in stage_order() if s in stages] == list(stages), name


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_registry_does_not_import_the_zoo():
    """The zoo imports the registry; the registry never imports the zoo (no cycle)."""
    assert not any("zoo" in m for m in _imported_modules(REPO / "models" / "registry.py"))


def test_unregistered_models_are_other_without_guessing_from_the_name():
    from bench.core.modelfacts import facts_of

    for name in ("timm:resnet18", "resnet_like:build", "torchvision.models:resnet50", "vt_resnet18_old"):
        facts = facts_of(name)
        assert (facts.family, facts.depth, facts.baseline, facts.stages) == ("other", None, None, ()), name
    assert facts_of("vt_resnet18") == model_facts("vt_resnet18")


# Name parsing that the registry replaced: a prefix test on a model family, digits pulled out of a
# string, or a VT name cut down to its baseline's.
_NAME_PARSING = re.compile(r"""(startswith|replace)\(\(?["'](vt_|resnet|fpn)|["'](vt_|resnet|fpn)\w*["'] in |"""
                           r"""(model|\bm)\)?\[3:\]|model.*isdigit""")


def test_no_module_of_bench_parses_a_model_name():
    hits = [f"{path.relative_to(REPO)}:{i}: {line.strip()}"
            for path in sorted((REPO / "bench").rglob("*.py"))
            for i, line in enumerate(path.read_text().splitlines(), 1) if _NAME_PARSING.search(line)]
    assert not hits, hits
