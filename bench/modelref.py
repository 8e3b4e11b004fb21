"""Resolve a MODEL_OR_IMPORT_PATH: a registered variant name, or `package.module:callable`.

`vtbench profile` (and anything else that measures "a model") accepts either form, so a user can
measure their own network exactly as the registered ones are measured:

    vtbench profile vt_resnet18 --set num_tokens=8
    vtbench profile torchvision.models:resnet18 --set num_classes=10
    vtbench profile mypkg.nets:build_net

An import path names a module and an attribute in it (dots allowed on both sides, e.g.
`pkg.mod:Factory.create`); the attribute must be callable and return an `nn.Module` when called
with the `--set` overrides as keyword arguments.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from bench.errors import UsageError, UserCodeError

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_IMPORT_PATH = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")
DEFAULT_INPUT_SIZE = 224


@dataclass
class ModelRef:
    """A resolved model reference: what the user typed and how to build it."""

    ref: str
    kind: str  # "registry" or "import"
    factory: Callable[..., nn.Module] = field(repr=False)

    def build(self, **overrides: Any) -> nn.Module:
        """Build the model with keyword overrides; raise UsageError if it is not an nn.Module."""
        try:
            model = self.factory(**overrides)
        except TypeError as exc:
            if self.kind == "import":
                raise UsageError(f"{self.ref} could not be called with {_kwargs_text(overrides)}: {exc}") from exc
            raise
        except (Exception, SystemExit) as exc:
            # The user's factory failed while it ran. A `sys.exit()` inside it must not end the
            # command with its status (sys.exit(0) would look like success); report it instead.
            if self.kind == "import":
                raise UserCodeError(self.ref, exc) from exc
            raise
        if not isinstance(model, nn.Module):
            raise UsageError(f"{self.ref} returned {type(model).__name__}, not a torch.nn.Module")
        return model


def _kwargs_text(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "no arguments"


def is_import_path(ref: str) -> bool:
    """True when `ref` looks like an import path (it has a colon)."""
    return ":" in ref


def resolve_model_ref(ref: str) -> ModelRef:
    """Resolve a registry name or `package.module:callable`; raise UsageError with one clear line.

    Resolving an import path imports its module and looks the attribute up, but never calls it:
    grid validation and `launch --dry-run` resolve models, and must not run the user's code.
    Only `ModelRef.build` (a cell being run or profiled) calls it.
    """
    ref = ref.strip()
    if not ref:
        raise UsageError("empty model name")
    if is_import_path(ref):
        return ModelRef(ref, "import", _import_factory(ref))
    if "." in ref or "/" in ref:
        raise UsageError(f"unknown model {ref!r}: an import path needs a colon, as in package.module:callable")
    return ModelRef(ref, "registry", _registry_factory(ref))


def _import_factory(ref: str) -> Callable[..., nn.Module]:
    """Import `module:attr.path` and check that the attribute is callable."""
    if not _IMPORT_PATH.match(ref):
        raise UsageError(f"malformed import path {ref!r}; expected package.module:callable")
    module_name, attr_path = ref.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import module {module_name!r} for {ref}: {exc}") from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{ref}: {type(obj).__name__} {getattr(obj, '__name__', obj)!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"{ref} is a {type(obj).__name__}, not a callable that builds a model")
    return obj


def _registry_factory(name: str) -> Callable[..., nn.Module]:
    """A factory that builds the registered variant `name` (checked to exist now)."""
    import models

    if name not in models.list_models():
        # build_model's error names the close matches and the known models.
        try:
            models.build_model(name)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    return lambda **overrides: models.build_model(name, **overrides)


def build_from_ref(ref: str, overrides: dict[str, Any] | None = None) -> nn.Module:
    """Resolve `ref` and build it with `overrides` (shortcut for `resolve_model_ref(ref).build`)."""
    return resolve_model_ref(ref).build(**(overrides or {}))


def default_input_size(model: nn.Module) -> int:
    """The model's `default_input_size` attribute (architecture contract), else 224."""
    size = getattr(model, "default_input_size", None)
    return int(size) if isinstance(size, int) and size > 0 else DEFAULT_INPUT_SIZE
