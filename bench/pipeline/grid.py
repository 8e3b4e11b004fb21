"""Experiment grids: load a YAML study, validate all of it, expand it into resolved cells.

A grid file (``experiments/NAME.yaml``) is a base plus axes, expanded before anything is launched
(pycls sweeps). **A grid names code that it will run**, as any experiment config does: a `model`
given as `package.module:callable` is imported and called with `model_args` when its cells run
(`model: "subprocess:getoutput"` with `model_args: {cmd: ...}` runs that command), and
`resources.setup` lines run in a shell before each job. Launch only grids you would run as
scripts. What vtbench does promise: `vtbench status` and `vtbench report` never import a grid's
modules (they read records), and `vtbench launch --dry-run` neither calls nor imports an
import-path model: it finds the module's file and reads the factory's options from its source
(a factory it cannot read statically is checked when its cell runs)::

    name: token_sweep                       # required; names the run folder (runs/NAME)
    description: VT-R18/R50 FLOPs and CPU latency against the number of visual tokens
    base:                                   # a partial cell (docs/architecture.md, "Cell config")
      model: vt_resnet18                    # a registered name, or package.module:callable
      model_args: {num_classes: 1000}
      measure: [complexity, latency]
      input_size: 224
      latency: {device: cpu, batch_size: 1, threads: 2}
    axes:                                   # cartesian product; every list non-empty
      model: [vt_resnet18, vt_resnet50]
      num_tokens: [4, 8, 16, 32, 64]        # short name of model_args.num_tokens
    include:                                # extra cells (a sub-grid each) over the base
      - {model: resnet18, axes: {seed: [0, 1]}}
    exclude:                                # drop every cell that matches all keys of a rule
      - {model: "vt_resnet50", num_tokens: [4, 64]}   # a list means "any of"; strings may glob
    resources:                              # how each job of the array is sized
      timeout_min: 30                       # PER CELL: the runner kills a cell past it (state `timeout`)
      cpus_per_task: 2
      array_parallelism: 4

Keys in axes, include and exclude may be short: a top-level cell key (`model`, `measure`,
`input_size`, `seed`, ...); `batch_size`, `dtype`, `device` mean `latency.NAME`; an option of
any registered model means `model_args.NAME`; other latency options mean `latency.NAME` and
training options `train.NAME`. Dotted paths (`train.batch_size`) are always accepted. To match
a list value in an exclude rule, wrap it: `input_size: [[800, 1216]]`.

Each cell is fully resolved (defaults filled in; the `latency` / `train` / `complexity` sections
of measurements the cell does not run are emptied, so an axis that cannot change a result does
not multiply cells), given a stable id (`bench.core.records.cell_id_of`), and deduplicated.
Every problem in a grid is collected and raised at once as one `UsageError`.

A grid may have at most `DEFAULT_MAX_CELLS` cells (counted from the axes' lengths, summed over
the include blocks, before exclude rules and before anything is expanded): a typo such as an
axis of 10^4 seeds times 10^4 token counts would otherwise expand 10^8 configs and die of a
MemoryError. `vtbench launch --max-cells N` (or `load_grid(..., max_cells=N)`) raises the cap.

`vtbench launch GRID --set KEY=VALUE` (`load_grid(..., overrides=[(KEY, VALUE), ...])`) changes
the grid before it is validated, hydra's habit (`apply_overrides`): `base.input_size=32`,
`base.latency.threads=1`, `base.num_tokens=8` (a short name, as in the axes),
`axes.num_tokens=[8,16]` (replaces the axis, or adds it), `resources.timeout_min=5`,
`include.0.seed=1`, `exclude=[]`. The grid that is validated, and written to the run folder,
is the overridden one. `axes.NAME=[...]` sweeps that setting over the whole grid: an `include`
entry whose own `axes` sweep it gets the new list too, while an entry that fixes it to one value
keeps that value, and the launch log names the entry (`include.N.NAME=...` changes it). So
`vtbench launch experiments/token_sweep.yaml --set axes.num_tokens=[8,16]` is 18 cells: 12 of
the main axes, 4 of the recurrent-tokenizer entry (its `num_tokens` axis now [8, 16] too) and
the 2 ResNets. An unknown key is refused with a did-you-mean, as in a grid file.

Time limits. `resources.timeout_min` is each cell's deadline, on every executor: the runner runs a
cell in a child process and kills it at that deadline with a `timeout` record, then goes on with
the worker's other cells. The jobs' own limits are derived from it (`bench.pipeline.launch.
job_timeout_min`): a SLURM array task runs one cell and gets `timeout_min + 5` minutes (start-up
and writing the record); a local worker runs its share of the cells in turn and gets
`(timeout_min + 5) x (its cells + 1)`, one share more for waiting on a slot of another launch.

Bounds. A grid file is read only if it is a regular file of at most `MAX_GRID_BYTES`, nested at
most `MAX_GRID_DEPTH` levels, with at most `MAX_GRID_NODES` YAML nodes once its aliases are
expanded (a "billion laughs" is refused in milliseconds, wherever in the grid it sits; the same
bounds hold for `--set` values); `resources` must lie in `RESOURCE_RANGES`. Every problem is
printed on one line with control characters escaped (`bench.core.util.printable`).
Registered models are pre-built on the meta device once per distinct (model, model_args); past
`MAX_META_BUILDS` distinct configurations the rest are checked by option names only.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import difflib
import fnmatch
import inspect
import functools
import itertools
import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from bench.core.contracts import (COMPILE_MODES, COMPLEXITY_KEYS, DEFAULT_LATENCY, DTYPES, EXTRA_LATENCY_KEYS,  # noqa: F401
                             MEASUREMENTS, CellConfig, Resources, TrainOptions, ValidationError, did_you_mean,
                             problems_of)
from bench.core.errors import UsageError
from bench.core.records import cell_id_of
from bench.core.util import printable

# torch, models/ and bench.core.modelref are imported inside the validation that needs them:
# `vtbench launch --help` imports bench.pipeline.launch, hence this module (0.2 s; 3.5 s with torch).

log = logging.getLogger(__name__)

GRID_KEYS = ("name", "description", "base", "axes", "include", "exclude", "resources")
CELL_KEYS = ("model", "model_args", "measure", "input_size", "seed", "complexity", "latency", "train")
SECTIONS = ("model_args", "complexity", "latency", "train")
SHORT_TO_LATENCY = ("batch_size", "dtype", "device")

# DEFAULT_LATENCY, EXTRA_LATENCY_KEYS, COMPLEXITY_KEYS, DTYPES, COMPILE_MODES: bench.core.contracts, re-exported.

# Why 10,000: validating and listing that many cells takes seconds; far above it a grid is most
# likely a typo, and each cell becomes a job of the array anyway (SLURM's MaxArraySize is often 1001+).
DEFAULT_MAX_CELLS = 10_000
# Each meta-device build of a distinct configuration costs ~70 ms; 200 keep validation under ~15 s.
MAX_META_BUILDS = 200
# A scoped override of the cap for callers that cannot pass `max_cells` through (see
# `max_cells_allowed`): `vtbench launch --max-cells` reaches load_grid through bench.pipeline.launch.launch.
_MAX_CELLS_OVERRIDE: contextvars.ContextVar[int | None] = contextvars.ContextVar("max_cells", default=None)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One resolved cell: its stable id and its full config."""

    cell_id: str
    config: dict[str, Any]


