"""`vtbench models`: the registered models with their parameters and MACs at their default input size.

    vtbench models                              # a readable table
    vtbench models --format csv > models.csv    # merges with timm's results CSVs on `model`
    vtbench models --format jsonl | head -1     # JSON lines, one model each, printed as counted

`--format json|jsonl|csv` rows, in timm's column names where they mean the same thing
(bench/cli/commands/common.py `TIMM_NAMES`): `model`, `infer_img_size` (the default input side),
`infer_gmacs` (fvcore's total with fvcore's own handles, per image: timm's benchmark.py count, which
also counts norms, adaptive pooling and upsampling), `param_count` (millions); then vtbench's own:
`task`, `gmacs` (the paper's convention, executed: convolutions and matrix products only;
bench/measure/complexity.py), `gmacs_fvcore` (fvcore's total with vtbench's extra handles: softmax,
pooling, additions, ...) and `unsupported_ops` (op -> count in fvcore's trace). The table's
"GMACs" is `gmacs`. `--json` is the old spelling of `--format json`.

Counting every model takes a minute or two on a laptop CPU (fvcore traces each forward), so the
rows are cached: one file per state of the counting code, under $VTBENCH_CACHE_DIR (default
$XDG_CACHE_HOME/vtbench, else ~/.cache/vtbench), keyed by a digest of the source of models/ and of
the counting code, and of the versions of torch, torchvision and fvcore. A cached row is the row
counted before, read back exactly (JSON keeps every float), so the figures are the ones a fresh
count gives; any change to the models, the counter or the libraries is a new key, counted afresh.
A listing answered from the cache imports neither torch nor the models. `--no-cache` counts afresh
(and refreshes the cache). While counting, progress goes to stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from bench.cli.commands import common
from bench.core.errors import UsageError

NAME = "models"
HELP = "List the registered models with parameters and MACs at their default input size."

log = logging.getLogger(__name__)

COLUMNS = (
    ("name", "model", ""), ("task", "task", ""), ("input_size", "input", ""),
    ("params_m", "params M", ".2f"), ("gmacs", "GMACs", ".3f"), ("gmacs_fvcore", "fvcore GMACs", ".3f"),
    ("unsupported", "unsupported ops", ""),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `vtbench models`."""
    common.add_format(parser, "aligned columns")
    common.add_hidden_alias(parser, "--json", "format", const="json")
    parser.add_argument("--no-macs", action="store_true", help="parameters only (no tracing)")
    parser.add_argument("--filter", default=None, metavar="TEXT", help="only models whose name contains TEXT")
    parser.add_argument("--no-cache", action="store_true",
                        help="count afresh instead of reading the cached rows (and refresh the cache)")
    parser.epilog = (
        "MACs per image at the model's default input size. The table's GMACs and the rows' `gmacs` are the "
        "paper's convention (convolutions and matrix products, as executed); `infer_gmacs` (timm's column) is "
        "fvcore's total with fvcore's own handles, as timm's benchmark.py counts it (norms, adaptive pooling and "
        "upsampling too); `gmacs_fvcore` (the table's fvcore GMACs) adds vtbench's handles for softmax, pooling "
        "and element-wise ops. Rows are cached under $VTBENCH_CACHE_DIR (default ~/.cache/vtbench), keyed by the "
        "counting code and the library versions: a cached row is the counted one, exactly.")


# ---------------------------------------------------------------------------------- counting ------

