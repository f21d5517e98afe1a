"""Content keys: early cutoff on what a stage's inputs actually contain.

A stage's key (plan/graph.py) hashes its inputs' *keys*, so it is known before anything
runs, and any upstream change makes it new: ε 0.9 → 0.90001 gives new keys to the sets,
masks and evaluations even when the selected neurons come out the same, and one German
document appended to a corpus gives new keys to the English statistics.

The content key hashes the same kind, code fingerprint, spec and model identity, but in
place of each input's key the sha256 of every file the stage reads from that input — the
digests the store recorded in the input's meta.json when it was produced (and verified
whenever it is read). Two computations with equal content keys read the same bytes with
the same code under the same spec, so they produce the same result: a stage whose key is
new but whose content key the store has seen reuses that result instead of computing.
A file a stage declares it reads but that is absent counts as absent (`None`), so it is
told apart from any content.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from neuronspec.plan.graph import Plan, Stage
from neuronspec.plan.store import digest


def read_digests(stage: Stage, dep: str, meta: dict[str, Any]) -> dict[str, str | None]:
    """The sha256 of each file `stage` reads of its input `dep` (its declared reads, else every file)."""
    files: dict[str, str] = meta["files"]
    names = stage.reads.get(dep)
    return dict(files) if names is None else {name: files.get(name) for name in names}


def content_key(plan: Plan, stage: Stage, meta_of: Callable[[str], dict[str, Any] | None]) -> str | None:
    """The stage's content key, or None while an input has no stored result (`meta_of(dep)` is None)."""
    inputs = []
    for dep in stage.deps:  # a list in declaration order: compute functions may rely on the order
        meta = meta_of(dep)
        if meta is None:
            return None
        inputs.append([dep, read_digests(stage, dep, meta)])
    return digest({
        "kind": stage.kind,
        "code": plan.code[stage.kind].digest,
        "spec": stage.spec_json(),
        "inputs": inputs,
        "model": plan.model_identity if stage.model_bound else None,
    })
