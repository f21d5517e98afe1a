"""Turn collected results into tables (terminal + Markdown), JSON and plots in a run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from neuronspec.report.tables import Table, fmt

SITE_ORDER = ("ffn", "attn.q", "attn.k", "attn.v", "attn.o")


def result_tables(results: dict[str, Any]) -> list[Table]:
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
                     " (family arms) or the arm's single set, evaluated on that language")
        tables.append(t)
        for arm, m in ev["matrices"].items():
            mt = Table(f"{name}: {arm} — deactivated language (rows) × evaluated language (columns), {unit}",
                       ["deactivated"] + m["cols"])
            for r, ml in enumerate(m["rows"]):
                mt.add(ml, *[fmt(m["change"][ml].get(lang), 1, signed=True) for lang in m["cols"]])
                if ml in m["cols"]:
                    mt.bold.add((r, 1 + m["cols"].index(ml)))
            mt.caption = f"diagonal is the largest change in its row for {m['diagonal_largest']} of {m['rows_with_diagonal']} languages"
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
                tables.append(jt)
    if results.get("masks"):
        t = Table("arms: neurons deactivated", ["arm", "language", "total"] + list(SITE_ORDER))
        for arm, info in results["masks"].items():
            for lang, c in info["counts"].items():
                t.add(arm, lang, c["total"], *[sum(c["per_layer"].get(s, {}).values()) for s in SITE_ORDER])
        tables.append(t)
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
        from neuronspec.report.plots import write_plots

        written += write_plots(results, folder)
    return written
