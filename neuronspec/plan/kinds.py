"""Stage kinds: what each kind of stage computes, from what, and with which code.

A kind is one typed object (`Kind`):

* **spec** — a frozen Pydantic model (a `StageSpec`) of everything the result depends on.
  `plan/compile.py` builds it from the study; the stage key hashes its canonical JSON (with
  the input keys, the model identity and the code fingerprint), so two stages with equal
  specs share one result. Fields that do not change the result (batching of a selection,
  an arm's name) stay out of it; facts about a stage's place in the study (its language,
  arm, evaluation) are typed fields of the `Stage`, not parsed from its id.
* **compute** — `compute(ctx, stage, spec, out)`: reads its inputs from the store (already
  verified) through `ctx.input`, and writes its files into the empty folder `out`. Small
  results go in `result.json` (the report reads only JSON, so rendering needs no torch);
  tensors in safetensors files. Import heavy modules inside the function.
* **code fingerprint** — computed, never kept by hand (`neuronspec.plan.fingerprint`): the
  compute function, its spec class, the helpers of this module they call and every
  neuronspec module they import, transitively. Comments, whitespace and docstrings do not
  count; any other edit recomputes the kind's stages and `plan` says which file changed.
  A module the code reaches without an import statement (dispatch by name) must be listed
  in `Kind.modules`.

To add a kind: write its spec class and compute function here, register
`KINDS["my.kind"] = Kind(MySpec, my_compute, "what it does", ...)`, and add its stages in
`plan/compile.py` with `Stage(id, "my.kind", MySpec(...), deps=...)`.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from neuronspec.fileio import write_json
from neuronspec.plan import ids
from neuronspec.plan.fingerprint import CodeRef, Fingerprint, fingerprints
from neuronspec.plan.graph import Stage
from neuronspec.spec.models import AttributionSpec, Quantile

if TYPE_CHECKING:
    from neuronspec.plan.runner import RunContext


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
    compute: Callable[..., None]  # (ctx: RunContext, stage: Stage, spec: <spec>, out: Path) -> None
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


def code_fingerprints(kinds: Iterable[str] | None = None, root: Path | None = None) -> dict[str, Fingerprint]:
    """The code fingerprint of each kind (all by default), read from the source under `root`."""
    names = list(KINDS) if kinds is None else list(kinds)
    return fingerprints({k: KINDS[k].code for k in names}, root)


# -- corpus -----------------------------------------------------------------------------
class CorpusStage(StageSpec):
    source: str
    split: Literal["detect", "eval", "all"]
    docs_per_language: int | None
    eval_fraction: float
    languages: list[str]
    options: dict[str, Any]
    seed: int
    identity: dict[str, Any]  # what the text is (package digest, file digests, dataset revision)


def corpus(ctx: RunContext, stage: Stage, s: CorpusStage, out: Path) -> None:
    from neuronspec.data import load_corpus

    options = dict(s.options)
    if s.source.startswith("hf:") and s.identity.get("revision") and "revision" not in options:
        options["revision"] = s.identity["revision"]  # read the commit the key was made with
    docs = load_corpus(s.source, s.languages, split=s.split, docs_per_language=s.docs_per_language,
                       seed=s.seed, eval_fraction=s.eval_fraction, options=options, expect=s.identity)
    for lang, items in docs.items():
        write_json(out / f"{lang}.json", [{"id": d.id, "lang": d.lang, "text": d.text, "meta": d.meta} for d in items])
    write_json(out / "result.json", {"languages": {lang: len(items) for lang, items in docs.items()}})


def read_docs(entry: Any, lang: str) -> list[dict[str, Any]]:
    path = entry.file(f"{lang}.json")
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


# -- PLND statistics ----------------------------------------------------------------------
class PlndStats(Batched):
    lang: str
    corpus: str
    sites: list[str]
    token_reduce: Literal["mean", "sum"]
    max_tokens: int
    top_k: dict[str, int | float]  # only for rule topk_intersect: a count or a fraction of the layer width


def stats_plnd(ctx: RunContext, stage: Stage, s: PlndStats, out: Path) -> None:
    from safetensors.torch import save_file

    from neuronspec import distributed
    from neuronspec.methods.plnd import plnd_statistics
    from neuronspec.models.forward import encode

    docs = read_docs(ctx.input(stage, ids.corpus(s.corpus)), s.lang)
    lm = ctx.model()
    encodings = [e for e in encode(lm.tokenizer, [d["text"] for d in docs], s.max_tokens) if len(e) >= 2]
    dropped = len(docs) - len(encodings)
    if not encodings:
        raise ValueError(f"{stage.id}: no document of {s.lang!r} has two or more tokens")
    local = distributed.shard(encodings)  # all of them outside torch.distributed
    with ctx.progress(f"PLND statistics {s.lang}", total=len(local)) as advance:
        stats = plnd_statistics(lm.model, _batches(local, s, lm, advance, packed=True), s.sites,
                                token_reduce=s.token_reduce, top_k=s.top_k or None)
    tensors = {}
    for site, st in stats.items():
        tensors.update({k: v.contiguous() for k, v in st.all_reduce().to_tensors(site).items()})
    save_file(tensors, str(out / "stats.safetensors"))
    write_json(out / "result.json", {"lang": s.lang, "docs": len(encodings), "dropped_short_docs": dropped,
                                      "tokens": sum(len(e) for e in encodings)})


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


def _batches(encodings: list[list[int]], spec: Batched, lm: Any, advance: Callable[..., None],
             packed: bool = False) -> Any:
    """Length-sorted batches (batch_size, and batch_tokens when set) on the model's device;
    with `packed`, documents share rows (no padding computed) where the model can pack.

    Progress advances once the consumer has finished a batch (the code after `yield`), by
    its documents and real tokens, so the bar's rate is tokens/s of the whole pass.
    """
    from neuronspec.models.forward import can_pack, iter_batches, iter_packed

    device = next(lm.model.parameters()).device
    make = iter_packed if packed and can_pack(lm.model) else iter_batches
    for b in make(encodings, batch_size=spec.batch_size, pad_id=_pad_id(lm.tokenizer), token_budget=spec.batch_tokens):
        yield b.to(device)
        advance(len(b.index), tokens=int(b.attention_mask.sum()))


def load_stats(entry: Any, sites: list[str]) -> dict[str, Any]:
    from safetensors.torch import load_file

    from neuronspec.methods.plnd import SiteStats

    tensors = load_file(str(entry.file("stats.safetensors")))
    return {site: SiteStats.from_tensors(tensors, site) for site in sites}


# -- selection ----------------------------------------------------------------------------
class PlndSelect(StageSpec):
    sites: list[str]
    epsilon: dict[str, float | Quantile]
    rule: Literal["all_docs", "topk_intersect"]
    languages: list[str]
    top_k: dict[str, int | float]


def select_plnd(ctx: RunContext, stage: Stage, s: PlndSelect, out: Path) -> None:
    from neuronspec.methods.plnd import resolve_thresholds, select_relevant

    stats = {ctx.plan.stages[dep].lang: load_stats(ctx.input(stage, dep), s.sites) for dep in stage.deps}
    thresholds = resolve_thresholds(stats, s.json_dict()["epsilon"]) if s.rule == "all_docs" else {}
    relevant = select_relevant(stats, thresholds, s.rule)
    summary = {}
    for lang, ns in relevant.items():
        ns.save(out / f"plnd.{lang}.safetensors")
        summary[lang] = ns.per_layer_counts()
    write_json(out / "result.json", {"thresholds": thresholds, "rule": s.rule, "counts": _jsonable(summary)})


def _jsonable(counts: Any) -> Any:
    if isinstance(counts, dict):
        return {str(k): _jsonable(v) for k, v in counts.items()}
    return counts


# -- activation statistics and the methods built on them ---------------------------------
class ActStats(Batched):
    lang: str
    corpus: str
    max_tokens: int
    poolings: list[str]
    gate_counts: bool
    thresholds: list[float]


def stats_act(ctx: RunContext, stage: Stage, s: ActStats, out: Path) -> None:
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
        stats = activation_statistics(lm.model, _batches(local, s, lm, advance, packed=True), poolings=s.poolings,
                                      thresholds=s.thresholds, gate_counts=s.gate_counts, n_samples=len(local))
    # contiguous shards in rank order: concatenating them restores document order
    stats = ActivationStats.concat(distributed.gather(stats))
    save_file(stats.to_tensors(), str(out / "activations.safetensors"))
    write_json(out / "result.json", {"lang": s.lang, "docs": len(docs), "tokens": stats.tokens,
                                      "ids": [d["id"] for d in docs]})


def _load_activations(ctx: RunContext, stage: Stage) -> tuple[dict[str, Any], list[list[str]]]:
    from safetensors.torch import load_file

    from neuronspec.methods.activations import ActivationStats

    by_lang, item_ids = {}, []
    for dep in stage.deps:
        if ctx.plan.stages[dep].kind != "stats.act":  # e.g. select/sharing's attribution inputs
            continue
        entry = ctx.input(stage, dep)
        by_lang[ctx.plan.stages[dep].lang] = ActivationStats.from_tensors(load_file(str(entry.file("activations.safetensors"))))
        item_ids.append(entry.json()["ids"])
    return by_lang, item_ids


def _require_parallel(stage: Stage, item_ids: list[list[str]]) -> None:
    if any(x != item_ids[0] for x in item_ids):
        raise ValueError(f"{stage.id} needs a parallel corpus (the same items, in the same order, in every language)")


class LapeSelect(StageSpec):
    corpus: str
    top_rate: float
    filter_quantile: float
    assign_quantile: float
    event: Literal["gate", "neuron"]


def select_lape(ctx: RunContext, stage: Stage, s: LapeSelect, out: Path) -> None:
    from neuronspec.methods.lape import activation_probabilities, lape

    stats, _ = _load_activations(ctx, stage)
    langs, probs = activation_probabilities(stats, event=s.event)
    result = lape(probs, langs, top_rate=s.top_rate, filter_quantile=s.filter_quantile, assign_quantile=s.assign_quantile)
    for lang, ns in result.sets.items():
        ns.save(out / f"lape.{lang}.safetensors")
    write_json(out / "result.json", _jsonable(result.to_json()))


class LinguaFrancaSelect(StageSpec):
    corpus: str
    z_threshold: float


def select_linguafranca(ctx: RunContext, stage: Stage, s: LinguaFrancaSelect, out: Path) -> None:
    import warnings

    from neuronspec.methods.linguafranca import (
        linguafranca,
        plot_layer_scores,
        plot_similarity,
    )

    stats, item_ids = _load_activations(ctx, stage)
    _require_parallel(stage, item_ids)
    layers = next(iter(stats.values())).num_layers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unreachable threshold is reported in result.json and by `plan`
        result = linguafranca({lang: st.pooled["mean"] for lang, st in stats.items()}, layers, threshold=s.z_threshold)
    for lang, ns in result.regions.sets.items():
        ns.save(out / f"linguafranca.{lang}.safetensors")
    write_json(out / "result.json", _jsonable(result.to_json()))
    plot_similarity(result.similarity, result.lang_ids, result.item_ids, result.languages, out / "similarity.png")
    plot_layer_scores(result.per_layer, out / "lrds-sads.png")


class SharingSelect(StageSpec):
    corpus: str
    thresholds: list[float]
    set_threshold: float | None
    min_fraction: float
    attribution: AttributionSpec | None


def select_sharing(ctx: RunContext, stage: Stage, s: SharingSelect, out: Path) -> None:
    from neuronspec.methods.sharing import plot_shares, sharing

    stats, item_ids = _load_activations(ctx, stage)
    _require_parallel(stage, item_ids)
    layers = next(iter(stats.values())).num_layers
    result = sharing({lang: st.pooled["mean"] for lang, st in stats.items()}, layers, taus=s.thresholds,
                     set_tau=s.set_threshold, min_fraction=s.min_fraction)
    for lang, ns in result.specific.items():
        ns.save(out / f"sharing.{lang}.safetensors")
    result.all_shared.save(out / "sharing.all_shared.safetensors")
    summary = _jsonable(result.to_json())
    attr_deps = [d for d in stage.deps if ctx.plan.stages[d].kind == "attr.sharing"]
    if attr_deps:
        summary["attribution"] = _sharing_attribution(ctx, stage, attr_deps, stats, item_ids[0], result.set_tau, out)
    write_json(out / "result.json", summary)
    plot_shares(result.shares[str(result.set_tau)], out / "sharing.png")


def _sharing_attribution(ctx: Any, stage: Stage, deps: list[str], stats: dict[str, Any], item_ids: list[str], tau: float,
                         out: Path) -> dict[str, Any]:
    """select/sharing's `attribution` section: the |attribution| mass of each category at τ, from the
    attr/sharing/LANG stages; each item's categories come from the same items' pooled activations."""
    import torch
    from safetensors.torch import load_file

    from neuronspec.methods.sharing import attribution_by_category, item_categories, plot_attribution

    infos = {ctx.plan.stages[dep].lang: ctx.input(stage, dep) for dep in deps}
    langs = [lang for lang in stats if lang in infos]
    meta = {lang: infos[lang].json() for lang in langs}
    first = meta[langs[0]]
    for lang in langs:
        if meta[lang]["ids"] != item_ids[: len(meta[lang]["ids"])] or meta[lang]["ids"] != first["ids"]:
            raise ValueError(f"{stage.id}: the attributed items of {lang!r} are not the first items of the sharing corpus")
    attributions = torch.stack([load_file(str(infos[lang].file("attributions.safetensors")))["attributions"] for lang in langs])
    codes = item_categories({lang: stats[lang].pooled["mean"] for lang in stats}, range(len(first["ids"])), tau)
    section = attribution_by_category(codes, attributions, first["layers"])
    section.update(method=first["method"], tau=tau, ids=first["ids"], attributed_languages=langs,
                   per_language={lang: {c: v["share"] for c, v in attribution_by_category(
                       codes, attributions[i], first["layers"])["overall"].items()} for i, lang in enumerate(langs)})
    if first["method"] == "ig":
        section.update(steps=first["steps"], rule=first["rule"],
                       max_abs_completeness_gap=max(meta[lang]["max_abs_completeness_gap"] for lang in langs),
                       max_relative_completeness_gap=max(meta[lang]["max_relative_completeness_gap"] for lang in langs))
    plot_attribution(section, out / "sharing-attribution.png",
                     title=f"share of |attribution| per layer by neuron category (τ={tau}, {first['method']})")
    return section


# -- attribution of the output to ffn neurons (Sharing Matters) --------------------------
class SharingAttribution(Batched):
    lang: str
    corpus: str
    max_tokens: int
    method: Literal["ig", "activation_norm"]
    docs: int
    layers: list[int] | None
    # ig only (None for activation_norm, so its key ignores the quadrature settings)
    steps: int | None
    step_batch: int | None
    probes: int | None


def attr_sharing(ctx: RunContext, stage: Stage, s: SharingAttribution, out: Path) -> None:
    """Per item and ffn neuron, IG (or |a|·‖W_down‖) for the first `docs` items of LANG.

    IG runs one layer at a time over the same batches, so progress counts items × layers;
    each (batch, layer) is an independent integral, so this equals one call over all layers.
    """
    import warnings

    import torch
    from safetensors.torch import save_file

    from neuronspec.methods.activations import activation_statistics
    from neuronspec.methods.attribution import (
        CompletenessWarning,
        IGResult,
        activation_norm_scores,
        integrated_gradients,
    )
    from neuronspec.models.forward import encode
    from neuronspec.models.sites import adapter_for

    docs = read_docs(ctx.input(stage, ids.corpus(s.corpus)), s.lang)[: s.docs]
    if not docs:
        raise ValueError(f"{stage.id}: corpus {s.corpus!r} has no documents for {s.lang!r}")
    lm = ctx.model()
    num_layers = adapter_for(lm.model.config).dims(lm.model.config).num_layers
    layers = list(range(num_layers)) if s.layers is None else list(s.layers)
    encodings = encode(lm.tokenizer, [d["text"] for d in docs], s.max_tokens)
    summary: dict[str, Any] = {"lang": s.lang, "method": s.method, "docs": len(docs), "ids": [d["id"] for d in docs],
                               "layers": layers, "tokens": sum(len(e) for e in encodings)}
    if s.method == "ig":
        parts = []
        with ctx.progress(f"integrated gradients {s.lang} ({len(layers)} layers)", total=len(encodings) * len(layers)) as advance:
            for layer in layers:
                parts.append(integrated_gradients(lm.model, _batches(encodings, s, lm, advance), layers=[layer],
                                                  steps=s.steps, step_batch=s.step_batch, probes=s.probes,
                                                  n_samples=len(encodings), tolerance=None))
        result = IGResult(layers, torch.cat([p.attributions for p in parts], 1), parts[0].f_input,
                          torch.cat([p.f_baseline for p in parts], 1), s.steps, parts[0].rule)
        gap = result.completeness_gap
        relative = gap.abs() / (result.f_input[:, None] - result.f_baseline).double().abs().clamp_min(0.1)
        tensors = result.to_tensors()
        summary.update(result.to_json(), max_relative_completeness_gap=float(relative.max()),
                       f_input=result.f_input.tolist(), f_baseline=result.f_baseline.tolist(),
                       completeness_gap=gap.tolist())
        if float(relative.max()) > 0.05:
            warnings.warn(f"{stage.id}: Integrated Gradients miss f(a) - f(0) by up to {float(relative.max()):.1%} "
                          f"with {s.steps} steps; raise detect.sharing.attribution.steps (and probes)",
                          CompletenessWarning, stacklevel=2)
    else:
        with ctx.progress(f"activation norms {s.lang}", total=len(encodings)) as advance:
            stats = activation_statistics(lm.model, _batches(encodings, s, lm, advance), poolings=["mean_abs"],
                                          thresholds=(), n_samples=len(encodings))
        scores = activation_norm_scores(lm.model, stats.pooled["mean_abs"])[:, layers]
        tensors = {"attributions": scores.contiguous(), "layers": torch.tensor(layers, dtype=torch.int64)}
    save_file(tensors, str(out / "attributions.safetensors"))
    write_json(out / "result.json", summary)


class LogitLens(Batched):
    lang: str
    corpus: str
    max_tokens: int
    languages: list[str]
    final_norm: bool
    top_k: int
    positions: Literal["last", "all"]


def logit_lens(ctx: RunContext, stage: Stage, s: LogitLens, out: Path) -> None:
    from neuronspec.methods.logit_lens import TokenClassifier
    from neuronspec.methods.logit_lens import logit_lens as lens
    from neuronspec.models.forward import encode

    docs = read_docs(ctx.input(stage, next(d for d in stage.deps if ctx.plan.stages[d].kind == "corpus")), s.lang)
    lm = ctx.model()
    encodings = encode(lm.tokenizer, [d["text"] for d in docs], s.max_tokens)
    classifier = TokenClassifier(lm.tokenizer, s.languages)
    with ctx.progress(f"logit lens {s.lang}", total=len(encodings)) as advance:
        counts = lens(lm.model, _batches(encodings, s, lm, advance), s.lang, classifier, top_k=s.top_k,
                      positions=s.positions, final_norm=s.final_norm)
    write_json(out / "result.json", counts.to_json())


# -- named sets ---------------------------------------------------------------------------
class Sets(StageSpec):
    neurons: dict[str, str]  # name → set expression, in evaluation order
    order: list[str]
    families: list[str]
    detectors: list[str]
    singles: list[str]
    languages: list[str]


def sets(ctx: RunContext, stage: Stage, s: Sets, out: Path) -> None:
    from neuronspec.methods.sets import evaluate_sets
    from neuronspec.models.masks import NeuronSet

    env: dict[str, Any] = {}
    for det in s.detectors:
        entry = ctx.input(stage, ids.select(det))
        env[det] = {lang: NeuronSet.load(entry.file(f"{det}.{lang}.safetensors")) for lang in s.languages
                    if entry.file(f"{det}.{lang}.safetensors").exists()}
    for single in s.singles:
        det = single.split(".", 1)[0]
        env[single] = NeuronSet.load(ctx.input(stage, ids.select(det)).file(f"{single}.safetensors"))
    named = evaluate_sets(s.neurons, env, s.languages)
    summary: dict[str, Any] = {}
    for name, value in {**env, **named}.items():
        if isinstance(value, dict):
            for lang, ns in value.items():
                ns.save(out / f"{name}.{lang}.safetensors")
            # the overlap of two empty sets is undefined (None), not 1.0
            summary[name] = {"family": True, "counts": {lang: ns.per_layer_counts() for lang, ns in value.items()},
                             "empty": [lang for lang, ns in value.items() if ns.count() == 0],
                             "jaccard": {a: {b: value[a].jaccard(value[b]) if value[a].count() or value[b].count()
                                             else None for b in value} for a in value}}
        else:
            value.save(out / f"{name}.safetensors")
            summary[name] = {"family": False, "counts": value.per_layer_counts(), "empty": value.count() == 0}
    write_json(out / "result.json", _jsonable(summary))


def load_set(entry: Any, name: str, lang: str | None) -> Any:
    from neuronspec.models.masks import NeuronSet

    path = entry.file(f"{name}.{lang}.safetensors" if lang else f"{name}.safetensors")
    return NeuronSet.load(path) if path.exists() else NeuronSet.empty()


class ModelDims(StageSpec):
    """`models.sites.Dims` as a spec field: that module imports torch, which planning must not."""

    num_layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int


# -- masks --------------------------------------------------------------------------------
class Mask(StageSpec):
    """Either a named set restricted to layers and sites, or a random match of another arm's mask."""

    neurons: str | None = None
    layers: list[tuple[int, int]] | None = None
    sites: list[str] | None = None
    random_like: str | None = None
    seed: int | None = None
    dims: ModelDims | None = None

    @model_validator(mode="after")
    def _one_form(self) -> "Mask":
        if (self.neurons is None) == (self.random_like is None) or (self.random_like is not None) != (self.dims is not None):
            raise ValueError("a mask names `neurons`, or `random_like` with `dims` and `seed`")
        return self