@dataclasses.dataclass
class Grid:
    """A validated, expanded grid."""

    name: str
    description: str
    path: Path
    text: str
    cells: list[Cell]
    resources: Resources
    duplicates: int = 0


class _Problems:
    """Collects every problem found, so the user sees them all at once."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        message = printable(message, newlines=False)  # one line, and no value drives the terminal
        if message not in self.items:
            self.items.append(message)

    def raise_if_any(self, source: str) -> None:
        if self.items:
            n = len(self.items)
            raise UsageError(f"{source}: {n} problem{'s' if n > 1 else ''}: " + "; ".join(self.items))


# ----------------------------------------------------------------------------------------- loading
@contextlib.contextmanager
def max_cells_allowed(max_cells: int | None):
    """Within this block, load_grid/build_grid refuse grids above `max_cells` (None: the default)."""
    token = _MAX_CELLS_OVERRIDE.set(max_cells)
    try:
        yield
    finally:
        _MAX_CELLS_OVERRIDE.reset(token)


def _cell_cap(max_cells: int | None) -> int:
    """The cap in force: the argument, else a `max_cells_allowed` block's, else the default."""
    for cap in (max_cells, _MAX_CELLS_OVERRIDE.get()):
        if cap is not None:
            return cap
    return DEFAULT_MAX_CELLS


def load_grid(path: str | Path, *, max_cells: int | None = None,
              overrides: Iterable[tuple[str, Any]] = ()) -> Grid:
    """Read, validate and expand the grid file at `path`, with `overrides` ((dotted key, value)
    pairs, `--set`) applied first; raise one UsageError listing all problems."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"grid file not found: {path}")
    text = read_grid_text(path)
    raw = parse_grid_yaml(text, str(path))
    overrides = list(overrides)
    if overrides:
        _check_bounded(overrides, f"{path} --set")
        raw = apply_overrides(raw, overrides, source=str(path))
        text = overridden_text(path, raw, overrides)
    return build_grid(raw, source=str(path), text=text, path=path, max_cells=max_cells)


# Bounds on a grid file, checked before it is parsed into Python objects. The grids vtbench ships
# are under 5 KB, under 10 levels deep and under 2,000 YAML nodes; far above that a file is a
# mistake or an attack: a "billion laughs" of nested aliases is 1.3 KB of text but 10^9 nodes once
# expanded (as deep-copying a cell or hashing its config does), and PyYAML composes recursively, so
# a grid nested 600 deep would end in a RecursionError.
MAX_GRID_BYTES = 1 << 20
MAX_GRID_DEPTH = 40
MAX_GRID_NODES = 200_000  # counted with every alias expanded


def read_grid_text(path: Path) -> str:
    """The grid file's text: a regular file under `MAX_GRID_BYTES` (UsageError otherwise)."""
    from bench.core.util import UnsafeFile, read_untrusted_bytes

    try:
        data = read_untrusted_bytes(path, MAX_GRID_BYTES)
    except UnsafeFile as exc:
        raise UsageError(printable(exc, newlines=False)) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc})") from exc


