"""Turn collected results into tables (terminal + Markdown), JSON and plots in a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neuronspec.fileio import write_json, write_text
from neuronspec.report.model import (SITE_ORDER, ArmRow, Evaluation, MaskCount, Matrix, NeuronSetInfo, Results, RunResults,
                                     SharingAttribution, StudyResults, to_json)
from neuronspec.report.tables import ARMS_TABLE, P_TABLE, Num, Table


def result_tables(results: Results) -> list[Table]:
    if isinstance(results, StudyResults):  # several models: each model's tables (titled by model), then the comparison
        from neuronspec.report.dynamics import dynamics_table

        tables = []
        for model, sub in results.variants.items():
            for t in result_tables(sub):
                t.title = f"{model}: {t.title}"
                t.anchor = f"{model}: {t.anchor}" if t.anchor else ""
                tables.append(t)
        return tables + [dynamics_table(results.dynamics)]
    tables: list[Table] = []
    for name, ev in results.evaluations.items():
        tables += evaluation_tables(name, ev, results.baseline_language)
    if results.sets:
        tables += _set_tables(results.sets, results.num_layers)
    if results.masks:
        tables.append(_mask_table(results.masks))
    tables += _method_tables(results)
    if results.enhance:
        t = Table("enhance arms: neuron-restricted fine-tuning", ["arm / language", "neurons", "docs", "steps",
                  "tokens", "loss first → last", "optimiser state", "full Adam would hold"])
        for name, e in results.enhance.items():
            t.add(name, e.neurons, e.docs, e.steps, e.tokens,
                  f"{e.losses[0]:.3f} → {e.losses[-1]:.3f}" if e.losses else "–",
                  f"{e.optimizer_state_bytes / 1e6:.2f} MB", f"{e.full_adam_state_bytes / 1e6:.0f} MB")
        t.caption = "optimiser state is kept only for the trained rows/columns; parameters outside the set are never written"
        tables.append(t)
    return tables


#: how a Sharing Matters event reads in a caption
SHARING_EVENT_TEXT = {"reference": "the MLP nonlinearity's output at the item's last token (reference)",
                      "gate": "the token mean of the MLP nonlinearity's output (gate)",
                      "magnitude": "the token mean of |neuron| (magnitude)",
                      "signed_mean": "the token mean of the signed neuron (signed_mean)"}


def _set_tables(sets: dict[str, NeuronSetInfo], layers: int) -> list[Table]:
    """Sizes per language and site, per layer, and each family's overlaps."""
    t = Table("neuron sets: size per language and site", ["set", "language"] + list(SITE_ORDER) + ["total"])
    lt = Table("neuron sets: size per layer", ["set", "language", "site"] + [str(i) for i in range(layers)], terminal=False)
    for name, info in sets.items():
        for lang, counts in info.groups():
            per_site = [sum(counts.get(site, {}).values()) for site in SITE_ORDER]
            t.add(name, lang, *per_site, sum(per_site))
    for name, info in sets.items():
        for lang, counts in info.groups():
            for site in SITE_ORDER:
                if site in counts:
                    lt.add(name, lang, site, *[counts[site].get(str(i), 0) for i in range(layers)])
    tables = [t, lt]
    for name, info in sets.items():
        if info.family and info.jaccard and len(info.jaccard) > 1:
            langs = list(info.jaccard)
            jt = Table(f"overlap (Jaccard) of {name} between languages", [name] + langs)
            for a in langs:
                jt.add(a, *[Num(info.jaccard[a][b]) for b in langs])
            if info.empty:
                jt.caption = f"{name} is EMPTY for {', '.join(info.empty)}: no overlap is defined with an empty set (–)"
            tables.append(jt)
    stable = {name: info.stability for name, info in sets.items() if info.stability}
    if stable:
        st = Table("split-half stability of the neuron sets", ["set", "language", "half A", "half B", "Jaccard"])
        for name, per_lang in stable.items():
            for lang, ag in per_lang.items():
                st.add(name, lang, ag.size_a, ag.size_b, Num(ag.jaccard))
        st.caption = ("each language's detection documents split in two at random (seeded); each half detected alone "
                      "(its own ε): sizes of the two halves' sets and their Jaccard overlap (– when both are empty)")
        tables.append(st)
    return tables


