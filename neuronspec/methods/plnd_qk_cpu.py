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
#define EXP_LIMIT 40.0f  /* largest exponent the three sums take (see finish) */
#define MASKED -1e4f     /* a logit at or below this is masked (plnd_qk._MASKED) */
#define MAX_D 1024       /* head_dim bound of the per-query accumulators */

INLINE float from_bits(int32_t i) { float f; memcpy(&f, &i, 4); return f; }
INLINE int32_t to_bits(float f) { int32_t i; memcpy(&i, &f, 4); return i; }

/* z = k ln2 + r, |r| <= ln2/2 (z >= -87, the caller clamps; past 88 2^k is garbage, which
   callers discard): *two_k = 2^k and the return value expm1(r) (relative error ~1e-8), so
   exp(z) - 1 = 2^k expm1(r) + (2^k - 1), exact near 0 (k = 0), and exp(z) = 2^k expm1(r) + 2^k. */
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

/* The change of one key's logit for neuron n when it is off: -c (MODE 0), (a_n-1) raw - a_n c
   (MODE 1), (b_n-1) raw - b_n c (MODE 2, b the key's rescale), c = l1_n r1_n + l2_n r2_n. */
#define C(PAIRS, n) (PAIRS == 2 ? l1[n] * r1[n] + l2[n] * r2[n] : l1[n] * r1[n])
#define CHANGE(MODE, PAIRS, n)                                                                   \
    (MODE == 0 ? -C(PAIRS, n) : MODE == 1 ? (a[n] - 1.0f) * raw - a[n] * C(PAIRS, n)             \
                              : (beta[n] - 1.0f) * raw - beta[n] * C(PAIRS, n))

/* One visible key for all D neurons of a query: e = p (exp(x) - 1), x the centred change
   (UNDER: p underflowed to 0, e = exp(lp + x), lp the key's log-probability), added to the
   per-neuron sums d1 = sum e, s1 = sum p e, s2 = sum e^2; zmax: the largest exponent. */
INLINE void key_step(const int MODE, const int PAIRS, const int UNDER, int64_t D, float p, float lp, float raw,
                     const float* __restrict r1, const float* __restrict r2, const float* __restrict beta,
                     const float* __restrict l1, const float* __restrict l2, const float* __restrict a,
                     const float* __restrict centre, float* __restrict d1, float* __restrict s1,
                     float* __restrict s2, float* __restrict zmax) {
    #pragma omp simd
    for (int64_t n = 0; n < D; n++) {
        float x = CHANGE(MODE, PAIRS, n) - centre[n];
        float z = UNDER ? x + lp : x;
        zmax[n] = zmax[n] > z ? zmax[n] : z;
        float zc = z > -87.0f ? z : -87.0f;  /* exp(z) - 1 = -1 in float below */
        float two_k, em = expm1_parts(zc, &two_k);
        float e = UNDER ? (z > -87.0f ? two_k * em + two_k : 0.0f) : p * (two_k * em + (two_k - 1.0f));
        d1[n] += e;
        s1[n] += p * e;
        s2[n] += e * e;
    }
}

/* sum_s (p'_s - p_s)^2 of neuron n from the two softmaxes, shifted by the largest perturbed
   log-probability: for a logit change past e^EXP_LIMIT, where the three sums near float's range. */
