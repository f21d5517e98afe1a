"""PLND's parallel importances against their definitions, one neuron at a time.

ffn / attn.o / attn.v: deactivate a single neuron with the real mask hooks, run the
model, and measure the squared change of what that sublayer adds to the residual stream
(the projection output, or its post-norm's output in Gemma-style sandwich blocks) — this
must equal the one-pass statistic. attn.q / attn.k: see test_plnd_qk_bruteforce.
"""

from __future__ import annotations

import pytest
import torch

from neuronspec.methods.plnd import plnd_statistics, token_weights
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


def _residual_point(adapter, model, site: str, layer: int) -> torch.nn.Module:
    """The module whose output the sublayer adds to the residual stream."""
    which = "ffn" if site == "ffn" else "attn"
    post = adapter.post_norm(model, layer, which)
    if post is not None:
        return post
    return adapter.ffn_down(model, layer) if site == "ffn" else adapter.attn_out(model, layer)


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
        module = _residual_point(adapter, model, site, layer)
        base = _projection_output(model, module, batch, NeuronSet.empty())
        brute = torch.empty(len(DOCS), site_width(dims, site))
        for n in range(site_width(dims, site)):
            out = _projection_output(model, module, batch, NeuronSet.from_dict({site: {layer: [n]}}))
            brute[:, n] = _doc_reduce((out - base).pow(2).sum(-1), weights)
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


def _strong_post_norms(model, adapter, eps: float) -> None:
    """Post-norm gains far from 1 (some negative) and a large eps, so every term of the closed form matters."""
    torch.manual_seed(3)
    with torch.no_grad():
        for layer in range(adapter.dims(model.config).num_layers):
            for which in ("ffn", "attn"):
                norm = adapter.post_norm(model, layer, which)
                norm.weight.copy_(torch.randn_like(norm.weight) * 1.5)
                setattr(norm, "variance_epsilon" if hasattr(norm, "variance_epsilon") else "eps", eps)


@pytest.mark.parametrize("site", ["ffn", "attn.o", "attn.v"])
@pytest.mark.parametrize(("arch", "chunk"), [("gemma3_text", None), ("gemma3_text", 7), ("olmo2", None)])
def test_post_norm_scores_with_strong_gains_eps_and_neuron_chunks(arch: str, site: str, chunk: int | None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from neuronspec.methods import plnd_postnorm

    if chunk:  # a few neurons per chunk, so several chunks per layer
        monkeypatch.setattr(plnd_postnorm, "CHUNK_ELEMENTS", chunk * len(DOCS) * max(map(len, DOCS)))
    model = tiny_model(arch)
    adapter = adapter_for(model)
    _strong_post_norms(model, adapter, eps=1e-3)
    batch = _batch()
    weights = token_weights(batch.attention_mask)
    stats = plnd_statistics(model, [batch], [site])[site]
    layer = 1
    module = _residual_point(adapter, model, site, layer)
    base = _projection_output(model, module, batch, NeuronSet.empty())
    width = site_width(adapter.dims(model.config), site)
    brute = torch.stack([_doc_reduce((_projection_output(model, module, batch, NeuronSet.from_dict({site: {layer: [n]}}))
                                      - base).pow(2).sum(-1), weights) for n in range(width)], 1)
    assert torch.allclose(stats.min[layer], brute.min(0).values, rtol=1e-4, atol=1e-9)
    assert torch.allclose(stats.sum[layer].float(), brute.sum(0), rtol=1e-4, atol=1e-9)


def _old_formula(model, batch) -> dict[str, torch.Tensor]:
    """[docs, layers, width] scores as neuronspec computed them before post-norms were handled: the
    projection-output change ‖a_k W[:,k]‖² (ffn, attn.o) and z_tᵀ G z_t (attn.v), the same products
    in the same order, so a model without a post-norm must get bit-identical values."""
    adapter = adapter_for(model)
    d = adapter.dims(model.config)
    w = token_weights(batch.attention_mask)[:, None, :]
    denom = w.sum(2, keepdim=True).clamp_min(1)
    rows = torch.arange(w.shape[0])
    where = (rows, torch.zeros_like(rows))
    seen: dict[tuple[str, int], torch.Tensor] = {}
    hooks = []
    for i in range(d.num_layers):
        hooks.append(adapter.ffn_down(model, i).register_forward_pre_hook(
            lambda m, a, i=i: seen.__setitem__(("ffn", i), a[0].detach().float())))
        hooks.append(adapter.attn_out(model, i).register_forward_pre_hook(
            lambda m, a, i=i: seen.__setitem__(("o", i), a[0].detach().float())))
    with torch.no_grad():
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    for h in hooks:
        h.remove()

    def tsum(x2):
        return (torch.bmm(w.to(x2.dtype), x2.reshape(x2.shape[0], x2.shape[1], -1)) / denom)[where]

    out = {"ffn": [], "attn.o": [], "attn.v": []}
    for i in range(d.num_layers):
        out["ffn"].append(tsum(seen[("ffn", i)].square()) * adapter.down_weight(model, i).detach().float().pow(2).sum(0))
        z = seen[("o", i)]
        wo = adapter.o_weight(model, i).detach().float()
        out["attn.o"].append(tsum(z.square()) * wo.pow(2).sum(0))
        group = d.heads // d.kv_heads
        wv = wo.view(wo.shape[0], d.kv_heads, group, d.head_dim)
        zz = z.reshape(z.shape[0], z.shape[1], d.kv_heads, group, d.head_dim)
        imp = z.new_zeros(len(where[0]), d.kv_heads * d.head_dim)
        for g in range(group):
            for h in range(g, group):
                coef = (wv[:, :, g] * wv[:, :, h]).sum(0).flatten() * (1.0 if g == h else 2.0)
                imp += tsum(zz[:, :, :, g] * zz[:, :, :, h]) * coef
        out["attn.v"].append(imp)
    return {s: torch.stack(v, 1) for s, v in out.items()}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_models_without_post_norm_keep_bit_identical_scores(arch: str) -> None:
    model = tiny_model(arch)
    assert all(adapter_for(model).post_norm(model, i, w) is None for i in range(3) for w in ("ffn", "attn"))
    batch = _batch()
    stats = plnd_statistics(model, [batch], ["ffn", "attn.o", "attn.v"])
    for site, imp in _old_formula(model, batch).items():
        assert torch.equal(stats[site].min, imp.amin(0)), site
        assert torch.equal(stats[site].sum, imp.sum(0, dtype=torch.float64)), site


def test_bfloat16_gemma_post_norm_scores_stay_close_to_float32() -> None:
    model = tiny_model("gemma3_text")
    sites = ["ffn", "attn.o", "attn.v"]
    full = plnd_statistics(model, [_batch()], sites)
    half = plnd_statistics(model.to(torch.bfloat16), [_batch()], sites)
    for site in sites:
        rel = (half[site].sum - full[site].sum).abs() / full[site].sum.abs().clamp_min(1e-12)
        assert float(rel.median()) < 0.05, site
