"""Materialise and sample a corpus: one JSON file of documents per language."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from neuronspec.fileio import write_json
from neuronspec.plan.graph import Stage
from neuronspec.plan.kinds import artifacts
from neuronspec.plan.kinds.base import Context, StageSpec


class CorpusStage(StageSpec):
    source: str
    split: Literal["detect", "eval", "all"]
    docs_per_language: int | None
    eval_fraction: float
    languages: list[str]
    options: dict[str, Any]
    seed: int
    identity: dict[str, Any]  # what the text is (package digest, file digests, dataset revision)


def corpus(ctx: Context, stage: Stage, s: CorpusStage, out: Path) -> None:
    from neuronspec.data import load_corpus

    options = dict(s.options)
    if s.source.startswith("hf:") and s.identity.get("revision") and "revision" not in options:
        options["revision"] = s.identity["revision"]  # read the commit the key was made with
    docs = load_corpus(s.source, s.languages, split=s.split, docs_per_language=s.docs_per_language,
                       seed=s.seed, eval_fraction=s.eval_fraction, options=options, expect=s.identity)
    for lang, items in docs.items():
        write_json(out / artifacts.docs_file(lang), [{"id": d.id, "lang": d.lang, "text": d.text, "meta": d.meta} for d in items])
    write_json(out / artifacts.RESULT, {"languages": {lang: len(items) for lang, items in docs.items()}})