def parse_grid_yaml(text: str, source: str) -> Any:
    """Parse a grid's YAML after checking its nesting and its size with aliases expanded
    (`MAX_GRID_DEPTH`, `MAX_GRID_NODES`); UsageError on one line for any problem."""
    try:
        _check_yaml_shape(text, source)
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise UsageError(f"{source}: not valid YAML ({printable(' '.join(str(exc).split()), newlines=False)})") from exc


def _check_yaml_shape(text: str, source: str) -> None:
    """Walk the YAML events (PyYAML's parser is not recursive) counting depth and nodes, each alias
    counted as the size of what it names."""
    sizes: dict[str, int] = {}   # anchor -> node count of its node, aliases expanded
    stack: list[list] = []       # open collections: [anchor, node count so far]
    total = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            stack.append([event.anchor, 1])
            if len(stack) > MAX_GRID_DEPTH:
                raise UsageError(f"{source}: nested more than {MAX_GRID_DEPTH} levels deep (line "
                                 f"{event.start_mark.line + 1}); a grid is a few levels of mappings and lists")
            continue
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, size = stack.pop()
        elif isinstance(event, yaml.ScalarEvent):
            anchor, size = event.anchor, 1
        elif isinstance(event, yaml.AliasEvent):
            anchor, size = None, sizes.get(event.anchor, 1)
        else:
            continue
        if anchor is not None:
            sizes[anchor] = size
        if stack:
            stack[-1][1] += size
        else:
            total += size
        if total + sum(open_[1] for open_ in stack) > MAX_GRID_NODES:
            raise UsageError(f"{source}: more than {MAX_GRID_NODES} YAML nodes once its aliases are expanded "
                             f"(line {event.start_mark.line + 1}); a grid this large is a mistake, or an alias bomb")


def _check_bounded(value: Any, source: str) -> None:
    """The same bounds for values that did not come from the grid file (`--set`): depth and size,
    shared objects counted each time they appear."""
    budget = [MAX_GRID_NODES]
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        budget[0] -= 1
        if budget[0] < 0:
            raise UsageError(f"{source}: more than {MAX_GRID_NODES} values once aliases are expanded")
        if depth > MAX_GRID_DEPTH:
            raise UsageError(f"{source}: nested more than {MAX_GRID_DEPTH} levels deep")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, (list, tuple)) else ()
        stack.extend((child, depth + 1) for child in children)


def apply_overrides(raw: Any, overrides: Iterable[tuple[str, Any]], *, source: str = "<grid>") -> dict:
    """A copy of the grid mapping `raw` with each (dotted key, value) set; UsageError naming every
    key that cannot be set. What the values mean is checked afterwards, with the rest of the grid.

    `base.` keys walk into the cell's sections (`base.latency.threads`), or take a short name
    (`base.num_tokens` is `base.model_args.num_tokens`); after `axes.`, `resources.` or an
    include/exclude entry's index the rest is one key (axis names may be dotted:
    `axes.train.batch_size`). A new axis replaces any axis that names the same setting.
    """
    if not isinstance(raw, dict):
        raise UsageError(f"{source}: a grid is a mapping with keys {', '.join(GRID_KEYS)}; --set cannot apply")
    raw = copy.deepcopy(raw)
    problems = _Problems()
    vocab: _Vocabulary | None = None
    for key, value in overrides:
        if key.split(".", 1)[0] in ("base", "axes") and vocab is None:
            vocab = _Vocabulary.load()
        path = _override_path(key, raw, vocab, problems)
        if path is not None:
            _set_override(raw, path, value, key, vocab, problems)
            if path[0] == "axes" and len(path) == 2:
                _override_include_axes(raw, path[1], value, vocab)
    problems.raise_if_any(f"{source} --set")
    return raw


