"""PLND statistics over packed batches (several documents per row, no padding computed) equal
those over padded batches, every site, on every architecture that can pack."""

from __future__ import annotations

import pytest
import torch

from neuronspec.methods.plnd import plnd_statistics, segment_weights
from neuronspec.models.forward import iter_batches, iter_packed
from neuronspec.models.tiny import ARCHITECTURES, MOE_ARCHITECTURES, tiny_model
from neuronspec.models.sites import SITES

PACKABLE = [a for a in ARCHITECTURES + MOE_ARCHITECTURES if a != "bloom"]


def _docs() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    lengths = [40, 7, 23, 12, 31, 5, 18, 26, 9, 33, 2]  # longer than the tiny Gemma 3's 16-token window; one of 2
    return [[1] + torch.randint(4, 96, (n - 1,), generator=g).tolist() for n in lengths]


def test_segment_weights_pick_each_documents_tokens_but_the_first() -> None:
    docs = _docs()
    for batch in iter_packed(docs, batch_size=3, pad_id=0):
        w, (rows, slots) = segment_weights(batch)
        assert w.shape[1] > 1  # these rows hold several documents
        for k, i in enumerate(batch.index):
            got = w[rows[k], slots[k]]
            expected = ((batch.segments[rows[k]] == k) & (batch.position_ids[rows[k]] > 0)).float()
            assert torch.equal(got, expected) and int(got.sum()) == len(docs[i]) - 1
        assert torch.equal(w.sum(1), ((batch.segments >= 0) & (batch.position_ids > 0)).float())  # each token once


@pytest.mark.parametrize("arch", PACKABLE)
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_packed_plnd_statistics_equal_padded_ones(arch: str, reduce: str) -> None:
    model = tiny_model(arch)
    docs = _docs()
    sites = list(SITES)
    top_k = {s: 3 for s in sites}
    padded = plnd_statistics(model, iter_batches(docs, batch_size=4, pad_id=0), sites, token_reduce=reduce, top_k=top_k)
    packed = plnd_statistics(model, iter_packed(docs, batch_size=3, pad_id=0), sites, token_reduce=reduce, top_k=top_k)
    for site in sites:
        a, b = packed[site], padded[site]
        assert a.n_docs == b.n_docs == len(docs)
        torch.testing.assert_close(a.min, b.min, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(a.sum, b.sum, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(a.sumsq, b.sumsq, rtol=1e-4, atol=1e-8)
        # a top-k hit can only move where two scores of a layer sit within float noise of each other
        assert (a.topk_hits - b.topk_hits).abs().max() <= 1
        assert (a.topk_hits != b.topk_hits).float().mean() < 0.02
