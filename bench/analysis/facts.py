"""Facts about the models a report shows (family, task, depth, baseline, stages, defaults), torch-free.

A record of schema /2 carries its model's facts (its `model` block, written from the registry when
the cell ran): the analysis reads them from there (`remember`, called for every record loaded), so
that `vtbench report` needs neither torch nor the model zoo. Only what a record does not carry is
asked of the registry (`bench.core.modelfacts`, which imports torch): the facts of a /1 record's
model, and the options' defaults that label a cell "default (V)". Where torch cannot be imported,
those stay unknown and the report says "default" without the value; nothing is guessed from a
model's name.
"""

from __future__ import annotations

import functools
from types import MappingProxyType
from typing import Any, Mapping

from bench.analysis.compare import Facts

OTHER_FAMILY = "other"
# Tasks in the order a report shows them (classification, then segmentation, then anything else).
TASK_ORDER = ("cls", "seg")

_from_records: dict[str, Facts] = {}   # model name -> facts its records carried (identical for one name)


def _block_facts(name: str, block: Mapping[str, Any], defaults: Mapping[str, Any] | None) -> Facts:
    return Facts(name=name, family=str(block.get("family") or OTHER_FAMILY), task=str(block.get("task") or "cls"),
                 depth=block.get("depth"), baseline=block.get("baseline"), stages=tuple(block.get("stages") or ()),
                 replaced=block.get("replaced"), defaults=defaults)


def remember(record: Mapping[str, Any]) -> Facts:
    """The facts of a record's model: its `model` block (defaults from the block or the registry),
    else the registry's; remembered under the model's name for the tables and plots."""
    name = str((record.get("config") or {}).get("model"))
    block = record.get("model")
    if isinstance(block, Mapping):
        given = block.get("defaults")
        defaults = MappingProxyType(dict(given)) if isinstance(given, Mapping) else _registry_defaults(name)
        facts = _block_facts(name, block, defaults)
    else:
        facts = _registry_facts(name) or Facts(name=name)
    _from_records.setdefault(name, facts)
    return facts


@functools.lru_cache(maxsize=1)
def _registry() -> Any:
    """`bench.core.modelfacts` where the model zoo (torch) can be imported here, else None."""
    try:
        from bench.core import modelfacts
    except ImportError:
        return None
    return modelfacts


@functools.lru_cache(maxsize=None)
def _registry_facts(name: str) -> Facts | None:
    registry = _registry()
    if registry is None:
        return None
    f = registry.facts_of(name)
    return Facts(name=name, family=f.family, task=f.task, depth=f.depth, baseline=f.baseline, stages=tuple(f.stages),
                 replaced=f.replaced, defaults=MappingProxyType(dict(f.defaults)) if f.family != OTHER_FAMILY else None)


def _registry_defaults(name: str) -> Mapping[str, Any] | None:
    facts = _registry_facts(name)
    return facts.defaults if facts is not None else None


def registry_available() -> bool:
    """Whether the model registry (and so torch) can be imported in this process."""
    return _registry() is not None


def facts_of(model: Any) -> Facts:
    """What its records said of `model`, else the registry's facts, else only its name (family "other")."""
    name = str(model)
    return _from_records.get(name) or _registry_facts(name) or Facts(name=name)


def family_of(model: Any) -> str:
    """The model's family ("other" where nothing is known of it)."""
    return facts_of(model).family


def defaults_of(model: Any) -> Mapping[str, Any] | None:
    """The model's options and their defaults; None where they cannot be known in this process."""
    return facts_of(model).defaults


def is_baseline(model: Any) -> bool:
    """Whether some VT model known here names `model` as its baseline."""
    name = str(model)
    if any(f.baseline == name for f in _from_records.values()):
        return True
    registry = _registry()
    return bool(registry is not None and registry.is_baseline(name))


def group_family(model: Any) -> str:
    """The family a model sorts with: its baseline's family for a VT model (VT-ResNet with ResNet)."""
    facts = facts_of(model)
    return facts_of(facts.baseline).family if facts.baseline else facts.family


def family_rank(model: Any) -> tuple:
    """Where a model sorts: task (classification first), the family it sorts with, depth, then a
    baseline before its VT variant, all from the facts (registration order where the registry is here)."""
    facts = facts_of(model)
    registry = _registry()
    group = group_family(model)
    if registry is not None:
        order = registry.family_order()
        group_rank: Any = order.index(group) if group in order else len(order)
    else:
        group_rank = (TASK_ORDER.index(facts.task) if facts.task in TASK_ORDER else len(TASK_ORDER), group)
    return group_rank, facts.depth or 0, facts.baseline is not None
