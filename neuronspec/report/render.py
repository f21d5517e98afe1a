"""Turn collected results into tables (terminal + Markdown), JSON and plots in a run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from neuronspec.report.tables import Table, fmt

SITE_ORDER = ("ffn", "attn.q", "attn.k", "attn.v", "attn.o")


def result_tables(results: dict[str, Any]) -> list[Table]:
    if "variants" in results:  # several models: each model's tables (titled by model), then the comparison
        from neuronspec.report.dynamics import dynamics_table

        tables = []
        for model, sub in results["variants"].items():
            for t in result_tables(sub):
                t.title = f"{model}: {t.title}"
                t.anchor = f"{model}: {t.anchor}" if t.anchor else ""
                tables.append(t)
        return tables + [dynamics_table(results["dynamics"])]
    tables: list[Table] = []
    base_lang = results.get("baseline_language", "en")
    for name, ev in results["evaluations"].items():
        tables += evaluation_tables(name, ev, base_lang)
    sets = results.get("sets") or {}
    if sets:
        t = Table("neuron sets: size per language and site", ["set", "language"] + list(SITE_ORDER) + ["total"])
        for name, info in sets.items():
            groups = info["counts"].items() if info["family"] else [("*", info["counts"])]
            for lang, counts in groups:
                per_site = [sum(counts.get(site, {}).values()) for site in SITE_ORDER]
                t.add(name, lang, *per_site, sum(per_site))
        tables.append(t)
        layers = results["dims"]["num_layers"]
        lt = Table("neuron sets: size per layer", ["set", "language", "site"] + [str(i) for i in range(layers)], terminal=False)
        for name, info in sets.items():
            groups = info["counts"].items() if info["family"] else [("*", info["counts"])]
            for lang, counts in groups:
                for site in SITE_ORDER:
                    if site in counts:
                        lt.add(name, lang, site, *[counts[site].get(str(i), 0) for i in range(layers)])
        tables.append(lt)
        for name, info in sets.items():
            if info["family"] and info.get("jaccard") and len(info["jaccard"]) > 1:
                langs = list(info["jaccard"])
                jt = Table(f"overlap (Jaccard) of {name} between languages", [name] + langs)
                for a in langs:
                    jt.add(a, *[fmt(info["jaccard"][a][b], 2) for b in langs])
                empty = info.get("empty") or []
                if empty:
                    jt.caption = f"{name} is EMPTY for {', '.join(empty)}: no overlap is defined with an empty set (–)"
                tables.append(jt)
    if results.get("masks"):
        t = Table("arms: neurons deactivated or enhanced", ["arm", "language", "total"] + list(SITE_ORDER))
        draws: dict[str, int] = {}
        for key in results["masks"]:
            arm, _, draw = key.partition("/draw")
            draws[arm] = max(draws.get(arm, 0), int(draw) if draw else 0)
        for key, info in results["masks"].items():
            arm, _, draw = key.partition("/draw")
            if draw and draw != "1":
                continue  # every draw has the same counts
            label = f"{arm} (each of {draws[arm]} draws)" if draw else arm
            for lang, c in info["counts"].items():
                t.add(label, lang, c["total"], *[sum(c["per_layer"].get(s, {}).values()) for s in SITE_ORDER])
        tables.append(t)
    tables += _method_tables(results)
    if results.get("enhance"):
        t = Table("enhance arms: neuron-restricted fine-tuning", ["arm / language", "neurons", "docs", "steps",
                  "tokens", "loss first → last", "optimiser state", "full Adam would hold"])
        for name, e in results["enhance"].items():
            losses = e.get("losses") or []
            t.add(name, e["neurons"], e["docs"], e["steps"], e["tokens"],
                  f"{losses[0]:.3f} → {losses[-1]:.3f}" if losses else "–",
                  f"{e['optimizer_state_bytes'] / 1e6:.2f} MB", f"{e['full_adam_state_bytes'] / 1e6:.0f} MB")
        t.caption = "optimiser state is kept only for the trained rows/columns; parameters outside the set are never written"
        tables.append(t)
    return tables


def arm_order(ev: dict[str, Any]) -> list[str]:
    """The arms in study order, each random control right after the arm it matches."""
    arms = list(ev["arms"])
    controls = {a: r.get("random_like") for a, r in ev["arms"].items() if r.get("random_like") in ev["arms"]}
    out: list[str] = []
    for arm in arms:
        if arm in controls:
            continue
        out.append(arm)
        out += [c for c, target in controls.items() if target == arm]
    return out


def _cell(row: dict[str, Any], lang: str, digits: int = 1) -> str:
    """An arm's change on `lang`: the value, or for a control with draws `mean (min–max)`."""
    value = row["change"].get(lang)
    if row.get("draws") and value is not None and row["change_ci"].get(lang):
        lo, hi = row["change_ci"][lang]
        return f"{fmt(value, digits, True)} ({fmt(lo, digits, True)}…{fmt(hi, digits, True)})"
    return fmt(value, digits, signed=True)


