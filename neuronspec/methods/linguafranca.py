"""LinguaFranca (Zeng et al. 2024): do ffn activations cluster by language or by meaning?

Input: per-sample pooled ffn activations of a parallel corpus (the same items in every
language), all layers concatenated — the ``pooled["mean"]`` matrix of
:func:`neuronspec.methods.activations.activation_statistics`, one pass per language.

* samples are L2-normalised; the cosine-similarity map is x̂ x̂ᵀ;
* LRDS (language-ranking) = mean similarity of same-language pairs − different-language
  pairs, over pairs with *different* meanings; SADS (semantic) = same-meaning pairs −
  different-meaning pairs, over pairs in *different* languages. Pairs are i ≠ k;
  both are given for the whole vector and per layer (slice, renormalise per layer);
* contribution of neuron j to language l: the mean over that language's sample pairs
  i ≠ k of x̂_i[j]·x̂_k[j], computed in O(n) as ((Σx̂[j])² − Σx̂[j]²) / (n(n−1)). Summed
  over j it is the language's mean within-language cosine similarity;
* key linguistic region of l: neurons whose contribution z-score across languages
  (population std) exceeds a threshold (paper: 2). With n languages no z-score can
  exceed √(n−1), so with n ≤ 5 a threshold of 2 selects nothing: this module says so
  with an :class:`UnreachableThresholdWarning` (or raises with ``strict=True``)
  instead of returning empty regions silently. SKLR = total size of the regions.

Everything here is a pure function of tensors; plots use matplotlib's Agg backend.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from neuronspec.models.masks import NeuronSet
from neuronspec.plotting import pyplot, save_figure


class UnreachableThresholdWarning(UserWarning):
    """A z-score threshold that no neuron can exceed with this many languages."""


# ---- layout -----------------------------------------------------------------------


def parallel_layout(by_language: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    """Stack per-language matrices [items, D] (row i = item i in every language).

    Returns (x [n_lang * items, D] float32, lang_ids [n], item_ids [n], languages); rows are
    language-major: all items of the first language, then the next.
    """
    languages = list(by_language)
    if not languages:
        raise ValueError("no languages")
    shapes = {tuple(by_language[l].shape) for l in languages}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"a parallel corpus needs [items, D] matrices of one shape per language, got {sorted(shapes)}")
    items = next(iter(shapes))[0]
    x = torch.cat([by_language[l].float() for l in languages])
    lang_ids = torch.arange(len(languages)).repeat_interleave(items)
    item_ids = torch.arange(items).repeat(len(languages))
    return x, lang_ids, item_ids, languages


# ---- similarity -------------------------------------------------------------------


def normalize(x: Tensor, num_layers: int | None = None, eps: float = 1e-12) -> Tensor:
    """Row-wise L2 normalisation (float32); with `num_layers`, each layer's slice separately."""
    x = x.float()
    if num_layers is None:
        return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)
    n, d = x.shape
    if d % num_layers:
        raise ValueError(f"{d} columns do not split into {num_layers} layers")
    v = x.view(n, num_layers, d // num_layers)
    return (v / v.norm(dim=-1, keepdim=True).clamp_min(eps)).view(n, d)


def similarity_map(x: Tensor, *, normalized: bool = False) -> Tensor:
    """Cosine similarity of every pair of rows, [n, n]."""
    xn = x.float() if normalized else normalize(x)
    return xn @ xn.T


def lrds_sads(sim: Tensor, lang_ids: Tensor, item_ids: Tensor) -> dict[str, float]:
    """LRDS and SADS of a similarity map, with the four means they are made of and pair counts.

    Pairs are ordered (i, k), i ≠ k (the map is symmetric, so means equal the unordered ones).
    A mean over no pairs is NaN (e.g. SADS with one language).
    """
    lang_ids, item_ids = torch.as_tensor(lang_ids), torch.as_tensor(item_ids)
    n = sim.shape[0]
    if sim.shape != (n, n) or lang_ids.shape != (n,) or item_ids.shape != (n,):
        raise ValueError(f"need sim [n, n] and labels [n]; got {tuple(sim.shape)}, {tuple(lang_ids.shape)}, {tuple(item_ids.shape)}")
    off = ~torch.eye(n, dtype=torch.bool)
    same_lang = lang_ids[:, None] == lang_ids[None, :]
    same_item = item_ids[:, None] == item_ids[None, :]
    s = sim.double()

    def mean(mask: Tensor) -> tuple[float, int]:
        mask = mask & off
        count = int(mask.sum())
        return (float(s[mask].mean()) if count else math.nan), count

    sl_di, n1 = mean(same_lang & ~same_item)
    dl_di, n2 = mean(~same_lang & ~same_item)
    si_dl, n3 = mean(same_item & ~same_lang)
    return {
        "lrds": sl_di - dl_di,
        "sads": si_dl - dl_di,
        "same_language_different_meaning": sl_di,
        "different_language_different_meaning": dl_di,
        "same_meaning_different_language": si_dl,
        "pairs_same_language_different_meaning": n1,
        "pairs_different_language_different_meaning": n2,
        "pairs_same_meaning_different_language": n3,
    }


def layer_scores(x: Tensor, lang_ids: Tensor, item_ids: Tensor, num_layers: int) -> dict[str, list[float]]:
    """LRDS and SADS of each layer's slice (renormalised per layer): {"lrds": [L], "sads": [L]}."""
    xn = normalize(x, num_layers)
    n, d = xn.shape
    v = xn.view(n, num_layers, d // num_layers)
    out: dict[str, list[float]] = {"lrds": [], "sads": []}
    for i in range(num_layers):
        scores = lrds_sads(v[:, i] @ v[:, i].T, lang_ids, item_ids)
        out["lrds"].append(scores["lrds"])
        out["sads"].append(scores["sads"])
    return out


# ---- contributions and key linguistic regions -------------------------------------


def contributions(x_normalized: Tensor, lang_ids: Tensor, num_languages: int | None = None) -> Tensor:
    """Per-language, per-neuron contribution [n_lang, D]: mean over sample pairs i ≠ k of
    x̂_i[j]·x̂_k[j], i.e. ((Σ_i x̂_i[j])² − Σ_i x̂_i[j]²) / (n_l (n_l − 1)). O(n·D)."""
    lang_ids = torch.as_tensor(lang_ids)
    k = int(lang_ids.max()) + 1 if num_languages is None else num_languages
    x = x_normalized.double()
    out = torch.zeros(k, x.shape[1], dtype=torch.float64)
    for l in range(k):
        rows = x[lang_ids == l]
        m = rows.shape[0]
        if m < 2:
            raise ValueError(f"language {l} has {m} samples; a contribution needs at least 2")
        out[l] = (rows.sum(0).pow(2) - rows.pow(2).sum(0)) / (m * (m - 1))
    return out.float()


def zscores(contrib: Tensor) -> Tensor:
    """z-score of each language's contribution across languages (population std); 0 where all equal."""
    c = contrib.double()
    mean, std = c.mean(0, keepdim=True), c.std(0, correction=0, keepdim=True)
    z = torch.where(std > 0, (c - mean) / std.clamp_min(1e-300), torch.zeros_like(c))
    return z.float()


def max_zscore(num_languages: int) -> float:
    """The largest z-score (population std) any of n values can have: √(n−1)."""
    return math.sqrt(max(num_languages - 1, 0))


@dataclass
class KeyRegions:
    """Key linguistic regions per language (site ``ffn``) and how they were chosen."""

    sets: dict[str, NeuronSet]
    threshold: float
    max_reachable: float
    warning: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def sklr(self) -> int:
        """SKLR: total size of the key linguistic regions (summed over languages)."""
        return sum(self.counts.values())

    def to_json(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "max_reachable_z": self.max_reachable, "warning": self.warning,
                "sklr": self.sklr, "counts": dict(self.counts),
                "per_layer": {l: s.per_layer_counts().get("ffn", {}) for l, s in self.sets.items()}}


def key_regions(contrib: Tensor, languages: Sequence[str], num_layers: int, *, threshold: float = 2.0,
                strict: bool = False) -> KeyRegions:
    """Neurons whose contribution z-score exceeds `threshold`, per language, as ``ffn`` NeuronSets.

    Columns of `contrib` are layer-major (layer i = columns i*I : (i+1)*I). When the
    threshold cannot be exceeded with this many languages, warns (``strict``: raises)
    and returns empty sets with the reason in ``warning``.
    """
    k, d = contrib.shape
    if k != len(languages):
        raise ValueError(f"{k} contribution rows for {len(languages)} languages")
    if d % num_layers:
        raise ValueError(f"{d} columns do not split into {num_layers} layers")
    width = d // num_layers
    reach = max_zscore(k)
    if threshold >= reach:
        msg = (f"z-score threshold {threshold} is unreachable with {k} languages: the largest possible "
               f"z-score is sqrt({k}-1) = {reach:.3f}; use more languages or a threshold below {reach:.3f}")
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, UnreachableThresholdWarning, stacklevel=2)
        return KeyRegions({l: NeuronSet.empty() for l in languages}, threshold, reach, msg, {l: 0 for l in languages})
    z = zscores(contrib).view(k, num_layers, width)
    sets, counts = {}, {}
    for li, lang in enumerate(languages):
        hit = z[li] > threshold
        sets[lang] = NeuronSet.from_dict({"ffn": {i: hit[i].nonzero().flatten() for i in range(num_layers)}})
        counts[lang] = int(hit.sum())
    warning = None
    if not any(counts.values()):
        warning = f"no neuron's z-score exceeds {threshold} (reachable maximum {reach:.3f})"
    return KeyRegions(sets, threshold, reach, warning, counts)


# ---- the whole analysis -----------------------------------------------------------


@dataclass
class LinguaFrancaResult:
    languages: list[str]
    num_layers: int
    scores: dict[str, float]  # whole-vector LRDS / SADS and their parts
    per_layer: dict[str, list[float]]  # "lrds", "sads" per layer
    regions: KeyRegions
    contrib: Tensor  # [n_lang, L*I]
    similarity: Tensor  # [n, n], whole vector
    lang_ids: Tensor
    item_ids: Tensor

    def to_json(self) -> dict[str, Any]:
        return {"languages": self.languages, "num_layers": self.num_layers, "scores": self.scores,
                "per_layer": self.per_layer, "regions": self.regions.to_json()}

    def to_tensors(self) -> dict[str, Tensor]:
        return {"contrib": self.contrib.contiguous(), "similarity": self.similarity.contiguous(),
                "lang_ids": self.lang_ids.contiguous(), "item_ids": self.item_ids.contiguous()}


def linguafranca(by_language: Mapping[str, Tensor], num_layers: int, *, threshold: float = 2.0,
                 strict: bool = False) -> LinguaFrancaResult:
    """Similarity map, LRDS/SADS (whole and per layer), contributions and key regions of a parallel corpus."""
    x, lang_ids, item_ids, languages = parallel_layout(by_language)
    xn = normalize(x)
    sim = xn @ xn.T
    contrib = contributions(xn, lang_ids, len(languages))
    regions = key_regions(contrib, languages, num_layers, threshold=threshold, strict=strict)
    return LinguaFrancaResult(languages, num_layers, lrds_sads(sim, lang_ids, item_ids),
                              layer_scores(x, lang_ids, item_ids, num_layers), regions, contrib, sim,
                              lang_ids, item_ids)


# ---- plots ------------------------------------------------------------------------


def plot_similarity(sim: Tensor, lang_ids: Tensor, item_ids: Tensor, languages: Sequence[str], path: str | Path,
                    title: str = "activation similarity") -> Path:
    """Heatmap of the similarity map, samples grouped in language blocks (items in order inside)."""
    plt = pyplot()
    lang_ids, item_ids = torch.as_tensor(lang_ids), torch.as_tensor(item_ids)
    order = sorted(range(len(lang_ids)), key=lambda i: (int(lang_ids[i]), int(item_ids[i])))
    s = sim[order][:, order].float().numpy()
    sizes = [int((lang_ids == l).sum()) for l in range(len(languages))]
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(s, cmap="viridis", interpolation="nearest")
    edges = [sum(sizes[:l]) for l in range(len(sizes) + 1)]
    for e in edges[1:-1]:
        ax.axhline(e - 0.5, color="white", lw=0.8)
        ax.axvline(e - 0.5, color="white", lw=0.8)
    centres = [(edges[l] + edges[l + 1] - 1) / 2 for l in range(len(sizes))]
    ax.set_xticks(centres, list(languages))
    ax.set_yticks(centres, list(languages))
    ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.8, label="cosine similarity")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_layer_scores(per_layer: Mapping[str, Sequence[float]], path: str | Path,
                      title: str = "LRDS / SADS per layer") -> Path:
    """LRDS and SADS (lines) against layer."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name in ("lrds", "sads"):
        values = list(per_layer.get(name, []))
        ax.plot(range(len(values)), values, marker="o", ms=3, label=name.upper())
    ax.axhline(0, color="grey", lw=0.6)
    ax.set(xlabel="layer", ylabel="similarity difference", title=title)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
