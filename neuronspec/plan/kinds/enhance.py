"""Enhancement: fine-tune only an arm's neurons and keep the trained rows as a delta."""

from __future__ import annotations

from pathlib import Path

from neuronspec.fileio import write_json
from neuronspec.plan import ids
from neuronspec.plan.graph import Stage
from neuronspec.plan.kinds import artifacts
from neuronspec.plan.kinds.base import Context, StageSpec, load_set, read_docs


class Settings(StageSpec):
    """neuronspec.enhance.EnhanceSettings's fields a study sets (the rest keep their defaults)."""

    lr: float
    epochs: int
    effective_batch: int
    micro_batch: int
    seq_len: int
    max_grad_norm: float | None
    warmup_ratio: float
    schedule: str
    seed: int


class Enhance(StageSpec):
    lang: str
    mask_lang: str | None
    corpus: str
    docs: int | None
    max_tokens: int
    settings: Settings


def enhance(ctx: Context, stage: Stage, s: Enhance, out: Path) -> None:
    from neuronspec.enhance import EnhanceSettings, train_neurons

    docs = read_docs(ctx.input(stage, ids.corpus(s.corpus)), s.lang)
    if s.docs is not None:
        if len(docs) < s.docs:
            raise ValueError(f"{stage.id}: corpus {s.corpus!r} has {len(docs)} documents for {s.lang!r}, {s.docs} requested")
        docs = docs[: s.docs]
    arm = stage.arm
    neurons = load_set(ctx.input(stage, ids.mask(arm)), artifacts.MASK, s.mask_lang)
    lm = ctx.model()
    settings = EnhanceSettings(**s.settings.model_dump())
    total = settings.epochs * -(-len(docs) // settings.effective_batch)
    with ctx.progress(f"enhance {arm} on {s.lang}", total=total) as advance:
        result = train_neurons(lm.model, lm.tokenizer, [d["text"] for d in docs], neurons, settings,
                               on_step=lambda info: advance(1))
    result.delta.save(out / artifacts.DELTA)
    summary = result.summary() | {"lang": s.lang, "docs": len(docs), "neurons": neurons.count()}
    write_json(out / artifacts.RESULT, summary)
