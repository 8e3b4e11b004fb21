"""Facts about the model a record names, asked of the registry (`models.model_facts`), never of its name.

A record may name a model the registry does not hold: a `timm:NAME` or `package.module:attr` model,
or a variant of an older checkout. Such a model gets `other_facts`: family "other", classification,
no depth, no baseline, no stages and no defaults. Nothing is guessed from the name, so a user's
`resnet_like:build` is not mistaken for a ResNet.
"""

from __future__ import annotations

import functools
from types import MappingProxyType
from typing import Any, Mapping

from models import ModelFacts, is_registered, list_families, list_models, model_facts

OTHER_FAMILY = "other"


def facts_of(model: Any) -> ModelFacts:
    """The registry's facts about `model`, or `other_facts` for a model it does not know."""
    name = str(model)
    return model_facts(name) if is_registered(name) else other_facts(name)


@functools.lru_cache(maxsize=None)
def other_facts(name: str) -> ModelFacts:
    """What is known of an unregistered model: nothing beyond its name (reports treat it as classification)."""
    return ModelFacts(name=name, family=OTHER_FAMILY, task="cls", depth=None, baseline=None, stages=(),
                      replaced=None, defaults=MappingProxyType({}))


def recorded_defaults(model: Any) -> dict[str, Any] | None:
    """`model`'s keyword options and their defaults as a record holds them (JSON values); None if unregistered."""
    facts = facts_of(model)
    return {k: _json_value(v) for k, v in facts.defaults.items()} if facts.defaults else None


def _json_value(value: Any) -> Any:
    """A default as JSON holds it (a tuple becomes a list; anything else JSON cannot hold, its text)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return str(value)


def changed_defaults(record: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The options a record's cell leaves unset whose default has changed since it ran: {option: (then, now)}.

    "Then" is the record's own `model.defaults`; a record without them (written before records
    carried them) and a model the registry no longer knows have nothing to compare, so nothing
    changed. An option added since, or removed since, is not a change: only a value that differs.
    """
    config = record.get("config") or {}
    block = record.get("model")
    then = block.get("defaults") if isinstance(block, Mapping) else None
    now = recorded_defaults(config.get("model")) if isinstance(then, Mapping) else None
    if not then or not now:
        return {}
    given = config.get("model_args") or {}
    return {k: (then[k], now[k]) for k in sorted(set(then) & set(now)) if k not in given and then[k] != now[k]}


def describe_changed_defaults(changed: Mapping[str, tuple[Any, Any]]) -> str:
    """`changed_defaults`' answer as one line: "model default OPTION THEN -> NOW, ..."."""
    return "model default " + ", ".join(f"{k} {then!r} -> {now!r}" for k, (then, now) in changed.items())


def family_of(model: Any) -> str:
    """The family of `model`: a registered family, or "other"."""
    return facts_of(model).family


def family_order() -> list[str]:
    """Families in registration order (each baseline family before its VT family), "other" last."""
    return [*list_families(), OTHER_FAMILY]


@functools.lru_cache(maxsize=1)
def baseline_models() -> frozenset[str]:
    """The registered models that some VT variant names as its baseline."""
    return frozenset(b for b in (model_facts(n).baseline for n in list_models()) if b)


def is_baseline(model: Any) -> bool:
    """Whether `model` is the baseline of some registered VT variant (ResNet-N, FPN-RN)."""
    return str(model) in baseline_models()


def models_of(family: str) -> list[str]:
    """The registered models of `family`, shallowest first (resnet18, resnet34, resnet50, resnet101)."""
    names = [n for n in list_models() if model_facts(n).family == family]
    return sorted(names, key=lambda n: (model_facts(n).depth or 0, n))
