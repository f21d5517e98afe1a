"""Token-weighted perplexity with a document-bootstrap confidence interval.

Token weighting (exp of total NLL / total predicted tokens) is what "perplexity of a
corpus" means; averaging per-document perplexities would let short documents dominate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from neuronspec.distributed import parallel_map
from neuronspec.evaluate._items import item_text
from neuronspec.evaluate._stats import bootstrap_ratio
from neuronspec.evaluate.logprobs import encode, pad_token_id, token_logprobs


@dataclass
class PerplexityResult:
    ppl: float
    nll_per_token: float
    tokens: int  # predicted tokens (the first token of each document is context only)
    docs: int
    ci_low: float | None
    ci_high: float | None
    doc_nll: list[float] = field(default_factory=list)  # summed NLL of each document, input order
    doc_tokens: list[int] = field(default_factory=list)  # predicted tokens of each document

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[Any],
    *,
    batch_size: int = 8,
    batch_tokens: int | None = None,
    max_tokens: int = 256,
    bootstrap: int = 1000,
    seed: int = 0,
) -> PerplexityResult:
    """Perplexity of `texts` (strings or documents), each truncated to `max_tokens` tokens.

    The 95% CI resamples documents with replacement `bootstrap` times (seeded), recomputing
    the token-weighted perplexity each time; `bootstrap=0` skips it.
    """
    strings = [item_text(t) for t in texts]

    def score(part: list[str]) -> list[tuple[float, int]]:  # (summed NLL, predicted tokens) per document
        sequences = [encode(tokenizer, t)[:max_tokens] for t in part]
        sums = token_logprobs(model, sequences, batch_size=batch_size, pad_id=pad_token_id(model, tokenizer),
                              batch_tokens=batch_tokens, reduce="sum")
        return [(-float(total), max(len(q) - 1, 0)) for total, q in zip(sums, sequences)]

    scored = parallel_map(score, strings)  # under torch.distributed each rank scores its shard
    doc_nll = [nll for nll, _ in scored]
    doc_tokens = [n for _, n in scored]
    total_tokens = sum(doc_tokens)
    if total_tokens == 0:
        raise ValueError(f"perplexity needs at least one document with 2+ tokens; got {len(strings)} documents")
    nll_per_token = math.fsum(doc_nll) / total_tokens
    lo, hi = bootstrap_ratio(np.array(doc_nll), np.array(doc_tokens), resamples=bootstrap, seed=seed, transform=np.exp)
    return PerplexityResult(
        ppl=math.exp(nll_per_token),
        nll_per_token=nll_per_token,
        tokens=total_tokens,
        docs=len(strings),
        ci_low=lo,
        ci_high=hi,
        doc_nll=doc_nll,
        doc_tokens=doc_tokens,
    )


def ppl_increase(base: PerplexityResult | float, other: PerplexityResult | float) -> float:
    """Percent change of perplexity from `base` to `other` (+50.0 means 1.5x base)."""
    b = base.ppl if isinstance(base, PerplexityResult) else float(base)
    o = other.ppl if isinstance(other, PerplexityResult) else float(other)
    if b <= 0:
        raise ValueError(f"base perplexity must be positive, got {b}")
    return (o - b) / b * 100.0