def _override_include_axes(raw: dict, name: str, value: Any, vocab: "_Vocabulary | None") -> None:
    """`--set axes.NAME=[...]` sweeps the setting NAME names over the whole grid: each `include`
    entry whose own axes sweep it gets the new list too; an entry that fixes it to one value keeps
    that value, and the log names it (it is a sub-grid that asked for that value on purpose)."""
    target = vocab.resolve(name) if vocab is not None else (name,)
    if target is None:
        return  # an unknown axis: build_grid reports it
    for index, entry in enumerate(raw.get("include") or []):
        if not isinstance(entry, dict):
            continue
        axes = entry.get("axes")
        for key in [k for k in axes or {} if vocab is None or vocab.resolve(k) == target] if isinstance(axes, dict) else []:
            axes[key] = copy.deepcopy(value)
            log.info("--set axes.%s: include[%d].axes.%s is %s too", name, index, key, json.dumps(value, default=str))
        for key in [k for k in entry if k != "axes" and (vocab is None or vocab.resolve(k) == target)]:
            log.warning("--set axes.%s: include[%d] keeps its own %s=%s (set include.%d.%s to change it)",
                        name, index, key, json.dumps(entry[key], default=str), index, key)


def _override_path(key: str, raw: dict, vocab: "_Vocabulary | None", problems: _Problems) -> list | None:
    """Where `--set KEY=...` goes in the grid mapping, as a list of keys and list indices."""
    head, _, rest = key.partition(".")
    if head not in GRID_KEYS:
        close = did_you_mean(head, GRID_KEYS)
        problems.add(f"{key}: a grid has no {head!r}{f' (did you mean {close}?)' if close else ''}; "
                     f"keys start with one of {', '.join(GRID_KEYS)}")
        return None
    if not rest:
        return [head]
    if head in ("name", "description"):
        problems.add(f"{key}: {head} is a string, with nothing inside it to set")
        return None
    if head in ("axes", "resources"):
        return [head, rest]
    if head == "base":
        first = rest.split(".", 1)[0]
        if first in CELL_KEYS:
            return [head, *rest.split(".")]
        resolved = vocab.resolve(rest) if vocab is not None else None
        if resolved is None:
            problems.add(f"{key}: unknown key {rest!r}{vocab.suggest(rest) if vocab else ''}")
            return None
        return [head, *resolved]
    index, _, inner = rest.partition(".")  # include / exclude: an entry by index, then one key
    entries = raw.get(head)
    if not index.isdigit() or not isinstance(entries, list) or int(index) >= len(entries):
        count = len(entries) if isinstance(entries, list) else 0
        problems.add(f"{key}: {head} has {count} entr{'y' if count == 1 else 'ies'}; give {head}.N.KEY with "
                     f"N from 0, or replace the whole list with {head}=[...]")
        return None
    if inner.startswith("axes.") and head == "include":
        return [head, int(index), "axes", inner[len("axes."):]]
    return [head, int(index), inner] if inner else [head, int(index)]


def _set_override(raw: dict, path: list, value: Any, key: str, vocab: "_Vocabulary | None",
                  problems: _Problems) -> None:
    """Set `value` at `path`, making the mappings on the way; a non-mapping on the way is a problem."""
    node: Any = raw
    for i, part in enumerate(path[:-1]):
        child = node[part] if isinstance(node, list) else node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, (dict, list)):
            where = ".".join(str(p) for p in path[:i + 1])
            problems.add(f"{key}: {where} is {child!r}, not a mapping to set a key in")
            return
        node = child
    last = path[-1]
    if isinstance(node, dict) and path[-2:-1] == ["axes"] and vocab is not None:
        target = vocab.resolve(last)
        for other in [k for k in node if k != last and target is not None and vocab.resolve(k) == target]:
            del node[other]  # `axes.model_args.num_tokens` replaces an axis spelled `num_tokens`
    node[last] = copy.deepcopy(value)


