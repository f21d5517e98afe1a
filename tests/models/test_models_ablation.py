"""Mean ablation against a naive implementation: means by a per-document, per-token loop over
modules named here (not through the adapters), and ablated logits by hooks written here."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from neuronspec.models.ablation import ActivationMeans, activation_means, mean_ablated
from neuronspec.models.forward import iter_batches, iter_packed
from neuronspec.models.masks import NeuronSet, deactivate
from neuronspec.models.tiny import tiny_model

DOCS = [[1, 5, 9, 30, 44, 7, 8], [1, 60, 61], [1, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [1, 70, 71, 72, 73]]


@lru_cache(maxsize=None)
def model(arch: str) -> torch.nn.Module:
    return tiny_model(arch)


def site_tensor(arch: str, m: torch.nn.Module, layer: int, site: str) -> tuple[torch.nn.Module, str, slice]:
    """(module, "input" | "output", the site's slice of its last dim), written out per architecture."""
    if arch == "llama":
        block = m.model.layers[layer]
        return {"ffn": (block.mlp.down_proj, "input", slice(None)),
                "attn.q": (block.self_attn.q_proj, "output", slice(None)),
                "attn.k": (block.self_attn.k_proj, "output", slice(None)),
                "attn.v": (block.self_attn.v_proj, "output", slice(None)),
                "attn.o": (block.self_attn.o_proj, "input", slice(None))}[site]
    block = m.transformer.h[layer]  # gpt2: one fused c_attn [q | k | v], 32 wide each
    return {"ffn": (block.mlp.c_proj, "input", slice(None)),
            "attn.q": (block.attn.c_attn, "output", slice(0, 32)),
            "attn.k": (block.attn.c_attn, "output", slice(32, 64)),
            "attn.v": (block.attn.c_attn, "output", slice(64, 96)),
            "attn.o": (block.attn.c_proj, "input", slice(None))}[site]


def naive_means(arch: str, site: str, layer: int) -> torch.Tensor:
    m = model(arch)
    module, where, part = site_tensor(arch, m, layer, site)
    seen: list[torch.Tensor] = []

    def grab(mod, args, output=None):  # noqa: ANN001, ANN202
        seen.append((args[0] if where == "input" else output)[0, :, part].detach().double())

    h = module.register_forward_pre_hook(grab) if where == "input" else module.register_forward_hook(grab)
    try:
        with torch.no_grad():
            for doc in DOCS:  # one document at a time: no padding at all
                m(input_ids=torch.tensor([doc]))
    finally:
        h.remove()
    total, count = torch.zeros(seen[0].shape[-1], dtype=torch.float64), 0
    for acts in seen:
        for token in acts:
            total += token
            count += 1
    return total / count


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("packed", [False, True])
def test_means_match_a_per_token_loop(arch: str, packed: bool) -> None:
    make = iter_packed if packed else iter_batches
    means = activation_means(model(arch), make(DOCS, batch_size=3, pad_id=0))
    assert means.tokens == sum(len(d) for d in DOCS)
    for site in ("ffn", "attn.q", "attn.k", "attn.v", "attn.o"):
        for layer in range(model(arch).config.num_hidden_layers):
            torch.testing.assert_close(means.of(site, layer).double(), naive_means(arch, site, layer), rtol=1e-5, atol=1e-6)
    again = ActivationMeans.from_tensors(means.to_tensors())
    assert again.tokens == means.tokens and torch.equal(again.of("attn.k", 1), means.of("attn.k", 1))


def naive_ablated_logits(arch: str, neurons: NeuronSet, means: ActivationMeans, ids: torch.Tensor) -> torch.Tensor:
    m = model(arch)
    handles = []
    for site, layer, idx in neurons.items():
        module, where, part = site_tensor(arch, m, layer, site)
        offset = part.start or 0
        values = {int(i): float(means.of(site, layer)[int(i)]) for i in idx}

        def setter(x: torch.Tensor, values: dict[int, float] = values, offset: int = offset) -> torch.Tensor:
            x = x.clone()
            for i, v in values.items():
                x[..., offset + i] = v
            return x

        if where == "input":
            handles.append(module.register_forward_pre_hook(lambda mod, args, f=setter: (f(args[0]), *args[1:])))
        else:
            handles.append(module.register_forward_hook(lambda mod, args, out, f=setter: f(out)))
    try:
        with torch.no_grad():
            return m(input_ids=ids).logits
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("site", ["ffn", "attn.q", "attn.k", "attn.v", "attn.o"])
def test_mean_ablated_logits_match_hand_written_hooks(arch: str, site: str) -> None:
    m = model(arch)
    means = activation_means(m, iter_batches(DOCS, batch_size=2, pad_id=0))
    neurons = NeuronSet.from_dict({site: {0: [0, 3, 7], 2: [1, 5]}, "ffn": {1: [2, 40]}})
    ids = torch.tensor([[1, 4, 8, 15, 16, 23, 42, 50]])
    with torch.no_grad():
        base = m(input_ids=ids).logits
        with mean_ablated(m, neurons, means):
            ablated = m(input_ids=ids).logits
    expected = naive_ablated_logits(arch, neurons, means, ids)
    torch.testing.assert_close(ablated, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ablated, base)
    with torch.no_grad():  # the hooks are gone
        assert torch.equal(m(input_ids=ids).logits, base)


def test_zero_means_are_zero_ablation_and_empty_sets_change_nothing() -> None:
    m = model("llama")
    neurons = NeuronSet.from_dict({"ffn": {0: [1, 2]}, "attn.v": {2: [0, 15]}})
    zero = ActivationMeans({s: {l: torch.zeros(64) for l in range(3)} for s in ("ffn", "attn.v")}, 1)
    ids = torch.tensor([[1, 4, 8, 15, 16]])
    with torch.no_grad():
        base = m(input_ids=ids).logits
        with deactivate(m, neurons):
            zeroed = m(input_ids=ids).logits
        with mean_ablated(m, neurons, zero):
            assert torch.equal(m(input_ids=ids).logits, zeroed)
        with mean_ablated(m, NeuronSet.empty(), zero):
            assert torch.equal(m(input_ids=ids).logits, base)


def test_out_of_range_and_missing_means_raise() -> None:
    m = model("llama")
    means = ActivationMeans({"ffn": {0: torch.zeros(48)}}, 1)
    with pytest.raises(ValueError, match="out of range"), mean_ablated(m, NeuronSet.from_dict({"ffn": {0: [48]}}), means):
        pass
    with pytest.raises(KeyError, match="attn.q layer 0"), mean_ablated(m, NeuronSet.from_dict({"attn.q": {0: [1]}}), means):
        pass
