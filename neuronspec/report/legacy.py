"""The one adapter for runs written before run records embedded their typed results.

Such a run kept each evaluation stage's headline under `stage_metrics` in record.json, its sets
and masks beside them (masks keyed by arm: a random control's last draw only), and wrote a
results.json of the same untyped shape. Both are read here, through typed views of the old
shape, into `RunResults` / `StudyResults`; every evaluation is derived again from its cells,
as the report then derived it (tests/report/test_results_model.py renders a record written by
the old code and compares its report.md).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from neuronspec.report.model import Cell, MaskCount, NeuronSetInfo, Results, RunResults, StudyResults
from neuronspec.report.results import evaluation


class _View(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _StudyName(_View):
    name: str | None = None
    report: dict[str, Any] = Field(default_factory=dict)


class _MaskSummary(_View):
    counts: dict[str, dict[str, Any]]  # language ("*": one set) → {total, per_layer}


class _StageMetric(BaseModel):
    """An old record's `stage_metrics` entry: where the cell belongs, and the cell itself."""

    model_config = ConfigDict(extra="allow")

    evaluation: str
    kind: str  # the evaluation's metric kind
    bootstrap: int = 1000

    def cell(self) -> Cell:
        return Cell.model_validate(self.model_extra or {})


class _Record(_View):
    study: _StudyName | str = Field(default_factory=_StudyName)
    baseline_language: str | None = None
    model: dict[str, Any] | None = None
    models: dict[str, Any] | None = None
    dims: dict[str, Any] | None = None
    stage_metrics: dict[str, _StageMetric] = Field(default_factory=dict)
    stage_order: list[str] = Field(default_factory=list)
    masks: dict[str, _MaskSummary] | None = None
    sets: dict[str, NeuronSetInfo] | None = None
    variants: dict[str, dict[str, Any]] | None = None
    dynamics: dict[str, Any] | None = None

    @property
    def study_name(self) -> str | None:
        return self.study if isinstance(self.study, str) else self.study.name

    def baseline(self) -> str:
        report = {} if isinstance(self.study, str) else self.study.report
        return self.baseline_language or report.get("baseline_language", "en")


class _Evaluation(_View):
    metric: str
    cells: list[Cell]
    bootstrap: int = 1000
    measures: dict[str, str] | None = None


class _Saved(_View):
    """An old results.json (one model)."""

    masks: dict[str, _MaskSummary] | None = None
    evaluations: dict[str, _Evaluation] = Field(default_factory=dict)


def _masks(masks: dict[str, _MaskSummary] | None) -> list[MaskCount]:
    return [MaskCount(arm=arm, lang=lang, **c) for arm, info in (masks or {}).items() for lang, c in info.counts.items()]


def legacy_results(record: dict[str, Any], saved: dict[str, Any] | None = None) -> Results:
    """An old run's results: from its results.json (`saved`) where there is one, else from its record."""
    view = _Record.model_validate(record)
    baseline = view.baseline()
    if saved is not None:
        return _from_saved(saved, baseline)
    if view.variants:  # several models: each from its own part of the record
        by_model = {name: legacy_results({**v, "baseline_language": baseline}) for name, v in view.variants.items()}
        return StudyResults.model_validate({"study": view.study_name, "baseline_language": baseline, "models": view.models,
                                            "variants": by_model, "dynamics": view.dynamics})
    metrics = view.stage_metrics
    order = [sid for sid in view.stage_order if sid in metrics] + sorted(set(metrics) - set(view.stage_order))
    cells: dict[str, list[Cell]] = {}
    kinds: dict[str, tuple[str, int]] = {}
    for m in (metrics[sid] for sid in order):
        kinds.setdefault(m.evaluation, (m.kind, m.bootstrap))
        cells.setdefault(m.evaluation, []).append(m.cell())
    return RunResults(study=view.study_name, baseline_language=baseline, model=view.model, dims=view.dims or {},
                      masks=_masks(view.masks), sets=view.sets,
                      evaluations={name: evaluation(kinds[name][0], cs, baseline, kinds[name][1]) for name, cs in cells.items()})


def _from_saved(data: dict[str, Any], baseline: str) -> Results:
    """An old results.json: the same parts, with masks keyed by arm and evaluations derived again."""
    variants = data.get("variants")
    if variants is not None:
        return StudyResults.model_validate({**data, "variants": {m: _from_saved(v, baseline) for m, v in variants.items()}})
    view = _Saved.model_validate(data)
    evaluations = {name: evaluation(ev.metric, ev.cells, baseline, ev.bootstrap, ev.measures)
                   for name, ev in view.evaluations.items()}
    rest = {k: v for k, v in data.items() if k not in ("masks", "evaluations") and v is not None}
    return RunResults.model_validate({**rest, "masks": _masks(view.masks), "evaluations": evaluations})
