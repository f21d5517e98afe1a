"""Run a plan: compute stale stages in order, reuse the rest, explain why.

A stale stage whose inputs came out identical in content to those of a stored computation
(neuronspec.plan.content) is not computed: that result is published under its key.

The model is loaded lazily, the first time a stale stage needs its weights, so a fully
cached run never imports transformers. Each finished stage is published to the store
atomically before the next starts, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from neuronspec import distributed
from neuronspec.plan.content import content_key
from neuronspec.plan.fingerprint import Fingerprint
from neuronspec.plan.graph import Plan, Stage
from neuronspec.plan.kinds import KINDS
from neuronspec.plan.store import CorruptEntry, Entry, Store, StoreError
from neuronspec.spec.models import Study

log = logging.getLogger(__name__)


class StageFailed(Exception):
    """A stage's computation raised; finished stages stay cached, this one left nothing behind."""

    def __init__(self, stage: Stage, error: BaseException):
        self.stage, self.error = stage, error
        super().__init__(f"stage {stage.id} failed: {type(error).__name__}: {error}")


@dataclass
class StageStatus:
    stage: Stage
    state: str  # "cached" | "stale"
    reasons: list[str] = field(default_factory=list)
    # the stage whose stored result this one reused (cached), or will reuse (stale: its inputs are
    # already stored and identical in content to that computation's)
    reused_from: str | None = None


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                out.append(f"{sub} added ({new[key]!r})")
            elif key not in new:
                out.append(f"{sub} removed")
            else:
                out += _diff(old[key], new[key], sub)
        return out
    return [] if old == new else [f"{path or 'value'}: {old!r} → {new!r}"]


def explain(plan: Plan, store: Store) -> list[StageStatus]:
    """Each stage's state and, for stale ones, why (compared with the study's last run); a stale
    stage whose inputs are already stored and identical in content to a stored computation's
    says it will be reused. A cached stage that was reused rather than computed says from what."""
    index = store.read_index(plan.study_name)
    out: list[StageStatus] = []
    stale_ids: set[str] = set()
    first_of: dict[str, str] = {}  # key -> the first stale stage with it (identical stages are computed once)
    metas: dict[str, dict[str, Any] | None] = {}  # meta.json of each stage's result, where it is known before running
    for sid, stage in plan.stages.items():
        status = store.status(stage.key)
        if status == "cached":
            metas[sid] = store.meta(stage.key)
            source = (metas[sid] or {}).get("reused_from")
            out.append(StageStatus(stage, "cached", [_reused(source)] if source else [],
                                   source.get("stage") if source else None))
            continue
        reasons: list[str] = []
        if status == "corrupt":
            log.warning("%s: cached artifact failed its checksum; it will be recomputed", sid)
            reasons.append("cached artifact failed its checksum")
        prev = index.get(sid)
        if prev is None:
            reasons.append("never run")
        else:
            reasons += [f"changed {d}" for d in _diff(prev.get("spec"), stage.spec_json())]
            reasons += _code_reasons(stage.kind, prev.get("code"), plan.code[stage.kind])
            if stage.model_bound and prev.get("model") != plan.model_identity:
                reasons += [f"model {d}" for d in _diff(prev.get("model"), plan.model_identity)]
            for dep in stage.deps:
                if dep in stale_ids or prev.get("deps", {}).get(dep) != plan.stages[dep].key:
                    reasons.append(f"input {dep} changed")
            if not reasons:
                reasons.append("result not in the store (removed by gc, or interrupted)")
        hit = None
        if stage.key in first_of:
            reasons.append(f"same computation as {first_of[stage.key]}: computed once")
        else:
            content = content_key(plan, stage, lambda dep: metas.get(dep))
            hit = store.find_content(content) if content else None
            if hit is not None:
                metas[sid] = hit.meta
                reasons.append(_reused({"key": hit.key, "stage": hit.meta.get("stage")}, future=True))
        first_of.setdefault(stage.key, sid)
        stale_ids.add(sid)
        out.append(StageStatus(stage, "stale", reasons, hit.meta.get("stage") if hit is not None else None))
    return out


