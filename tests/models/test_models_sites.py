"""The site registry: widths, module shapes, fused layouts and the GQA head mapping."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch
from transformers import OPTConfig
from transformers.models.llama.modeling_llama import repeat_kv

from neuronspec.models import sites
from neuronspec.models.attention import capture_attention
from neuronspec.models.masks import NeuronSet, deactivate
from neuronspec.models.sites import (
    SITES,
    Dims,
    GatedAdapter,
    SiteShapeError,
    UnsupportedArchitecture,
    adapter_for,
    kv_group,
    register_adapter,
    site_width,
)
from neuronspec.models.tiny import ARCHITECTURES, tiny_model


@lru_cache(maxsize=None)
def model(arch: str) -> torch.nn.Module:
    return tiny_model(arch)


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 96, (2, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 14:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_site_width() -> None:
    d = Dims(num_layers=2, hidden=16, intermediate=40, heads=6, kv_heads=2, head_dim=4)
    assert [site_width(d, s) for s in SITES] == [40, 24, 8, 8, 24]
    with pytest.raises(ValueError, match="valid sites"):
        site_width(d, "mlp")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_widths_match_module_tensors(arch: str) -> None:
    """Every site's hook point carries exactly `width` neurons in a real forward pass."""
    m = model(arch)
    adapter = adapter_for(m)
    dims = adapter.dims(m.config)
    seen: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for i in range(dims.num_layers):
        for site in SITES:
            p = adapter.hook_point(m, i, site)
            assert p.width == site_width(dims, site)
            if p.kind == "input":
                handles.append(p.module.register_forward_pre_hook(
                    lambda mod, args, key=(i, site): seen.__setitem__(key, args[0])))
            else:
                handles.append(p.module.register_forward_hook(
                    lambda mod, args, out, key=(i, site): seen.__setitem__(key, out)))
    with torch.no_grad():
        m(**batch())
    for h in handles:
        h.remove()
    for i in range(dims.num_layers):
        assert seen[i, "ffn"].shape[-1] == dims.intermediate
        assert seen[i, "attn.o"].shape[-1] == dims.heads * dims.head_dim
        # q/k/v coordinates: inside the module output, disjoint, and covering a fused output exactly.
        coords = {}
        for site in ("attn.q", "attn.k", "attn.v"):
            p = adapter.hook_point(m, i, site)
            c = p.index_fn(torch.arange(p.width))
            assert c.unique().numel() == p.width and int(c.max()) < seen[i, site].shape[-1]
            coords.setdefault(id(p.module), []).append(c)
        for module_id, cs in coords.items():
            allc = torch.cat(cs)
            assert allc.unique().numel() == allc.numel()
            if len(cs) == 3:
                assert sorted(allc.tolist()) == list(range(allc.numel()))
        assert adapter.down_weight(m, i).shape == (dims.hidden, dims.intermediate)
        assert adapter.o_weight(m, i).shape == (dims.hidden, dims.heads * dims.head_dim)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_module_accessors(arch: str) -> None:
    m = model(arch)
    a = adapter_for(m)
    assert len(a.layers(m)) == a.dims(m.config).num_layers
    assert a.unembed(m) is m.get_output_embeddings()
    assert a.final_norm(m) in list(a.base(m).modules())
    assert a.unembed(m) not in list(a.base(m).modules())


def test_bloom_fused_qkv_layout_follows_transformers() -> None:
    """Neuron n of q/k/v equals BloomAttention._reshape's query/key/value coordinate n."""
    m = model("bloom")
    a = adapter_for(m)
    attn = a.attention(m, 0)
    fused = torch.randn(1, 3, attn.num_heads * 3 * attn.head_dim)
    q, k, v = attn._reshape(fused)  # [B, heads, T, head_dim]
    for site, ref in zip(("attn.q", "attn.k", "attn.v"), (q, k, v)):
        _, fn = a.projection(m, 0, site)
        ours = fused[..., fn(torch.arange(a.dims(m.config).heads * attn.head_dim))]
        assert torch.equal(ours, ref.transpose(1, 2).reshape(1, 3, -1))


