"""Atomic, resumable training checkpoints, loadable with `torch.load(weights_only=True)`.

`OUT/checkpoint.pt` is the latest complete epoch; before it is replaced, the previous one is kept
as `OUT/checkpoint.prev.pt`. A new checkpoint is written to a temp file in the same folder,
fsync'ed and renamed, so a kill at any moment leaves at least one good checkpoint. Everything
stored is a tensor or a plain Python type (RNG states included), so loading never unpickles
arbitrary objects. Each checkpoint carries a fingerprint of the config that produced it; resuming
under another config, or from an unreadable file, raises `CheckpointError` and touches nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.errors import UsageError

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
FORMAT = "vtbench.checkpoint/1"


class CheckpointError(UsageError):
    """A checkpoint that cannot be resumed from: unreadable, or written under another config.

    A UsageError, so `vtbench train` reports it on one line and exits 2.
    """


def fingerprint(payload: dict[str, Any]) -> str:
    """Stable 16-hex hash of a JSON-able dict (key order does not matter)."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def save_checkpoint(out_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write `state` as OUT/checkpoint.pt atomically, keeping the former one as checkpoint.prev.pt."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint.", suffix=".tmp", dir=out_dir)
    try:
        os.fchmod(fd, _shared_file_mode())  # mkstemp makes it 0600: the run's group could not read it
        with os.fdopen(fd, "wb") as handle:
            torch.save({"format": FORMAT, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        current = out_dir / CHECKPOINT
        if current.exists():
            os.replace(current, out_dir / PREVIOUS)
        os.replace(tmp, current)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_dir / CHECKPOINT


def _shared_file_mode() -> int:
    """0o666 less the umask, what `open(path, "w")` would give (as `bench.records.shared_file_mode`,
    repeated here because the training code does not import the pipeline's modules)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split(":", 1)[1].strip(), 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # racy with threads creating files; only where /proc is missing
    os.umask(old)
    return 0o666 & ~old


def read_checkpoint_file(path: str | os.PathLike) -> Any:
    """torch.load a checkpoint file with weights_only=True (tensors and plain types, no pickled code).

    Raises:
        CheckpointError: missing, damaged, or holding anything but weights-only types.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file; re-raised as one
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc


def load_checkpoint(out_dir: str | os.PathLike, expected_fingerprint: str) -> dict[str, Any] | None:
    """Load OUT/checkpoint.pt (weights_only) if present; None when there is none.

    Raises:
        CheckpointError: the file is unreadable, or its fingerprint differs from
            `expected_fingerprint` (another model, data set or recipe). Nothing is deleted.
    """
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        return None
    previous = Path(out_dir) / PREVIOUS
    keep = (f"; the previous good checkpoint is kept at {previous} (move it to {path.name} to "
            f"resume from it)" if previous.exists() else "")
    try:
        state = read_checkpoint_file(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}{keep}") from exc.__cause__
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a vtbench checkpoint{keep}")
    if state.get("fingerprint") != expected_fingerprint:
        raise CheckpointError(
            f"checkpoint {path} belongs to another config (fingerprint {state.get('fingerprint')} "
            f"!= {expected_fingerprint}); use another --out or start afresh without --resume")
    return state


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