def _reused(source: dict[str, Any], future: bool = False) -> str:
    return (f"inputs identical in content to {source.get('stage')} ({str(source.get('key'))[:12]}…): "
            + ("will be reused, not computed" if future else "reused, not computed"))


def _code_reasons(kind: str, old: Any, new: Fingerprint) -> list[str]:
    """Why a kind's code counts as changed: the files (or functions of plan/kinds.py) that differ."""
    if not isinstance(old, dict):  # an index written before code was fingerprinted
        return [f"code of {kind} not fingerprinted when last run (recorded by an older neuronspec)"]
    changed = new.changed(old)
    if not changed:
        return []
    shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    return [f"code of {kind} changed ({shown})"]


class RunContext:
    """What a stage's compute function may use: the study, its inputs, the model, progress."""

    def __init__(self, study: Study, plan: Plan, store: Store, progress_factory: Callable[..., Any] | None = None):
        self.study, self.plan, self.store = study, plan, store
        self._model: Any = None
        self._progress_factory = progress_factory
        self.model_load_seconds: float | None = None

    def input(self, stage: Stage, dep: str) -> Entry:
        """A verified input, readable only in the files `stage.reads` declares (what its content key covers)."""
        if dep not in stage.deps:
            raise KeyError(f"{stage.id} did not declare {dep} as an input")
        entry = self.store.get(self.plan.stages[dep].key)
        names = stage.reads.get(dep)
        return entry if names is None else dataclasses.replace(entry, readable=frozenset(names))

    def model(self) -> Any:
        if self._model is None:
            from neuronspec.models.loading import load_model

            m = self.study.model
            if m.device_map is not None and distributed.world().size > 1:
                raise ValueError("model.device_map (one model spread over several GPUs) cannot be combined with a "
                                 "data-parallel run yet: run one process with device_map, or several with device: cuda")
            start = time.perf_counter()
            with self.progress(f"loading model {m.id}", total=None):
                self._model = load_model(m.id, revision=m.revision, dtype=m.dtype, device=distributed.rank_device(m.device),
                                         device_map=m.device_map, gguf_file=m.gguf_file)
            self.model_load_seconds = time.perf_counter() - start
        return self._model

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A bar for a long step: `advance(n, tokens=0)` after each n items (tokens, when given, show as tokens/s)."""
        if self._progress_factory is None or not distributed.world().main:
            yield lambda n=1, tokens=0: None
            return
        with self._progress_factory(description, total) as advance:
            yield advance


@dataclass
class RunResult:
    statuses: list[StageStatus]
    computed: list[str]
    timings: dict[str, float]
    model_load_seconds: float | None
    reused: dict[str, str] = field(default_factory=dict)  # stage → the stage whose result it reused (identical inputs)


def run_plan(plan: Plan, store: Store, study: Study, *, force: list[str] = (), only: list[str] = (),  # type: ignore[assignment]
             progress_factory: Callable[..., Any] | None = None, on_stage: Callable[[Stage, str], None] | None = None) -> RunResult:
    """Compute what is stale (or forced); with `only`, just those stages and what they need.

    Under torch.distributed (see neuronspec.distributed) every rank calls this: rank 0 decides
    what is stale and holds the store's lock; data-parallel kinds (statistics, evaluation) run
    on every rank over its shard of the documents, the rest on rank 0 alone; only rank 0
    publishes, and all ranks agree that a stage succeeded before any goes on to the next.
    """
    world = distributed.world()
    ctx = RunContext(study, plan, store, progress_factory)
    forced = set(plan.downstream(plan.select(list(force)))) if force else set()
    wanted = set(plan.upstream(plan.select(list(only)))) if only else set(plan.stages)
    computed: list[str] = []
    reused: dict[str, str] = {}
    timings: dict[str, float] = {}
    # keys done in this run → None when computed, else the stage whose result was reused (a twin shares either)
    done: dict[str, str | None] = {}
    with store.lock() if world.main else nullcontext():
        statuses = explain(plan, store) if world.main else []
        reasons = {st.stage.id: st.reasons for st in statuses
                   if st.stage.id in wanted and (st.state == "stale" or st.stage.id in forced)}
        for sid in distributed.broadcast(list(reasons)):
            stage = plan.stages[sid]
            if on_stage and world.main:
                if "cached artifact failed its checksum" in reasons[sid]:
                    on_stage(stage, "corrupt")
                on_stage(stage, "start")
            start = time.perf_counter()
            if stage.key not in done:
                content = content_key(plan, stage, lambda dep: store.meta(plan.stages[dep].key)) if world.main else None
                hit = store.find_content(content) if content and sid not in forced else None
                done[stage.key] = None
                if distributed.broadcast(hit is not None):  # every rank skips the computation
                    if world.main:
                        assert hit is not None and content is not None
                        store.reuse(stage.key, sid, stage.kind, hit, {"spec": stage.spec_json(), "content": content})
                    done[stage.key] = str(hit.meta.get("stage")) if hit is not None else "(rank 0 found it)"
                else:
                    _compute(ctx, stage, world, replace=sid in forced, content=content)
            if done[stage.key] is None:
                timings[stage.id] = time.perf_counter() - start
                computed.append(stage.id)
            else:
                reused[sid] = done[stage.key]
            if world.main:
                store.write_index(plan.study_name, {stage.id: _index_entry(plan, stage)})
            if on_stage and world.main:
                on_stage(stage, "done")
        # Record every stage's spec (cached ones too) so `plan` can explain future changes.
        if world.main:
            store.write_index(plan.study_name, {sid: _index_entry(plan, s) for sid, s in plan.stages.items()
                                                if (store.entry_dir(s.key) / "meta.json").exists()})
    return RunResult(statuses, computed, timings, ctx.model_load_seconds, reused)


def _compute(ctx: RunContext, stage: Stage, world: distributed.World, replace: bool, content: str | None) -> None:
    """Compute one stage into the store (rank 0), or help compute it (other ranks of a data-parallel kind)."""
    kind = KINDS[stage.kind]
    error: BaseException | None = None
    try:
        if world.main:
            ctx.store.put(stage.key, stage.id, stage.kind, lambda out: kind.compute(ctx, stage, stage.spec, out),
                          info={"spec": stage.spec_json(), "content": content}, replace=replace)
        elif kind.data_parallel:  # the same computation; its reduced result is rank 0's to publish
            with tempfile.TemporaryDirectory(prefix="neuronspec-rank") as tmp:
                kind.compute(ctx, stage, stage.spec, Path(tmp))
    except Exception as exc:  # KeyboardInterrupt passes through untouched
        error = exc
    if world.size > 1 and not distributed.all_ok(error is None) and error is None:
        error = RuntimeError("another rank failed (its error is reported by that rank)")
    if isinstance(error, OSError) and error.errno in _STORE_ERRNOS and world.main:
        raise StoreError(f"cannot write the store {ctx.store.root} while computing {stage.id}: "
                         f"{error.strerror or error}") from error
    if error is not None:
        raise StageFailed(stage, error) from error


#: the store's file system refused a write (full, read-only, no permission): not the stage's fault
_STORE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT}


def _index_entry(plan: Plan, stage: Stage) -> dict[str, Any]:
    return {"key": stage.key, "spec": stage.spec_json(), "code": plan.code[stage.kind].parts,
            "model": plan.model_identity if stage.model_bound else None,
            "deps": {d: plan.stages[d].key for d in stage.deps}}


__all__ = ["CorruptEntry", "StageFailed", "RunContext", "RunResult", "StageStatus", "explain", "run_plan"]
