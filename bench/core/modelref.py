"""Resolve a MODEL_OR_IMPORT_PATH: a registered variant name, `timm:NAME`, or `package.module:callable`.

`vtbench profile` (and anything else that measures "a model") accepts each form, so a user can
measure their own network, or the one they compare against, exactly as the registered ones are
measured:

    vtbench profile vt_resnet18 --set num_tokens=8
    vtbench profile timm:resnet18 --no-latency           # timm's model by name (pip install -e '.[timm]')
    vtbench profile torchvision.models:resnet18 --set num_classes=10
    vtbench profile mypkg.nets:build_net                 # mypkg in the current directory, or installed

An import path names a module and an attribute in it (dots allowed on both sides, e.g.
`pkg.mod:Factory.create`); the attribute must be callable and return an `nn.Module` when called
with the `--set` overrides as keyword arguments. The current directory is searched too, after
the installed packages (as `python -m` would, but last, so that a folder's files never shadow
vtbench's or torch's own modules). `timm:NAME` is `timm.create_model(NAME, **overrides)`, never
with pretrained weights unless `--set pretrained=true` asks for them; timm is an optional extra,
and without it `timm:` says which extra to install.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

import models
from bench.core.errors import UsageError, UserCodeError, describe_exception

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_IMPORT_PATH = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")
DEFAULT_INPUT_SIZE = 224
TIMM_PREFIX = "timm:"
TIMM_EXTRA = "pip install -e '.[timm]' (or pip install timm)"
_TIMM_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # timm names may carry a .tag


@dataclass
class ModelRef:
    """A resolved model reference: what the user typed and how to build it."""

    ref: str
    kind: str  # "registry", "timm" or "import"
    factory: Callable[..., nn.Module] = field(repr=False)

    def build(self, **overrides: Any) -> nn.Module:
        """Build the model with keyword overrides; raise UsageError if it is not an nn.Module."""
        try:
            model = self.factory(**overrides)
        except TypeError as exc:
            if self.kind in ("import", "timm"):
                raise UsageError(f"{self.ref} could not be called with {_kwargs_text(overrides)}: {exc}") from exc
            raise
        except (Exception, SystemExit) as exc:
            # The user's factory failed while it ran. A `sys.exit()` inside it must not end the
            # command with its status (sys.exit(0) would look like success); report it instead.
            # But an exit that submitit's signal handler raised while the factory ran (a requeue
            # on preemption or time-out, a cancel) is the job's, not the user's: it passes through.
            if isinstance(exc, SystemExit) and raised_by_job_machinery(exc):
                raise
            if self.kind == "import":
                raise UserCodeError(self.ref, exc) from exc
            if self.kind == "timm" and isinstance(exc, Exception):  # timm refused an option: one line
                raise UsageError(f"timm could not build {self.ref} with {_kwargs_text(overrides)}: "
                                 f"{describe_exception(exc)}") from exc
            raise
        if not isinstance(model, nn.Module):
            raise UsageError(f"{self.ref} returned {type(model).__name__}, not a torch.nn.Module")
        return model


# Where the job machinery's own exits come from: submitit's signal handlers (`sys.exit(-1)` after
# requeueing, UncompletedJobError) run inside whatever frame the signal interrupted.
_JOB_MACHINERY = (f"{os.sep}submitit{os.sep}",)


def raised_by_job_machinery(exc: BaseException) -> bool:
    """True when a frame of `exc`'s traceback is in submitit (its signal handler raised it)."""
    tb = exc.__traceback__
    while tb is not None:
        if any(part in tb.tb_frame.f_code.co_filename for part in _JOB_MACHINERY):
            return True
        tb = tb.tb_next
    return False


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
    if ref.startswith(TIMM_PREFIX):
        return ModelRef(ref, "timm", _timm_factory(ref[len(TIMM_PREFIX):]))
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
    cwd = current_dir_importable()
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        hint = ""
        if isinstance(exc, ModuleNotFoundError) and exc.name == module_name.split(".")[0]:
            hint = (f" (searched the installed packages and the current directory {cwd}; run from the folder "
                    "that holds it, or add that folder to PYTHONPATH)")
        raise UsageError(f"cannot import module {module_name!r} for {ref}: {exc}{hint}") from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{ref}: {type(obj).__name__} {getattr(obj, '__name__', obj)!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"{ref} is a {type(obj).__name__}, not a callable that builds a model")
    return obj


def factory_options(ref: str) -> dict[str, Any] | None:
    """The keyword options of the factory an import path names, found WITHOUT importing its module
    when it is not imported yet: the module's file is located (`importlib.machinery.PathFinder`, no
    package `__init__` run) and its source read with `ast`. `{"**": None}` when the factory takes
    any keyword or cannot be read statically (its options are then checked when its cell runs).

    What `vtbench launch --dry-run` and grid validation use: a grid's module-level code must not run
    before the grid is launched. UsageError when the module or the name cannot exist.
    """
    if not _IMPORT_PATH.match(ref):
        raise UsageError(f"malformed import path {ref!r}; expected package.module:callable")
    module_name, attr_path = ref.split(":", 1)
    if module_name in sys.modules:  # imported already: looking costs nothing and runs nothing
        return _signature_options(_import_factory(ref))
    source = _module_source(module_name, ref)
    if source is None:  # an extension or a frozen module: nothing to read
        return {"**": None}
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError) as exc:
        raise UsageError(f"cannot import module {module_name!r} for {ref}: its source does not parse ({exc})") from exc
    return _options_in_source(tree, attr_path.split("."), ref)


