"""Fill the `model.defaults` of records written before records carried it, from the registry at each record's commit.

A cell states only the options it sets; what it ran under for the others is the registry's defaults
at the commit that ran it (`env.git_commit`). Records written since the `model` block has a
`defaults` field say so themselves; this script gives the older `vtbench.record/2` records the same,
read from the model zoo of their own commit (its `models/` package extracted from git and imported
in a subprocess), never from today's, whose defaults may have changed since (the numerics did).

Left as they are, and listed: records that already carry `defaults`, `/1` records (no `model` block:
readers take their facts from the registry of the reading process, as before), records of models
the registry does not know, and records whose commit this clone does not have. A record written
from a checkout with local changes (`-dirty`) gets its commit's defaults; the summary counts them.

    python scripts/backfill_model_defaults.py results            # every records/ folder under results/
    python scripts/backfill_model_defaults.py results --check    # list what would change, exit 1 if any
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from io import BytesIO
from pathlib import Path
from typing import Any, Iterable

from bench.core.records import json_text, write_json_atomic

SCHEMA_WITH_MODEL_BLOCK = "vtbench.record/2"
# Run with the extracted `models/` first on the path: the defaults of every registered variant as JSON.
_DUMP_DEFAULTS = """
import json, sys
sys.path.insert(0, sys.argv[1])
from models.registry import list_models, model_options
def value(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [value(x) for x in v]
    return str(v)
print(json.dumps({name: {k: value(v) for k, v in model_options(name).items()} for name in list_models()}))
"""


def record_files(paths: Iterable[Path]) -> list[Path]:
    """Every `*.json` in a `records/` folder under the paths (a file given is taken as is)."""
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        else:
            found += sorted(p for p in path.rglob("*.json") if "records" in p.parts)
    return found


def commit_of(record: dict[str, Any]) -> str | None:
    commit = str((record.get("env") or {}).get("git_commit") or "")
    return commit.removesuffix("-dirty") or None


def defaults_at(commit: str, repo: Path, cache: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:
    """Every registered variant's defaults at `commit` (None where git or the import fails)."""
    if commit in cache:
        return cache[commit]
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit, "models"],
                             capture_output=True)
    if archive.returncode != 0:
        cache[commit] = None
        return None
    with tempfile.TemporaryDirectory(prefix="vtbench-defaults-") as tmp:
        with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        dumped = subprocess.run([sys.executable, "-c", _DUMP_DEFAULTS, tmp], capture_output=True, text=True,
                                cwd=tmp)
    cache[commit] = json.loads(dumped.stdout) if dumped.returncode == 0 else None
    if dumped.returncode != 0:
        print(f"commit {commit[:12]}: importing its models failed: {dumped.stderr.strip().splitlines()[-1:]}",
              file=sys.stderr)
    return cache[commit]


def backfill(files: list[Path], repo: Path, check: bool) -> Counter:
    """Fill each record that needs it (or, with `check`, only count); returns what happened, by kind."""
    outcome: Counter = Counter()
    cache: dict[str, dict[str, Any] | None] = {}
    for path in files:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            outcome["unreadable"] += 1
            continue
        if not isinstance(record, dict) or record.get("schema") != SCHEMA_WITH_MODEL_BLOCK:
            outcome["not a /2 record"] += 1
            continue
        block, model = record.get("model"), str((record.get("config") or {}).get("model"))
        if not isinstance(block, dict) or block.get("defaults") is not None:
            outcome["has defaults"] += 1
            continue
        commit = commit_of(record)
        defaults = (defaults_at(commit, repo, cache) or {}).get(model) if commit else None
        if defaults is None:
            outcome["model or commit unknown"] += 1
            continue
        outcome["filled (from a -dirty checkout)" if "-dirty" in str(record["env"].get("git_commit")) else "filled"] += 1
        if check:
            print(f"would fill {path} ({model} @ {commit[:12]})")
            continue
        record["model"] = {**block, "defaults": defaults}
        if json_text(record) != path.read_text(encoding="utf-8"):
            write_json_atomic(path, record)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="record files, run folders or a folder of them (results)")
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the git clone whose history holds the records' commits (default: this one)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a record would be filled")
    args = parser.parse_args(argv)
    outcome = backfill(record_files(args.paths), args.repo, args.check)
    print(", ".join(f"{kind}: {count}" for kind, count in sorted(outcome.items())) or "no records")
    filled = sum(count for kind, count in outcome.items() if kind.startswith("filled"))
    return 1 if args.check and filled else 0


if __name__ == "__main__":
    sys.exit(main())
