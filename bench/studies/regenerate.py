"""Regenerate the committed results from what is committed: `python -m bench.studies.regenerate`.

    python -m bench.studies.regenerate                 # rewrite every rendered folder in place (stale files removed)
    python -m bench.studies.regenerate --check         # render into a temporary folder, compare, write nothing
    python -m bench.studies.regenerate --only fidelity token_sweep

results/REGENERATE.yaml names, for every folder under results/, its render (a report or a render of
committed records or JSON: nothing is measured again) or why it is historical. `--check` renders each
into a temporary folder and compares its tables with the committed ones (`compare_tables`: the
markdown tables and the CSV files, numbers to 1e-9 relative; not headers, timestamps or figures);
tests/test_regeneration.py does the same for each folder. Exit 0; 1 when a check finds a difference
or a render fails; 2 on bad input.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.core.errors import UsageError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "results"
REGISTRY = RESULTS / "REGENERATE.yaml"
NOTES = {"NOTES.md", "FINDINGS.md", "README.md"}  # written by people beside the generated files
KEYS = {"render", "compare", "exit", "historical", "remeasure"}


@dataclass(frozen=True)
class Entry:
    """One folder of results/: its render command (with `{out}`) or why it is historical."""

    name: str
    render: str | None = None
    compare: str = ""
    exit: int = 0
    historical: str | None = None
    remeasure: str | None = None

    @property
    def committed(self) -> Path:
        """The committed folder the render's output stands for."""
        return RESULTS / self.name / self.compare


def load_registry(path: Path = REGISTRY) -> dict[str, Entry]:
    """The registry, checked: each entry has exactly one of `render` (with `{out}`) and `historical`."""
    raw = yaml.safe_load(path.read_text()) or {}
    entries = {}
    for name, spec in raw.items():
        spec = spec or {}
        unknown = set(spec) - KEYS
        if unknown or (spec.get("render") is None) == (spec.get("historical") is None):
            raise UsageError(f"{path}: {name}: needs exactly one of render and historical"
                             + (f" (unknown keys {sorted(unknown)})" if unknown else ""))
        if spec.get("render") is not None and "{out}" not in spec["render"]:
            raise UsageError(f"{path}: {name}: render has no {{out}}")
        entries[name] = Entry(name=name, **spec)
    return entries


def result_folders(root: Path = RESULTS) -> list[str]:
    """Every folder directly under results/."""
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def run_render(entry: Entry, out: Path) -> int:
    """Run the entry's render with its output into `out`, as its own process from the repository root
    (`vtbench ...` as `python -m bench ...`); its exit status. Its output is kept for a failure's log."""
    argv = [out.as_posix() if word == "{out}" else word for word in shlex.split(entry.render)]
    if argv[0] == "vtbench":
        argv = ["python", "-m", "bench", *argv[1:]]
    if argv[:2] != ["python", "-m"]:
        raise UsageError(f"{entry.name}: a render is `vtbench ...` or `python -m MODULE ...`, not {argv[0]!r}")
    done = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True)
    if done.returncode != entry.exit:
        log.warning("%s: exit %d\n%s", entry.render, done.returncode, done.stderr[-3000:])
    return done.returncode