def _signature_options(factory: Callable[..., Any]) -> dict[str, Any]:
    import inspect

    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature
        return {"**": None}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return {"**": None}
    return {p.name: p.default for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _module_source(module_name: str, ref: str) -> str | None:
    """The source text of `module_name`, found on sys.path (and the current directory) without
    executing it or its packages; UsageError when there is no such module."""
    from importlib.machinery import PathFinder, SourceFileLoader

    cwd = current_dir_importable()
    path = None
    spec = None
    for depth, part in enumerate(module_name.split(".")):
        name = ".".join(module_name.split(".")[:depth + 1])
        spec = PathFinder.find_spec(name, path)
        if spec is None:
            raise UsageError(f"cannot import module {module_name!r} for {ref}: no module named {name!r} "
                             f"(searched the installed packages and the current directory {cwd}; run from "
                             f"the folder that holds it, or add that folder to PYTHONPATH)")
        path = spec.submodule_search_locations
    if spec is None or not isinstance(spec.loader, SourceFileLoader) or not spec.origin:
        return None
    try:
        return Path(spec.origin).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _options_in_source(tree: ast.Module, attrs: list[str], ref: str) -> dict[str, Any]:
    """The options of `attrs` (a function, or a class's constructor) defined at the top of `tree`."""
    body: list[ast.stmt] = tree.body
    node: ast.AST | None = None
    for i, attr in enumerate(attrs):
        node = _defined(body, attr)
        if node is None:
            if i == 0 and not _may_define_dynamically(tree):
                raise UsageError(f"{ref}: module {ref.split(':')[0]!r} has no attribute {attr!r}")
            return {"**": None}
        if isinstance(node, ast.ClassDef):
            body = node.body
        elif i < len(attrs) - 1:
            return {"**": None}
    if isinstance(node, ast.ClassDef):
        init = _defined(node.body, "__init__")
        if not isinstance(init, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return {"**": None}  # inherited: not readable here
        return _ast_options(init.args, drop_first=True)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        is_method = len(attrs) > 1 and not any(getattr(d, "id", None) == "staticmethod" for d in node.decorator_list)
        return _ast_options(node.args, drop_first=is_method)
    return {"**": None}  # assigned, imported, ...: known to exist, options checked at run time


def _defined(body: list[ast.stmt], name: str) -> ast.AST | None:
    """The last top-level statement of `body` that binds `name` (def, class, assignment, import)."""
    found = None
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and stmt.name == name:
            found = stmt
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if any(isinstance(n, ast.Name) and n.id == name for t in targets for n in ast.walk(t)):
                found = stmt
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            if any((alias.asname or alias.name.split(".")[0]) == name for alias in stmt.names):
                found = stmt
        elif isinstance(stmt, (ast.If, ast.Try)):  # `try: import x / except: ...`, `if TYPE_CHECKING:`
            inner = [*stmt.body, *getattr(stmt, "orelse", []), *[s for h in getattr(stmt, "handlers", []) for s in h.body]]
            found = _defined(inner, name) or found
    return found


def _may_define_dynamically(tree: ast.Module) -> bool:
    """A star import or a module `__getattr__` can provide any name."""
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom) and any(alias.name == "*" for alias in stmt.names):
            return True
        if isinstance(stmt, ast.FunctionDef) and stmt.name == "__getattr__":
            return True
        if isinstance(stmt, (ast.Assign, ast.AugAssign)) and "globals" in ast.dump(stmt):
            return True
    return False


def _ast_options(args: ast.arguments, drop_first: bool) -> dict[str, Any]:
    """Keyword-passable parameters (positional-only ones cannot be; `self` is dropped for methods)."""
    if args.kwarg is not None:
        return {"**": None}
    every = [*args.posonlyargs, *args.args]
    first = every[0] if drop_first and every else None
    return {a.arg: None for a in (*args.args, *args.kwonlyargs) if a is not first}


def current_dir_importable() -> str:
    """Put the current directory on sys.path, last, and return it.

    `python -m` puts it first; the `vtbench` script does not put it at all, so a factory in the
    folder one stands in was "not found". Last, and with vtbench's own `models` imported first (an
    editable install finds it only after sys.path), so a folder's `models/` or `torch.py` cannot
    shadow the modules vtbench and the factory rely on.
    """
    cwd = os.getcwd()  # vtbench's own `models` is imported already (at the top of this module)
    if not any(os.path.abspath(entry or os.curdir) == cwd for entry in sys.path):
        sys.path.append(cwd)
    return cwd


def _timm_factory(name: str) -> Callable[..., nn.Module]:
    """A factory that builds timm's model `name` (checked to exist now), with the attributes
    vtbench reads (`default_input_size` from its pretrained config, `task`)."""
    if not _TIMM_NAME.match(name):
        raise UsageError(f"malformed timm model name {name!r}; expected timm:NAME, e.g. timm:resnet18")
    try:
        import timm
    except ModuleNotFoundError as exc:
        if exc.name != "timm":
            raise UsageError(f"timm is installed but cannot be imported: {exc}") from exc
        raise UsageError(f"{TIMM_PREFIX}{name} needs timm, an optional extra: {TIMM_EXTRA}") from exc
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise UsageError(f"timm has no model {name!r}{hint}; timm.list_models('*PATTERN*') lists them")

    def build(**overrides: Any) -> nn.Module:
        model = timm.create_model(name, **overrides)
        size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
        if not hasattr(model, "default_input_size") and size and len(size) == 3 and size[1] == size[2]:
            model.default_input_size = int(size[1])
        if not hasattr(model, "task"):
            model.task = "cls"  # timm's create_model builds classifiers (features_only aside)
        return model

    return build


def _registry_factory(name: str) -> Callable[..., nn.Module]:
    """A factory that builds the registered variant `name` (checked to exist now)."""
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
