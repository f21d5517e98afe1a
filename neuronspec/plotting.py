"""The one way neuronspec draws and saves a figure: matplotlib's Agg backend, atomic files.

matplotlib is imported only when a plot is drawn (it costs ~0.5 s), and each file is
written to a temp file and renamed, so a run killed mid-plot never leaves half a figure.
Report figures are saved as PNG (for the HTML report) and as PDF and SVG (vector, for a paper).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: the formats of a report figure: PNG to look at, PDF and SVG to put in a paper
PAPER_FORMATS = ("png", "pdf", "svg")


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
