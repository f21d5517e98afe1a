"""PLND's q/k importance, for the neuron that deactivation switches off.

A q (k) neuron is output n of the query (key) projection of one head, *before* Gemma's
per-head (OLMo 2's whole-projection) q/k RMSNorm and before rotary embeddings — that is what ``deactivate`` and
``zero_weights`` zero. Its score is the paper's: the squared change of the attention
probabilities, Σ_s (p'_ts − p_ts)², when the neuron is switched off, per query t (a K neuron
sums it over the query heads of its group).

What switching it off does to the logits, exactly. Write q̃ for the normalised pre-RoPE query
(q̃ = u·g/r, u the projection output, g the norm's gain, r = √(mean u² + eps); no norm: q̃ = u)
and q = R_t q̃ for the post-RoPE one (R_t the rotation of position t, pairing n with n ± r/2 for
n < r, r = D unless rotary is partial; YaRN-like tables make it m times a rotation, see full_rotary_tables).
Zeroing u_n removes q̃_n and, through r, rescales the rest of the head by
α_tn = r/r' = (1 − (q̃_n/g_n)²/D)^(−1/2) (1 without a norm), so with ℓ_ts = scaling·q_t·k_s

    ℓ'_ts = α_tn (ℓ_ts − c_tsn),   c_tsn = scaling·q̃_tn·(R_tᵀ k_s)_n
          = scaling·q̃_tn·(cos_tn k_sn − sin_tn rot(k_s)_n),          rot = rotate_half

the removed part of q_t being q̃_tn·R_t e_n, which lives on both rotary partners of n. For a K
neuron the roles swap: ℓ'_ts = β_sn (ℓ_ts − scaling·k̃_sn·(cos_sn q_tn − sin_sn rot(q_t)_n)).
Soft-capping (Gemma 2: cap·tanh(ℓ/cap)) and the mask apply after, as in the model. Without
RoPE and norm (GPT-2) both reduce to removing q_tn·k_sn, and one computation serves q and k.

OLMo 2 normalises the whole projection (all heads together, width N = heads·D) before the head
split. Its q neuron is still output n of the projection, before that norm (what deactivation
zeroes), and its score is the change of *its own head's* probabilities (a K neuron: its group's),
computed exactly as above with r and α over the N coordinates (α_tn = (1 − (q̃_n/g_n)²/N)^(−1/2)).
The norm also rescales every other head by the same α_tn, a uniform change of their softmax
temperature of order u_n²/‖u‖², which the score leaves out: counting it would cost one more
pass over keys per head and neuron.

The score per (query, neuron) needs three sums over keys (:func:`_fused_scores`), so one
pass computes it without ever writing the [rows, queries, head_dim, keys] tensor. On CPU that
pass is a hand-written C loop (:mod:`plnd_qk_cpu`, built once per machine; each query from
the first to the last key its mask lets it see); on CUDA, and on CPU for soft-capped logits,
the function is `torch.compile`d (Triton / C++) and run by query blocks over the keys a block
can see; small soft-capped layers, or machines where neither can be built, run it eagerly in
cache-sized chunks, with a warning when building failed. Where keys lie is read from the mask
once per batch and mask kind, and the needed queries once per batch: no host synchronisation
per layer. Costs (benchmarks/detect_overhead.py, docs/benchmarks.md): on one CPU core ~0.25 ns per
(query, neuron, key); a site costs ~2.5 forward passes through MKL's linears, ~3.5 through
oneDNN's (models/onednn.py), on random-llama-small at 512 tokens.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from neuronspec.methods import plnd_qk_cpu
from neuronspec.models.attention import full_rotary_tables, rotate_half

#: elements of one perturbed-probability chunk [rows, block, D, span]: 2 MB, so each chunk's
#: ops run in cache instead of streaming through memory
QK_CHUNK_ELEMENTS = 1 << 19
#: queries per block on CPU. Smaller blocks would skip more of a causal mask's triangle; 16
#: keeps every row a multiple of 16 floats (one AVX-512 vector) and measured fastest
QK_QUERY_BLOCK = 16
#: queries per block for the compiled kernel on a GPU (fewer launches; a block's keys cover its last query)
QK_QUERY_BLOCK_CUDA = 64
#: elements (rows·T·S·D) of one soft-capped layer from which torch.compile is used on CPU (other
#: CPU layers use the C kernel; measured before it: 2.4x instead of 3.8x a forward pass for attn.q
#: at 128 tokens; compiling takes ~20-60 s once)
QK_COMPILE_MIN_ELEMENTS = 1 << 22
#: elements of one [rows, T, S] logits tensor (float32): larger batches are scored a few documents at a time
QK_LAYER_ELEMENTS = 1 << 28
#: Python threads sharing the chunks (more would queue on the GIL between ops)
QK_MAX_WORKERS = 4
#: additive mask values at or below this are "masked" (float16's minimum, -65504, included):
#: e^(mask + logit - term) is exactly 0.0 in float32 unless logits or terms approach 10^4
_MASKED = -1e4


@dataclass(frozen=True)
class QKInputs:
    """What the attention function of one layer saw, as :func:`capture_attention` hands it out.

    query [B,H,T,D] and key [B,Hkv,S,D] post-RoPE (and post-norm); mask additive [B,1|H,T,S]
    (None: causal); rotary (cos, sin) [B|1,T,D] or None; gains: the (q, k) per-head RMSNorm
    gains [D] (or [heads, 1, D] when `whole`) or None; pre: the (q, k) norms' inputs u [B,H,T,D] /
    [B,Hkv,S,D] and eps their epsilons. How much zeroing u_n rescales the rest of a head needs u_n:
    from `pre` when given, else recovered as q̃_n/g_n — which a zero gain (Gemma 3 270M has some)
    makes 0/0. `whole`: one norm over the whole projection (all heads; OLMo 2), not one per head.
    """

    query: Tensor
    key: Tensor
    mask: Tensor | None
    scaling: float
    softcap: float | None = None
    rotary: tuple[Tensor, Tensor] | None = None
    gains: tuple[Tensor, Tensor] | None = None
    pre: tuple[Tensor, Tensor] | None = None
    eps: tuple[float, float] = (0.0, 0.0)
    whole: bool = False

    def rows(self, b0: int, b1: int) -> QKInputs:
        """Documents b0..b1-1 (masks and rotary tables broadcast over documents stay whole)."""
        cut = lambda x: x if x is None or x.shape[0] == 1 else x[b0:b1]  # noqa: E731
        rotary = None if self.rotary is None else (cut(self.rotary[0]), cut(self.rotary[1]))
        pre = None if self.pre is None else (self.pre[0][b0:b1], self.pre[1][b0:b1])
        return QKInputs(self.query[b0:b1], self.key[b0:b1], cut(self.mask), self.scaling, self.softcap, rotary,
                        self.gains, pre, self.eps, self.whole)


def _norm_rescale(inp: QKInputs, which: int, normed: Tensor) -> Tensor:
    """r/r' per (position, neuron): how much the rest of a normalised head grows when its
    pre-norm coordinate u_n is zeroed, (1 − u_n² / (N·(mean u² + eps)))^(−1/2), the mean taken over
    the N = D coordinates of the head (N = heads·D, all heads, when `inp.whole`). From the norm's
    input when known; else u_n² / (N·(mean u² + eps)) = (q̃_n/g_n)² / N, `normed` being q̃."""
    over = (1, 3) if inp.whole else (-1,)
    if inp.pre is not None:
        u = inp.pre[which].float()
        n = u.shape[1] * u.shape[3] if inp.whole else u.shape[-1]
        share = u.square() / (u.square().mean(over, keepdim=True) + inp.eps[which]).mul_(n)
    else:
        n = normed.shape[1] * normed.shape[3] if inp.whole else normed.shape[-1]
        share = (normed / inp.gains[which]).square_().div_(n)
    return share.neg_().add_(1.0).clamp_min_(1e-12).rsqrt_()


@dataclass
class _Side:
    """Factors of one kind of neuron's removed logit term c[t,n,s] = Σ_i left_i[t,n]·right_i[n,s],
    and its rescale (per (t, n) for q, per (n, s) for k, None without a q/k norm), per row."""

    left: list[Tensor]   # [rows, T, D] each
    right: list[Tensor]  # [rows, D, S] each
    scale_t: Tensor | None = None  # [rows, T, D]
    scale_s: Tensor | None = None  # [rows, D, S]
    rotary_dim: int = 0  # > 0: right[1] is -rotate_half(right[0], rotary_dim): one product gives both centres


def _sides(inp: QKInputs, want_q: bool, want_k: bool) -> tuple[_Side | None, _Side | None]:
    q, k = inp.query.float(), inp.key.float()
    b, h, t, d = q.shape
    group = h // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # query head j reads KV head j // group (as repeat_kv)
    rows, s = b * h, k.shape[2]
    rq, rk = (lambda x: x.reshape(rows, t, d)), (lambda x: x.reshape(rows, s, d).transpose(1, 2))
    if inp.rotary is None:
        q_pre, k_pre = q, k
    else:
        cos, sin, inv, r = full_rotary_tables(inp.rotary, d)  # [B|1, 1, T, D]
        q_pre = (q * cos - rotate_half(q, r) * sin) * inv
        k_pre = (k * cos[..., :s, :] - rotate_half(k, r) * sin[..., :s, :]) * inv[..., :s, :]
    q_side = k_side = None
    if want_q:
        if inp.rotary is None:
            left, right = [rq(q_pre * inp.scaling)], [rk(k)]
        else:
            sq = q_pre * inp.scaling
            left, right = [rq(sq * cos), rq(sq * sin)], [rk(k), rk(-rotate_half(k, r))]
        q_side = _Side(left, right, rq(_norm_rescale(inp, 0, q_pre)) if inp.gains else None,
                       rotary_dim=r if inp.rotary is not None else 0)
    if want_k:
        if inp.rotary is None:
            left, right = [rq(q)], [rk(k_pre * inp.scaling)]
        else:
            sk = k_pre * inp.scaling
            left, right = [rq(q), rq(-rotate_half(q, r))], [rk(sk * cos[..., :s, :]), rk(sk * sin[..., :s, :])]
        scale = _norm_rescale(inp, 1, k_pre[:, ::group]) if inp.gains else None  # once per KV head
        k_side = _Side(left, right, scale_s=rk(scale.repeat_interleave(group, dim=1)) if inp.gains else None)
    return q_side, k_side


def key_spans(allowed: Tensor, block: int) -> list[tuple[int, int, int, int]]:
    """(t0, t1, lo, hi) per block of `block` queries: keys lo..hi-1 hold every key any of them can see.

    allowed [T, S] bool: where the mask lets a query see a key. Keys outside a block's span are
    masked for all its queries, so their probability is exactly 0 before and after any
    perturbation (exp underflows at the mask's huge negative value): dropping them changes nothing.
    """
    t, s = allowed.shape
    pos = torch.arange(s, device=allowed.device)
    first = torch.where(allowed, pos, s).amin(1).tolist()
    last = torch.where(allowed, pos, -1).amax(1).tolist()
    spans = []
    for t0 in range(0, t, block):
        t1 = min(t, t0 + block)
        lo, hi = min(first[t0:t1]), max(last[t0:t1]) + 1
        if hi > lo:
            spans.append((t0, t1, lo, hi))
    return spans


def _run_chunks(fn: Callable[[Any], None], chunks: list[Any], device: torch.device, small: bool) -> None:
    """fn(chunk) for every chunk; chunks write disjoint parts of one output.

    On CPU with n > 1 intra-op threads, up to QK_MAX_WORKERS Python threads take whole chunks
    and run their ops with n // workers threads each (torch releases the GIL inside ops):
    thousands of small ops then need no fork/join of OpenMP threads each, which on a shared,
    busy machine made the score several times slower.
    """
    threads = torch.get_num_threads()
    workers = min(threads, QK_MAX_WORKERS, len(chunks))
    if device.type != "cpu" or workers <= 1 or small:
        for c in chunks:
            fn(c)
        return
    torch.set_num_threads(threads // workers)  # process-wide; the new workers pick it up; restored below
    try:
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(fn, chunks):
                pass
    finally:
        torch.set_num_threads(threads)


class Plan:
    """Which (rows, query block, key span) chunks to score, computed once per batch and mask.

    `needed` [B,T] bool: the queries whose score is used (not padding, not the first token);
    blocks no row needs are skipped. It is copied to the host once per batch, and the key spans
    once per mask: the layers of one kind (full / sliding window) share their mask object.
    """

    def __init__(self, needed: Tensor | None, heads: int) -> None:
        self.needed = None if needed is None else needed.cpu().repeat_interleave(heads, 0)
        self._spans: dict[int, tuple[Any, list[tuple[int, int, int, int]]]] = {}
        self.overflow: Tensor | None = None  # bool scalar on the device, see qk_importance
        self._bounds: dict[tuple[int, int], tuple[Any, Tensor, Tensor]] = {}
        self._offset = 0  # first document of this (sub-)plan in its batch

    def rows(self, b0: int, b1: int, heads: int) -> Plan:
        """The plan of documents b0..b1-1: their needed queries, the same (shared) key spans —
        spans of the whole batch cover every sub-batch's visible keys."""
        sub = Plan(None, heads)
        sub.needed = None if self.needed is None else self.needed[b0 * heads:b1 * heads]
        sub._spans, sub._bounds, sub._offset = self._spans, self._bounds, self._offset + b0
        return sub

    def bounds(self, source: Any, mask: Tensor) -> tuple[Tensor, Tensor]:
        """First and one-past-last key each query can see, int32 [B|1, T] (the C kernel's spans:
        per query, so no causal triangle is scored), memoised like :meth:`spans` per sub-batch."""
        key = (id(source), self._offset)
        hit = self._bounds.get(key)
        if hit is None or hit[0] is not source or source is None:
            allowed = (mask > _MASKED).any(1)  # [B|1, T, S]: a key any head may see
            pos = torch.arange(allowed.shape[-1], device=allowed.device, dtype=torch.int32)
            lo = torch.where(allowed, pos, allowed.shape[-1]).amin(-1).to(torch.int32)
            hi = torch.where(allowed, pos + 1, 0).amax(-1).to(torch.int32)
            hit = (source, lo.contiguous(), hi.contiguous())
            self._bounds[key] = hit
        return hit[1], hit[2]

    def flag(self, scores: Iterable[Tensor]) -> None:
        """Remember (on the device, no sync) whether any score is not finite."""
        for x in scores:
            bad = ~torch.isfinite(x).all()
            self.overflow = bad if self.overflow is None else self.overflow | bad

    def spans(self, source: Any, mask: Tensor, block: int) -> list[tuple[int, int, int, int]]:
        """Key spans of `mask` (additive [B|1, 1|H, T, S]), memoised by the identity of `source`
        (the mask object the model passed; kept alive here so its id is not reused)."""
        hit = self._spans.get(id(source))
        if hit is None or hit[0] is not source or source is None:
            # Decide from the mask, not from probs > 0: a key whose probability merely underflows
            # can gain probability when a term is removed; a masked one never can.
            hit = (source, key_spans((mask > _MASKED).flatten(0, -3).any(0), block))
            self._spans[id(source)] = hit
        return hit[1]


def _fused_scores(raw: Tensor, p: Tensor, pw: Tensor, lp0: Tensor, s0: Tensor, center: Tensor,
                  l1: Tensor, r1: Tensor, l2: Tensor | None, r2: Tensor | None,
                  scale_t: Tensor | None, scale_s: Tensor | None, cap: float | None) -> Tensor:
    """Σ_s (p'_s − p_s)² of one chunk from three sums over keys, [r, tb, D].

    raw (scaled q·k, before soft-capping and mask) / p / pw / lp0: [r, tb, 1, span], with
    pw = p where p > 0 else 1 and lp0 = 0 where p > 0 else log p (−inf for a masked key);
    l: [r, tb, D, 1]; r: [r, 1, D, span]; scale_t [r, tb, D, 1] / scale_s [r, 1, D, span]: the
    norm rescale; s0 = Σ p² [r, tb, 1]; center [r, tb, D, 1]: Σ_s p_s·d_s (before capping).
    With d_s the change of logit s minus a per-row constant (which no softmax sees) and
    e_s = p_s(e^{d_s} − 1): p'_s − p_s = (e_s − p_s·D1)/(1 + D1), D1 = Σ e, so
    Σ_s (p'_s − p_s)² = (S2 − 2·D1·S1 + D1²·S0)/(1 + D1)², S2 = Σ e², S1 = Σ p·e. Centring d on
    its p-weighted mean makes D1 second-order small, so S2 dominates and nothing cancels
    (expm1 keeps small changes exact). A key whose p underflowed to 0 but is not masked can
    regain probability: there e = e^{log p + d} = expm1(log p + d) + 1 (0 for a masked key).
    Every op is elementwise or a reduction over keys, so a compiler fuses the function into one
    pass that never writes the [r, tb, D, span] tensor. e^d overflows only past ~88 nats.
    """
    c = l1 * r1 if l2 is None else l1 * r1 + l2 * r2  # the removed term
    if scale_t is not None:
        d = (scale_t - 1.0) * raw - scale_t * c  # α(raw − c) − raw, without cancelling raw
    elif scale_s is not None:
        d = (scale_s - 1.0) * raw - scale_s * c
    else:
        d = -c
    if cap:  # cap·(tanh((raw + d)/cap) − tanh(raw/cap)), without cancelling the two
        t, y = torch.tanh(raw / cap), torch.tanh(d / cap)
        d = cap * y / (torch.cosh(raw / cap).square() * (1.0 + t * y))
        center = (p * d).sum(-1, keepdim=True)  # capping bends d: the linear change's mean is no centre
    x = torch.expm1(d + (lp0 - center))
    e = x * pw + (pw - p)  # p·x where p > 0, x + 1 where it underflowed (pw − p = 1 there, 0 elsewhere)
    d1, s1, s2 = e.sum(-1), (p * e).sum(-1), (e * e).sum(-1)
    return (s2 - 2.0 * d1 * s1 + d1 * d1 * s0) / (1.0 + d1).square()


_COMPILED: dict[str, Any] = {}


def _kernel(compiled: bool) -> Callable[..., Tensor]:
    """The chunk kernel, compiled or eager. If compiling fails (no C++ compiler on CPU, no Triton
    on a GPU) the eager function is used from then on, with a warning: same values, slower."""
    if not compiled or _COMPILED.get("failed"):
        return _fused_scores
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(_fused_scores, dynamic=True)

    def run(*args: Any) -> Tensor:
        if _COMPILED.get("failed"):
            return _fused_scores(*args)
        try:
            return _COMPILED["fn"](*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure; the eager path computes the same
            _COMPILED["failed"] = True
            warnings.warn(f"the q/k score could not be compiled ({type(err).__name__}: {str(err)[:200]}); "
                          "computing it eagerly (same values, several times slower)", RuntimeWarning, stacklevel=2)
            return _fused_scores(*args)
    return run


def _use_compiled(device: torch.device, elements: int) -> bool:
    """torch.compile the kernel on CUDA (Triton), and on CPU once a layer's work repays compiling
    it (a C++ compiler is needed); NEURONSPEC_QK_COMPILE=0/1 forces it off / on."""
    forced = os.environ.get("NEURONSPEC_QK_COMPILE")
    if forced is not None:
        return forced == "1"
    return device.type == "cuda" or elements >= QK_COMPILE_MIN_ELEMENTS


def _use_native(device: torch.device, cap: float | None, compiled: bool | None) -> bool:
    """The C kernel (:mod:`plnd_qk_cpu`) on CPU without soft-capping, unless `compiled` is False
    or NEURONSPEC_QK_COMPILE=0. It builds in about a second, so small layers use it too. If it
    cannot be built, a warning says so once and the eager function is used from then on."""
    if device.type != "cpu" or cap or compiled is False or os.environ.get("NEURONSPEC_QK_COMPILE") == "0":
        return False
    if "native_failed" in _COMPILED:
        return False
    try:
        plnd_qk_cpu.load()
    except (RuntimeError, OSError) as err:
        _COMPILED["native_failed"] = True
        warnings.warn(f"the q/k score's C kernel could not be built ({err}); computing it eagerly "
                      "(same values, several times slower)", RuntimeWarning, stacklevel=3)
        return False
    return True


def _native_scores(inp: QKInputs, sides: dict[str, _Side], raw: Tensor, logits: Tensor, probs: Tensor,
                   plan: Plan, mask_source: Any, mask: Tensor, out: dict[str, Tensor]) -> None:
    """Fill `out` through the C kernel: one call per site, rows split over the intra-op threads."""
    p_raw = (probs * raw).sum(-1) if inp.gains is not None else None
    lo, hi = plan.bounds(mask_source, mask)
    need = None if plan.needed is None else plan.needed.contiguous().view(torch.uint8)
    common = dict(p=probs.contiguous(), logits=logits.contiguous(), raw=raw if inp.gains is not None else None,
                  lo=lo, hi=hi, heads=inp.query.shape[1], need=need)
    for site, side in sides.items():
        args = plnd_qk_cpu.KernelArgs(
            centre=_center(side, probs, raw, p_raw).contiguous(), left=[x.contiguous() for x in side.left],
            right=[x.transpose(1, 2).contiguous() for x in side.right],  # [rows, S, D]: as computed, no copy
            scale_t=None if side.scale_t is None else side.scale_t.contiguous(),
            scale_s=None if side.scale_s is None else side.scale_s.transpose(1, 2).contiguous(), **common)
        plnd_qk_cpu.scores(args, out[site], threads=torch.get_num_threads())


def _center(side: _Side, p: Tensor, raw: Tensor, p_raw: Tensor) -> Tensor:
    """Σ_s p_s·d_s per (row, query, neuron), d the un-capped logit change: matrix products only."""
    if side.rotary_dim and side.scale_s is None:  # p @ (-rot k) = -rot(p @ k): one product
        pk = torch.bmm(p, side.right[0].transpose(1, 2))
        pr = [pk, -rotate_half(pk, side.rotary_dim)]
    else:
        pr = [torch.bmm(p, (r if side.scale_s is None else r * side.scale_s).transpose(1, 2)) for r in side.right]
    c = sum(l * x for l, x in zip(side.left, pr))  # Σ_s p_s (β_s) c_s
    if side.scale_t is not None:
        return (side.scale_t - 1.0) * p_raw[..., None] - side.scale_t * c
    if side.scale_s is not None:
        return torch.bmm(p * raw, (side.scale_s - 1.0).transpose(1, 2)) - c
    return -c


def qk_importance(inp: QKInputs, want: tuple[str, ...] = ("attn.q", "attn.k"), plan: Plan | None = None,
                  chunk_elements: int = QK_CHUNK_ELEMENTS, mask_source: Any = None, stable: bool = False,
                  compiled: bool | None = None) -> dict[str, Tensor]:
    """Per-token q/k importance per query head, site → [B, H, T, D] (sum a K neuron's over its group).

    Entry (b,h,t,n) = Σ_s (softmax_s(ℓ'_ts) − softmax_s(ℓ_ts))², ℓ' the logits with neuron n of
    head h (attn.q) or of its KV head (attn.k) switched off (module docstring). With a `plan`,
    query blocks no row needs are skipped and left 0, key spans are reused for every call with
    the same `mask_source`, and a non-finite score (a logit rising by more than ~88 nats, where
    e^d overflows float32) is flagged in ``plan.overflow`` for the caller to redo with `stable`:
    two softmaxes per chunk, materialised, slower. `compiled`: None = :func:`_use_compiled`.
    """
    q = inp.query
    b, h, t, d = q.shape
    s = inp.key.shape[2]
    plan = plan or Plan(None, h)
    group = max(1, QK_LAYER_ELEMENTS // (h * t * s))
    if b > group:  # bound the [rows, T, S] tensors below (a 7B model at 2,048 tokens: 0.5 GB per document)
        parts = [qk_importance(inp.rows(b0, b0 + group), want, plan.rows(b0, b0 + group, h), chunk_elements,
                               mask_source, stable, compiled) for b0 in range(0, b, group)]
        out = {site: torch.cat([part[site] for part in parts]) for site in want}
        if not stable:
            plan.flag(out.values())
        return out
    rows = b * h
    shared = inp.rotary is None and inp.gains is None  # both sites remove the same q_n·k_n
    q_side, k_side = _sides(inp, "attn.q" in want or shared, "attn.k" in want and not shared)
    sides = {site: side for site, side in (("attn.q", q_side), ("attn.k", k_side)) if side is not None}
    keys = inp.key.float().repeat_interleave(h // inp.key.shape[1], dim=1).reshape(rows, s, d).transpose(1, 2)
    raw = torch.bmm(q.float().reshape(rows, t, d) * inp.scaling, keys)  # [rows, T, S] scaled q·k
    mask = inp.mask
    if mask is None:
        mask = torch.full((t, s), float("-inf"), device=q.device).triu(s - t + 1)[None, None]
    mask = mask[..., :s].float()
    cap = inp.softcap
    capped = torch.tanh(raw / cap) * cap if cap else raw
    logits = (capped.view(b, h, t, s) + mask).view(rows, t, s)
    probs = torch.softmax(logits, dim=-1)
    out = {site: torch.zeros(rows, t, d, device=q.device) for site in sides}
    if not stable and _use_native(q.device, cap, compiled):
        _native_scores(inp, sides, raw, logits, probs, plan, mask_source, mask, out)
        plan.flag(out.values())
        result = {site: v.view(b, h, t, d) for site, v in out.items()}
        return {site: result["attn.q" if shared else site] for site in want}
    need = plan.needed if plan.needed is not None else torch.ones(rows, t, dtype=torch.bool)
    use_compiled = False if stable else compiled if compiled is not None else _use_compiled(q.device, rows * t * s * d)
    # query blocks: small where chunks are materialised (cache-sized); larger for a fused kernel on a GPU
    block = QK_QUERY_BLOCK if not (use_compiled and q.device.type == "cuda") else QK_QUERY_BLOCK_CUDA
    block = max(1, min(t, block if use_compiled else min(block, chunk_elements // max(1, d * s))))
    chunks, elements = [], 0
    for t0, t1, lo, hi in plan.spans(mask_source, mask, block):
        live = need[:, t0:t1].any(1).nonzero().flatten()
        if not live.numel():
            continue
        first, end = int(live[0]), int(live[-1]) + 1  # length-sorted batches: a prefix of the rows
        step = end - first if use_compiled else max(1, chunk_elements // ((t1 - t0) * d * (hi - lo)))
        for site in sides:
            chunks += [(site, slice(r0, min(end, r0 + step)), t0, t1, lo, hi) for r0 in range(first, end, step)]
            elements += (end - first) * (t1 - t0) * d * (hi - lo)

    if stable:
        separate = bool(cap) or inp.gains is not None  # perturbed logits need raw and mask apart
        mask_rows = mask.expand(b, h, t, s).reshape(rows, t, s) if separate else None

        def score(chunk: tuple[str, slice, int, int, int, int]) -> None:
            site, r, t0, t1, lo, hi = chunk
            side = sides[site]
            x = None
            base = (raw if separate else logits)[r, t0:t1, None, lo:hi]  # [r, tb, 1, span]
            for left, right in zip(side.left, side.right):  # base − c, c = Σ_i left_i ⊗ right_i
                lc, rc = left[r, t0:t1, :, None], right[r, None, :, lo:hi]
                x = torch.addcmul(base, lc, rc, value=-1.0) if x is None else x.addcmul_(lc, rc, value=-1.0)
            if side.scale_t is not None:
                x.mul_(side.scale_t[r, t0:t1, :, None])
            if side.scale_s is not None:
                x.mul_(side.scale_s[r, None, :, lo:hi])
            if cap:
                x.div_(cap).tanh_().mul_(cap)
            if separate:
                x.add_(mask_rows[r, t0:t1, None, lo:hi])
            x = torch.softmax(x, dim=-1).sub_(probs[r, t0:t1, None, lo:hi])
            torch.linalg.vector_norm(x, dim=-1, out=out[site][r, t0:t1]).square_()
    else:
        s0 = probs.square().sum(-1)
        live = probs > 0
        pw = torch.where(live, probs, 1.0)
        lp0 = torch.where(live, 0.0, torch.log_softmax(logits, dim=-1))
        p_raw = (probs * raw).sum(-1) if inp.gains is not None else None
        centers = {site: _center(side, probs, raw, p_raw) for site, side in sides.items()}
        kernel = _kernel(use_compiled)

        def score(chunk: tuple[str, slice, int, int, int, int]) -> None:
            site, r, t0, t1, lo, hi = chunk
            side = sides[site]
            # contiguous copies (small: nothing here spans D and the keys at once): one memory
            # layout for every chunk, so the compiled kernel is specialised once, not per stride
            row = lambda x: x[r, t0:t1, None, lo:hi].contiguous()  # noqa: E731 - [r, tb, 1, span]
            left = [x[r, t0:t1, :, None].contiguous() for x in side.left]
            right = [x[r, None, :, lo:hi].contiguous() for x in side.right]
            out[site][r, t0:t1] = kernel(
                row(raw), row(probs), row(pw), row(lp0), s0[r, t0:t1, None].contiguous(),
                centers[site][r, t0:t1, :, None].contiguous(),
                left[0], right[0], left[1] if len(left) > 1 else None, right[1] if len(right) > 1 else None,
                None if side.scale_t is None else side.scale_t[r, t0:t1, :, None].contiguous(),
                None if side.scale_s is None else side.scale_s[r, None, :, lo:hi].contiguous(), cap)

    if use_compiled:
        for c in chunks:
            score(c)
    else:
        _run_chunks(score, chunks, q.device, small=elements < 4 * chunk_elements)  # small: not worth threads
    if not stable:
        plan.flag(out.values())
    result = {site: v.view(b, h, t, d) for site, v in out.items()}
    return {site: result["attn.q" if shared else site] for site in want}
