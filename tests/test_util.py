"""bench.core.util: the one input-size normaliser, canonical hash, atomic writer and rank reader."""

from __future__ import annotations

import hashlib
import json

import pytest

from bench.core.errors import UsageError
from bench.core.util import atomic_write, canonical_hash, image_hw, launcher_ranks


def test_image_hw():
    assert image_hw(224) == (224, 224) and image_hw([800, 1216]) == (800, 1216) and image_hw((8, 8)) == (8, 8)
    for bad in (0, [224], [224, 0], [1, 2, 3]):
        with pytest.raises(UsageError, match="input size"):
            image_hw(bad)


def test_canonical_hash_is_the_sha256_of_sorted_compact_json_cut_to_length():
    value = {"b": [1, 2.5, None], "a": {"y": True, "x": "s"}}
    text = '{"a":{"x":"s","y":true},"b":[1,2.5,null]}'
    assert canonical_hash(value, 12) == hashlib.sha256(text.encode()).hexdigest()[:12]
    assert canonical_hash(value, 16) == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert canonical_hash(dict(reversed(list(value.items()))), 12) == canonical_hash(value, 12)


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "sub" / "f.json"
    with atomic_write(path) as handle:
        json.dump({"v": 1}, handle)
    with pytest.raises(RuntimeError), atomic_write(path) as handle:
        handle.write("half")
        raise RuntimeError("crash midway")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]  # no temp file left


def test_launcher_ranks_torchrun_before_slurm_none_for_one_process():
    both = {"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "1", "SLURM_NTASKS": "2", "SLURM_PROCID": "1"}
    assert launcher_ranks(both) == (2, 4, 1, "torchrun")
    assert launcher_ranks({"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1"}) == (1, 2, 1, "slurm")
    assert launcher_ranks({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
    assert launcher_ranks({"RANK": "3"}) is None  # no world of more than one process
