"""The one mask type: a NeuronSet is a value (site -> layer -> indices), applied by hooks.

Masks are data: sets are saved, combined, counted and only then
applied, either with :func:`deactivate` (forward hooks, nothing patched), with
:func:`zeroed` (weight slices zeroed in place and restored: free per forward pass, for
evaluation) or with :func:`zero_weights` (a zeroed copy, for export).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from neuronspec.tensorfiles import save_tensors

from .sites import SITES, Dims, HookPoint, adapter_for, check_site, site_width

_FORMAT = "neuronspec.NeuronSet"
_VERSION = "1"

_Data = dict[str, dict[int, Tensor]]


def _canon(values: Iterable[int] | Tensor) -> Tensor:
    t = torch.as_tensor(values if isinstance(values, Tensor) else list(values), dtype=torch.int64).flatten()
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"neuron indices must be >= 0, got {int(t.min())}")
    return torch.unique(t)  # sorted, unique


class NeuronSet:
    """Immutable set of neurons: site -> layer -> sorted unique int64 indices.

    Empty layers and sites are dropped on construction, so equal sets compare equal
    whatever way they were built.
    """

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, Mapping[int, Tensor]] | None = None) -> None:
        clean: _Data = {}
        data = data or {}
        for site in sorted(data, key=lambda s: SITES.index(check_site(s))):
            layers = {}
            for layer, idx in sorted(((int(k), v) for k, v in data[site].items()), key=lambda kv: kv[0]):
                if layer < 0:
                    raise ValueError(f"layer indices must be >= 0, got {layer} for site {site!r}")
                t = _canon(idx)
                if t.numel():
                    layers[layer] = t
            if layers:
                clean[site] = layers
        self._data = clean
        self._hash: int | None = None

    # ---- construction -----------------------------------------------------------
    @classmethod
    def empty(cls) -> NeuronSet:
        return cls()

    @classmethod
    def from_dict(cls, d: Mapping[str, Mapping[int | str, Iterable[int]]]) -> NeuronSet:
        """From {site: {layer: indices}}; layer keys may be strings (as after JSON)."""
        return cls({site: {int(k): _canon(v) for k, v in layers.items()} for site, layers in d.items()})

    def to_dict(self) -> dict[str, dict[int, list[int]]]:
        """Plain lists, JSON-able (json turns the int layer keys into strings)."""
        return {s: {l: t.tolist() for l, t in layers.items()} for s, layers in self._data.items()}

    # ---- queries ----------------------------------------------------------------
    def sites(self) -> list[str]:
        return list(self._data)

    def layers(self, site: str) -> list[int]:
        return list(self._data.get(check_site(site), {}))

    def indices(self, site: str, layer: int) -> Tensor:
        """Sorted LongTensor (a copy; empty when none)."""
        t = self._data.get(check_site(site), {}).get(int(layer))
        return t.clone() if t is not None else torch.empty(0, dtype=torch.int64)

    def items(self) -> Iterator[tuple[str, int, Tensor]]:
        """(site, layer, indices) for every non-empty entry, in canonical order."""
        for site, layers in self._data.items():
            for layer, t in layers.items():
                yield site, layer, t.clone()

    def count(self, site: str | None = None) -> int:
        sites = [check_site(site)] if site is not None else list(self._data)
        return sum(t.numel() for s in sites for t in self._data.get(s, {}).values())

    def per_layer_counts(self) -> dict[str, dict[int, int]]:
        return {s: {l: t.numel() for l, t in layers.items()} for s, layers in self._data.items()}

    def restrict(self, layers: Iterable[int] | None = None, sites: Iterable[str] | None = None) -> NeuronSet:
        """Keep only the given layers and/or sites (None = keep all)."""
        keep_l = None if layers is None else {int(l) for l in layers}
        keep_s = None if sites is None else {check_site(s) for s in sites}
        return NeuronSet({
            s: {l: t for l, t in ls.items() if keep_l is None or l in keep_l}
            for s, ls in self._data.items() if keep_s is None or s in keep_s
        })

    def __bool__(self) -> bool:
        return bool(self._data)

    def __len__(self) -> int:
        return self.count()

    def __repr__(self) -> str:
        parts = [f"{s}: {self.count(s)} in {len(ls)} layers" for s, ls in self._data.items()]
        return f"NeuronSet({', '.join(parts) or 'empty'})"

    # ---- algebra ----------------------------------------------------------------
    def _combine(self, other: NeuronSet, op: str) -> NeuronSet:
        if not isinstance(other, NeuronSet):
            return NotImplemented
        out: dict[str, dict[int, Tensor]] = {}
        for site in set(self._data) | set(other._data):
            a, b = self._data.get(site, {}), other._data.get(site, {})
            out[site] = {}
            for layer in set(a) | set(b):
                x = a.get(layer, torch.empty(0, dtype=torch.int64))
                y = b.get(layer, torch.empty(0, dtype=torch.int64))
                if op == "|":
                    r = torch.cat([x, y])
                elif op == "&":
                    r = x[torch.isin(x, y)]
                else:
                    r = x[~torch.isin(x, y)]
                out[site][layer] = r
        return NeuronSet(out)

    def __or__(self, other: NeuronSet) -> NeuronSet:
        return self._combine(other, "|")

    def __and__(self, other: NeuronSet) -> NeuronSet:
        return self._combine(other, "&")

    def __sub__(self, other: NeuronSet) -> NeuronSet:
        return self._combine(other, "-")

    def jaccard(self, other: NeuronSet) -> float:
        """|A & B| / |A | B| over (site, layer, index); 1.0 when both are empty."""
        union = (self | other).count()
        return 1.0 if union == 0 else (self & other).count() / union

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeuronSet):
            return NotImplemented
        return self.per_layer_counts() == other.per_layer_counts() and all(
            torch.equal(t, other._data[s][l]) for s, ls in self._data.items() for l, t in ls.items()
        )

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple((s, l, tuple(t.tolist())) for s, ls in self._data.items() for l, t in ls.items()))
        return self._hash

    # ---- persistence ------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write as safetensors (keys ``site/layer``), atomically (temp file + rename)."""
        tensors = {f"{s}/{l}": t.contiguous() for s, ls in self._data.items() for l, t in ls.items()}
        return save_tensors(tensors, path, {"format": _FORMAT, "version": _VERSION})

    @classmethod
    def load(cls, path: str | Path) -> NeuronSet:
        with safe_open(str(path), "pt") as f:
            fmt = (f.metadata() or {}).get("format")
        if fmt != _FORMAT:
            raise ValueError(f"{path}: not a saved NeuronSet (format {fmt!r})")
        data: dict[str, dict[int, Tensor]] = {}
        for key, t in load_file(str(path)).items():
            site, _, layer = key.rpartition("/")
            if not site or not layer.isdigit():
                raise ValueError(f"{path}: key {key!r} is not 'site/layer'")
            data.setdefault(site, {})[int(layer)] = t
        return cls(data)

    # ---- random baselines -------------------------------------------------------
    def random_like(self, dims: Dims, seed: int, exclude: NeuronSet | None = None,
                    blocks: Mapping[str, Sequence[int]] | None = None) -> NeuronSet:
        """Same count per site and layer, indices uniformly random, avoiding `exclude`.

        Each (site, layer) draws from its own generator seeded by (seed, site, layer), so
        the random set of a layer does not depend on which other layers are present.
        If a layer has fewer free neurons than requested, all free ones are taken and
        the rest are drawn from the excluded ones. `blocks` (site → boundaries 0 < … < width)
        draws block by block, as many in each as the set has there: a mixture of experts'
        ffn matched per expert. One block (the default) is the plain per-layer draw.
        """
        out: dict[str, dict[int, Tensor]] = {}
        for site, layers in self._data.items():
            width = site_width(dims, site)
            edges = list((blocks or {}).get(site, (0, width)))
            out[site] = {}
            for layer, t in layers.items():
                n = t.numel()
                if n > width:
                    raise ValueError(f"{site} layer {layer}: {n} neurons but the site has only {width}")
                gen = torch.Generator().manual_seed(_derive_seed(seed, site, layer))
                banned = exclude._data.get(site, {}).get(layer) if exclude is not None else None
                free = torch.ones(width, dtype=torch.bool)
                if banned is not None:
                    free[banned[banned < width]] = False
                picks = [torch.empty(0, dtype=torch.int64)]
                for lo, hi in zip(edges, edges[1:]):
                    k = n if len(edges) == 2 else int(((t >= lo) & (t < hi)).sum())
                    block = torch.arange(lo, hi)
                    pool, rest = block[free[lo:hi]], block[~free[lo:hi]]
                    pick = pool[torch.randperm(pool.numel(), generator=gen)[:k]]
                    if pick.numel() < k:
                        pick = torch.cat([pick, rest[torch.randperm(rest.numel(), generator=gen)[: k - pick.numel()]]])
                    picks.append(pick)
                out[site][layer] = torch.cat(picks)
        return NeuronSet(out)

    def random_pooled(self, dims: Dims, seed: int, layers: Iterable[int], exclude: NeuronSet | None = None) -> NeuronSet:
        """Same count per site, drawn uniformly from every neuron of that site in `layers` (not
        per layer): a control for "as many random neurons anywhere in these layers" (MWork's
        random neurons in a partition, or across the model). `exclude` is avoided while the
        pool allows. One generator per site, seeded by (seed, site)."""
        pool_layers = sorted({int(i) for i in layers})
        out: dict[str, dict[int, Tensor]] = {}
        for site in self._data:
            n, width = self.count(site), site_width(dims, site)
            free = torch.ones(len(pool_layers), width, dtype=torch.bool)
            for row, layer in enumerate(pool_layers):
                banned = exclude._data.get(site, {}).get(layer) if exclude is not None else None
                if banned is not None:
                    free[row, banned[banned < width]] = False
            if n > free.numel():
                raise ValueError(f"{site}: {n} neurons asked for, the layers drawn from hold only {free.numel()}")
            gen = torch.Generator().manual_seed(_derive_seed(seed, site, -1))
            pool, rest = free.flatten().nonzero().flatten(), (~free).flatten().nonzero().flatten()
            pick = pool[torch.randperm(pool.numel(), generator=gen)[:n]]
            if pick.numel() < n:
                pick = torch.cat([pick, rest[torch.randperm(rest.numel(), generator=gen)[: n - pick.numel()]]])
            for row, layer in enumerate(pool_layers):
                idx = pick[(pick // width) == row] % width
                if idx.numel():
                    out.setdefault(site, {})[layer] = idx
        return NeuronSet(out)

    def random_matched(self, dims: Dims, seed: int, scores: Mapping[str, Tensor], bins: int,
                       exclude: NeuronSet | None = None) -> NeuronSet:
        """Per site and layer, as many random neurons as this set has *in each score bin*: the
        layer's neurons ranked by `scores[site][layer]` (e.g. mean |activation|) and cut into
        `bins` equal-size quantile bins, so the control matches the set's magnitude profile, not
        just its count. `exclude` is avoided while a bin allows (then the rest of that bin's draw
        comes from the excluded neurons of the same bin). One generator per (site, layer), seeded
        by (seed, site, layer), as :meth:`random_like`."""
        out: dict[str, dict[int, Tensor]] = {}
        for site, layers in self._data.items():
            if site not in scores:
                raise ValueError(f"no magnitudes for site {site}: a magnitude-matched control covers {sorted(scores)} only")
            width = site_width(dims, site)
            out[site] = {}
            for layer, t in layers.items():
                bin_of = score_bins(scores[site][layer], bins)
                gen = torch.Generator().manual_seed(_derive_seed(seed, site, layer))
                banned = exclude._data.get(site, {}).get(layer) if exclude is not None else None
                free = torch.ones(width, dtype=torch.bool)
                if banned is not None:
                    free[banned[banned < width]] = False
                want = torch.bincount(bin_of[t], minlength=bins)
                picks = []
                for b in range(bins):
                    n = int(want[b])
                    if not n:
                        continue
                    here = bin_of == b
                    pool, rest = (here & free).nonzero().flatten(), (here & ~free).nonzero().flatten()
                    pick = pool[torch.randperm(pool.numel(), generator=gen)[:n]]
                    if pick.numel() < n:
                        pick = torch.cat([pick, rest[torch.randperm(rest.numel(), generator=gen)[: n - pick.numel()]]])
                    picks.append(pick)
                out[site][layer] = torch.cat(picks) if picks else torch.zeros(0, dtype=torch.int64)
        return NeuronSet(out)

    def subsample(self, n: int, seed: int) -> NeuronSet:
        """`n` of this set's neurons, uniformly at random over all of them (seeded): equal-size arms
        from sets of different sizes. The whole set when it has `n` or fewer."""
        flat = [(site, layer, int(i)) for site, layer, t in self.items() for i in t.tolist()]
        if len(flat) <= n:
            return self
        gen = torch.Generator().manual_seed(_derive_seed(seed, "subsample", n))
        out: dict[str, dict[int, list[int]]] = {}
        for k in torch.randperm(len(flat), generator=gen)[:n].tolist():
            site, layer, i = flat[k]
            out.setdefault(site, {}).setdefault(layer, []).append(i)
        return NeuronSet({s: {l: torch.tensor(sorted(v)) for l, v in ls.items()} for s, ls in out.items()})


def score_bins(scores: Tensor, bins: int) -> Tensor:
    """Bin (0 … bins−1) of each neuron of a layer by the rank of its score: equal-size quantile bins
    (ties broken by index, so the binning is deterministic)."""
    if scores.dim() != 1:
        raise ValueError(f"scores of one layer must be [width], got {tuple(scores.shape)}")
    if not 1 <= bins <= scores.numel():
        raise ValueError(f"bins must lie in 1..{scores.numel()} (the layer's neurons), got {bins}")
    order = torch.sort(scores.double(), stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    return rank * bins // order.numel()


def _derive_seed(seed: int, site: str, layer: int) -> int:
    digest = hashlib.sha256(f"{seed}/{site}/{layer}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


# ---- application --------------------------------------------------------------------


def check_fits(neurons: NeuronSet, dims: Dims) -> None:
    """Raise if a neuron lies outside the model: a layer past its depth or an index past a site's width."""
    for site, layer, idx in neurons.items():
        if layer >= dims.num_layers:
            raise ValueError(f"{site}: layer {layer} out of range, model has {dims.num_layers} layers")
        width = site_width(dims, site)
        if int(idx.max()) >= width:
            raise ValueError(f"{site} layer {layer}: index {int(idx.max())} out of range, width is {width}")


def _validated(model: nn.Module, neurons: NeuronSet):  # noqa: ANN202
    adapter = adapter_for(model)
    check_fits(neurons, adapter.dims(model.config))
    return adapter


def _make_hook(point: HookPoint, neurons: Tensor):  # noqa: ANN202
    coords = point.index_fn(neurons)
    cache: dict[torch.device, Tensor] = {}

    def on(device: torch.device) -> Tensor:
        if device not in cache:
            cache[device] = coords.to(device)
        return cache[device]

    if point.kind == "input":
        def pre_hook(module: nn.Module, args: tuple):  # noqa: ANN202
            x = args[0]
            return (x.index_fill(-1, on(x.device), 0.0), *args[1:])
        return pre_hook

    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return output.index_fill(-1, on(output.device), 0.0)
    return hook


@contextmanager
def deactivate(model: nn.Module, neurons: NeuronSet) -> Iterator[nn.Module]:
    """Zero exactly the given neurons during forward passes inside the block.

    Sites/layers without neurons get no hook at all, so an empty set leaves outputs
    bit-identical. Hooks are removed on exit, also when the block raises.
    """
    adapter = _validated(model, neurons)
    handles = []
    try:
        for site, layer, idx in neurons.items():
            if site == "ffn" and adapter.routed_ffn:  # expert neurons: removed where the router sent them
                handles += adapter.switch_off(model, layer, idx)  # type: ignore[attr-defined]
                continue
            point = adapter.hook_point(model, layer, site)
            fn = _make_hook(point, idx)
            if point.kind == "input":
                handles.append(point.module.register_forward_pre_hook(fn))
            else:
                handles.append(point.module.register_forward_hook(fn))
        yield model
    finally:
        for h in handles:
            h.remove()


@contextmanager
def zeroed(model: nn.Module, neurons: NeuronSet) -> Iterator[nn.Module]:
    """Switch the neurons off by zeroing their weight rows / columns in place inside the block,
    and put the saved values back on exit (also when the block raises).

    The same neurons are off as under :func:`deactivate` (a zeroed row makes the neuron 0; a
    zeroed input column ignores it), but forward passes pay nothing per call — hooks copy an
    activation tensor per site and layer on every forward. Only the zeroed slices are copied,
    not the model; an empty set touches nothing. Not for a model that other code runs or trains
    meanwhile.
    """
    adapter = _validated(model, neurons)
    saved: list[tuple[Tensor, int, Tensor, Tensor]] = []
    try:
        with torch.no_grad():
            for site, layer, idx in neurons.items():
                for sl in adapter.weight_slices(model, layer, site):
                    coords = sl.index_fn(idx).to(sl.param.device)
                    saved.append((sl.param, sl.dim, coords, sl.param.index_select(sl.dim, coords)))
                    sl.param.index_fill_(sl.dim, coords, 0.0)
        yield model
    finally:
        with torch.no_grad():
            for param, dim, coords, values in reversed(saved):  # reversed: slices shared by two sites restore last-first
                param.index_copy_(dim, coords, values)


def zero_weights(model: nn.Module, neurons: NeuronSet) -> nn.Module:
    """A deep copy of `model` whose weights are zeroed so the neurons are always off."""
    _validated(model, neurons)
    clone = copy.deepcopy(model)
    adapter = adapter_for(clone)
    with torch.no_grad():
        for site, layer, idx in neurons.items():
            for sl in adapter.weight_slices(clone, layer, site):
                coords = sl.index_fn(idx).to(sl.param.device)
                sl.param.index_fill_(sl.dim, coords, 0.0)
    return clone
