"""LAPE on constructed probability tables, against a direct implementation of the definition."""

from __future__ import annotations

import math

import pytest
import torch

from neuronspec.methods.activations import ActivationStats
from neuronspec.methods.lape import (
    activation_probabilities,
    entropy,
    lape,
    quantile_value,
)


def _direct(probs: torch.Tensor, langs, top_rate, q_filter, q_assign):
    n, L, W = probs.shape
    values = sorted(float(v) for v in probs.flatten())
    kth = lambda q: values[min(max(round(len(values) * q), 1), len(values)) - 1]  # noqa: E731
    bar_f, bar_a = kth(q_filter), kth(q_assign)
    rows = []
    for l in range(L):
        for j in range(W):
            ps = [float(probs[i, l, j]) for i in range(n)]
            if max(ps) <= bar_f:
                continue
            tot = sum(ps)
            h = -sum(p / tot * math.log(p / tot) for p in ps if p > 0)
            rows.append((h, l, j))
    rows.sort()
    keep = rows[:round(L * W * top_rate)]
    out = {lang: set() for lang in langs}
    for _, l, j in keep:
        for i, lang in enumerate(langs):
            if float(probs[i, l, j]) > bar_a:
                out[lang].add((l, j))
    return out


def _pairs(neuron_set):
    return {(l, int(j)) for _, l, idx in neuron_set.items() for j in idx}


def test_constructed_table() -> None:
    langs = ["en", "zh", "fr"]
    L, W = 2, 50
    probs = torch.full((3, L, W), 0.3)
    probs += torch.linspace(0, 0.05, L * W).view(1, L, W)  # distinct background
    probs[1, 0, 7] = 0.95  # zh-specific: lowest entropy
    probs[2, 1, 3] = 0.9  # fr-specific
    probs[0, 0, 20] = probs[2, 0, 20] = 0.91  # en+fr shared: medium entropy
    probs[:, 1, 10] = 0.93  # active in every language: eligible, highest entropy, not kept
    probs[:, 1, 30:34] = 0.8  # 12 more high values so the 95% quantile lands on them
    # 300 values, 281 background: the 285th smallest (k = round(300 * 0.95)) is 0.8, so
    # "max p > 0.8" leaves exactly the four neurons above
    res = lape(probs, langs, top_rate=0.03)  # keep 3 of 100 neurons
    assert res.filter_value == pytest.approx(0.8) and res.assign_value == pytest.approx(0.8)
    assert res.requested == 3 and res.candidates == 4
    assert res.selected.tolist() == [[0, 7], [1, 3], [0, 20]]  # ascending entropy
    assert _pairs(res.sets["zh"]) == {(0, 7)}
    assert _pairs(res.sets["fr"]) == {(1, 3), (0, 20)}
    assert _pairs(res.sets["en"]) == {(0, 20)}
    assert res.sets["zh"].to_dict() == {"ffn": {0: [7]}}
    assert float(res.entropy[1, 10]) == pytest.approx(math.log(3), abs=1e-6)


def test_matches_direct_definition_on_random_tables() -> None:
    torch.manual_seed(0)
    langs = ["en", "zh", "fr", "es"]
    for trial in range(3):
        probs = torch.rand(4, 3, 40) ** 3
        probs[:, 0, :5] = 0.0  # never-active neurons: NaN-free entropy, filtered out
        res = lape(probs, langs, top_rate=0.05, filter_quantile=0.9, assign_quantile=0.8)
        direct = _direct(probs, langs, 0.05, 0.9, 0.8)
        assert {l: _pairs(s) for l, s in res.sets.items()} == direct
        assert not torch.isnan(res.entropy).any()


def test_probabilities_from_stats_and_quantile_rule() -> None:
    assert quantile_value(torch.arange(1.0, 101.0), 0.95) == 95.0
    t = lambda c: ActivationStats(num_layers=1, width=2, hidden=4, n_samples=1, tokens=10,  # noqa: E731
                                  sample_tokens=torch.tensor([10]), thresholds=(0.0,),
                                  counts=torch.tensor([[[c, 5]]]), gate_counts=torch.tensor([[10 - c, 1]]))
    langs, p = activation_probabilities({"en": t(2), "zh": t(4)})
    assert langs == ["en", "zh"] and p[:, 0, 0].tolist() == [0.8, 0.6]
    _, p = activation_probabilities({"en": t(2), "zh": t(4)}, event="neuron")
    assert p[:, 0].tolist() == [[0.2, 0.5], [0.4, 0.5]]
    assert torch.allclose(entropy(torch.tensor([[[1.0]], [[0.0]]])), torch.zeros(1, 1, dtype=torch.float64))
