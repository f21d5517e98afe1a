"""The shared activation pass against direct computations from the hooked module's input."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from neuronspec.methods.activations import (
    ActivationStats,
    activation_statistics,
    gate_module,
)
from neuronspec.models.forward import iter_batches
from neuronspec.models.sites import adapter_for
from neuronspec.models.tiny import ARCHITECTURES, tiny_model

DOCS = [[1, 5, 9, 33, 40, 41, 7, 8], [1, 60, 61, 3, 4], [1, 70, 12, 13, 14, 15], [1, 20]]


def _direct(model, docs, skip_first=True):
    """Per-document ffn inputs [T, L, I] from a plain full forward, one document at a time."""
    adapter = adapter_for(model)
    L = adapter.dims(model.config).num_layers
    out = []
    for ids in docs:
        seen: dict[int, torch.Tensor] = {}
        handles = [adapter.ffn_down(model, i).register_forward_pre_hook(
            lambda m, a, i=i: seen.__setitem__(i, a[0][0].detach().clone())) for i in range(L)]
        try:
            with torch.no_grad():
                model(input_ids=torch.tensor([ids]))
        finally:
            for h in handles:
                h.remove()
        out.append(torch.stack([seen[i] for i in range(L)], dim=1))  # [T, L, I]
    return out


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_pooled_and_counts_match_direct_forward(arch: str) -> None:
    model = tiny_model(arch)
    batches = list(iter_batches(DOCS, batch_size=3, pad_id=0))
    stats = activation_statistics(model, batches, poolings=("mean", "mean_abs", "last"),
                                  thresholds=(0.0, 0.05), gate_counts=True)
    acts = _direct(model, DOCS)
    L, W = stats.num_layers, stats.width
    assert stats.pooled["mean"].shape == (len(DOCS), L * W)
    counted = [a[1:] for a in acts]  # first token skipped
    for n, a in enumerate(counted):
        assert torch.allclose(stats.per_layer("mean")[n], a.mean(0), atol=1e-5)
        assert torch.allclose(stats.per_layer("mean_abs")[n], a.abs().mean(0), atol=1e-5)
        assert torch.allclose(stats.per_layer("last")[n], acts[n][-1], atol=1e-5)
        # layer slice of the concatenated row is that layer's activations
        assert torch.allclose(stats.pooled["mean"][n, stats.layer_slice(1)], a[:, 1].mean(0), atol=1e-5)
    tokens = torch.cat(counted)  # [N, L, I]
    assert stats.tokens == tokens.shape[0] == sum(len(d) - 1 for d in DOCS)
    assert stats.sample_tokens.tolist() == [len(d) - 1 for d in DOCS]
    assert torch.equal(stats.counts[0], (tokens > 0).sum(0))
    assert torch.equal(stats.counts[1], (tokens > 0.05).sum(0))
    assert torch.allclose(stats.probability(0.05), (tokens > 0.05).double().mean(0))
    if arch in ("gpt2", "bloom", "gpt_neox"):  # plain MLPs: the gate event is the neuron event
        assert torch.equal(stats.gate_counts, stats.counts[0])


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_gate_counts_are_activation_function_outputs(arch: str) -> None:
    model = tiny_model(arch)
    module, coords = gate_module(model, 0)
    mlp = model.model.layers[0].mlp
    assert module is (mlp.gate_up_proj if arch == "phi3" else mlp.gate_proj)  # Phi-3: the gate half of the fused one
    assert torch.equal(coords, torch.arange(model.config.intermediate_size))
    stats = activation_statistics(model, iter_batches(DOCS, batch_size=4, pad_id=0), poolings=(), thresholds=(),
                                  gate_counts=True)
    per_layer = []
    for i, layer in enumerate(model.model.layers):
        got = []
        act = layer.mlp.activation_fn if arch == "phi3" else layer.mlp.act_fn
        h = act.register_forward_hook(lambda m, a, out: got.append(out.detach()))
        try:
            with torch.no_grad():
                for ids in DOCS:
                    model(input_ids=torch.tensor([ids]))
        finally:
            h.remove()
        per_layer.append(sum((g[0, 1:] > 0).sum(0) for g in got))
    assert torch.equal(stats.gate_counts, torch.stack(per_layer))
    assert stats.pooled == {} and stats.counts is None


@pytest.mark.parametrize("arch", ["gemma3_text", "gpt2"])
def test_persistence(arch: str, tmp_path) -> None:
    model = tiny_model(arch)
    stats = activation_statistics(model, iter_batches(DOCS, batch_size=2, pad_id=0),
                                  pooled_dtype=torch.float16, n_samples=len(DOCS))
    assert stats.pooled["mean"].dtype == torch.float16
    save_file(stats.to_tensors(), tmp_path / "a.safetensors")
    back = ActivationStats.from_tensors(load_file(tmp_path / "a.safetensors"))
    assert back.thresholds == stats.thresholds and back.tokens == stats.tokens
    assert torch.equal(back.pooled["mean"], stats.pooled["mean"])
    both = ActivationStats.concat([stats, back])
    assert both.n_samples == 2 * len(DOCS) and torch.equal(both.counts, 2 * stats.counts)


def test_rows_must_cover_indices() -> None:
    model = tiny_model("llama")
    batches = list(iter_batches(DOCS, batch_size=2, pad_id=0))
    with pytest.raises(ValueError, match="exactly once"):
        activation_statistics(model, batches[:1])  # rows 0..max covered only partly
    with pytest.raises(ValueError, match="exactly once"):
        activation_statistics(model, batches + batches[:1])
    with pytest.raises(ValueError, match="unknown pooling"):
        activation_statistics(model, batches, poolings=("max",))
