"""Small helpers that every part of bench/ shares, one of each: standard library only, so the
command line, the pipeline (records, runner, launch) and the measuring code (checkpoint,
distributed, latency) can all import it without pulling in torch.

- `image_hw`: an input size (a side, or [H, W]) as an (H, W) pair;
- `canonical_hash`: the sha256 of a JSON value's canonical text (cell ids, checkpoint fingerprints);
- `atomic_write` / `write_text_atomic`: temp file beside the target, fsync, rename, fsync the folder;
- `launcher_ranks`: the ranks a torchrun launch or a multi-task SLURM step gives this process;
- `read_untrusted_bytes` / `read_untrusted_json`: read a file of a run folder (records, jobs,
  state, checkpoints) as untrusted input: a regular file only, never followed out of its folder,
  its size capped before a byte is parsed;
- `printable`: text with control characters escaped, for a terminal.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Mapping, NamedTuple, Sequence

from bench.core.errors import UsageError


# ---------------------------------------------------------------------------------- input sizes
def image_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """An int side or an (H, W) pair -> (H, W); UsageError unless both are positive."""
    if isinstance(size, int):
        hw = (size, size)
    else:
        hw = tuple(int(v) for v in size)
    if len(hw) != 2 or min(hw) < 1:
        raise UsageError(f"input size must be a positive side or an (H, W) pair, got {size!r}")
    return hw  # type: ignore[return-value]


# ------------------------------------------------------------------------------------- hashing
def canonical_hash(value: Any, length: int) -> str:
    """The first `length` hex digits of the sha256 of `value` as canonical JSON.

    Canonical: keys sorted, no spaces, anything JSON cannot hold as its `str`, so key order and
    formatting never change the hash. Callers keep their own length (a cell id has 12 digits, a
    checkpoint fingerprint 16): the ids already written must not change.
    """
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


# ------------------------------------------------------------------------------- atomic writes
def current_umask() -> int:
    """The process umask, read without changing it where /proc allows.

    `os.umask` can only be read by setting it, which races with other threads creating files;
    /proc/self/status (Linux >= 4.7) reports it directly, so that is tried first.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split(":", 1)[1].strip(), 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def shared_file_mode() -> int:
    """The mode a plain `open(path, "w")` would give: 0o666 less the umask.

    `tempfile.mkstemp` creates files 0600 whatever the umask, so a file renamed into place would
    be unreadable to the group of a run folder on a shared cluster file system.
    """
    return 0o666 & ~current_umask()


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temp file beside `path`; on a clean exit fsync it, rename it over `path`, fsync the folder.

    A crash or a full disk midway leaves the former `path` untouched (and no temp file behind);
    the temp file is `.NAME.XXXX.tmp`, its own for each writer, so two processes may write the
    same path at once (the last rename wins). The file gets the mode the umask gives. `mode` is
    "w" (text) or "wb" (binary).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, shared_file_mode())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically (see `atomic_write`)."""
    with atomic_write(path) as handle:
        handle.write(text)
    return Path(path)


# ------------------------------------------------------------------------------ rank detection
class LauncherRanks(NamedTuple):
    """Where a launcher placed this process: global rank, number of processes, rank on the host."""

    rank: int
    world_size: int
    local_rank: int
    launcher: str  # "torchrun" or "slurm"


def launcher_ranks(env: Mapping[str, str] | None = None) -> LauncherRanks | None:
    """The ranks of a torchrun-style launch (`WORLD_SIZE` > 1 with `RANK`, `LOCAL_RANK`) or of a
    multi-task SLURM step (`SLURM_NTASKS` > 1 with `SLURM_PROCID`, `SLURM_LOCALID`), in that order
    of precedence; None for a single process. `env` defaults to `os.environ`."""
    env = os.environ if env is None else env
    if int(env.get("WORLD_SIZE", "1")) > 1:
        return LauncherRanks(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")), "torchrun")
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return LauncherRanks(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]),
                             int(env.get("SLURM_LOCALID", "0")), "slurm")
    return None


# ------------------------------------------------------------------------------ untrusted files
# Caps on what vtbench reads from a run folder before parsing it: far above what vtbench writes
# (a record with per-module rows is ~100 KB; jobs.json grows ~1 KB per submitted cell).
MAX_STATE_BYTES = 1 << 20           # state.json, lock, cancelled.json
MAX_RECORD_BYTES = 32 << 20         # records, re-measurements
MAX_RUN_FILE_BYTES = 128 << 20      # cells.json, jobs.json
MAX_CHECKPOINT_BYTES = 16 << 30     # checkpoint.pt (ViT-H weights and optimiser state fit)


class UnsafeFile(OSError):
    """A run-folder file vtbench refuses to read: not a regular file, leading out of its folder,
    or above its size cap (an OSError, so every reader that tolerates an unreadable file copes)."""


@contextmanager
def open_untrusted(path: str | os.PathLike, max_bytes: int, *, inside: str | os.PathLike | None = None) -> Iterator[IO[bytes]]:
    """Open `path` for binary reading as untrusted input: a regular file of at most `max_bytes`,
    and, when `inside` is given, one that resolves inside that folder; else `UnsafeFile`.

    Opened non-blocking (a FIFO with no writer would hang a plain open) and checked with `fstat` on
    the very descriptor read from, so a FIFO or `/dev/zero` planted as a record or a checkpoint is
    refused before a byte is read. FileNotFoundError passes through.
    """
    path = Path(path)
    if inside is not None and not path.resolve().is_relative_to(Path(inside).resolve()):
        raise UnsafeFile(f"{path}: leads out of {inside} (a symlink?); not read")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(f"{path}: not a regular file ({_file_kind(info.st_mode)}); not read")
        if info.st_size > max_bytes:
            raise UnsafeFile(f"{path}: {info.st_size} bytes, above the {max_bytes}-byte cap for this file; not read")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        yield handle


def read_untrusted_bytes(path: str | os.PathLike, max_bytes: int, *, inside: str | os.PathLike | None = None) -> bytes:
    """The bytes of `path` read through `open_untrusted` (never more than `max_bytes`, even if it grows)."""
    with open_untrusted(path, max_bytes, inside=inside) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnsafeFile(f"{path}: above the {max_bytes}-byte cap for this file; not read")
    return data


def read_untrusted_json(path: str | os.PathLike, max_bytes: int, *, inside: str | os.PathLike | None = None) -> Any:
    """`read_untrusted_bytes` parsed as JSON (ValueError for bad JSON or text, RecursionError caught as one)."""
    data = read_untrusted_bytes(path, max_bytes, inside=inside)
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError as exc:
        raise ValueError(f"{path}: JSON nested too deep") from exc


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a plain file"


# ---------------------------------------------------------------------------- terminal output
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: Any, *, newlines: bool = True) -> str:
    """`text` with control characters (ANSI escapes, carriage returns, ...) shown as escapes, so a
    value from a grid or a record cannot drive the terminal; `newlines=False` escapes newlines too
    (a one-line message)."""
    text = str(text)
    escaped = _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)
    return escaped if newlines else escaped.replace("\n", "\\n").replace("\t", "\\t")
