"""Is a latency row a measurement of the model, or of the machine's other work? Pure Python.

The judgement of `bench.measure.latency` (which measures) kept apart from torch, so that the
analysis room and `vtbench report` judge records without importing torch: the thresholds
(`NOISE_SPREAD_MAX`, `NOISE_LOAD_MARGIN`, `NOISE_STEAL_MAX_PCT`), `judge_latency`, the
percentiles it uses, and the notes printed under a table of latency rows.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

__all__ = ["NOISE_SPREAD_MAX", "NOISE_LOAD_MARGIN", "NOISE_STEAL_MAX_PCT", "SETTLE_WINDOW", "SETTLE_ITERS",
           "MEMORY_KIND_TEXT", "percentile", "spread_p80_p20", "round_spread", "unsettled_reason", "judge_latency",
           "latency_notes"]

# The thresholds of `judge_latency`, in one place (docs/architecture.md lists the record keys).
# p80/p20 above 1.25: the middle 60 % of the samples span more than 25 %. Repeated forwards of
# a fixed model on an idle CPU stay within a few percent of each other (p80/p20 about 1.02-1.10
# on this project's VMs), while the effects a report compares (VT vs ResNet, L = 4 vs 64) are
# 5-30 %: a spread wider than 1.25 is as large as the differences the row is used to show.
NOISE_SPREAD_MAX = 1.25
# A 1-min load average above the measurement's own threads + 1.0, before or after: on average at
# least one more runnable task than the timing itself competed for the cores (the average lags
# by about a minute, so "before" catches what ran up to the start and "after" what ran during).
NOISE_LOAD_MARGIN = 1.0
# Steal above 2 % of CPU time over the measurement (/proc/stat, VMs only): the hypervisor ran
# someone else on our cores, which inflates the timings by about as much, unevenly.
NOISE_STEAL_MAX_PCT = 2.0


# Settling compares the medians of two consecutive windows of this many warm-up iterations, so a
# warm-up can settle at its 2 x 3 = 6th iteration at the earliest (bench.measure.latency.warm_up).
SETTLE_WINDOW = 3
SETTLE_ITERS = 2 * SETTLE_WINDOW


def percentile(ordered: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1) of sorted values, interpolated linearly between neighbours."""
    if not ordered:
        raise ValueError("no values to take a percentile of")
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def spread_p80_p20(p20: Any, p80: Any) -> float | None:
    """p80 / p20 of a latency row (None when either is missing or p20 is not positive)."""
    if p20 is None or p80 is None or not p20 > 0:
        return None
    return float(p80) / float(p20)


def round_spread(round_p50s: Sequence[float] | None) -> float | None:
    """p80/p20 of the per-round medians of an interleaved row (None with fewer than 3 rounds)."""
    if not round_p50s or len(round_p50s) < 3:
        return None
    ordered = sorted(float(v) for v in round_p50s)
    return spread_p80_p20(percentile(ordered, 0.2), percentile(ordered, 0.8))


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def unsettled_reason(metrics: dict[str, Any]) -> str:
    """Why a row's warm-up counts against it: it did not settle, or (the settings' fault, not the
    machine's) it was stopped before settling had its first chance, the 6th iteration."""
    rounds = metrics.get("warmup_unsettled_rounds")
    if rounds:
        return f"warm-up did not settle ({rounds} of {metrics.get('latency_rounds')} rounds)"
    iters = metrics.get("warmup_iters")
    if not isinstance(iters, int):
        return "warm-up did not settle"
    if iters < SETTLE_ITERS:
        stop = {"cap_s": " by warmup_cap_s", "max_iters": " by warmup_max_iters"}.get(metrics.get("warmup_stop"), "")
        return f"warm-up stopped{stop} after {iters} iterations, before it could settle (needs {SETTLE_ITERS})"
    return f"warm-up did not settle in {iters} iterations"


def judge_latency(metrics: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """The quality verdict of one latency row, from what it recorded.

    A row is noisy when the warm-up did not settle (`unsettled_reason` says how), when its spread p80/p20 (or, for an
    interleaved row, the p80/p20 of its rounds' medians) exceeds `NOISE_SPREAD_MAX`, when the
    1-min load average before or after exceeds threads + `NOISE_LOAD_MARGIN`, or when steal time
    exceeds `NOISE_STEAL_MAX_PCT`. A figure the row lacks (an older record, a platform without
    /proc) is not held against it.

    Returns:
        `latency_verdict` ("ok" | "noisy"), `latency_noise_reasons` (short strings, empty when
        ok) and `latency_spread_p80_p20`.
    """
    reasons: list[str] = []
    if metrics.get("warmup_settled") is False:
        reasons.append(unsettled_reason(metrics))
    spread = spread_p80_p20(metrics.get("latency_ms_p20"), metrics.get("latency_ms_p80"))
    if spread is not None and spread > NOISE_SPREAD_MAX:
        reasons.append(f"spread p80/p20 {spread:.2f} > {NOISE_SPREAD_MAX:.2f}")
    rounds_spread = round_spread(metrics.get("latency_round_p50_ms"))
    if rounds_spread is not None and rounds_spread > NOISE_SPREAD_MAX:
        reasons.append(f"rounds' p50 spread p80/p20 {rounds_spread:.2f} > {NOISE_SPREAD_MAX:.2f}")
    n_threads = threads or metrics.get("threads")
    if n_threads:
        limit = float(n_threads) + NOISE_LOAD_MARGIN
        for when in ("before", "after"):
            load = metrics.get(f"loadavg_{when}")
            if _present(load) and load > limit:
                reasons.append(f"load {load:.2f} {when} > {n_threads} threads + {NOISE_LOAD_MARGIN:g}")
    steal = metrics.get("steal_pct")
    if _present(steal) and steal > NOISE_STEAL_MAX_PCT:
        reasons.append(f"steal {steal:.1f} % > {NOISE_STEAL_MAX_PCT:g} %")
    return {"latency_verdict": "noisy" if reasons else "ok", "latency_noise_reasons": reasons,
            "latency_spread_p80_p20": spread}


MEMORY_KIND_TEXT = {
    "rss_added": "peak MiB = RSS the measurement added (its peak minus the RSS before it), "
                 "process MiB = the whole process's peak RSS",
    "cuda_max_allocated": "peak MiB = CUDA memory the caching allocator handed out at most (weights included)",
}


def latency_notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Lines for people under a table of latency rows: what the memory columns mean, and one
    'NOISY' line per noisy row with its reasons (thresholds: `judge_latency`)."""
    done = [r for r in rows if "error" not in r]
    lines = []
    kinds = list(dict.fromkeys(str(r.get("peak_mem_kind")) for r in done))
    lines += [MEMORY_KIND_TEXT[k] for k in kinds if k in MEMORY_KIND_TEXT]
    for row in done:
        if row.get("latency_verdict") == "noisy":
            lines.append(f"NOISY at batch {row.get('batch_size_requested')}: "
                         f"{'; '.join(row.get('latency_noise_reasons') or [])}")
    return lines
