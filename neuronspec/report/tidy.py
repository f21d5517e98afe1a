"""A run's numbers in tidy (long) form: one row per observation, numbers not formatted text.

`evaluation_rows`: one row per arm × random draw × deactivated language × evaluated language
× metric, with the metric's own CI and the paired CI of its change against the untouched
model (both computed once, when the results are collected). `layer_rows`: one row per neuron set × language × site × layer (0 for an empty layer);
`stability_rows`: one row per neuron set × language with its split-half sizes and Jaccard; `expert_rows`,
for a mixture-of-experts model, one per set × language × layer × expert holding ffn neurons. The run folder
keeps them as CSV, and the Python API returns them as pandas DataFrames; neither needs
pandas or torch here.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TextIO

from neuronspec.fileio import write_atomic
from neuronspec.report.model import Results, by_model


@dataclass(frozen=True)
class EvaluationRow:
    model: str | None  # the model's name in a study with `models`, else None
    evaluation: str
    metric: str
    arm: str  # "base" for the untouched model
    arm_kind: str | None  # deactivate | enhance | None (base)
    random_like: str | None  # the arm a random control matches
    draw: int | None  # the control's draw (1…D), None for a single mask
    deactivated: str | None  # the language whose set the arm switched off (or enhanced); None: the arm's single set
    evaluated: str
    value: float | None
    ci_low: float | None  # the metric's own CI (bootstrap over documents)
    ci_high: float | None
    base: float | None  # the untouched model's value on `evaluated`
    change: float | None  # % for perplexity, points otherwise
    change_ci_low: float | None  # paired bootstrap CI of `change` (perplexity only)
    change_ci_high: float | None
    docs: int | None
    p_value: float | None  # a set arm against its random control: (1 + #draws at least as strong) / (1 + draws)
    control_draws: int | None  # the control's draws behind p_value


@dataclass(frozen=True)
class LayerRow:
    model: str | None
    set: str
    language: str | None  # None for a single (not per-language) set
    site: str
    layer: int
    neurons: int


@dataclass(frozen=True)
class StabilityRow:
    model: str | None
    set: str
    language: str | None  # None for a single (not per-language) set
    size_a: int  # the set found on half A of the detection documents
    size_b: int
    jaccard: float | None  # |A ∩ B| / |A ∪ B|; None when both are empty


@dataclass(frozen=True)
class ExpertRow:
    model: str | None
    set: str
    language: str | None  # None for a single (not per-language) set
    layer: int
    expert: int  # the routed expert, or the number of routed experts for the shared one
    shared: bool  # the shared expert (Qwen2-MoE)
    neurons: int


def evaluation_rows(results: Results) -> list[EvaluationRow]:
    rows = []
    for model, res in by_model(results):
        for name, ev in res.evaluations.items():
            base = {c.lang: c.value for c in ev.cells if c.arm is None}
            for c in ev.cells:
                ci = c.ci or (None, None)
                change_ci = c.change_ci or (None, None)
                rows.append(EvaluationRow(
                    model, name, ev.metric, c.arm or "base", c.arm_kind, c.random_like, c.draw, c.mask_lang, c.lang,
                    c.value, ci[0], ci[1], base.get(c.lang), c.change, change_ci[0], change_ci[1], c.docs, c.p_value,
                    c.control_draws))
    return rows


def layer_rows(results: Results) -> list[LayerRow]:
    rows = []
    for model, res in by_model(results):
        for name, info in (res.sets or {}).items():
            for lang, counts in info.groups(single=None):
                for site, per_layer in counts.items():  # every layer, empty ones as 0
                    rows += [LayerRow(model, name, lang, site, i, int(per_layer.get(str(i), 0))) for i in range(res.num_layers)]
    return rows


def stability_rows(results: Results) -> list[StabilityRow]:
    """One row per set × language whose split-half stability was measured."""
    return [StabilityRow(model, name, None if lang == "*" else lang, ag.size_a, ag.size_b, ag.jaccard)
            for model, res in by_model(results) for name, info in (res.sets or {}).items()
            for lang, ag in (info.stability or {}).items()]


def expert_rows(results: Results) -> list[ExpertRow]:
    """A mixture-of-experts model's sets: ffn neurons per layer and expert (experts holding none left out)."""
    rows = []
    for model, res in by_model(results):
        experts = (res.dims or {}).get("experts")
        for name, info in (res.sets or {}).items():
            if info.experts is None or experts is None:
                continue
            per_lang = info.experts.items() if info.family else [(None, info.experts)]
            for lang, layers in per_lang:
                rows += [ExpertRow(model, name, lang, int(layer), int(e), int(e) == experts["num_experts"], n)
                         for layer, per in layers.items() for e, n in per.items()]  # type: ignore[union-attr]
    return rows


def write_csv(path: Path, rows: list[Any], row_type: type) -> Path:
    """Rows of a dataclass as CSV (empty cells for None), written atomically."""
    def write(f: TextIO) -> None:
        w = csv.writer(f)
        w.writerow([fl.name for fl in fields(row_type)])
        for r in rows:
            w.writerow(["" if v is None else v for v in asdict(r).values()])

    return write_atomic(path, write)
