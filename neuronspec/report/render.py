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
                tables.append(t)
        return tables + [dynamics_table(results["dynamics"])]
    tables: list[Table] = []
    base_lang = results.get("baseline_language", "en")
    for name, ev in results["evaluations"].items():
        metric, langs = ev["metric"], ev["languages"]
        unit = "% ppl change" if metric == "perplexity" else "points"
        t = Table(f"{name}: {metric} per language (arms: change vs base, {unit})",
                  ["arm"] + langs + [f"Δ{base_lang}", f"Δn-{base_lang}", "Δ"])
        t.add("base", *[fmt(ev["base"].get(lang)) for lang in langs], "", "", "")
        for arm, row in ev["arms"].items():
            t.add(arm, *[fmt(row["change"].get(lang), 1, signed=True) for lang in langs],
                  fmt(row["delta_eng"], 1, True), fmt(row["delta_n_eng"], 1, True), fmt(row["delta"], 1, True))
        t.caption = ("base row: the untouched model's value; arm rows: each language's own set deactivated"
                     " or enhanced (family arms) or the arm's single set, evaluated on that language")
        tables.append(t)
        if any(ci for row in ev["arms"].values() for ci in (row.get("change_ci") or {}).values()):
            ct = Table(f"{name}: {unit} with paired 95% CI", ["arm"] + langs, terminal=False)
            for arm, row in ev["arms"].items():
                ci = row.get("change_ci") or {}
                ct.add(arm, *[fmt(row["change"].get(lang), 2, signed=True)
                              + (f" [{fmt(ci[lang][0], 2, True)}, {fmt(ci[lang][1], 2, True)}]" if ci.get(lang) else "")
                              for lang in langs])
            ct.caption = ("documents resampled together for the base model and the arm (1,000 resamples): an interval "
                          "that excludes 0 is an effect of the arm, not of which documents were drawn")
            tables.append(ct)
        for arm, m in ev["matrices"].items():
            verb = "enhanced" if m.get("effect") == "improvement" else "deactivated"
            mt = Table(f"{name}: {arm} — {verb} language (rows) × evaluated language (columns), {unit}",
                       [verb] + m["cols"])
            for r, ml in enumerate(m["rows"]):
                mt.add(ml, *[fmt(m["change"][ml].get(lang), 1, signed=True) for lang in m["cols"]])
                if ml in m["cols"]:
                    mt.bold.add((r, 1 + m["cols"].index(ml)))
            effect = m.get("effect", "damage")  # runs recorded before "effect" existed were all deactivations
            empty = m.get("empty_rows") or []
            mt.caption = (f"the diagonal (the language's own set) is the largest {effect} in its row for "
                          f"{m['diagonal_largest']} of {m['rows_with_diagonal']} languages"
                          + (f" with a non-empty set; the set is EMPTY for {', '.join(empty)} (nothing {verb}, "
                             "so those rows say nothing)" if empty else ""))
            tables.append(mt)
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
        for arm, info in results["masks"].items():
            for lang, c in info["counts"].items():
                t.add(arm, lang, c["total"], *[sum(c["per_layer"].get(s, {}).values()) for s in SITE_ORDER])
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


def write_outputs(results: dict[str, Any], tables: list[Table], folder: Path, formats: list[str]) -> list[Path]:
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
    if "png" in formats:
        written += _write_pngs(results, folder)
    return written


def _write_pngs(results: dict[str, Any], folder: Path) -> list[Path]:
    """The run's plots; with several models, each model's in a subfolder named after it,
    and the across-models LRDS/SADS plot beside them."""
    import shutil

    from neuronspec.report.plots import write_plots

    if "variants" in results:
        from neuronspec.report.dynamics import plot_dynamics

        written = [p for model, sub in results["variants"].items() for p in _write_pngs(sub, folder / model)]
        path = plot_dynamics(results["dynamics"], folder / "dynamics-lrds-sads.png")
        return written + ([path] if path else [])
    folder.mkdir(parents=True, exist_ok=True)
    written = write_plots(results, folder)
    for png in results.get("plots", []):  # plots a method drew in its own stage
        target = folder / Path(png).name
        shutil.copyfile(png, target)
        written.append(target)
    return written
