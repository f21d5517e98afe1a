"""Percentile bootstrap over items, seeded, memory-bounded.

Resampling whole documents / items (not tokens) keeps the within-document correlation of
token losses, which is what makes a per-token CI honest.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_BLOCK_ELEMENTS = 1 << 22  # resample indices are drawn in blocks of at most ~4M ints (32 MB)


def bootstrap_ratio(
    numerator: np.ndarray,
    denominator: np.ndarray,
    *,
    resamples: int,
    seed: int,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    level: float = 0.95,
) -> tuple[float, float] | tuple[None, None]:
    """Percentile CI of `transform(sum(num[idx]) / sum(den[idx]))` over item resamples.

    A plain mean is the special case `denominator = ones`. Returns (None, None) when there
    is nothing to resample (`resamples <= 0` or no items).
    """
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    n = num.shape[0]
    if resamples <= 0 or n == 0:
        return None, None
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_ELEMENTS // n)
    stats = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        d = den[idx].sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            stats[start:stop] = num[idx].sum(axis=1) / d
    stats = stats[np.isfinite(stats)]  # a resample of only zero-token documents has no ratio
    if stats.size == 0:
        return None, None
    if transform is not None:
        stats = transform(stats)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
