"""The rooms of bench/ and their one-way flow (docs/architecture.md, "Layout").

Every module of bench/ lives in one room; a room imports only the rooms below it, never one above,
counting imports inside functions too; inside a room imports form no cycle; and models/ imports
nothing from bench/. Read from the source with `ast`: nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"

# Lowest first: a room may import itself and the rooms before it.
ROOMS = ("core", "measure", "pipeline", "analysis", "studies", "cli")
RANK = {room: rank for rank, room in enumerate(ROOMS)}
TOP_FILES = {"__init__.py", "__main__.py"}  # the only modules directly in bench/


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def bench_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(BENCH.rglob("*.py"))}


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module `path` imports, at any depth of the file (functions, `if` blocks, ...), absolute
    and relative. `from P import X` counts as importing P.X when that is a known module, else P."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return found


def room_of(name: str) -> str | None:
    """The room of a module of bench/ (None for the package `bench` itself, "__main__" for its entry)."""
    parts = name.split(".")
    if parts[0] != "bench" or len(parts) == 1:
        return None
    return parts[1]


def rank_of(name: str) -> int | None:
    room = room_of(name)
    if room is None:
        return None
    return len(ROOMS) if room == "__main__" else RANK.get(room)


def upward_imports(modules: dict[str, Path]) -> list[str]:
    """'importer -> imported' for every import of a higher room (or of a module in no room)."""
    known = set(modules)
    bad = []
    for name, path in modules.items():
        own = rank_of(name)
        for target in sorted(imported_modules(path, name, known)):
            if target != "bench" and not target.startswith("bench."):
                continue
            theirs = rank_of(target)
            if theirs is None and target == "bench":
                continue  # the package itself (its __version__): below every room
            if own is None or theirs is None or theirs > own:
                bad.append(f"{name} ({room_of(name)}) -> {target} ({room_of(target)})")
    return bad


def cycles_inside_rooms(modules: dict[str, Path]) -> list[list[str]]:
    """Import cycles among the modules of one room (each found once, as a path back to its start)."""
    known = set(modules)
    edges = {name: sorted(t for t in imported_modules(path, name, known)
                          if t in known and t != name and room_of(t) == room_of(name))
             for name, path in modules.items()}
    cycles, done = [], set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in edges[node]:
            visit(nxt, stack + [node])
        done.add(node)

    for name in edges:
        visit(name, [])
    return cycles


def test_every_module_is_in_a_room():
    loose = sorted(p.name for p in BENCH.glob("*.py") if p.name not in TOP_FILES)
    assert loose == [], f"modules directly in bench/ (put each in a room: {', '.join(ROOMS)}): {loose}"
    rooms = sorted(p.name for p in BENCH.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert rooms == sorted(ROOMS)
    for room in ROOMS:
        assert (BENCH / room / "__init__.py").is_file(), f"bench/{room} is not a package"


def test_no_room_imports_a_higher_one():
    modules = bench_modules()
    assert len(modules) > 30  # the walk found the package
    assert upward_imports(modules) == []


def test_no_import_cycle_inside_a_room():
    assert cycles_inside_rooms(bench_modules()) == []


def test_models_import_nothing_from_bench():
    paths = sorted((REPO / "models").rglob("*.py"))
    assert paths
    known = set()
    bad = [f"{module_name(path)} -> {target}" for path in paths
           for target in sorted(imported_modules(path, module_name(path), known))
           if target == "bench" or target.startswith("bench.")]
    assert bad == []


def test_the_checks_see_violations(tmp_path):
    """A lazy upward import, a relative one, a `from bench.X import module` one and a cycle are found."""
    pkg = tmp_path / "bench"
    for room in ("core", "measure", "analysis"):
        (pkg / room).mkdir(parents=True)
        (pkg / room / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "util.py").write_text("def f():\n    from bench.measure import latency\n")
    (pkg / "core" / "errors.py").write_text("from ..analysis import report\n")
    (pkg / "measure" / "latency.py").write_text("import bench.core.util\n")
    (pkg / "analysis" / "report.py").write_text("from bench.analysis import plots\n")
    (pkg / "analysis" / "plots.py").write_text("def g():\n    from .report import x\n")
    modules = {module_name(p, tmp_path): p for p in sorted(pkg.rglob("*.py"))}
    assert upward_imports(modules) == ["bench.core.errors (core) -> bench.analysis.report (analysis)",
                                       "bench.core.util (core) -> bench.measure.latency (measure)"]
    assert cycles_inside_rooms(modules) == [["bench.analysis.plots", "bench.analysis.report",
                                             "bench.analysis.plots"]]
