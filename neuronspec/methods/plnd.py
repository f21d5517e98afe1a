"""PLND — Parallel Language-specific Neuron Detection (Zhao et al. 2024, "MWork").

Importance of neuron N of layer i for a document c: Imp(N|c) = ‖T\\N(h) − T(h)‖², the
squared change of the sublayer output when N is zeroed, combined over the document's
tokens (`token_reduce`: mean by default so ε means the same for long and short
documents; `sum` is the paper's literal form). The sublayer output is the output of the
down / output projection (before any post-norm such as Gemma's).

All neurons are scored in parallel from one forward pass:

* `ffn` (input k of the down projection, activation a_k):   Σ_t a_{t,k}² ‖W_down[:,k]‖²
* `attn.o` (input j of the output projection, value mix z_j): Σ_t z_{t,j}² ‖W_o[:,j]‖²
* `attn.v` (output (g,d) of V): zeroing it zeroes z_{·,h,d} for every query head h of KV
  group g, so Δ_t = Σ_h z_{t,h,d} W_o[:,(h,d)] and ‖Δ_t‖² = z_tᵀ G z_t with G the Gram
  matrix of those W_o columns — exact under grouped-query attention.
* `attn.q` / `attn.k` (the paper's approximation): remove one head-dimension's term
  q_d·k_d (times the model's score scaling) from the attention scores and measure the
  squared change of the attention probabilities, summed over keys; a K neuron sums over
  the query heads of its group. q and k are taken as attention sees them (after RoPE and
  Gemma's q/k norms). Computed in chunks of head dimensions so no [B,H,D,T,T] tensor is
  ever materialised whole.

Statistics stream over documents in O(neurons) memory: running minimum (for the
∀-documents rule), sums and sums of squares (means, spreads), and per-site top-k hit
counts (for the reference code's top-k-then-intersect rule). The first token of each
document (BOS, an attention sink with language-independent "massive activations") is
left out of every score.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from neuronspec.models.attention import additive_mask, capture_attention
from neuronspec.models.forward import Batch, hidden_forward
from neuronspec.models.masks import NeuronSet
from neuronspec.models.sites import Adapter, Dims, adapter_for, site_width

QK_SITES = ("attn.q", "attn.k")
#: elements of the [B,H,c,T,T] probability tensor per chunk — bounds q/k scoring memory
QK_CHUNK_ELEMENTS = 1 << 24


@dataclass
class SiteStats:
    """Per-neuron running statistics of one site over a language's documents, [layers, width]."""

    min: Tensor
    sum: Tensor
    sumsq: Tensor
    topk_hits: Tensor
    n_docs: int = 0

    @classmethod
    def zeros(cls, layers: int, width: int) -> SiteStats:
        return cls(
            min=torch.full((layers, width), float("inf")),
            sum=torch.zeros(layers, width, dtype=torch.float64),
            sumsq=torch.zeros(layers, width, dtype=torch.float64),
            topk_hits=torch.zeros(layers, width, dtype=torch.int64),
        )

    def update(self, imp: Tensor, k: int | None) -> None:
        """Fold in a batch of per-document importances, imp: [docs, layers, width]."""
        imp = imp.float()
        self.min = torch.minimum(self.min, imp.amin(0))
        self.sum += imp.sum(0, dtype=torch.float64)
        self.sumsq += imp.double().pow(2).sum(0)
        if k:
            flat = imp.reshape(imp.shape[0], -1)
            top = flat.topk(min(k, flat.shape[1]), dim=1).indices.reshape(-1)
            self.topk_hits.view(-1).index_add_(0, top, torch.ones_like(top))
        self.n_docs += imp.shape[0]

    def to_tensors(self, site: str) -> dict[str, Tensor]:
        return {f"{site}/min": self.min, f"{site}/sum": self.sum, f"{site}/sumsq": self.sumsq,
                f"{site}/topk_hits": self.topk_hits, f"{site}/n_docs": torch.tensor(self.n_docs)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], site: str) -> SiteStats:
        return cls(tensors[f"{site}/min"], tensors[f"{site}/sum"], tensors[f"{site}/sumsq"],
                   tensors[f"{site}/topk_hits"], int(tensors[f"{site}/n_docs"]))


@dataclass
class _BatchScores:
    """Per-document scores of the current batch: site → layer → [B, width]."""

    scores: dict[str, dict[int, Tensor]] = field(default_factory=dict)

    def put(self, site: str, layer: int, value: Tensor) -> None:
        self.scores.setdefault(site, {})[layer] = value


