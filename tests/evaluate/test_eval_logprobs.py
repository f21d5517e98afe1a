"""Chunked unembedding must equal cross-entropy of the full model's logits."""

from __future__ import annotations

import pytest
import torch

from neuronspec.evaluate.logprobs import decoder_of, text_logprobs, token_logprobs
from neuronspec.models.tiny import ARCHITECTURES, tiny_model

SEQUENCES = [[1, 5, 9, 13, 40, 41, 7], [1, 3], [1, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70], [1, 8, 8, 8, 9]]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_chunked_equals_full_cross_entropy(arch: str, full_logprobs) -> None:
    model = tiny_model(arch)
    ours = token_logprobs(model, SEQUENCES, batch_size=3, chunk_tokens=5)
    for ids, lp in zip(SEQUENCES, ours):
        assert lp.shape == (len(ids) - 1,)
        torch.testing.assert_close(lp, full_logprobs(model, ids), atol=1e-5, rtol=1e-5)


def test_final_logit_softcapping_is_applied(full_logprobs) -> None:
    model = tiny_model("gemma3_text", final_logit_softcapping=0.5)  # small cap: the tanh matters
    ours = token_logprobs(model, SEQUENCES, batch_size=2, chunk_tokens=3)
    for ids, lp in zip(SEQUENCES, ours):
        torch.testing.assert_close(lp, full_logprobs(model, ids), atol=1e-5, rtol=1e-5)
    uncapped = token_logprobs(tiny_model("gemma3_text"), SEQUENCES[:1])[0]
    assert not torch.allclose(ours[0], uncapped, atol=1e-3)  # the test would notice a missing cap


def test_hooks_inside_the_decoder_apply(full_logprobs) -> None:
    """Neuron masks are forward hooks on decoder modules; scoring must go through them."""
    model = tiny_model("llama")
    clean = token_logprobs(model, SEQUENCES)
    handle = model.model.layers[1].mlp.register_forward_hook(lambda mod, inp, out: out * 0)
    try:
        masked = token_logprobs(model, SEQUENCES)
        for ids, lp in zip(SEQUENCES, masked):
            torch.testing.assert_close(lp, full_logprobs(model, ids), atol=1e-5, rtol=1e-5)
    finally:
        handle.remove()
    assert not torch.allclose(clean[0], masked[0])


def test_short_sequences_and_order() -> None:
    model = tiny_model("gpt2")
    out = token_logprobs(model, [[1], [], [1, 4, 5]], batch_size=2)
    assert [t.numel() for t in out] == [0, 0, 2]
    assert decoder_of(model) is model.transformer


def test_text_logprobs_adds_bos_and_truncates(char_tokenizer) -> None:
    model = tiny_model("qwen2")
    full = text_logprobs(model, char_tokenizer, ["hello world"], max_tokens=256)[0]
    cut = text_logprobs(model, char_tokenizer, ["hello world"], max_tokens=4)[0]
    assert full.numel() == len("hello world")  # BOS + 11 chars -> 11 predictions
    torch.testing.assert_close(cut, full[:3])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_packed_rows_equal_each_sequence_alone(arch: str, full_logprobs) -> None:
    """Sequences sharing rows (longer than the tiny Gemma 3's 16-token window; GPT-2 with
    absolute positions) score as they do alone; BLOOM, which cannot pack, pads."""
    from neuronspec.models.forward import can_pack, iter_packed

    g = torch.Generator().manual_seed(1)
    seqs = [[1] + torch.randint(4, 96, (n - 1,), generator=g).tolist() for n in (40, 9, 23, 12, 30, 5, 18, 2)]
    model = tiny_model(arch)
    if can_pack(model):
        assert sum(len(b.index) > 1 for b in iter_packed(seqs, batch_size=3, pad_id=0)) >= 2  # really packed
    ours = token_logprobs(model, seqs, batch_size=3)
    for ids, lp in zip(seqs, ours):
        torch.testing.assert_close(lp, full_logprobs(model, ids), atol=1e-5, rtol=1e-5)
    sums = token_logprobs(model, seqs, batch_size=3, reduce="sum")
    for lp, total in zip(ours, sums):
        assert float(total) == pytest.approx(float(lp.double().sum()), abs=1e-9)
