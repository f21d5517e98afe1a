"""Reuse the base model's early layers for arms that only change later ones.

An arm whose mask starts at layer L leaves layers < L as they are in the base model, so
on the same batch the residual stream entering layer L is the base model's. Evaluation
stages are cached one arm at a time, so an arm cannot share a forward pass with the base
inside one stage; the saving comes from a store that lives as long as the process (one
`neuronspec run`): an evaluation records the residual stream entering each *boundary*
layer it leaves untouched (the first layers of the study's arms, e.g. 4 and 14 for MWork's
task-solving and generation partitions), keyed by the exact batch and the weights; a
later arm on the same batch replays the largest recorded boundary <= its first masked
layer and runs only the layers from there. The base evaluation runs first in every plan,
so each `gen` arm then computes 4 of Gemma 3's 18 layers. On the same batch the result is
bit-identical to the full forward: the replayed tensor is the one the full forward would
compute, and everything after it runs the same kernels on the same shapes.

Only plain forwards are shared: a call with a key/value cache (multiple choice) runs whole.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from neuronspec.models.masks import NeuronSet
from neuronspec.models.sites import adapter_for

_DEFAULT_BUDGET = 1 << 30  # bytes of recorded hidden states kept per process (least recently used go first)


@dataclass
class PrefixStore:
    """Recorded residual streams: (weights digest, batch digest, layer) -> ([B, T, hidden],
    whether the layer returned it inside a tuple, as BLOOM's do)."""

    max_bytes: int = _DEFAULT_BUDGET
    entries: OrderedDict[tuple[str, str, int], tuple[Tensor, bool]] = field(default_factory=OrderedDict)
    hits: int = 0  # replayed batches (what the benchmark reports)
    layers_skipped: int = 0  # decoder layer calls saved by replays

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t, _ in self.entries.values())

    def get(self, key: tuple[str, str, int]) -> tuple[Tensor, bool] | None:
        value = self.entries.get(key)
        if value is not None:
            self.entries.move_to_end(key)
        return value

    def put(self, key: tuple[str, str, int], value: tuple[Tensor, bool]) -> None:
        size = value[0].numel() * value[0].element_size()
        if size > self.max_bytes:
            return
        self.entries[key] = value
        self.entries.move_to_end(key)
        while self.nbytes() > self.max_bytes:
            self.entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()
        self.hits = self.layers_skipped = 0


STORE = PrefixStore()


def first_layer(neurons: NeuronSet) -> int | None:
    """The first layer holding a neuron of `neurons` (None when empty)."""
    return min((layer for _, layer, _ in neurons.items()), default=None)


# id(parameter) → (the parameter, weakly; its storage, version counter, shape, dtype; its float64 sum)
_SUMS: dict[int, tuple[weakref.ref, tuple[int, int, tuple[int, ...], torch.dtype], float]] = {}


def _param_sum(p: Tensor) -> float:
    """`p`'s float64 sum, recomputed only when `p` was written since: every in-place write bumps
    its version counter (a mask zeroing and restoring rows, a delta, an optimiser step) — all but
    writes through `p.data`, which neuronspec never makes. Summing Gemma 3 270M's 268M weights
    takes ~1 s, as long as a 64-token perplexity evaluation's whole forward; an arm re-sums only
    the matrices the previous arm's mask touched."""
    state = (p.data_ptr(), p._version, tuple(p.shape), p.dtype)
    known = _SUMS.get(id(p))
    if known is not None and known[0]() is p and known[1] == state:
        return known[2]
    total = float(p.detach().sum(dtype=torch.float64))
    _SUMS[id(p)] = (weakref.ref(p, lambda _, key=id(p): _SUMS.pop(key, None)), state, total)
    return total


def weights_digest(model: nn.Module) -> str:
    """A digest of every parameter's values (float64 sums and the storage identity), so a
    recorded prefix is never replayed on changed weights (an applied delta, a reloaded model)."""
    h = hashlib.blake2b(digest_size=16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(f"{name}:{p.data_ptr()}:{tuple(p.shape)}:{p.dtype}:{_param_sum(p)!r}".encode())
    return h.hexdigest()


def _batch_digest(*tensors: Tensor | None) -> str:
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        if t is not None:
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


class _Tap(nn.Module):
    """Stands in for decoder layer `index` while sharing is on: runs it, skips it or replays."""

    def __init__(self, layer: nn.Module, index: int, state: _State) -> None:
        super().__init__()
        self.layer, self.index, self.state = layer, index, state

    def __getattr__(self, name: str) -> Any:  # e.g. Gemma 3's loop reads `layer.attention_type`
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.layer, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        s = self.state
        if s.replayed is not None and self.index < s.replay_from:  # the recorded stream covers this layer
            s.store.layers_skipped += 1
            hidden, in_tuple = s.replayed
            if self.index < s.replay_from - 1:
                hidden = args[0] if args else kwargs["hidden_states"]  # nothing reads it but the next tap
            return (hidden,) if in_tuple else hidden
        out = self.layer(*args, **kwargs)
        boundary = self.index + 1
        if s.batch is not None and boundary in s.record:
            hidden = out[0] if isinstance(out, tuple) else out
            s.store.put((s.weights, s.batch, boundary), (hidden.detach().clone(), isinstance(out, tuple)))
        return out


@dataclass
class _State:
    store: PrefixStore
    weights: str
    record: frozenset[int]
    batch: str | None = None  # digest of the current plain forward's batch (None: no sharing for this call)
    replay_from: int = 0
    replayed: tuple[Tensor, bool] | None = None


@contextmanager
def shared_prefix(model: nn.Module, *, start: int, boundaries: Iterable[int],
                  store: PrefixStore | None = None) -> Iterator[PrefixStore]:
    """Within this context the model's plain decoder forwards share recorded prefixes.

    `start`: the first layer whose computation differs from the base model (the first
    masked layer; the number of layers for the base model itself). The hidden states
    entering each boundary <= `start` are recorded; a forward replays the largest
    recorded boundary <= `start` for its batch. `store` defaults to the process-wide STORE.
    """
    store = STORE if store is None else store  # the process-wide one, looked up per call
    adapter = adapter_for(model.config)
    base, layers = adapter.base(model), adapter.layers(model)
    record = frozenset(b for b in boundaries if 0 < b <= min(start, len(layers)))
    last = max(record, default=0)
    if last == 0:
        yield store
        return
    state = _State(store, weights_digest(model), record)

    def before(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        plain = ids is not None and not kwargs.get("use_cache") and kwargs.get("cache") is None \
            and kwargs.get("past_key_values") is None
        state.batch = _batch_digest(ids, kwargs.get("attention_mask"), kwargs.get("position_ids")) if plain else None
        state.replay_from, state.replayed = 0, None
        if state.batch is None:
            return
        for b in sorted(record, reverse=True):
            hit = store.get((state.weights, state.batch, b))
            if hit is not None:
                state.replay_from, state.replayed = b, hit
                store.hits += 1
                break

    originals = [layers[i] for i in range(last)]
    handle = base.register_forward_pre_hook(before, with_kwargs=True)
    try:
        for i in range(last):
            layers[i] = _Tap(originals[i], i, state)
        yield store
    finally:
        handle.remove()
        for i, layer in enumerate(originals):
            layers[i] = layer

