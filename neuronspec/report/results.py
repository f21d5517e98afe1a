"""Gather a run's cached stage results into one `RunResults` (neuronspec.report.model) and derive
the comparisons the papers report (MWork Tables 2–5: ΔEng, Δn-Eng, Δ; the deactivated ×
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

from neuronspec.plan.graph import Plan, Stage
from neuronspec.plan.kinds import EVAL_KINDS, LmEvalStage, artifacts
from neuronspec.plan.store import Store
from neuronspec.report.model import (CI, ArmRow, Cell, EnhanceRun, Evaluation, MaskCount, Matrix, NeuronSetInfo,
                                     Results, RunResults, StudyResults)


def change(metric: str, base: float | None, value: float | None) -> float | None:
    if base is None or value is None:
        return None
    if metric == "perplexity":
        return 100.0 * (value - base) / base if base else None
    return 100.0 * (value - base)


def eval_metric(stage: Stage) -> str:
    """The metric kind of an evaluation stage (perplexity | choice | generation | lm_eval)."""
    return "lm_eval" if isinstance(stage.spec, LmEvalStage) else stage.spec.metric


def eval_bootstrap(stage: Stage) -> int:
    """Resamples of an evaluation stage's CIs: the one reader of this fact (an lm-eval stage's own
    `bootstrap`; an evaluator's from its options, which the compiler always fills)."""
    s = stage.spec
    return s.bootstrap if isinstance(s, LmEvalStage) else int(s.options["bootstrap"])


def stage_cell(stage: Stage, result: dict[str, Any]) -> Cell:
    """An evaluation stage's result.json placed in the study (arm, draw, languages from its spec)."""
    s = stage.spec
    return Cell.model_validate({**result, "arm": s.arm, "arm_kind": s.arm_kind, "mask_lang": s.mask_lang, "lang": s.lang,
                                "draw": s.draw, "random_like": s.random_like if s.draw else None})


def collect(plan: Plan, store: Store, baseline: str = "en") -> RunResults:
    """Everything the report shows, from the cached entries of `plan` (JSON only)."""
    cells: dict[str, list[Cell]] = {}
    kinds: dict[str, tuple[str, int]] = {}
    measures: dict[str, dict[str, str]] = {}
    parts: dict[str, Any] = {"sets": None, "masks": [], "detection": {}, "plots": [], "logit_lens": {}, "enhance": {}}
    for sid, stage in plan.stages.items():
        path = store.entry_dir(stage.key) / artifacts.RESULT
        if not path.exists():
            continue
        result = json.loads(path.read_text(encoding="utf-8"))
        if stage.kind in EVAL_KINDS:
            name = stage.evaluation
            kinds.setdefault(name, (eval_metric(stage), eval_bootstrap(stage)))
            if isinstance(stage.spec, LmEvalStage):  # which of the task's metrics (e.g. acc,none), for the table titles
                measures.setdefault(name, {})[stage.lang] = f"{result.get('task')}: {result.get('metric')}"
            cells.setdefault(name, []).append(stage_cell(stage, result))
        elif stage.kind == "sets":
            parts["sets"] = {name: NeuronSetInfo.model_validate(info) for name, info in result.items()}
        elif stage.kind == "mask":
            parts["masks"] += [MaskCount(arm=stage.arm, draw=stage.draw, lang=lang, **c) for lang, c in result["counts"].items()]
        elif stage.kind.startswith("select."):
            parts["detection"][stage.kind.split(".", 1)[1]] = result
            parts["plots"] += [str(p) for p in sorted(path.parent.glob("*.png"))]
        elif stage.kind == "logit_lens":
            parts["logit_lens"][stage.lang] = result
        elif stage.kind == "enhance":
            parts["enhance"][f"{stage.arm}/{stage.lang}"] = EnhanceRun.model_validate(result)
        elif stage.kind.startswith("stats."):
            parts["detection"].setdefault("stats", {})[sid] = result
    evaluations = {name: evaluation(kinds[name][0], cs, baseline, kinds[name][1], measures.get(name, {}))
                   for name, cs in cells.items()}
    return RunResults(study=plan.study_name, baseline_language=baseline, model=plan.model_identity, dims=plan.dims,
                      evaluations=evaluations, **parts)


