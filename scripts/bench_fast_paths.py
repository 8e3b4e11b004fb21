"""Before/after timing of the CPU fast paths of models.layers (issue 15 part 2), side by side.

For each VT model and batch size, the VT stage alone (on the trunk's stage-4 features) and the whole
network run with the fast paths on and under `plain_kernels()`, alternating, for `--rounds` rounds;
each round times both for at least `--min-time-s` and keeps the median call. The ratio fast / plain
is given per round, median [min-max]. Same weights, same input; the outputs are compared first.

    python scripts/bench_fast_paths.py --out results/fast_paths

Nothing else should run on the machine while it measures; the load average at start and end is
written beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench.core.records import capture_env
from models import build_model
from models.layers import plain_kernels


def median_call_ms(fn, min_time_s: float) -> float:
    """Median wall time of one call (ms) over as many calls as fit in `min_time_s`, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < min_time_s or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def side_by_side(fn, rounds: int, min_time_s: float) -> dict:
    """`fn` timed with fast paths and plain, alternating (which goes first alternates too)."""
    fast, plain = [], []
    for r in range(rounds):
        order = ("fast", "plain") if r % 2 == 0 else ("plain", "fast")
        for which in order:
            if which == "fast":
                fast.append(median_call_ms(fn, min_time_s))
            else:
                with plain_kernels():
                    plain.append(median_call_ms(fn, min_time_s))
    ratios = [f / p for f, p in zip(fast, plain)]
    return {"fast_ms": fast, "plain_ms": plain, "ratios": ratios,
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def vt_stage_input(model, x):
    """The features the VT stage reads: the trunk up to stage 4."""
    return model.stage4(model.stage3(model.stage2(model.stem(x))))


def max_relative_difference(model, x) -> float:
    with plain_kernels():
        plain = model(x)
    fast = model(x)
    return ((fast - plain).abs().max() / plain.abs().max()).item()


def measure(name: str, batch: int, rounds: int, min_time_s: float, whole: bool) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = torch.randn(batch, 3, 224, 224)
    rows = []
    with torch.inference_mode():
        features = vt_stage_input(model, x)
        diff = max_relative_difference(model, x)
        parts = [("vt stage", lambda: model.vt(features))] + ([("whole network", lambda: model(x))] if whole else [])
        for part, fn in parts:
            result = side_by_side(fn, rounds, min_time_s)
            rows.append({"model": name, "batch": batch, "part": part, "max_rel_diff": diff, **result})
            print(f"{name} b{batch} {part}: fast/plain {result['ratio_median']:.3f} "
                  f"[{result['ratio_min']:.3f}-{result['ratio_max']:.3f}], plain {statistics.median(result['plain_ms']):.2f} ms, "
                  f"fast {statistics.median(result['fast_ms']):.2f} ms", file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict], env: dict) -> str:
    lines = [
        "# CPU fast paths of models.layers: fast / plain, side by side",
        "",
        f"- {env['cpu']}, {env['threads']} threads, torch {env['torch']}, fp32, inference, 224x224; "
        f"git {env['git_commit']}; {env['start']} -> {env['end']}",
        f"- load average at start {env['load_start']}, at end {env['load_end']}",
        "- ratio = fast / plain per round (median call time each), median [min-max] over rounds; "
        "the two alternate within each round. Outputs compared first (max |diff| / max |plain|).",
        "",
        "| model | batch | part | plain ms | fast ms | fast / plain [min-max] | max rel. diff |",
        "| --- | ---: | --- | ---: | ---: | --- | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['part']} | {statistics.median(r['plain_ms']):.2f} | "
                     f"{statistics.median(r['fast_ms']):.2f} | {r['ratio_median']:.3f} [{r['ratio_min']:.3f}-"
                     f"{r['ratio_max']:.3f}] | {r['max_rel_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vt_resnet18,vt_resnet50")
    parser.add_argument("--batch-size", default="1,32", help="comma-separated (default 1,32)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--min-time-s", type=float, default=1.0, help="per variant and round (default 1.0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-whole", dest="whole", action="store_false", help="time the VT stage only")
    parser.add_argument("--out", type=Path, default=None, help="folder for fast_paths.json and fast_paths.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = {**capture_env("cpu"), "load_start": os.getloadavg(),
           "start": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    rows = []
    for batch in (int(b) for b in args.batch_size.split(",")):
        for name in args.models.split(","):
            rows += measure(name, batch, args.rounds, args.min_time_s, args.whole)
    env.update(load_end=os.getloadavg(), end=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    text = markdown(rows, env)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fast_paths.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")
        (args.out / "fast_paths.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
