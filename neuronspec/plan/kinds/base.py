"""What every kind shares: the spec base classes, the `Kind` record, the context a compute
function runs in, and the helpers that read inputs (documents, neuron sets) and batch them."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from neuronspec.plan.fingerprint import CodeRef
from neuronspec.plan.graph import Plan, Stage
from neuronspec.plan.kinds import artifacts


class StageSpec(BaseModel):
    """What a stage computes from: frozen, no unknown fields, JSON-able (its key hashes the JSON)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Batched(StageSpec):
    """Specs of stages that run the model over documents: how they are grouped into forward passes."""

    batch_size: int
    batch_tokens: int | None = None


@dataclass(frozen=True)
class Kind:
    spec: type[StageSpec]
    compute: Callable[..., None]  # (ctx: Context, stage: Stage, spec: <spec>, out: Path) -> None
    description: str
    loads_model: bool = False  # whether computing it needs the weights (not just identity)
    data_parallel: bool = False  # under torch.distributed every rank computes its shard (see neuronspec.distributed)
    modules: tuple[str, ...] = ()  # neuronspec modules its code reaches without an import statement

    @property
    def code(self) -> CodeRef:
        """Where its fingerprint starts: the compute function and spec class (a spec defined in
        another module counts that whole module)."""
        module = self.compute.__module__
        # the model comes from ctx.model(): how it is loaded (dtype, linear backend) is part of the computation
        modules = self.modules + (("neuronspec.models.loading",) if self.loads_model else ())
        if self.spec.__module__ == module:
            return CodeRef(module, (self.compute.__name__, self.spec.__name__), modules, (self.compute,))
        return CodeRef(module, (self.compute.__name__,), modules + (self.spec.__module__,), (self.compute,))


class Entry(Protocol):
    """A verified store entry (neuronspec.plan.store.Entry): its files and its result.json."""

    def file(self, name: str) -> Any: ...

    def json(self) -> Any: ...


class Context(Protocol):
    """What a compute function may use (neuronspec.plan.runner.RunContext implements it)."""

    plan: Plan
    study: Any

    def input(self, stage: Stage, dep: str) -> Entry: ...

    def model(self) -> Any: ...

    def progress(self, description: str, total: int | None) -> AbstractContextManager[Callable[..., None]]: ...


def read_docs(entry: Any, lang: str) -> list[dict[str, Any]]:
    path = entry.file(artifacts.docs_file(lang))
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


def load_set(entry: Any, name: str, lang: str | None) -> Any:
    from neuronspec.models.masks import NeuronSet

    path = entry.file(artifacts.set_file(name, lang))
    return NeuronSet.load(path) if path.exists() else NeuronSet.empty()


def jsonable(counts: Any) -> Any:
    if isinstance(counts, dict):
        return {str(k): jsonable(v) for k, v in counts.items()}
    return counts


def batches(encodings: list[list[int]], spec: Batched, lm: Any, advance: Callable[..., None],
             packed: bool = False) -> Any:
    """Length-sorted batches (batch_size, and batch_tokens when set) on the model's device;
    with `packed`, documents share rows (no padding computed) where the model can pack.

    Progress advances once the consumer has finished a batch (the code after `yield`), by
    its documents and real tokens, so the bar's rate is tokens/s of the whole pass.
    """
    from neuronspec.evaluate.logprobs import pad_token_id
    from neuronspec.models.forward import can_pack, iter_batches, iter_packed

    device = next(lm.model.parameters()).device
    make = iter_packed if packed and can_pack(lm.model) else iter_batches
    for b in make(encodings, batch_size=spec.batch_size, pad_id=pad_token_id(lm.model, lm.tokenizer), token_budget=spec.batch_tokens):
        yield b.to(device)
        advance(len(b.index), tokens=int(b.attention_mask.sum()))
