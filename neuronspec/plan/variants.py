"""Studies that name several models: one single-model plan per model, run one after another.

`Study.variants()` splits a study with `models:` into one study per model, named
STUDY@MODEL. Each compiles with `compile_study` like any one-model study, so every
model-bound stage is keyed by its own model's identity, while stages that never touch a
model (corpora) get the same key in every variant and are computed once. Running loads one
model at a time. A one-model study is a single variant named None, so `plan`, `run` and
the report have one code path.

Where the stages of all variants are listed together (run records, `--json`), a stage id
reads `MODEL:STAGE`, e.g. `gemma:select/linguafranca`.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from neuronspec.plan import ids
from neuronspec.plan.graph import Plan, Stage
from neuronspec.spec.errors import Problem, StudyError
from neuronspec.spec.loader import LoadedStudy

if TYPE_CHECKING:
    from neuronspec.plan.runner import RunResult


@dataclass
class Variant:
    name: str | None  # the model's name in `models`; None for a one-model study
    loaded: LoadedStudy  # the single-model study, sharing the file's source map (errors keep FILE:LINE:COL)
    plan: Plan

    def stage_id(self, sid: str) -> str:
        """`sid` as listed among all variants' stages: `MODEL:STAGE` (a one-model study: unchanged)."""
        return ids.qualified(self.name, sid)

    @property
    def label(self) -> str:
        """What a block of output belongs to, e.g. `model gemma (gemma-3-270m)`."""
        return f"model {self.name} ({self.loaded.study.model.id})"


def compile_variants(loaded: LoadedStudy, compile_one: Callable[[LoadedStudy], Plan] | None = None) -> list[Variant]:
    """One compiled plan per model; problems of every model (e.g. a partition past one
    model's last layer) are reported together, each naming its model."""
    if compile_one is None:
        from neuronspec.plan.compile import compile_study as compile_one
    variants: list[Variant] = []
    problems: list[Problem] = []
    for name, study in loaded.study.variants().items():
        sub = dataclasses.replace(loaded, study=study)
        try:
            variants.append(Variant(name, sub, compile_one(sub)))
        except StudyError as exc:
            if name is None:
                raise
            for p in exc.problems:
                if p.path.split(".")[0] == "model":  # the variant's `model` is this entry of `models`
                    p = loaded.source.problem(("models", name, *p.path.split(".")[1:]), p.message)
                problems.append(Problem(p.location, p.path, f"{p.message} (model {name!r}: {study.model.id})"))
    if problems:
        raise StudyError(problems)
    return variants


def as_variants(loaded: LoadedStudy, plan: Plan | list[Variant]) -> list[Variant]:
    """Callers may pass a one-model study's `Plan` where variants are expected."""
    return plan if isinstance(plan, list) else [Variant(None, loaded, plan)]


def is_multi(variants: list[Variant]) -> bool:
    return any(v.name is not None for v in variants)


def all_stages(variants: list[Variant]) -> dict[str, Stage]:
    """Every variant's stages by `MODEL:STAGE` id (deps renamed alike), in plan order."""
    out: dict[str, Stage] = {}
    for v in variants:
        for sid, stage in v.plan.stages.items():
            out[v.stage_id(sid)] = dataclasses.replace(stage, id=v.stage_id(sid), deps=tuple(map(v.stage_id, stage.deps)))
    return out


def merged_plan(variants: list[Variant]) -> Plan:
    """All variants as one Plan (`MODEL:STAGE` ids; model identity and dims by model), for
    views across models such as `diff`. A one-model study's plan as it is."""
    if not is_multi(variants):
        return variants[0].plan
    name = variants[0].plan.study_name.rsplit("@", 1)[0]
    return Plan(name, {v.name: v.plan.model_identity for v in variants}, {v.name: v.plan.dims for v in variants},
                stages=all_stages(variants), code=dict(variants[0].plan.code), specs=dict(variants[0].plan.specs),
                notes=notes(variants))


def notes(variants: list[Variant]) -> list[str]:
    """The plans' notes, each once (most are the same for every model)."""
    return list(dict.fromkeys(n for v in variants for n in v.plan.notes))


def run_variants(variants: list[Variant], run_one: Callable[[Variant], RunResult],
                 on_variant: Callable[[Variant], None] | None = None) -> RunResult:
    """Run each variant with `run_one` (e.g. `run_plan` on its plan), one model in memory at
    a time; the results are merged into one, with `MODEL:STAGE` ids for several models."""
    if not is_multi(variants):
        return run_one(variants[0])
    merged: RunResult | None = None
    for v in variants:
        if on_variant is not None:
            on_variant(v)
        result = run_one(v)
        computed = [v.stage_id(s) for s in result.computed]
        timings = {v.stage_id(s): t for s, t in result.timings.items()}
        reused = {v.stage_id(s): v.stage_id(source) for s, source in result.reused.items()}
        if merged is None:
            merged = dataclasses.replace(result, computed=computed, timings=timings, reused=reused)
        else:
            loads = [x for x in (merged.model_load_seconds, result.model_load_seconds) if x is not None]
            merged = dataclasses.replace(merged, statuses=merged.statuses + result.statuses, computed=merged.computed + computed,
                                         timings={**merged.timings, **timings}, reused={**merged.reused, **reused},
                                         model_load_seconds=sum(loads) if loads else None)
        del result
        gc.collect()  # this variant's model goes before the next one is loaded
    assert merged is not None
    return merged


__all__ = ["Variant", "all_stages", "as_variants", "compile_variants", "is_multi", "merged_plan", "notes", "run_variants"]
