"""Gather a run's cached stage results into one JSON-able structure and derive the
comparisons the papers report (MWork Tables 2–5: ΔEng, Δn-Eng, Δ; the deactivated ×
evaluated language matrix; neuron counts; overlaps).

Change of a metric under an arm, per language:
  * perplexity: % increase over the untouched model, 100·(arm − base)/base;
  * accuracy / ROUGE-L / fidelity: change in points, 100·(arm − base).
Positive perplexity change = worse; negative accuracy change = worse.
"""

from __future__ import annotations

import json
from statistics import mean
from typing import Any

from neuronspec.plan.graph import Plan
from neuronspec.plan.store import Store


def change(metric: str, base: float | None, value: float | None) -> float | None:
    if base is None or value is None:
        return None
    if metric == "perplexity":
        return 100.0 * (value - base) / base if base else None
    return 100.0 * (value - base)


def collect(plan: Plan, store: Store, baseline: str = "en") -> dict[str, Any]:
    """Everything the report shows, from the cached entries of `plan` (JSON only)."""
    out: dict[str, Any] = {"study": plan.study_name, "baseline_language": baseline, "model": plan.model_identity, "dims": plan.dims,
                           "evaluations": {}, "sets": None, "masks": {}, "detection": {}}
    for sid, stage in plan.stages.items():
        path = store.entry_dir(stage.key) / "result.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text(encoding="utf-8"))
        if stage.kind == "eval":
            s = stage.spec
            out["evaluations"].setdefault(stage.evaluation, {"metric": s.metric, "cells": []})["cells"].append(
                {"arm": s.arm, "arm_kind": s.arm_kind, "mask_lang": s.mask_lang, "lang": s.lang, **result})
        elif stage.kind == "sets":
            out["sets"] = result
        elif stage.kind == "mask":
            out["masks"][stage.arm] = result
        elif stage.kind.startswith("select."):
            out["detection"][stage.kind.split(".", 1)[1]] = result
            out.setdefault("plots", []).extend(str(p) for p in sorted(path.parent.glob("*.png")))
        elif stage.kind == "logit_lens":
            out.setdefault("logit_lens", {})[stage.lang] = result
        elif stage.kind == "enhance":
            out.setdefault("enhance", {})[f"{stage.arm}/{stage.lang}"] = result
        elif stage.kind.startswith("stats."):
            out["detection"].setdefault("stats", {})[sid] = result
    for name, ev in out["evaluations"].items():
        ev.update(derive(ev["metric"], ev["cells"], baseline))
    return out


def collect_study(loaded: Any, variants: list[Any], store: Store) -> dict[str, Any]:
    """`collect` for a study's variants (neuronspec.plan.variants): a one-model study's results
    as they are; with several models, each model's results under `variants` and the side-by-side
    `dynamics` comparison."""
    from neuronspec.plan.variants import is_multi
    from neuronspec.report.dynamics import dynamics

    baseline = loaded.study.report.baseline_language
    if not is_multi(variants):
        return collect(variants[0].plan, store, baseline)
    by_model = {v.name: collect(v.plan, store, baseline) for v in variants}
    return {"study": loaded.study.name, "baseline_language": baseline,
            "models": {v.name: v.plan.model_identity for v in variants}, "variants": by_model, "dynamics": dynamics(by_model)}


def paired_change_ci(metric: str, base: dict[str, Any] | None, arm: dict[str, Any] | None,
                     resamples: int = 1000, seed: int = 0) -> list[float] | None:
    """95% CI of the % perplexity change, resampling documents *paired* (the same documents
    for base and arm), so it measures the arm's effect, not how the documents vary.
    None when the cells are not perplexities over the same documents."""
    import numpy as np

    from neuronspec.evaluate._stats import bootstrap_ratio

    if metric != "perplexity" or not base or not arm or "doc_nll" not in base or "doc_nll" not in arm:
        return None
    if base["doc_tokens"] != arm["doc_tokens"]:
        return None
    diff = np.asarray(arm["doc_nll"], dtype=np.float64) - np.asarray(base["doc_nll"], dtype=np.float64)
    lo, hi = bootstrap_ratio(diff, np.asarray(base["doc_tokens"], dtype=np.float64), resamples=resamples, seed=seed,
                             transform=lambda x: 100.0 * np.expm1(x))
    return None if lo is None else [lo, hi]


def _lookup(cells: list[dict[str, Any]]) -> dict[tuple[Any, Any, str], dict[str, Any]]:
    return {(c["arm"], c["mask_lang"], c["lang"]): c for c in cells}


def derive(metric: str, cells: list[dict[str, Any]], baseline: str) -> dict[str, Any]:
    """Per-arm changes per language, ΔEng / Δn-Eng / Δ, and language × language matrices."""
    cell = _lookup(cells)
    langs = list(dict.fromkeys(c["lang"] for c in cells))
    arms = list(dict.fromkeys(c["arm"] for c in cells if c["arm"] is not None))
    rows: dict[str, Any] = {}
    matrices: dict[str, Any] = {}
    for arm in arms:
        family = any(c["mask_lang"] is not None for c in cells if c["arm"] == arm)
        per_lang: dict[str, float | None] = {}
        values: dict[str, float | None] = {}
        cis: dict[str, list[float] | None] = {}
        for lang in langs:
            c = cell.get((arm, lang if family else None, lang))
            b = cell.get((None, None, lang))
            values[lang] = c["value"] if c else None
            per_lang[lang] = change(metric, b["value"] if b else None, c["value"] if c else None)
            cis[lang] = paired_change_ci(metric, b, c)
        eng = per_lang.get(baseline)
        others = [v for k, v in per_lang.items() if k != baseline and v is not None]
        n_eng = mean(others) if others else None
        rows[arm] = {"values": values, "change": per_lang, "change_ci": cis, "delta_eng": eng, "delta_n_eng": n_eng,
                     "delta": (eng - n_eng) if eng is not None and n_eng is not None else None, "family": family}
        if family:
            masks = list(dict.fromkeys(c["mask_lang"] for c in cells if c["arm"] == arm))
            m = {ml: {lang: change(metric, cell.get((None, None, lang), {}).get("value"),
                                   cell.get((arm, ml, lang), {}).get("value")) for lang in langs} for ml in masks}
            if any(v is not None for ml in m for lang, v in m[ml].items() if lang != ml):
                # deactivation should hurt its own language most; enhancement should help it most
                enhance = any(c.get("arm_kind") == "enhance" for c in cells if c["arm"] == arm)
                higher = (metric == "perplexity") != enhance  # perplexity: damage = higher; accuracy: damage = lower
                beats = (lambda a, b: a >= b) if higher else (lambda a, b: a <= b)
                # a row whose set is empty changed nothing: reported as empty, never a win
                empty = [ml for ml in masks if any(c.get("deactivated") == 0 or c.get("neurons") == 0
                                                   for c in cells if c["arm"] == arm and c["mask_lang"] == ml)]
                diag_wins = sum(1 for ml in masks if ml not in empty and m[ml].get(ml) is not None and all(
                    v is None or k == ml or beats(m[ml][ml], v) for k, v in m[ml].items()))
                matrices[arm] = {"rows": masks, "cols": langs, "change": m, "diagonal_largest": diag_wins,
                                 "rows_with_diagonal": sum(1 for ml in masks if ml in langs and ml not in empty),
                                 "empty_rows": empty, "effect": "improvement" if enhance else "damage"}
    base = {lang: cell.get((None, None, lang), {}).get("value") for lang in langs}
    return {"languages": langs, "base": base, "arms": rows, "matrices": matrices}
