"""attn.q / attn.k scores against really switching each neuron off.

For every neuron: deactivate it with the real mask hooks (zeroing the pre-RoPE, pre-q/k-norm
projection output), run the model, recompute that layer's attention probabilities from the
q/k that attention then sees, and measure Σ_s (p' − p)² per query (summed over heads), reduced
over tokens like the statistic. Values must agree within float tolerance and rank neurons
identically. Shapes: every RoPE architecture, grouped-query attention with 8 query / 2 KV
heads of dim 16, Gemma 3 with query_pre_attn_scalar ≠ head_dim and with soft-capping, Gemma 2
(soft-capped, sliding windows alternating, no q/k norm) and GPT-2 (no RoPE).
"""

from __future__ import annotations

import pytest
import torch

from neuronspec.methods.plnd import plnd_statistics, token_weights
from neuronspec.models.attention import additive_mask, capture_attention
from neuronspec.models.forward import iter_batches
from neuronspec.models.masks import NeuronSet, deactivate
from neuronspec.models.sites import adapter_for, kv_group, site_width
from neuronspec.models.tiny import tiny_model

#: lengths 37 / 21 / 9: several query blocks, padding, and keys past Gemma's sliding window of 16
DOCS = [[1] + [(7 * i) % 90 + 3 for i in range(36)], [1] + [(5 * i) % 80 + 4 for i in range(20)],
        [1, 70, 12, 13, 14, 15, 9, 9, 30]]

SHAPES = {
    "llama": ("llama", {}),
    "mistral": ("mistral", {}),
    "qwen2": ("qwen2", {}),
    "gemma3": ("gemma3_text", {}),
    "llama-8q2kv-d16": ("llama", {"num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 16}),
    "gemma3-scalar32-softcap": ("gemma3_text", {"query_pre_attn_scalar": 32, "attn_logit_softcapping": 5.0}),
    "gpt2": ("gpt2", {}),
    "gemma2-softcap": ("gemma2", {}),  # its tiny config caps attention logits at 0.5: the tanh bends them
    "qwen3": ("qwen3", {}),  # per-head q/k RMSNorm with gain `weight`
    "phi3-partial-rotary": ("phi3", {}),  # fused qkv, rotary over half a head
    "gpt_neox-rotary-pct": ("gpt_neox", {}),  # per-head interleaved qkv, rotary over a quarter
    "ministral-generic": ("ministral", {}),  # no adapter of its own: the layout-checked Llama one
    # YaRN scales the rotary tables by its attention factor (cos² + sin² ≠ 1)
    "llama-yarn": ("llama", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                  "original_max_position_embeddings": 32}}),
}


def _probabilities(model, batch, layer: int, neurons: NeuronSet) -> torch.Tensor:
    """[B, H, T, S] attention probabilities of `layer` as the model computes them, `neurons` off."""
    seen = {}
    softcap = getattr(model.config, "attn_logit_softcapping", None)

    def callback(i, q, k, mask, scaling, module):  # noqa: ANN001, ANN202
        kk = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
        logits = scaling * q @ kk.transpose(-1, -2)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        seen["p"] = torch.softmax(logits + additive_mask(mask)[..., : k.shape[2]], -1)

    with torch.no_grad(), deactivate(model, neurons), capture_attention(model, callback, {layer}):
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return seen["p"]


def _assert_same_values_and_ranking(got: torch.Tensor, want: torch.Tensor, label: str) -> None:
    assert torch.allclose(got, want, rtol=2e-4, atol=1e-12), (label, (got - want).abs().max(), want.abs().max())
    order = want.argsort()
    gaps = want[order].diff()
    swapped = got[order].diff() < 0
    # identical ranking wherever the brute-force values are distinguishable at float precision
    assert not (swapped & (gaps > 1e-4 * want.abs().max())).any(), label


