"""PLND — Parallel Language-specific Neuron Detection (Zhao et al. 2024, "MWork").

Importance of neuron N of layer i for a document c: Imp(N|c) = ‖T\\N(h) − T(h)‖², the
squared change, when N is zeroed, of what N's sublayer adds to the residual stream, combined
over the document's tokens (`token_reduce`: mean by default so ε means the same for long and
short documents; `sum` is the paper's literal form). That is the down / output projection's
output y, or — in sandwich-norm blocks (Gemma 2/3, OLMo 2: ``Adapter.post_norm``) — the
RMSNorm of it, N(y) = g ⊙ y / √(‖y‖²/H + eps).

All neurons are scored in parallel from one forward pass. Without a post-norm, with Δ_t the
neuron's contribution to y_t, the change is ‖Δ_t‖²:

* `ffn` (input k of the down projection, activation a_k):   Σ_t a_{t,k}² ‖W_down[:,k]‖²
* `attn.o` (input j of the output projection, value mix z_j): Σ_t z_{t,j}² ‖W_o[:,j]‖²
* `attn.v` (output (g,d) of V): zeroing it zeroes z_{·,h,d} for every query head h of KV
  group g, so Δ_t = Σ_h z_{t,h,d} W_o[:,(h,d)] and ‖Δ_t‖² = z_tᵀ G z_t with G the Gram
  matrix of those W_o columns — exact under grouped-query attention.

With a post-norm the change is Σ_t ‖N(y_t − Δ_t) − N(y_t)‖², exact in closed form from yᵀΔ,
(g⊙g⊙y)ᵀΔ, ‖Δ‖² and ‖g⊙Δ‖² per token and neuron (:mod:`plnd_postnorm`; the same Δ_t as above).

`attn.q` / `attn.k` keep the paper's approximation: the squared change of the attention
probabilities, summed over keys, when the pre-RoPE (and pre-q/k-norm) projection output that
deactivation zeroes is switched off; a K neuron sums over the query heads of its group. The
one expensive score, O(B·H·T·S·D) exponentials: see :mod:`plnd_qk`.

Statistics stream over documents in O(neurons) memory: running minimum (for the
∀-documents rule), sums and sums of squares (means, spreads), and per-layer top-k hit
counts (for the reference code's rule: per document, the k most important neurons of each
layer and site; a neuron is kept when it is in that top k for every document). The first token of each
document (BOS, an attention sink with language-independent "massive activations") is
left out of every score.

Batches may be packed (:func:`~neuronspec.models.forward.iter_packed`: several documents per
row, positions restarting, attention kept inside each document): every token sum is taken per
document through a [rows, documents per row, tokens] weight tensor (one document per row for a
padded batch, the same products as before), so a packed pass scores each document as a padded
one does without computing padding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from neuronspec.methods.plnd_moe import importance_hooks
from neuronspec.methods.plnd_postnorm import PostNorm, TokenNorms, chunks, column_change2, gram_pairs, v_change2
from neuronspec.methods.plnd_qk import Plan, QKInputs, qk_importance
from neuronspec.methods.stability import HALVES
from neuronspec.models.attention import additive_mask, capture_attention, rotary_of
from neuronspec.models.forward import Batch, hidden_forward
from neuronspec.models.masks import NeuronSet
from neuronspec.models.sites import Adapter, Dims, adapter_for, site_width

QK_SITES = ("attn.q", "attn.k")


@dataclass
class SiteStats:
    """Per-neuron running statistics of one site over a language's documents, [layers, width].

    `halves`: the same statistics of each half of a seeded split of the documents
    (:func:`neuronspec.methods.stability.split_halves`), folded in the same pass — every
    statistic is per-document, so each half costs O(neurons) memory, not a second pass.
    """

    min: Tensor
    sum: Tensor
    sumsq: Tensor
    topk_hits: Tensor
    n_docs: int = 0
    halves: list[SiteStats] | None = None

    @classmethod
    def zeros(cls, layers: int, width: int, device: torch.device | str = "cpu", halves: bool = False) -> SiteStats:
        return cls(
            min=torch.full((layers, width), float("inf"), device=device),
            sum=torch.zeros(layers, width, dtype=torch.float64, device=device),
            sumsq=torch.zeros(layers, width, dtype=torch.float64, device=device),
            topk_hits=torch.zeros(layers, width, dtype=torch.int64, device=device),
            halves=[cls.zeros(layers, width, device) for _ in range(HALVES)] if halves else None,
        )

    def update(self, imp: Tensor, k: int | None, half: Tensor | None = None) -> None:
        """Fold in a batch of per-document importances, imp: [docs, layers, width].

        With `k` (a count, see :func:`topk_count`), each document's k most important neurons
        *of each layer* score one hit (the reference code ranks within a layer, never across).
        `half` [docs]: each document's half, folded into that half's statistics too.
        """
        imp = imp.float()
        self.min = torch.minimum(self.min, imp.amin(0))
        self.sum += imp.sum(0, dtype=torch.float64)
        self.sumsq += imp.double().pow(2).sum(0)
        if k:
            top = imp.topk(k, dim=2).indices.transpose(0, 1).reshape(imp.shape[1], -1)  # [layers, docs*k]
            self.topk_hits.scatter_add_(1, top, torch.ones_like(top))
        self.n_docs += imp.shape[0]
        if self.halves is not None:
            if half is None:
                raise ValueError("statistics with halves need each document's half")
            for h, st in enumerate(self.halves):
                mine = half == h
                if bool(mine.any()):
                    st.update(imp[mine], k)

    def to(self, device: torch.device | str) -> SiteStats:
        return SiteStats(self.min.to(device), self.sum.to(device), self.sumsq.to(device), self.topk_hits.to(device), self.n_docs,
                         None if self.halves is None else [h.to(device) for h in self.halves])

    def all_reduce(self) -> SiteStats:
        """The statistics over every rank's documents (MIN of minima, SUM of the rest); see neuronspec.distributed."""
        from neuronspec import distributed

        n = int(distributed.all_reduce(torch.tensor([self.n_docs], dtype=torch.int64))[0])
        return SiteStats(distributed.all_reduce(self.min, "min"), distributed.all_reduce(self.sum),
                         distributed.all_reduce(self.sumsq), distributed.all_reduce(self.topk_hits), n,
                         None if self.halves is None else [h.all_reduce() for h in self.halves])

    def to_tensors(self, site: str) -> dict[str, Tensor]:
        out = {f"{site}/min": self.min, f"{site}/sum": self.sum, f"{site}/sumsq": self.sumsq,
               f"{site}/topk_hits": self.topk_hits, f"{site}/n_docs": torch.tensor(self.n_docs)}
        for h, st in enumerate(self.halves or []):
            out.update({f"half{h}/{k}": v for k, v in st.to_tensors(site).items()})
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], site: str) -> SiteStats:
        halves = None
        if f"half0/{site}/min" in tensors:
            halves = [cls.from_tensors({k[len(f"half{h}/"):]: v for k, v in tensors.items() if k.startswith(f"half{h}/")}, site)
                      for h in range(HALVES)]
        return cls(tensors[f"{site}/min"], tensors[f"{site}/sum"], tensors[f"{site}/sumsq"],
                   tensors[f"{site}/topk_hits"], int(tensors[f"{site}/n_docs"]), halves)

    def half(self, h: int) -> SiteStats:
        """The statistics of half `h` alone (what a detection on that half's documents would hold)."""
        if self.halves is None:
            raise ValueError("these statistics were gathered without halves")
        return self.halves[h]