static float exact(int mode, int pairs, int64_t n, int64_t D, int64_t lo, int64_t hi, const float* pr,
                   const float* lgr, float lse, const float* rawr, const float* r1, const float* r2,
                   const float* beta, const float* l1, const float* l2, const float* a) {
    float m = -__builtin_inff(), g = 0.0f, out = 0.0f;
    for (int pass = 0; pass < 3; pass++) {
        for (int64_t s = lo; s < hi; s++) {
            if (lgr[s] <= MASKED) continue;
            const int64_t k = s * D + n;
            const float raw = rawr ? rawr[s] : 0.0f, al = a ? a[n] : 1.0f, be = beta ? beta[k] : 1.0f;
            const float c = l1[n] * r1[k] + (pairs == 2 ? l2[n] * r2[k] : 0.0f);
            const float x = mode == 0 ? -c : mode == 1 ? (al - 1.0f) * raw - al * c : (be - 1.0f) * raw - be * c;
            const float z = x + (lgr[s] - lse);
            if (pass == 0) { m = m > z ? m : z; continue; }
            float two_k, em = expm1_parts(z - m > -87.0f ? z - m : -87.0f, &two_k);
            const float w = z - m > -87.0f ? two_k * em + two_k : 0.0f;
            if (pass == 1) g += w;
            else { const float dp = w / g - pr[s]; out += dp * dp; }
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

#define STEP(M, P, U) key_step(M, P, U, D, ps, lp, raw, r1s, r2s, betas, l1t, l2t, at, cen, d1, s1, s2, zmax)

/* out[r, t, n] = sum_s (p'_s - p_s)^2 for rows r0..r1-1 (see plnd_qk._fused_scores for the
   algebra). Arrays are contiguous: p, logits, raw [rows, T, S]; centre, l1, l2, scale_t, out
   [rows, T, D]; r1, r2, scale_s [rows, S, D]; lo, hi [B or 1, T] (row r reads mask row
   r / heads, or 0); need [rows, T] or NULL. Unneeded queries are left as they are. Keys run
   in the outer loop and neurons in the inner, vectorised one: no sums across vector lanes, and
   a masked key costs one comparison. Returns 0, or -1 if D > MAX_D (nothing written). */
int plnd_qk_scores(int64_t r0, int64_t r1_end, int64_t T, int64_t S, int64_t D, int64_t heads,
                   int64_t mask_per_batch, int64_t mode, int64_t pairs,
                   const float* p, const float* logits, const float* raw_all,
                   const float* centre, const float* l1, const float* r1, const float* l2,
                   const float* r2, const float* scale_t, const float* scale_s,
                   const int32_t* lo_all, const int32_t* hi_all, const uint8_t* need, float* out) {
    if (D > MAX_D) return -1;
    float d1[MAX_D], s1[MAX_D], s2[MAX_D], zmax[MAX_D];
    for (int64_t row = r0; row < r1_end; row++) {
        const int64_t mb = mask_per_batch ? row / heads : 0;
        const float* r1r = r1 + row * S * D;
        const float* r2r = pairs == 2 ? r2 + row * S * D : 0;
        const float* betar = scale_s ? scale_s + row * S * D : 0;
        for (int64_t t = 0; t < T; t++) {
            const int64_t rt = row * T + t;
            if (need && !need[rt]) continue;
            const int64_t lo = lo_all[mb * T + t], hi = hi_all[mb * T + t];
            float* o = out + rt * D;
            if (hi <= lo) { for (int64_t n = 0; n < D; n++) o[n] = 0.0f; continue; }
            const float* pr = p + rt * S;
            const float* lgr = logits + rt * S;
            const float* rawr = raw_all ? raw_all + rt * S : 0;
            const float* l1t = l1 + rt * D;
            const float* l2t = pairs == 2 ? l2 + rt * D : 0;
            const float* at = scale_t ? scale_t + rt * D : 0;
            const float* cen = centre + rt * D;
            float sq = 0.0f, lse = 0.0f;
            int under = 0, have_lse;
            for (int64_t s = lo; s < hi; s++) { sq += pr[s] * pr[s]; under |= pr[s] == 0.0f && lgr[s] > MASKED; }
            if ((have_lse = under)) lse = row_lse(pr, lgr, lo, hi);
            for (int64_t n = 0; n < D; n++) { d1[n] = s1[n] = s2[n] = 0.0f; zmax[n] = -__builtin_inff(); }
            for (int64_t s = lo; s < hi; s++) {
                const float ps = pr[s], raw = rawr ? rawr[s] : 0.0f;
                const int u = ps == 0.0f;
                if (u && lgr[s] <= MASKED) continue;  /* masked: p = p' = 0 */
                const float lp = u ? lgr[s] - lse : 0.0f;
                const float* r1s = r1r + s * D;
                const float* r2s = pairs == 2 ? r2r + s * D : 0;
                const float* betas = scale_s ? betar + s * D : 0;
                switch ((int)(mode * 4 + (pairs - 1) * 2 + u)) {
                    case 0: STEP(0, 1, 0); break;  case 1: STEP(0, 1, 1); break;
                    case 2: STEP(0, 2, 0); break;  case 3: STEP(0, 2, 1); break;
                    case 4: STEP(1, 1, 0); break;  case 5: STEP(1, 1, 1); break;
                    case 6: STEP(1, 2, 0); break;  case 7: STEP(1, 2, 1); break;
                    case 8: STEP(2, 1, 0); break;  case 9: STEP(2, 1, 1); break;
                    case 10: STEP(2, 2, 0); break; default: STEP(2, 2, 1); break;
                }
            }
            for (int64_t n = 0; n < D; n++) {
                const float g = 1.0f + d1[n];
                const float three = (s2[n] - 2.0f * d1[n] * s1[n] + d1[n] * d1[n] * sq) / (g * g);
                /* past e^EXP_LIMIT the squares near float's range (e^88 overflows e itself): for
                   such a large change the two-softmax form is exact and safe */
                if (zmax[n] <= EXP_LIMIT && fabsf(three) <= 3.4e38f) { o[n] = three; continue; }
                if (!have_lse) { lse = row_lse(pr, lgr, lo, hi); have_lse = 1; }
                o[n] = exact((int)mode, (int)pairs, n, D, lo, hi, pr, lgr, lse, rawr, r1r, r2r, betar, l1t, l2t, at);
            }
        }
    }
    return 0;
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
    fn.restype = ctypes.c_int
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
    right: list[Tensor]  # [rows, S, D]
    scale_t: Tensor | None
    scale_s: Tensor | None  # [rows, S, D]
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
        if fn(r[0], r[1], *fixed, *pointers) != 0:
            raise ValueError(f"head_dim {d} is above the q/k kernel's bound")

    threads = max(1, min(threads, rows))
    if threads == 1:
        run((0, rows))
        return
    step = -(-rows // threads)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, [(r, min(rows, r + step)) for r in range(0, rows, step)]))
