"""Figures of a run, drawn for a reader: neurons per layer (stacked by site, one panel per
language), every matrix of an evaluation on one shared colour scale with each set arm beside
its random control, each arm's change per language with its CI, a set against its control's
draws, enhancement losses and the logit lens. Each is drawn at its print size
(`report.figure_style`: one column or the page width), so no text is below 7 pt in the paper.

Each figure is saved as PNG, PDF and SVG, and described by a `Figure`: its caption in words
and the title of the table it belongs beside, so the HTML report can place them together.
`figures.json` in the run folder keeps these descriptions for `neuronspec report`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Mapping

from neuronspec.fileio import write_json
from neuronspec.plotting import PAPER_FORMATS, STYLES, FigureStyle, figure_style, pyplot, save_figure
from neuronspec.report.model import SITE_ORDER, Evaluation, LogitLens, NeuronSetInfo, RunResults
from neuronspec.report.tables import ARMS_TABLE, P_TABLE

SITE_NAMES = {"ffn": "FFN", "attn.q": "attention query", "attn.k": "attention key", "attn.v": "attention value",
              "attn.o": "attention output"}
FIGURES = "figures.json"


@dataclass(frozen=True)
class Figure:
    file: str  # the PNG, relative to the run folder (PDF and SVG beside it)
    caption: str  # what it shows, in words
    table: str | None = None  # title (or anchor) of the table it illustrates (the HTML report puts it beside)


def use_log_axis(totals: list[int], scale: str) -> bool:
    """`auto`: a log axis when one layer holds over 20× the median of the non-empty layers
    (Gemma's layer 0 would otherwise flatten every other layer to nothing)."""
    if scale != "auto":
        return scale == "log"
    nonzero = sorted(t for t in totals if t > 0)
    return len(nonzero) > 1 and nonzero[-1] > 20 * nonzero[len(nonzero) // 2]


def plot_layers(name: str, info: NeuronSetInfo, layers: int, path: Path, scale: str = "auto",
                style: FigureStyle = STYLES["double"]) -> Figure | None:
    """One panel per language: bars per layer, stacked by site, on a shared y axis."""
    from matplotlib.ticker import MaxNLocator

    groups = info.groups(single="")
    sites = [s for s in SITE_ORDER if any(s in counts for _, counts in groups)]
    if not sites:
        return None
    per = {lang: {s: [int(counts.get(s, {}).get(str(i), 0)) for i in range(layers)] for s in sites} for lang, counts in groups}
    totals = [sum(per[lang][s][i] for s in sites) for lang in per for i in range(layers)]
    log = use_log_axis(totals, scale)
    plt = pyplot()
    most = 2 if style.width < 5 else 3  # panels side by side: each at least ~1.6 in wide
    cols = 2 if len(groups) == 4 else min(len(groups), most)
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(style.width, (style.width / cols) * 0.62 * rows + 0.7), sharex=True,
                             sharey=True, squeeze=False, constrained_layout=True)
    colours = dict(zip(SITE_ORDER, ("#4c72b0", "#c44e52", "#8172b2", "#55a868", "#dd8452")))
    for ax, (lang, _) in zip(axes.flat, groups):
        bottom = [0] * layers
        for site in sites:
            ax.bar(range(layers), per[lang][site], bottom=bottom, color=colours[site], label=SITE_NAMES[site], width=0.8)
            bottom = [b + v for b, v in zip(bottom, per[lang][site])]
        ax.set_title(f"{lang}: {sum(bottom):,} neurons" if lang else f"{sum(bottom):,} neurons")
        if log:
            from matplotlib.ticker import FuncFormatter

            ax.set_yscale("symlog", linthresh=1)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))  # 1, 10, 100, 1,000 (not 10⁰)
        else:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("layer")
    for ax in axes[:, 0]:
        ax.set_ylabel("neurons" + (" (log)" if log else ""))
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(sites), frameon=False)
    fig.suptitle(f"Neurons in the set \u201c{name}\u201d per layer, by site")
    save_figure(fig, path, formats=PAPER_FORMATS)
    caption = (f"How many neurons of the set \u201c{name}\u201d lie in each layer"
               + (", one panel per language" if info.family else "") + "; bar segments are the sites ("
               + ", ".join(SITE_NAMES[s] for s in sites) + ")."
               + (" Symmetric-log y axis (linear below 1): a bar's top is the layer's total, but segment heights are "
                  "not to scale." if log else ""))
    return Figure(path.name, caption, "neuron sets: size per language and site")


