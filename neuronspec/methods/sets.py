"""Evaluate named neuron-set expressions (see `neuronspec.spec.setexpr`) over NeuronSets.

An environment maps names to a *family* (dict language → NeuronSet) or a single
NeuronSet. Families come from detectors; an expression that uses `[lang]`/`[others]`
is evaluated once per study language and yields a family.
"""

from __future__ import annotations

from functools import reduce
from typing import Union

from neuronspec.models.masks import NeuronSet
from neuronspec.spec.setexpr import Expr, Ref, parse, refs, uses_template

Family = dict[str, NeuronSet]
Value = Union[Family, NeuronSet]


def _union(sets: list[NeuronSet]) -> NeuronSet:
    return reduce(lambda a, b: a | b, sets, NeuronSet.empty())


def _intersection(sets: list[NeuronSet]) -> NeuronSet:
    return reduce(lambda a, b: a & b, sets) if sets else NeuronSet.empty()


def _ref(ref: Ref, env: dict[str, Value], lang: str | None, languages: list[str]) -> NeuronSet:
    value = env[ref.name]
    if isinstance(value, NeuronSet):
        return value
    sel = ref.selector
    if sel in ("lang", "others") and lang is None:
        raise ValueError(f"{ref.name}[{sel}] needs a language")
    if sel == "lang":
        return value.get(lang, NeuronSet.empty())  # type: ignore[arg-type]
    if sel == "all":
        return _intersection([value.get(x, NeuronSet.empty()) for x in languages])
    if sel == "any":
        return _union([value.get(x, NeuronSet.empty()) for x in languages])
    if sel == "others":
        return _union([value.get(x, NeuronSet.empty()) for x in languages if x != lang])
    if sel is None:
        raise ValueError(f"{ref.name!r} has one set per language: pick one with a [selector]")
    return value.get(sel, NeuronSet.empty())


def _eval(node: Expr, env: dict[str, Value], lang: str | None, languages: list[str]) -> NeuronSet:
    if isinstance(node, Ref):
        return _ref(node, env, lang, languages)
    left, right = _eval(node.left, env, lang, languages), _eval(node.right, env, lang, languages)
    return {"|": left | right, "&": left & right, "-": left - right}[node.op]


def evaluate_sets(expressions: dict[str, str], env: dict[str, Value], languages: list[str]) -> dict[str, Value]:
    """Evaluate `expressions` (already in dependency order) on top of `env`; returns the new sets."""
    env = dict(env)
    out: dict[str, Value] = {}
    for name, text in expressions.items():
        tree = parse(text)
        families = {n for n, v in env.items() if isinstance(v, dict)}
        if uses_template(tree, families):
            out[name] = {lang: _eval(tree, env, lang, languages) for lang in languages}
        else:
            out[name] = _eval(tree, env, None, languages)
        env[name] = out[name]
    return out


def built_from(expressions: dict[str, str], base: set[str]) -> list[str]:
    """The named sets (in evaluation order) whose every reference leads back to `base` alone —
    those that can be re-evaluated from other versions of the `base` sets (e.g. one half's)."""
    known, out = set(base), []
    for name, text in expressions.items():
        if all(r.name in known for r in refs(parse(text))):
            known.add(name)
            out.append(name)
    return out
