"""LAPE — Language Activation Probability Entropy (Tang et al. 2024).

For every ffn neuron and language l, p_l = P(activation > 0) over the tokens of l's
corpus (from the token counts of :func:`~neuronspec.methods.activations.activation_statistics`).

1. normalise the n probabilities of a neuron to a distribution p̃_l = p_l / Σ p, and take
   its entropy H = −Σ p̃ log p̃ (0·log 0 = 0; a neuron never active has H = 0 but is
   dropped by step 2);
2. drop neurons whose largest p is not above the ``filter_quantile`` (0.95) value of all
   probabilities (every neuron × language);
3. keep the ``top_rate`` (1%) of *all* neurons with the lowest entropy among those left;
4. assign each kept neuron to every language whose p exceeds the ``assign_quantile``
   (0.95) value of all probabilities.

Quantiles use the paper's convention: the k-th smallest value with k = round(N·q).
Ties in entropy are broken by position (layer, then index) so results are deterministic.

Which event "activation > 0" means is the caller's choice: the paper hooks act_fn(gate·x)
on gated MLPs (``ActivationStats.gate_probability()``); the tool's ``ffn`` neuron, the
input of the down projection, is ``ActivationStats.probability(0.0)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from neuronspec.methods.activations import ActivationStats
from neuronspec.models.masks import NeuronSet


def activation_probabilities(stats: Mapping[str, ActivationStats], *, event: Literal["gate", "neuron"] = "gate",
                             tau: float = 0.0) -> tuple[list[str], Tensor]:
    """(languages, p [n_lang, L, I] float64) from one statistics pass per language."""
    langs = list(stats)
    if event == "gate":
        probs = [stats[l].gate_probability() for l in langs]
    elif event == "neuron":
        probs = [stats[l].probability(tau) for l in langs]
    else:
        raise ValueError(f"event must be 'gate' or 'neuron', got {event!r}")
    return langs, torch.stack(probs)


def quantile_value(values: Tensor, q: float) -> float:
    """The k-th smallest of `values` with k = round(N·q), clamped to [1, N] (the paper's kthvalue rule)."""
    flat = values.flatten().double()
    if flat.numel() == 0:
        raise ValueError("no values")
    k = min(max(round(flat.numel() * q), 1), flat.numel())
    return float(flat.kthvalue(k).values)


def entropy(probs: Tensor) -> Tensor:
    """Entropy of each neuron's probabilities normalised across languages, [L, I] (probs [n_lang, L, I])."""
    p = probs.double()
    total = p.sum(0, keepdim=True)
    dist = torch.where(total > 0, p / total.clamp_min(1e-300), torch.zeros_like(p))
    logs = torch.where(dist > 0, dist.log(), torch.zeros_like(dist))
    return -(dist * logs).sum(0)


@dataclass
class LapeResult:
    languages: list[str]
    sets: dict[str, NeuronSet]
    entropy: Tensor  # [L, I]
    filter_value: float
    assign_value: float
    requested: int  # round(top_rate * neurons)
    candidates: int  # neurons that pass the filter
    selected: Tensor  # [k, 2] (layer, index) of the kept neurons, lowest entropy first

    def to_json(self) -> dict[str, Any]:
        return {"languages": self.languages, "filter_value": self.filter_value, "assign_value": self.assign_value,
                "requested": self.requested, "candidates": self.candidates, "selected": int(self.selected.shape[0]),
                "counts": {l: s.count() for l, s in self.sets.items()},
                "per_layer": {l: s.per_layer_counts().get("ffn", {}) for l, s in self.sets.items()}}

    def to_tensors(self) -> dict[str, Tensor]:
        return {"entropy": self.entropy.contiguous(), "selected": self.selected.contiguous()}


def lape(probs: Tensor, languages: Sequence[str], *, top_rate: float = 0.01, filter_quantile: float = 0.95,
         assign_quantile: float = 0.95) -> LapeResult:
    """Language-specific neurons by activation-probability entropy; probs [n_lang, L, I]."""
    if probs.dim() != 3 or probs.shape[0] != len(languages):
        raise ValueError(f"need probabilities [n_lang={len(languages)}, L, I], got {tuple(probs.shape)}")
    if not 0 < top_rate <= 1:
        raise ValueError(f"top_rate must be in (0, 1], got {top_rate}")
    n, layers, width = probs.shape
    p = probs.double()
    h = entropy(p)
    filter_value = quantile_value(p, filter_quantile)
    assign_value = quantile_value(p, assign_quantile)
    eligible = (p > filter_value).any(0).flatten()
    requested = round(layers * width * top_rate)
    flat_h = h.flatten()
    candidates = eligible.nonzero().flatten()
    # stable sort by entropy keeps ties in (layer, index) order
    order = candidates[torch.sort(flat_h[candidates], stable=True).indices]
    keep = order[:requested]
    selected = torch.stack([keep // width, keep % width], dim=1)
    assigned = p.view(n, -1)[:, keep] > assign_value  # [n_lang, k]
    sets = {}
    for li, lang in enumerate(languages):
        mine = keep[assigned[li]]
        sets[lang] = NeuronSet.from_dict({"ffn": {int(l): mine[mine // width == l] % width for l in torch.unique(mine // width)}})
    return LapeResult(list(languages), sets, h.float(), filter_value, assign_value, requested,
                      int(candidates.numel()), selected)
