"""The chunked q/k score against a direct full-tensor computation of the same definition.

test_plnd_bruteforce uses documents of <= 8 tokens, i.e. one block of queries; here sequences
are long enough for many query blocks, key spans cut by causal and sliding-window masks,
padding rows skipped through `needed`, row chunks of every size, and soft-capping.
"""

from __future__ import annotations

import pytest
import torch

from neuronspec.methods.plnd import (
    _key_spans,
    plnd_statistics,
    qk_head_importance,
    token_weights,
)
from neuronspec.models.forward import iter_batches
from neuronspec.models.tiny import tiny_model


def _direct(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, scaling: float, softcap: float | None) -> torch.Tensor:
    """[B,H,T,D] straight from the definition: one full softmax per head dimension."""
    b, h, t, d = q.shape
    kk = k.repeat_interleave(h // k.shape[1], 1)
    cap = (lambda x: torch.tanh(x / softcap) * softcap) if softcap else (lambda x: x)
    raw = scaling * q @ kk.transpose(-1, -2)
    base = torch.softmax(cap(raw) + mask, -1)
    out = torch.empty(b, h, t, d)
    for j in range(d):
        term = scaling * q[..., j, None] * kk[..., j][:, :, None, :]
        out[..., j] = (torch.softmax(cap(raw - term) + mask, -1) - base).pow(2).sum(-1)
    return out


def _mask(b: int, t: int, lengths: list[int], window: int | None) -> torch.Tensor:
    i = torch.arange(t)
    ok = i[None, :] <= i[:, None]
    if window:
        ok &= i[None, :] > i[:, None] - window
    ok = ok[None].expand(b, t, t).clone()
    for row, n in enumerate(lengths):
        ok[row, :, n:] = False
        ok[row, n:, 0] = True  # padding queries still see something (as a real mask builder leaves them)
    return torch.where(ok, 0.0, torch.finfo(torch.float32).min)[:, None]


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("chunk", [1, 97, 1 << 12, 1 << 19])
def test_chunked_equals_direct(window: int | None, softcap: float | None, chunk: int) -> None:
    torch.manual_seed(0)
    b, h, hkv, t, d = 3, 4, 2, 37, 6
    q, k = torch.randn(b, h, t, d) * 2, torch.randn(b, hkv, t, d) * 2
    lengths = [37, 30, 11]
    mask = _mask(b, t, lengths, window)
    want = _direct(q, k, mask, 0.4, softcap)
    got = qk_head_importance(q, k, mask, 0.4, softcap, chunk_elements=chunk)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-9)

    needed = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    needed[:, 0] = False
    got = qk_head_importance(q, k, mask, 0.4, softcap, chunk_elements=chunk, needed=needed)
    rows = needed[:, None, :, None].expand_as(want)
    assert torch.allclose(got[rows], want[rows], rtol=1e-4, atol=1e-9)
    assert torch.all(got[~rows & ~needed.any(0)[None, None, :, None]] == 0)  # positions no row needs


def test_key_spans_cover_every_visible_key() -> None:
    allowed = _mask(1, 40, [40], 7)[0, 0] == 0
    for t0, t1, lo, hi in _key_spans(allowed, 16):
        assert not allowed[t0:t1, :lo].any() and not allowed[t0:t1, hi:].any()
        assert allowed[t0:t1, lo].any() and allowed[t0:t1, hi - 1].any()


@pytest.mark.parametrize("arch", ["gemma3_text", "mistral"])
def test_long_documents_match_one_block_at_a_time(arch: str) -> None:
    """Sliding windows (gemma3: 16, mistral: 64) and several query blocks in a real model."""
    model = tiny_model(arch)
    gen = torch.Generator().manual_seed(1)
    docs = [[1, *torch.randint(3, 90, (n,), generator=gen).tolist()] for n in (70, 45, 20)]
    batch = next(iter_batches(docs, batch_size=3, pad_id=0))
    whole = plnd_statistics(model, [batch], ["attn.q", "attn.k"])
    single = [plnd_statistics(model, [next(iter_batches([doc], batch_size=1, pad_id=0))], ["attn.q", "attn.k"])
              for doc in docs]
    w = token_weights(batch.attention_mask)
    assert w.sum() > 0
    for site in ("attn.q", "attn.k"):
        total = sum(s[site].sum for s in single)
        assert torch.allclose(whole[site].sum, total, rtol=1e-4, atol=1e-12)
        assert torch.allclose(whole[site].min, torch.stack([s[site].min for s in single]).amin(0), rtol=1e-4, atol=1e-12)


def test_key_whose_probability_underflows_is_not_dropped() -> None:
    """Key 0 is visible but at exp(-250) ≈ 0 for the second query block; removing dimension 0's
    term brings it back, so spans must come from the mask, not from where probabilities are > 0."""
    torch.manual_seed(0)
    b, h, t, d = 1, 1, 20, 4
    q, k = torch.randn(b, h, t, d) * 0.1, torch.randn(b, h, t, d) * 0.1
    k[:, :, 0, 0] = -50.0
    q[:, :, 16:, 0] = 50.0
    mask = _mask(b, t, [t], None)
    want = _direct(q, k, mask, 0.1, None)
    assert want[0, 0, 16:, 0].min() > 1e-3  # the effect is real (key 0 gets ~1/17 of the mass)
    got = qk_head_importance(q, k, mask, 0.1, None)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-9)


def test_worker_threads_give_the_single_thread_result() -> None:
    """Many chunks on 2 threads go through the Python worker pool; threads are restored after."""
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 50, 8), torch.randn(2, 2, 50, 8)
    mask = _mask(2, 50, [50, 41], None)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = qk_head_importance(q, k, mask, 0.3, chunk_elements=256)
        torch.set_num_threads(2)
        two = qk_head_importance(q, k, mask, 0.3, chunk_elements=256)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert torch.allclose(one, two, rtol=1e-6, atol=0)
