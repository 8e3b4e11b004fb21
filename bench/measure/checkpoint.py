"""Atomic, resumable training checkpoints, loadable with `torch.load(weights_only=True)`.

`OUT/checkpoint.pt` is the latest complete epoch, and by default the only one kept: a new
checkpoint is written to a temp file in the same folder, fsync'ed and renamed over the old one
(then the folder is fsync'ed), so a kill at any moment leaves the old or the new checkpoint whole,
never none. A second copy would only guard against a file damaged after it was written, at the
cost of twice the disk (2 x 85 MiB for a ResNet-18 cell: weights and SGD momentum); `keep=N`
keeps the N-1 before it too, as `checkpoint.prev.pt`, `checkpoint.prev2.pt`, ... (newest first).
Everything stored is a tensor or a plain Python type (RNG states included), so loading never
unpickles arbitrary objects. Each checkpoint carries a fingerprint of the config that produced it;
resuming under another config raises `CheckpointError` naming every key that differs (with both
values), an unreadable file raises it too, and neither touches anything.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bench.core.errors import UsageError
from bench.core.util import MAX_CHECKPOINT_BYTES, atomic_write, canonical_hash, open_untrusted

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
FORMAT = "vtbench.checkpoint/1"
_TEMP_PREFIX, _TEMP_SUFFIX = ".checkpoint.", ".tmp"
_PREVIOUS_RE = re.compile(r"^checkpoint\.prev(\d*)\.pt$")


class CheckpointError(UsageError):
    """A checkpoint that cannot be resumed from: unreadable, or written under another config.

    A UsageError, so `vtbench train` reports it on one line and exits 2.
    """


def fingerprint(payload: dict[str, Any]) -> str:
    """Stable 16-hex hash of a JSON-able dict (key order does not matter)."""
    return canonical_hash(payload, 16)


def previous_name(age: int) -> str:
    """File name of the checkpoint `age` epochs older than checkpoint.pt (1: checkpoint.prev.pt)."""
    return PREVIOUS if age == 1 else f"checkpoint.prev{age}.pt"


def save_checkpoint(out_dir: str | os.PathLike, state: dict[str, Any], keep: int = 1) -> Path:
    """Write `state` as OUT/checkpoint.pt atomically; keep the `keep - 1` former ones, delete older.

    At every moment OUT/checkpoint.pt is a whole checkpoint (the old one until the rename, then
    the new one). Former checkpoints beyond `keep` (left by a run that kept more) are deleted
    only once the new one is in place.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (got {keep})")
    out_dir = Path(out_dir)
    current = out_dir / CHECKPOINT
    with atomic_write(current, "wb") as handle:  # .checkpoint.pt.XXXX.tmp: remove_stale_temp_files finds it
        torch.save({"format": FORMAT, **state}, handle)
        if keep > 1 and current.exists():  # once the new one is whole, before it replaces the old
            _shift_previous(out_dir, keep)
    for age, path in _previous_by_age(out_dir):
        if age >= keep:
            path.unlink(missing_ok=True)
    return current


def previous_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """The former checkpoints in OUT (checkpoint.prev.pt, checkpoint.prev2.pt, ...), newest first."""
    return [path for _, path in _previous_by_age(out_dir)]


def _previous_by_age(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    found = []
    for path in Path(out_dir).glob("checkpoint.prev*.pt"):
        match = _PREVIOUS_RE.match(path.name)
        if match and path.name == previous_name(int(match.group(1) or 1)):  # not prev1, prev02
            found.append((int(match.group(1) or 1), path))
    return sorted(found)


def _shift_previous(out_dir: Path, keep: int) -> None:
    """Age each kept former checkpoint by one, and make checkpoint.pt the newest former one.

    checkpoint.pt stays in place (the newest former one is a hard link to it, or a copy where
    links are refused), so a kill during the shift still leaves it whole.
    """
    for age in range(keep - 1, 1, -1):
        older = out_dir / previous_name(age - 1)
        if older.exists():
            os.replace(older, out_dir / previous_name(age))
    fd, link = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=out_dir)
    os.close(fd)
    try:
        os.unlink(link)
        try:
            os.link(out_dir / CHECKPOINT, link)
        except OSError:
            shutil.copyfile(out_dir / CHECKPOINT, link)
        os.replace(link, out_dir / PREVIOUS)
    except BaseException:
        Path(link).unlink(missing_ok=True)
        raise


