"""The one way to run a batch: encode, length-sorted padded batches, headless forward.

Statistics passes only need hooks inside the decoder, so :func:`hidden_forward` never
touches the unembedding (most of Gemma 3 270M's compute) and stops right after the
last layer that has a requested site.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .sites import adapter_for


_LONGEST_TOKEN: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def _longest_token(tokenizer) -> int:  # noqa: ANN001
    """Characters in the tokenizer's longest vocabulary entry (computed once per tokenizer)."""
    if tokenizer not in _LONGEST_TOKEN:
        _LONGEST_TOKEN[tokenizer] = max((len(t) for t in tokenizer.get_vocab()), default=1)
    return _LONGEST_TOKEN[tokenizer]


def encode(tokenizer, texts: Sequence[str], max_tokens: int) -> list[list[int]]:  # noqa: ANN001
    """Token ids per text with the tokenizer's own special tokens (BOS), truncated to `max_tokens`.

    Texts are cut before tokenising to what `max_tokens` tokens can span (plus a margin of
    tokens, so the cut never changes the kept tokens): a 20 MB line costs no more than a short one.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if not texts:
        return []
    limit = (max_tokens + 16) * max(_longest_token(tokenizer), 1)
    enc = tokenizer([t[:limit] for t in texts], add_special_tokens=True, truncation=True, max_length=max_tokens)
    return [list(ids) for ids in enc["input_ids"]]


@dataclass(frozen=True)
class Batch:
    """Right-padded batch; ``index[b]`` is the position of row b in the original encodings."""

    index: list[int]
    input_ids: Tensor  # [B, T] int64
    attention_mask: Tensor  # [B, T] int64, 1 = real token

    @property
    def lengths(self) -> Tensor:
        return self.attention_mask.sum(dim=1)


def length_groups(lengths: Sequence[int], batch_size: int, token_budget: int | None = None) -> list[list[int]]:
    """Indices grouped longest-first (ties by index: deterministic) so similar lengths share a
    batch: little padding, and the largest batch runs first (out-of-memory shows at once).

    With `token_budget`, a group also keeps size × longest <= budget (a single sequence
    longer than the budget still forms a group of one).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups, start = [], 0
    while start < len(order):
        size = batch_size
        if token_budget is not None:
            size = max(1, min(batch_size, token_budget // max(1, lengths[order[start]])))
        groups.append(order[start:start + size])
        start += size
    return groups


def iter_batches(encodings: Sequence[Sequence[int]], *, batch_size: int, pad_id: int,
                 token_budget: int | None = None) -> Iterator[Batch]:
    """Right-padded batches of `length_groups` (see there for batch_size / token_budget)."""
    for i, ids in enumerate(encodings):
        if len(ids) == 0:
            raise ValueError(f"encoding {i} is empty; drop empty documents before batching")
    for chunk in length_groups([len(e) for e in encodings], batch_size, token_budget):
        width = len(encodings[chunk[0]])  # longest in this batch (sorted descending)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.int64)
        mask = torch.zeros((len(chunk), width), dtype=torch.int64)
        for row, i in enumerate(chunk):
            n = len(encodings[i])
            ids[row, :n] = torch.as_tensor(encodings[i], dtype=torch.int64)
            mask[row, :n] = 1
        yield Batch(chunk, ids, mask)


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early; never escapes hidden_forward."""

    def __init__(self, hidden: Tensor) -> None:
        super().__init__()
        self.hidden = hidden


def hidden_forward(model: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                   last_layer: int | None = None) -> Tensor:
    """Run only the decoder stack; return hidden states [B, T, hidden].

    With `last_layer`, stop right after that decoder layer and return its output
    (before the final norm); otherwise return the stack's output (after the final norm).
    Grad mode is left to the caller.
    """
    adapter = adapter_for(model.config)
    base = adapter.base(model)
    device = next(model.parameters()).device
    kwargs = dict(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
    if last_layer is None:
        return base(**kwargs).last_hidden_state
    layers = adapter.layers(model)
    if not 0 <= last_layer < len(layers):
        raise ValueError(f"last_layer {last_layer} out of range [0, {len(layers)})")

    def stop(module: nn.Module, args: tuple, output: Tensor | tuple) -> None:
        raise _StopForward(output[0] if isinstance(output, tuple) else output)

    handle = layers[last_layer].register_forward_hook(stop)
    try:
        base(**kwargs)
    except _StopForward as done:
        return done.hidden
    finally:
        handle.remove()
    raise RuntimeError(f"decoder layer {last_layer} was never called")  # pragma: no cover
