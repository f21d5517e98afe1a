"""The one way neuronspec draws and saves a figure: matplotlib's Agg backend, atomic files.

matplotlib is imported only when a plot is drawn (it costs ~0.5 s), and each file is
written to a temp file and renamed, so a run killed mid-plot never leaves half a figure.
Report figures are saved as PNG (for the HTML report) and as PDF and SVG (vector, for a paper),
drawn at the size they are printed at (`FigureStyle`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the formats of a report figure: PNG to look at, PDF and SVG to put in a paper
PAPER_FORMATS = ("png", "pdf", "svg")


@dataclass(frozen=True)
class FigureStyle:
    """A report figure's size at print: drawn at the width it will have in the paper (a column or
    the page), so its fonts are the sizes they will be printed at — none below 7 pt."""

    width: float  # inches
    font: float  # points: labels and titles; ticks, legends and cell labels one point smaller

    def rc(self) -> dict[str, float]:
        small = max(7.0, self.font - 1)
        return {"font.size": self.font, "axes.titlesize": self.font, "axes.labelsize": self.font,
                "figure.titlesize": self.font + 1, "xtick.labelsize": small, "ytick.labelsize": small,
                "legend.fontsize": small, "legend.title_fontsize": small}

    @property
    def small(self) -> float:
        return max(7.0, self.font - 1)


#: `report.figure_style`: one column (3.3 in, e.g. ACL/NeurIPS two-column) or the full text width (6.9 in)
STYLES = {"single": FigureStyle(width=3.3, font=8.0), "double": FigureStyle(width=6.9, font=9.0)}


@contextmanager
def figure_style(style: FigureStyle) -> Iterator[None]:
    """Draw with `style`'s fonts (matplotlib's rc settings, restored afterwards)."""
    plt = pyplot()
    with plt.rc_context(style.rc()):
        yield


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # SVG text stays text (editable, searchable), not paths
    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 110, formats: tuple[str, ...] = ("png",)) -> Path:
    """Save `fig` at `path` (its suffix replaced by each of `formats`) atomically and close it;
    returns the PNG's path (or the first format's)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        for fmt in formats:
            target = path.with_suffix(f".{fmt}")
            tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.{fmt}")
            try:
                fig.savefig(tmp, dpi=dpi, metadata={"Date": None} if fmt == "svg" else None)
                os.replace(tmp, target)
            finally:
                if tmp.exists():
                    tmp.unlink()
            written.append(target)
    finally:
        pyplot().close(fig)
    return written[0]
