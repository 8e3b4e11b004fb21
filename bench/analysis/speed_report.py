"""The speed study as a section of `vtbench report` (bench/analysis/section.py).

Placeholder until the speed study is a grid plus this section: no sections yet.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.analysis.section import StudySection


def report_sections(data: Any, table: pd.DataFrame) -> list[StudySection]:
    """The sections the run's records support (none yet)."""
    return []
