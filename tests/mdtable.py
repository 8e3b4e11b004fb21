"""Read report.md's pipe tables back as cells, so tests check what a table says, not the padding
tabulate chooses."""

from __future__ import annotations

import re


def split_row(line: str) -> list[str]:
    """'| a | b\\|c |' -> ['a', 'b\\|c'] (an escaped pipe stays inside its cell)."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def md_rows(md: str, heading: str | None = None) -> list[dict[str, str]]:
    """Every row of every pipe table in `md` (or in the section under the first heading that starts
    with `heading`, up to the next heading), as {column header: cell}."""
    lines = md.splitlines()
    if heading is not None:
        start = next(i for i, line in enumerate(lines)
                     if line.startswith("#") and line.lstrip("#").strip().startswith(heading))
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
        lines = lines[start + 1:end]
    rows, header = [], None
    for line in lines:
        if not line.startswith("|"):
            header = None
        elif header is None:
            header = split_row(line)
        elif not set(line) <= set("|:- "):  # the alignment rule under the header
            rows.append(dict(zip(header, split_row(line))))
    return rows


def md_alignment(md: str, heading: str) -> dict[str, str]:
    """{column header: 'left' | 'right'} of the first table under `heading`, from its alignment rule."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and line.lstrip("#").strip().startswith(heading))
    first = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("|"))
    rule = split_row(lines[first + 1])
    return {h: "right" if r.endswith(":") and not r.startswith(":") else "left"
            for h, r in zip(split_row(lines[first]), rule)}