def describe(name: str, *, macs: bool = True) -> dict[str, Any]:
    """One row: build `name` with its defaults, count parameters and (optionally) MACs.

    Without MACs the model is built on the meta device (shapes only: no memory, no initialisation
    time), which gives the same parameter count; counting MACs traces a real forward on the CPU.
    """
    import torch

    from bench.core.modelref import default_input_size

    torch.manual_seed(0)
    model = _built(name, meta=not macs)
    size = default_input_size(model)
    row: dict[str, Any] = {"name": name, "task": getattr(model, "task", None), "input_size": size,
                           "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if macs:
        from bench.measure.complexity import measure_complexity

        result = measure_complexity(model, size, batch_size=1)
        metrics = result.to_metrics()
        unsupported = metrics.get("unsupported_ops") or {}
        row.update(params_m=metrics["params_m"], gmacs=metrics["gmacs"], gmacs_fvcore=metrics.get("gmacs_fvcore"),
                   gmacs_fvcore_default=metrics.get("gmacs_fvcore_default", fvcore_default_gmacs(result)),
                   unsupported_ops=unsupported,
                   unsupported=", ".join(f"{k} x{v}" for k, v in unsupported.items()) or "none")
    return row


def _built(name: str, *, meta: bool) -> Any:
    """The registered model `name` at its defaults, in eval mode; on the meta device when asked and
    the builder can run there (else on the CPU)."""
    import torch

    from models import build_model

    if meta:
        try:
            with torch.device("meta"):
                return build_model(name).eval()
        except Exception as exc:  # noqa: BLE001 - an op the meta device lacks: build it for real
            log.debug("%s: building on the meta device failed (%s); building on the CPU", name, exc)
    return build_model(name).eval()


def fvcore_default_gmacs(result: Any) -> float:
    """fvcore's total with only fvcore's own op handles, per image: timm's `infer_gmacs`.

    vtbench's `gmacs_fvcore` is the total of the same trace with handles of its own added for ops
    fvcore leaves at zero (softmax, max-pooling, means, additions, ...; bench.measure.complexity
    `EXTRA_HANDLES`); their operators are taken off here, which leaves what `FlopCountAnalysis(model,
    x).total()` gives with fvcore's defaults.
    """
    from fvcore.nn.flop_count import _DEFAULT_SUPPORTED_OPS

    from bench.measure.complexity import EXTRA_HANDLES

    added = {op.split("::", 1)[-1] for op in EXTRA_HANDLES if op not in _DEFAULT_SUPPORTED_OPS}
    return result.gmacs_fvcore - sum(v for op, v in result.by_operator_gmacs.items() if op in added)


# The keys of `describe`'s rows that --format json|jsonl|csv prints (before their timm names).
ROW_KEYS = ("name", "task", "input_size", "params_m", "gmacs_fvcore_default", "gmacs", "gmacs_fvcore",
            "unsupported_ops")
PARAM_KEYS = ("name", "task", "input_size", "params_m")


def output_row(row: dict[str, Any]) -> dict[str, Any]:
    """A `describe` row as --format json|jsonl|csv prints it: timm's names where they mean the same."""
    kept = {("model" if k == "name" else k): row[k] for k in ROW_KEYS if k in row}
    return common.timm_row(kept)


# ------------------------------------------------------------------------------------- cache ------

# What the rows depend on besides the libraries: the models and the code that counts them.
_COUNTING_SOURCES = ("bench/measure/complexity.py", "bench/core/modelref.py", "bench/cli/commands/models.py")
_CACHE_LIBRARIES = ("torch", "torchvision", "fvcore")
_CACHE_MAX_BYTES = 4 * 2 ** 20


def cache_dir() -> Path:
    """$VTBENCH_CACHE_DIR, else $XDG_CACHE_HOME/vtbench, else ~/.cache/vtbench."""
    if os.environ.get("VTBENCH_CACHE_DIR"):
        return Path(os.environ["VTBENCH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vtbench"


def _source_files() -> list[Path]:
    """The source files of models/ (found without importing it) and of the counting code."""
    spec = importlib.util.find_spec("models")
    root = Path(__file__).resolve().parents[3]
    files = sorted(Path(spec.origin).parent.rglob("*.py")) if spec and spec.origin else []
    return files + [root / rel for rel in _COUNTING_SOURCES]


def cache_key() -> str:
    """A digest of the counting code's source and of the libraries' versions (see the module docstring)."""
    digest = hashlib.sha256()
    for path in _source_files():
        digest.update(path.name.encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"<missing>")
    for dist in _CACHE_LIBRARIES:
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{dist}={version}\0".encode())
    digest.update(f"python={sys.version_info[:2]}".encode())
    return digest.hexdigest()[:20]


class RowCache:
    """The cached rows of one cache key: {"names": [...], "rows": {name: row}} in one JSON file.

    Read as untrusted (a regular file, bounded in size, the expected shape, else ignored); written
    atomically; a cache that cannot be read or written is no error, only a slower answer.
    """

    def __init__(self, key: str):
        self.path = cache_dir() / f"models-{key}.json"
        self.names: list[str] | None = None
        self.rows: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        try:
            if not self.path.is_file() or self.path.stat().st_size > _CACHE_MAX_BYTES:
                return
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        names, rows = (data.get("names"), data.get("rows")) if isinstance(data, dict) else (None, None)
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            self.names = names
        if isinstance(rows, dict):
            self.rows = {n: r for n, r in rows.items() if isinstance(r, dict) and r.get("name") == n}

    def row(self, name: str, macs: bool) -> dict[str, Any] | None:
        """The cached row of `name` (a MACs row also answers a parameters-only listing)."""
        row = self.rows.get(name)
        if row is None or (macs and "gmacs" not in row):
            return None
        return row if macs else {k: row[k] for k in PARAM_KEYS if k in row}

    def store(self, name: str, row: dict[str, Any]) -> None:
        if "gmacs" in self.rows.get(name, {}) and "gmacs" not in row:
            return  # keep the fuller row
        self.rows[name] = row
        self._save()

    def store_names(self, names: list[str]) -> None:
        self.names = list(names)
        self._save()

    def _save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"names": self.names, "rows": self.rows}, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.debug("models cache not written (%s): %s", self.path, exc)


# ---------------------------------------------------------------------------------- the command ------

def registered_names(cache: RowCache, *, fresh: bool = False) -> list[str]:
    """The registry's model names: from the cache when it has them (no torch), else from `models`."""
    if cache.names is not None and not fresh:
        return cache.names
    from models import list_models

    names = list_models()
    cache.store_names(names)
    return names


def selected_names(names: list[str], text: str | None) -> list[str]:
    """The names containing `text`; a filter that matches none is bad input."""
    chosen = [n for n in names if not text or text in n]
    if not chosen:
        raise UsageError(f"--filter {text!r} matches no registered model; known: {', '.join(names)}")
    return chosen


class Progress:
    """'[3/12] counting MACs of vt_resnet50' on one stderr line while rows are counted (a terminal only)."""

    def __init__(self, total: int):
        self.total, self.shown = total, sys.stderr.isatty()

    def show(self, done: int, name: str) -> None:
        if self.shown:
            sys.stderr.write(f"\r\x1b[K[{done + 1}/{self.total}] counting {name} (cached after)")
            sys.stderr.flush()

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def listed_rows(names: list[str], cache: RowCache, *, macs: bool, fresh: bool) -> Iterator[dict[str, Any]]:
    """Each model's row, from the cache or counted (and then cached), in order."""
    todo = [n for n in names if fresh or cache.row(n, macs) is None]
    if todo:
        log.info("counting %d model(s) (about %d s each on a laptop CPU; cached in %s)", len(todo),
                 5 if macs else 1, cache.path.parent)
    progress = Progress(len(todo))
    counted = 0
    try:
        for name in names:
            row = None if name in todo else cache.row(name, macs)
            if row is None:
                progress.show(counted, name)
                row = describe(name, macs=macs)
                cache.store(name, row)
                counted += 1
            yield row
    finally:
        progress.close()


def run(args: argparse.Namespace) -> int:
    """Entry point of `vtbench models`."""
    cache = RowCache(cache_key())
    names = selected_names(registered_names(cache, fresh=args.no_cache), args.filter)
    macs = not args.no_macs
    columns = COLUMNS[:4] if args.no_macs else COLUMNS

    def rows() -> Iterator[dict[str, Any]]:
        for row in listed_rows(names, cache, macs=macs, fresh=args.no_cache):
            yield row if args.format == "table" else output_row(row)

    fields = list(output_row({k: None for k in (ROW_KEYS if macs else PARAM_KEYS)}))
    common.emit_rows(args.format, rows(), table=lambda done: common.format_table(done, columns), fields=fields)
    return 0
