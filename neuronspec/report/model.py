"""The typed results of a run: what an evaluator reports, what a run collects, what a report reads.

One shape from the evaluator to the page: an evaluator returns a `Headline`; each evaluation
stage becomes a `Cell` (the headline plus where it sits: arm, draw, deactivated and evaluated
language, and its change against the untouched model); a run's cells, sets, masks and method
summaries form one `RunResults` (several models: `StudyResults`), which `results.json`, the
run record, the tables, figures, tidy rows, diffs and the Python API all read. Pydantic and
the standard library only: rendering a cached run must not import torch.

The JSON keeps the names users read (`evaluations.NAME.cells[*].arm|draw|mask_lang|lang|value|n`,
`arms`, `matrices`); a cell's evaluator-specific fields (per-item scores, samples) travel in
`detail` and are written flat beside the headline, as an evaluator's result.json has them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

CI = tuple[float, float]
#: the order sites are shown in (tables, figures)
SITE_ORDER = ("ffn", "attn.q", "attn.k", "attn.v", "attn.o")
#: per site, per layer (a JSON object key: the layer as text), how many neurons
LayerCounts = dict[str, dict[str, int]]
ExpertCounts = dict[str, dict[str, int]]  # layer -> expert -> neurons (a mixture-of-experts ffn)


class _Json(BaseModel):
    #: fields left out of the JSON while unset (None), as results.json always had them: only where they apply
    _omit_unset: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        return {k: v for k, v in out.items() if not (v is None and k in self._omit_unset)}


class Frozen(_Json):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Headline(Frozen):
    """The number an evaluator leads with, the same for every evaluator: the report compares arms by it."""

    metric: str  # perplexity | accuracy | rouge_l | fidelity | an lm-eval task's metric (e.g. "acc,none")
    value: float | None
    ci: CI | None = None  # 95% bootstrap over documents / items
    n: int | None = None  # documents or items scored
    higher_is_better: bool


class Cell(Frozen):
    """One evaluation stage's result where it sits in the study: arm × draw × deactivated × evaluated language."""

    arm: str | None  # None: the untouched model
    arm_kind: Literal["deactivate", "enhance"] | None = None
    draw: int | None = None  # which draw of a random control with several
    random_like: str | None = None  # the arm such a control matches
    mask_lang: str | None = None  # the language whose set the arm switched off (family arms)
    lang: str  # the language (or lm-eval task column) evaluated on
    kind: str | None = None  # the evaluator (perplexity | choice | generation | lm_eval)
    metric: str | None = None
    value: float | None = None
    ci: CI | None = None
    n: int | None = None
    higher_is_better: bool | None = None
    docs: int | None = None
    tokens: int | None = None
    doc_nll: list[float] | None = None  # per document: what the paired CI of a perplexity change resamples
    doc_tokens: list[int] | None = None
    deactivated: int | None = None  # neurons the arm zeroed for this cell (0: an empty set changed nothing)
    neurons: int | None = None
    task: str | None = None
    stderr: float | None = None
    change: float | None = None  # vs the untouched model on `lang`: % for perplexity, points otherwise
    change_ci: CI | None = None  # paired bootstrap CI of `change` (perplexities over the same documents)
    # a set arm's cell against its random control's draws on the same languages: (1 + #draws at least
    # as strong) / (1 + draws); None where the arm has no control (or is one)
    p_value: float | None = None
    control_draws: int | None = None  # the draws p_value was computed against
    detail: dict[str, Any] = Field(default_factory=dict)  # the evaluator's other fields, written flat

    @model_validator(mode="before")
    @classmethod
    def _gather_detail(cls, data: Any) -> Any:
        """A flat result (result.json, results.json, an old record's stage metric): unknown keys are detail."""
        if not isinstance(data, dict) or "detail" in data:
            return data
        known = {k: v for k, v in data.items() if k in cls.model_fields}
        known["detail"] = {k: v for k, v in data.items() if k not in cls.model_fields}
        if known.get("n") is None and isinstance(data.get("docs"), int):  # perplexity counts documents
            known["n"] = data["docs"]
        return known

    _omit_unset = frozenset({"draw", "random_like", "change", "change_ci", "kind", "docs", "tokens", "doc_nll", "doc_tokens",
                             "deactivated", "neurons", "task", "stderr", "p_value", "control_draws"})

    @model_serializer(mode="wrap")
    def _flat(self, handler: Any) -> dict[str, Any]:
        out = {k: v for k, v in handler(self).items() if not (v is None and k in self._omit_unset)}
        return {**out.pop("detail", {}), **out}

    @property
    def key(self) -> tuple[str | None, int | None, str | None, str]:
        return self.arm, self.draw, self.mask_lang, self.lang

    @property
    def headline(self) -> Headline | None:
        if self.metric is None or self.higher_is_better is None:
            return None
        return Headline(metric=self.metric, value=self.value, ci=self.ci, n=self.n, higher_is_better=self.higher_is_better)


