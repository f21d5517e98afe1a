"""PLND's parallel importances against their definitions, one neuron at a time.

ffn / attn.o / attn.v: deactivate a single neuron with the real mask hooks, run the
model, and measure the squared change of that layer's projection output (for a
mixture-of-experts FFN: of the experts' routed, weighted sum) — this must equal the
one-pass statistic. attn.q / attn.k: see test_plnd_qk_bruteforce.
"""

from __future__ import annotations

import pytest
import torch

from neuronspec.methods.plnd import plnd_statistics, token_weights
from neuronspec.models.forward import iter_batches
from neuronspec.models.masks import NeuronSet, deactivate
from neuronspec.models.sites import adapter_for, site_width
from neuronspec.models.tiny import ARCHITECTURES, MOE_ARCHITECTURES, tiny_model

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


@pytest.mark.parametrize("arch", ARCHITECTURES + MOE_ARCHITECTURES)
@pytest.mark.parametrize("site", ["ffn", "attn.o", "attn.v"])
def test_exact_sites_equal_one_at_a_time_deactivation(arch: str, site: str) -> None:
    model = tiny_model(arch)
    adapter = adapter_for(model)
    dims = adapter.dims(model.config)
    batch = _batch()
    weights = token_weights(batch.attention_mask)
    stats = plnd_statistics(model, [batch], [site])[site]
    for layer in range(dims.num_layers):
        module = adapter.ffn_output(model, layer) if site == "ffn" else adapter.attn_out(model, layer)
        base = _projection_output(model, module, batch, NeuronSet.empty())
        brute = torch.empty(len(DOCS), site_width(dims, site))
        for n in range(site_width(dims, site)):
            out = _projection_output(model, module, batch, NeuronSet.from_dict({site: {layer: [n]}}))
            brute[:, n] = _doc_reduce((out - base).pow(2).sum(-1).view(len(DOCS), -1), weights)  # MoE: [B*T, H]
        assert torch.allclose(stats.min[layer], brute.min(0).values, rtol=1e-4, atol=1e-9), (arch, site, layer)
        assert torch.allclose(stats.sum[layer].float(), brute.sum(0), rtol=1e-4, atol=1e-9), (arch, site, layer)
    assert stats.n_docs == len(DOCS)


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
