"""PLND's exact score through a post-sublayer RMSNorm (Gemma 2/3, OLMo 2).

Such blocks add N(y) = g ⊙ y / r(y), r(y) = √(‖y‖²/H + eps), to the residual stream, y the
sublayer's (down / output projection's) output of one token and g the norm's gain. Zeroing a
neuron removes its contribution Δ from y, so its importance for that token is
‖N(y − Δ) − N(y)‖², which is not ‖Δ‖² times a constant: the norm rescales the whole output.

With r' = r(y − Δ) and s = 1/r' − 1/r, N(y − Δ) − N(y) = g ⊙ (s·y − Δ/r'), hence

    ‖N(y − Δ) − N(y)‖² = s²·‖g⊙y‖² − 2·(s/r')·(g⊙g⊙y)ᵀΔ + ‖g⊙Δ‖²/r'²

    r² − r'² = (2·yᵀΔ − ‖Δ‖²)/H,   s = (r² − r'²) / (r·r'·(r + r'))

so four numbers per (token, neuron) — E = yᵀΔ, B = (g⊙g⊙y)ᵀΔ, P = ‖Δ‖², Q = ‖g⊙Δ‖² — give the
exact change for all neurons at once. For a neuron whose Δ is a column w scaled by a scalar a
(ffn, attn.o), E = a·(yᵀw) and B = a·((g⊙g⊙y)ᵀw) come from two products y·W of the
projection's size, P = a²‖w‖² and Q = a²‖g⊙w‖². s is formed from r² − r'², never as the
difference of two nearly equal reciprocals, so small contributions keep their precision.
Everything is computed in float32 (the norms compute in float32 too).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

#: elements of one [B, T, neurons] temporary: neurons are taken in chunks of this size
CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class PostNorm:
    """An RMSNorm y ↦ gain ⊙ y / √(mean y² + eps) between a sublayer and the residual add."""

    gain: Tensor  # [hidden] float32, the factor the norm really multiplies by (Gemma: 1 + weight)
    eps: float

    @property
    def gain2(self) -> Tensor:
        return self.gain.square()


@dataclass(frozen=True)
class TokenNorms:
    """The unperturbed output y [B, T, H] of a batch and its per-token ‖g⊙y‖², r² ([B, T, 1])."""

    y: Tensor
    gy: Tensor  # g⊙g⊙y
    gy2: Tensor
    r2: Tensor
    eps: float

    @classmethod
    def of(cls, y: Tensor, norm: PostNorm) -> TokenNorms:
        gy = y * norm.gain2
        return cls(y, gy, (gy * y).sum(-1, keepdim=True), y.square().mean(-1, keepdim=True) + norm.eps, norm.eps)


def normed_change2(tok: TokenNorms, e: Tensor, b: Tensor, p: Tensor, q: Tensor) -> Tensor:
    """‖N(y − Δ) − N(y)‖² per (token, neuron) from E = yᵀΔ, B = (g⊙g⊙y)ᵀΔ, P = ‖Δ‖², Q = ‖g⊙Δ‖²,
    each [B, T, n] (overwritten). r'² is floored at eps, its exact lower bound, against rounding."""
    drop = e.mul_(2.0).sub_(p).div_(tok.y.shape[-1])  # r² − r'²
    r2n = (tok.r2 - drop).clamp_min_(tok.eps)
    r, rn = tok.r2.sqrt(), r2n.sqrt()
    s = drop.div_(rn * r * (rn + r))
    out = q.div_(r2n)
    out -= 2.0 * s * b / rn
    out += s.square_() * tok.gy2
    return out


def column_change2(tok: TokenNorms, act: Tensor, weight: Tensor, wnorm2: Tensor, gwnorm2: Tensor) -> Tensor:
    """[B, T, n] importances of n neurons whose contributions are act[..., k]·weight[:, k].

    act [B, T, n] float32; weight [H, n] float32; wnorm2 / gwnorm2 [n]: ‖w‖², ‖g⊙w‖².
    """
    a2 = act.square()
    e = (tok.y @ weight).mul_(act)
    b = (tok.gy @ weight).mul_(act)
    return normed_change2(tok, e, b, a2 * wnorm2, a2.mul_(gwnorm2))


def chunks(batch_tokens: int, width: int) -> list[tuple[int, int]]:
    """Neuron ranges whose [B, T, n] temporaries stay below CHUNK_ELEMENTS each."""
    step = max(1, CHUNK_ELEMENTS // max(1, batch_tokens))
    return [(k, min(width, k + step)) for k in range(0, width, step)]


def v_change2(tok: TokenNorms, z: Tensor, o_weight: Tensor, pairs: tuple[list[tuple[int, int, Tensor]], ...],
              kv_heads: int, head_dim: int) -> Tensor:
    """[B, T, Hkv·D] importances of the V neurons (kv head, dim). Zeroing one zeroes z_{t,h,d} for
    every query head h of its group: Δ_t = Σ_h z_{t,h,d} W_o[:, (h,d)], so E = Σ_h z_{t,h,d}·(yᵀW_o)_(h,d),
    B likewise with g⊙g⊙y, and P, Q are quadratic forms of z_t in the Gram matrices of those W_o
    columns (plain and gain-weighted: `pairs`, see :func:`gram_pairs`). z [B, T, H·D] float32."""
    bsz, t, width = z.shape
    shape = (bsz, t, kv_heads, width // (kv_heads * head_dim), head_dim)
    zz = z.view(shape)
    e = ((tok.y @ o_weight).view(shape) * zz).sum(3).reshape(bsz, t, -1)
    b = ((tok.gy @ o_weight).view(shape) * zz).sum(3).reshape(bsz, t, -1)
    p, q = (_pair_quadratic(zz, c, kv_heads * head_dim) for c in pairs)
    return normed_change2(tok, e, b, p, q)


def _pair_quadratic(zz: Tensor, pairs: list[tuple[int, int, Tensor]], width: int) -> Tensor:
    """Σ_(g<=h) c·z_g z_h per token: zz [B, T, Hkv, group, D] → [B, T, Hkv·D]."""
    out = zz.new_zeros(*zz.shape[:2], width)
    for g, h, coef in pairs:
        out += (zz[:, :, :, g] * zz[:, :, :, h]).reshape(out.shape) * coef
    return out


def gram_pairs(w: Tensor, kv_heads: int, head_dim: int) -> list[tuple[int, int, Tensor]]:
    """(g, h, c) for g <= h: c [Hkv·D] = the inner product of the W_o columns of query heads g and h
    of a group at V neuron (kv head, dim), doubled off the diagonal (the Gram matrix is symmetric),
    so z_tᵀ G z_t = Σ_(g<=h) c·z_g z_h. w [hidden, H·D] float32."""
    group = w.shape[1] // (kv_heads * head_dim)
    w = w.view(w.shape[0], kv_heads, group, head_dim)
    # pair by pair: an einsum here batches tiny [G,X]@[X,G] products over (kv head, dim), far slower
    return [(g, h, (w[:, :, g] * w[:, :, h]).sum(0).flatten() * (1.0 if g == h else 2.0))
            for g in range(group) for h in range(g, group)]