class ArmRow(Frozen):
    """One arm's change per evaluated language and MWork's ΔEng / Δn-Eng / Δ (a control: mean over draws)."""

    values: dict[str, float | None]
    change: dict[str, float | None]
    change_ci: dict[str, CI | None]  # paired CI; a control with draws: [min, max] over them
    family: bool  # one set per language (a matrix) rather than one set
    delta_eng: float | None
    delta_n_eng: float | None
    delta: float | None
    draws: int | None = None  # a random control with several draws
    change_draws: dict[str, list[float | None]] | None = None
    spread: str | None = None
    random_like: str | None = None
    draw: int | None = None  # the one draw an evaluation with `draws: 1` took
    # the baseline language's own set is empty (MWork's sets exclude English's neurons): ΔEng is then
    # the baseline under the other languages' sets ("other_sets"), or undefined ("empty")
    delta_eng_source: Literal["other_sets", "empty"] | None = None

    _omit_unset = frozenset({"draws", "change_draws", "spread", "random_like", "draw", "delta_eng_source"})


class Matrix(Frozen):
    """Deactivated (or enhanced) language × evaluated language, for a family arm."""

    rows: list[str]
    cols: list[str]
    change: dict[str, dict[str, float | None]]
    diagonal_largest: int  # rows whose own language changed strictly more than every other language
    rows_with_diagonal: int
    diagonal_ties: int = 0  # rows where another language changed exactly as much: not counted as wins
    empty_rows: list[str] = Field(default_factory=list)
    effect: Literal["damage", "improvement"] = "damage"
    draws: int | None = None
    random_like: str | None = None
    spread: dict[str, dict[str, CI | None]] | None = None
    diagonal_largest_per_draw: list[int] | None = None
    draw: int | None = None
    control: str | None = None  # the random control this set arm is compared against
    control_draws: int | None = None
    beats_control: int | None = None
    beats_control_languages: list[str] | None = None

    _omit_unset = frozenset({"draws", "random_like", "spread", "diagonal_largest_per_draw", "draw", "control",
                             "control_draws", "beats_control", "beats_control_languages"})


class Evaluation(Frozen):
    """One study evaluation: its cells and what the report derives from them."""

    metric: str  # the evaluation's metric kind (perplexity | choice | generation | lm_eval)
    bootstrap: int  # resamples of every CI of this evaluation
    measures: dict[str, str] = Field(default_factory=dict)  # lm-eval: which task metric per column
    cells: list[Cell]
    languages: list[str]
    base: dict[str, float | None]
    arms: dict[str, ArmRow]
    matrices: dict[str, Matrix]
    unit: str

    def cell(self, arm: str | None, draw: int | None, mask_lang: str | None, lang: str) -> Cell | None:
        return next((c for c in self.cells if c.key == (arm, draw, mask_lang, lang)), None)


class HalfAgreement(Frozen):
    """A set found on each half of a seeded split of the detection documents: sizes and Jaccard overlap."""

    jaccard: float | None  # None: both halves' sets are empty
    size_a: int
    size_b: int


class NeuronSetInfo(Frozen):
    """A named set's size per layer (family: per language), for a family its overlaps, and its split-half stability."""

    family: bool
    counts: dict[str, LayerCounts] | LayerCounts  # family: language → site → layer → n
    jaccard: dict[str, dict[str, float | None]] | None = None
    empty: list[str] | bool | None = None  # family: the languages whose set is empty; else whether it is
    experts: dict[str, ExpertCounts] | ExpertCounts | None = None  # MoE models: ffn neurons per layer and expert
    stability: dict[str, HalfAgreement] | None = None  # per language ("*": one set); None: not measured

    _omit_unset = frozenset({"stability"})

    def groups(self, single: str | None = "*") -> list[tuple[str | None, LayerCounts]]:
        """(language, counts) per language of a family; (`single`, counts) for one set."""
        return list(self.counts.items()) if self.family else [(single, self.counts)]  # type: ignore[list-item]


class MaskCount(Frozen):
    """The neurons one arm (one draw of a random control) switches off for one language ("*": one set)."""

    arm: str
    draw: int | None = None
    lang: str
    total: int
    per_layer: LayerCounts


class EnhanceRun(Frozen):
    """One neuron-restricted fine-tune (an enhance arm, one language)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    neurons: int
    docs: int
    steps: int
    tokens: int
    losses: list[float] = Field(default_factory=list)
    optimizer_state_bytes: int
    full_adam_state_bytes: int


class Summary(_Json):
    """A method's summary as its stage wrote it: the fields the report reads are typed, the rest kept."""

    model_config = ConfigDict(frozen=True, extra="allow")


class LrdsSads(Summary):
    lrds: list[float]
    sads: list[float]