def table_files(folder: Path) -> list[str]:
    """The generated tables of a folder: its .md (but the notes people write) and .csv files."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and (p.suffix == ".csv" or
                                                                      (p.suffix == ".md" and p.name not in NOTES)))


def md_tables(text: str) -> list[list[str]]:
    """The markdown tables of a document, each a list of its rows (lines starting with '|')."""
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line.rstrip())
        elif current:
            tables.append(current)
            current = []
    return tables + ([current] if current else [])


def _same_cell(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)


def csv_differences(got: str, want: str, name: str) -> list[str]:
    """Rows and cells where two CSV texts differ (numbers compared to 1e-9 relative)."""
    a, b = list(csv.reader(io.StringIO(got))), list(csv.reader(io.StringIO(want)))
    if not a or not b or a[0] != b[0]:
        return [f"{name}: columns {a[0] if a else []} != committed {b[0] if b else []}"]
    if len(a) != len(b):
        return [f"{name}: {len(a) - 1} rows, committed {len(b) - 1}"]
    header = b[0]
    return [f"{name} row {i}: {header[j] if j < len(header) else j}: {x!r} != committed {y!r}"
            for i, (ra, rb) in enumerate(zip(a[1:], b[1:]), 1) for j, (x, y) in enumerate(zip(ra, rb))
            if not _same_cell(x, y)] + [f"{name} row {i}: {len(ra)} cells, committed {len(rb)}"
                                        for i, (ra, rb) in enumerate(zip(a[1:], b[1:]), 1) if len(ra) != len(rb)]


def compare_tables(out: Path, committed: Path) -> list[str]:
    """Every difference between the generated tables in `out` and the committed ones (empty: the same)."""
    made, kept = table_files(out), table_files(committed)
    problems = [f"{name}: not generated" for name in kept if name not in made]
    problems += [f"{name}: generated, not committed" for name in made if name not in kept]
    for name in (n for n in kept if n in made):
        got, want = (out / name).read_text(), (committed / name).read_text()
        if name.endswith(".csv"):
            problems += csv_differences(got, want, name)
        elif md_tables(got) != md_tables(want):
            problems.append(f"{name}: its tables differ ({_first_difference(md_tables(got), md_tables(want))})")
    return problems


def _first_difference(got: list[list[str]], want: list[list[str]]) -> str:
    if len(got) != len(want):
        return f"{len(got)} tables, committed {len(want)}"
    for i, (a, b) in enumerate(zip(got, want)):
        for line_a, line_b in zip(a + [""] * (len(b) - len(a)), b + [""] * (len(a) - len(b))):
            if line_a != line_b:
                return f"table {i + 1}: {line_a[:120]!r} != committed {line_b[:120]!r}"
    return "?"


def check(entry: Entry) -> list[str]:
    """Render the entry into a temporary folder and compare; the differences (empty: it regenerates)."""
    with tempfile.TemporaryDirectory(prefix=f"regenerate-{entry.name}-") as tmp:
        out = Path(tmp) / "out"
        rc = run_render(entry, out)
        if rc != entry.exit:
            return [f"{entry.render}: exit {rc}, expected {entry.exit}"]
        return compare_tables(out, entry.committed)


def regenerate(entry: Entry) -> list[str]:
    """Rewrite the entry's committed folder with its render: rendered into a temporary folder first, then
    every file it made copied over and every generated file it no longer makes removed (the notes people
    wrote stay); the files replaced or removed."""
    with tempfile.TemporaryDirectory(prefix=f"regenerate-{entry.name}-") as tmp:
        out = Path(tmp) / "out"
        rc = run_render(entry, out)
        if rc != entry.exit:
            raise RuntimeError(f"{entry.render}: exit {rc}, expected {entry.exit}")
        return sync(out, entry.committed)


def sync(made: Path, committed: Path) -> list[str]:
    """Make `committed` hold what `made` holds (but the notes): copy every file, remove the stale ones."""
    made_files = {p.relative_to(made) for p in made.rglob("*") if p.is_file()}
    stale = [p for p in committed.rglob("*") if p.is_file() and p.relative_to(committed) not in made_files
             and p.name not in NOTES] if committed.is_dir() else []
    for path in stale:
        path.unlink()
    for rel in sorted(made_files):
        (committed / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(made / rel, committed / rel)
    return [str(rel) for rel in sorted(made_files)] + [f"removed {p.relative_to(committed)}" for p in stale]


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with --check, compare) every rendered folder of results/, or those named by --only."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m bench.studies.regenerate", description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="render into a temporary folder and compare; write nothing")
    p.add_argument("--only", nargs="+", metavar="FOLDER", help="only these folders of results/")
    args = p.parse_args(argv)
    try:
        entries = load_registry()
        unknown = sorted(set(args.only or []) - set(entries))
        if unknown:
            raise UsageError(f"not in {REGISTRY.name}: {', '.join(unknown)}")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for entry in (entries[name] for name in (args.only or entries)):
        if entry.render is None:
            print(f"{entry.name}: historical, kept as committed")
            continue
        problems = check(entry) if args.check else _regenerated(entry)
        failed += bool(problems)
        print(f"{entry.name}: " + ("same tables" if args.check else "regenerated") if not problems
              else f"{entry.name}: " + "; ".join(problems[:5]))
    return 1 if failed else 0


def _regenerated(entry: Entry) -> list[str]:
    """[] when the entry was rewritten in place, else why not."""
    try:
        regenerate(entry)
    except RuntimeError as exc:
        return [str(exc)]
    return []


if __name__ == "__main__":
    sys.exit(main())
