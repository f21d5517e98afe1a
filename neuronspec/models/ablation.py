"""Mean ablation: a set's activations replaced by their mean over a corpus instead of by zero.

Zeroing a neuron removes what varies with the input *and* its average contribution, a bias the
rest of the network was trained to expect; replacing it by its corpus mean removes only the
former (the "mean ablation" of TransformerLens / nnsight workflows). :func:`activation_means`
takes the means at the same hook points that ``masks.deactivate`` zeroes (per site, layer and
neuron, over every real token of the corpus, padding excluded), and :func:`mean_ablated` writes
them in there. Routed (mixture-of-experts) ffn neurons have no single hook point: refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from neuronspec.models.forward import Batch, hidden_forward
from neuronspec.models.masks import NeuronSet, check_fits
from neuronspec.models.sites import SITES, HookPoint, adapter_for

_TOKENS = "tokens"


@dataclass(frozen=True)
class ActivationMeans:
    """Mean activation of every neuron: ``means[site][layer]`` is a float32 [width] vector."""

    means: dict[str, dict[int, Tensor]]
    tokens: int  # the real tokens they average over

    def of(self, site: str, layer: int) -> Tensor:
        if site not in self.means or layer not in self.means[site]:
            raise KeyError(f"no activation means for {site} layer {layer} (sites: {', '.join(self.means) or 'none'})")
        return self.means[site][layer]

    def to_tensors(self) -> dict[str, Tensor]:
        """safetensors keys ``site/layer`` (as NeuronSet files), plus the token count."""
        out = {f"{s}/{l}": t.contiguous() for s, ls in self.means.items() for l, t in ls.items()}
        return out | {_TOKENS: torch.tensor(self.tokens, dtype=torch.int64)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> ActivationMeans:
        means: dict[str, dict[int, Tensor]] = {}
        for key, t in tensors.items():
            if key != _TOKENS:
                site, _, layer = key.rpartition("/")
                means.setdefault(site, {})[int(layer)] = t
        return cls(means, int(tensors[_TOKENS]))


def _sites(model: nn.Module, sites: Iterable[str]) -> list[str]:
    adapter = adapter_for(model)
    return [s for s in sites if not (s == "ffn" and adapter.routed_ffn)]


def _read(point: HookPoint, args: tuple, output: Tensor | tuple) -> Tensor:
    """The site's [..., width] activations at its hook point (a fused projection: its coordinates)."""
    x = args[0] if point.kind == "input" else (output[0] if isinstance(output, tuple) else output)
    return x.index_select(-1, point.index_fn(torch.arange(point.width)).to(x.device))


def activation_means(model: nn.Module, batches: Iterable[Batch], sites: Iterable[str] = SITES) -> ActivationMeans:
    """One pass over `batches`: each neuron's mean over all real tokens (attention_mask 1), summed in float64.

    Routed ffn neurons (mixture of experts) are left out: they have no activation on tokens
    their expert does not receive."""
    adapter = adapter_for(model)
    layers = adapter.dims(model.config).num_layers
    wanted = _sites(model, sites)
    sums: dict[str, dict[int, Tensor]] = {s: {} for s in wanted}  # kept where the site runs: no sync per hook
    current: dict[str, Tensor] = {}  # "real": the batch's real-token mask, [B, T] bool

    def make(site: str, layer: int, point: HookPoint):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple, output: Tensor | tuple = None) -> None:  # type: ignore[assignment]
            x = _read(point, args, output)
            total = x[current["real"].to(x.device)].to(torch.float64).sum(dim=0)
            sums[site][layer] = total if layer not in sums[site] else sums[site][layer] + total
        return hook

    handles = []

    tokens = 0
    try:
        for site in wanted:
            for layer in range(layers):
                point = adapter.hook_point(model, layer, site)
                fn = make(site, layer, point)
                handles.append(point.module.register_forward_pre_hook(fn) if point.kind == "input"
                               else point.module.register_forward_hook(fn))
        with torch.no_grad():
            for b in batches:
                current["real"] = b.attention_mask.bool()
                hidden_forward(model, b.input_ids, b.attention_mask, position_ids=b.position_ids)
                tokens += int(b.attention_mask.sum())
    finally:
        for h in handles:
            h.remove()
    if tokens == 0:
        raise ValueError("activation means over no tokens: the corpus is empty")
    return ActivationMeans({s: {l: (t / tokens).float().cpu() for l, t in sorted(ls.items())} for s, ls in sums.items()},
                           tokens)


def _make_hook(point: HookPoint, idx: Tensor, values: Tensor):  # noqa: ANN202
    coords = point.index_fn(idx)

    def fill(x: Tensor) -> Tensor:
        src = values.to(device=x.device, dtype=x.dtype).expand(*x.shape[:-1], values.numel())
        return x.index_copy(-1, coords.to(x.device), src)

    if point.kind == "input":
        def pre_hook(module: nn.Module, args: tuple):  # noqa: ANN202
            return (fill(args[0]), *args[1:])
        return pre_hook

    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return fill(output)
    return hook


@contextmanager
def mean_ablated(model: nn.Module, neurons: NeuronSet, means: ActivationMeans) -> Iterator[nn.Module]:
    """Inside the block, each neuron of `neurons` outputs its mean from `means` on every token.

    Sites and layers without neurons get no hook (an empty set leaves outputs bit-identical);
    hooks are removed on exit, also when the block raises."""
    adapter = adapter_for(model)
    check_fits(neurons, adapter.dims(model.config))
    if adapter.routed_ffn and neurons.count("ffn"):
        raise ValueError("mean ablation of routed (mixture-of-experts) ffn neurons is not supported: use ablation: zero")
    handles = []
    try:
        for site, layer, idx in neurons.items():
            point = adapter.hook_point(model, layer, site)
            fn = _make_hook(point, idx, means.of(site, layer)[idx])
            handles.append(point.module.register_forward_pre_hook(fn) if point.kind == "input"
                           else point.module.register_forward_hook(fn))
        yield model
    finally:
        for h in handles:
            h.remove()
