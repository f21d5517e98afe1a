"""NeuronSet algebra and persistence; applying masks by hooks and by weight zeroing."""

from __future__ import annotations

import copy
import json
from functools import lru_cache

import pytest
import torch
from safetensors import safe_open

from neuronspec.models.masks import NeuronSet, deactivate, zero_weights, zeroed
from neuronspec.models.sites import SITES, Dims, adapter_for, site_width
from neuronspec.models.tiny import ARCHITECTURES, MOE_ARCHITECTURES, tiny_model

DIMS = Dims(num_layers=4, hidden=16, intermediate=40, heads=4, kv_heads=2, head_dim=4)


@lru_cache(maxsize=None)
def model(arch: str) -> torch.nn.Module:
    return tiny_model(arch)


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 96, (3, 18), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    mask[2, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def hooks(m: torch.nn.Module) -> list[tuple[int, ...]]:
    """Every forward (pre-)hook id in the model (transformers may install its own)."""
    return [(*mod._forward_hooks, *mod._forward_pre_hooks) for mod in m.modules()]


def logits(m: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return m(**batch()).logits


# ---- the value type ----------------------------------------------------------------------


def test_canonical_form() -> None:
    a = NeuronSet.from_dict({"ffn": {"3": [5, 1, 5, 2], 0: []}, "attn.k": {}})
    assert a.to_dict() == {"ffn": {3: [1, 2, 5]}}
    assert a.sites() == ["ffn"] and a.layers("ffn") == [3] and a.layers("attn.q") == []
    assert a.indices("ffn", 3).dtype == torch.int64 and a.indices("ffn", 3).tolist() == [1, 2, 5]
    assert a.indices("ffn", 7).numel() == 0
    assert a == NeuronSet.from_dict({"ffn": {3: (2, 1, 5)}})
    assert hash(a) == hash(NeuronSet.from_dict({"ffn": {3: [1, 2, 5]}}))
    assert NeuronSet.from_dict({"ffn": {0: []}}) == NeuronSet.empty() and not NeuronSet.empty()
    # sites come out in registry order whatever the input order
    assert NeuronSet.from_dict({"attn.o": {0: [1]}, "ffn": {0: [1]}}).sites() == ["ffn", "attn.o"]


def test_indices_are_copies() -> None:
    a = NeuronSet.from_dict({"ffn": {0: [1, 2]}})
    a.indices("ffn", 0)[0] = 99
    assert a.indices("ffn", 0).tolist() == [1, 2]


def test_invalid_values_raise() -> None:
    with pytest.raises(ValueError, match="site"):
        NeuronSet.from_dict({"mlp": {0: [1]}})
    with pytest.raises(ValueError, match=">= 0"):
        NeuronSet.from_dict({"ffn": {0: [-1]}})
    with pytest.raises(ValueError, match="layer"):
        NeuronSet.from_dict({"ffn": {-1: [1]}})


def test_algebra() -> None:
    a = NeuronSet.from_dict({"ffn": {0: [1, 2, 3], 1: [4]}, "attn.q": {2: [0]}})
    b = NeuronSet.from_dict({"ffn": {0: [3, 4], 2: [9]}, "attn.q": {2: [0]}})
    assert (a | b).to_dict() == {"ffn": {0: [1, 2, 3, 4], 1: [4], 2: [9]}, "attn.q": {2: [0]}}
    assert (a & b).to_dict() == {"ffn": {0: [3]}, "attn.q": {2: [0]}}
    assert (a - b).to_dict() == {"ffn": {0: [1, 2], 1: [4]}}
    assert (b - a).to_dict() == {"ffn": {0: [4], 2: [9]}}
    assert (a - a) == NeuronSet.empty() and (a | NeuronSet.empty()) == a
    assert a.count() == 5 and a.count("ffn") == 4 and a.count("attn.v") == 0
    assert a.per_layer_counts() == {"ffn": {0: 3, 1: 1}, "attn.q": {2: 1}}
    assert a.restrict(layers=[0, 2]).to_dict() == {"ffn": {0: [1, 2, 3]}, "attn.q": {2: [0]}}
    assert a.restrict(sites=["attn.q"]).to_dict() == {"attn.q": {2: [0]}}
    assert a.restrict(layers=[1], sites=["attn.q"]) == NeuronSet.empty()
    assert a.jaccard(b) == pytest.approx(2 / 7)
    assert a.jaccard(a) == 1.0 and NeuronSet.empty().jaccard(NeuronSet.empty()) == 1.0
    assert a.jaccard(NeuronSet.empty()) == 0.0


def test_exclusive_form_is_one_line() -> None:
    """"Relevant for zh but for no other language" is a difference of a union."""
    rel = {
        "zh": NeuronSet.from_dict({"ffn": {0: [1, 2, 3]}}),
        "hi": NeuronSet.from_dict({"ffn": {0: [2]}}),
        "en": NeuronSet.from_dict({"ffn": {0: [3, 4]}}),
    }
    others = NeuronSet.empty()
    for lang, s in rel.items():
        if lang != "zh":
            others = others | s
    assert (rel["zh"] - others).to_dict() == {"ffn": {0: [1]}}


def test_json_round_trip() -> None:
    a = NeuronSet.from_dict({"ffn": {0: [1, 2]}, "attn.v": {5: [7]}})
    assert NeuronSet.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def test_save_load_round_trip(tmp_path) -> None:  # noqa: ANN001
    a = NeuronSet.from_dict({"ffn": {0: [1, 2], 11: [0]}, "attn.o": {3: [40]}})
    path = a.save(tmp_path / "sub" / "set.safetensors")
    assert NeuronSet.load(path) == a
    with safe_open(str(path), "pt") as f:
        assert sorted(f.keys()) == ["attn.o/3", "ffn/0", "ffn/11"]
        assert f.metadata()["format"] == "neuronspec.NeuronSet"
    assert NeuronSet.load(NeuronSet.empty().save(tmp_path / "empty.safetensors")) == NeuronSet.empty()
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["set.safetensors"]  # no temp files left
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a saved NeuronSet"):
        NeuronSet.load(tmp_path / "other.safetensors")


def test_random_like() -> None:
    a = NeuronSet.from_dict({"ffn": {0: range(10), 3: [1, 2]}, "attn.k": {1: [0, 1, 2]}})
    r = a.random_like(DIMS, seed=0)
    assert r.per_layer_counts() == a.per_layer_counts()
    assert r == a.random_like(DIMS, seed=0)
    assert r != a.random_like(DIMS, seed=1)
    for site, layer, idx in r.items():
        assert int(idx.max()) < site_width(DIMS, site)
    # exclusion: avoided while possible ...
    r2 = a.random_like(DIMS, seed=0, exclude=a)
    assert (r2 & a) == NeuronSet.empty()
    # ... and when not possible the count is still kept
    crowded = NeuronSet.from_dict({"attn.k": {1: range(7)}})
    r3 = crowded.random_like(DIMS, seed=0, exclude=NeuronSet.from_dict({"attn.k": {1: range(3)}}))
    assert r3.count() == 7 and set(range(3, 8)) <= set(r3.indices("attn.k", 1).tolist())
    # a layer's draw does not depend on which other layers are present
    assert r.restrict(layers=[3]) == a.restrict(layers=[3]).random_like(DIMS, seed=0)
    with pytest.raises(ValueError, match="only"):
        NeuronSet.from_dict({"attn.k": {0: range(9)}}).random_like(DIMS, seed=0)


# ---- application ---------------------------------------------------------------------------


def _sample(m: torch.nn.Module, seed: int) -> NeuronSet:
    """A few neurons of every site in two layers, including the last coordinate."""
    dims = adapter_for(m).dims(m.config)
    g = torch.Generator().manual_seed(seed)
    data = {}
    for site in SITES:
        w = site_width(dims, site)
        data[site] = {0: torch.randint(0, w, (3,), generator=g).tolist() + [w - 1],
                      dims.num_layers - 1: torch.randint(0, w, (2,), generator=g).tolist()}
    return NeuronSet.from_dict(data)


@pytest.mark.parametrize("arch", ARCHITECTURES + MOE_ARCHITECTURES)
def test_empty_mask_is_bit_identical_and_adds_no_hooks(arch: str) -> None:
    m = model(arch)
    ref = logits(m)
    before = hooks(m)
    with deactivate(m, NeuronSet.empty()):
        assert hooks(m) == before
        out = logits(m)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("arch", ARCHITECTURES + MOE_ARCHITECTURES)
def test_hooks_equal_weight_zeroing(arch: str, site: str) -> None:
    m = model(arch)
    neurons = _sample(m, seed=SITES.index(site)).restrict(sites=[site])
    ref = logits(m)
    with deactivate(m, neurons):
        hooked = logits(m)
    zeroed = logits(zero_weights(m, neurons))
    assert not torch.allclose(hooked, ref, atol=1e-6), "mask had no effect"
    torch.testing.assert_close(hooked, zeroed, rtol=1e-6, atol=1e-6)
    assert torch.equal(logits(m), ref)  # hooks gone, original weights untouched


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bloom"])
def test_exactly_the_given_coordinates_are_zeroed(arch: str) -> None:
    m = model(arch)
    a = adapter_for(m)
    layer, idx = 1, torch.tensor([0, 5, 7])
    for site in SITES:
        point = a.hook_point(m, layer, site)
        seen = []

        def observe(*hook_args) -> None:  # noqa: ANN002
            seen.append(hook_args[1][0] if point.kind == "input" else hook_args[2])

        neurons = NeuronSet.from_dict({site: {layer: idx.tolist()}})
        with deactivate(m, neurons):  # our hook is registered first, the observer sees its result
            register = point.module.register_forward_pre_hook if point.kind == "input" else \
                point.module.register_forward_hook
            h = register(observe)
            logits(m)
            h.remove()
        coords = point.index_fn(idx)
        after = seen[0]
        assert torch.count_nonzero(after[..., coords]) == 0
        other = torch.ones(after.shape[-1], dtype=torch.bool)
        other[coords] = False
        assert torch.count_nonzero(after[..., other] == 0) == 0  # random inputs: nothing else is zero


def test_hooks_removed_on_exception() -> None:
    m = model("llama")
    before = hooks(m)
    with pytest.raises(RuntimeError, match="boom"):
        with deactivate(m, _sample(m, 0)):
            assert hooks(m) != before
            raise RuntimeError("boom")
    assert hooks(m) == before


def test_out_of_range_neurons_raise() -> None:
    m = model("llama")
    with pytest.raises(ValueError, match="width"):
        with deactivate(m, NeuronSet.from_dict({"attn.k": {0: [16]}})):
            pass
    with pytest.raises(ValueError, match="layer"):
        zero_weights(m, NeuronSet.from_dict({"ffn": {3: [0]}}))


@pytest.mark.parametrize("arch", ARCHITECTURES + MOE_ARCHITECTURES)
def test_in_place_zeroing_equals_hooks_and_restores_every_weight(arch: str) -> None:
    m = model(arch)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    neurons = _sample(m, seed=7)  # every site; GPT-2 / BLOOM fuse q, k, v in one tensor
    no_hooks = hooks(m)
    with deactivate(m, neurons):
        hooked = logits(m)
    with zeroed(m, neurons):
        assert hooks(m) == no_hooks
        inplace = logits(m)
    torch.testing.assert_close(inplace, hooked, rtol=1e-6, atol=1e-6)
    assert all(torch.equal(p, before[n]) for n, p in m.named_parameters())  # bit-identical restore
    with pytest.raises(RuntimeError, match="boom"), zeroed(m, neurons):
        raise RuntimeError("boom")
    assert all(torch.equal(p, before[n]) for n, p in m.named_parameters())


def test_in_place_zeroing_of_an_empty_set_is_bit_identical() -> None:
    m = model("gemma3_text")
    ref = logits(m)
    with zeroed(m, NeuronSet.empty()):
        assert torch.equal(logits(m), ref)


@pytest.mark.parametrize("arch", MOE_ARCHITECTURES)
def test_expert_neuron_off_equals_its_rows_zeroed_inside_the_expert_weights(arch: str) -> None:
    """The hook that removes a routed expert neuron's contribution gives the logits of a model whose
    3-D expert weights have that neuron's gate and up rows zeroed by hand; a shared-expert neuron
    (Qwen2-MoE, numbered after the routed ones) those of its zeroed up_proj row."""
    m = model(arch)
    a = adapter_for(m)
    width, experts = a.expert_width(m.config), a.num_experts(m.config)
    ref = logits(m)
    cases = [(0, 0, 0), (1, 2, 7), (2, experts - 1, width - 1)] + ([(1, experts, 3)] if a.shared_width(m.config) else [])
    for layer, expert, j in cases:
        neurons = NeuronSet.from_dict({"ffn": {layer: [expert * width + j]}})
        with deactivate(m, neurons):
            hooked = logits(m)
        manual = copy.deepcopy(m)
        mlp = manual.model.layers[layer].mlp
        with torch.no_grad():
            if expert < experts:
                mlp.experts.gate_up_proj[expert, [j, width + j]] = 0.0
            else:
                mlp.shared_expert.up_proj.weight[j] = 0.0
        torch.testing.assert_close(hooked, logits(manual), rtol=1e-6, atol=1e-6)
        assert not torch.allclose(hooked, ref, atol=1e-6), (layer, expert, j)