def collect_study(loaded: Any, variants: list[Any], store: Store) -> Results:
    """`collect` for a study's variants (neuronspec.plan.variants): a one-model study's results
    as they are; with several models, each model's results under `variants` and the side-by-side
    `dynamics` comparison."""
    from neuronspec.plan.variants import is_multi
    from neuronspec.report.dynamics import dynamics

    baseline = loaded.study.report.baseline_language
    if not is_multi(variants):
        return collect(variants[0].plan, store, baseline)
    by_model = {v.name: collect(v.plan, store, baseline) for v in variants}
    return StudyResults(study=loaded.study.name, baseline_language=baseline,
                        models={v.name: v.plan.model_identity for v in variants}, variants=by_model,
                        dynamics=dynamics(by_model))


def paired_change_ci(metric: str, base: Cell | None, arm: Cell | None, resamples: int = 1000, seed: int = 0) -> CI | None:
    """95% percentile CI of the % perplexity change, resampling documents *paired* (the same
    documents for base and arm), so it measures the arm's effect, not how the documents vary.
    None when the cells are not perplexities over the same documents, or `resamples` is 0.

    numpy only (not neuronspec.evaluate, which imports torch): the report of a cached run
    must not import torch.
    """
    import numpy as np

    if metric != "perplexity" or base is None or arm is None or base.doc_nll is None or arm.doc_nll is None or resamples <= 0:
        return None
    if base.doc_tokens != arm.doc_tokens or not base.doc_tokens:
        return None
    diff = np.asarray(arm.doc_nll, dtype=np.float64) - np.asarray(base.doc_nll, dtype=np.float64)
    tokens = np.asarray(base.doc_tokens, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(diff), size=(resamples, len(diff)))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = diff[idx].sum(axis=1) / tokens[idx].sum(axis=1)
    ratios = ratios[np.isfinite(ratios)]  # a resample of only zero-token documents has no ratio
    if ratios.size == 0:
        return None
    lo, hi = np.quantile(100.0 * np.expm1(ratios), [0.025, 0.975])
    return float(lo), float(hi)


def _spread(values: list[float | None]) -> tuple[float | None, CI | None]:
    """Mean and [min, max] over a random control's draws (None where a draw has no value)."""
    known = [v for v in values if v is not None]
    if not known or len(known) < len(values):
        return None, None
    return mean(known), (min(known), max(known))


def evaluation(metric: str, cells: list[Cell], baseline: str, resamples: int = 1000,
               measures: dict[str, str] | None = None) -> Evaluation:
    """An evaluation's cells, each with its change against the untouched model (and the paired
    CI of that change), and what `derive` makes of them."""
    if metric == "lm_eval" and cells and all("perplexity" in str(c.metric or "") for c in cells):
        change_metric = "perplexity"  # lm-eval's (word/byte) perplexities change in %, like neuronspec's own
    else:
        change_metric = metric
    base = {c.lang: c for c in cells if c.arm is None}
    cells = [c if c.arm is None else c.model_copy(update={
        "change": change(change_metric, base[c.lang].value if c.lang in base else None, c.value),
        "change_ci": paired_change_ci(change_metric, base.get(c.lang), c, resamples)}) for c in cells]
    cells = p_values(cells, change_metric)
    return Evaluation(metric=metric, bootstrap=resamples, measures=measures or {}, cells=cells,
                      **derive(change_metric, cells, baseline))