def _switched_off(model, batch, layer: int, site: str, width: int, own_heads: bool = False) -> torch.Tensor:  # noqa: ANN001
    """[docs, width]: the PLND score of each neuron by definition — switch it off through the real
    hooks, recompute the layer's attention probabilities, Σ over keys and heads of (p′ − p)², token mean.
    `own_heads`: only the heads that read the neuron (its head; a K neuron's group)."""
    weights = token_weights(batch.attention_mask)
    base = _probabilities(model, batch, layer, NeuronSet.empty())
    per_doc = torch.empty(batch.input_ids.shape[0], width)
    d = adapter_for(model).dims(model.config)
    for n in range(width):
        p = _probabilities(model, batch, layer, NeuronSet.from_dict({site: {layer: [n]}}))
        change = (p - base).pow(2).sum(-1)  # [B, H, T]
        if own_heads:
            heads = [n // d.head_dim] if site == "attn.q" else list(kv_group(n // d.head_dim, d.heads, d.kv_heads))
            change = change[:, heads]
        per_token = change.sum(1)  # [B, T]: Σ over keys and (changed) heads
        per_doc[:, n] = (per_token * weights).sum(1) / weights.sum(1)
    return per_doc


@pytest.mark.parametrize("shape", list(SHAPES))
def test_qk_scores_equal_deactivating_the_neuron(shape: str) -> None:
    arch, overrides = SHAPES[shape]
    model = tiny_model(arch, **overrides)
    dims = adapter_for(model).dims(model.config)
    batch = next(iter_batches(DOCS, batch_size=len(DOCS), pad_id=0))
    stats = plnd_statistics(model, [batch], ["attn.q", "attn.k"])
    for layer in range(dims.num_layers):
        for site in ("attn.q", "attn.k"):
            per_doc = _switched_off(model, batch, layer, site, site_width(dims, site))
            label = f"{shape} layer {layer} {site}"
            _assert_same_values_and_ranking(stats[site].sum[layer].float(), per_doc.sum(0), label)
            assert torch.allclose(stats[site].min[layer], per_doc.min(0).values, rtol=2e-4, atol=1e-12), label


def test_zero_qk_norm_gains_equal_deactivating_the_neuron() -> None:
    """Gemma 3 270M's q/k norms have gains of exactly 0 (weight -1): such a neuron changes
    attention only through its head's mean square. Scores stay finite and equal switching it off."""
    model = tiny_model("gemma3_text")
    dims = adapter_for(model).dims(model.config)
    with torch.no_grad():
        for layer in range(dims.num_layers):
            attn = adapter_for(model).attention(model, layer)
            attn.q_norm.weight[[0, 3]] = -1.0
            attn.k_norm.weight[1] = -1.0
    batch = next(iter_batches(DOCS, batch_size=len(DOCS), pad_id=0))
    stats = plnd_statistics(model, [batch], ["attn.q", "attn.k"])
    for layer in range(dims.num_layers):
        for site in ("attn.q", "attn.k"):
            per_doc = _switched_off(model, batch, layer, site, site_width(dims, site))
            assert torch.isfinite(stats[site].sum[layer]).all(), (layer, site)
            _assert_same_values_and_ranking(stats[site].sum[layer].float(), per_doc.sum(0), f"zero gains layer {layer} {site}")


def test_olmo2_whole_projection_qk_norm_scores_the_neurons_own_heads() -> None:
    """OLMo 2's q/k norm spans all heads: a neuron's score is its own head's (a K neuron: its group's)
    probability change, exact, with the norm's rescale over the whole projection. The other heads,
    rescaled by the same factor, change far less (what the score leaves out)."""
    model = tiny_model("olmo2")
    dims = adapter_for(model).dims(model.config)
    batch = next(iter_batches(DOCS, batch_size=len(DOCS), pad_id=0))
    stats = plnd_statistics(model, [batch], ["attn.q", "attn.k"])
    for layer in range(dims.num_layers):
        for site in ("attn.q", "attn.k"):
            width = site_width(dims, site)
            own = _switched_off(model, batch, layer, site, width, own_heads=True)
            label = f"olmo2 layer {layer} {site}"
            _assert_same_values_and_ranking(stats[site].sum[layer].float(), own.sum(0), label)
            assert torch.allclose(stats[site].min[layer], own.min(0).values, rtol=2e-4, atol=1e-12), label
            if layer == 0:
                every = _switched_off(model, batch, layer, site, width)
                left_out = (every.sum(0) - own.sum(0)) / every.sum(0)
                assert float(left_out.max()) < 0.05, (label, left_out)
