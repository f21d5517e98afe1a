"""The q/k score's three sums over keys as one hand-written C loop, for CPUs.

Why not torch.compile on CPU: Inductor wrote the perturbed-probability tensor of each chunk to
memory and reduced it in three further passes (each chunk copied contiguous first): 0.6-0.8 ns
per (query, neuron, key) on one AVX-512 core. This loop keeps it in registers: per (row, query)
the probabilities stay in L1 and the key factors of all neurons in L2; one range reduction
gives e^x − 1 (accurate near 0, where the score's terms live) and e^x (for a key whose
probability underflowed); each query runs from the first to the last key its mask lets it see,
rounded out to whole vectors (no causal triangle inside a block): ~0.25 ns. A (query, neuron)
whose logit change passes e^40 — where the sums' squares near float's range — is scored with
the two softmaxes instead, exactly, so no batch has to be redone. The C source is compiled
once per machine with the system C compiler (`$CC`, else `cc`) into the user cache, flags
chosen from the vector unit PyTorch detected, and called through ctypes (which releases the
GIL, so row ranges run on threads). No compiler: :func:`load` raises and the caller warns and
computes eagerly.

Without soft-capping only (Gemma 2): a capped logit change needs a second pass over the keys
for its centre; capped models take the compiled/eager path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from neuronspec.paths import user_cache

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))
#define EXP_LIMIT 40.0f  /* largest exponent the three sums take (see score) */

INLINE float from_bits(int32_t i) { float f; memcpy(&f, &i, 4); return f; }
INLINE int32_t to_bits(float f) { int32_t i; memcpy(&i, &f, 4); return i; }

/* The change of key s's logit when the neuron is off: -c (MODE 0), (a-1) raw - a c (MODE 1,
   a per query), (b_s-1) raw_s - b_s c (MODE 2), c = b1 r1_s + b2 r2_s; minus `centre`. */
#define CHANGE(MODE, PAIRS, s)                                                                   \
    (MODE == 0 ? (PAIRS == 2 ? nb1 * r1[s] + (nb2 * r2[s] + ncentre) : nb1 * r1[s] + ncentre)   \
     : MODE == 1 ? (a - 1.0f) * raw[s] - a * (PAIRS == 2 ? b1 * r1[s] + b2 * r2[s] : b1 * r1[s]) - centre \
     : (beta[s] - 1.0f) * raw[s] - beta[s] * (PAIRS == 2 ? b1 * r1[s] + b2 * r2[s] : b1 * r1[s]) - centre)

/* z = k ln2 + r, |r| <= ln2/2 (z >= -87, the caller clamps; past 88 2^k is garbage, which
   callers discard): *two_k = 2^k and the
   return value expm1(r) (relative error ~1e-8), so exp(z) - 1 = 2^k expm1(r) + (2^k - 1),
   exact near 0 (k = 0), and exp(z) = 2^k expm1(r) + 2^k. */
INLINE float expm1_parts(float z, float* two_k) {
    float kf = z * 1.44269504088896341f + 12582912.0f;  /* 1.5 * 2^23: round to nearest */
    *two_k = from_bits((to_bits(kf) - (0x4B400000 - 127)) << 23);
    kf -= 12582912.0f;
    float r = z - kf * 0.693147182464599609375f;  /* ln2 rounded: r off by |k| * 2e-9 */
    float q = 1.0f / 5040.0f;
    q = q * r + 1.0f / 720.0f;
    q = q * r + 1.0f / 120.0f;
    q = q * r + 1.0f / 24.0f;
    q = q * r + 1.0f / 6.0f;
    q = q * r + 0.5f;
    return r + (r * r) * q;
}

/* d1 = sum e, s1 = sum p e, s2 = sum e^2 over keys lo..hi-1 of one (row, query, neuron), with
   x the centred logit change and e = p (exp(x) - 1) where p > 0, exp(lg - lse + x) where p
   underflowed (lg the key's logit, lse the row's log-sum-exp; 0 for a masked key). SAFE: every
   p in the query's span is > 0 (keys outside it are masked: p = 0, e = 0). Returns the largest
   exponent of a key with p > 0 or lg - lse + x > -87 (the caller's check for overflow). */
INLINE float sums(const int MODE, const int PAIRS, const int SAFE, int64_t lo, int64_t hi,
                  const float* __restrict p, const float* __restrict lg, float lse, const float* __restrict raw,
                  const float* __restrict r1, const float* __restrict r2, const float* __restrict beta,
                  float b1, float b2, float a, float centre, float* res) {
    const float nb1 = -b1, nb2 = -b2, ncentre = -centre;
    float d1 = 0.0f, s1 = 0.0f, s2 = 0.0f, zmax = -__builtin_inff();
    #pragma omp simd reduction(+:d1, s1, s2) reduction(max:zmax)
    for (int64_t s = lo; s < hi; s++) {
        float x = CHANGE(MODE, PAIRS, s);
        float ps = p[s];
        float z = SAFE ? x : (ps > 0.0f ? x : (lg[s] - lse) + x);
        zmax = zmax > z ? zmax : z;  /* SAFE: may be a masked key's, then the caller checks */
        float zc = z > -87.0f ? z : -87.0f;  /* exp(z) - 1 = -1 in float below */
        float two_k, em = expm1_parts(zc, &two_k);
        float e = ps * (two_k * em + (two_k - 1.0f));
        if (!SAFE) e = ps > 0.0f ? e : (z > -87.0f ? two_k * em + two_k : 0.0f);
        d1 += e;
        s1 += ps * e;
        s2 += e * e;
    }
    res[0] = d1; res[1] = s1; res[2] = s2;
    return zmax;
}

/* sum_s (p'_s - p_s)^2 of one (row, query, neuron) from the two softmaxes, shifted by the
   largest perturbed log-probability, for a logit change past e^EXP_LIMIT. */
INLINE float exact(const int MODE, const int PAIRS, int64_t lo, int64_t hi,
                   const float* __restrict p, const float* __restrict lg, float lse, const float* __restrict raw,
                   const float* __restrict r1, const float* __restrict r2, const float* __restrict beta,
                   float b1, float b2, float a) {
    const float nb1 = -b1, nb2 = -b2, ncentre = 0.0f, centre = 0.0f;
    float m = -__builtin_inff(), g = 0.0f, out = 0.0f;
    for (int64_t s = lo; s < hi; s++) {
        float z = CHANGE(MODE, PAIRS, s) + (lg[s] - lse);
        m = m > z ? m : z;
    }
    for (int pass = 0; pass < 2; pass++) {
        const float inv = pass ? 1.0f / g : 0.0f;
        for (int64_t s = lo; s < hi; s++) {
            float z = CHANGE(MODE, PAIRS, s) + (lg[s] - lse) - m;  /* <= 0 */
            float two_k, em = expm1_parts(z > -87.0f ? z : -87.0f, &two_k);
            float w = z > -87.0f ? two_k * em + two_k : 0.0f;
            if (pass) { float dp = w * inv - p[s]; out += dp * dp; } else g += w;
        }
    }
    return out;
}

/* log-sum-exp of a row from its likeliest key (p >= 1/S there, so log p is accurate) */
static float row_lse(const float* pr, const float* lgr, int64_t lo, int64_t hi) {
    int64_t j = lo;
    for (int64_t s = lo; s < hi; s++) j = pr[s] > pr[j] ? s : j;
    return lgr[j] - logf(pr[j]);
}

#define ARGS pr, lgr, lse, rawr, r1n, r2n, betan, b1, b2, a
#define SUMS(M, P, S) zmax = sums(M, P, S, lo, hi, ARGS, cen, res)
#define EXACT(M, P) return exact(M, P, lo, hi, ARGS)

/* sum_s (p'_s - p_s)^2 of one (row, query, neuron) over keys lo..hi-1: the three sums, or the
   two-softmax form where they overflow. Each case is its own vector loop. */
static float score(int mode, int pairs, int safe, int64_t lo, int64_t hi, int64_t lo_t, int64_t hi_t,
                   const float* pr, const float* lgr, float lse, float sq, const float* rawr, const float* r1n,
                   const float* r2n, const float* betan, float b1, float b2, float a, float cen) {
    float res[3], zmax;
    switch (mode * 4 + (pairs - 1) * 2 + safe) {
        case 0: SUMS(0, 1, 0); break;  case 1: SUMS(0, 1, 1); break;
        case 2: SUMS(0, 2, 0); break;  case 3: SUMS(0, 2, 1); break;
        case 4: SUMS(1, 1, 0); break;  case 5: SUMS(1, 1, 1); break;
        case 6: SUMS(1, 2, 0); break;  case 7: SUMS(1, 2, 1); break;
        case 8: SUMS(2, 1, 0); break;  case 9: SUMS(2, 1, 1); break;
        case 10: SUMS(2, 2, 0); break; default: SUMS(2, 2, 1); break;
    }
    const float d1 = res[0], s1 = res[1], s2 = res[2], g = 1.0f + d1;
    const float three = (s2 - 2.0f * d1 * s1 + d1 * d1 * sq) / (g * g);
    /* past e^40 the squares approach float's range (e^88 overflows e itself): for such a large
       change (or a masked key's, if SAFE) the two-softmax form is exact and safe */
    if (zmax <= EXP_LIMIT && fabsf(three) <= 3.4e38f) return three;
    if (safe) lse = row_lse(pr, lgr, lo_t, hi_t);
    switch (mode * 2 + pairs - 1) {
        case 0: EXACT(0, 1); case 1: EXACT(0, 2); case 2: EXACT(1, 1);
        case 3: EXACT(1, 2); case 4: EXACT(2, 1); default: EXACT(2, 2);
    }
}

/* out[r, t, n] = sum_s (p'_s - p_s)^2 for rows r0..r1-1 (see plnd_qk._fused_scores for the
   algebra). Arrays are contiguous: p, logits, raw [rows, T, S]; centre, l1, l2, scale_t, out
   [rows, T, D]; r1, r2, scale_s [rows, D, S]; lo, hi [B or 1, T] (row r reads mask row
   r / heads, or 0); need [rows, T] or NULL. Unneeded queries are left as they are. */
void plnd_qk_scores(int64_t r0, int64_t r1_end, int64_t T, int64_t S, int64_t D, int64_t heads,
                    int64_t mask_per_batch, int64_t mode, int64_t pairs,
                    const float* p, const float* logits, const float* raw,
                    const float* centre, const float* l1, const float* r1, const float* l2,
                    const float* r2, const float* scale_t, const float* scale_s,
                    const int32_t* lo_all, const int32_t* hi_all, const uint8_t* need, float* out) {
    for (int64_t row = r0; row < r1_end; row++) {
        const int64_t mb = mask_per_batch ? row / heads : 0;
        for (int64_t t = 0; t < T; t++) {
            const int64_t rt = row * T + t;
            if (need && !need[rt]) continue;
            const int64_t lo_t = lo_all[mb * T + t], hi_t = hi_all[mb * T + t];
            float* o = out + rt * D;
            if (hi_t <= lo_t) { for (int64_t n = 0; n < D; n++) o[n] = 0.0f; continue; }
            const float* pr = p + rt * S;
            const float* lgr = logits + rt * S;
            const float* rawr = raw ? raw + rt * S : 0;
            int safe = 1;
            float sq = 0.0f, lse = 0.0f;
            #pragma omp simd reduction(+:sq) reduction(&:safe)
            for (int64_t s = lo_t; s < hi_t; s++) { sq += pr[s] * pr[s]; safe &= pr[s] > 0.0f; }
            if (!safe) lse = row_lse(pr, lgr, lo_t, hi_t);  /* some probability underflowed */
            /* whole vectors: keys outside the query's span are masked (p = 0), so they add 0 */
            const int64_t up = (hi_t + 15) & ~(int64_t)15, lo = lo_t & ~(int64_t)15, hi = up < S ? up : S;
            for (int64_t n = 0; n < D; n++) {
                const int64_t rn = (row * D + n) * S;
                o[n] = score((int)mode, (int)pairs, safe, lo, hi, lo_t, hi_t, pr, lgr, lse, sq, rawr, r1 + rn,
                             pairs == 2 ? r2 + rn : 0, scale_s ? scale_s + rn : 0, l1[rt * D + n],
                             pairs == 2 ? l2[rt * D + n] : 0.0f, scale_t ? scale_t[rt * D + n] : 1.0f,
                             centre[rt * D + n]);
            }
        }
    }
}
"""

