"""The confidence level of every interval in the report, and the t half-width of a mean over seeds:
shared by bench.analysis.report (the `M_ci95` columns) and bench.analysis.plots (error bars of rows
without them), so that neither imports the other for it."""

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
