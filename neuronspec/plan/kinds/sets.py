"""Named neuron sets (set algebra over the detectors' sets) and each arm's mask."""

from __future__ import annotations

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
    imports: dict[str, ImportedSet]


def sets(ctx: Context, stage: Stage, s: Sets, out: Path) -> None:
    from neuronspec.methods.sets import evaluate_sets
    from neuronspec.models.masks import NeuronSet

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
        else:
            value.save(out / artifacts.set_file(name))
            summary[name] = {"family": False, "counts": value.per_layer_counts(), "empty": value.count() == 0}
    write_json(out / artifacts.RESULT, jsonable(summary))


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
        for i, lang in enumerate(langs if family else [None]):
            matched = load_set(target, artifacts.MASK, lang)
            chosen = (matched.random_like(dims, seed=s.seed + 1000 * i, exclude=matched) if pool is None
                      else matched.random_pooled(dims, seed=s.seed + 1000 * i, layers=pool, exclude=matched))
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
            chosen = chosen.subsample(s.count, seed=(s.seed or 0) + 1000 * i)
        _save_mask(out, summary, chosen, lang)
    write_json(out / artifacts.RESULT, {"family": family, "counts": jsonable(summary)})


def _save_mask(out: Path, summary: dict[str, Any], ns: Any, lang: str | None) -> None:
    ns.save(out / artifacts.set_file(artifacts.MASK, lang))
    summary[lang or "*"] = {"total": ns.count(), "per_layer": ns.per_layer_counts()}
