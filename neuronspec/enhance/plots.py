"""Training-loss curve of an enhancement run (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def plot_losses(losses: Sequence[float], path: str | Path, *, title: str | None = None,
                lrs: Sequence[float] | None = None) -> Path:
    """Loss per optimiser step (and the learning rate on a second axis when given)."""
    from neuronspec.plotting import pyplot, save_figure

    plt = pyplot()

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
    return save_figure(fig, path)