def remove_stale_temp_files(out_dir: str | os.PathLike) -> list[Path]:
    """Delete temp files that a writer killed mid-write left in OUT; return them.

    Call it only where no other process writes checkpoints to OUT (a run starting or resuming).
    """
    stale = sorted(Path(out_dir).glob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
        log.info("removed %s, left by a checkpoint write that did not finish", path)
    return stale


def read_checkpoint_file(path: str | os.PathLike) -> Any:
    """torch.load a checkpoint file with weights_only=True (tensors and plain types, no pickled code).

    Raises:
        CheckpointError: missing, damaged, or holding anything but weights-only types.
    """
    path = Path(path)
    try:
        with open_untrusted(path, MAX_CHECKPOINT_BYTES) as handle:
            return torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file; re-raised as one
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc


def load_checkpoint(out_dir: str | os.PathLike, expected_fingerprint: str, *,
                    config: dict[str, Any] | None = None,
                    saved_config: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
                    accept: Callable[[dict[str, tuple[Any, Any]]], bool] | None = None,
                    ) -> dict[str, Any] | None:
    """Load OUT/checkpoint.pt (weights_only) if present; None when there is none.

    Args:
        out_dir: the folder of the checkpoint.
        expected_fingerprint: the fingerprint of the config that resumes.
        config: that config (what the fingerprint covers), to name the keys that differ.
        saved_config: maps a loaded state to the config its fingerprint covers (default: the
            state's `config`).
        accept: given the differences {dotted key: (checkpoint's value, current value)} when the
            fingerprints differ; True returns the state to the caller (which handles them).

    Raises:
        CheckpointError: the file is unreadable, or its fingerprint differs from
            `expected_fingerprint` (another model, data set or recipe) and `accept` does not
            take the differences; the message names each differing key. Nothing is deleted.
    """
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        return None
    previous = previous_checkpoints(out_dir)
    hint = (f"; the previous good checkpoint is kept at {previous[0]} (move it to {path.name} to "
            f"resume from it)" if previous else "")
    try:
        state = read_checkpoint_file(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}{hint}") from exc.__cause__
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a vtbench checkpoint{hint}")
    if state.get("fingerprint") == expected_fingerprint:
        return state
    saved = (saved_config or (lambda s: s.get("config")))(state)
    differences = config_differences(saved, config) if saved is not None and config is not None else {}
    if differences and accept is not None and accept(differences):
        return state
    what = (", ".join(f"{key} is {_canonical(old)} in the checkpoint and {_canonical(new)} now"
                      for key, (old, new) in differences.items())
            if differences else f"fingerprint {state.get('fingerprint')} != {expected_fingerprint}")
    raise CheckpointError(f"checkpoint {path} belongs to another config: {what}; resume it with the "
                          f"config it was written under, or train into another folder (--out)")


_ABSENT = object()


def config_differences(saved: Any, current: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved value, current value)} for every leaf that differs, in key order.

    Nested mappings are compared key by key (`model_args.num_tokens`); other values by their
    canonical JSON, as the fingerprint sees them (so 1 and 1.0 differ, as their hashes do).
    A key that one side lacks has the value `<absent>` there.
    """
    if isinstance(saved, dict) and isinstance(current, dict):
        found: dict[str, tuple[Any, Any]] = {}
        for key in sorted(set(saved) | set(current), key=str):
            found.update(config_differences(saved.get(key, _ABSENT), current.get(key, _ABSENT),
                                            f"{prefix}{key}."))
        return found
    if _canonical(saved) == _canonical(current):
        return {}
    return {prefix.rstrip("."): (saved, current)}


def _canonical(value: Any) -> str:
    return "<absent>" if value is _ABSENT else json.dumps(value, sort_keys=True, default=str)


def capture_rng_state() -> dict[str, Any]:
    """torch, CUDA, numpy and Python RNG states as tensors and plain types (weights_only-safe)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_version), "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(int(v) for v in python_state["internal"].tolist()),
                     python_state["gauss_next"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
