"""A study's section of `vtbench report`: a heading, a paragraph for people, a table, a CSV.

Studies that used to have their own pipelines and output files (`speed`, `fidelity`) are report
sections over a run's records: each has a `report_sections(data, table)` function in its own
torch-free module (`bench.analysis.speed_report`: VT vs baseline latency, from
`bench.analysis.compare`; `bench.analysis.fidelity_report`) that returns the sections its records
support, and none when the run holds no such records.
`bench.analysis.report.study_sections` collects them; report.md, report.html and the CSV files
show them after the generic tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class StudySection:
    """One section a study adds to a report.

    Args:
        title: the heading (without '#').
        intro: markdown shown above the table (may be empty): what the rows are, and verdicts.
        table: the rows as shown (formatted strings are fine).
        csv_name: when set, `data` (else `table`) is also written as this file beside report.md.
        data: the raw numbers behind `table`, for the CSV.
    """

    title: str
    intro: str
    table: pd.DataFrame
    csv_name: str | None = None
    data: pd.DataFrame | None = field(default=None)

    def csv_frame(self) -> pd.DataFrame:
        return self.table if self.data is None else self.data
