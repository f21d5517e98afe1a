"""encode / iter_batches / hidden_forward: the one way to run a batch."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from neuronspec.models.forward import Batch, encode, hidden_forward, iter_batches
from neuronspec.models.sites import adapter_for
from neuronspec.models.testing import tiny_tokenizer
from neuronspec.models.tiny import ARCHITECTURES, tiny_model


@lru_cache(maxsize=None)
def model(arch: str) -> torch.nn.Module:
    return tiny_model(arch)


def test_encode_adds_bos_and_truncates() -> None:
    tok = tiny_tokenizer()
    enc = encode(tok, ["abc", "x" * 50, "é"], max_tokens=8)
    assert enc[0] == [tok.bos_token_id, *tok.convert_tokens_to_ids(list("abc"))]
    assert len(enc[1]) == 8 and enc[1][0] == tok.bos_token_id
    assert enc[2] == [tok.bos_token_id, tok.unk_token_id]
    with pytest.raises(ValueError):
        encode(tok, ["a"], max_tokens=0)


def test_iter_batches_sorted_padded_and_complete() -> None:
    encs = [[1] * n for n in (3, 7, 1, 7, 5, 2)]
    batches = list(iter_batches(encs, batch_size=2, pad_id=0))
    assert [b.index for b in batches] == [[1, 3], [4, 0], [5, 2]]  # longest first, ties by index
    b = batches[1]
    assert b.input_ids.shape == (2, 5)
    assert b.attention_mask.tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert b.input_ids[1].tolist() == [1, 1, 1, 0, 0] and b.lengths.tolist() == [5, 3]
    assert [b.index for b in iter_batches(encs, batch_size=2, pad_id=0)] == [b.index for b in batches]


def test_iter_batches_token_budget() -> None:
    encs = [[5] * n for n in (10, 10, 4, 4, 4, 30)]
    batches = list(iter_batches(encs, batch_size=8, pad_id=0, token_budget=20))
    assert [b.index for b in batches] == [[5], [0, 1], [2, 3, 4]]  # an over-long one goes alone
    assert all(b.input_ids.numel() <= 20 or len(b.index) == 1 for b in batches)
    assert sorted(i for b in batches for i in b.index) == list(range(6))


def test_iter_batches_rejects_empty_encodings() -> None:
    with pytest.raises(ValueError, match="encoding 1 is empty"):
        list(iter_batches([[1], []], batch_size=2, pad_id=0))


def _batch() -> Batch:
    g = torch.Generator().manual_seed(3)
    encs = [torch.randint(3, 96, (n,), generator=g).tolist() for n in (12, 7, 9)]
    return next(iter_batches(encs, batch_size=3, pad_id=0))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_hidden_forward_matches_output_hidden_states(arch: str) -> None:
    m = model(arch)
    a = adapter_for(m)
    b = _batch()
    with torch.no_grad():
        full = m(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True)
        n = a.dims(m.config).num_layers
        for layer in range(n - 1):  # hidden_states[i + 1] is the output of layer i (the last one is normed)
            torch.testing.assert_close(hidden_forward(m, b.input_ids, b.attention_mask, layer),
                                       full.hidden_states[layer + 1], rtol=0, atol=0)
        torch.testing.assert_close(hidden_forward(m, b.input_ids, b.attention_mask), full.hidden_states[-1],
                                   rtol=0, atol=0)
        # the last layer's raw output, normed, is what the full model returns
        last = hidden_forward(m, b.input_ids, b.attention_mask, n - 1)
        torch.testing.assert_close(a.final_norm(m)(last), full.hidden_states[-1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_hidden_forward_skips_unembedding_and_later_layers(arch: str) -> None:
    m = model(arch)
    a = adapter_for(m)
    ran: list[str] = []
    handles = [a.unembed(m).register_forward_hook(lambda *x: ran.append("lm_head")),
               a.layers(m)[2].register_forward_hook(lambda *x: ran.append("layer2")),
               a.layers(m)[0].register_forward_hook(lambda *x: ran.append("layer0"))]
    b = _batch()
    before = dict(a.layers(m)[1]._forward_hooks)
    try:
        with torch.no_grad():
            hidden_forward(m, b.input_ids, b.attention_mask, last_layer=1)
            assert ran == ["layer0"]
            hidden_forward(m, b.input_ids, b.attention_mask)
            assert ran == ["layer0", "layer0", "layer2"]
    finally:
        for h in handles:
            h.remove()
    assert dict(a.layers(m)[1]._forward_hooks) == before  # the stop hook is gone
    with pytest.raises(ValueError, match="out of range"):
        hidden_forward(m, b.input_ids, b.attention_mask, last_layer=3)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2", "bloom"])
def test_right_padding_does_not_change_real_tokens(arch: str) -> None:
    m = model(arch)
    b = _batch()
    with torch.no_grad():
        batched = hidden_forward(m, b.input_ids, b.attention_mask, last_layer=2)
        for row, n in enumerate(b.lengths.tolist()):
            alone = hidden_forward(m, b.input_ids[row:row + 1, :n], b.attention_mask[row:row + 1, :n], last_layer=2)
            torch.testing.assert_close(batched[row:row + 1, :n], alone, rtol=1e-5, atol=1e-5)
