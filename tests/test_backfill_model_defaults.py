"""scripts/backfill_model_defaults.py: a record's defaults come from the zoo of its own commit, not today's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.core.contracts import Record
from bench.core.records import json_text, make_record

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import backfill_model_defaults as backfill  # noqa: E402

# The commit before numerics="centered" became the default: its zoo says "appendix".
BEFORE_CENTERED = "9c4e009^"


def _commit(rev: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", rev], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this checkout has no git history holding {rev}")
    return done.stdout.strip()


def _old_record(path: Path, model: str, commit: str, dirty: bool = False) -> Path:
    """A /2 record as written before the model block carried defaults."""
    record = make_record({"model": model, "model_args": {"num_classes": 10}, "measure": ["complexity"],
                          "input_size": 32}, metrics={"gmacs": 0.5})
    del record["model"]["defaults"]
    record["env"]["git_commit"] = commit + ("-dirty" if dirty else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json_text(record))
    return path


def test_defaults_come_from_the_records_own_commit_and_only_the_block_changes(tmp_path):
    old, now = _commit(BEFORE_CENTERED), _commit("HEAD")
    then = _old_record(tmp_path / "run" / "records" / "a.json", "vt_resnet18", old, dirty=True)
    today = _old_record(tmp_path / "run" / "records" / "b.json", "vt_resnet18", now)
    before = {p: json.loads(p.read_text()) for p in (then, today)}

    assert backfill.main([str(tmp_path), "--check"]) == 1  # two records would be filled
    assert all(json.loads(p.read_text()) == before[p] for p in before)  # --check changes nothing
    assert backfill.main([str(tmp_path)]) == 0

    filled = {p: json.loads(p.read_text()) for p in (then, today)}
    assert filled[then]["model"]["defaults"]["numerics"] == "appendix"
    assert filled[today]["model"]["defaults"]["numerics"] == "centered"
    assert "attention_impl" not in filled[then]["model"]["defaults"]  # no such option yet then
    for path, record in filled.items():
        Record.model_validate(record)
        record["model"].pop("defaults")
        assert record == before[path]  # nothing else moved
    assert backfill.main([str(tmp_path), "--check"]) == 0  # filled once: nothing left to do


def test_records_it_cannot_place_are_left_alone(tmp_path):
    unknown_commit = _old_record(tmp_path / "records" / "c.json", "resnet18", "0" * 40)
    unregistered = _old_record(tmp_path / "records" / "d.json", "timm:resnet18", _commit("HEAD"))
    v1 = tmp_path / "records" / "e.json"
    v1.write_text(json.dumps({"schema": "vtbench.record/1", "config": {"model": "resnet18"}}))
    before = {p: p.read_text() for p in (unknown_commit, unregistered, v1)}
    assert backfill.main([str(tmp_path)]) == 0
    assert all(p.read_text() == text for p, text in before.items())