def mask(ctx: RunContext, stage: Stage, s: Mask, out: Path) -> None:
    from neuronspec.models.sites import Dims

    langs = ctx.study.languages
    summary: dict[str, Any] = {}
    if s.random_like is not None:
        target = ctx.input(stage, ids.mask(s.random_like))
        dims = Dims(**s.dims.model_dump())
        family = target.json()["family"]
        for i, lang in enumerate(langs if family else [None]):
            matched = load_set(target, "mask", lang)
            chosen = matched.random_like(dims, seed=s.seed + 1000 * i, exclude=matched)
            _save_mask(out, summary, chosen, lang)
        write_json(out / "result.json", {"family": family, "counts": _jsonable(summary)})
        return
    entry = ctx.input(stage, ids.SETS)
    family = entry.json()[s.neurons]["family"]
    layers = None
    if s.layers:
        layers = sorted({i for start, end in s.layers for i in range(start, end)})
    for lang in langs if family else [None]:
        chosen = load_set(entry, s.neurons, lang).restrict(layers=layers, sites=s.sites)
        _save_mask(out, summary, chosen, lang)
    write_json(out / "result.json", {"family": family, "counts": _jsonable(summary)})


def _save_mask(out: Path, summary: dict[str, Any], ns: Any, lang: str | None) -> None:
    ns.save(out / (f"mask.{lang}.safetensors" if lang else "mask.safetensors"))
    summary[lang or "*"] = {"total": ns.count(), "per_layer": ns.per_layer_counts()}


