"""The one way neuronspec draws and saves a figure: matplotlib's Agg backend, PNG, atomic.

matplotlib is imported only when a plot is drawn (it costs ~0.5 s), and a figure is
written to a temp file and renamed, so a run killed mid-plot never leaves half a PNG.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save `fig` as PNG at `path` atomically and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        pyplot().close(fig)
        if tmp.exists():
            tmp.unlink()
    return path
