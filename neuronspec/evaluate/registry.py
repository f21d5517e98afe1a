"""One calling convention for every evaluator, so the planner can treat them alike.

`run_evaluator` validates the study's options against the evaluator's keyword
parameters (unknown keys are errors, not silently ignored) and returns a JSON-ready dict
with a headline: `metric`, `value`, `ci` ([lo, hi] or None) and `higher_is_better`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from neuronspec.evaluate.choice import multiple_choice
from neuronspec.evaluate.generation import generation
from neuronspec.evaluate.perplexity import perplexity

EVALUATORS: dict[str, Callable[..., Any]] = {
    "perplexity": perplexity,
    "choice": multiple_choice,
    "generation": generation,
}

# Headline metrics per evaluator: name -> (result field, CI fields, higher is better).
_HEADLINES: dict[str, dict[str, tuple[str, tuple[str, str] | str, bool]]] = {
    "perplexity": {"perplexity": ("ppl", ("ci_low", "ci_high"), False)},
    "choice": {"accuracy": ("accuracy", ("ci_low", "ci_high"), True)},
    "generation": {"rouge_l": ("rouge_l", "rouge_l_ci", True), "fidelity": ("fidelity", "fidelity_ci", True)},
}

_SUPPLIED = {"lang", "seed"}  # passed by run_evaluator itself, not through options


def evaluator_options(kind: str) -> list[str]:
    """The option names a study may set for evaluator `kind` (plus "metric")."""
    params = inspect.signature(_evaluator(kind)).parameters.values()
    names = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _SUPPLIED]
    return [*names, "metric"]


def _evaluator(kind: str) -> Callable[..., Any]:
    try:
        return EVALUATORS[kind]
    except KeyError:
        raise ValueError(f"unknown evaluator {kind!r}; known: {', '.join(EVALUATORS)}") from None


def run_evaluator(
    kind: str,
    model: torch.nn.Module,
    tokenizer: Any,
    items: Sequence[Any],
    options: Mapping[str, Any] | None,
    lang: str,
    seed: int,
) -> dict[str, Any]:
    """Run evaluator `kind` on `items` and return its `to_dict()` plus the headline keys.

    `options` are the evaluator's keyword arguments; `metric` picks the headline where an
    evaluator has several (generation: "rouge_l" (default) or "fidelity").
    """
    fn = _evaluator(kind)
    options = dict(options or {})
    allowed = evaluator_options(kind)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for evaluator {kind!r}; allowed: {', '.join(allowed)}")
    headlines = _HEADLINES[kind]
    metric = options.pop("metric", next(iter(headlines)))
    if metric not in headlines:
        raise ValueError(f"evaluator {kind!r} has no metric {metric!r}; choose from {', '.join(headlines)}")

    params = inspect.signature(fn).parameters
    supplied = {k: v for k, v in (("lang", lang), ("seed", seed)) if k in params}
    result = fn(model, tokenizer, items, **options, **supplied)

    out = result.to_dict()
    value_field, ci_fields, higher = headlines[metric]
    if isinstance(ci_fields, tuple):
        lo, hi = (getattr(result, f) for f in ci_fields)
        ci = None if lo is None or hi is None else [lo, hi]
    else:
        ci = getattr(result, ci_fields)
    out.update(
        kind=kind, lang=lang, seed=seed, metric=metric, value=getattr(result, value_field), ci=ci, higher_is_better=higher
    )
    return out
