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
from neuronspec.plan.kinds import EVAL_KINDS
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
        if stage.kind in EVAL_KINDS:
            s = stage.spec
            ev = out["evaluations"].setdefault(stage.evaluation, {"metric": getattr(s, "metric", "lm_eval"), "cells": [],
                                                                  "bootstrap": getattr(s, "options", {}).get("bootstrap", 1000)})
            if stage.kind == "eval.lm_eval":  # which of the task's metrics (e.g. acc,none), for the table titles
                ev.setdefault("measures", {})[s.lang] = f"{result.get('task')}: {result.get('metric')}"
            ev["cells"].append({"arm": s.arm, "arm_kind": s.arm_kind, "mask_lang": s.mask_lang, "lang": s.lang,
                                **({"draw": s.draw, "random_like": s.random_like} if s.draw else {}), **result})
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
        ev.update(derive(ev["metric"], ev["cells"], baseline, ev["bootstrap"]))
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
    """95% percentile CI of the % perplexity change, resampling documents *paired* (the same
    documents for base and arm), so it measures the arm's effect, not how the documents vary.
    None when the cells are not perplexities over the same documents, or `resamples` is 0.

    numpy only (not neuronspec.evaluate, which imports torch): the report of a cached run
    must not import torch.
    """
    import numpy as np

    if metric != "perplexity" or not base or not arm or "doc_nll" not in base or "doc_nll" not in arm or resamples <= 0:
        return None
    if base["doc_tokens"] != arm["doc_tokens"] or not base["doc_tokens"]:
        return None
    diff = np.asarray(arm["doc_nll"], dtype=np.float64) - np.asarray(base["doc_nll"], dtype=np.float64)
    tokens = np.asarray(base["doc_tokens"], dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(diff), size=(resamples, len(diff)))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = diff[idx].sum(axis=1) / tokens[idx].sum(axis=1)
    ratios = ratios[np.isfinite(ratios)]  # a resample of only zero-token documents has no ratio
    if ratios.size == 0:
        return None
    lo, hi = np.quantile(100.0 * np.expm1(ratios), [0.025, 0.975])
    return [float(lo), float(hi)]


def _lookup(cells: list[dict[str, Any]]) -> dict[tuple[Any, Any, Any, str], dict[str, Any]]:
    return {(c["arm"], c.get("draw"), c["mask_lang"], c["lang"]): c for c in cells}


def _spread(values: list[float | None]) -> tuple[float | None, list[float] | None]:
    """Mean and [min, max] over a random control's draws (None where a draw has no value)."""
    known = [v for v in values if v is not None]
    if not known or len(known) < len(values):
        return None, None
    return mean(known), [min(known), max(known)]