def _mask_table(masks: list[MaskCount]) -> Table:
    """Neurons per arm and language; a random control's draws match its arm's counts, so one row stands for all."""
    t = Table("arms: neurons deactivated or enhanced", ["arm", "language", "total"] + list(SITE_ORDER))
    draws: dict[str, int] = {}
    for m in masks:
        draws[m.arm] = max(draws.get(m.arm, 0), m.draw or 0)
    for m in masks:
        if m.draw is not None and m.draw != 1:
            continue
        label = f"{m.arm} (each of {draws[m.arm]} draws)" if m.draw else m.arm
        t.add(label, m.lang, m.total, *[sum(m.per_layer.get(s, {}).values()) for s in SITE_ORDER])
    return t


def arm_order(ev: Evaluation) -> list[str]:
    """The arms in study order, each random control right after the arm it matches."""
    controls = {a: r.random_like for a, r in ev.arms.items() if r.random_like in ev.arms}
    out: list[str] = []
    for arm in ev.arms:
        if arm in controls:
            continue
        out.append(arm)
        out += [c for c, target in controls.items() if target == arm]
    return out


def _cell(row: ArmRow, lang: str) -> Num:
    """An arm's change on `lang` with its paired CI `[low, high]`, or for a control with draws
    the mean over them with `(min…max)`."""
    value, ci = row.change.get(lang), row.change_ci.get(lang)
    low, high = ci if value is not None and ci else (None, None)
    digits = 0 if value is not None and abs(value) >= 100 else 1  # +123 [+98, +150]: a decimal there costs columns
    return Num(value, low, high, digits, signed=True, interval="range" if row.draws else "ci")


def _arm_label(arm: str, row: ArmRow) -> str:
    """An arm's row label: a random control's mean over its draws, or the one draw evaluated."""
    if row.draws:
        return f"{arm} (mean of {row.draws} draws)"
    return f"{arm} (draw {row.draw})" if row.draw else arm


def evaluation_tables(name: str, ev: Evaluation, base_lang: str) -> list[Table]:
    """One evaluation's tables: change per arm and language, paired CIs, and each family arm's matrix."""
    metric, langs, unit = ev.metric, ev.languages, ev.unit
    measures = sorted(set(ev.measures.values()))  # lm_eval: which task metric, e.g. "xquad_en: f1,none"
    if measures:
        metric = f"{metric} ({'; '.join(measures)})"
    order = arm_order(ev)
    draws = {arm for arm, r in ev.arms.items() if r.draws}
    tables: list[Table] = []
    t = Table(f"{name}: {metric} per language (arms: change vs base, {unit})",
              ["arm"] + langs + [f"Δ{base_lang}", f"Δn-{base_lang}", "Δ"], anchor=ARMS_TABLE.format(name=name))
    t.add("base", *[Num(ev.base.get(lang)) for lang in langs], "", "", "")
    for arm in order:
        row = ev.arms[arm]
        t.add(_arm_label(arm, row), *[_cell(row, lang) for lang in langs],
              Num(row.delta_eng, digits=1, signed=True), Num(row.delta_n_eng, digits=1, signed=True),
              Num(row.delta, digits=1, signed=True))
    t.caption = (f"base row: the untouched model's {metric}; arm rows: the {unit} when each language's own set is "
                 "deactivated or enhanced (family arms), or the arm's single set, evaluated on that language. "
                 f"Δ{base_lang}: the change on {base_lang}; Δn-{base_lang}: the mean change on the other languages; "
                 f"Δ = Δ{base_lang} − Δn-{base_lang} (MWork's tables"
                 + ("; perplexity rises when a model is damaged, so MWork's 'high Δ' — the baseline spared, the other "
                    "languages hurt — is a large negative Δ here)" if ev.metric == "perplexity" else ")"))
    if any(not r.draws and any(r.change_ci.values()) for r in ev.arms.values()):
        t.caption += (f"; [low, high]: paired 95% CI, documents resampled together for the base model and the arm "
                      f"({ev.bootstrap:,} resamples): an interval that excludes 0 is an effect of the arm, not of which "
                      "documents were drawn")
    if draws:
        t.caption += "; random controls: mean over independent draws with (min…max)"
    sources = {r.delta_eng_source for r in ev.arms.values()}
    if "other_sets" in sources or "empty" in sources:
        t.caption += (f"; where {base_lang}'s own set is empty (sets that exclude {base_lang}'s neurons, as MWork's), "
                      f"Δ{base_lang} is {base_lang} under the other languages' sets (evaluate with on: baseline or all)")
    tables.append(t)
    tested = _p_value_table(name, ev, order)
    if tested is not None:
        tables.append(tested)
    for i, arm in enumerate(a for a in order if a in ev.matrices):
        tables.append(_matrix_table(name, arm, ev.matrices[arm], unit, first=i == 0))
    return tables