def _arm_label(arm: str, row: dict[str, Any]) -> str:
    """An arm's row label: a random control's mean over its draws, or the one draw evaluated."""
    if row.get("draws"):
        return f"{arm} (mean of {row['draws']} draws)"
    return f"{arm} (draw {row['draw']})" if row.get("draw") else arm


def evaluation_tables(name: str, ev: dict[str, Any], base_lang: str) -> list[Table]:
    """One evaluation's tables: change per arm and language, paired CIs, and each family arm's matrix."""
    metric, langs = ev["metric"], ev["languages"]
    unit = ev.get("unit") or ("% ppl change" if metric == "perplexity" else "points")
    measures = sorted(set((ev.get("measures") or {}).values()))  # lm_eval: which task metric, e.g. "xquad_en: f1,none"
    if measures:
        metric = f"{metric} ({'; '.join(measures)})"
    order = arm_order(ev)
    draws = {arm: r["draws"] for arm, r in ev["arms"].items() if r.get("draws")}
    tables: list[Table] = []
    t = Table(f"{name}: {metric} per language (arms: change vs base, {unit})",
              ["arm"] + langs + [f"Δ{base_lang}", f"Δn-{base_lang}", "Δ"])
    t.add("base", *[fmt(ev["base"].get(lang)) for lang in langs], "", "", "")
    for arm in order:
        row = ev["arms"][arm]
        t.add(_arm_label(arm, row), *[_cell(row, lang) for lang in langs],
              fmt(row["delta_eng"], 1, True), fmt(row["delta_n_eng"], 1, True), fmt(row["delta"], 1, True))
    t.caption = (f"base row: the untouched model's {metric}; arm rows: the {unit} when each language's own set is "
                 "deactivated or enhanced (family arms), or the arm's single set, evaluated on that language. "
                 f"Δ{base_lang}: the change on {base_lang}; Δn-{base_lang}: the mean change on the other languages; "
                 f"Δ = Δ{base_lang} − Δn-{base_lang} (MWork's tables)")
    if draws:
        t.caption += "; random controls: mean over independent draws with (min…max)"
    tables.append(t)
    cis = {arm: r for arm, r in ev["arms"].items() if not r.get("draws") and any((r.get("change_ci") or {}).values())}
    if cis:
        ct = Table(f"{name}: {unit} with paired 95% CI", ["arm"] + langs, terminal=False)
        for arm in order:
            row = ev["arms"][arm]
            ci = row.get("change_ci") or {}
            cells = ([_cell(row, lang, 2) for lang in langs] if arm in draws  # mean (min…max) of the draws
                     else [fmt(row["change"].get(lang), 2, signed=True)
                           + (f" [{fmt(ci[lang][0], 2, True)}, {fmt(ci[lang][1], 2, True)}]" if ci.get(lang) else "")
                           for lang in langs])
            ct.add(_arm_label(arm, row), *cells)
        resamples = ev.get("bootstrap", 1000)
        ct.caption = (f"[low, high]: documents resampled together for the base model and the arm ({resamples:,} resamples): "
                      "an interval that excludes 0 is an effect of the arm, not of which documents were drawn"
                      + ("; random controls: (min…max) over their draws" if draws else ""))
        tables.append(ct)
    for i, arm in enumerate(a for a in order if a in ev["matrices"]):
        m = ev["matrices"][arm]
        verb = "enhanced" if m.get("effect") == "improvement" else "deactivated"
        title_arm = (f"{arm}, mean of {m['draws']} random draws" if m.get("draws")
                     else f"{arm}, random draw {m['draw']}" if m.get("draw") else arm)
        mt = Table(f"{name}: {title_arm} — {verb} language (rows) × evaluated language (columns), {unit}",
                   [verb] + m["cols"], anchor="" if i else f"matrices/{name}")  # the figure of all matrices goes beside the first
        for r, ml in enumerate(m["rows"]):
            cells = []
            for lang in m["cols"]:
                value, spread = m["change"][ml].get(lang), (m.get("spread") or {}).get(ml, {}).get(lang)
                cells.append(f"{fmt(value, 1, True)} ({fmt(spread[0], 1, True)}…{fmt(spread[1], 1, True)})"
                             if spread and value is not None else fmt(value, 1, signed=True))
            mt.add(ml, *cells)
            if ml in m["cols"]:
                mt.bold.add((r, 1 + m["cols"].index(ml)))
        effect = m.get("effect", "damage")  # runs recorded before "effect" existed were all deactivations
        empty = m.get("empty_rows") or []
        mt.caption = (f"bold diagonal: the language's own set. It is the largest {effect} in its row for "
                      f"{m['diagonal_largest']} of {m['rows_with_diagonal']} languages"
                      + (f" with a non-empty set; the set is EMPTY for {', '.join(empty)} (nothing {verb}, "
                         "so those rows say nothing)" if empty else ""))
        if m.get("draws"):
            mt.caption += (f" (on the mean; per draw: {', '.join(map(str, m['diagonal_largest_per_draw']))}); "
                           "cells: mean (min…max) over the draws")
        if m.get("control"):
            mt.caption += (f". Against its random control {m['control']!r}: the diagonal exceeds every one of the "
                           f"{m['control_draws']} draws for {m['beats_control']} of {m['rows_with_diagonal']} languages")
        tables.append(mt)
    return tables


