"""What `neuronspec diff` finds, typed: `--json` prints it, `render` makes tables of it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from neuronspec.report.model import CI


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StageGroups(_Frozen):
    """Stages whose key differs (changed), that only B has (added), that only A has (removed)."""

    changed: list[str] = Field(default_factory=list)
    added: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)

    def all(self) -> list[str]:
        return self.changed + self.added + self.removed


class StageCounts(StageGroups):
    unchanged: int = 0


class SpecRow(_Frozen):
    field: str  # the dotted study field (arms by name), or why stage keys differ without one
    op: str  # changed | added | removed | reordered | other
    a: Any
    b: Any
    stages: StageGroups  # the stages this change invalidates


class MetricSide(_Frozen):
    value: float | None
    ci: CI | None


class MetricRow(_Frozen):
    stage: str
    evaluation: str | None
    metric: str | None
    higher_is_better: bool | None
    a: MetricSide | None
    b: MetricSide | None
    delta: float | None
    relative: float | None  # % of A's value
    outside_noise: bool  # the two CIs do not overlap


class DerivedRow(_Frozen):
    evaluation: str
    metric: str | None
    arm: str
    quantity: str  # delta_eng | delta_n_eng | delta
    label: str
    a: float | None
    b: float | None
    delta: float | None


class SetRow(_Frozen):
    stage: str
    set: str
    lang: str
    a: int | None
    b: int | None
    jaccard: float | None = None
    only_a: int | None = None
    only_b: int | None = None
    delta: int | None
    layers: dict[str, dict[str, tuple[int, int]]]  # site → layer → (A, B) where they differ


class Missing(_Frozen):
    a: list[str]
    b: list[str]


class Diff(_Frozen):
    a: dict[str, Any]  # the side's label, kind, study (and run id or git revision)
    b: dict[str, Any]
    spec: list[SpecRow]
    stages: StageCounts
    missing: Missing
    metrics: list[MetricRow]
    derived: list[DerivedRow]
    sets: list[SetRow]
    notes: list[str]
    identical: bool
