"""capture_attention hands out the q/k that attention really uses."""

from __future__ import annotations

import pytest
import torch

from neuronspec.models.attention import additive_mask, capture_attention
from neuronspec.models.sites import adapter_for
from neuronspec.models.tiny import tiny_model


def batch(t: int = 24) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 96, (2, t), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2"])
def test_recomputed_attention_equals_module_output(arch: str, impl: str) -> None:
    """softmax(q.k^T * scaling + mask).v from the captured tensors == the input of o_proj."""
    m = tiny_model(arch)
    m.set_attn_implementation(impl)
    a = adapter_for(m)
    d = a.dims(m.config)
    layers = range(d.num_layers)
    captured, values, outputs = {}, {}, {}
    handles = []
    for i in layers:
        v_mod, v_idx = a.projection(m, i, "attn.v")
        cols = v_idx(torch.arange(d.kv_heads * d.head_dim))
        handles.append(v_mod.register_forward_hook(lambda mod, args, out, i=i, c=cols: values.__setitem__(i, out[..., c])))
        handles.append(a.attn_out(m, i).register_forward_pre_hook(lambda mod, args, i=i: outputs.__setitem__(i, args[0])))

    def callback(layer, query, key, mask, scaling, module) -> None:  # noqa: ANN001
        assert module is a.attention(m, layer)
        captured[layer] = (query, key, mask, scaling)

    with torch.no_grad():
        ref = m(**batch()).logits
        with capture_attention(m, callback, set(layers)):
            assert m.config._attn_implementation == "neuronspec"
            out = m(**batch()).logits
    for h in handles:
        h.remove()
    assert m.config._attn_implementation == impl
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)

    rep = d.heads // d.kv_heads
    masks = {}
    for i in layers:
        q, k, mask, scaling = captured[i]
        b, h, t, hd = q.shape
        assert (h, hd) == (d.heads, d.head_dim) and k.shape[1] == d.kv_heads  # key before repeat_kv
        assert mask is not None and mask.dtype == (torch.bool if impl == "sdpa" else torch.float32)
        v = values[i].view(b, t, d.kv_heads, hd).transpose(1, 2)
        scores = q @ k.repeat_interleave(rep, 1).transpose(-1, -2) * scaling
        probs = (scores + additive_mask(mask)[..., : k.shape[-2]]).softmax(-1)
        recomputed = (probs @ v.repeat_interleave(rep, 1)).transpose(1, 2).reshape(b, t, h * hd)
        torch.testing.assert_close(recomputed, outputs[i], rtol=1e-5, atol=1e-6)
        masks[i] = additive_mask(mask)
    if arch == "gemma3_text":  # layers 0-1 slide over 16 tokens, layer 2 sees everything
        allowed = [int((masks[i][0, 0] == 0).sum()) for i in layers]
        assert allowed[0] == allowed[1] < allowed[2] == 24 * 25 // 2


def test_only_requested_layers_call_back_and_restore_on_error() -> None:
    m = tiny_model("llama")
    calls: list[int] = []
    with pytest.raises(RuntimeError, match="stop"):
        with torch.no_grad(), capture_attention(m, lambda i, *rest: calls.append(i), {1}):
            m(**batch())
            raise RuntimeError("stop")
    assert calls == [1]
    assert m.config._attn_implementation == "sdpa"
    with torch.no_grad():
        m(**batch())  # works normally afterwards
    assert calls == [1]


def test_nesting_is_refused() -> None:
    m = tiny_model("llama")
    with capture_attention(m, lambda *a: None, {0}):
        with pytest.raises(RuntimeError, match="nest"):
            with capture_attention(m, lambda *a: None, {1}):
                pass
    assert m.config._attn_implementation == "sdpa"


def test_bloom_is_refused_clearly() -> None:
    with pytest.raises(NotImplementedError, match="bloom"):
        with capture_attention(tiny_model("bloom"), lambda *a: None, {0}):
            pass


def test_additive_mask() -> None:
    b = torch.tensor([[True, False]])
    f = additive_mask(b)
    assert f[0, 0] == 0 and f[0, 1] == torch.finfo(torch.float32).min
    assert additive_mask(None) is None and torch.equal(additive_mask(f), f)
