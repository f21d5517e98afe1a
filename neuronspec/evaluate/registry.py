"""One calling convention for every evaluator, so the planner can treat them alike.

`run_evaluator` validates the study's options against the evaluator's keyword
parameters (unknown keys are errors, not silently ignored) and returns an `Evaluated`: the
typed `Headline` (metric, value, CI, n, higher-is-better) every evaluator leads with, and the
evaluator's own fields; `to_json()` is what an evaluation stage stores as its result.json.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from neuronspec.evaluate.choice import multiple_choice
from neuronspec.evaluate.generation import generation
from neuronspec.evaluate.perplexity import perplexity
from neuronspec.report.model import Headline

EVALUATORS: dict[str, Callable[..., Any]] = {
    "perplexity": perplexity,
    "choice": multiple_choice,
    "generation": generation,
}

# Headline metrics per evaluator: name -> (result field, CI fields, count field, higher is better).
_HEADLINES: dict[str, dict[str, tuple[str, tuple[str, str] | str, str, bool]]] = {
    "perplexity": {"perplexity": ("ppl", ("ci_low", "ci_high"), "docs", False)},
    "choice": {"accuracy": ("accuracy", ("ci_low", "ci_high"), "n", True)},
    "generation": {"rouge_l": ("rouge_l", "rouge_l_ci", "n", True), "fidelity": ("fidelity", "fidelity_ci", "n", True)},
}


@dataclass(frozen=True)
class Evaluated:
    """One evaluator run: its headline, and the evaluator's own fields (per-item scores, samples)."""

    kind: str
    lang: str
    seed: int
    headline: Headline
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The evaluator's fields with the headline's beside them (what result.json and a report cell hold)."""
        return {**self.detail, "kind": self.kind, "lang": self.lang, "seed": self.seed,
                **self.headline.model_dump(mode="json")}

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
) -> Evaluated:
    """Run evaluator `kind` on `items`: its headline and its `to_dict()`.

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

    value_field, ci_fields, count_field, higher = headlines[metric]
    if isinstance(ci_fields, tuple):
        lo, hi = (getattr(result, f) for f in ci_fields)
        ci = None if lo is None or hi is None else (lo, hi)
    else:
        ci = getattr(result, ci_fields)
    headline = Headline(metric=metric, value=getattr(result, value_field), ci=ci, n=getattr(result, count_field),
                        higher_is_better=higher)
    return Evaluated(kind, lang, seed, headline, result.to_dict())
