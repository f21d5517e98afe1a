"""PNG plots of a run: neurons per layer, the language × language change matrix, overlaps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neuronspec.plotting import pyplot, save_figure


def write_plots(results: dict[str, Any], folder: Path) -> list[Path]:
    written = []
    plt = pyplot()
    for name, info in (results.get("sets") or {}).items():
        if not info["family"]:
            continue
        fig, ax = plt.subplots(figsize=(7, 3.5))
        layers = results["dims"]["num_layers"]
        for lang, counts in info["counts"].items():
            per_layer = [sum(site.get(str(i), 0) for site in counts.values()) for i in range(layers)]
            ax.plot(range(layers), per_layer, marker="o", ms=3, label=lang)
        ax.set(xlabel="layer", ylabel="neurons", title=f"{name}: neurons per layer")
        ax.set_xticks(range(layers))
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(ncol=3, fontsize=8)
        fig.tight_layout()
        path = folder / f"layers-{name}.png"
        written.append(save_figure(fig, path))
    if results.get("logit_lens"):
        from neuronspec.methods.logit_lens import LensCounts, plot_logit_lens

        counts = {lang: LensCounts(r["language"], r["layers"], r["final_norm"], r["top_k"], r["positions"], r["counts"], r["totals"], r["labels"])
                  for lang, r in results["logit_lens"].items()}
        written.append(plot_logit_lens(counts, folder / "logit-lens.png"))
    by_arm: dict[str, dict[str, list[float]]] = {}
    for name, e in (results.get("enhance") or {}).items():
        arm, lang = name.rsplit("/", 1)
        by_arm.setdefault(arm, {})[lang] = e.get("losses") or []
    for arm, curves in by_arm.items():
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for lang, losses in curves.items():
            ax.plot(range(1, len(losses) + 1), losses, marker="o", ms=3, label=lang)
        ax.set(xlabel="optimiser step", ylabel="training loss (NLL/token)", title=f"enhance {arm}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"loss-{arm}.png"
        written.append(save_figure(fig, path))
    for ev_name, ev in results["evaluations"].items():
        for arm, m in ev["matrices"].items():
            import numpy as np

            from matplotlib.colors import SymLogNorm
            from matplotlib.patches import Rectangle

            data = np.array([[m["change"][r].get(c) if m["change"][r].get(c) is not None else np.nan for c in m["cols"]] for r in m["rows"]])
            fig, ax = plt.subplots(figsize=(1 + 0.7 * len(m["cols"]), 1 + 0.6 * len(m["rows"])))
            # changes span orders of magnitude (+1 % … +10⁶ %) and may be negative (enhancement):
            # a symmetric log scale around 0 keeps every cell readable
            top = float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 1.0
            norm = SymLogNorm(linthresh=1.0, vmin=-max(top, 1.0), vmax=max(top, 1.0), base=10)
            im = ax.imshow(data, cmap="RdBu_r" if ev["metric"] == "perplexity" else "RdBu", norm=norm)
            ax.set_xticks(range(len(m["cols"])), m["cols"])
            ax.set_yticks(range(len(m["rows"])), m["rows"])
            verb = "enhanced" if m.get("effect") == "improvement" else "deactivated"
            ax.set(xlabel="evaluated", ylabel=verb, title=f"{ev_name} / {arm}: % change")
            for i in range(data.shape[0]):
                for j in range(data.shape[1]):
                    if not np.isnan(data[i, j]):
                        v = data[i, j]
                        ax.text(j, i, f"{v:.0f}" if abs(v) < 1e4 else f"{v:.0e}", ha="center", va="center", fontsize=7)
                if m["rows"][i] in m["cols"]:  # outline the diagonal: the language's own set
                    j = m["cols"].index(m["rows"][i])
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5, ec="black"))
            fig.colorbar(im, ax=ax, shrink=0.8)
            fig.tight_layout()
            path = folder / f"matrix-{ev_name}-{arm}.png"
            written.append(save_figure(fig, path))
    return written
