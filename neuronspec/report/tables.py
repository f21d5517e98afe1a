"""One table type, rendered to the terminal (rich), Markdown, LaTeX and CSV.

Every table neuronspec shows — results, neuron counts, overlaps, diffs — is built as a
`Table` first, so the terminal and the files always agree. A cell is shown as text, but a
number added as a number (or a `Num`, with its interval) stays one behind the text: the CSV
holds the full-precision value and the interval in columns of their own.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

from neuronspec.fileio import write_atomic

#: the title of an evaluation's p-value table, which its forest plot (report.plots) sits beside
P_TABLE = "{name}: set arms against their random control (one-sided p)"
#: the anchor of an evaluation's main table (change per arm and language), which its arms figure sits beside
ARMS_TABLE = "arms/{name}"


@dataclass(frozen=True)
class Num:
    """A number in a cell with, where it has one, its interval: a paired CI `[low, high]` or a
    random control's `(min…max)` over its draws. Shown compactly; kept exact for CSV."""

    value: float | None
    low: float | None = None
    high: float | None = None
    digits: int = 2
    signed: bool = False
    interval: Literal["ci", "range"] = "ci"
    suffix: str = ""  # "%": a share shown as a percentage (the CSV keeps the same unit)

    def __str__(self) -> str:
        text = fmt(self.value, self.digits, self.signed) + (self.suffix if self.value is not None else "")
        if self.value is None or self.low is None or self.high is None:
            return text
        low, high = fmt(self.low, self.digits, self.signed), fmt(self.high, self.digits, self.signed)
        return f"{text} [{low}, {high}]" if self.interval == "ci" else f"{text} ({low}…{high})"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)  # as shown
    values: list[list[object]] = field(default_factory=list)  # as added: Num, int, float or text (CSV, LaTeX)
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, col) cells to emphasise
    caption: str = ""
    terminal: bool = True  # wide detail tables go to the Markdown report only
    anchor: str = ""  # a stable name figures refer to (e.g. "matrices/ppl"), where the title is not enough

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])
        self.values.append(list(cells))

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
            t.values = [[row[i] if i < len(row) else "" for i in cols] for row in self.values]
            t.bold = {(r, cols.index(i)) for r, i in self.bold if i in cols}
            out.append(t)
        return out

    def numeric(self) -> tuple[list[str], list[list[object]]]:
        """Header and rows with numbers as numbers: a column whose cells carry intervals gets
        `COL low` and `COL high` beside it; a missing value is None; text stays text."""
        wide = [any(isinstance(r[i], Num) and r[i].low is not None for r in self.values if i < len(r))
                for i in range(len(self.columns))]
        header: list[str] = []
        for col, w in zip(self.columns, wide):
            header += [col, f"{col} low", f"{col} high"] if w else [col]
        out = []
        for row in self.values:
            cells: list[object] = []
            for i, w in enumerate(wide):
                c = row[i] if i < len(row) else ""
                if isinstance(c, Num):
                    cells += [c.value, c.low, c.high] if w else [c.value]
                else:
                    cells += [None if c == "–" else c] + ([None, None] if w else [])
            out.append(cells)
        return header, out

    def to_csv(self, path: Path) -> Path:
        """The table as CSV, written atomically: numbers at full precision, intervals in their
        own columns, empty cells for missing values (the displayed text is the Markdown's)."""
        header, rows = self.numeric()

        def write(f: TextIO) -> None:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(["" if c is None else c for c in row] for row in rows)

        return write_atomic(path, write)

    def to_latex(self) -> str:
        """A booktabs `table` (needs \\usepackage{booktabs}): text escaped, bold cells bold,
        the caption as the table's caption; cells as shown in the Markdown."""
        def cell(r: int, i: int, c: str) -> str:
            text = latex_escape(c)
            return f"\\textbf{{{text}}}" if (r, i) in self.bold and c else text

        lines = ["\\begin{table}[ht]", "\\centering", "\\small",
                 "\\begin{tabular}{l" + "r" * (len(self.columns) - 1) + "}", "\\toprule",
                 " & ".join(latex_escape(c) for c in self.columns) + " \\\\", "\\midrule"]
        lines += [" & ".join(cell(r, i, c) for i, c in enumerate(row)) + " \\\\" for r, row in enumerate(self.rows)]
        lines += ["\\bottomrule", "\\end{tabular}",
                  f"\\caption{{{latex_escape(self.title)}" + (f". {latex_escape(self.caption)}" if self.caption else "") + "}",
                  "\\end{table}"]
        return "\n".join(lines) + "\n"

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


#: LaTeX's special characters, and the symbols the tables use that a default LaTeX font lacks
_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
          "–": "--", "—": "---", "−": "$-$", "…": r"\ldots{}", "×": r"$\times$", "→": r"$\rightarrow$", "Δ": r"$\Delta$",
          "τ": r"$\tau$", "ε": r"$\varepsilon$", "≤": r"$\leq$", "≥": r"$\geq$", "‖": r"$\|$", "·": r"$\cdot$",
          "“": "``", "”": "''", "’": "'"}


def latex_escape(text: str) -> str:
    """`text` safe in LaTeX: special characters escaped, the tables' symbols as LaTeX commands."""
    return "".join(_LATEX.get(ch, ch) for ch in text)


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
