"""The chunked q/k score against a direct full-tensor computation of its definition.

The direct reference starts from pre-norm projection outputs u: for each neuron it zeroes
u_n, re-applies the per-head RMSNorm (gain g, eps) and the rotation, and recomputes the
softmax — nothing of the closed form in plnd_qk. test_plnd_qk_bruteforce checks the same
against real models; here sequences are long enough for many query blocks, key spans cut by
causal and sliding-window masks, padding rows skipped through a plan, row chunks of every
size, soft-capping, and q/k norms.
"""

from __future__ import annotations

import os

import pytest
import torch

from neuronspec.methods.plnd import plnd_statistics, token_weights
from neuronspec.methods.plnd_qk import Plan, QKInputs, key_spans, qk_importance
from neuronspec.models.forward import iter_batches
from neuronspec.models.tiny import tiny_model

EPS = 1e-6


def _rope(t: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    freqs = torch.arange(t).float()[:, None] * inv[None]
    emb = torch.cat([freqs, freqs], -1)[None]  # [1, T, D]
    return emb.cos(), emb.sin()


def _finish(u: torch.Tensor, gain: torch.Tensor | None, rot: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Pre-norm projection output [B,H,T,D] → what attention sees (norm, then RoPE)."""
    x = u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + EPS) * gain if gain is not None else u
    if rot is None:
        return x
    cos, sin = (r[:, None] for r in rot)
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def _direct(uq, uk, mask, scaling, softcap, gains, rot) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """site → [B,H,T,D] straight from the definition: one full softmax per switched-off neuron."""
    b, h, t, d = uq.shape
    group = h // uk.shape[1]
    cap = (lambda x: torch.tanh(x / softcap) * softcap) if softcap else (lambda x: x)
    gq, gk = gains if gains is not None else (None, None)

    def probs(uq_, uk_):  # noqa: ANN001, ANN202
        q, k = _finish(uq_, gq, rot), _finish(uk_, gk, rot).repeat_interleave(group, 1)
        return torch.softmax(cap(scaling * q @ k.transpose(-1, -2)) + mask, -1)

    base = probs(uq, uk)
    out = {"attn.q": torch.empty(b, h, t, d), "attn.k": torch.empty(b, h, t, d)}
    for j in range(d):
        u2 = uq.clone()
        u2[..., j] = 0
        out["attn.q"][..., j] = (probs(u2, uk) - base).pow(2).sum(-1)
        u2 = uk.clone()
        u2[..., j] = 0
        out["attn.k"][..., j] = (probs(uq, u2) - base).pow(2).sum(-1)
    return out


def _inputs(uq, uk, mask, scaling, softcap, gains, rot, pre: bool = False) -> QKInputs:  # noqa: ANN001
    """pre: also hand over the norms' inputs (as plnd does), not only their gains."""
    gq, gk = gains if gains is not None else (None, None)
    return QKInputs(_finish(uq, gq, rot), _finish(uk, gk, rot), mask, scaling, softcap, rot, gains,
                    (uq, uk) if pre else None, (EPS, EPS))


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
@pytest.mark.parametrize("kind", ["plain", "rope", "rope+norm"])
@pytest.mark.parametrize("stable", [False, True])
@pytest.mark.parametrize("compiled", [None, False])  # None: the C kernel on CPU (no soft-cap); False: eager
def test_chunked_equals_direct(window: int | None, softcap: float | None, chunk: int, kind: str, stable: bool,
                               compiled: bool | None) -> None:
    torch.manual_seed(0)
    b, h, hkv, t, d = 3, 4, 2, 37, 6
    uq, uk = torch.randn(b, h, t, d) * 2, torch.randn(b, hkv, t, d) * 2
    gains = (1 + 0.3 * torch.randn(d), 1 + 0.3 * torch.randn(d)) if kind == "rope+norm" else None
    rot = _rope(t, d) if kind != "plain" else None
    lengths = [37, 30, 11]
    mask = _mask(b, t, lengths, window)
    want = {k: v.float() for k, v in _direct(*(x.double() for x in (uq, uk, mask)), 0.4, softcap,
                                             gains and tuple(g.double() for g in gains),
                                             rot and tuple(r.double() for r in rot)).items()}
    inp = _inputs(uq, uk, mask, 0.4, softcap, gains, rot)
    got = qk_importance(inp, chunk_elements=chunk, stable=stable, compiled=compiled)
    # against float64: float32 rounding of logits up to ~10 leaves a few 1e-6 on scores of order 1
    tol = dict(rtol=1e-3, atol=1e-5)
    for site in want:
        assert torch.allclose(got[site], want[site], **tol), site

    needed = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    needed[:, 0] = False
    got = qk_importance(inp, plan=Plan(needed, h), chunk_elements=chunk, stable=stable, compiled=compiled)
    rows = needed[:, None, :, None].expand_as(want["attn.q"])
    for site in want:
        assert torch.allclose(got[site][rows], want[site][rows], **tol)
        assert torch.all(got[site][~rows & ~needed.any(0)[None, None, :, None]] == 0)  # positions no row needs


def test_key_spans_cover_every_visible_key() -> None:
    allowed = _mask(1, 40, [40], 7)[0, 0] == 0
    for t0, t1, lo, hi in key_spans(allowed, 16):
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


@pytest.mark.parametrize("stable", [False, True])
def test_key_whose_probability_underflows_is_not_dropped(stable: bool) -> None:
    """Key 0 is visible but at exp(-250) ≈ 0 for the second query block; removing dimension 0's
    term brings it back, so spans must come from the mask, not from where probabilities are > 0."""
    torch.manual_seed(0)
    b, h, t, d = 1, 1, 20, 4
    q, k = torch.randn(b, h, t, d) * 0.1, torch.randn(b, h, t, d) * 0.1
    k[:, :, 0, 0] = -50.0
    q[:, :, 16:, 0] = 50.0
    mask = _mask(b, t, [t], None)
    want = _direct(q, k, mask, 0.1, None, None, None)["attn.q"]
    assert want[0, 0, 16:, 0].min() > 1e-3  # the effect is real (key 0 gets ~1/17 of the mass)
    got = qk_importance(QKInputs(q, k, mask, 0.1), stable=stable)["attn.q"]
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-9)


def test_worker_threads_give_the_single_thread_result() -> None:
    """Many chunks on 2 threads go through the Python worker pool; threads are restored after."""
    torch.manual_seed(0)
    uq, uk = torch.randn(2, 4, 50, 8), torch.randn(2, 2, 50, 8)
    inp = _inputs(uq, uk, _mask(2, 50, [50, 41], None), 0.3, None, (torch.ones(8) * 1.1, torch.ones(8) * 0.9), _rope(50, 8))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = qk_importance(inp, chunk_elements=256)
        torch.set_num_threads(2)
        two = qk_importance(inp, chunk_elements=256)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    for site in one:
        assert torch.allclose(one[site], two[site], rtol=1e-6, atol=0)


def test_an_overflowing_batch_is_redone_with_the_stable_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """A logit change past ~88 nats overflows e^d: the pass notices (once per batch) and redoes
    the batch with two softmaxes, so the statistics equal a run that only uses those."""
    import neuronspec.methods.plnd_qk as qk

    model = tiny_model("llama")
    batch = next(iter_batches([[1, *range(3, 40)], [1, *range(50, 70)]], batch_size=2, pad_id=0))
    fused = plnd_statistics(model, [batch], ["attn.q", "attn.k"])
    calls = []
    real = qk.qk_importance

    def overflowing(inp, *args, stable=False, **kw):  # noqa: ANN001, ANN202
        calls.append(stable)
        out = real(inp, *args, stable=stable, **kw)
        if not stable:
            out = {s: v.clone().index_fill_(2, torch.tensor([3]), float("inf")) for s, v in out.items()}
            kw_plan = args[1] if len(args) > 1 else kw.get("plan")
            kw_plan.flag(out.values())
        return out

    monkeypatch.setattr("neuronspec.methods.plnd.qk_importance", overflowing)
    redone = plnd_statistics(model, [batch], ["attn.q", "attn.k"])
    assert calls.count(False) == 3 and calls.count(True) == 3  # 3 layers, once each way
    for site in ("attn.q", "attn.k"):
        assert torch.isfinite(redone[site].sum).all()
        assert torch.allclose(redone[site].sum, fused[site].sum, rtol=1e-4, atol=1e-12)


@pytest.mark.skipif(os.environ.get("NEURONSPEC_TEST_COMPILE") != "1",
                    reason="compiling takes 30-100 s on a busy 2-core machine; NEURONSPEC_TEST_COMPILE=1 runs it")
def test_compiled_kernel_equals_eager() -> None:
    """The kernel torch.compile fuses (the fast path on CPU and GPU) computes the eager values
    (one shape with RoPE and q/k norms: both rescale kinds)."""
    torch.manual_seed(0)
    uq, uk = torch.randn(2, 4, 40, 8), torch.randn(2, 2, 40, 8)
    inp = _inputs(uq, uk, _mask(2, 40, [40, 33], 9), 0.3, None, (1 + 0.2 * torch.randn(8), 1 + 0.2 * torch.randn(8)),
                  _rope(40, 8))
    eager = qk_importance(inp, compiled=False)
    fused = qk_importance(inp, compiled=True)
    for site in eager:
        assert torch.allclose(fused[site], eager[site], rtol=1e-5, atol=1e-9), site


def test_large_batches_are_scored_a_few_documents_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounding the [rows, T, S] tensors splits the batch; the scores are those of the whole batch."""
    import neuronspec.methods.plnd_qk as qk

    torch.manual_seed(0)
    b, h, t, d = 5, 4, 30, 6
    lengths = [30, 28, 20, 9, 4]
    inp = _inputs(torch.randn(b, h, t, d), torch.randn(b, 2, t, d), _mask(b, t, lengths, 7), 0.3, None,
                  (1 + 0.2 * torch.randn(d), 1 + 0.2 * torch.randn(d)), _rope(t, d))
    needed = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    whole = qk_importance(inp, plan=Plan(needed, h))
    monkeypatch.setattr(qk, "QK_LAYER_ELEMENTS", 2 * h * t * t)  # two documents per group
    split = qk_importance(inp, plan=Plan(needed, h))
    for site in whole:
        assert torch.allclose(split[site], whole[site], rtol=1e-6, atol=1e-12), site


def test_c_kernel_scores_cpu_layers_without_falling_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU the hand-written kernel computes the default score (no warning, no eager fallback),
    for every shape kind, and equals the eager function; threads split rows without changing it."""
    import warnings

    from neuronspec.methods import plnd_qk_cpu

    calls = []
    real = plnd_qk_cpu.scores
    monkeypatch.setattr(plnd_qk_cpu, "scores", lambda *a, **kw: (calls.append(a[0].scale_s is not None), real(*a, **kw)))
    torch.manual_seed(0)
    b, h, t, d = 2, 4, 45, 8
    for gains, rot in [(None, None), (None, _rope(t, d)), ((1 + 0.2 * torch.randn(d), 1 + 0.2 * torch.randn(d)), _rope(t, d))]:
        inp = _inputs(torch.randn(b, h, t, d), torch.randn(b, 2, t, d), _mask(b, t, [45, 30], 11), 0.3, None, gains, rot)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            native = qk_importance(inp)
        eager = qk_importance(inp, compiled=False)
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(2)
            threaded = qk_importance(inp)
        finally:
            torch.set_num_threads(before)
        for site in native:
            assert torch.allclose(native[site], eager[site], rtol=1e-5, atol=1e-9), site
            assert torch.equal(threaded[site], native[site]), site
    # twice each (one and two threads): plain (q and k share one call), rope (q, k), rope+norm (q, k with scale_s)
    assert len(calls) == 2 * (1 + 2 + 2) and calls.count(True) == 2


@pytest.mark.parametrize("kind", ["plain", "rope+norm"])
def test_c_kernel_scores_an_overflowing_logit_change_exactly(kind: str) -> None:
    """Logit changes of ~100 nats or more, where the three sums overflow (the eager function
    returns non-finite scores and would have the batch redone): the kernel switches to the
    two-softmax form for those (query, neuron) pairs — finite, nothing flagged, the direct values.
    plain: removing dimension 0 raises key 2's logit by 100; rope+norm: one pre-norm coordinate
    carries nearly all of a head's norm, so removing it rescales the rest ~50-fold."""
    torch.manual_seed(0)
    b, h, t, d = 1, 2, 20, 8
    if kind == "plain":
        uq, uk = torch.full((b, h, t, d), 0.1), torch.full((b, 1, t, d), 0.1)
        uq[..., 0], uk[..., 2, 0] = 10.0, -10.0
        gains = rot = None
        scaling = 1.0
    else:
        uq, uk = torch.randn(b, h, t, d), torch.randn(b, 1, t, d)
        uq[..., 3, 0], uk[..., 7, 1] = 40.0, 40.0
        gains, rot = (1 + 0.2 * torch.randn(d), 1 + 0.2 * torch.randn(d)), _rope(t, d)
        scaling = 30.0
    mask = _mask(b, t, [t], None)
    inp = _inputs(uq, uk, mask, scaling, None, gains, rot)
    assert not all(torch.isfinite(v).all() for v in qk_importance(inp, compiled=False).values())
    plan = Plan(None, h)
    got = qk_importance(inp, plan=plan)
    assert plan.overflow is not None and not bool(plan.overflow)
    want = _direct(uq.double(), uk.double(), mask.double(), scaling, None,
                   gains and tuple(g.double() for g in gains), rot and tuple(r.double() for r in rot))
    for site in got:
        # scores of order 1 from float32 logits of order 10^2: absolute error ~1e-5 (the
        # two-softmax form in torch, qk_importance(stable=True), is off by as much)
        assert torch.allclose(got[site], want[site].float(), rtol=1e-4, atol=1e-4), site


def test_a_huge_change_at_a_masked_key_is_no_overflow() -> None:
    """The kernel scores whole vectors of 16 keys, so a query also passes over future keys its
    mask hides. A +100 nat change at such a key (query 2, key 5) changes nothing: the score stays
    finite, nothing is flagged, and it equals the direct definition."""
    b, h, t, d = 1, 1, 20, 4
    q, k = torch.full((b, h, t, d), 0.1), torch.full((b, h, t, d), 0.1)
    q[:, :, 2, 0], k[:, :, 5, 0] = 10.0, -10.0
    mask = _mask(b, t, [t], None)
    plan = Plan(None, h)
    got = qk_importance(QKInputs(q, k, mask, 1.0), ("attn.q",), plan=plan)["attn.q"]
    assert torch.isfinite(got).all() and not bool(plan.overflow)
    want = _direct(q.double(), k.double(), mask.double(), 1.0, None, None, None)["attn.q"].float()
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("compiled", [None, False])
def test_a_zero_norm_gain_is_scored_from_the_norm_input(compiled: bool | None) -> None:
    """Gemma 3 270M has q/k norm gains of exactly 0: such a neuron reaches attention only through
    the norm's mean square, and how much zeroing it rescales its head needs its pre-norm value,
    which q̃_n / g_n cannot give back (0/0). With the norms' inputs the scores equal the direct
    definition, zero-gain neurons included."""
    torch.manual_seed(0)
    b, h, t, d = 2, 4, 30, 8
    uq, uk = torch.randn(b, h, t, d) * 2, torch.randn(b, 2, t, d) * 2
    gains = (1 + 0.3 * torch.randn(d), 1 + 0.3 * torch.randn(d))
    gains[0][[1, 5]] = 0.0
    gains[1][2] = 0.0
    mask, rot = _mask(b, t, [30, 21], None), _rope(t, d)
    want = _direct(uq.double(), uk.double(), mask.double(), 0.4, None, tuple(g.double() for g in gains),
                   tuple(r.double() for r in rot))
    got = qk_importance(_inputs(uq, uk, mask, 0.4, None, gains, rot, pre=True), compiled=compiled)
    for site, zero in (("attn.q", [1, 5]), ("attn.k", [2])):
        assert want[site][..., zero].amax() > 1e-4  # the zero-gain neurons do matter
        assert torch.allclose(got[site], want[site].float(), rtol=1e-3, atol=1e-5), site


def test_without_a_c_compiler_the_score_warns_and_is_computed_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    """No silent fallback: a machine without a C compiler gets a warning, then the eager values."""
    from neuronspec.methods import plnd_qk, plnd_qk_cpu

    monkeypatch.setattr(plnd_qk_cpu, "_LIB", [])
    monkeypatch.setattr(plnd_qk, "_COMPILED", {})
    monkeypatch.setenv("CC", "no-such-c-compiler")
    torch.manual_seed(0)
    inp = _inputs(torch.randn(1, 2, 20, 4), torch.randn(1, 1, 20, 4), _mask(1, 20, [20], None), 0.5, None, None, _rope(20, 4))
    with pytest.warns(RuntimeWarning, match="C kernel could not be built"):
        got = qk_importance(inp)
    want = qk_importance(inp, compiled=False)
    for site in want:
        assert torch.equal(got[site], want[site]), site
