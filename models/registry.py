"""A registry of named model variants (torchvision `register_model` / timm `@register_model`).

Each variant is a small factory with explicit keyword arguments. `build_model(name, **overrides)`
checks every override against the factory's signature, so an override that does not apply to a
model (a tokenizer on a plain ResNet) fails loudly with the list of what does apply.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Register a factory under `name` (default: the function's name); a duplicate raises."""

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or factory.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        _REGISTRY[key] = factory
        return factory

    return decorator(fn) if fn is not None else decorator


def list_models() -> list[str]:
    """Names of all registered variants, sorted."""
    _ensure_zoo_loaded()
    return sorted(_REGISTRY)


def model_options(name: str) -> dict[str, object]:
    """The keyword options a variant accepts, with their defaults."""
    factory = _get_factory(name)
    return {
        pname: (p.default if p.default is not inspect.Parameter.empty else None)
        for pname, p in inspect.signature(factory).parameters.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }


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
    _ensure_zoo_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _ensure_zoo_loaded() -> None:
    """Import the modules whose decorators fill the registry (idempotent)."""
    import models.zoo  # noqa: F401  (registers the variants)
