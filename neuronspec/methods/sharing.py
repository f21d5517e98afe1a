"""Sharing Matters (Wang et al. 2024): which ffn neurons are shared by all, some, one or no language.

Input: per-item activations of a parallel corpus, one matrix [items, L*I] per language
(row i = item i in every language; layer-major columns): a pooled matrix of
:func:`neuronspec.methods.activations.activation_statistics`, chosen by the *event* that
counts as "activated" (:data:`neuronspec.spec.detection.SHARING_EVENTS`):

* ``reference`` (default) — the MLP nonlinearity's output act(gate·x) at the item's last token
  exceeds τ: what the paper's released notebooks threshold (they trace BLOOM's ``gelu_impl``,
  whose output is the down projection's input there, and keep the prompt's last token);
* ``gate`` — the token mean of act(gate·x) exceeds τ (the gate alone, over the whole item);
* ``magnitude`` — the token mean of |neuron| (the down projection's input, act(gate·x)·(up·x) on
  gated MLPs) exceeds τ — positive for nearly every neuron at τ = 0, so it needs τ > 0;
* ``signed_mean`` — the token mean of the signed neuron exceeds τ (this module's earlier event:
  on gated MLPs the product is positive about half the time whatever the language).

For each item, a neuron is *activated* in a language when its event holds. Across the
n languages it is then

* ``all_shared``     activated in every language,
* ``partial_shared`` activated in 2 … n−1 languages,
* ``specific``       activated in exactly one language,
* ``non_activated``  activated in none.

Shares are fractions of a layer's neurons in each category, averaged over items (and over
all layers for "overall"). The all-shared *set* used by the deactivation arm collects the
neurons that are all-shared for at least ``min_fraction`` of the items.

How much of the output each category accounts for: :func:`item_categories` gives the
per-item category of every neuron for the attributed items, and
:func:`attribution_by_category` splits per-item attributions (Integrated Gradients or the
cheap score of :mod:`neuronspec.methods.attribution`) over the categories — each
category's share of the |attribution| mass, overall and per layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from neuronspec.models.masks import NeuronSet

CATEGORIES: tuple[str, ...] = ("all_shared", "partial_shared", "specific", "non_activated")
_ITEM_CHUNK = 64
_COLORS = {"all_shared": "#1b7837", "partial_shared": "#7fbf7b", "specific": "#af8dc3", "non_activated": "#d9d9d9"}


def stack_languages(by_language: Mapping[str, Tensor] | Tensor) -> tuple[Tensor, list[str] | None]:
    """[n_lang, items, D] from a mapping of [items, D] matrices (or a tensor passed through)."""
    if isinstance(by_language, Tensor):
        acts, langs = by_language, None
    else:
        langs = list(by_language)
        shapes = {tuple(by_language[l].shape) for l in langs}
        if len(shapes) != 1:
            raise ValueError(f"a parallel corpus needs one [items, D] shape for every language, got {sorted(shapes)}")
        acts = torch.stack([by_language[l] for l in langs])
    if acts.dim() != 3 or acts.shape[0] < 2:
        raise ValueError(f"need activations [languages >= 2, items, D], got {tuple(acts.shape)}")
    return acts, langs


def categorize(acts: Tensor, tau: float = 0.0) -> Tensor:
    """Category code per (item, neuron), [items, D] int8: index into :data:`CATEGORIES`."""
    n = acts.shape[0]
    k = (acts > tau).sum(0)
    code = torch.full(k.shape, 1, dtype=torch.int8)  # partial by default
    code[k == n] = 0
    code[k == 1] = 2
    code[k == 0] = 3
    return code


def item_categories(by_language: Mapping[str, Tensor] | Tensor, items: Sequence[int] | None = None,
                    tau: float = 0.0) -> Tensor:
    """Category code per (item, neuron) for a subset of the items, [len(items), D] int8
    (:func:`categorize` of those rows; all items when `items` is None)."""
    acts, _ = stack_languages(by_language)
    if items is not None:
        acts = acts[:, torch.as_tensor(list(items), dtype=torch.int64)]
    return categorize(acts, tau)


def attribution_by_category(codes: Tensor, attributions: Tensor, layers: Sequence[int]) -> dict[str, Any]:
    """How the |attribution| mass splits over the categories, overall and per layer.

    `codes` [items, L*I] are :func:`item_categories` (layer-major columns); `attributions`
    [items, len(layers), I] — or [n_lang, items, len(layers), I], pooled over languages — hold
    each item's attribution to the neurons of the attributed `layers`. Per category: ``share``
    of Σ|attribution| (the shares sum to 1), ``mean_abs`` |attribution| per (language, item,
    neuron) in the category (None when empty), signed ``mean``, and ``count`` of (item, neuron)
    pairs in the category (per language). The same per layer (share of that layer's mass).
    """
    a = attributions.double()
    if a.dim() == 3:
        a = a[None]
    if a.dim() != 4:
        raise ValueError(f"attributions must be [items, layers, I] or [languages, items, layers, I], got {tuple(attributions.shape)}")
    n_lang, items, n_layers, width = a.shape
    if codes.shape[0] != items or codes.shape[1] % width:
        raise ValueError(f"categories {tuple(codes.shape)} do not match attributions {tuple(attributions.shape)}")
    if len(layers) != n_layers:
        raise ValueError(f"{len(layers)} layers named for attributions of {n_layers}")
    c = codes.view(items, -1, width)[:, torch.as_tensor(list(layers), dtype=torch.int64)].long()  # [items, layers, I]
    onehot = torch.stack([c == i for i in range(len(CATEGORIES))]).double()  # [4, items, layers, I]
    mass = torch.einsum("citk,litk->ct", onehot, a.abs())  # [4, layers]
    signed = torch.einsum("citk,litk->ct", onehot, a)
    count = onehot.sum((1, 3))  # [4, layers] (item, neuron) pairs

    def summary(m: Tensor, s: Tensor, n: Tensor) -> dict[str, Any]:
        total = float(m.sum())
        return {"share": [float(x) / total if total > 0 else 0.0 for x in m],
                "mean_abs": [float(x) / (n_lang * float(k)) if k > 0 else None for x, k in zip(m, n)],
                "mean": [float(x) / (n_lang * float(k)) if k > 0 else None for x, k in zip(s, n)],
                "count": [int(k) for k in n]}

    overall = summary(mass.sum(1), signed.sum(1), count.sum(1))
    per_layer = [summary(mass[:, j], signed[:, j], count[:, j]) for j in range(n_layers)]
    return {"categories": list(CATEGORIES), "layers": [int(l) for l in layers], "items": items, "languages": n_lang,
            "total_abs": float(mass.sum()),
            "overall": {cat: {k: v[i] for k, v in overall.items()} for i, cat in enumerate(CATEGORIES)},
            "per_layer": {cat: {k: [p[k][i] for p in per_layer] for k in ("share", "mean_abs", "count")}
                          for i, cat in enumerate(CATEGORIES)}}


def category_frequency(acts: Tensor, tau: float = 0.0) -> tuple[Tensor, Tensor]:
    """How many items put each neuron in each category, [4, D], and per-language specific
    counts [n_lang, D] (items where the neuron is active in that language only). Chunked over items."""
    acts, _ = stack_languages(acts)
    n, items, d = acts.shape
    freq = torch.zeros(len(CATEGORIES), d, dtype=torch.int64)
    spec = torch.zeros(n, d, dtype=torch.int64)
    for s in range(0, items, _ITEM_CHUNK):
        active = acts[:, s:s + _ITEM_CHUNK] > tau  # [n, c, D]
        k = active.sum(0)  # [c, D]
        freq[0] += (k == n).sum(0)
        freq[1] += ((k > 1) & (k < n)).sum(0)
        freq[2] += (k == 1).sum(0)
        freq[3] += (k == 0).sum(0)
        spec += (active & (k == 1)[None]).sum(1)
    return freq, spec


def shares_from_frequency(freq: Tensor, num_layers: int, items: int) -> dict[str, Any]:
    """{"overall": {category: share}, "per_layer": {category: [L]}} from :func:`category_frequency`."""
    d = freq.shape[1]
    if d % num_layers:
        raise ValueError(f"{d} columns do not split into {num_layers} layers")
    per_layer = freq.view(len(CATEGORIES), num_layers, d // num_layers).sum(-1).double() / (items * (d // num_layers))
    overall = freq.sum(-1).double() / (items * d)
    return {"overall": {c: float(overall[i]) for i, c in enumerate(CATEGORIES)},
            "per_layer": {c: per_layer[i].tolist() for i, c in enumerate(CATEGORIES)}}


def category_shares(acts: Tensor, num_layers: int, tau: float = 0.0) -> dict[str, Any]:
    """Category shares per layer and overall at threshold τ, averaged over items."""
    acts, _ = stack_languages(acts)
    freq, _ = category_frequency(acts, tau)
    return shares_from_frequency(freq, num_layers, acts.shape[1])


def _as_set(hit: Tensor, num_layers: int) -> NeuronSet:
    v = hit.view(num_layers, -1)
    return NeuronSet.from_dict({"ffn": {i: v[i].nonzero().flatten() for i in range(num_layers)}})


def all_shared_set(freq: Tensor, items: int, num_layers: int, min_fraction: float = 0.5) -> NeuronSet:
    """Neurons all-shared for at least `min_fraction` of the items (site ``ffn``)."""
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
    return _as_set(freq[0] >= min_fraction * items - 1e-9, num_layers)


def specific_sets(spec: Tensor, languages: Sequence[str], items: int, num_layers: int,
                  min_fraction: float = 0.5) -> dict[str, NeuronSet]:
    """Per language: neurons activated in that language only, for at least `min_fraction` of the items."""
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
    return {lang: _as_set(spec[i] >= min_fraction * items - 1e-9, num_layers) for i, lang in enumerate(languages)}


@dataclass
class SharingResult:
    languages: list[str]
    items: int
    num_layers: int
    shares: dict[str, dict[str, Any]]  # str(τ) -> category_shares(...)
    set_tau: float
    min_fraction: float
    all_shared: NeuronSet
    specific: dict[str, NeuronSet]
    frequency: Tensor  # [4, L*I] at set_tau
    specific_frequency: Tensor  # [n_lang, L*I] at set_tau

    def to_json(self) -> dict[str, Any]:
        return {"languages": self.languages, "items": self.items, "num_layers": self.num_layers,
                "categories": list(CATEGORIES), "shares": self.shares, "set_tau": self.set_tau,
                "min_fraction": self.min_fraction, "all_shared_count": self.all_shared.count(),
                "all_shared_per_layer": self.all_shared.per_layer_counts().get("ffn", {}),
                "specific_counts": {l: s.count() for l, s in self.specific.items()}}

    def to_tensors(self) -> dict[str, Tensor]:
        return {"frequency": self.frequency.contiguous(), "specific_frequency": self.specific_frequency.contiguous()}


def sharing(by_language: Mapping[str, Tensor], num_layers: int, *, taus: Sequence[float] = (0.0,),
            set_tau: float | None = None, min_fraction: float = 0.5) -> SharingResult:
    """Category shares for every τ in `taus`; all-shared and per-language specific sets at `set_tau`,
    one of `taus` (default: the first), so the shares at the sets' τ are always there to show."""
    acts, langs = stack_languages(by_language)
    assert langs is not None
    items = acts.shape[1]
    taus = [float(t) for t in taus]
    if not taus:
        raise ValueError("need at least one threshold τ")
    set_tau = taus[0] if set_tau is None else float(set_tau)
    if set_tau not in taus:
        raise ValueError(f"set τ {set_tau} is not one of the thresholds {taus}")
    shares: dict[str, dict[str, Any]] = {}
    kept: tuple[Tensor, Tensor] | None = None
    for tau in dict.fromkeys(taus):
        freq, spec = category_frequency(acts, tau)
        shares[str(tau)] = shares_from_frequency(freq, num_layers, items)
        if tau == set_tau:
            kept = (freq, spec)
    assert kept is not None
    freq, spec = kept
    return SharingResult(langs, items, num_layers, shares, set_tau, min_fraction,
                         all_shared_set(freq, items, num_layers, min_fraction),
                         specific_sets(spec, langs, items, num_layers, min_fraction), freq, spec)


def plot_shares(shares: Mapping[str, Any], path: str | Path, title: str = "neuron sharing per layer") -> Path:
    """Stacked bars of the category shares per layer (one :func:`category_shares` result)."""
    from neuronspec.plotting import pyplot, save_figure

    plt = pyplot()

    per_layer = shares["per_layer"]
    layers = len(per_layer[CATEGORIES[0]])
    fig, ax = plt.subplots(figsize=(7.5, 3.5))
    bottom = [0.0] * layers
    for cat in CATEGORIES:
        values = per_layer[cat]
        ax.bar(range(layers), values, bottom=bottom, color=_COLORS[cat], label=cat.replace("_", "-"), width=0.85)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set(xlabel="layer", ylabel="share of neurons", ylim=(0, 1), title=title)
    ax.legend(ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    return save_figure(fig, path)


def plot_attribution(attribution: Mapping[str, Any], path: str | Path,
                     title: str = "share of |attribution| per layer by neuron category") -> Path:
    """Stacked bars of each category's share of the |attribution| mass per attributed layer
    (one :func:`attribution_by_category` result)."""
    from neuronspec.plotting import pyplot, save_figure

    plt = pyplot()
    layers = attribution["layers"]
    fig, ax = plt.subplots(figsize=(7.5, 3.5))
    bottom = [0.0] * len(layers)
    for cat in CATEGORIES:
        values = attribution["per_layer"][cat]["share"]
        ax.bar(range(len(layers)), values, bottom=bottom, color=_COLORS[cat], label=cat.replace("_", "-"), width=0.85)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(range(len(layers)), [str(l) for l in layers])
    ax.tick_params(axis="x", labelsize=7)
    ax.set(xlabel="layer", ylabel="share of |attribution|", ylim=(0, 1), title=title)
    ax.legend(ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    return save_figure(fig, path)
