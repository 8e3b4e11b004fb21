"""Is the process a run's files name still that same process? (one check for launch and status)

A pid names a process only until it exits: the kernel then hands the number to a later process, so
"pid 4242 runs this cell" can be answered "alive" forever by an unrelated one. The runner's state
and lock files and launch's `jobs.json` therefore record the host, the pid and the pid's start time
(field 22 of `/proc/PID/stat`, clock ticks since boot), and a process counts as alive only if all
three still match.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

PROC = Path("/proc")


def process_start_ticks(pid: Any) -> int | None:
    """Start time of `pid` in clock ticks since boot (/proc/PID/stat field 22); None if no such process."""
    stat = _proc_stat(pid)
    return None if stat is None else int(stat[19])  # stat[0] is field 3, so field 22 is index 19


def _proc_stat(pid: Any) -> list[str] | None:
    """Fields 3 onwards of /proc/PID/stat (state first), or None if there is no such process."""
    try:
        stat = (PROC / str(int(pid)) / "stat").read_text()
    except (OSError, TypeError, ValueError):
        return None
    # Field 2, the command name, is in parentheses and may hold spaces and ')': split after the last ')'.
    return stat[stat.rindex(")") + 2:].split()


def this_process() -> dict[str, Any]:
    """`host`, `pid` and `pid_start` of the calling process: what a state or lock file records."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": process_start_ticks(pid)}


def process_alive(host: Any, pid: Any, pid_start: Any = None) -> bool | None:
    """True if that process still runs on this host, False if it ended (or its pid names another
    process now), None when it ran on another host, which this one cannot see.

    Files written before start times were recorded (`pid_start` None) fall back to "the pid exists".
    """
    if host != socket.gethostname():
        return None
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    if not (PROC / "self" / "stat").exists():  # no procfs (not Linux): the pid is all there is
        return _signal_zero(pid)
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):  # a zombie has ended: only its exit status is left
        return False
    return pid_start is None or int(pid_start) == int(stat[19])


def _signal_zero(pid: int) -> bool:
    """Does `pid` exist? (signal 0 checks without sending anything)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True
