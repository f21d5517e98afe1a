"""One table type, rendered to the terminal (rich) and to Markdown.

Every table neuronspec shows — results, neuron counts, overlaps, diffs — is built as a
`Table` of plain strings first, so the terminal and the files always agree.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from neuronspec.fileio import write_atomic

#: the title of an evaluation's p-value table, which its forest plot (report.plots) sits beside
P_TABLE = "{name}: set arms against their random control (one-sided p)"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, col) cells to emphasise
    caption: str = ""
    terminal: bool = True  # wide detail tables go to the Markdown report only
    anchor: str = ""  # a stable name figures refer to (e.g. "matrices/ppl"), where the title is not enough

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def to_rich(self):  # noqa: ANN201 - rich is imported lazily
        from rich.markup import escape
        from rich.table import Table as RichTable

        # Cells are plain text: escape them, or rich would swallow `[name]` as markup.
        t = RichTable(title=escape(self.title), caption=escape(self.caption) or None, title_justify="left")
        for i, col in enumerate(self.columns):
            t.add_column(escape(col), justify="left" if i == 0 else "right", no_wrap=i == 0)
        for r, row in enumerate(self.rows):
            t.add_row(*[f"[bold]{escape(c)}[/bold]" if (r, i) in self.bold else escape(c) for i, c in enumerate(row)])
        return t

    def min_width(self, wrap: int = 20) -> int:
        """Characters the table needs without squeezing a column below its content (or `wrap`,
        beyond which long text may wrap), plus rich's borders and padding."""
        cols = [max([len(c)] + [len(r[i]) for r in self.rows if i < len(r)]) for i, c in enumerate(self.columns)]
        return sum(min(c, wrap) for c in cols) + 3 * len(cols) + 1

    def split(self, width: int, keys: int | None = None) -> list["Table"]:
        """Tables of at most `width` characters: the first `keys` columns (the row labels; by
        default every leading column of text) in each, the other columns spread over as few
        tables as fit — readable in a log file, where a vertical dump runs to hundreds of lines."""
        if keys is None:
            keys = next((i for i in range(1, len(self.columns)) if any(_numeric(r[i]) for r in self.rows if i < len(r))),
                        len(self.columns))
            keys = max(1, min(keys, 2))
        if self.min_width() <= width or len(self.columns) <= keys + 1:
            return [self]
        sizes = [max([len(c)] + [len(r[i]) for r in self.rows if i < len(r)]) + 3 for i, c in enumerate(self.columns)]
        groups: list[list[int]] = [[]]
        room = width - 1 - sum(sizes[:keys])
        for i in range(keys, len(self.columns)):
            if groups[-1] and sum(sizes[j] for j in groups[-1]) + sizes[i] > room:
                groups.append([])
            groups[-1].append(i)
        out = []
        for n, group in enumerate(groups, 1):
            cols = list(range(keys)) + group
            t = Table(f"{self.title} ({n}/{len(groups)})", [self.columns[i] for i in cols],
                      caption=self.caption if n == len(groups) else "", terminal=self.terminal)
            t.rows = [[row[i] if i < len(row) else "" for i in cols] for row in self.rows]
            t.bold = {(r, cols.index(i)) for r, i in self.bold if i in cols}
            out.append(t)
        return out

    def to_csv(self, path: Path) -> Path:
        """The table as CSV (header row, then the cells as shown), written atomically."""
        def write(f: TextIO) -> None:
            w = csv.writer(f)
            w.writerow(self.columns)
            w.writerows(self.rows)

        return write_atomic(path, write)

    def to_markdown(self) -> str:
        def cell(r: int, i: int, c: str) -> str:
            c = c.replace("|", "\\|")
            return f"**{c}**" if (r, i) in self.bold and c else c

        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join(["---"] + ["---:"] * (len(self.columns) - 1)) + "|"]
        lines += ["| " + " | ".join(cell(r, i, c) for i, c in enumerate(row)) + " |" for r, row in enumerate(self.rows)]
        if self.caption:
            lines += ["", self.caption]
        return "\n".join(lines) + "\n"


def _numeric(cell: str) -> bool:
    try:
        float(cell.replace(",", "").split(" ")[0].rstrip("%"))
    except ValueError:
        return False
    return True


def fmt(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "–"
    if round(value, digits) == 0:
        value = 0.0  # never "-0.0"
    if abs(value) >= 1e4:
        return f"{value:+.3g}" if signed else f"{value:.3g}"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
