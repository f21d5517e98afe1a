"""Dynamics across models: the headline numbers of every model of a study, side by side.

The Lingua Franca paper compares model sizes and training checkpoints: how much pooled
activations cluster by language (LRDS) or by meaning (SADS), and how large each
language's key linguistic region is (SKLR). With `models:` a study runs every method per
model; this module lines the results up, one column per model — plus, when the study has
them, the sizes of the LAPE, Sharing and PLND sets and the untouched model's perplexity.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from neuronspec.plotting import PAPER_FORMATS, STYLES, FigureStyle, figure_style, pyplot, save_figure
from neuronspec.report.model import Dynamics, DynamicsRow, RunResults
from neuronspec.report.tables import Table, fmt


def dynamics(by_model: dict[str, RunResults]) -> Dynamics:
    """Rows `{measure, values: {model: number}, digits}` from each model's collected results,
    and the per-layer LRDS/SADS curves. Rows no model has a value for are left out."""
    rows: list[DynamicsRow] = []

    def add(measure: str, get: Callable[[RunResults], Any], digits: int = 0) -> None:
        values = {m: _get(get, r) for m, r in by_model.items()}
        if any(v is not None for v in values.values()):
            rows.append(DynamicsRow(measure=measure, values=values, digits=digits))

    def languages(get: Callable[[RunResults], Any]) -> list[str]:
        return list(dict.fromkeys(lang for r in by_model.values() for lang in (_get(get, r) or {})))

    add("model", lambda r: r.model["id"])
    add("layers", lambda r: r.num_layers)
    add("FFN neurons (layers × width)", lambda r: r.num_layers * r.dims["intermediate"])

    lf = _first(by_model, lambda r: r.detection.linguafranca)
    if lf is not None:
        add("LRDS (same language − different language)", lambda r: r.detection.linguafranca.scores.lrds, 4)
        add("SADS (same meaning − different meaning)", lambda r: r.detection.linguafranca.scores.sads, 4)
        add(f"SKLR (key linguistic regions, z > {lf.regions.threshold})", lambda r: r.detection.linguafranca.regions.sklr)
        for lang in languages(lambda r: r.detection.linguafranca.regions.counts):
            add(f"  region size {lang}", lambda r, lang=lang: r.detection.linguafranca.regions.counts[lang])
    for lang in languages(lambda r: r.detection.lape.counts):
        add(f"LAPE neurons {lang}", lambda r, lang=lang: r.detection.lape.counts[lang])
    sharing = _first(by_model, lambda r: r.detection.sharing)
    if sharing is not None:
        add(f"all-shared neurons (τ={sharing.set_tau})", lambda r: r.detection.sharing.all_shared_count)
        for lang in languages(lambda r: r.detection.sharing.specific_counts):
            add(f"  sharing-specific {lang}", lambda r, lang=lang: r.detection.sharing.specific_counts[lang])
    for lang in languages(lambda r: r.detection.plnd.counts):
        add(f"PLND relevant {lang}", lambda r, lang=lang: _total(r.detection.plnd.counts[lang]))
    evaluations = dict.fromkeys(name for r in by_model.values() for name in r.evaluations)
    for name in evaluations:
        if _first(by_model, lambda r, name=name: r.evaluations[name].metric) != "perplexity":
            continue
        for lang in languages(lambda r, name=name: r.evaluations[name].base):
            add(f"perplexity {lang} ({name}, untouched model)", lambda r, name=name, lang=lang: r.evaluations[name].base[lang], 2)

    per_layer = {m: r.detection.linguafranca.per_layer for m, r in by_model.items() if r.detection.linguafranca is not None}
    return Dynamics(models=list(by_model), rows=rows, per_layer=per_layer)


def _get(get: Callable[[RunResults], Any], results: RunResults) -> Any:
    """`get(results)`, or None where a model's results lack that part (a detector it has not run)."""
    try:
        return get(results)
    except (KeyError, TypeError, IndexError, AttributeError):
        return None


def _first(by_model: dict[str, RunResults], get: Callable[[RunResults], Any]) -> Any:
    return next((v for v in (_get(get, r) for r in by_model.values()) if v is not None), None)


def _total(counts: dict[str, dict[str, int]]) -> int:
    """Neurons of a set over all sites and layers (site → layer → count)."""
    return sum(sum(per_layer.values()) for per_layer in counts.values())


def dynamics_table(d: Dynamics) -> Table:
    t = Table("dynamics across models: one column per model", ["measure", *d.models])
    for row in d.rows:
        t.add(row.measure, *[_cell(row.values.get(m), row.digits) for m in d.models])
    t.caption = ("LRDS/SADS on the whole pooled-activation vector; region sizes, LAPE, Sharing and PLND counts are neurons; "
                 "perplexity of the untouched model is per token of each model's own tokenizer, so it compares across "
                 "models only where they share one")
    return t


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, float):
        return fmt(value, digits)
    return "–" if value is None else str(value)


def plot_dynamics(d: Dynamics, path: str | Path, style: FigureStyle = STYLES["double"]) -> Path | None:
    """LRDS and SADS per layer, one line per model, at `style`'s print width. Models of different
    depths share an x axis of relative depth (layer ÷ last layer), so early / middle / late line up."""
    if not d.per_layer:
        return None
    with figure_style(style):
        return _draw_dynamics(d, Path(path), style)


def _draw_dynamics(d: Dynamics, path: Path, style: FigureStyle) -> Path:
    plt = pyplot()
    depths = {len(curves.lrds) for curves in d.per_layer.values()}
    relative = len(depths) > 1
    fig, axes = plt.subplots(1, 2, figsize=(style.width, style.width * 0.42 + 0.3), sharex=True, constrained_layout=True)
    for ax, score in zip(axes, ("lrds", "sads")):
        for model, curves in d.per_layer.items():
            values = list(getattr(curves, score))
            xs = [i / max(len(values) - 1, 1) for i in range(len(values))] if relative else list(range(len(values)))
            ax.plot(xs, values, marker="o", ms=3, label=model)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set(xlabel="relative depth (layer ÷ last layer)" if relative else "layer", title=f"{score.upper()} per layer")
    axes[0].set_ylabel("similarity difference")
    axes[0].legend()
    return save_figure(fig, path, dpi=200, formats=PAPER_FORMATS)