def p_values(cells: list[Cell], metric: str) -> list[Cell]:
    """Each set arm's cell against its random control: the empirical one-sided p-value
    (1 + #draws whose change is at least as strong, in the arm's direction) / (1 + N) over the
    control's N draws on the same (deactivated, evaluated) languages — the probability that a set
    that is one more random draw does as well (Phipson & Smyth 2010: never 0; with N draws the
    smallest possible p is 1 / (N + 1), so p ≤ 0.1 needs N ≥ 9). An arm matched by several controls
    (MWork's random neurons in the partition and across the model) is tested against the first."""
    target: dict[str, str] = {}  # set arm → its control: the first declared when several match it
    for c in cells:
        if c.random_like and c.arm:
            target.setdefault(c.random_like, c.arm)
    lower_better = _lower_is_better(metric, cells)
    draws: dict[tuple[str | None, str | None, str], list[float]] = {}
    for c in cells:
        if c.arm in target.values() and c.change is not None:
            draws.setdefault((c.arm, c.mask_lang, c.lang), []).append(c.change)
    out = []
    for c in cells:
        got = draws.get((target.get(c.arm or ""), c.mask_lang, c.lang)) if c.random_like is None else None
        if not got or c.change is None or c.deactivated == 0:  # an empty set is the untouched model: nothing to test
            out.append(c)
            continue
        up = lower_better != (c.arm_kind == "enhance")  # perplexity damage and accuracy gains are "up"
        strong = sum(1 for d in got if (d >= c.change if up else d <= c.change))
        out.append(c.model_copy(update={"p_value": (1 + strong) / (1 + len(got)), "control_draws": len(got)}))
    return out


def derive(metric: str, cells: list[Cell], baseline: str) -> dict[str, Any]:
    """Per-arm changes per language, ΔEng / Δn-Eng / Δ, and language × language matrices, from
    cells that carry their change (`evaluation` fills it).

    A random control with several draws (cells with `draw` 1…D) is summarised by the mean
    over its draws with the [min, max] spread; a set arm that a control matches is compared
    against that distribution: its diagonal beats the control when it exceeds every draw.
    """
    cell = {c.key: c for c in cells}
    langs = list(dict.fromkeys(c.lang for c in cells))
    arms = list(dict.fromkeys(c.arm for c in cells if c.arm is not None))
    draws = {arm: sorted({c.draw for c in cells if c.arm == arm}, key=lambda d: d or 0) for arm in arms}
    controls = {c.arm: c.random_like for c in cells if c.random_like}  # control → the arm it matches
    base_value = {lang: getattr(cell.get((None, None, None, lang)), "value", None) for lang in langs}
    enhance_arms = {c.arm for c in cells if c.arm_kind == "enhance"}
    lower_better = _lower_is_better(metric, cells)
    rows: dict[str, ArmRow] = {}
    matrices: dict[str, Matrix] = {}
    for arm in arms:
        family = any(c.mask_lang is not None for c in cells if c.arm == arm)
        masks = list(dict.fromkeys(c.mask_lang for c in cells if c.arm == arm)) if family else []

        def changes(ml: str | None, lang: str, arm: str = arm) -> list[float | None]:
            return [getattr(cell.get((arm, d, ml, lang)), "change", None) for d in draws[arm]]

        values: dict[str, float | None] = {}
        changed: dict[str, float | None] = {}
        change_ci: dict[str, CI | None] = {}
        per_draw: dict[str, list[float | None]] = {}
        for lang in langs:
            ml = lang if family else None
            per_draw[lang] = changes(ml, lang)
            vals = [getattr(cell.get((arm, d, ml, lang)), "value", None) for d in draws[arm]]
            if len(draws[arm]) == 1:
                values[lang], changed[lang] = vals[0], per_draw[lang][0]
                change_ci[lang] = getattr(cell.get((arm, draws[arm][0], ml, lang)), "change_ci", None)
            else:
                values[lang] = _spread(vals)[0]
                changed[lang], change_ci[lang] = _spread(per_draw[lang])
        several = len(draws[arm]) > 1
        eng, eng_source = changed.get(baseline), None
        if family and _own_set_empty(cells, arm, baseline):
            # MWork's sets exclude English's neurons: ΔEng is English under the other languages' sets
            cross = [_spread(changes(ml, baseline))[0] if several else changes(ml, baseline)[0] for ml in masks if ml != baseline]
            cross = [v for v in cross if v is not None]
            eng, eng_source = (mean(cross), "other_sets") if cross else (None, "empty")
        others = [v for k, v in changed.items() if k != baseline and v is not None]
        n_eng = mean(others) if others else None
        rows[arm] = ArmRow(values=values, change=changed, change_ci=change_ci, family=family, delta_eng=eng, delta_n_eng=n_eng,
                           **({"delta_eng_source": eng_source} if eng_source else {}),
                           delta=(eng - n_eng) if eng is not None and n_eng is not None else None,
                           **({"draws": len(draws[arm]), "change_draws": per_draw, "spread": "min–max over draws",
                               "random_like": controls.get(arm)} if several else {"draw": draws[arm][0]}))
        if not family:
            continue
        m_draws = {ml: {lang: changes(ml, lang) for lang in langs} for ml in masks}
        m = {ml: {lang: _spread(m_draws[ml][lang])[0] if several else m_draws[ml][lang][0] for lang in langs} for ml in masks}
        if not any(v is not None for ml in m for lang, v in m[ml].items() if lang != ml):
            continue
        # deactivation should hurt its own language most; enhancement should help it most
        higher = lower_better != (arm in enhance_arms)  # perplexity: damage = higher; accuracy: damage = lower
        # a row whose set is empty changed nothing: reported as empty, never a win
        empty = [ml for ml in masks if _own_set_empty(cells, arm, ml)]
        spread = {ml: {lang: _spread(v)[1] for lang, v in r.items()} for ml, r in m_draws.items()} if several else None
        matrices[arm] = Matrix(rows=masks, cols=langs, change=m, diagonal_largest=_diagonal_wins(m, masks, higher, empty),
                               diagonal_ties=_diagonal_wins(m, masks, higher, empty, ties=True),
                               rows_with_diagonal=sum(1 for ml in masks if ml in langs and ml not in empty), empty_rows=empty,
                               effect="improvement" if arm in enhance_arms else "damage", spread=spread,
                               **({"draws": len(draws[arm]), "random_like": controls.get(arm), "diagonal_largest_per_draw": [
                                   _diagonal_wins({ml: {lang: m_draws[ml][lang][i] for lang in langs} for ml in masks},
                                                  masks, higher, empty) for i in range(len(draws[arm]))]}
                                  if several else {"draw": draws[arm][0]}))
    for control, target in controls.items():  # the set arm's diagonal against every draw of its control
        mt, mc = matrices.get(target), matrices.get(control)
        if mt is None or mc is None or not mc.spread:
            continue
        higher = lower_better == (mt.effect == "damage")
        beats = [ml for ml in mt.rows if ml in mt.cols and ml not in mt.empty_rows and mt.change[ml].get(ml) is not None
                 and (mc.spread.get(ml) or {}).get(ml) is not None
                 and (mt.change[ml][ml] > mc.spread[ml][ml][1] if higher else mt.change[ml][ml] < mc.spread[ml][ml][0])]
        matrices[target] = mt.model_copy(update={"control": control, "control_draws": mc.draws, "beats_control": len(beats),
                                                 "beats_control_languages": beats})
    return {"languages": langs, "base": base_value, "arms": rows, "matrices": matrices,
            "unit": "% ppl change" if metric == "perplexity" else "points"}