def _p_value_table(name: str, ev: Evaluation, order: list[str]) -> Table | None:
    """Each set arm with a random control: per language, its own-language change against the
    control's draws as an empirical p-value (strict: a draw as strong as the set counts against it)."""
    rows = []
    for arm in order:
        row = ev.arms[arm]
        if row.draws:  # the control itself
            continue
        cells = [ev.cell(arm, None, lang if row.family else None, lang) for lang in ev.languages]
        if any(c is not None and c.p_value is not None for c in cells):
            rows.append((arm, cells))
    if not rows:
        return None
    t = Table(P_TABLE.format(name=name), ["arm"] + ev.languages)
    for arm, cells in rows:
        t.add(arm, *[Num(c.p_value if c is not None else None) for c in cells])
    draws = sorted({c.control_draws for _, cells in rows for c in cells if c is not None and c.control_draws})
    t.caption = ("p = (1 + draws whose change on the language is at least as strong as the set's) / (1 + draws), "
                 f"over the control's {'/'.join(map(str, draws))} draws: how often a set that is just one more random draw "
                 "would do as well; the smallest p possible is 1/(1 + draws)")
    return t


def _matrix_table(name: str, arm: str, m: Matrix, unit: str, first: bool) -> Table:
    verb = "enhanced" if m.effect == "improvement" else "deactivated"
    title_arm = (f"{arm}, mean of {m.draws} random draws" if m.draws
                 else f"{arm}, random draw {m.draw}" if m.draw else arm)
    mt = Table(f"{name}: {title_arm} — {verb} language (rows) × evaluated language (columns), {unit}",
               [verb] + m.cols, anchor=f"matrices/{name}" if first else "")  # the figure of all matrices goes beside the first
    for r, ml in enumerate(m.rows):
        cells = []
        for lang in m.cols:
            value, spread = m.change[ml].get(lang), (m.spread or {}).get(ml, {}).get(lang)
            low, high = spread if spread and value is not None else (None, None)
            cells.append(Num(value, low, high, 1, signed=True, interval="range"))
        mt.add(ml, *cells)
        if ml in m.cols:
            mt.bold.add((r, 1 + m.cols.index(ml)))
    effect = "improvement" if m.effect == "improvement" else "damage"
    mt.caption = (f"bold diagonal: the language's own set. It is strictly the largest {effect} in its row for "
                  f"{m.diagonal_largest} of {m.rows_with_diagonal} languages"
                  + (f" (tied with another language in {m.diagonal_ties} more)" if m.diagonal_ties else "")
                  + (f" with a non-empty set; the set is EMPTY for {', '.join(m.empty_rows)} (nothing {verb}, "
                     "so those rows say nothing)" if m.empty_rows else ""))
    if m.draws:
        mt.caption += (f" (on the mean; per draw: {', '.join(map(str, m.diagonal_largest_per_draw or []))}); "
                       "cells: mean (min…max) over the draws")
    if m.control:
        mt.caption += (f". Against its random control {m.control!r}: the diagonal exceeds every one of the "
                       f"{m.control_draws} draws for {m.beats_control} of {m.rows_with_diagonal} languages")
    return mt


