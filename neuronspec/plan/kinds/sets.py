"""Named neuron sets (set algebra over the detectors' sets) and each arm's mask."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from neuronspec.fileio import write_json
from neuronspec.plan import ids
from neuronspec.plan.graph import Stage
from pydantic import model_validator

from neuronspec.plan.kinds import artifacts
from neuronspec.plan.kinds.base import Context, StageSpec, jsonable, load_set


class SetFileRef(StageSpec):
    """One file of an imported set: where it is, and the digest of the content it had when planned."""

    path: str
    sha256: str


class ImportedSet(StageSpec):
    """A named set read from a file (`neurons: {NAME: {file: PATH}}`), or one file per language."""

    family: bool
    files: dict[str, SetFileRef]  # language → file for a family; "*" → the file of a single set


class Sets(StageSpec):
    neurons: dict[str, str]  # name → set expression, in evaluation order
    order: list[str]
    families: list[str]
    detectors: list[str]
    singles: list[str]
    languages: list[str]
    halves: list[str] = []  # detectors that also selected on each half of the documents (split-half stability)
    imports: dict[str, ImportedSet]


def sets(ctx: Context, stage: Stage, s: Sets, out: Path) -> None:
    from neuronspec.methods.sets import evaluate_sets
    from neuronspec.models.masks import NeuronSet
    from neuronspec.report.neurons import expert_counts, layout_of

    env: dict[str, Any] = {}
    for det in s.detectors:
        entry = ctx.input(stage, ids.select(det))
        env[det] = {lang: NeuronSet.load(entry.file(artifacts.set_file(det, lang))) for lang in s.languages
                    if entry.file(artifacts.set_file(det, lang)).exists()}
    for single in s.singles:
        det = single.split(".", 1)[0]
        env[single] = NeuronSet.load(ctx.input(stage, ids.select(det)).file(artifacts.set_file(single)))
    for name, imp in s.imports.items():
        found = {lang: _read_import(ctx, ref) for lang, ref in imp.files.items()}
        env[name] = found if imp.family else found["*"]
    named = evaluate_sets(s.neurons, env, s.languages)
    layout = layout_of(ctx.plan.dims)  # a mixture-of-experts model: each set's ffn neurons per expert too

    def per_expert(ns: NeuronSet) -> dict[str, Any]:
        return {} if layout is None else {"experts": expert_counts(ns, layout)}

    summary: dict[str, Any] = {}
    for name, value in {**env, **named}.items():
        if isinstance(value, dict):
            for lang, ns in value.items():
                ns.save(out / artifacts.set_file(name, lang))
            # the overlap of two empty sets is undefined (None), not 1.0
            summary[name] = {"family": True, "counts": {lang: ns.per_layer_counts() for lang, ns in value.items()},
                             "empty": [lang for lang, ns in value.items() if ns.count() == 0],
                             "jaccard": {a: {b: value[a].jaccard(value[b]) if value[a].count() or value[b].count()
                                             else None for b in value} for a in value}}
            if layout is not None:
                summary[name]["experts"] = {lang: expert_counts(ns, layout) for lang, ns in value.items()}
        else:
            value.save(out / artifacts.set_file(name))
            summary[name] = {"family": False, "counts": value.per_layer_counts(), "empty": value.count() == 0,
                             **per_expert(value)}
    for name, agreement in _stability(ctx, stage, s).items():
        summary[name]["stability"] = agreement
    write_json(out / artifacts.RESULT, jsonable(summary))


def _stability(ctx: Context, stage: Stage, s: Sets) -> dict[str, dict[str, Any]]:
    """Per set that the half-split detectors determine alone (they, and named sets built only from
    them): per language ("*" for one set), its two halves' sizes and Jaccard overlap."""
    from neuronspec.methods.sets import built_from, evaluate_sets
    from neuronspec.methods.stability import HALVES, agreement, family_agreement
    from neuronspec.models.masks import NeuronSet

    if not s.halves:
        return {}
    derived = {n: s.neurons[n] for n in built_from(s.neurons, set(s.halves))}
    per_half = []
    for h in range(HALVES):
        env: dict[str, Any] = {}
        for det in s.halves:
            entry = ctx.input(stage, ids.select(det))
            files = {lang: entry.file(artifacts.half_set_file(det, h, lang)) for lang in s.languages}
            env[det] = {lang: NeuronSet.load(f) for lang, f in files.items() if f.exists()}
        per_half.append({**env, **evaluate_sets(derived, env, s.languages)})
    out: dict[str, dict[str, Any]] = {}
    for name, a in per_half[0].items():
        b = per_half[1][name]
        pairs = family_agreement(a, b) if isinstance(a, dict) else {"*": agreement(a, b)}
        out[name] = {lang: ag.to_json() for lang, ag in pairs.items()}
    return out


