"""Activation statistics of a corpus (one pass) and the methods built on them: LAPE, LinguaFranca;
and the activation means a mean-ablation arm writes in."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from neuronspec.fileio import write_json
from neuronspec.plan import ids
from neuronspec.plan.graph import Stage
from neuronspec.plan.kinds import artifacts
from neuronspec.plan.kinds.base import Batched, Context, StageSpec, batches, jsonable, read_docs


class ActStats(Batched):
    lang: str
    corpus: str
    max_tokens: int
    poolings: list[str]
    gate_counts: bool
    thresholds: list[float]


def stats_act(ctx: Context, stage: Stage, s: ActStats, out: Path) -> None:
    from safetensors.torch import save_file

    from neuronspec import distributed
    from neuronspec.methods.activations import ActivationStats, activation_statistics
    from neuronspec.models.forward import encode

    docs = read_docs(ctx.input(stage, ids.corpus(s.corpus)), s.lang)
    world = distributed.world()
    if len(docs) < world.size:
        raise ValueError(f"{stage.id}: {len(docs)} documents cannot be split over {world.size} ranks")
    lm = ctx.model()
    local = distributed.shard(encode(lm.tokenizer, [d["text"] for d in docs], s.max_tokens))
    with ctx.progress(f"activation statistics {s.corpus} {s.lang}", total=len(local)) as advance:
        stats = activation_statistics(lm.model, batches(local, s, lm, advance, packed=True), poolings=s.poolings,
                                      thresholds=s.thresholds, gate_counts=s.gate_counts, n_samples=len(local))
    # contiguous shards in rank order: concatenating them restores document order
    stats = ActivationStats.concat(distributed.gather(stats))
    save_file(stats.to_tensors(), str(out / artifacts.ACTIVATIONS))
    write_json(out / artifacts.RESULT, {"lang": s.lang, "docs": len(docs), "tokens": stats.tokens,
                                      "ids": [d["id"] for d in docs]})


class ActMeans(Batched):
    """Every site's mean activation over a corpus, all its languages pooled (a mean-ablation arm's values)."""

    corpus: str
    languages: list[str]
    max_tokens: int


def act_means(ctx: Context, stage: Stage, s: ActMeans, out: Path) -> None:
    from safetensors.torch import save_file

    from neuronspec.models.ablation import activation_means
    from neuronspec.models.forward import encode

    entry = ctx.input(stage, ids.corpus(s.corpus))
    texts = [d["text"] for lang in s.languages for d in read_docs(entry, lang)]
    lm = ctx.model()
    encodings = encode(lm.tokenizer, texts, s.max_tokens)
    with ctx.progress(f"activation means {s.corpus}", total=len(encodings)) as advance:
        means = activation_means(lm.model, batches(encodings, s, lm, advance, packed=True))
    save_file(means.to_tensors(), str(out / artifacts.MEANS))
    write_json(out / artifacts.RESULT, {"corpus": s.corpus, "docs": len(encodings), "tokens": means.tokens})


def load_means(entry: Any) -> Any:
    """The `ActivationMeans` an `act_means` stage wrote."""
    from safetensors.torch import load_file

    from neuronspec.models.ablation import ActivationMeans

    return ActivationMeans.from_tensors(load_file(str(entry.file(artifacts.MEANS))))


def load_activations(ctx: Context, stage: Stage) -> tuple[dict[str, Any], list[list[str]]]:
    from safetensors.torch import load_file

    from neuronspec.methods.activations import ActivationStats

    by_lang, item_ids = {}, []
    for dep in stage.deps:
        if ctx.plan.stages[dep].kind != "stats.act":  # e.g. select/sharing's attribution inputs
            continue
        entry = ctx.input(stage, dep)
        by_lang[ctx.plan.stages[dep].lang] = ActivationStats.from_tensors(load_file(str(entry.file(artifacts.ACTIVATIONS))))
        item_ids.append(entry.json()["ids"])
    return by_lang, item_ids


def require_parallel(stage: Stage, item_ids: list[list[str]]) -> None:
    if any(x != item_ids[0] for x in item_ids):
        raise ValueError(f"{stage.id} needs a parallel corpus (the same items, in the same order, in every language)")


class LapeSelect(StageSpec):
    corpus: str
    top_rate: float
    filter_quantile: float
    assign_quantile: float
    event: Literal["gate", "neuron"]


def select_lape(ctx: Context, stage: Stage, s: LapeSelect, out: Path) -> None:
    from neuronspec.methods.lape import activation_probabilities, lape

    stats, _ = load_activations(ctx, stage)
    langs, probs = activation_probabilities(stats, event=s.event)
    result = lape(probs, langs, top_rate=s.top_rate, filter_quantile=s.filter_quantile, assign_quantile=s.assign_quantile)
    for lang, ns in result.sets.items():
        ns.save(out / artifacts.set_file("lape", lang))
    write_json(out / artifacts.RESULT, jsonable(result.to_json()))


class LinguaFrancaSelect(StageSpec):
    corpus: str
    z_threshold: float


def select_linguafranca(ctx: Context, stage: Stage, s: LinguaFrancaSelect, out: Path) -> None:
    import warnings

    from neuronspec.methods.linguafranca import (
        linguafranca,
        plot_layer_scores,
        plot_similarity,
    )

    stats, item_ids = load_activations(ctx, stage)
    require_parallel(stage, item_ids)
    layers = next(iter(stats.values())).num_layers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unreachable threshold is reported in result.json and by `plan`
        result = linguafranca({lang: st.pooled["mean"] for lang, st in stats.items()}, layers, threshold=s.z_threshold)
    for lang, ns in result.regions.sets.items():
        ns.save(out / artifacts.set_file("linguafranca", lang))
    write_json(out / artifacts.RESULT, jsonable(result.to_json()))
    plot_similarity(result.similarity, result.lang_ids, result.item_ids, result.languages, out / "similarity.png")
    plot_layer_scores(result.per_layer, out / "lrds-sads.png")
