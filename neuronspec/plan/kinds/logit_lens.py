"""The logit lens: the language of each layer's top tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from neuronspec.fileio import write_json
from neuronspec.plan.graph import Stage
from neuronspec.plan.kinds import artifacts
from neuronspec.plan.kinds.base import Batched, Context, batches, read_docs


class LogitLens(Batched):
    lang: str
    corpus: str
    max_tokens: int
    languages: list[str]
    final_norm: bool
    top_k: int
    positions: Literal["last", "all"]


def logit_lens(ctx: Context, stage: Stage, s: LogitLens, out: Path) -> None:
    from neuronspec.methods.logit_lens import TokenClassifier
    from neuronspec.methods.logit_lens import logit_lens as lens
    from neuronspec.models.forward import encode

    docs = read_docs(ctx.input(stage, next(d for d in stage.deps if ctx.plan.stages[d].kind == "corpus")), s.lang)
    lm = ctx.model()
    encodings = encode(lm.tokenizer, [d["text"] for d in docs], s.max_tokens)
    classifier = TokenClassifier(lm.tokenizer, s.languages)
    with ctx.progress(f"logit lens {s.lang}", total=len(encodings)) as advance:
        counts = lens(lm.model, batches(encodings, s, lm, advance), s.lang, classifier, top_k=s.top_k,
                      positions=s.positions, final_norm=s.final_norm)
    write_json(out / artifacts.RESULT, counts.to_json())
