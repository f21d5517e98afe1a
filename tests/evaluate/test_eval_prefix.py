"""Prefix reuse: an arm that starts at a later layer replays the base model's recorded
residual stream and gives bit-identical log-probabilities to its full forward."""

from __future__ import annotations

import pytest
import torch

from neuronspec.evaluate.logprobs import token_logprobs
from neuronspec.evaluate.prefix import PrefixStore, first_layer, shared_prefix, weights_digest
from neuronspec.models.forward import can_pack, iter_batches, iter_packed
from neuronspec.models.masks import NeuronSet, deactivate, zeroed
from neuronspec.models.tiny import ARCHITECTURES, tiny_model


def _sequences(seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = [23, 9, 17, 30, 4, 12]  # > the tiny Gemma 3's 16-token sliding window too
    return [[1] + torch.randint(4, 96, (n - 1,), generator=g).tolist() for n in lengths]


def _arm(layer: int) -> NeuronSet:
    sites = {"ffn": {layer: [0, 3, 7]}, "attn.v": {layer: [1, 2]}, "attn.q": {layer: [5]}}
    return NeuronSet.from_dict(sites)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_replayed_prefix_is_bit_identical(arch: str) -> None:
    model = tiny_model(arch)
    seqs = _sequences()
    store = PrefixStore()
    boundaries = [1, 2]
    with shared_prefix(model, start=3, boundaries=boundaries, store=store):  # the base model records 1 and 2
        base = token_logprobs(model, seqs, batch_size=4)
    make = iter_packed if can_pack(model) else iter_batches
    batches = len(list(make(seqs, batch_size=4, pad_id=0)))
    assert store.hits == 0 and len(store.entries) == batches * 2  # two boundaries per batch
    assert all(torch.equal(a, b) for a, b in zip(base, token_logprobs(model, seqs, batch_size=4)))
    for layer in (1, 2):
        arm = _arm(layer)
        assert first_layer(arm) == layer
        with deactivate(model, arm):
            full = token_logprobs(model, seqs, batch_size=4)
            before = store.layers_skipped
            with shared_prefix(model, start=first_layer(arm), boundaries=boundaries, store=store):
                shared = token_logprobs(model, seqs, batch_size=4)
        assert store.layers_skipped - before == batches * layer  # each batch skipped the layers below `layer`
        assert any(not torch.equal(a, b) for a, b in zip(full, base))  # the arm changes the outputs
        for a, b in zip(full, shared):
            assert torch.equal(a, b)


def test_an_arm_never_records_what_it_changed() -> None:
    model = tiny_model("llama")
    store = PrefixStore()
    with deactivate(model, _arm(1)), shared_prefix(model, start=1, boundaries=[1, 2], store=store):
        token_logprobs(model, _sequences(), batch_size=8)
    assert {key[2] for key in store.entries} == {1}  # boundary 2 lies after the arm's first layer


def test_changed_weights_or_batches_are_not_replayed() -> None:
    model = tiny_model("qwen2")
    store = PrefixStore()
    seqs = _sequences()
    with shared_prefix(model, start=3, boundaries=[2], store=store):
        token_logprobs(model, seqs, batch_size=8)
    with shared_prefix(model, start=2, boundaries=[2], store=store):
        token_logprobs(model, seqs, batch_size=1)  # other batches
    assert store.hits == 0
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    with shared_prefix(model, start=2, boundaries=[2], store=store):
        changed = token_logprobs(model, seqs, batch_size=8)
    assert store.hits == 0
    assert all(torch.equal(a, b) for a, b in zip(changed, token_logprobs(model, seqs, batch_size=8)))


def test_weights_digest_follows_every_in_place_write() -> None:
    """The digest is cached per parameter until the parameter is written: a mask zeroing and
    restoring rows comes back to the same digest, any write that stays changes it, and a
    reloaded model (new storage) has its own."""
    model = tiny_model("gemma3")
    first = weights_digest(model)
    assert weights_digest(model) == first
    with zeroed(model, _arm(2)):
        inside = weights_digest(model)
    assert inside != first and weights_digest(model) == first
    up = model.model.layers[1].mlp.up_proj.weight
    with torch.no_grad():
        kept = up[3, 5].item()
        up.index_fill_(0, torch.tensor([3]), 0.0)  # a write that stays
        changed = weights_digest(model)
        up[3, 5] = kept  # one element back, the rest of row 3 still zero
    assert changed != first and weights_digest(model) not in (first, changed)
    assert weights_digest(tiny_model("gemma3")) != first  # same values, another model's storage


def test_memory_budget_evicts_the_oldest() -> None:
    model = tiny_model("llama")
    store = PrefixStore(max_bytes=6 * 30 * 32 * 4)  # about one batch of hidden states
    with shared_prefix(model, start=3, boundaries=[1, 2], store=store):
        token_logprobs(model, _sequences(), batch_size=8)
    assert store.nbytes() <= store.max_bytes and [key[2] for key in store.entries] == [2]