@dataclass
class _BatchScores:
    """Per-document scores of the current batch: site → layer → [B, width]."""

    scores: dict[str, dict[int, Tensor]] = field(default_factory=dict)

    def put(self, site: str, layer: int, value: Tensor) -> None:
        self.scores.setdefault(site, {})[layer] = value


class _Scorer:
    """Hooks that turn one forward pass into per-document importances for every site.

    Each hook reduces over tokens first and applies the per-neuron weight norms once per
    document: Σ_t w_t a_{t,k}² ‖W[:,k]‖² = (Σ_t w_t a_{t,k}²)·‖W[:,k]‖². Activations are
    read in place (no float() copies when they already are float32) and only [B, width]
    results are kept.
    """

    def __init__(self, model: torch.nn.Module, sites: list[str], token_reduce: str):
        self.model, self.sites, self.how = model, sites, token_reduce
        self.adapter: Adapter = adapter_for(model)
        self.dims: Dims = self.adapter.dims(model.config)
        self.weights: Tensor | None = None  # [B,S,T] token weights of the batch's S documents per row
        self.denom: Tensor | None = None  # [B,S,1] what the token sum is divided by (1 for "sum")
        self.where: tuple[Tensor, Tensor] | None = None  # (row, slot) of each document of the batch
        self.batch = _BatchScores()
        self.plan: Plan | None = None
        self.stable = False
        self._norms: dict[tuple[str, int], Tensor] = {}
        self._norm_inputs: dict[tuple[int, int], Tensor] = {}  # (layer, 0 q / 1 k) → this forward's q/k norm input
        self._post: dict[tuple[int, str], PostNorm | None] = {}  # (layer, "ffn" | "attn") → its post-norm
        self._cols: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}  # (‖W[:,k]‖², ‖g⊙W[:,k]‖²) per projection
        self.softcap = getattr(getattr(model.config, "get_text_config", lambda: model.config)(), "attn_logit_softcapping", None)

    def start_batch(self, batch: Batch, stable: bool = False) -> None:
        self.weights, self.where = segment_weights(batch)
        count = self.weights.sum(2, keepdim=True)
        self.denom = count.clamp_min(1) if self.how == "mean" else torch.ones_like(count)
        self.batch = _BatchScores()
        self.stable = stable
        if any(s in QK_SITES for s in self.sites):  # one host copy of the needed queries per batch
            self.plan = Plan(self.weights.sum(1) > 0, self.dims.heads)

    def _token_sum(self, x2: Tensor) -> Tensor:
        """[B,T,W] → [documents, W]: Σ_t w_t x2_t / denom per document."""
        per_slot = torch.bmm(self.weights.to(x2.dtype), x2.reshape(x2.shape[0], x2.shape[1], -1)) / self.denom
        return per_slot[self.where]

    def _down_norm2(self, i: int) -> Tensor:
        if ("ffn", i) not in self._norms:
            self._norms[("ffn", i)] = self.adapter.down_weight(self.model, i).detach().float().pow(2).sum(0)
        return self._norms[("ffn", i)]

    def _o_norm2(self, i: int) -> Tensor:
        if ("o", i) not in self._norms:
            self._norms[("o", i)] = self.adapter.o_weight(self.model, i).detach().float().pow(2).sum(0)
        return self._norms[("o", i)]

    def _v_gram(self, i: int, norm: PostNorm | None = None) -> list[tuple[int, int, Tensor]]:
        """Gram coefficients of the W_o columns of each V neuron's group (:func:`gram_pairs`), so
        ‖Δ_t‖² = Σ_(g<=h) c · z_g z_h; with `norm`, of the gain-weighted columns g⊙W_o (‖g⊙Δ_t‖²)."""
        key = ("v", i) if norm is None else ("gv", i)
        if key not in self._norms:
            w = self.adapter.o_weight(self.model, i).detach().float()
            self._norms[key] = gram_pairs(w if norm is None else w * norm.gain[:, None],  # type: ignore[assignment]
                                          self.dims.kv_heads, self.dims.head_dim)
        return self._norms[key]  # type: ignore[return-value]

    def _post_norm(self, i: int, which: str) -> PostNorm | None:
        if (i, which) not in self._post:
            norm = self.adapter.post_norm(self.model, i, which)
            self._post[(i, which)] = None if norm is None else PostNorm(*self.adapter.rms_norm_params(norm))
        return self._post[(i, which)]

    def _normed_columns(self, key: tuple[str, int], act: Tensor, tok: TokenNorms, weight: Tensor, norm: PostNorm) -> Tensor:
        """[documents, width] token-reduced post-norm importances of the neurons act[..., k]·W[:, k], by
        chunks of neurons (W is converted to float32 a chunk at a time: no float32 copy is kept)."""
        if key not in self._cols:
            w = weight.float()
            self._cols[key] = (w.square().sum(0), (w * norm.gain[:, None]).square().sum(0))
        wn2, gwn2 = self._cols[key]
        out = act.new_empty(len(self.where[0]), act.shape[-1])
        for k0, k1 in chunks(act.shape[0] * act.shape[1], act.shape[-1]):
            change = column_change2(tok, act[..., k0:k1], weight[:, k0:k1].float(), wn2[k0:k1], gwn2[k0:k1])
            out[:, k0:k1] = self._token_sum(change)
        return out

    def hooks(self) -> list[Any]:
        handles = []
        for i in range(self.dims.num_layers):
            if "ffn" in self.sites and self.adapter.routed_ffn:
                handles += importance_hooks(self.adapter, self.model, i, self._flat_token_sum,  # type: ignore[arg-type]
                                            lambda value, i=i: self.batch.put("ffn", i, value))
            elif "ffn" in self.sites:
                down = self.adapter.ffn_down(self.model, i)
                handles.append(down.register_forward_pre_hook(self._ffn_hook(i)) if self._post_norm(i, "ffn") is None
                               else down.register_forward_hook(self._ffn_normed_hook(i)))
            if "attn.o" in self.sites or "attn.v" in self.sites:
                out = self.adapter.attn_out(self.model, i)
                handles.append(out.register_forward_pre_hook(self._attn_out_hook(i)) if self._post_norm(i, "attn") is None
                               else out.register_forward_hook(self._attn_normed_hook(i)))
            norms = self.adapter.qk_norms(self.model, i) if any(s in QK_SITES for s in self.sites) else None
            for which, norm in enumerate(norms or ()):
                handles.append(norm.register_forward_pre_hook(self._norm_input_hook(i, which)))
        return handles

    def _norm_input_hook(self, i: int, which: int) -> Callable[..., None]:
        whole, d = not self.adapter.qk_norm_per_head, self.dims.head_dim

        def hook(module: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
            u = args[0].detach()  # what deactivation zeroes: [B, heads, T, D], (Qwen 3) [B, T, heads, D], (OLMo 2) [B, T, heads·D]
            if whole:
                u = u.view(*u.shape[:2], -1, d).transpose(1, 2)
            elif not self.adapter.qk_norm_heads_first:
                u = u.transpose(1, 2)
            self._norm_inputs[(i, which)] = u
        return hook

    def _ffn_hook(self, i: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
            a = args[0].detach().float()  # no copy when already float32
            self.batch.put("ffn", i, self._token_sum(a.square()) * self._down_norm2(i))
        return hook

    def _flat_token_sum(self, x2: Tensor) -> Tensor:
        """[B*T, W] (a MoE block's flattened tokens) → [documents, W]."""
        return self._token_sum(x2.view(self.weights.shape[0], self.weights.shape[2], -1))

    def _attn_out_hook(self, i: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
            z = args[0].detach().float()
            if "attn.o" in self.sites:
                self.batch.put("attn.o", i, self._token_sum(z.square()) * self._o_norm2(i))
            if "attn.v" in self.sites:
                # zeroing V neuron (kv head, d) zeroes z_(g,d) for every query head g of the group:
                # ‖Δ_t‖² = z_tᵀ G z_t, reduced over tokens pair by pair (a few [B,T,Hkv*D] products)
                d = self.dims
                b, t = z.shape[:2]
                zz = z.reshape(b, t, d.kv_heads, d.heads // d.kv_heads, d.head_dim)
                imp = z.new_zeros(len(self.where[0]), d.kv_heads * d.head_dim)
                for g, h, coef in self._v_gram(i):
                    imp += self._token_sum(zz[:, :, :, g] * zz[:, :, :, h]) * coef
                self.batch.put("attn.v", i, imp)
        return hook

    def _ffn_normed_hook(self, i: int) -> Callable[..., None]:
        norm = self._post_norm(i, "ffn")

        def hook(module: torch.nn.Module, args: tuple[Tensor, ...], y: Tensor) -> None:
            tok = TokenNorms.of(y.detach().float(), norm)
            w = self.adapter.down_weight(self.model, i).detach()
            self.batch.put("ffn", i, self._normed_columns(("ffn", i), args[0].detach().float(), tok, w, norm))
        return hook

    def _attn_normed_hook(self, i: int) -> Callable[..., None]:
        norm = self._post_norm(i, "attn")

        def hook(module: torch.nn.Module, args: tuple[Tensor, ...], y: Tensor) -> None:
            z = args[0].detach().float()
            tok = TokenNorms.of(y.detach().float(), norm)
            w = self.adapter.o_weight(self.model, i).detach()
            if "attn.o" in self.sites:
                self.batch.put("attn.o", i, self._normed_columns(("o", i), z, tok, w, norm))
            if "attn.v" in self.sites:
                d = self.dims
                imp = v_change2(tok, z, w.float(), (self._v_gram(i), self._v_gram(i, norm)), d.kv_heads, d.head_dim)
                self.batch.put("attn.v", i, self._token_sum(imp))
        return hook

    def on_attention(self, layer: int, query: Tensor, key: Tensor, mask: Tensor | None, scaling: float, module: Any) -> None:
        if ("gains", layer) not in self._norms:
            self._norms[("gains", layer)] = self.adapter.qk_norm_gains(self.model, layer)  # type: ignore[assignment]
        norms = self.adapter.qk_norms(self.model, layer)
        if norms is not None and ("qk_eps", layer) not in self._norms:
            self._norms[("qk_eps", layer)] = tuple(self.adapter.rms_norm_params(n)[1] for n in norms)  # type: ignore[assignment]
        pre = None if norms is None else (self._norm_inputs.pop((layer, 0)), self._norm_inputs.pop((layer, 1)))
        inp = QKInputs(query.detach(), key.detach(), additive_mask(mask), scaling, self.softcap,
                       rotary_of(module), self._norms[("gains", layer)],  # type: ignore[arg-type]
                       pre, self._norms[("qk_eps", layer)] if norms is not None else (0.0, 0.0),  # type: ignore[arg-type]
                       not self.adapter.qk_norm_per_head)
        want = tuple(s for s in QK_SITES if s in self.sites)
        for site, imp in qk_importance(inp, want, self.plan, mask_source=mask, stable=self.stable).items():  # [B,H,T,D], 0 where w is 0
            b, h, _, d = imp.shape
            hkv = key.shape[1]
            # Σ_t w_t imp[b,h,t,:] per document as a batched [S,T]@[T,D] product (einsum picks a much slower path here)
            per_head = (self.weights[:, None].to(imp.dtype) @ imp) / self.denom[:, None]  # [B,H,S,D]
            per_head = per_head.transpose(1, 2)[self.where]  # [documents, H, D]
            n = per_head.shape[0]
            if site == "attn.q":
                self.batch.put(site, layer, per_head.reshape(n, h * d))
            else:  # a K neuron feeds every query head of its group
                self.batch.put(site, layer, per_head.view(n, hkv, h // hkv, d).sum(2).reshape(n, hkv * d))


def topk_count(k: int | float, width: int) -> int:
    """The per-layer top-k as a count: `k` itself, or a fraction of the layer's `width`
    (rounded, at least 1), so one setting transfers across model sizes."""
    if isinstance(k, float):
        if not 0 < k < 1:
            raise ValueError(f"a top-k fraction must lie in (0, 1), got {k}")
        return max(1, round(k * width))
    if not 1 <= k <= width:
        raise ValueError(f"top-k {k} must lie in 1..{width}, the site's neurons per layer")
    return k


def token_weights(attention_mask: Tensor, skip_first: bool = True) -> Tensor:
    """1.0 for tokens that count, 0.0 for padding (and the first token when `skip_first`)."""
    w = attention_mask.float().clone()
    if skip_first:
        w[:, 0] = 0.0
    return w


def segment_weights(batch: Batch, skip_first: bool = True) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """[B, S, T] token weights, S = most documents in a row: w[b, s, t] = 1.0 where token t of row
    b belongs to the row's s-th document and counts (not padding, not a document's first token when
    `skip_first`); and (row, slot) of each entry of ``batch.index``. A padded batch has S = 1 and
    w[:, 0] = :func:`token_weights`."""
    if not batch.packed:
        w = token_weights(batch.attention_mask, skip_first)
        rows = torch.arange(w.shape[0], device=w.device)
        return w[:, None, :], (rows, torch.zeros_like(rows))
    owners = batch.owners()
    real = owners >= 0
    n = len(batch.index)
    row_of = torch.zeros(n, dtype=torch.int64, device=owners.device)
    row_of[owners[real]] = torch.nonzero(real)[:, 0]
    first = torch.full((owners.shape[0],), n, dtype=torch.int64, device=owners.device).scatter_reduce(
        0, row_of, torch.arange(n, device=owners.device), "amin")
    slot = torch.arange(n, device=owners.device) - first[row_of]  # iter_packed numbers a row's documents in order
    keep = real & (batch.positions() > 0) if skip_first else real
    w = torch.zeros(owners.shape[0], int(slot.max()) + 1, owners.shape[1], device=owners.device)
    b, t = keep.nonzero(as_tuple=True)
    w[b, slot[owners[b, t]], t] = 1.0
    return w, (row_of, slot)


@torch.no_grad()
def plnd_statistics(
    model: torch.nn.Module,
    batches: Iterable[Batch],
    sites: list[str],
    *,
    token_reduce: str = "mean",
    top_k: dict[str, int | float] | None = None,
    on_batch: Callable[[int], None] | None = None,
    halves: Sequence[int] | None = None,
) -> dict[str, SiteStats]:
    """Stream `batches` through `model` once and return per-site running statistics.

    `top_k`: per site, a count or a fraction of the layer's width (:func:`topk_count`) for the
    per-layer top-k hit counts. `halves`: the half (0 or 1) of each encoding the batches index
    (:func:`neuronspec.methods.stability.split_halves`); each half's statistics are kept too.
    """
    scorer = _Scorer(model, sites, token_reduce)
    dims = scorer.dims
    counts = {s: topk_count(k, site_width(dims, s)) for s, k in (top_k or {}).items() if s in sites}
    device = next(model.parameters()).device  # statistics stay there (float32/64) until the pass ends
    stats = {s: SiteStats.zeros(dims.num_layers, site_width(dims, s), device, halves=halves is not None) for s in sites}
    half_of = None if halves is None else torch.as_tensor(list(halves), dtype=torch.int64, device=device)
    handles = scorer.hooks()
    want_qk = [s for s in sites if s in QK_SITES]
    try:
        for batch in batches:
            scorer.start_batch(batch)
            run = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
            if want_qk:
                with capture_attention(model, scorer.on_attention, set(range(dims.num_layers))):
                    hidden_forward(model, **run)
                    if scorer.plan is not None and scorer.plan.overflow is not None and bool(scorer.plan.overflow):
                        # a logit rose by > ~88 nats somewhere (one sync per batch to know): redo the
                        # batch with the two-softmax form, which cannot overflow
                        scorer.start_batch(batch, stable=True)
                        hidden_forward(model, **run)
            else:
                hidden_forward(model, **run)
            half = None if half_of is None else half_of[torch.as_tensor(batch.index, device=device)]
            for site in sites:
                per_layer = scorer.batch.scores[site]
                # [B, layers, width]; .to(): with device_map="auto" the layers live on several devices
                imp = torch.stack([per_layer[i].to(device) for i in range(dims.num_layers)], dim=1)
                stats[site].update(imp, counts.get(site), half)
            if on_batch:
                on_batch(len(batch.index))
    finally:
        for h in handles:
            h.remove()
    return {site: st.to("cpu") for site, st in stats.items()}


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
    topk_intersect: in the per-document, per-layer top-k for every document.
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


def select_halves(stats: dict[str, dict[str, SiteStats]], epsilon: dict[str, Any],
                  rule: str = "all_docs") -> list[tuple[dict[str, float], dict[str, NeuronSet]]]:
    """Per half of the documents: its thresholds (a quantile ε resolved on that half's minima)
    and relevant sets — the detection that half alone would give."""
    out = []
    for h in range(HALVES):
        half = {lang: {site: st.half(h) for site, st in by_site.items()} for lang, by_site in stats.items()}
        thresholds = resolve_thresholds(half, epsilon) if rule == "all_docs" else {}
        out.append((thresholds, select_relevant(half, thresholds, rule)))
    return out
