"""Magnitude-matched random controls: per layer, as many random neurons in each magnitude bin as
the set has there. Bins are recomputed here from a stable argsort, not from `score_bins`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronspec.models.masks import NeuronSet, score_bins
from neuronspec.models.sites import Dims

DIMS = Dims(num_layers=3, hidden=16, intermediate=40, heads=2, kv_heads=2, head_dim=8)


def _bins(scores: torch.Tensor, bins: int) -> np.ndarray:
    order = np.argsort(scores.numpy(), kind="stable")
    out = np.empty(len(order), dtype=np.int64)
    for rank, i in enumerate(order):
        out[i] = rank * bins // len(order)
    return out


def _scores(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(DIMS.num_layers, DIMS.intermediate, generator=g).pow(3)  # skewed, like activation magnitudes


def test_draws_match_the_sets_count_in_every_magnitude_bin_and_avoid_the_set() -> None:
    scores = _scores()
    # the set sits mostly among the strongest neurons of each layer (as all-shared neurons do)
    # (4 bins of 10 neurons: every bin has room for a disjoint draw)
    top = {layer: torch.argsort(scores[layer], descending=True)[:5] for layer in range(3)}
    ns = NeuronSet.from_dict({"ffn": {0: top[0].tolist(), 1: top[1][:4].tolist() + [0, 1], 2: top[2][:1].tolist()}})
    drawn = ns.random_matched(DIMS, seed=7, scores={"ffn": scores}, bins=4, exclude=ns)
    for layer in range(3):
        want = np.bincount(_bins(scores[layer], 4)[ns.indices("ffn", layer).numpy()], minlength=4)
        got = np.bincount(_bins(scores[layer], 4)[drawn.indices("ffn", layer).numpy()], minlength=4)
        assert got.tolist() == want.tolist(), layer
        assert not set(drawn.indices("ffn", layer).tolist()) & set(ns.indices("ffn", layer).tolist())
    assert drawn.per_layer_counts() == ns.per_layer_counts()
    # a count-only control ignores magnitude: in the top bin it falls short of the set (the test can fail)
    plain = ns.random_like(DIMS, seed=7, exclude=ns)
    assert np.bincount(_bins(scores[0], 4)[plain.indices("ffn", 0).numpy()], minlength=4)[3] < 5


def test_draws_are_seeded() -> None:
    scores = _scores(1)
    ns = NeuronSet.from_dict({"ffn": {0: [1, 2, 3, 20], 2: [5, 6, 30, 31, 39]}})
    a = ns.random_matched(DIMS, seed=3, scores={"ffn": scores}, bins=4, exclude=ns)
    assert a == ns.random_matched(DIMS, seed=3, scores={"ffn": scores}, bins=4, exclude=ns)
    assert any(a != ns.random_matched(DIMS, seed=s, scores={"ffn": scores}, bins=4, exclude=ns) for s in (4, 5, 6))


def test_a_full_bin_takes_the_rest_from_the_set_itself_and_other_sites_are_refused() -> None:
    scores = _scores(2)
    top_bin = torch.argsort(scores[0], descending=True)[:8]  # 40 neurons / 5 bins: the whole top bin
    ns = NeuronSet.from_dict({"ffn": {0: top_bin.tolist()}})
    drawn = ns.random_matched(DIMS, seed=0, scores={"ffn": scores}, bins=5, exclude=ns)
    assert drawn == ns  # nothing else lies in that bin
    with pytest.raises(ValueError, match="no magnitudes for site attn.o"):
        NeuronSet.from_dict({"attn.o": {0: [1]}}).random_matched(DIMS, seed=0, scores={"ffn": scores}, bins=5)


def test_score_bins_are_equal_size_rank_bins() -> None:
    s = torch.tensor([0.5, 0.1, 0.1, 0.9, 0.3, 0.7])
    assert score_bins(s, 3).tolist() == _bins(s, 3).tolist() == [1, 0, 0, 2, 1, 2]
    with pytest.raises(ValueError, match="bins must lie in 1..6"):
        score_bins(s, 7)