def test_gpt2_fused_qkv_layout_follows_transformers() -> None:
    m = model("gpt2")
    a = adapter_for(m)
    fused = torch.randn(1, 3, 3 * m.config.n_embd)
    q, k, v = fused.split(m.config.n_embd, dim=2)  # as GPT2Attention does
    for site, ref in zip(("attn.q", "attn.k", "attn.v"), (q, k, v)):
        _, fn = a.projection(m, 0, site)
        assert torch.equal(fused[..., fn(torch.arange(m.config.n_embd))], ref)


def test_phi3_fused_projections_follow_transformers() -> None:
    """q/k/v neurons are Phi3Attention's slices of qkv_proj; ffn neuron n owns the gate and up
    coordinates that Phi3MLP's chunk(2) pairs."""
    m = model("phi3")
    a = adapter_for(m)
    d = a.dims(m.config)
    attn = a.attention(m, 0)
    fused = torch.randn(1, 3, attn.qkv_proj.out_features)
    q_end = m.config.num_attention_heads * attn.head_dim
    refs = (fused[..., :q_end], fused[..., q_end:q_end + attn.num_key_value_heads * attn.head_dim],
            fused[..., q_end + attn.num_key_value_heads * attn.head_dim:])
    for site, ref in zip(("attn.q", "attn.k", "attn.v"), refs):
        module, fn = a.projection(m, 0, site)
        assert module is attn.qkv_proj
        assert torch.equal(fused[..., fn(torch.arange(site_width(d, site)))], ref)
    gate_up = torch.randn(1, 3, 2 * d.intermediate)
    gate, up = gate_up.chunk(2, dim=-1)
    (up_module, up_fn), (gate_module, gate_fn) = a.ffn_in_slices(m, 0)
    assert up_module is gate_module is m.model.layers[0].mlp.gate_up_proj
    every = torch.arange(d.intermediate)
    assert torch.equal(gate_up[..., up_fn(every)], up) and torch.equal(gate_up[..., gate_fn(every)], gate)


def test_gpt_neox_fused_qkv_layout_follows_transformers() -> None:
    """Neuron n of q/k/v equals GPTNeoXAttention's per-head chunk of query_key_value."""
    m = model("gpt_neox")
    a = adapter_for(m)
    d = a.dims(m.config)
    fused = torch.randn(1, 3, 3 * d.hidden)
    q, k, v = fused.view(1, 3, d.heads, 3 * d.head_dim).chunk(3, dim=-1)  # as GPTNeoXAttention does
    for site, ref in zip(("attn.q", "attn.k", "attn.v"), (q, k, v)):
        _, fn = a.projection(m, 0, site)
        assert torch.equal(fused[..., fn(torch.arange(d.hidden))], ref.reshape(1, 3, -1))


def test_check_detects_width_mismatch() -> None:
    m = tiny_model("llama")
    m.config.intermediate_size = 40
    with pytest.raises(SiteShapeError, match="intermediate|ffn"):
        adapter_for(m)


def test_unsupported_architecture_says_how_to_add_one() -> None:
    with pytest.raises(UnsupportedArchitecture) as err:
        adapter_for(OPTConfig())
    msg = str(err.value)
    assert "'opt'" in msg and "llama" in msg and "gpt2" in msg and "register_adapter" in msg


def test_register_adapter_adds_a_family() -> None:
    class Custom(GatedAdapter):
        model_types = ("my_llama_clone",)

    try:
        register_adapter(Custom)
        cfg = tiny_model("llama").config
        cfg.model_type = "my_llama_clone"
        assert isinstance(adapter_for(cfg), Custom)
    finally:
        sites._REGISTRY.pop("my_llama_clone", None)


# ---- grouped-query attention ------------------------------------------------------------