def plot_matrices(ev_name: str, ev: Evaluation, order: list[str], path: Path, table: str,
                  style: FigureStyle = STYLES["double"]) -> Figure | None:
    """Every language × language matrix of one evaluation, on one colour scale whose bar is
    labelled with the data's own extremes; panels wrap onto rows where the width runs out."""
    import numpy as np
    from matplotlib.colors import SymLogNorm
    from matplotlib.patches import Rectangle

    matrices = {a: ev.matrices[a] for a in order if a in ev.matrices}
    if not matrices:
        return None
    data = {arm: np.array([[np.nan if m.change[r].get(c) is None else m.change[r][c] for c in m.cols] for r in m.rows])
            for arm, m in matrices.items()}
    values = np.concatenate([d[np.isfinite(d)] for d in data.values()])
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    top = max(abs(low), abs(high), 1e-9)
    # changes span orders of magnitude (+1 % … +10⁶ %) and may be negative (enhancement):
    # a symmetric log scale around 0, shared by all panels, keeps every cell readable and comparable
    linthresh = min(1.0, top)
    norm = SymLogNorm(linthresh=linthresh, vmin=-top, vmax=top, base=10)
    plt = pyplot()
    n_cols = max(len(m.cols) for m in matrices.values())
    n_rows = max(len(m.rows) for m in matrices.values())
    # inches per cell, and panels per row: each panel is its cells plus its tick labels (~0.45 in)
    cell = min(0.4, max(0.22, (style.width - 0.9) / len(matrices) / n_cols - 0.45 / n_cols))
    per_row = max(1, min(len(matrices), int((style.width - 0.9) // (cell * n_cols + 0.45))))
    cell = min(0.4, (style.width - 0.9) / per_row / n_cols - 0.45 / n_cols)  # the room the wrapped panels leave
    grid = -(-len(matrices) // per_row)
    fig, axes = plt.subplots(grid, per_row, figsize=(style.width, grid * (cell * n_rows + 0.75) + 0.7), squeeze=False,
                             constrained_layout=True)
    cmap = "RdBu_r" if ev.metric == "perplexity" else "RdBu"
    labelled = cell * 72 >= 2.4 * style.small  # a cell fits "+3.0" at the smallest font, else the colours speak alone
    im = None
    for ax, (arm, m) in zip(axes.flat, matrices.items()):
        d = data[arm]
        im = ax.imshow(d, cmap=cmap, norm=norm)
        ax.set_xticks(range(len(m.cols)), m.cols)
        ax.set_yticks(range(len(m.rows)), m.rows)
        ax.set_title(f"{arm}" + (f"\n(mean of {m.draws} draws)" if m.draws else "\n(own set)"))
        for i in range(d.shape[0]):
            for j in range(d.shape[1]):
                if labelled and not np.isnan(d[i, j]):
                    v = d[i, j]
                    ax.text(j, i, _cell_label(v), ha="center", va="center", fontsize=style.small,
                            color="white" if abs(norm(v) - 0.5) > 0.35 else "black")
            if m.rows[i] in m.cols:  # outline the diagonal: the language's own set
                j = m.cols.index(m.rows[i])
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5, ec="black"))
    for ax in list(axes.flat)[len(matrices):]:
        ax.set_visible(False)
    verb = "enhanced" if any(m.effect == "improvement" for m in matrices.values()) else "deactivated"
    fig.supxlabel("evaluated language", fontsize=style.font)
    fig.supylabel(f"{verb} language", fontsize=style.font)
    unit = "% perplexity change" if ev.metric == "perplexity" else "change (points)"
    bar = fig.colorbar(im, ax=list(axes.flat), shrink=0.85, label=unit)
    ticks = colour_ticks(low, high, linthresh)
    bar.set_ticks(ticks, labels=[_cell_label(t) for t in ticks])
    fig.suptitle(f"\u201c{ev_name}\u201d: {verb} × evaluated language")
    save_figure(fig, path, dpi=200, formats=PAPER_FORMATS)
    caption = (f"{unit.capitalize()} when the row language's neurons are "
               + ("deactivated or enhanced" if any(m.effect == "improvement" for m in matrices.values()) else "deactivated")
               + ", evaluated on the column language; outlined: the language's own set. All panels share one "
               f"symmetric-log colour scale (its ends: the smallest and largest change, {_cell_label(low)} and "
               f"{_cell_label(high)}), so a set arm and its random control can be compared cell by cell.")
    return Figure(path.name, caption, table)


def colour_ticks(low: float, high: float, linthresh: float) -> list[float]:
    """The colour bar's ticks: the data's own extremes, 0, and the powers of ten between them
    that are not crowded against an extreme (a bar labelled ±1 while cells reach +5 misleads)."""
    ticks = {0.0, round(low, 1), round(high, 1)}
    for k in range(-1, 9):
        for t in (10.0 ** k, -(10.0 ** k)):
            if t >= linthresh or -t >= linthresh:
                inside = low <= t <= high
                crowded = any(e and abs(t) > 0 and 0.5 < t / e < 2 for e in (low, high))
                if inside and not crowded:
                    ticks.add(t)
    return sorted(t for t in ticks if low <= t <= high or t in (round(low, 1), round(high, 1)) or t == 0)


def plot_arms(ev_name: str, ev: Evaluation, order: list[str], path: Path, table: str,
              style: FigureStyle = STYLES["double"]) -> Figure | None:
    """The headline: each arm's change on each language, evaluated with the language's own set
    switched off (`on: self`; the matrix's diagonal), with its paired 95% CI as error bars, and
    each random control's mean over its draws with their min–max as a bar of its own style."""
    arms = [a for a in order if a in ev.arms and any(v is not None for v in ev.arms[a].change.values())]
    if not arms:
        return None
    plt = pyplot()
    langs = ev.languages
    fig, ax = plt.subplots(figsize=(style.width, max(1.8, 0.22 * len(langs) * len(arms) ** 0.5 + 1.4)),
                           constrained_layout=True)
    span = 0.7
    step = span / max(1, len(arms))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    shown: list[float] = []
    # a language whose own set is empty (MWork's sets leave English's out) is the untouched model: not drawn
    empty = {(c.arm, c.lang) for c in ev.cells if c.arm and c.mask_lang in (None, c.lang) and c.deactivated == 0}
    for k, arm in enumerate(arms):
        row = ev.arms[arm]
        xs, ys, lo, hi = [], [], [], []
        for i, lang in enumerate(langs):
            v, ci = row.change.get(lang), row.change_ci.get(lang)
            if v is None or (arm, lang) in empty:
                continue
            xs.append(i - span / 2 + step * (k + 0.5))
            ys.append(v)
            lo.append(v - ci[0] if ci else 0.0)
            hi.append(ci[1] - v if ci else 0.0)
            shown += [v, *(ci or ())]
        control = bool(row.draws)
        label = f"{arm} (mean, min–max of {row.draws} draws)" if control else f"{arm} (95% CI)" if any(row.change_ci.values()) else arm
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o" if not control else "s", mfc="white" if control else colours[k % len(colours)],
                    color=colours[k % len(colours)], ms=4, capsize=2, lw=1, ls="none", label=label)
    ax.axhline(0, color="0.6", lw=0.6, zorder=0)
    ax.set_xticks(range(len(langs)), [f"{lang}\n(empty set)" if all((a, lang) in empty for a in arms) else lang for lang in langs])
    ax.set_xlim(-0.5, len(langs) - 0.5)
    ax.set_xlabel("evaluated language (its own set switched off)" if any(ev.arms[a].family for a in arms)
                  else "evaluated language")
    unit = "% perplexity change" if ev.metric == "perplexity" else "change (points)"
    ax.set_ylabel(unit)
    if shown and max(abs(v) for v in shown) > 50:  # changes spanning orders of magnitude: linear near 0, log beyond
        ax.set_yscale("symlog", linthresh=10)
        ax.set_ylim(bottom=min(-1.0, 2 * min(shown)))  # symlog's own margin would add a decade below 0
    ax.grid(axis="y", color="0.9", lw=0.5)
    ax.set_axisbelow(True)
    # three columns of long labels ("… (mean, min–max of 9 draws)") overrun a double-column figure
    wide = max((len(label) for label in ax.get_legend_handles_labels()[1]), default=0) > 30
    fig.legend(loc="outside lower center", ncols=1 if style.width < 5 else min(len(arms), 2 if wide else 3), frameon=False)
    ax.set_title(f"\u201c{ev_name}\u201d: change against the untouched model", loc="left")
    save_figure(fig, path, dpi=200, formats=PAPER_FORMATS)
    caption = (f"{unit.capitalize()} on each language with the arm's neurons for that language switched off, against the "
               "untouched model: filled markers with their paired 95% bootstrap CI (documents resampled together for "
               "both models), open squares a random control's mean over its draws with their min–max.")
    return Figure(path.name, caption, table)


def plot_forest(ev_name: str, ev: Evaluation, path: Path, table: str, style: FigureStyle = STYLES["double"]) -> Figure | None:
    """One panel per set arm that has a random control: per language, the set's own-language
    change with its paired CI (black) against every draw of the control (grey), and its p-value."""
    arms = list(dict.fromkeys(c.arm for c in ev.cells if c.p_value is not None and c.arm))
    if not arms:
        return None
    plt = pyplot()
    rows = {arm: [c for c in ev.cells if c.arm == arm and c.p_value is not None and c.mask_lang in (None, c.lang)]
            for arm in arms}
    fig, axes = plt.subplots(len(arms), 1, figsize=(style.width, sum(0.26 * len(r) + 0.8 for r in rows.values()) + 0.4),
                             squeeze=False, constrained_layout=True)
    unit = "% perplexity change" if ev.metric == "perplexity" else "change (points)"
    for ax, arm in zip(axes[:, 0], arms):
        cells = rows[arm]
        control = next((c.arm for c in ev.cells if c.random_like == arm), None)
        for y, c in enumerate(cells):
            draws = [d.change for d in ev.cells if d.arm == control and d.mask_lang == c.mask_lang and d.lang == c.lang
                     and d.change is not None]
            ax.scatter(draws, [y] * len(draws), s=12, color="0.6", zorder=2, label="random draws" if y == 0 else None)
            if c.change_ci is not None:
                ax.hlines(y, c.change_ci[0], c.change_ci[1], color="black", linewidth=1.2, zorder=3)
            ax.scatter([c.change], [y], marker="D", s=18, color="black", zorder=4, label="the set (paired 95% CI)" if y == 0 else None)
            ax.annotate(f"p = {c.p_value:.2f}", (1.0, y), xycoords=("axes fraction", "data"), xytext=(4, 0),
                        textcoords="offset points", va="center", fontsize=style.small)
        ax.set_yticks(range(len(cells)), [c.lang for c in cells])
        ax.set_ylim(-0.6, len(cells) - 0.4)
        ax.invert_yaxis()
        ax.axvline(0, color="0.7", linewidth=0.6, zorder=1)
        values = [abs(v) for c in cells for v in (c.change, *(c.change_ci or ())) if v is not None]
        if values and max(values) > 50:  # changes spanning orders of magnitude: linear near 0, log beyond
            ax.set_xscale("symlog", linthresh=10)
        ax.set_title(f"{arm} against {control or 'its control'}", loc="left")
        ax.set_xlabel(unit)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, frameon=False)
    save_figure(fig, path, dpi=200, formats=PAPER_FORMATS)
    caption = (f"{unit.capitalize()} on each language when its own set is switched off (black diamond, paired 95 % CI) "
               "against every draw of the arm's random control (grey); p = (1 + draws at least as strong) / (1 + draws).")
    return Figure(path.name, caption, table)