def _method_tables(results: dict[str, Any]) -> list[Table]:
    """LinguaFranca, Sharing Matters, LAPE and logit-lens summaries."""
    tables: list[Table] = []
    det = results.get("detection", {})
    lf = det.get("linguafranca")
    if lf:
        regions = lf["regions"]
        t = Table("LinguaFranca: language vs meaning (pooled FFN activations, parallel corpus)", ["measure", "value"])
        t.add("LRDS (same language − different language)", fmt(lf["scores"]["lrds"], 4))
        t.add("SADS (same meaning − different meaning)", fmt(lf["scores"]["sads"], 4))
        t.add(f"SKLR (key linguistic regions, z > {regions['threshold']})", regions["sklr"])
        for lang, n in regions["counts"].items():
            t.add(f"  region size {lang}", n)
        t.caption = regions["warning"] or f"largest reachable z-score with these languages: {regions['max_reachable_z']:.2f}"
        tables.append(t)
        per_layer = lf["per_layer"]
        lt = Table("LinguaFranca: LRDS and SADS per layer", ["layer", "LRDS", "SADS"], terminal=False)
        for i, (a, b) in enumerate(zip(per_layer["lrds"], per_layer["sads"])):
            lt.add(i, fmt(a, 4), fmt(b, 4))
        tables.append(lt)
    sh = det.get("sharing")
    if sh:
        cats = sh["categories"]
        t = Table("Sharing Matters: share of neurons per category (averaged over items)", ["τ"] + cats)
        for tau, shares in sh["shares"].items():
            t.add(tau, *[f"{100 * shares['overall'][c]:.1f}%" for c in cats])
        t.caption = f"sets at τ={sh['set_tau']}: all-shared {sh['all_shared_count']} neurons (sharing.all_shared); specific per language: {sh['specific_counts']}"
        tables.append(t)
        if sh.get("attribution"):
            tables.append(_attribution_table(sh["attribution"]))
    lape = det.get("lape")
    if lape:
        t = Table("LAPE: language-specific neurons by activation-probability entropy", ["language", "neurons"])
        for lang, n in lape["counts"].items():
            t.add(lang, n)
        t.caption = f"{lape['selected']} lowest-entropy neurons kept of {lape['candidates']} past the filter (p > {lape['filter_value']:.3f})"
        tables.append(t)
    lens = results.get("logit_lens")
    if lens:
        any_lang = next(iter(lens.values()))
        layers = any_lang["layers"]
        t = Table("logit lens: share of top tokens in English / the prompt's language, by layer", ["prompt", "category"] + [str(i) for i in layers], terminal=False)
        for lang, r in lens.items():
            for cat in ("english", "prompt", "other"):
                t.add(lang, cat, *[f"{100 * v:.0f}" for v in r["ratios"][cat]])
        t.caption = "final norm applied before the unembedding" if any_lang["final_norm"] else "no final norm (as in the PLND paper's figure)"
        tables.append(t)
        mid = len(layers) // 2
        st = Table("logit lens summary", ["prompt", f"English share, layer {layers[mid]}", "prompt-language share, last layer"])
        for lang, r in lens.items():
            st.add(lang, f"{100 * r['ratios']['english'][mid]:.0f}%", f"{100 * r['ratios']['prompt'][-1]:.0f}%")
        tables.append(st)
    return tables


