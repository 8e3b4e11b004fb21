"""Tables as text, rendered by `tabulate`: markdown (report.md, fidelity.md), HTML (report.html) and
aligned plain text (the `vtbench profile` and `vtbench models` printouts).

Cells arrive already formatted as text (the callers choose digits and units), so tabulate never
re-parses a number. A column is right-aligned when every filled cell of it reads as a number
(`1.814`, `+0.53`, `94.25 ± 1.77 (n=2)`, `1.18x`, `224x224`, `default (16)`, or `baseline` in a ratio
column), its header with it; any other column is left-aligned.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

import pandas as pd
from tabulate import tabulate

_NUMERIC_CELL = re.compile(r"^(default \()?[+\-−]?(\d|\.\d)")  # 'default (16)': a model's default
# Words a numeric column holds in place of a number: a ratio column's own baseline row.
NUMERIC_WORDS = frozenset({"baseline"})


def cell_text(value: Any) -> str:
    """A cell as text: '' for None, NaN and <NA>."""
    if value is None or (not isinstance(value, str) and pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    return str(value)


def is_numeric_column(values: Iterable[Any]) -> bool:
    """Every filled cell reads as a number (see the module docstring); an all-empty column is text."""
    filled = [t.strip() for t in (cell_text(v) for v in values) if t.strip()]
    numbers = [t for t in filled if t not in NUMERIC_WORDS]
    return bool(numbers) and all(_NUMERIC_CELL.match(t) for t in numbers)


def column_alignment(df: pd.DataFrame) -> list[str]:
    """'right' for the numeric columns of `df`, 'left' for the others."""
    return ["right" if is_numeric_column(df.iloc[:, i]) else "left" for i in range(df.shape[1])]


def md_text(text: Any) -> str:
    """Text safe inside markdown: `&`, `<` and `>` as HTML entities.

    Markdown renderers pass raw HTML through, and table cells hold record fields (error messages,
    host names, option values) that anyone who can write a record controls: a `<script>` in an
    error message must show as text, as it does in report.html.
    """
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _md_cell(value: Any) -> str:
    return md_text(cell_text(value)).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame | None, empty: str = "_none_") -> str:
    """A GitHub pipe table, cells escaped, numeric columns right-aligned; `empty` for no rows."""
    if df is None or df.empty:
        return empty + "\n"
    rows = [[_md_cell(v) for v in row] for row in df.itertuples(index=False)]
    return tabulate(rows, headers=[_md_cell(c) for c in df.columns], tablefmt="pipe",
                    colalign=column_alignment(df), disable_numparse=True, preserve_whitespace=True) + "\n"


def html_table(df: pd.DataFrame | None, empty: str = "<p><em>none</em></p>") -> str:
    """An HTML table (tabulate escapes every cell and header), numeric columns right-aligned."""
    if df is None or df.empty:
        return empty
    rows = [[cell_text(v).replace("\n", " ") for v in row] for row in df.itertuples(index=False)]
    return tabulate(rows, headers=[str(c) for c in df.columns], tablefmt="html", colalign=column_alignment(df),
                    disable_numparse=True)


def text_table(rows: Sequence[Sequence[str]], headers: Sequence[str], align: Sequence[str]) -> str:
    """Plain aligned columns under a dashed rule (terminal output); leading spaces are kept (indents)."""
    return tabulate([list(r) for r in rows], headers=list(headers), tablefmt="simple", colalign=list(align),
                    disable_numparse=True, preserve_whitespace=True)