def derive(metric: str, cells: list[dict[str, Any]], baseline: str, resamples: int = 1000) -> dict[str, Any]:
    """Per-arm changes per language, ΔEng / Δn-Eng / Δ, and language × language matrices.

    A random control with several draws (cells with `draw` 1…D) is summarised by the mean
    over its draws with the [min, max] spread; a set arm that a control matches is compared
    against that distribution: its diagonal beats the control when it exceeds every draw.
    """
    cell = _lookup(cells)
    if metric == "lm_eval" and cells and all("perplexity" in str(c.get("metric", "")) for c in cells):
        metric = "perplexity"  # lm-eval's (word/byte) perplexities change in %, like neuronspec's own
    langs = list(dict.fromkeys(c["lang"] for c in cells))
    arms = list(dict.fromkeys(c["arm"] for c in cells if c["arm"] is not None))
    draws = {arm: sorted({c.get("draw") for c in cells if c["arm"] == arm}, key=lambda d: d or 0) for arm in arms}
    controls = {c["arm"]: c["random_like"] for c in cells if c.get("random_like")}  # control → the arm it matches
    rows: dict[str, Any] = {}
    matrices: dict[str, Any] = {}
    base_value = {lang: cell.get((None, None, None, lang), {}).get("value") for lang in langs}
    enhance_arms = {c["arm"] for c in cells if c.get("arm_kind") == "enhance"}
    # perplexity (and lm-eval metrics where lower is better): damage = higher
    lower_better = metric == "perplexity" or any(c.get("higher_is_better") is False for c in cells)
    for arm in arms:
        family = any(c["mask_lang"] is not None for c in cells if c["arm"] == arm)
        masks = list(dict.fromkeys(c["mask_lang"] for c in cells if c["arm"] == arm)) if family else []

        def changes(ml: str | None, lang: str, arm: str = arm) -> list[float | None]:
            return [change(metric, base_value[lang], cell.get((arm, d, ml, lang), {}).get("value")) for d in draws[arm]]

        row: dict[str, Any] = {"values": {}, "change": {}, "change_ci": {}, "family": family}
        per_draw: dict[str, list[float | None]] = {}
        for lang in langs:
            ml = lang if family else None
            per_draw[lang] = changes(ml, lang)
            vals = [cell.get((arm, d, ml, lang), {}).get("value") for d in draws[arm]]
            b = cell.get((None, None, None, lang))
            if len(draws[arm]) == 1:
                row["values"][lang], row["change"][lang] = vals[0], per_draw[lang][0]
                row["change_ci"][lang] = paired_change_ci(metric, b, cell.get((arm, draws[arm][0], ml, lang)), resamples)
            else:
                row["values"][lang] = _spread(vals)[0]
                row["change"][lang], row["change_ci"][lang] = _spread(per_draw[lang])
        eng = row["change"].get(baseline)
        others = [v for k, v in row["change"].items() if k != baseline and v is not None]
        n_eng = mean(others) if others else None
        row.update(delta_eng=eng, delta_n_eng=n_eng, delta=(eng - n_eng) if eng is not None and n_eng is not None else None)
        if len(draws[arm]) > 1:
            row.update(draws=len(draws[arm]), change_draws=per_draw, spread="min–max over draws", random_like=controls.get(arm))
        elif draws[arm][0] is not None:  # one draw of a control with several (an evaluation's `draws: 1`)
            row["draw"] = draws[arm][0]
        rows[arm] = row
        if not family:
            continue
        m_draws = {ml: {lang: changes(ml, lang) for lang in langs} for ml in masks}
        m = {ml: {lang: _spread(m_draws[ml][lang])[0] if len(draws[arm]) > 1 else m_draws[ml][lang][0] for lang in langs}
             for ml in masks}
        if not any(v is not None for ml in m for lang, v in m[ml].items() if lang != ml):
            continue
        # deactivation should hurt its own language most; enhancement should help it most
        higher = lower_better != (arm in enhance_arms)  # perplexity: damage = higher; accuracy: damage = lower
        # a row whose set is empty changed nothing: reported as empty, never a win
        empty = [ml for ml in masks if any(c.get("deactivated") == 0 or c.get("neurons") == 0
                                           for c in cells if c["arm"] == arm and c["mask_lang"] == ml)]
        matrix: dict[str, Any] = {"rows": masks, "cols": langs, "change": m, "diagonal_largest": _diagonal_wins(m, masks, higher, empty),
                                  "rows_with_diagonal": sum(1 for ml in masks if ml in langs and ml not in empty),
                                  "empty_rows": empty, "effect": "improvement" if arm in enhance_arms else "damage"}
        if len(draws[arm]) > 1:
            matrix.update(draws=len(draws[arm]), random_like=controls.get(arm),
                          spread={ml: {lang: _spread(v)[1] for lang, v in r.items()} for ml, r in m_draws.items()},
                          diagonal_largest_per_draw=[_diagonal_wins({ml: {lang: m_draws[ml][lang][i] for lang in langs} for ml in masks},
                                                                    masks, higher, empty) for i in range(len(draws[arm]))])
        elif draws[arm][0] is not None:
            matrix["draw"] = draws[arm][0]
        matrices[arm] = matrix
    for control, target in controls.items():  # the set arm's diagonal against every draw of its control
        if target in matrices and control in matrices and matrices[control].get("spread"):
            mt, spread = matrices[target], matrices[control]["spread"]
            higher = lower_better == (mt["effect"] == "damage")
            beats = [ml for ml in mt["rows"] if ml in mt["cols"] and ml not in mt["empty_rows"] and mt["change"][ml].get(ml) is not None
                     and (spread.get(ml) or {}).get(ml) is not None
                     and (mt["change"][ml][ml] > spread[ml][ml][1] if higher else mt["change"][ml][ml] < spread[ml][ml][0])]
            mt.update(control=control, control_draws=matrices[control]["draws"], beats_control=len(beats),
                      beats_control_languages=beats)
    return {"languages": langs, "base": base_value, "arms": rows, "matrices": matrices,
            "unit": "% ppl change" if metric == "perplexity" else "points"}


def _diagonal_wins(m: dict[str, dict[str, float | None]], masks: list[str], higher: bool, empty: list[str]) -> int:
    """Rows whose diagonal (the language's own set) is the largest effect in the row (empty sets never win)."""
    beats = (lambda a, b: a >= b) if higher else (lambda a, b: a <= b)
    return sum(1 for ml in masks if ml not in empty and m[ml].get(ml) is not None and all(
        v is None or k == ml or beats(m[ml][ml], v) for k, v in m[ml].items()))