def _method_tables(results: RunResults) -> list[Table]:
    """LinguaFranca, Sharing Matters, LAPE and logit-lens summaries."""
    tables: list[Table] = []
    det = results.detection
    lf = det.linguafranca
    if lf:
        regions = lf.regions
        t = Table("LinguaFranca: language vs meaning (pooled FFN activations, parallel corpus)", ["measure", "value"])
        t.add("LRDS (same language − different language)", Num(lf.scores.lrds, digits=4))
        t.add("SADS (same meaning − different meaning)", Num(lf.scores.sads, digits=4))
        t.add(f"SKLR (key linguistic regions, z > {regions.threshold})", regions.sklr)
        for lang, n in regions.counts.items():
            t.add(f"  region size {lang}", n)
        t.caption = regions.warning or f"largest reachable z-score with these languages: {regions.max_reachable_z:.2f}"
        tables.append(t)
        lt = Table("LinguaFranca: LRDS and SADS per layer", ["layer", "LRDS", "SADS"], terminal=False)
        for i, (a, b) in enumerate(zip(lf.per_layer.lrds, lf.per_layer.sads)):
            lt.add(i, Num(a, digits=4), Num(b, digits=4))
        tables.append(lt)
    sh = det.sharing
    if sh:
        t = Table("Sharing Matters: share of neurons per category (averaged over items)", ["τ"] + sh.categories)
        for tau, shares in sh.shares.items():
            overall = shares["overall"]
            t.add(tau, *[Num(100 * overall[c], digits=1, suffix="%") for c in sh.categories])
        t.caption = (f"activated: {SHARING_EVENT_TEXT[sh.event or 'signed_mean']} > τ; "
                     f"sets at τ={sh.set_tau}: all-shared {sh.all_shared_count} neurons (sharing.all_shared); "
                     f"specific per language: {sh.specific_counts}")
        tables.append(t)
        if sh.attribution:
            tables.append(_attribution_table(sh.attribution))
    lape = det.lape
    if lape:
        t = Table("LAPE: language-specific neurons by activation-probability entropy", ["language", "neurons"])
        for lang, n in lape.counts.items():
            t.add(lang, n)
        t.caption = f"{lape.selected} lowest-entropy neurons kept of {lape.candidates} past the filter (p > {lape.filter_value:.3f})"
        tables.append(t)
    lens = results.logit_lens
    if lens:
        any_lang = next(iter(lens.values()))
        layers = any_lang.layers
        t = Table("logit lens: share of top tokens in English / the prompt's language, by layer", ["prompt", "category"] + [str(i) for i in layers], terminal=False)
        for lang, r in lens.items():
            for cat in ("english", "prompt", "other"):
                t.add(lang, cat, *[Num(100 * v, digits=0) for v in r.ratios[cat]])
        t.caption = "final norm applied before the unembedding" if any_lang.final_norm else "no final norm (as in the PLND paper's figure)"
        tables.append(t)
        mid = len(layers) // 2
        st = Table("logit lens summary", ["prompt", f"English share, layer {layers[mid]}", "prompt-language share, last layer"])
        for lang, r in lens.items():
            st.add(lang, Num(100 * r.ratios["english"][mid], digits=0, suffix="%"), Num(100 * r.ratios["prompt"][-1], digits=0, suffix="%"))
        tables.append(st)
    return tables


def _attribution_table(at: SharingAttribution) -> Table:
    """Sharing Matters: how much of the output each neuron category accounts for."""
    method = "Integrated Gradients" if at.method == "ig" else "|activation|·‖W_down‖"
    t = Table(f"Sharing Matters: attribution by category ({method}, τ={at.tau})",
              ["category", "share of abs. attribution", "mean abs. attribution", "neurons·items"])
    for cat in at.categories:
        o = at.overall[cat]
        t.add(cat, Num(100 * o.share, digits=1, suffix="%"), "–" if o.mean_abs is None else f"{o.mean_abs:.3g}", o.count)
    layers = at.layers
    span = f"layers {layers[0]}–{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else f"layers {layers}"
    caption = (f"{at.items} items × {at.languages} languages, {span}; each item's categories from its pooled "
               "activations; share of the summed absolute attribution, mean over (language, item, neuron)")
    if at.method == "ig":
        caption += (f"; {at.steps} {at.rule} steps, completeness gap ≤ {at.max_abs_completeness_gap:.3g} nats "
                    f"({100 * (at.max_relative_completeness_gap or 0.0):.1f}% of f(a) − f(0))")
    t.caption = caption
    return t