def test_kv_group_exact() -> None:
    assert kv_group(0, 4, 2) == range(0, 2)
    assert kv_group(1, 4, 2) == range(2, 4)
    assert kv_group(2, 9, 3) == range(6, 9)
    assert kv_group(0, 4, 1) == range(0, 4)
    assert kv_group(3, 4, 4) == range(3, 4)
    with pytest.raises(ValueError):
        kv_group(2, 4, 2)
    with pytest.raises(ValueError):
        kv_group(0, 6, 4)


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (9, 3), (8, 1), (6, 6)])
def test_kv_group_matches_repeat_kv(heads: int, kv_heads: int) -> None:
    """transformers' repeat_kv sends KV head h_kv to exactly the query heads of kv_group."""
    x = torch.arange(kv_heads, dtype=torch.float32).view(1, kv_heads, 1, 1)
    per_query_head = repeat_kv(x, heads // kv_heads).flatten().long().tolist()
    for h_kv in range(kv_heads):
        assert [h for h, src in enumerate(per_query_head) if src == h_kv] == list(kv_group(h_kv, heads, kv_heads))


def _attn_out(m: torch.nn.Module, layer: int, neurons: NeuronSet) -> tuple[torch.Tensor, dict]:
    """Input of o_proj (the real attention output) and the keys attention saw, under a mask."""
    a = adapter_for(m)
    store: dict = {}
    h = a.attn_out(m, layer).register_forward_pre_hook(lambda mod, args: store.__setitem__("o", args[0]))
    try:
        with torch.no_grad(), deactivate(m, neurons), capture_attention(
                m, lambda i, q, k, *_: store.__setitem__("k", k), {layer}):
            m(**batch())
    finally:
        h.remove()
    return store["o"], store


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3_text", "gemma2", "olmo2", "qwen3", "phi3", "ministral"])
def test_gqa_value_neuron_hits_exactly_its_group(arch: str) -> None:
    """Masking v neuron (h_kv, d) == zeroing coordinate d of every query head of group h_kv."""
    m = model(arch)
    d = adapter_for(m).dims(m.config)
    assert d.kv_heads < d.heads
    base, _ = _attn_out(m, 1, NeuronSet.empty())
    for h_kv in range(d.kv_heads):
        dim = 3
        masked, _ = _attn_out(m, 1, NeuronSet.from_dict({"attn.v": {1: [h_kv * d.head_dim + dim]}}))
        expected = base.view(*base.shape[:2], d.heads, d.head_dim).clone()
        expected[:, :, list(kv_group(h_kv, d.heads, d.kv_heads)), dim] = 0
        torch.testing.assert_close(masked, expected.flatten(2), rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3_text", "gemma2", "qwen3", "phi3", "ministral"])
def test_gqa_key_neuron_changes_only_its_group(arch: str) -> None:
    """Masking k neuron (h_kv, d) changes key head h_kv only, hence only its group's outputs."""
    m = model(arch)
    d = adapter_for(m).dims(m.config)
    base, base_store = _attn_out(m, 1, NeuronSet.empty())
    for h_kv in range(d.kv_heads):
        masked, store = _attn_out(m, 1, NeuronSet.from_dict({"attn.k": {1: [h_kv * d.head_dim + 2]}}))
        for other in range(d.kv_heads):
            same = torch.equal(store["k"][:, other], base_store["k"][:, other])
            assert same == (other != h_kv)
        group = set(kv_group(h_kv, d.heads, d.kv_heads))
        per_head = (masked - base).view(*base.shape[:2], d.heads, d.head_dim).abs().amax(dim=(0, 1, 3))
        for h in range(d.heads):
            assert (per_head[h] > 1e-6) == (h in group), (h, per_head)


def test_gemma3_multimodal_text_part() -> None:
    """Gemma3ForConditionalGeneration: sites live in model.model.language_model."""
    from neuronspec.models.forward import hidden_forward
    from neuronspec.models.masks import zero_weights
    from neuronspec.models.testing import tiny_gemma3_multimodal

    m = tiny_gemma3_multimodal()
    a = adapter_for(m)
    assert a.base(m) is m.model.language_model and a.unembed(m) is m.lm_head
    assert a.dims(m.config) == adapter_for(model("gemma3_text")).dims(model("gemma3_text").config)
    ids = batch()
    neurons = NeuronSet.from_dict({s: {1: [0, 3]} for s in SITES})
    with torch.no_grad():
        ref = m(**ids)
        with deactivate(m, neurons):
            hooked = m(**ids).logits
        torch.testing.assert_close(hooked, zero_weights(m, neurons)(**ids).logits, rtol=1e-6, atol=1e-6)
        full = m(**ids, output_hidden_states=True).hidden_states
        torch.testing.assert_close(hidden_forward(m, ids["input_ids"], ids["attention_mask"], 1), full[2])
        seen = []
        with capture_attention(m, lambda i, q, k, *rest: seen.append(i), {0, 2}):
            torch.testing.assert_close(m(**ids).logits, ref.logits)
    assert seen == [0, 2]