def _cell_label(v: float) -> str:
    """+0.4, +12, +3,400, +2e+05: short enough for a cell, signed, never `-0`."""
    if round(v, 1) == 0:
        return "0.0"
    if abs(v) < 10:
        return f"{v:+.1f}"
    return f"{v:+,.0f}" if abs(v) < 1e4 else f"{v:+.0e}"


def plot_losses(arm: str, curves: dict[str, list[float]], path: Path, style: FigureStyle = STYLES["double"]) -> Figure:
    """Training loss per optimiser step of an enhance arm, one line per language (the one loss plot)."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(style.width, max(2.0, style.width * 0.45)), constrained_layout=True)
    for lang, losses in curves.items():
        ax.plot(range(1, len(losses) + 1), losses, marker="o", ms=3, label=lang)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="optimiser step", ylabel="loss (NLL per token)", title=f"Fine-tuning only the neurons of arm \u201c{arm}\u201d")
    ax.legend()
    save_figure(fig, path, dpi=200, formats=PAPER_FORMATS)
    return Figure(path.name, f"Training loss per optimiser step while fine-tuning only arm \u201c{arm}\u201d's neurons, one line "
                             "per language.", "enhance arms: neuron-restricted fine-tuning")


def plot_logit_lens(results: Mapping[str, LogitLens], path: str | Path, title: str | None = None,
                    style: FigureStyle = STYLES["double"]) -> Path:
    """One panel per prompt language: share of English / prompt-language / other tokens per layer."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    langs = list(results)
    cols = min(2 if style.width < 5 else 3, max(1, len(langs)))
    rows = (len(langs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(style.width, style.width / cols * 0.75 * rows + 0.4), squeeze=False,
                             sharey=True, constrained_layout=True)
    for ax in axes.flat[len(langs):]:
        ax.axis("off")
    for ax, lang in zip(axes.flat, langs):
        res = results[lang]
        r = res.ratios
        ax.plot(res.layers, r["english"], marker="o", ms=3, label="English", color="#2166ac")
        if lang != "en":
            ax.plot(res.layers, r["prompt"], marker="s", ms=3, label="prompt's language", color="#b2182b")
        ax.plot(res.layers, r["other"], marker="^", ms=3, label="other language", color="#999999")
        ax.set(title=f"{lang} prompts", xlabel="layer", ylim=(0, 1))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel("share of top tokens")
    labels: dict[str, object] = {}  # one legend for all panels, below them: none hides a curve
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(label, handle)
    fig.legend(list(labels.values()), list(labels), loc="outside lower center", ncols=len(labels), frameon=False)
    some = next(iter(results.values())) if results else None
    norm = "with final norm" if some is None or some.final_norm else "without final norm"
    fig.suptitle(title or f"logit lens ({norm}, top-{some.top_k if some else 1})")
    return save_figure(fig, path, dpi=200)


def write_plots(results: RunResults, folder: Path, order: dict[str, list[str]], layer_scale: str = "auto",
                style: FigureStyle = STYLES["double"]) -> list[Figure]:
    """Draw the run's figures into `folder` at `style`'s print size; `order[evaluation]` lists
    its arms, controls after their arms."""
    with figure_style(style):
        return _draw(results, folder, order, layer_scale, style)


def _draw(results: RunResults, folder: Path, order: dict[str, list[str]], layer_scale: str, style: FigureStyle) -> list[Figure]:
    figures: list[Figure] = []
    for name, info in (results.sets or {}).items():
        fig = plot_layers(name, info, results.num_layers, folder / f"layers-{name}.png", layer_scale, style)
        if fig:
            figures.append(fig)
    if results.logit_lens:
        path = plot_logit_lens(results.logit_lens, folder / "logit-lens.png", style=style)
        figures.append(Figure(path.name, "Share of each layer's top tokens (logit lens) that are English, in the prompt's "
                                         "language, or other, one panel per prompt language.",
                              "logit lens: share of top tokens in English / the prompt's language, by layer"))
    by_arm: dict[str, dict[str, list[float]]] = {}
    for name, e in results.enhance.items():
        arm, lang = name.rsplit("/", 1)
        by_arm.setdefault(arm, {})[lang] = e.losses
    for arm, curves in by_arm.items():
        figures.append(plot_losses(arm, curves, folder / f"loss-{arm}.png", style))
    for ev_name, ev in results.evaluations.items():
        arms = order.get(ev_name, list(ev.arms))
        drawn = [plot_arms(ev_name, ev, arms, folder / f"arms-{ev_name}.png", ARMS_TABLE.format(name=ev_name), style),
                 plot_matrices(ev_name, ev, arms, folder / f"matrix-{ev_name}.png", f"matrices/{ev_name}", style),
                 plot_forest(ev_name, ev, folder / f"forest-{ev_name}.png", P_TABLE.format(name=ev_name), style)]
        figures += [f for f in drawn if f]
    return figures


#: captions of the figures a method draws in its own stage (copied into the run folder)
METHOD_FIGURES = {
    "similarity": ("Cosine similarity of the samples' pooled FFN activations, grouped by language (LinguaFranca).",
                   "LinguaFranca: language vs meaning (pooled FFN activations, parallel corpus)"),
    "lrds-sads": ("LRDS (same language − different language) and SADS (same meaning − different meaning) per layer.",
                  "LinguaFranca: language vs meaning (pooled FFN activations, parallel corpus)"),
    "sharing": ("Share of neurons per category (all-shared, partial, specific, non-activated) in each layer.",
                "Sharing Matters: share of neurons per category (averaged over items)"),
    "sharing-attribution": ("Share of the absolute attribution per layer held by each neuron category.", None),
}


def save_figure_index(folder: Path, figures: list[Figure]) -> Path:
    return write_json(folder / FIGURES, [asdict(f) for f in figures], indent=1, sort_keys=False)


def read_figure_index(folder: Path) -> list[Figure]:
    """The figures of a run folder: from figures.json, or (older runs) every PNG, captioned by its name."""
    path = folder / FIGURES
    if path.exists():
        return [Figure(**f) for f in json.loads(path.read_text(encoding="utf-8"))]
    pngs = sorted(folder.glob("*.png")) + sorted(folder.glob("*/*.png"))
    return [Figure(str(p.relative_to(folder)), str(p.relative_to(folder).with_suffix(""))) for p in pngs]