def write_outputs(results: Results, tables: list[Table], folder: Path, formats: list[str],
                  layer_scale: str = "auto", figure_style: str = "double") -> list[Path]:
    """The run folder's files: results.json, report.md, every table as CSV (plus the tidy
    evaluations.csv, layers.csv and, where measured, stability.csv), the figures (PNG, PDF, SVG) and report.html."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if "json" in formats:
        written.append(write_json(folder / "results.json", to_json(results), indent=1, sort_keys=False))
    if "markdown" in formats:
        written.append(write_text(folder / "report.md", f"# {results.study}\n\n" + "\n".join(t.to_markdown() for t in tables)))
    written += write_csvs(results, tables, folder)
    if "png" in formats:
        from neuronspec.report.plots import save_figure_index

        figures = _write_figures(results, folder, layer_scale, figure_style)
        written.append(save_figure_index(folder, figures))
        written += [folder / f.file for f in figures]
    return written


def write_csvs(results: Results, tables: list[Table], folder: Path) -> list[Path]:
    """tables/NN-title.csv (numbers, intervals in columns of their own) and NN-title.tex (booktabs, as
    shown) for every table, the tidy evaluations.csv / layers.csv, stability.csv where measured and
    experts.csv for a mixture-of-experts model."""
    import re

    from neuronspec.report.tidy import (EvaluationRow, ExpertRow, LayerRow, StabilityRow, evaluation_rows, expert_rows,
                                        layer_rows, stability_rows, write_csv)

    out = folder / "tables"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, t in enumerate(tables, 1):
        slug = re.sub(r"[^a-z0-9]+", "-", t.title.lower()).strip("-")[:60]
        written.append(t.to_csv(out / f"{i:02d}-{slug}.csv"))
        written.append(write_text(out / f"{i:02d}-{slug}.tex", t.to_latex()))
    written.append(write_csv(folder / "evaluations.csv", evaluation_rows(results), EvaluationRow))
    written.append(write_csv(folder / "layers.csv", layer_rows(results), LayerRow))
    stability = stability_rows(results)
    if stability:
        written.append(write_csv(folder / "stability.csv", stability, StabilityRow))
    experts = expert_rows(results)
    if experts:  # a mixture-of-experts model's sets, per expert
        written.append(write_csv(folder / "experts.csv", experts, ExpertRow))
    return written


def _write_figures(results: Results, folder: Path, layer_scale: str, figure_style: str) -> list[Any]:
    """The run's figures; with several models, each model's in a subfolder named after it,
    and the across-models LRDS/SADS plot beside them."""
    import shutil

    from neuronspec.plotting import STYLES
    from neuronspec.report.plots import METHOD_FIGURES, Figure, write_plots

    if isinstance(results, StudyResults):
        from neuronspec.report.dynamics import plot_dynamics

        figures = []
        for model, sub in results.variants.items():
            figures += [Figure(f"{model}/{f.file}", f"{model}: {f.caption}", f"{model}: {f.table}" if f.table else None)
                        for f in _write_figures(sub, folder / model, layer_scale, figure_style)]
        path = plot_dynamics(results.dynamics, folder / "dynamics-lrds-sads.png", STYLES[figure_style])
        if path:
            figures.append(Figure(path.name, "LRDS and SADS per layer, one line per model.",
                                  "dynamics across models: one column per model"))
        return figures
    folder.mkdir(parents=True, exist_ok=True)
    order = {name: arm_order(ev) for name, ev in results.evaluations.items()}
    figures = write_plots(results, folder, order, layer_scale, STYLES[figure_style])
    for png in results.plots:  # plots a method drew in its own stage
        target = folder / Path(png).name
        shutil.copyfile(png, target)
        caption, table = METHOD_FIGURES.get(target.stem, (target.stem, None))
        figures.append(Figure(target.name, caption, table))
    return figures
