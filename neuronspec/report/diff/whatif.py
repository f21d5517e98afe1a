"""Which stages each spec change invalidates: compile A with just that change applied (or B with
it undone) and compare stage keys; failing both, the stages whose `origin` is that field."""

from __future__ import annotations

from typing import Any

from neuronspec.plan.graph import Stage
from neuronspec.report.diff.model import StageGroups
from neuronspec.report.diff.sides import Side, compile_dict, order, stage_groups
from neuronspec.report.diff.spec import Change, Named, Segment, apply_change
from neuronspec.spec import Study


def stage_keys(stages: dict[str, Stage] | None) -> dict[str, str] | None:
    return None if stages is None else {sid: s.key for sid, s in stages.items()}


def differs(x: dict[str, str], y: dict[str, str]) -> set[str]:
    return {sid for sid in set(x) | set(y) if x.get(sid) != y.get(sid)}


def _origin_path(origin: tuple[Any, ...], study: Study) -> tuple[Segment, ...]:
    """A stage origin with arm positions replaced by arm names, to compare with change paths."""
    out: list[Segment] = list(origin)
    if len(out) >= 2 and out[0] == "arms" and isinstance(out[1], int) and out[1] < len(study.arms):
        out[1] = Named(study.arms[out[1]].name)
    return tuple(out)


def _downstream(roots: set[str], sides: list[Side]) -> set[str]:
    hit = set(roots)
    for side in sides:
        for sid, s in side.stages.items():  # plan order: deps come first
            if any(d in hit for d in s.deps):
                hit.add(sid)
    return hit


def _fresh_keys(side: Side, data: dict[str, Any]) -> dict[str, str] | None:
    """Stage keys to compare counterfactuals with: a run's recorded keys may predate a model or code change."""
    if side.kind != "run":
        return stage_keys(side.stages)
    plan = compile_dict(data)
    return stage_keys(plan.stages) if plan is not None else None


def attribute(a: Side, b: Side, changes: list[Change], differing: set[str]) -> tuple[list[StageGroups], set[str]]:
    """For each change, the differing stages it invalidates on its own (changed key / new / gone), and the
    differing stages that only all the changes together explain."""
    both = order(a, b)

    def grouped(before: dict[str, str], after: dict[str, str]) -> StageGroups:
        return StageGroups(changed=[s for s in both if s in differing and s in before and s in after and before[s] != after[s]],
                           added=[s for s in both if s in differing and s in after and s not in before],
                           removed=[s for s in both if s in differing and s in before and s not in after])

    if not changes or not differing:
        return [grouped({}, {}) for _ in changes], set()
    a_data, b_data = a.study.model_dump(mode="json"), b.study.model_dump(mode="json")
    fresh_a, fresh_b = _fresh_keys(a, a_data), _fresh_keys(b, b_data)
    out = []
    for change in changes:
        groups = None
        # A with just this change (before: A, after: the trial); else B with just it undone (before: the trial).
        for data, ref, reverse in ((a_data, fresh_a, False), (b_data, fresh_b, True)):
            trial = compile_dict(apply_change(data, change, reverse)) if ref is not None else None
            if trial is not None:
                keys = stage_keys(trial.stages) or {}
                groups = grouped(keys, ref) if reverse else grouped(ref, keys)  # type: ignore[arg-type]
                break
        if groups is None:  # the change cannot stand alone: stages that come from that field, and their dependants
            roots = {sid for side in (a, b) for sid, s in side.stages.items()
                     if sid in differing and _prefix_related(_origin_path(s.origin, side.study), change.path)}
            groups = stage_groups(_downstream(roots, [a, b]) & differing, a, b)
        out.append(groups)
    combined: set[str] = set()
    every = compile_dict(b_data) if fresh_a is not None else None  # A with every change = B, compiled afresh
    if every is not None:
        ka, kb, kall = stage_keys(a.stages) or {}, stage_keys(b.stages) or {}, stage_keys(every.stages) or {}
        combined = {s for s in differing if kall.get(s) == kb.get(s) and fresh_a.get(s) == ka.get(s)}  # type: ignore[union-attr]
    return out, combined


def _prefix_related(x: tuple[Segment, ...], y: tuple[Segment, ...]) -> bool:
    n = min(len(x), len(y))
    return n > 0 and x[:n] == y[:n]