class LinguaFrancaScores(Summary):
    lrds: float
    sads: float


class LinguaFrancaRegions(Summary):
    threshold: float
    sklr: int
    counts: dict[str, int]
    max_reachable_z: float
    warning: str | None = None


class LinguaFranca(Summary):
    scores: LinguaFrancaScores
    regions: LinguaFrancaRegions
    per_layer: LrdsSads


class CategoryShare(Summary):
    share: float
    mean_abs: float | None
    count: int


class SharingAttribution(Summary):
    method: str  # ig | activation_norm
    tau: float
    categories: list[str]
    overall: dict[str, CategoryShare]
    layers: list[int]
    items: int
    languages: int
    steps: int | None = None
    rule: str | None = None
    max_abs_completeness_gap: float | None = None
    max_relative_completeness_gap: float | None = None

    _omit_unset = frozenset({"steps", "rule", "max_abs_completeness_gap", "max_relative_completeness_gap"})


class Sharing(Summary):
    categories: list[str]
    shares: dict[str, dict[str, Any]]  # τ → {"overall": category → share, per layer …}
    set_tau: float
    all_shared_count: int
    specific_counts: dict[str, int]
    event: str | None = None  # what counted as activated (None: a run before events were named: signed_mean)
    attribution: SharingAttribution | None = None


class Lape(Summary):
    counts: dict[str, int]
    selected: int
    candidates: int
    filter_value: float


class Plnd(Summary):
    counts: dict[str, LayerCounts]  # language → site → layer → n


class Detection(Summary):
    """Each detector's summary (a detector the study does not run: None)."""

    linguafranca: LinguaFranca | None = None
    sharing: Sharing | None = None
    lape: Lape | None = None
    plnd: Plnd | None = None
    stats: dict[str, Any] | None = None  # per statistics stage, by stage id


class LogitLens(Summary):
    """The logit lens on one prompt language: per layer, the share of top tokens per category."""

    language: str
    layers: list[int]
    final_norm: bool
    top_k: int
    positions: str
    counts: dict[str, list[int]]
    totals: list[int]
    labels: dict[str, list[int]]
    ratios: dict[str, list[float]]


class RunResults(Frozen):
    """Everything one model's run reports."""

    study: str
    baseline_language: str = "en"
    model: dict[str, Any] | None = None  # the model's identity
    dims: dict[str, Any] = Field(default_factory=dict)
    evaluations: dict[str, Evaluation] = Field(default_factory=dict)
    sets: dict[str, NeuronSetInfo] | None = None
    masks: list[MaskCount] = Field(default_factory=list)
    detection: Detection = Field(default_factory=Detection)
    plots: list[str] = Field(default_factory=list)  # figures a method drew in its own stage (store paths)
    logit_lens: dict[str, LogitLens] = Field(default_factory=dict)
    enhance: dict[str, EnhanceRun] = Field(default_factory=dict)  # by "ARM/LANG"

    @property
    def num_layers(self) -> int:
        return int(self.dims["num_layers"])


class DynamicsRow(Frozen):
    measure: str
    values: dict[str, Any]  # model → number (or text)
    digits: int = 0


class Dynamics(Frozen):
    """Headline numbers of every model of a study side by side, and LRDS/SADS per layer."""

    models: list[str]
    rows: list[DynamicsRow]
    per_layer: dict[str, LrdsSads]  # model → LRDS and SADS per layer


class StudyResults(Frozen):
    """A study with several models: each model's results and the comparison across them."""

    study: str
    baseline_language: str = "en"
    models: dict[str, Any]
    variants: dict[str, RunResults]
    dynamics: Dynamics


Results = Union[RunResults, StudyResults]


def parse_results(data: dict[str, Any]) -> Results:
    """`results.json` (or a record's `results`) as its type."""
    return StudyResults.model_validate(data) if "variants" in data else RunResults.model_validate(data)


def by_model(results: Results) -> list[tuple[str | None, RunResults]]:
    """(model name, its results) for each model; (None, results) for a one-model study."""
    if isinstance(results, StudyResults):
        return list(results.variants.items())
    return [(None, results)]


def to_json(results: Results, *, detail: bool = True) -> dict[str, Any]:
    """The JSON a run folder and `run --json` hold; `detail=False` leaves out per-item detail (the run record)."""
    if detail:
        return results.model_dump(mode="json")
    if isinstance(results, StudyResults):
        return {**results.model_dump(mode="json", exclude={"variants"}),
                "variants": {m: to_json(r, detail=False) for m, r in results.variants.items()}}
    out = results.model_dump(mode="json", exclude={"evaluations", "plots"})
    out["evaluations"] = {name: {**ev.model_dump(mode="json", exclude={"cells"}),
                                 "cells": [c.model_dump(mode="json", exclude={"detail"}) for c in ev.cells]}
                          for name, ev in results.evaluations.items()}
    return out
