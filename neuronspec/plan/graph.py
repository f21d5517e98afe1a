"""Stages and plans: the DAG a study compiles to.

A stage's key hashes everything its result depends on — its kind and the fingerprint of
the code computing it, its typed spec (as canonical JSON), the keys of its inputs and (for
model-bound stages) the model's identity — so a result is reused exactly when it would
come out the same.

That key is known before anything runs. A second, *content* key (`neuronspec.plan.content`)
replaces the input keys by the digests of the files the stage reads from its inputs, as
the store recorded them when they were produced: a stage whose key is new but whose inputs
came out byte-identical to those of a stored computation reuses that result (early cutoff).
`reads` narrows what it reads to a few files of an input (one language's documents of a
corpus, one language's mask), so a change elsewhere in that input does not reach it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import TYPE_CHECKING, Any

from neuronspec.plan.store import digest

if TYPE_CHECKING:
    from pydantic import BaseModel as StageSpec

    from neuronspec.plan.fingerprint import Fingerprint


@dataclass
class Stage:
    id: str  # e.g. "stats/plnd/zh" — also what --force/--only match against
    kind: str  # selects the implementation in neuronspec.plan.kinds
    spec: StageSpec  # the kind's typed spec: what the stage computes from
    deps: tuple[str, ...] = ()
    model_bound: bool = False  # result depends on the model (key includes its identity)
    key: str = ""
    # where in the study this stage comes from, for error messages: a field path
    origin: tuple[str | int, ...] = ()
    # its place in the study (not part of the key): read these, never parse the id
    lang: str | None = None  # the language it computes for / evaluates on
    arm: str | None = None
    evaluation: str | None = None
    draw: int | None = None  # which draw of a random control with several (its mask, and what evaluates it)
    # dep → the only files of it the stage reads (every file for a dep not named); enforced by RunContext.input
    reads: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def spec_json(self) -> dict[str, Any]:
        return self.spec.model_dump(mode="json")


@dataclass
class Plan:
    study_name: str
    model_identity: dict[str, Any]
    dims: dict[str, Any]
    stages: dict[str, Stage] = field(default_factory=dict)  # topological order (insertion order)
    code: dict[str, Fingerprint] = field(default_factory=dict)  # kind → fingerprint of the code computing it
    specs: dict[str, type] = field(default_factory=dict)  # kind → the spec class its stages carry (plan.kinds.spec_types)
    notes: list[str] = field(default_factory=list)  # warnings to show the user (e.g. unreachable thresholds)

    def add(self, stage: Stage) -> Stage:
        missing = [d for d in stage.deps if d not in self.stages]
        if missing:
            raise ValueError(f"stage {stage.id} depends on unknown stages {missing}")
        if stage.id in self.stages:
            raise ValueError(f"duplicate stage id {stage.id}")
        if set(stage.reads) - set(stage.deps):
            raise ValueError(f"stage {stage.id} declares reads of stages it does not depend on: {sorted(set(stage.reads) - set(stage.deps))}")
        expected = self.specs.get(stage.kind)
        if expected is None:
            raise ValueError(f"stage {stage.id}: kind {stage.kind!r} is not one this plan was made for")
        if type(stage.spec) is not expected:
            raise TypeError(f"stage {stage.id}: a {stage.kind} stage's spec is a {expected.__name__}, "
                            f"not {type(stage.spec).__name__}")
        stage.key = digest(
            {
                "kind": stage.kind,
                "code": self.code[stage.kind].digest,
                "spec": stage.spec_json(),
                # what the inputs hold, not what they are called: two evaluations' arms that read
                # equal base stages (eval/A/base/en, eval/B/base/en) are one computation
                "deps": sorted(self.stages[d].key for d in stage.deps),
                "model": self.model_identity if stage.model_bound else None,
            }
        )
        self.stages[stage.id] = stage
        return stage

    @property
    def code_versions(self) -> dict[str, str]:
        """kind → code fingerprint, for the kinds this plan uses (what run records keep)."""
        used = {s.kind for s in self.stages.values()}
        return {k: f.digest for k, f in self.code.items() if k in used}

    def select(self, patterns: list[str]) -> list[str]:
        """Stage ids matching any glob pattern (a bare prefix like `eval` matches `eval/*`)."""
        out = []
        for sid in self.stages:
            if any(fnmatch(sid, p) or sid.startswith(p.rstrip("/") + "/") or sid == p for p in patterns):
                out.append(sid)
        return out

    def upstream(self, ids: list[str]) -> list[str]:
        """`ids` and everything they depend on, in plan order."""
        need: set[str] = set()
        stack = list(ids)
        while stack:
            sid = stack.pop()
            if sid not in need:
                need.add(sid)
                stack.extend(self.stages[sid].deps)
        return [sid for sid in self.stages if sid in need]

    def downstream(self, ids: list[str]) -> list[str]:
        """`ids` and everything that depends on them, in plan order."""
        hit = set(ids)
        for sid, stage in self.stages.items():
            if any(d in hit for d in stage.deps):
                hit.add(sid)
        return [sid for sid in self.stages if sid in hit]