def _reduce(per_token: Tensor, token_weight: Tensor, how: str) -> Tensor:
    """[B,T,W] per-token importances → [B,W] per document (padding and BOS excluded)."""
    total = torch.einsum("btw,bt->bw", per_token, token_weight)
    if how == "mean":
        total = total / token_weight.sum(1, keepdim=True).clamp_min(1)
    return total


def qk_token_importance(query: Tensor, key: Tensor, mask: Tensor | None, scaling: float,
                        softcap: float | None = None, chunk_elements: int = QK_CHUNK_ELEMENTS) -> tuple[Tensor, Tensor]:
    """Per-token q and k importances, ([B,T,H*D], [B,T,Hkv*D]).

    query [B,H,T,D], key [B,Hkv,S,D] (post-RoPE), mask additive [B,1|H,T,S] or None (causal).
    """
    q, k = query.float(), key.float()
    b, h, t, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    group = h // hkv
    k = k.repeat_interleave(group, dim=1)  # query head j reads KV head j // group, as repeat_kv does
    if mask is None:
        mask = torch.full((t, s), float("-inf")).triu(s - t + 1)[None, None]
    mask = mask[..., :s].float()
    cap: Callable[[Tensor], Tensor] = (lambda x: torch.tanh(x / softcap) * softcap) if softcap else (lambda x: x)
    raw = scaling * (q @ k.transpose(-1, -2))  # [B,H,T,S]
    probs = torch.softmax(cap(raw) + mask, dim=-1)
    out = torch.empty(b, h, d, t)
    step = max(1, chunk_elements // max(1, b * h * t * s))
    for d0 in range(0, d, step):
        d1 = min(d, d0 + step)
        term = scaling * torch.einsum("bhtc,bhsc->bhcts", q[..., d0:d1], k[..., d0:d1])
        changed = torch.softmax(cap(raw[:, :, None] - term) + mask[:, :, None], dim=-1)
        out[:, :, d0:d1] = (changed - probs[:, :, None]).pow(2).sum(-1)
    q_imp = out.permute(0, 3, 1, 2).reshape(b, t, h * d)
    k_imp = out.view(b, hkv, group, d, t).sum(2).permute(0, 3, 1, 2).reshape(b, t, hkv * d)
    return q_imp, k_imp


class _Scorer:
    """Hooks that turn one forward pass into per-document importances for every site."""

    def __init__(self, model: torch.nn.Module, sites: list[str], token_reduce: str):
        self.model, self.sites, self.how = model, sites, token_reduce
        self.adapter: Adapter = adapter_for(model)
        self.dims: Dims = self.adapter.dims(model.config)
        self.weights: torch.Tensor | None = None  # [B,T] token weights of the batch being scored
        self.batch = _BatchScores()
        self._norms: dict[tuple[str, int], Tensor] = {}
        self.softcap = getattr(getattr(model.config, "get_text_config", lambda: model.config)(), "attn_logit_softcapping", None)

    def _down_norm2(self, i: int) -> Tensor:
        if ("ffn", i) not in self._norms:
            self._norms[("ffn", i)] = self.adapter.down_weight(self.model, i).detach().float().pow(2).sum(0)
        return self._norms[("ffn", i)]

    def _o_norm2(self, i: int) -> Tensor:
        if ("o", i) not in self._norms:
            self._norms[("o", i)] = self.adapter.o_weight(self.model, i).detach().float().pow(2).sum(0)
        return self._norms[("o", i)]

    def _v_gram(self, i: int) -> Tensor:
        """[Hkv, D, G, G]: inner products of the W_o columns that one V neuron feeds."""
        if ("v", i) not in self._norms:
            d = self.dims
            w = self.adapter.o_weight(self.model, i).detach().float()
            w = w.view(w.shape[0], d.kv_heads, d.heads // d.kv_heads, d.head_dim)
            self._norms[("v", i)] = torch.einsum("xkgd,xkhd->kdgh", w, w)
        return self._norms[("v", i)]

    def hooks(self) -> list[Any]:
        handles = []
        for i in range(self.dims.num_layers):
            if "ffn" in self.sites:
                handles.append(self.adapter.ffn_down(self.model, i).register_forward_pre_hook(self._ffn_hook(i)))
            if "attn.o" in self.sites or "attn.v" in self.sites:
                handles.append(self.adapter.attn_out(self.model, i).register_forward_pre_hook(self._attn_out_hook(i)))
        return handles

    def _ffn_hook(self, i: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
            a = args[0].detach().float()
            self.batch.put("ffn", i, _reduce(a.pow(2) * self._down_norm2(i), self.weights, self.how))
        return hook

    def _attn_out_hook(self, i: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
            z = args[0].detach().float()
            if "attn.o" in self.sites:
                self.batch.put("attn.o", i, _reduce(z.pow(2) * self._o_norm2(i), self.weights, self.how))
            if "attn.v" in self.sites:
                d = self.dims
                b, t = z.shape[:2]
                zz = z.view(b, t, d.kv_heads, d.heads // d.kv_heads, d.head_dim)
                per_tok = torch.einsum("btkgd,kdgh,btkhd->btkd", zz, self._v_gram(i), zz).reshape(b, t, -1)
                self.batch.put("attn.v", i, _reduce(per_tok, self.weights, self.how))
        return hook

    def on_attention(self, layer: int, query: Tensor, key: Tensor, mask: Tensor | None, scaling: float, module: Any) -> None:
        q_imp, k_imp = qk_token_importance(query.detach(), key.detach(), additive_mask(mask), scaling, self.softcap)
        if "attn.q" in self.sites:
            self.batch.put("attn.q", layer, _reduce(q_imp, self.weights, self.how))
        if "attn.k" in self.sites:
            self.batch.put("attn.k", layer, _reduce(k_imp, self.weights, self.how))


def token_weights(attention_mask: Tensor, skip_first: bool = True) -> Tensor:
    """1.0 for tokens that count, 0.0 for padding (and the first token when `skip_first`)."""
    w = attention_mask.float().clone()
    if skip_first:
        w[:, 0] = 0.0
    return w


@torch.no_grad()
def plnd_statistics(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    sites: list[str],
    *,
    token_reduce: str = "mean",
    top_k: dict[str, int] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, SiteStats]:
    """Stream `batches` through `model` once and return per-site running statistics."""
    scorer = _Scorer(model, sites, token_reduce)
    dims = scorer.dims
    stats = {s: SiteStats.zeros(dims.num_layers, site_width(dims, s)) for s in sites}
    handles = scorer.hooks()
    want_qk = [s for s in sites if s in QK_SITES]
    try:
        for batch in batches:
            scorer.weights = token_weights(batch.attention_mask).to(batch.input_ids.device)
            scorer.batch = _BatchScores()
            if want_qk:
                with capture_attention(model, scorer.on_attention, set(range(dims.num_layers))):
                    hidden_forward(model, batch.input_ids, batch.attention_mask)
            else:
                hidden_forward(model, batch.input_ids, batch.attention_mask)
            for site in sites:
                per_layer = scorer.batch.scores[site]
                imp = torch.stack([per_layer[i].cpu() for i in range(dims.num_layers)], dim=1)
                stats[site].update(imp, (top_k or {}).get(site))
            if on_batch:
                on_batch(batch.input_ids.shape[0])
    finally:
        for h in handles:
            h.remove()
    return stats


def resolve_thresholds(stats: dict[str, dict[str, SiteStats]], epsilon: dict[str, Any]) -> dict[str, float]:
    """ε per site: absolute, or a quantile of the per-neuron ∀-document minima pooled over languages."""
    out = {}
    for site, eps in epsilon.items():
        if isinstance(eps, dict):
            pooled = np.concatenate([s[site].min.flatten().numpy() for s in stats.values() if s[site].n_docs])
            out[site] = float(np.quantile(pooled.astype(np.float64), eps["quantile"])) if pooled.size else float("inf")
        else:
            out[site] = float(eps)
    return out


def select_relevant(stats: dict[str, dict[str, SiteStats]], thresholds: dict[str, float], rule: str = "all_docs") -> dict[str, NeuronSet]:
    """Language-relevant neurons per language.

    all_docs: Imp ≥ ε for every document of the language (min over documents ≥ ε).
    topk_intersect: in the per-document top-k for every document.
    """
    out = {}
    for lang, by_site in stats.items():
        sets: dict[str, dict[int, Tensor]] = {}
        for site, st in by_site.items():
            if st.n_docs == 0:
                continue
            hit = st.min >= thresholds[site] if rule == "all_docs" else st.topk_hits >= st.n_docs
            sets[site] = {layer: hit[layer].nonzero().flatten() for layer in range(hit.shape[0])}
        out[lang] = NeuronSet.from_dict(sets)
    return out