def _read_import(ctx: Context, ref: SetFileRef) -> Any:
    """The set of an imported file, which must still hold what it held when the study was planned."""
    from neuronspec.models.masks import NeuronSet
    from neuronspec.setfiles import read_set_file

    found = read_set_file(ref.path, ctx.plan.dims)
    if found.sha256 != ref.sha256:
        raise ValueError(f"{ref.path} changed since the study was planned: plan or run it again")
    return NeuronSet.from_dict(found.neurons)


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
    scope: str | None = None  # random_like: None (per site and layer), "partition" (from `layers`) or "all"
    count: int | None = None  # a named set: keep this many, a seeded subsample
    match_bins: int | None = None  # random_like matched by magnitude: quantile bins of the deps' mean |activation|
    ffn_blocks: list[int] | None = None  # a mixture of experts: each expert's first ffn neuron, then the width
    seed: int | None = None
    dims: ModelDims | None = None

    @model_validator(mode="after")
    def _one_form(self) -> "Mask":
        if (self.neurons is None) == (self.random_like is None) or (self.random_like is not None) != (self.dims is not None):
            raise ValueError("a mask names `neurons`, or `random_like` with `dims` and `seed`")
        return self


def mask(ctx: Context, stage: Stage, s: Mask, out: Path) -> None:
    from neuronspec.models.sites import Dims

    langs = ctx.study.languages
    summary: dict[str, Any] = {}
    if s.random_like is not None:
        target = ctx.input(stage, ids.mask(s.random_like))
        dims = Dims(**s.dims.model_dump())
        family = target.json()["family"]
        pool = (range(dims.num_layers) if s.scope == "all" else
                sorted({i for start, end in s.layers or [] for i in range(start, end)}) if s.scope == "partition" else None)
        scores = _magnitudes(ctx, stage) if s.match_bins is not None else None
        for i, lang in enumerate(langs if family else [None]):
            matched = load_set(target, artifacts.MASK, lang)
            seed = s.seed + 1000 * i
            chosen = (matched.random_matched(dims, seed, scores, s.match_bins, exclude=matched) if scores is not None
                      else matched.random_like(dims, seed=seed, exclude=matched,
                                               blocks={"ffn": s.ffn_blocks} if s.ffn_blocks else None) if pool is None
                      else matched.random_pooled(dims, seed=seed, layers=pool, exclude=matched))
            _save_mask(out, summary, chosen, lang)
        write_json(out / artifacts.RESULT, {"family": family, "counts": jsonable(summary)})
        return
    entry = ctx.input(stage, ids.SETS)
    family = entry.json()[s.neurons]["family"]
    layers = None
    if s.layers:
        layers = sorted({i for start, end in s.layers for i in range(start, end)})
    for i, lang in enumerate(langs if family else [None]):
        chosen = load_set(entry, s.neurons, lang).restrict(layers=layers, sites=s.sites)
        if s.count is not None:
            if 0 < chosen.count() < s.count:  # equal counts are the point of `count` (an empty set is reported as such)
                warnings.warn(f"{stage.id}: {lang or 'the'} set has {chosen.count()} neurons in these layers/sites, "
                              f"fewer than count {s.count}: the arm keeps all of them", stacklevel=1)
            chosen = chosen.subsample(s.count, seed=(s.seed or 0) + 1000 * i)
        _save_mask(out, summary, chosen, lang)
    write_json(out / artifacts.RESULT, {"family": family, "counts": jsonable(summary)})


def _magnitudes(ctx: Context, stage: Stage) -> dict[str, Any]:
    """{"ffn": [layers, width]}: each ffn neuron's mean |activation|, averaged over the items of every
    language of the activation passes this mask depends on (each item weighs the same)."""
    import torch

    from neuronspec.plan.kinds.activations import load_activations

    stats, _ = load_activations(ctx, stage)
    if not stats:
        raise ValueError(f"{stage.id}: a magnitude-matched control needs activation statistics")
    return {"ffn": torch.stack([st.per_layer("mean_abs").double().mean(0) for st in stats.values()]).mean(0)}


def _save_mask(out: Path, summary: dict[str, Any], ns: Any, lang: str | None) -> None:
    ns.save(out / artifacts.set_file(artifacts.MASK, lang))
    summary[lang or "*"] = {"total": ns.count(), "per_layer": ns.per_layer_counts()}
