"""Packed batches (several documents per row, positions restarting, no padding computed)
give every document the statistics it gets alone, on every architecture that can pack."""

from __future__ import annotations

import pytest
import torch

from neuronspec.methods.activations import activation_statistics
from neuronspec.models.forward import can_pack, hidden_forward, iter_batches, iter_packed, pack_rows
from neuronspec.models.tiny import ARCHITECTURES, tiny_model

PACKABLE = [a for a in ARCHITECTURES if a != "bloom"]


def _docs(seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = [40, 7, 23, 12, 31, 5, 18, 26, 9, 33]  # several longer than the tiny Gemma 3's 16-token window
    return [[1] + torch.randint(4, 96, (n - 1,), generator=g).tolist() for n in lengths]


def test_pack_rows_balances_the_rows() -> None:
    rows = pack_rows([40, 7, 23, 12, 31, 5], 40)  # 118 tokens: 3 rows, longest first into the emptiest
    assert rows == [[0], [4, 1], [2, 3, 5]]
    assert pack_rows([10, 10, 10, 10], 20) == [[0, 2], [1, 3]]
    assert pack_rows([5], 40) == [[0]]
    assert sorted(i for r in pack_rows([3, 9, 4, 4, 8, 1, 7], 10) for i in r) == list(range(7))


def test_batches_take_the_fullest_rows_first() -> None:
    docs = [[1] * n for n in (10, 6, 5, 5)]  # rows filled 10, 6, 10 (in that order): batched fullest first, no padding
    batches = list(iter_packed(docs, batch_size=2, pad_id=0))
    assert [b.input_ids.shape for b in batches] == [(2, 10), (1, 6)]
    assert [b.index for b in batches] == [[0, 2, 3], [1]]


def test_packing_computes_less_than_padding() -> None:
    docs = _docs()
    padded = sum(b.input_ids.numel() for b in iter_batches(docs, batch_size=4, pad_id=0))
    packed = list(iter_packed(docs, batch_size=4, pad_id=0))
    assert sum(b.input_ids.numel() for b in packed) < padded
    assert sorted(i for b in packed for i in b.index) == list(range(len(docs)))
    for b in packed:  # every document's tokens, in order, with positions from 0
        for k, i in enumerate(b.index):
            where = b.segments == k
            assert b.input_ids[where].tolist() == docs[i]
            assert b.position_ids[where].tolist() == list(range(len(docs[i])))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_can_pack(arch: str) -> None:
    assert can_pack(tiny_model(arch)) == (arch in PACKABLE)


@pytest.mark.parametrize("arch", PACKABLE)
def test_packed_hidden_states_equal_each_document_alone(arch: str) -> None:
    model = tiny_model(arch)
    docs = _docs()
    with torch.no_grad():
        for b in iter_packed(docs, batch_size=3, pad_id=0):
            out = hidden_forward(model, b.input_ids, b.attention_mask, position_ids=b.position_ids)
            for k, i in enumerate(b.index):
                alone = hidden_forward(model, torch.tensor([docs[i]]), torch.ones(1, len(docs[i]), dtype=torch.long))[0]
                torch.testing.assert_close(out[b.segments == k], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", PACKABLE)
def test_packed_statistics_equal_padded_ones(arch: str) -> None:
    model = tiny_model(arch)
    docs = _docs()
    options = dict(poolings=("mean", "mean_abs", "last"), thresholds=(0.0, 0.05), gate_counts=True,
                   n_samples=len(docs))
    padded = activation_statistics(model, iter_batches(docs, batch_size=4, pad_id=0), **options)
    packed = activation_statistics(model, iter_packed(docs, batch_size=3, pad_id=0), **options)
    assert packed.tokens == padded.tokens == sum(len(d) - 1 for d in docs)
    assert torch.equal(packed.sample_tokens, padded.sample_tokens)
    for name in options["poolings"]:
        torch.testing.assert_close(packed.pooled[name], padded.pooled[name], rtol=1e-4, atol=1e-5)
    # counts of a threshold can only move where a value sits within float noise of τ
    assert (packed.counts - padded.counts).abs().max() <= 1
    assert (packed.gate_counts - padded.gate_counts).abs().max() <= 1
    assert (packed.counts != padded.counts).float().mean() < 0.01