def overridden_text(path: Path, raw: dict, overrides: Iterable[tuple[str, Any]]) -> str:
    """The overridden grid as YAML, headed by where it came from (written as RUN_DIR/grid.yaml)."""
    sets = " ".join(f"--set {k}={json.dumps(v, default=str)}" for k, v in overrides)
    return f"# {path} with {sets}\n" + yaml.safe_dump(raw, sort_keys=False)


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping.

    Plain YAML loading keeps the last of two equal keys, so a second `axes:` block silently
    replaced the first and its cells vanished from the grid. Merge keys (`<<: *base`) may still
    be overridden, as YAML intends.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader itself reports it below
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r} (first given on line {first.line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def build_grid(raw: Any, *, source: str = "<grid>", text: str | None = None,
               path: Path | None = None, max_cells: int | None = None) -> Grid:
    """Validate and expand an already-parsed grid mapping (see the module doc for the schema)."""
    problems = _Problems()
    if not isinstance(raw, dict):
        raise UsageError(f"{source}: a grid is a mapping with keys {', '.join(GRID_KEYS)}")
    vocab = _Vocabulary.load()
    _check_keys(raw, GRID_KEYS, "grid", problems)
    name = _check_name(raw.get("name"), problems)
    description = raw.get("description") or ""
    if not isinstance(description, str):
        problems.add("description: must be a string")
    resources = _parse_resources(raw.get("resources") or {}, problems)
    base = _parse_base(raw.get("base"), vocab, problems)
    blocks = _parse_blocks(raw, vocab, problems)
    rules = _parse_rules(raw.get("exclude"), vocab, problems)
    _check_cell_count(blocks, _cell_cap(max_cells), source, problems)
    # Keep going after structural problems: the cells that can be expanded are checked too, so
    # the user sees every problem at once.
    configs = [cfg for block in blocks for cfg in _expand(base, block.override_sets())]
    kept = _apply_excludes(configs, rules)
    resolved = [resolve_cell(cfg) for cfg in kept]
    meta_builds = _MetaBuildBudget(MAX_META_BUILDS)
    for cfg in resolved:
        _validate_cell(cfg, vocab, problems, meta_builds)
    meta_builds.report(source)
    if not resolved:
        problems.add("the grid has no cells (every cell excluded?)")
    problems.raise_if_any(source)
    cells, duplicates = _dedupe(resolved)
    if duplicates:
        log.info("%s: %d duplicate cell(s) merged", source, duplicates)
    return Grid(name=name, description=description, path=path or Path(source),
                text=text if text is not None else yaml.safe_dump(raw, sort_keys=False),
                cells=cells, resources=resources, duplicates=duplicates)


# ------------------------------------------------------------------------------------ vocabulary
@dataclasses.dataclass
class _Vocabulary:
    """Names a grid may use: models, their options, latency and training options."""

    models: list[str]
    options: dict[str, dict[str, Any]]
    train_keys: tuple[str, ...] | None
    train_config: Any

    @classmethod
    def load(cls) -> "_Vocabulary":
        from models import list_models, model_options

        names = list_models()
        train_keys, train_config = _train_vocabulary()
        return cls(models=names, options={n: model_options(n) for n in names},
                   train_keys=train_keys, train_config=train_config)

    @property
    def all_options(self) -> set[str]:
        return {opt for opts in self.options.values() for opt in opts}

    @property
    def latency_keys(self) -> tuple[str, ...]:
        return tuple(DEFAULT_LATENCY) + EXTRA_LATENCY_KEYS

    def short_names(self) -> list[str]:
        """Every name accepted without a dot."""
        return sorted(set(CELL_KEYS) | self.all_options | set(self.latency_keys) | set(self.train_keys or ()))

    def resolve(self, key: Any) -> tuple[str, ...] | None:
        """Map a short or dotted key to a path in the cell config (None if unknown)."""
        if not isinstance(key, str) or not key:
            return None
        if "." in key:
            head, _, tail = key.partition(".")
            return (head, tail) if head in SECTIONS and tail and self._known_in(head, tail) else None
        if key in CELL_KEYS:
            return (key,)
        if key in SHORT_TO_LATENCY:
            return ("latency", key)
        if key in self.all_options:
            return ("model_args", key)
        if key in self.latency_keys:
            return ("latency", key)
        if self.train_keys and key in self.train_keys:
            return ("train", key)
        return None

    def _known_in(self, section: str, key: str) -> bool:
        if section == "model_args":  # any name: import-path models have their own options,
            return True                 # and each cell is checked against its model's options
        known = {"latency": set(self.latency_keys),
                 "complexity": set(COMPLEXITY_KEYS), "train": set(self.train_keys or ()) or None}[section]
        return known is None or key in known

    def suggest(self, key: str) -> str:
        """A did-you-mean hint for an unknown key."""
        candidates = self.short_names() + [f"{s}.{k}" for s in SECTIONS for k in self._section_names(s)]
        close = did_you_mean(key, candidates)
        return f" (did you mean {close}?)" if close else ""

    def _section_names(self, section: str) -> Iterable[str]:
        return {"model_args": self.all_options, "latency": self.latency_keys,
                "complexity": COMPLEXITY_KEYS, "train": self.train_keys or ()}[section]


def _train_vocabulary() -> tuple[tuple[str, ...], Any]:
    """The training options' names (`TrainOptions`), and TrainConfig (None while bench.measure.train is
    not importable)."""
    try:
        from bench.measure.train import TrainConfig
    except ImportError as exc:
        log.warning("bench.measure.train is not importable (%s): training option values are not checked together", exc)
        TrainConfig = None  # noqa: N806
    return tuple(TrainOptions.model_fields), TrainConfig


# ------------------------------------------------------------------------------------- top level
def _check_keys(mapping: dict, allowed: Iterable[str], where: str, problems: _Problems) -> None:
    allowed = list(allowed)
    for key in mapping:
        if key not in allowed:
            close = did_you_mean(key, allowed)
            hint = f" (did you mean {close}?)" if close else ""
            problems.add(f"{where}: unknown key {key!r}{hint}; allowed: {', '.join(allowed)}")


def _check_name(name: Any, problems: _Problems) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        problems.add("name: required, letters, digits, '_', '-' or '.' (it names the run folder)")
        return str(name)
    return name


def _parse_resources(raw: Any, problems: _Problems) -> Resources:
    if not isinstance(raw, dict):
        problems.add("resources: must be a mapping")
        return Resources()
    for key, (low, high) in RESOURCE_RANGES.items():
        value = raw.get(key)
        # below `low` the contract's own types refuse it (a positive integer, ...): said once, there
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > high:
            problems.add(f"resources.{key}: {value!r} is outside {low}..{high} (RESOURCE_RANGES in "
                         f"bench/pipeline/grid.py: a value past these is a typo)")
    try:
        return Resources.model_validate(raw)
    except ValidationError as exc:
        for problem in problems_of(exc, Resources, raw, where="resources"):
            problems.add(problem)
        return Resources()


# What a grid may ask of one job: the largest SLURM nodes have a few hundred cores and 8-16 GPUs,
# a year is longer than any cluster's time limit, and an array above 100,000 tasks is beyond what
# SLURM's MaxArraySize allows anywhere.
RESOURCE_RANGES: dict[str, tuple[float, float]] = {
    "timeout_min": (1, 60 * 24 * 365), "nodes": (1, 4096), "tasks_per_node": (1, 1024),
    "cpus_per_task": (1, 4096), "gpus_per_node": (0, 64), "mem_gb": (0, 65536),
    "array_parallelism": (1, 100_000), "local_parallelism": (1, 1024), "max_num_timeout": (0, 100),
    "signal_delay_s": (0, 3600)}


def _parse_base(raw: Any, vocab: _Vocabulary, problems: _Problems) -> dict[str, Any]:
    if not isinstance(raw, dict):
        problems.add("base: required mapping (a partial cell: model, model_args, measure, input_size, ...)")
        return {}
    _check_keys(raw, CELL_KEYS, "base", problems)
    for section in SECTIONS:
        if section in raw and not isinstance(raw[section], dict):
            problems.add(f"base.{section}: must be a mapping")
    return {k: copy.deepcopy(v) for k, v in raw.items() if k in CELL_KEYS}


@dataclasses.dataclass
class _Block:
    """One sub-grid: `fixed` overrides plus one choice per axis, kept unexpanded.

    An override is a (path, value, origin) triple. Keeping the axes as lists lets the cell count
    be computed (a product of lengths) before a single cell is built.
    """

    fixed: list[tuple]
    choices: list[list[tuple]]

    @property
    def count(self) -> int:
        return math.prod(len(axis) for axis in self.choices)

    def override_sets(self) -> Iterable[list[tuple]]:
        for combo in itertools.product(*self.choices):
            yield self.fixed + list(combo)


def _check_cell_count(blocks: list[_Block], cap: int, source: str, problems: _Problems) -> None:
    """Refuse a grid above `cap` cells before expanding it (raises with every problem so far)."""
    total = sum(block.count for block in blocks)
    if total > cap:
        sizes = " + ".join(str(block.count) for block in blocks)
        problems.add(f"the grid has {total} cells ({sizes}, before exclude rules), above the cap of {cap}; "
                     f"split it, or raise the cap with `vtbench launch --max-cells N`")
        problems.raise_if_any(source)


def _parse_blocks(raw: dict, vocab: _Vocabulary, problems: _Problems) -> list[_Block]:
    blocks = [_parse_axes(raw.get("axes") or {}, "axes", vocab, problems, fixed=[])]
    include = raw.get("include") or []
    if not isinstance(include, list):
        problems.add("include: must be a list of mappings")
        return blocks
    for i, item in enumerate(include):
        where = f"include[{i}]"
        if not isinstance(item, dict) or not item:
            problems.add(f"{where}: must be a non-empty mapping of overrides (optionally with 'axes')")
            continue
        fixed = _parse_overrides({k: v for k, v in item.items() if k != "axes"}, where, vocab, problems)
        blocks.append(_parse_axes(item.get("axes") or {}, f"{where}.axes", vocab, problems, fixed))
    return blocks


def _parse_overrides(mapping: dict, where: str, vocab: _Vocabulary, problems: _Problems) -> list[tuple]:
    out = []
    for key, value in mapping.items():
        path = vocab.resolve(key)
        if path is None:
            problems.add(f"{where}: unknown key {key!r}{vocab.suggest(key)}")
            continue
        out.append((path, value, f"{where}.{key}"))
    return out


def _parse_axes(axes: Any, where: str, vocab: _Vocabulary, problems: _Problems,
                fixed: list[tuple]) -> _Block:
    """One block: `fixed` plus one choice per axis (their cartesian product, expanded later)."""
    if not isinstance(axes, dict):
        problems.add(f"{where}: must be a mapping of name -> list of values")
        return _Block(fixed, [])
    choices = []
    for key, values in axes.items():
        path = vocab.resolve(key)
        if path is None:
            problems.add(f"{where}: unknown axis {key!r}{vocab.suggest(key)}")
            continue
        if not isinstance(values, list) or not values:
            problems.add(f"{where}.{key}: an axis is a non-empty list of values")
            continue
        choices.append([(path, v, f"{where}.{key}") for v in values])
    return _Block(fixed, choices)


@dataclasses.dataclass
class _Rule:
    index: int
    conditions: list[tuple[tuple[str, ...], Any]]
    matched: int = 0

    def matches(self, config: dict) -> bool:
        return all(_value_matches(_get(config, path), want) for path, want in self.conditions)


def _parse_rules(raw: Any, vocab: _Vocabulary, problems: _Problems) -> list[_Rule]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.add("exclude: must be a list of mappings")
        return []
    rules = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not item:
            problems.add(f"exclude[{i}]: must be a non-empty mapping of key -> value (or list of values)")
            continue
        conditions = [(path, value) for path, value, _ in _parse_overrides(item, f"exclude[{i}]", vocab, problems)]
        rules.append(_Rule(i, conditions))
    return rules


def _value_matches(actual: Any, want: Any) -> bool:
    """A rule value matches if equal; a list matches any element; strings may be glob patterns."""
    if isinstance(want, list):
        return any(_one_value_matches(actual, w) for w in want)
    return _one_value_matches(actual, want)


def _one_value_matches(actual: Any, want: Any) -> bool:
    if isinstance(want, str) and isinstance(actual, str):
        return fnmatch.fnmatchcase(actual, want)
    return actual == want


# ------------------------------------------------------------------------------------- expansion
def _get(config: dict, path: tuple[str, ...]) -> Any:
    node: Any = config
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(config: dict, path: tuple[str, ...], value: Any) -> None:
    if len(path) == 1 and path[0] in SECTIONS and isinstance(value, dict):
        section = config.setdefault(path[0], {})
        if isinstance(section, dict):
            section.update(copy.deepcopy(value))
            return
    node = config
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = copy.deepcopy(value)


def _expand(base: dict, block: Iterable[list[tuple]]) -> Iterable[dict]:
    for overrides in block:
        config = copy.deepcopy(base)
        for path, value, _origin in overrides:
            _set(config, path, value)
        yield config


def _apply_excludes(configs: list[dict], rules: list[_Rule]) -> list[dict]:
    kept = []
    for config in configs:
        hit = [rule for rule in rules if rule.matches(config)]
        for rule in hit:
            rule.matched += 1
        if not hit:
            kept.append(config)
    for rule in rules:
        if not rule.matched:
            log.warning("exclude[%d] matches no cell", rule.index)
    return kept


def resolve_cell(config: dict) -> dict[str, Any]:
    """Fill defaults; empty the sections of measurements the cell does not run.

    The one way a cell's config is made: the grid's cells and `vtbench train`'s record come from
    it, so the same training has the same cell id either way.
    """
    cell = {"model": config.get("model"), "model_args": dict(config.get("model_args") or {}),
            "measure": config.get("measure", ["complexity"]), "input_size": config.get("input_size"),
            "seed": config.get("seed", 0)}
    measure = cell["measure"] if isinstance(cell["measure"], list) else []
    for section in MEASUREMENTS:
        given = config.get(section) or {}
        given = dict(given) if isinstance(given, dict) else given
        if section not in measure:
            cell[section] = {}
        elif section == "latency" and isinstance(given, dict):
            cell[section] = {**DEFAULT_LATENCY, **given}
        else:
            cell[section] = given
    if isinstance(cell["input_size"], tuple):
        cell["input_size"] = list(cell["input_size"])
    return cell


def _dedupe(configs: list[dict]) -> tuple[list[Cell], int]:
    seen: dict[str, Cell] = {}
    for config in configs:
        cid = cell_id_of(config)
        seen.setdefault(cid, Cell(cid, config))
    return list(seen.values()), len(configs) - len(seen)


# ------------------------------------------------------------------------------------ validation
class _MetaBuildBudget:
    """How many distinct configurations may still be pre-built on the meta device.

    A build costs ~70 ms, so a grid of 10,000 distinct `num_tokens` values would validate for
    ~12 minutes. Past the budget, a configuration is checked by its option names only (done for
    every cell anyway); its values are checked when its cell runs, and the user is told so.
    Checking "one build per distinct set of keys" instead would not be sound: builders reject
    bad values (num_tokens: 0, tokenizer: bogus), which a signature cannot see.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.keys: set[str] = set()
        self.skipped = 0

    def allows(self, key: str) -> bool:
        if key in self.keys:
            return True
        if len(self.keys) < self.limit:
            self.keys.add(key)
            return True
        self.skipped += 1
        return False

    def report(self, source: str) -> None:
        if self.skipped:
            log.warning("%s: %d distinct model configurations pre-built on the meta device; %d more are "
                        "checked by option names only, their values when their cells run",
                        source, self.limit, self.skipped)


def _validate_cell(cell: dict, vocab: _Vocabulary, problems: _Problems,
                   meta_builds: _MetaBuildBudget | None = None) -> None:
    """Check one resolved cell against `CellConfig`, then its model and training options; messages
    are deduplicated across cells."""
    failed: set[str] = set()
    try:
        CellConfig.model_validate(cell)
    except ValidationError as exc:
        failed = {str(error["loc"][0]) for error in exc.errors()}
        for problem in problems_of(exc, CellConfig, cell):
            if not problem.startswith("model:"):  # said below, with the known models
                problems.add(problem)
    _validate_model(cell["model"], cell["model_args"], vocab, problems, meta_builds)
    if "train" not in failed:
        _validate_train(cell["train"], vocab, problems)


def _validate_model(model: Any, model_args: dict, vocab: _Vocabulary, problems: _Problems,
                    meta_builds: _MetaBuildBudget | None) -> None:
    if model is None:
        problems.add("model: every cell needs a model (in base or as an axis)")
    elif isinstance(model, str) and ":" in model:
        options = _import_options(model, problems)
        if options is not None:
            _validate_model_args(model, model_args, options, problems, meta_builds)
    elif not isinstance(model, str) or model not in vocab.options:
        close = did_you_mean(model, vocab.models)
        hint = f" (did you mean {close}?)" if close else ""
        problems.add(f"model: unknown model {model!r}{hint}; known: {', '.join(vocab.models)}")
    else:
        _validate_model_args(model, model_args, vocab.options[model], problems, meta_builds)


def _import_options(ref: str, problems: _Problems) -> dict[str, Any] | None:
    """Options of a model given as `package.module:callable` (`{"**": None}`: any keyword is
    accepted, or they are checked when the cell runs). The module is not imported: its source is
    read (`bench.core.modelref.factory_options`), so validating a grid runs none of its code.
    `timm:NAME` asks timm (a library, not the grid's code) whether the model exists."""
    from bench.core.modelref import TIMM_PREFIX, factory_options, resolve_model_ref

    try:
        if ref.startswith(TIMM_PREFIX):
            resolve_model_ref(ref)
            return {"**": None}
        return factory_options(ref)
    except ValueError as exc:  # UsageError
        problems.add(f"model: {exc}")
        return None


def _validate_model_args(model: str, args: dict, options: dict[str, Any], problems: _Problems,
                         meta_builds: _MetaBuildBudget | None = None) -> None:
    inapplicable = [] if "**" in options else sorted(set(args) - set(options))
    for key in inapplicable:
        problems.add(f"model_args.{key}: does not apply to {model!r} (it accepts: "
                     f"{', '.join(sorted(options)) or 'nothing'}); drop it with an exclude rule "
                     f"or give {model} its own include entry")
    # Only registered models are built here. An import-path model is the user's code: validating
    # or listing a grid (launch --dry-run) must never call it, so its values are checked when its
    # cell runs. (`model: os:system` with `model_args: {command: ...}` would otherwise run a shell.)
    from bench.core.modelref import is_import_path

    if not inapplicable and not is_import_path(model):
        _try_build_on_meta(model, args, problems, meta_builds)


@functools.lru_cache(maxsize=None)
def _meta_build_error(model: str, args_json: str) -> str | None:
    """Build the model on the meta device (no memory, milliseconds) to let it reject bad values."""
    import torch

    from bench.core.modelref import resolve_model_ref

    try:
        with torch.device("meta"):
            resolve_model_ref(model).build(**json.loads(args_json))
    except (ValueError, TypeError, KeyError) as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    except (RuntimeError, NotImplementedError) as exc:
        # Not the user's input: a model that cannot be built on the meta device. The runner will
        # build it for real; say so instead of failing the grid.
        log.warning("could not pre-build %s on the meta device (%s); its options are checked at run time",
                    model, exc)
    return None


def _try_build_on_meta(model: str, args: dict, problems: _Problems,
                       meta_builds: _MetaBuildBudget | None = None) -> None:
    # Keyed by (model, canonical model_args): cells that differ only in seed, measure or latency
    # options share one build, so validation cost grows with distinct configurations, not cells.
    args_json = json.dumps(args, sort_keys=True, default=str)
    if meta_builds is not None and not meta_builds.allows(f"{model} {args_json}"):
        return
    error = _meta_build_error(model, args_json)
    if error:
        problems.add(f"model_args for {model} {json.dumps(args, sort_keys=True)}: {error}")


def _validate_train(section: dict, vocab: _Vocabulary, problems: _Problems) -> None:
    """What `TrainConfig` checks beyond the contract's types (option values, the data set's options)."""
    if vocab.train_config is None or not section:
        return
    try:
        vocab.train_config.from_dict(dict(section))
    except (TypeError, ValueError) as exc:  # UsageError is a ValueError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        problems.add(f"train: {first}")