#: vector-unit flags per capability PyTorch detected (torch.backends.cpu.get_cpu_capability)
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma", "-mprefer-vector-width=512"],
    "AVX2": ["-mavx2", "-mfma"],
}
_FLAGS = ["-O3", "-shared", "-fPIC", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast"]

_LIB: list[ctypes.CDLL] = []


def load() -> ctypes.CDLL:
    """The compiled kernel library, built into the user cache on first use (a second or two).
    Raises RuntimeError when no C compiler is found or compiling fails."""
    if _LIB:
        return _LIB[0]
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise RuntimeError(f"no C compiler ({os.environ.get('CC', 'cc')}) on PATH")
    flags = _FLAGS + _ISA_FLAGS.get(torch.backends.cpu.get_cpu_capability(), [])
    key = hashlib.sha256("\0".join([_SOURCE, compiler, *flags]).encode()).hexdigest()[:16]
    target = user_cache() / "kernels" / f"plnd_qk_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            src, lib = os.path.join(tmp, "plnd_qk.c"), os.path.join(tmp, "plnd_qk.so")
            with open(src, "w") as f:
                f.write(_SOURCE)
            done = subprocess.run([compiler, *flags, src, "-o", lib], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"compiling the q/k kernel failed: {done.stderr[-500:]}")
            os.replace(lib, target)  # atomic: concurrent builders each install a complete file
    lib = ctypes.CDLL(str(target))
    fn = lib.plnd_qk_scores
    fn.restype = None
    fn.argtypes = [ctypes.c_int64] * 9 + [ctypes.c_void_p] * 14
    _LIB.append(lib)
    return lib


@dataclass
class KernelArgs:
    """One layer's inputs of one site, all float32 contiguous on the CPU (see the C comment)."""

    p: Tensor
    logits: Tensor
    raw: Tensor | None
    centre: Tensor
    left: list[Tensor]
    right: list[Tensor]
    scale_t: Tensor | None
    scale_s: Tensor | None
    lo: Tensor
    hi: Tensor
    heads: int
    need: Tensor | None


def scores(args: KernelArgs, out: Tensor, threads: int = 1) -> None:
    """Fill out [rows, T, D] (zeros where a query is not needed) — row ranges on `threads` threads."""
    fn = load().plnd_qk_scores
    rows, t, s = args.p.shape
    d = out.shape[-1]
    mode = 1 if args.scale_t is not None else 2 if args.scale_s is not None else 0
    pairs = len(args.left)
    floats = [args.p, args.logits, args.raw, args.centre, *args.left, *args.right, args.scale_t, args.scale_s, out]
    typed = [(x, torch.float32) for x in floats] + [(args.lo, torch.int32), (args.hi, torch.int32), (args.need, torch.uint8)]
    for x, dtype in typed:
        if x is not None and not (x.dtype == dtype and x.is_contiguous() and x.device.type == "cpu"):
            raise ValueError(f"the q/k kernel reads contiguous CPU tensors of {dtype}, got {x.dtype} on {x.device}")
    ptr = lambda x: None if x is None else x.data_ptr()  # noqa: E731
    fixed = [t, s, d, args.heads, int(args.lo.shape[0] > 1), mode, pairs]
    pointers = [ptr(args.p), ptr(args.logits), ptr(args.raw), ptr(args.centre), ptr(args.left[0]),
                ptr(args.right[0]), ptr(args.left[1]) if pairs == 2 else None, ptr(args.right[1]) if pairs == 2 else None,
                ptr(args.scale_t), ptr(args.scale_s), ptr(args.lo), ptr(args.hi), ptr(args.need), ptr(out)]

    def run(r: tuple[int, int]) -> None:
        fn(r[0], r[1], *fixed, *pointers)

    threads = max(1, min(threads, rows))
    if threads == 1:
        run((0, rows))
        return
    step = -(-rows // threads)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, [(r, min(rows, r + step)) for r in range(0, rows, step)]))
