"""PLND: importance statistics per language (one forward pass), then ε → language-relevant neurons."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from neuronspec.fileio import write_json
from neuronspec.plan import ids
from neuronspec.plan.graph import Stage
from neuronspec.plan.kinds import artifacts
from neuronspec.plan.kinds.base import Batched, Context, StageSpec, batches, jsonable, read_docs
from neuronspec.spec.models import Quantile


class PlndStats(Batched):
    lang: str
    corpus: str
    sites: list[str]
    token_reduce: Literal["mean", "sum"]
    max_tokens: int
    top_k: dict[str, int | float]  # only for rule topk_intersect: a count or a fraction of the layer width
    halves_seed: int | None = None  # split-half stability: the seed of the split (None: no halves)


def stats_plnd(ctx: Context, stage: Stage, s: PlndStats, out: Path) -> None:
    from safetensors.torch import save_file

    from neuronspec import distributed
    from neuronspec.methods.plnd import plnd_statistics
    from neuronspec.methods.stability import split_halves
    from neuronspec.models.forward import encode

    docs = read_docs(ctx.input(stage, ids.corpus(s.corpus)), s.lang)
    lm = ctx.model()
    encodings = [e for e in encode(lm.tokenizer, [d["text"] for d in docs], s.max_tokens) if len(e) >= 2]
    dropped = len(docs) - len(encodings)
    if not encodings:
        raise ValueError(f"{stage.id}: no document of {s.lang!r} has two or more tokens")
    local = distributed.shard(encodings)  # all of them outside torch.distributed
    halves = None if s.halves_seed is None else distributed.shard(split_halves(len(encodings), s.halves_seed))
    with ctx.progress(f"PLND statistics {s.lang}", total=len(local)) as advance:
        stats = plnd_statistics(lm.model, batches(local, s, lm, advance, packed=True), s.sites,
                                token_reduce=s.token_reduce, top_k=s.top_k or None, halves=halves)
    reduced = {site: st.all_reduce() for site, st in stats.items()}
    tensors = {}
    for site, st in reduced.items():
        tensors.update({k: v.contiguous() for k, v in st.to_tensors(site).items()})
    save_file(tensors, str(out / artifacts.STATS))
    halves_of = next(iter(reduced.values())).halves
    write_json(out / artifacts.RESULT, {"lang": s.lang, "docs": len(encodings), "dropped_short_docs": dropped,
                                      "tokens": sum(len(e) for e in encodings),
                                      **({"half_docs": [h.n_docs for h in halves_of]} if halves_of else {})})


def load_stats(entry: Any, sites: list[str]) -> dict[str, Any]:
    from safetensors.torch import load_file

    from neuronspec.methods.plnd import SiteStats

    tensors = load_file(str(entry.file(artifacts.STATS)))
    return {site: SiteStats.from_tensors(tensors, site) for site in sites}


# -- selection ----------------------------------------------------------------------------
class PlndSelect(StageSpec):
    sites: list[str]
    epsilon: dict[str, float | Quantile]
    rule: Literal["all_docs", "topk_intersect"]
    languages: list[str]
    top_k: dict[str, int | float]
    halves: bool = False  # also select on each half of the documents (split-half stability)


def select_plnd(ctx: Context, stage: Stage, s: PlndSelect, out: Path) -> None:
    from neuronspec.methods.plnd import resolve_thresholds, select_halves, select_relevant

    stats = {ctx.plan.stages[dep].lang: load_stats(ctx.input(stage, dep), s.sites) for dep in stage.deps}
    thresholds = resolve_thresholds(stats, s.json_dict()["epsilon"]) if s.rule == "all_docs" else {}
    relevant = select_relevant(stats, thresholds, s.rule)
    summary = {}
    for lang, ns in relevant.items():
        ns.save(out / artifacts.set_file("plnd", lang))
        summary[lang] = ns.per_layer_counts()
    half_thresholds = []
    if s.halves:
        for h, (half_eps, half_sets) in enumerate(select_halves(stats, s.json_dict()["epsilon"], s.rule)):
            half_thresholds.append(half_eps)
            for lang, ns in half_sets.items():
                ns.save(out / artifacts.half_set_file("plnd", h, lang))
    write_json(out / artifacts.RESULT, {"thresholds": thresholds, "rule": s.rule, "counts": jsonable(summary),
                                      **({"half_thresholds": half_thresholds} if s.halves else {})})
