"""Markdown tables of the benchmark reports, through ``tabulate``.

Cells are written as given (the callers format their numbers), in GitHub's pipe
format with per-column alignment.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tabulate import tabulate


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], align: Sequence[str] | None = None
) -> str:
    """A pipe-format markdown table, no trailing newline.

    Args:
        headers: the column titles.
        rows: the cells of each row; strings are kept as they are (no number parsing).
        align: ``"left"``, ``"right"`` or ``"center"`` per column (default: left).
    """
    return tabulate(
        [list(row) for row in rows],
        headers=list(headers),
        tablefmt="pipe",
        colalign=tuple(align) if align is not None else None,
        disable_numparse=True,
    )


def row_cells(line: str) -> list[str]:
    """The cells of one line of such a table, padding stripped (for readers and tests)."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]
