"""Split-half stability of neuron sets: how much of a set survives a change of documents.

The detection documents of each language are split once, by a seeded permutation, into two
disjoint halves; detection runs on each half as it runs on all of them (PLND: the half's own
∀-document minima and its own ε), and a set's stability is the Jaccard overlap of its two
halves' sets. A set that a method finds reliably overlaps strongly with itself; one that is
mostly sampling noise does not — a number a single detection cannot show.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from neuronspec.models.masks import NeuronSet

HALVES = 2


def split_halves(n: int, seed: int) -> list[int]:
    """Half (0 or 1) of each of `n` documents: a seeded permutation, its first ⌊n/2⌋ in half 0."""
    order = np.random.default_rng(seed).permutation(n)
    half = [1] * n
    for i in order[: n // 2]:
        half[int(i)] = 0
    return half


@dataclass(frozen=True)
class HalfAgreement:
    """One set's two halves: their sizes and their Jaccard overlap (None when both are empty)."""

    jaccard: float | None
    size_a: int
    size_b: int

    def to_json(self) -> dict[str, float | int | None]:
        return {"jaccard": self.jaccard, "size_a": self.size_a, "size_b": self.size_b}


def agreement(a: NeuronSet, b: NeuronSet) -> HalfAgreement:
    na, nb = a.count(), b.count()
    return HalfAgreement(a.jaccard(b) if na or nb else None, na, nb)


def family_agreement(a: Mapping[str, NeuronSet], b: Mapping[str, NeuronSet]) -> dict[str, HalfAgreement]:
    """Per language of either half, the agreement of its two sets (a language missing from one half: empty)."""
    return {lang: agreement(a.get(lang, NeuronSet.empty()), b.get(lang, NeuronSet.empty()))
            for lang in dict.fromkeys([*a, *b])}
