"""One table type, rendered to the terminal (rich) and to Markdown.

Every table neuronspec shows — results, neuron counts, overlaps, diffs — is built as a
`Table` of plain strings first, so the terminal and the files always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, col) cells to emphasise
    caption: str = ""
    terminal: bool = True  # wide detail tables go to the Markdown report only

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def to_rich(self):  # noqa: ANN201 - rich is imported lazily
        from rich.table import Table as RichTable

        t = RichTable(title=self.title, caption=self.caption or None, title_justify="left")
        for i, col in enumerate(self.columns):
            t.add_column(col, justify="left" if i == 0 else "right", no_wrap=i == 0)
        for r, row in enumerate(self.rows):
            t.add_row(*[f"[bold]{c}[/bold]" if (r, i) in self.bold else c for i, c in enumerate(row)])
        return t

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


def fmt(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "–"
    if abs(value) >= 1e4:
        return f"{value:+.3g}" if signed else f"{value:.3g}"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
