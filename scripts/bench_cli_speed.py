#!/usr/bin/env python3
"""How long the command line takes to answer: `vtbench models` counted afresh (what every listing
cost before the cache) against answered from the cache, and how soon bad input is refused.

    python3 scripts/bench_cli_speed.py            # on an idle machine: a few minutes (the cold count)
    python3 scripts/bench_cli_speed.py --repeat 3 # the median of 3 runs of each warm command

Each command runs as a user runs it (a fresh `python -m bench` process), with its own empty cache
folder for the cold run ($VTBENCH_CACHE_DIR), which the warm runs then read. Prints one table:
command, what it measures, seconds. Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (label, vtbench arguments, expected exit code); each cold command starts from an empty cache of its own,
# and the warm commands read the first one's.
COLD = [("models, counted afresh (before: every listing)", ["models"], 0),
        ("models --no-macs, counted afresh", ["models", "--no-macs"], 0)]
WARM = [("models, from the cache", ["models"], 0),
        ("models --format csv, from the cache", ["models", "--format", "csv"], 0),
        ("models --no-macs, from the cache", ["models", "--no-macs"], 0),
        ("bad input: models --filter nope (cached names)", ["models", "--filter", "nope"], 2),
        ("bad input: profile --set num_token=8", ["profile", "vt_resnet18", "--set", "num_token=8"], 2),
        ("bad input: train --num-tokens 8 (argparse)", ["train", "vt_resnet18", "--dataset", "digits",
                                                         "--num-tokens", "8"], 2),
        ("help: vtbench --help", ["--help"], 0)]


def timed(argv: list[str], expected: int, cache: Path) -> float:
    """Seconds one `python -m bench ARGV` took; exits if its exit code is not `expected`."""
    env = {**os.environ, "VTBENCH_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bench", *argv], cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != expected:
        sys.exit(f"vtbench {' '.join(argv)}: exit {done.returncode}, expected {expected}\n{done.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each warm command (median; default 3)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="vtbench-cache-") as folder:
        caches = [Path(folder) / f"cold{index}" for index in range(len(COLD))]
        for (label, argv, code), cache in zip(COLD, caches):
            rows.append((label, timed(argv, code, cache)))
        warm_cache = caches[0]
        for label, argv, code in WARM:
            rows.append((label, statistics.median(timed(argv, code, warm_cache) for _ in range(args.repeat))))
    width = max(len(label) for label, _ in rows)
    print(f"{'command':<{width}}  seconds")
    for label, seconds in rows:
        print(f"{label:<{width}}  {seconds:7.2f}")


if __name__ == "__main__":
    main()
