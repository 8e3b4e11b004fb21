"""The confidence level of every interval in the report, and the t half-width of a mean over seeds:
shared by bench.analysis.report (the `M_ci95` columns) and bench.analysis.plots (error bars of rows
without them), so that neither imports the other for it; and the speed study's target verdict,
shared by bench.analysis.speed (the legacy speed.json studies) and bench.analysis.speed_report (the
report section). Torch-free."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

CONFIDENCE = 0.95


def mean_ci_halfwidth(std: Any, n: Any, confidence: float = CONFIDENCE) -> float:
    """Half-width of the t confidence interval of a mean over n seeds (NaN for fewer than 2)."""
    from scipy import stats

    if n is None or pd.isna(n) or n < 2 or std is None or pd.isna(std):
        return np.nan
    return float(stats.t.ppf(0.5 + confidence / 2, int(n) - 1)) * float(std) / math.sqrt(int(n))


def target_verdict(summary: dict[str, Any]) -> str:
    """'met' when every round's latency ratio is at or below the MACs ratio, 'missed' when every
    round's is above it, else 'not resolved' (the MACs ratio lies inside the rounds' spread); a
    verdict from rounds that a noisy measurement entered says so.

    `summary`: `macs_ratio`, `latency_ratio_min`, `latency_ratio_max`, `rounds` (paired rounds) and
    optionally `base_noisy_rounds`, `vt_noisy_rounds`.
    """
    macs = summary["macs_ratio"]
    if summary["latency_ratio_max"] <= macs:
        verdict = "met"
    elif summary["latency_ratio_min"] > macs:
        verdict = "missed"
    else:
        verdict = "not resolved"
    noisy = (summary.get("base_noisy_rounds") or 0) + (summary.get("vt_noisy_rounds") or 0)
    return f"{verdict} (noisy: {noisy} of {2 * summary['rounds']} measurements)" if noisy else verdict
