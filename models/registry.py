"""A registry of named model variants (torchvision `register_model` / timm `@register_model`).

Each variant is a small factory with explicit keyword arguments, registered with the facts about it
(`ModelFacts`: family, task, depth, baseline, stage names, default options), as torchvision keeps
weights metadata and timm keeps `default_cfgs` beside the builder. `build_model(name, **overrides)`
checks every override against the factory's signature, so an override that does not apply to a
model (a tokenizer on a plain ResNet) fails loudly with the list of what does apply.

The registry never imports the variants: `models/__init__.py` imports `models.zoo`, whose registrations
fill it, so importing `models` (or anything under it) always sees every variant.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

from torch import nn

TASKS = ("cls", "seg")


@dataclass(frozen=True)
class Family:
    """What every variant of one architecture shares: its task, top-level stages and replaced stage."""

    name: str
    task: str
    stages: tuple[str, ...]
    replaced: str  # the stage a VT model swaps in and its baseline's counterpart ("stage5", "vt", "fpn")

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"family {self.name!r}: task must be one of {TASKS}, got {self.task!r}")
        if self.replaced not in self.stages:
            raise ValueError(f"family {self.name!r}: replaced stage {self.replaced!r} is not one of {self.stages}")


@dataclass(frozen=True)
class ModelFacts:
    """Facts about one registered variant, so that nothing outside `models/` parses its name."""

    name: str
    family: str
    task: str
    depth: int | None
    baseline: str | None  # the model a VT variant is compared with; None for a baseline
    stages: tuple[str, ...]  # the model's top-level children, in order
    replaced: str | None  # the stage whose MACs a report compares across a pair
    defaults: Mapping[str, object]  # keyword options and their defaults (read-only)

    def as_dict(self) -> dict[str, object]:
        """The facts as plain JSON-able values (for a record or a table)."""
        return {"name": self.name, "family": self.family, "task": self.task, "depth": self.depth,
                "baseline": self.baseline, "stages": list(self.stages), "replaced": self.replaced,
                "defaults": dict(self.defaults)}


_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_FACTS: dict[str, ModelFacts] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, family: Family, depth: int | None = None,
                   baseline: str | None = None, name: str | None = None):
    """Register a factory under `name` (default: the function's name) with its facts; a duplicate raises."""

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or factory.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        _REGISTRY[key] = factory
        _FACTS[key] = ModelFacts(name=key, family=family.name, task=family.task, depth=depth, baseline=baseline,
                                 stages=family.stages, replaced=family.replaced,
                                 defaults=MappingProxyType(_signature_defaults(factory)))
        return factory

    return decorator(fn) if fn is not None else decorator


def _signature_defaults(factory: Callable[..., nn.Module]) -> dict[str, object]:
    """The factory's keyword options with their defaults (None where it has none): the one source."""
    return {
        pname: (p.default if p.default is not inspect.Parameter.empty else None)
        for pname, p in inspect.signature(factory).parameters.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }


def list_models() -> list[str]:
    """Names of all registered variants, sorted."""
    return sorted(_REGISTRY)


def is_registered(name: str) -> bool:
    """Whether `name` is a registered variant (a record may name a timm or import-path model instead)."""
    return name in _REGISTRY


def model_facts(name: str) -> ModelFacts:
    """The facts registered with variant `name`; an unknown name raises as `build_model` does."""
    _get_factory(name)
    return _FACTS[name]


def list_families() -> list[str]:
    """Family names in the order their first variant was registered (baseline before its VT family)."""
    return list(dict.fromkeys(facts.family for facts in _FACTS.values()))


def stage_order() -> tuple[str, ...]:
    """Every registered model's stage names merged into one order that keeps each model's own order.

    Derived, not listed, so that a new family's stages land in the order without a second copy: a
    stage not seen yet goes just before the first of its model's later stages already placed
    (`vt` and `fpn` before `head`), or at the end.
    """
    order: list[str] = []
    for facts in _FACTS.values():
        for i, stage in enumerate(facts.stages):
            if stage not in order:
                later = [s for s in facts.stages[i + 1:] if s in order]
                order.insert(order.index(later[0]) if later else len(order), stage)
    return tuple(order)


def model_options(name: str) -> dict[str, object]:
    """The keyword options a variant accepts, with their defaults."""
    return dict(model_facts(name).defaults)


def build_model(name: str, **overrides) -> nn.Module:
    """Build the registered variant `name`; every override must be one of its options."""
    factory = _get_factory(name)
    allowed = model_options(name)
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(
            f"option(s) {', '.join(unknown)} do not apply to {name!r}; "
            f"it accepts: {', '.join(sorted(allowed)) or 'nothing'}"
        )
    return factory(**overrides)


def _get_factory(name: str) -> Callable[..., nn.Module]:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