# -- enhancement --------------------------------------------------------------------------
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


def enhance(ctx: RunContext, stage: Stage, s: Enhance, out: Path) -> None:
    from neuronspec.enhance import EnhanceSettings, train_neurons

    docs = read_docs(ctx.input(stage, ids.corpus(s.corpus)), s.lang)
    if s.docs is not None:
        if len(docs) < s.docs:
            raise ValueError(f"{stage.id}: corpus {s.corpus!r} has {len(docs)} documents for {s.lang!r}, {s.docs} requested")
        docs = docs[: s.docs]
    arm = stage.arm
    neurons = load_set(ctx.input(stage, ids.mask(arm)), "mask", s.mask_lang)
    lm = ctx.model()
    settings = EnhanceSettings(**s.settings.model_dump())
    total = settings.epochs * -(-len(docs) // settings.effective_batch)
    with ctx.progress(f"enhance {arm} on {s.lang}", total=total) as advance:
        result = train_neurons(lm.model, lm.tokenizer, [d["text"] for d in docs], neurons, settings,
                               on_step=lambda info: advance(1))
    result.delta.save(out / "delta.safetensors")
    summary = result.summary() | {"lang": s.lang, "docs": len(docs), "neurons": neurons.count()}
    write_json(out / "result.json", summary)


# -- evaluation ---------------------------------------------------------------------------
class Evaluation(StageSpec):
    metric: str
    seed: int
    languages: list[str]
    options: dict[str, Any]
    lang: str
    arm: str | None
    arm_kind: Literal["deactivate", "enhance"] | None
    mask_lang: str | None
    draw: int | None = None  # which draw of a random control with several (its mask is the input)
    random_like: str | None = None  # the arm that control matches, so the report can compare the two


def evaluate(ctx: RunContext, stage: Stage, s: Evaluation, out: Path) -> None:
    from neuronspec.data import Document
    from neuronspec.evaluate import evaluator_options, run_evaluator
    from neuronspec.evaluate.prefix import first_layer, shared_prefix
    from neuronspec.models.masks import NeuronSet, zeroed
    from neuronspec.progress import reporting

    corpus_dep = next(d for d in stage.deps if ctx.plan.stages[d].kind == "corpus")
    docs = [Document(d["id"], d["lang"], d["text"], d["meta"]) for d in read_docs(ctx.input(stage, corpus_dep), s.lang)]
    neurons, modified = NeuronSet.empty(), nullcontext()
    lm = ctx.model()
    start = 1 << 30  # the first layer that differs from the base model (see evaluate.prefix)
    if s.arm_kind == "deactivate":  # the arm's mask (of this draw, for a random control with several)
        neurons = load_set(ctx.input(stage, ids.mask(s.arm, s.draw)), "mask", s.mask_lang)
        start = first_layer(neurons) if neurons else start
    elif s.arm_kind == "enhance":
        from neuronspec.enhance import Delta, apply_delta

        start = 0  # changed weights: nothing to share
        delta = Delta.load(ctx.input(stage, ids.enhance(s.arm, s.mask_lang)).file("delta.safetensors"))
        modified = apply_delta(lm.model, delta)
    allowed = evaluator_options(s.metric)
    options = {k: v for k, v in s.options.items() if k in allowed}
    if "languages" in allowed:  # generation's language identification: the study's languages are the candidates
        options["languages"] = s.languages
    label = (f"{s.metric} {s.arm or 'base'}" + (f" draw {s.draw}" if s.draw else "")
             + (f" {s.mask_lang}" if s.mask_lang else "") + f" on {s.lang}")
    # the first layers of the study's arms: where later arms can pick up the base model's residual stream
    boundaries = {a for st in ctx.plan.stages.values() if isinstance(st.spec, Mask) for a, _ in st.spec.layers or ()}
    # the prefix store keys recordings by the weights: take their digest before the arm's neurons
    # are zeroed (layers >= start only), so the arm replays the base model's prefix
    with ctx.progress(label, total=None) as advance, reporting(advance), modified, \
            shared_prefix(lm.model, start=start, boundaries=boundaries), zeroed(lm.model, neurons):
        result = run_evaluator(s.metric, lm.model, lm.tokenizer, docs, options, s.lang, s.seed)
    write_json(out / "result.json", {**result.to_json(), "deactivated": neurons.count()})


class LmEvalStage(StageSpec):
    """One lm-eval task on the model under an arm; `task` is its identity (neuronspec.plan.tasks)."""

    seed: int
    lang: str  # the column: a study language, or the task of a language-neutral list
    task: dict[str, Any]
    corpus: str | None  # written per language as the jsonl that data_files: "{corpus}" reads
    batch_size: int
    limit: int | None
    num_fewshot: int | None
    max_length: int | None
    metric_name: str | None
    bootstrap: int
    arm: str | None
    arm_kind: Literal["deactivate", "enhance"] | None
    mask_lang: str | None
    draw: int | None = None  # which draw of a random control with several (its mask is the input)
    random_like: str | None = None  # the arm that control matches


def evaluate_lm_eval(ctx: RunContext, stage: Stage, s: LmEvalStage, out: Path) -> None:
    """lm-eval tasks run in one process: under torchrun the stage says so instead of running on one rank
    while the others wait (every other stage is cached by then, so a plain run finishes the study)."""
    from neuronspec import distributed
    from neuronspec.evaluate.harness import run_task
    from neuronspec.models.masks import NeuronSet, deactivate

    if distributed.world().size > 1:
        raise ValueError(f"{stage.id}: lm-eval tasks run in one process, not under torchrun; the other stages are "
                         f"cached: finish with `neuronspec run STUDY --only 'eval/{stage.evaluation}/*'` without torchrun")
    docs = read_docs(ctx.input(stage, ids.corpus(s.corpus)), s.lang) if s.corpus else None
    lm = ctx.model()
    neurons, modified = NeuronSet.empty(), nullcontext()
    if s.arm_kind == "deactivate":  # the arm's mask (of this draw, for a random control with several)
        neurons = load_set(ctx.input(stage, ids.mask(s.arm, s.draw)), "mask", s.mask_lang)
    elif s.arm_kind == "enhance":
        from neuronspec.enhance import Delta, apply_delta

        delta = Delta.load(ctx.input(stage, ids.enhance(s.arm, s.mask_lang)).file("delta.safetensors"))
        modified = apply_delta(lm.model, delta)
    label = (f"lm-eval {s.task['name']} {s.arm or 'base'}" + (f" draw {s.draw}" if s.draw else "")
             + (f" {s.mask_lang}" if s.mask_lang else ""))
    with ctx.progress(label, total=None), deactivate(lm.model, neurons), modified:
        result = run_task(lm.model, lm.tokenizer, s.task["name"], yaml_path=Path(s.task["yaml"]) if s.task["yaml"] else None,
                          corpus_docs=docs, limit=s.limit, num_fewshot=s.num_fewshot, max_length=s.max_length, metric_name=s.metric_name,
                          batch_size=s.batch_size, bootstrap=s.bootstrap, seed=s.seed)
    write_json(out / "result.json", {**result.to_dict(), "kind": "lm_eval", "lang": s.lang, "seed": s.seed, "docs": result.n,
                                     **result.headline().model_dump(mode="json"), "deactivated": neurons.count()})


#: kinds whose results are evaluation cells (rows = arms, columns = languages) in reports and diffs
EVAL_KINDS = ("eval", "eval.lm_eval")

KINDS: dict[str, Kind] = {
    "corpus": Kind(CorpusStage, corpus, "materialise and sample documents"),
    "stats.plnd": Kind(PlndStats, stats_plnd, "PLND importance statistics (one forward pass)", loads_model=True,
                       data_parallel=True),
    "select.plnd": Kind(PlndSelect, select_plnd, "threshold ε → language-relevant neurons"),
    "stats.act": Kind(ActStats, stats_act, "activation statistics (one forward pass)", loads_model=True, data_parallel=True),
    "select.lape": Kind(LapeSelect, select_lape, "LAPE language-specific neurons"),
    "select.linguafranca": Kind(LinguaFrancaSelect, select_linguafranca,
                                "LinguaFranca similarity, LRDS/SADS, key linguistic regions"),
    "select.sharing": Kind(SharingSelect, select_sharing, "Sharing Matters neuron categories"),
    "attr.sharing": Kind(SharingAttribution, attr_sharing,
                         "attribution of the output to ffn neurons (Integrated Gradients or |a|·‖W_down‖)",
                         loads_model=True, data_parallel=False),
    "logit_lens": Kind(LogitLens, logit_lens, "logit lens: language of each layer's top tokens", loads_model=True),
    "sets": Kind(Sets, sets, "named neuron sets (set algebra)"),
    "mask": Kind(Mask, mask, "an arm's neurons per language"),
    "enhance": Kind(Enhance, enhance, "fine-tune only an arm's neurons → a delta", loads_model=True),
    "eval": Kind(Evaluation, evaluate, "evaluate the model (arm deactivated)", loads_model=True, data_parallel=True),
    "eval.lm_eval": Kind(LmEvalStage, evaluate_lm_eval, "an lm-evaluation-harness task on the model (arm applied)",
                         loads_model=True),
}
