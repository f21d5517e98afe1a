"""Neuron-restricted fine-tuning: exact gradients, bit-identity outside the set, compact state."""

from __future__ import annotations

import copy

import pytest
import torch

from neuronspec.enhance import (
    Delta,
    EnhanceSettings,
    apply_delta,
    full_adam_state_bytes,
    nll_sum,
    selected_slices,
    train_neurons,
)
from neuronspec.enhance.train import _make_slots, _register_taps
from neuronspec.models.forward import encode, iter_batches
from neuronspec.models.masks import NeuronSet
from neuronspec.models.testing import tiny_tokenizer
from neuronspec.models.tiny import ARCHITECTURES, tiny_model

TEXTS = ["the cat sat on the mat", "a dog barks at night", "hello world, hello again",
         "neurons fire together", "short", "zz top plays the blues", "one two three four five", "x y"]
FAST = EnhanceSettings(lr=1e-2, effective_batch=4, micro_batch=2, seq_len=24, epochs=2)

# Every site, several layers; k/v indices cross the GQA group boundary (kv width 16 on gated archs).
ALL_SITES = NeuronSet.from_dict({"ffn": {0: [1, 5, 40], 2: [3]}, "attn.q": {1: [2, 31]}, "attn.k": {1: [0, 9, 15]},
                                 "attn.v": {2: [7, 8]}, "attn.o": {0: [4, 30]}})


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _mask_of(model, neurons):
    """{param name: bool tensor marking the coordinates the set owns}."""
    masks = {}
    params = dict(model.named_parameters())
    for name, (dim, coords) in selected_slices(model, neurons).items():
        m = torch.zeros(params[name].shape, dtype=torch.bool)
        m.index_fill_(dim, coords, True)
        masks[name] = m
    return masks


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_compact_gradients_equal_masked_autograd(arch, tok):
    """The tap's gradients are exactly the selected slices of the full weight gradient."""
    model = tiny_model(arch)
    ref = copy.deepcopy(model)
    batch = next(iter_batches(encode(tok, TEXTS[:4], 24), batch_size=4, pad_id=0))

    slots = _make_slots(model, ALL_SITES)
    for p in model.parameters():
        p.requires_grad_(False)
    handles = _register_taps(model, slots)
    nll, n = nll_sum(model, batch.input_ids, batch.attention_mask, chunk_tokens=7)  # several checkpointed chunks
    (nll / n).backward()
    for h in handles:
        h.remove()

    ref_nll, _ = nll_sum(ref, batch.input_ids, batch.attention_mask, chunk_tokens=7)
    (ref_nll / n).backward()
    torch.testing.assert_close(nll, ref_nll, rtol=0, atol=0)  # taps do not change the forward
    params = dict(ref.named_parameters())
    assert {s.name for s in slots} == set(selected_slices(ref, ALL_SITES))
    for s in slots:
        expected = params[s.name].grad.index_select(s.dim, s.coords)
        torch.testing.assert_close(s.compact.grad, expected, rtol=1e-5, atol=1e-7, msg=s.name)
        assert s.compact.grad.abs().sum() > 0, s.name


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_only_selected_slices_change(arch, tok):
    model = tiny_model(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_neurons(model, tok, TEXTS, ALL_SITES, FAST, restore=False)
    masks = _mask_of(model, ALL_SITES)
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, old in before.items():
        new = after[key]
        if key not in masks:
            assert torch.equal(new, old), f"{arch}: {key} changed outside the set"
        else:
            m = masks[key]
            assert torch.equal(new[~m], old[~m]), f"{arch}: {key} changed outside its selected slices"
            assert not torch.equal(new[m], old[m]), f"{arch}: {key} selected slices did not change"
    # The delta holds exactly the trained values.
    for name, e in result.delta.entries.items():
        assert torch.equal(after[name].index_select(e.dim, e.indices), e.values)
    if arch == "gemma3_text":
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied
    assert not model.training
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_restore_leaves_base_bit_identical(arch, tok):
    model = tiny_model(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_neurons(model, tok, TEXTS, ALL_SITES, FAST)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    changed = [n for n, e in result.delta.entries.items()
               if not torch.equal(e.values, before[n].index_select(e.dim, e.indices))]
    assert sorted(changed) == sorted(result.delta.entries)
    # Biases of q/k/v (qwen2) and of the fused c_attn (gpt2) are part of the delta.
    assert any(n.endswith("bias") for n in result.delta.entries)


def test_error_mid_training_restores(tok):
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def boom(info):
        if info.step == 2:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        train_neurons(model, tok, TEXTS, ALL_SITES, FAST, on_step=boom, restore=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())


def test_first_step_grad_norm_is_the_masked_norm(tok):
    """Clipping sees the norm of the selected slices' gradient only."""
    model = tiny_model("mistral")
    settings = EnhanceSettings(lr=1e-3, effective_batch=len(TEXTS), micro_batch=3, seq_len=24)
    norms = []
    train_neurons(model, tok, TEXTS, ALL_SITES, settings, on_step=lambda i: norms.append(i.grad_norm))
    ref = copy.deepcopy(model)
    encs = encode(tok, TEXTS, 24)
    n_tok = sum(len(e) - 1 for e in encs)
    for b in iter_batches(encs, batch_size=8, pad_id=0):
        nll, _ = nll_sum(ref, b.input_ids, b.attention_mask)
        (nll / n_tok).backward()
    masks = _mask_of(ref, ALL_SITES)
    params = dict(ref.named_parameters())
    masked = torch.sqrt(sum((params[k].grad[m] ** 2).sum() for k, m in masks.items()))
    full = torch.sqrt(sum((p.grad ** 2).sum() for p in ref.parameters()))
    assert norms[0] == pytest.approx(float(masked), rel=1e-4)
    assert float(full) > 2 * float(masked)  # the full-model norm would have clipped very differently


def test_optimizer_state_is_proportional_to_the_set(tok, capsys):
    model = tiny_model("llama")
    small = NeuronSet.from_dict({"ffn": {0: [1, 2]}})
    big = NeuronSet.from_dict({"ffn": {0: list(range(8)), 1: list(range(8))}, "attn.v": {2: list(range(4))}})
    r_small = train_neurons(model, tok, TEXTS, small, FAST)
    r_big = train_neurons(model, tok, TEXTS, big, FAST)

    full = copy.deepcopy(model)
    opt = torch.optim.AdamW(full.parameters(), lr=1e-3)
    batch = next(iter_batches(encode(tok, TEXTS, 24), batch_size=8, pad_id=0))
    nll, _ = nll_sum(full, batch.input_ids, batch.attention_mask)
    nll.backward()
    opt.step()
    real_full = sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
                    if isinstance(v, torch.Tensor))
    assert real_full == full_adam_state_bytes(model) == r_small.full_adam_state_bytes

    hidden = 32
    assert r_small.trainable_params == 2 * (3 * hidden)  # up row + gate row + down column, per neuron
    assert r_big.trainable_params == 16 * 3 * hidden + 4 * hidden
    for r, n_tensors in ((r_small, 3), (r_big, 7)):
        assert r.optimizer_state_bytes == 2 * 4 * r.trainable_params + 4 * n_tensors
    with capsys.disabled():
        print(f"\n[enhance] tiny llama: full AdamW state {real_full} B; 2 ffn neurons {r_small.optimizer_state_bytes} B"
              f" ({r_small.trainable_params} values); 20 neurons {r_big.optimizer_state_bytes} B"
              f" ({r_big.trainable_params} values)")
    assert r_small.optimizer_state_bytes < real_full / 100


def test_deterministic_for_a_seed(tok):
    runs = [train_neurons(tiny_model("gemma3_text"), tok, TEXTS, ALL_SITES, FAST) for _ in range(2)]
    assert runs[0].delta.equal(runs[1].delta)
    assert runs[0].losses == runs[1].losses
    other = train_neurons(tiny_model("gemma3_text"), tok, TEXTS, ALL_SITES,
                          EnhanceSettings(**{**FAST.to_dict(), "seed": 1}))
    assert not runs[0].delta.equal(other.delta)


def test_loss_decreases_when_overfitting(tok):
    model = tiny_model("llama")
    every_ffn = NeuronSet.from_dict({"ffn": {i: range(48) for i in range(3)}, "attn.o": {2: range(32)}})
    corpus = ["abcabcabcabcabcabc", "the the the the the"] * 4
    settings = EnhanceSettings(lr=1e-2, effective_batch=8, micro_batch=4, seq_len=32, epochs=20,
                               warmup_ratio=0.1, max_grad_norm=1.0)
    r = train_neurons(model, tok, corpus, every_ffn, settings)
    assert r.steps == 20 and len(r.losses) == 20
    # A random tiny model's small unembedding caps how peaked its predictions can get
    # (loss floor ~3.7 nats), so "overfitting" here means a clear, steady drop from 4.5.
    assert r.losses[-1] < 0.85 * r.losses[0], r.losses
    assert all(b <= a + 0.05 for a, b in zip(r.losses[2:], r.losses[3:])), r.losses
    # The trained delta really lowers the loss when applied.
    batch = next(iter_batches(encode(tok, corpus, 32), batch_size=8, pad_id=0))
    with torch.no_grad():
        base, n = nll_sum(model, batch.input_ids, batch.attention_mask)
        with apply_delta(model, r.delta):
            tuned, _ = nll_sum(model, batch.input_ids, batch.attention_mask)
    assert float(tuned) / n < 0.85 * float(base) / n


def test_step_accounting_and_schedule(tok):
    infos = []
    s = EnhanceSettings(lr=1e-3, effective_batch=3, micro_batch=2, seq_len=16, epochs=2, warmup_ratio=0.2)
    r = train_neurons(tiny_model("qwen2"), tok, TEXTS, ALL_SITES, s, on_step=infos.append)
    assert r.steps == 2 * 3 == len(infos) == len(r.losses)
    assert [i.step for i in infos] == list(range(1, 7))
    assert r.tokens == 2 * sum(len(e) - 1 for e in encode(tok, TEXTS, 16))
    assert r.lrs[0] == 0.0 and max(r.lrs) == pytest.approx(1e-3) and r.lrs[-1] < r.lrs[1]
    assert r.delta.metadata["steps"] == 6 and r.delta.metadata["settings"]["lr"] == 1e-3
    import json

    summary = json.loads(json.dumps(r.summary()))
    assert summary["steps"] == 6 and summary["losses"] == r.losses and summary["delta_tensors"] == len(r.delta)


def test_bfloat16_model_keeps_float32_master(tok):
    model = tiny_model("llama").to(torch.bfloat16)
    r = train_neurons(model, tok, TEXTS, ALL_SITES, FAST)
    assert all(e.values.dtype == torch.bfloat16 for e in r.delta.entries.values())
    assert all(torch.isfinite(torch.tensor(r.losses)))


def test_rejects_bad_input(tok):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="empty"):
        train_neurons(model, tok, TEXTS, NeuronSet(), FAST)
    with pytest.raises(ValueError, match="out of range"):
        train_neurons(model, tok, TEXTS, NeuronSet.from_dict({"ffn": {0: [48]}}), FAST)
    with pytest.raises(ValueError, match="out of range"):
        train_neurons(model, tok, TEXTS, NeuronSet.from_dict({"ffn": {3: [0]}}), FAST)
    with pytest.raises(ValueError, match="two or more tokens"):
        train_neurons(model, tok, [""], ALL_SITES, FAST)


def test_an_empty_delta_changes_nothing(tok):
    model = tiny_model("llama")
    ids = torch.tensor([encode(tok, ["abc def"], 16)[0]])
    before = model(ids).logits
    with apply_delta(model, Delta()):
        assert torch.equal(model(ids).logits, before)
    assert len(Delta()) == 0


@pytest.mark.parametrize("arch", ["gemma3_text", "bloom"])
def test_nll_sum_matches_evaluation_logprobs(arch, tok):
    """The training loss is the evaluation NLL (same chunked unembedding, softcapping included)."""
    from neuronspec.evaluate.logprobs import token_logprobs

    model = tiny_model(arch)
    encs = encode(tok, TEXTS, 24)
    batch = next(iter_batches(encs, batch_size=8, pad_id=0))
    with torch.no_grad():
        nll, n = nll_sum(model, batch.input_ids, batch.attention_mask, chunk_tokens=5)
    ref = -torch.cat(token_logprobs(model, encs, batch_size=8)).double().sum()
    assert n == sum(len(e) - 1 for e in encs)
    assert float(nll) == pytest.approx(float(ref), rel=1e-5)