def _attribution_table(at: dict[str, Any]) -> Table:
    """Sharing Matters: how much of the output each neuron category accounts for."""
    method = "Integrated Gradients" if at["method"] == "ig" else "|activation|·‖W_down‖"
    t = Table(f"Sharing Matters: attribution by category ({method}, τ={at['tau']})",
              ["category", "share of abs. attribution", "mean abs. attribution", "neurons·items"])
    for cat in at["categories"]:
        o = at["overall"][cat]
        t.add(cat, f"{100 * o['share']:.1f}%", "–" if o["mean_abs"] is None else f"{o['mean_abs']:.3g}", o["count"])
    layers = at["layers"]
    span = f"layers {layers[0]}–{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else f"layers {layers}"
    caption = (f"{at['items']} items × {at['languages']} languages, {span}; each item's categories from its pooled "
               "activations; share of the summed absolute attribution, mean over (language, item, neuron)")
    if at["method"] == "ig":
        caption += (f"; {at['steps']} {at['rule']} steps, completeness gap ≤ {at['max_abs_completeness_gap']:.3g} nats "
                    f"({100 * at['max_relative_completeness_gap']:.1f}% of f(a) − f(0))")
    t.caption = caption
    return t


def write_outputs(results: dict[str, Any], tables: list[Table], folder: Path, formats: list[str],
                  layer_scale: str = "auto") -> list[Path]:
    """The run folder's files: results.json, report.md, every table as CSV (plus the tidy
    evaluations.csv and layers.csv), the figures (PNG, PDF, SVG) and report.html."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if "json" in formats:
        path = folder / "results.json"
        path.write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
        written.append(path)
    if "markdown" in formats:
        path = folder / "report.md"
        path.write_text(f"# {results['study']}\n\n" + "\n".join(t.to_markdown() for t in tables), encoding="utf-8")
        written.append(path)
    written += write_csvs(results, tables, folder)
    if "png" in formats:
        from neuronspec.report.plots import save_figure_index

        figures = _write_figures(results, folder, layer_scale)
        written.append(save_figure_index(folder, figures))
        written += [folder / f.file for f in figures]
    return written


def write_csvs(results: dict[str, Any], tables: list[Table], folder: Path) -> list[Path]:
    """tables/NN-title.csv for every table as shown, and the tidy evaluations.csv / layers.csv (numbers)."""
    import re

    from neuronspec.report.tidy import EvaluationRow, LayerRow, evaluation_rows, layer_rows, write_csv

    out = folder / "tables"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, t in enumerate(tables, 1):
        slug = re.sub(r"[^a-z0-9]+", "-", t.title.lower()).strip("-")[:60]
        written.append(t.to_csv(out / f"{i:02d}-{slug}.csv"))
    written.append(write_csv(folder / "evaluations.csv", evaluation_rows(results), EvaluationRow))
    written.append(write_csv(folder / "layers.csv", layer_rows(results), LayerRow))
    return written


def _write_figures(results: dict[str, Any], folder: Path, layer_scale: str) -> list[Any]:
    """The run's figures; with several models, each model's in a subfolder named after it,
    and the across-models LRDS/SADS plot beside them."""
    import shutil

    from neuronspec.report.plots import METHOD_FIGURES, Figure, write_plots

    if "variants" in results:
        from neuronspec.report.dynamics import plot_dynamics

        figures = []
        for model, sub in results["variants"].items():
            figures += [Figure(f"{model}/{f.file}", f"{model}: {f.caption}", f"{model}: {f.table}" if f.table else None)
                        for f in _write_figures(sub, folder / model, layer_scale)]
        path = plot_dynamics(results["dynamics"], folder / "dynamics-lrds-sads.png")
        if path:
            figures.append(Figure(path.name, "LRDS and SADS per layer, one line per model.",
                                  "dynamics across models: one column per model"))
        return figures
    folder.mkdir(parents=True, exist_ok=True)
    order = {name: arm_order(ev) for name, ev in results["evaluations"].items()}
    figures = write_plots(results, folder, order, layer_scale)
    for png in results.get("plots", []):  # plots a method drew in its own stage
        target = folder / Path(png).name
        shutil.copyfile(png, target)
        caption, table = METHOD_FIGURES.get(target.stem, (target.stem, None))
        figures.append(Figure(target.name, caption, table))
    return figures
