"""PLND's parallel importances against their definitions, one neuron at a time.

ffn / attn.o / attn.v: deactivate a single neuron with the real mask hooks, run the
model, and measure the squared change of that layer's projection output — this must
equal the one-pass statistic. attn.q / attn.k: the paper's approximation, recomputed
per neuron from the captured post-RoPE q/k by zeroing one head dimension.
"""

from __future__ import annotations

import pytest
import torch

from neuronspec.methods.plnd import plnd_statistics, token_weights
from neuronspec.models.attention import additive_mask, capture_attention
from neuronspec.models.forward import iter_batches
from neuronspec.models.masks import NeuronSet, deactivate
from neuronspec.models.sites import adapter_for, site_width
from neuronspec.models.tiny import ARCHITECTURES, tiny_model

DOCS = [[1, 5, 9, 33, 40, 41, 7, 8], [1, 60, 61, 3, 4], [1, 70, 12, 13, 14, 15]]


def _batch():
    return next(iter_batches(DOCS, batch_size=len(DOCS), pad_id=0))


def _doc_reduce(per_token: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[B,T] → [B]: mean over counted tokens (the default token_reduce)."""
    return (per_token * weights).sum(1) / weights.sum(1)


def _projection_output(model, module, batch, neurons: NeuronSet) -> torch.Tensor:
    seen = {}
    handle = module.register_forward_hook(lambda m, a, out: seen.__setitem__("out", out.detach().clone()))
    try:
        with torch.no_grad(), deactivate(model, neurons):
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        handle.remove()
    return seen["out"]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("site", ["ffn", "attn.o", "attn.v"])
def test_exact_sites_equal_one_at_a_time_deactivation(arch: str, site: str) -> None:
    model = tiny_model(arch)
    adapter = adapter_for(model)
    dims = adapter.dims(model.config)
    batch = _batch()
    weights = token_weights(batch.attention_mask)
    stats = plnd_statistics(model, [batch], [site])[site]
    for layer in range(dims.num_layers):
        module = adapter.ffn_down(model, layer) if site == "ffn" else adapter.attn_out(model, layer)
        base = _projection_output(model, module, batch, NeuronSet.empty())
        brute = torch.empty(len(DOCS), site_width(dims, site))
        for n in range(site_width(dims, site)):
            out = _projection_output(model, module, batch, NeuronSet.from_dict({site: {layer: [n]}}))
            brute[:, n] = _doc_reduce((out - base).pow(2).sum(-1), weights)
        assert torch.allclose(stats.min[layer], brute.min(0).values, rtol=1e-4, atol=1e-9), (arch, site, layer)
        assert torch.allclose(stats.sum[layer].float(), brute.sum(0), rtol=1e-4, atol=1e-9), (arch, site, layer)
    assert stats.n_docs == len(DOCS)


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a != "bloom"])
def test_qk_scores_equal_per_neuron_recomputation(arch: str) -> None:
    model = tiny_model(arch)
    dims = adapter_for(model).dims(model.config)
    batch = _batch()
    weights = token_weights(batch.attention_mask)
    stats = plnd_statistics(model, [batch], ["attn.q", "attn.k"])
    captured = {}
    with torch.no_grad(), capture_attention(model, lambda i, q, k, m, s, mod: captured.__setitem__(i, (q, k, m, s)), {0, 1, 2}):
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    group = dims.heads // dims.kv_heads
    for layer, (q, k, mask, scaling) in captured.items():
        add = additive_mask(mask)[..., : k.shape[2]]

        def probs(qq, kk):
            return torch.softmax(scaling * qq @ kk.repeat_interleave(group, 1).transpose(-1, -2) + add, -1)

        base = probs(q, k)
        for h in range(dims.heads):
            for d in range(dims.head_dim):
                q2 = q.clone()
                q2[:, h, :, d] = 0
                per_tok = (probs(q2, k) - base).pow(2).sum(-1).sum(1)  # [B,T]
                want = _doc_reduce(per_tok, weights)
                got = stats["attn.q"].sum[layer, h * dims.head_dim + d].float()
                assert torch.allclose(got, want.sum(), rtol=1e-4, atol=1e-10), (arch, layer, h, d)
        for g in range(dims.kv_heads):
            for d in range(dims.head_dim):
                k2 = k.clone()
                k2[:, g, :, d] = 0
                per_tok = (probs(q, k2) - base).pow(2).sum(-1).sum(1)
                want = _doc_reduce(per_tok, weights)
                assert torch.allclose(stats["attn.k"].min[layer, g * dims.head_dim + d], want.min(), rtol=1e-4, atol=1e-10)


def test_bloom_qk_says_unsupported() -> None:
    with pytest.raises(NotImplementedError, match="bloom"):
        plnd_statistics(tiny_model("bloom"), [_batch()], ["attn.q"])


def test_topk_hits_and_running_min_stream_over_batches() -> None:
    model = tiny_model("llama")
    one = plnd_statistics(model, iter_batches(DOCS, batch_size=3, pad_id=0), ["ffn"], top_k={"ffn": 10})["ffn"]
    split = plnd_statistics(model, iter_batches(DOCS, batch_size=1, pad_id=0), ["ffn"], top_k={"ffn": 10})["ffn"]
    assert torch.allclose(one.min, split.min, rtol=1e-5)
    assert torch.equal(one.topk_hits, split.topk_hits)
    assert one.topk_hits.sum(1).tolist() == [10 * len(DOCS)] * one.topk_hits.shape[0]  # k hits per layer and document
