"""Training-loss curve of an enhancement run (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path


def plot_losses(losses: Sequence[float], path: str | Path, *, title: str | None = None,
                lrs: Sequence[float] | None = None) -> Path:
    """Loss per optimiser step (and the learning rate on a second axis when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = range(1, len(losses) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, list(losses), marker="o" if len(losses) <= 50 else None, ms=3, label="loss")
    ax.set(xlabel="optimiser step", ylabel="mean next-token NLL", title=title or "enhancement: training loss")
    if lrs is not None:
        ax2 = ax.twinx()
        ax2.plot(steps, list(lrs), color="grey", lw=1, ls="--", label="lr")
        ax2.set_ylabel("learning rate")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