def _own_set_empty(cells: list[Cell], arm: str, lang: str) -> bool:
    """Whether `lang`'s own set (or its control's draws) held no neuron for `arm`."""
    own = [c for c in cells if c.arm == arm and c.mask_lang == lang]
    return bool(own) and all(c.deactivated == 0 or c.neurons == 0 for c in own)


def _lower_is_better(metric: str, cells: list[Cell]) -> bool:
    """Perplexity (and lm-eval metrics where lower is better): a deactivation's damage is a rise."""
    return metric == "perplexity" or any(c.higher_is_better is False for c in cells)


def _diagonal_wins(m: dict[str, dict[str, float | None]], masks: list[str], higher: bool, empty: list[str],
                   ties: bool = False) -> int:
    """Rows whose diagonal (the language's own set) is strictly the largest effect in the row (empty
    sets never win); `ties`: the rows where it is largest only together with another language."""
    def count(strict: bool) -> int:
        beats = ((lambda a, b: a > b) if higher else (lambda a, b: a < b)) if strict else \
                ((lambda a, b: a >= b) if higher else (lambda a, b: a <= b))
        return sum(1 for ml in masks if ml not in empty and m[ml].get(ml) is not None and all(
            v is None or k == ml or beats(m[ml][ml], v) for k, v in m[ml].items()))
    return count(False) - count(True) if ties else count(True)
