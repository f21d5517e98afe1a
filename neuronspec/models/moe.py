"""Mixture-of-experts FFNs (Mixtral): expert neurons, and switching them off where they are routed.

An ``ffn`` neuron of a sparse-MoE layer is intermediate coordinate j of expert e, numbered
n = e * I + j (I = ``intermediate_size``, one expert's width), so a layer has E * I ffn
neurons and every NeuronSet, mask and report works on them unchanged; :func:`expert_of`
turns n back into (expert, index). transformers 5 keeps each layer's experts as 3-D
parameters (``gate_up_proj`` [E, 2I, H] in [gate | up] halves, ``down_proj`` [E, H, I]) that
its experts module multiplies internally, so no module input holds these neurons: the
statistics and hooks work from what the experts module is called with - hidden states
[N, H], the router's choices [N, k] and its weights [N, k].

Supported for expert neurons: PLND importance, ``deactivate`` (hooks), and ``zeroed`` /
``zero_weights`` / export (their gate and up rows are zeroed, which silences them: act(0)·0 = 0).
Not yet: activation statistics (LAPE, LinguaFranca, Sharing), attribution and neuron-restricted
fine-tuning of expert neurons - each raises saying so. Attention sites are Llama's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .sites import Dims, GatedAdapter, IndexFn, WeightSlice, register_adapter


def expert_of(n: Tensor, expert_width: int) -> tuple[Tensor, Tensor]:
    """(expert, index inside the expert) of ffn neurons n of a MoE layer."""
    return n // expert_width, n % expert_width


def expert_activations(experts: nn.Module, x: Tensor, e: int, cols: Tensor | None = None) -> Tensor:
    """act(x W_gate[e]ᵀ) · (x W_up[e]ᵀ) [n, I] (or only the columns `cols`) for token states x [n, H],
    as the experts module computes them for the tokens routed to expert e."""
    width = experts.gate_up_proj.shape[1] // 2
    gate_w, up_w = experts.gate_up_proj[e, :width], experts.gate_up_proj[e, width:]
    if cols is not None:
        gate_w, up_w = gate_w[cols], up_w[cols]
    return experts.act_fn(x @ gate_w.T) * (x @ up_w.T)


def routed(top_k_index: Tensor, e: int) -> tuple[Tensor, Tensor]:
    """(token rows, top-k slots) where the router sent tokens to expert e."""
    return torch.where(top_k_index == e)


class MixtralAdapter(GatedAdapter):
    """Mixtral: Llama's attention; ``mlp`` is a sparse MoE block (``mlp.gate`` router, ``mlp.experts``)."""

    model_types = ("mixtral",)
    routed_ffn = True

    def dims(self, config) -> Dims:  # noqa: ANN001
        d = super().dims(config)
        return Dims(d.num_layers, d.hidden, self.num_experts(config) * config.intermediate_size, d.heads,
                    d.kv_heads, d.head_dim)

    def num_experts(self, config) -> int:  # noqa: ANN001
        return int(config.num_local_experts)

    def expert_width(self, config) -> int:  # noqa: ANN001
        return int(config.intermediate_size)

    def experts(self, model: nn.Module, i: int) -> nn.Module:
        """The module computing layer `i`'s routed experts: called with (hidden [N, H], top-k index, top-k weights)."""
        return self.layers(model)[i].mlp.experts

    def ffn_output(self, model: nn.Module, i: int) -> nn.Module:
        return self.experts(model, i)

    def _no_module(self, what: str) -> NotImplementedError:
        return NotImplementedError(
            f"{what}: Mixtral's expert neurons live inside 3-D expert weights, not in a module's input; "
            "for them neuronspec supports PLND, deactivation and weight zeroing/export only (models/moe.py)")

    def ffn_down(self, model: nn.Module, i: int) -> nn.Module:
        raise self._no_module("ffn_down")

    def ffn_in(self, model: nn.Module, i: int) -> list[nn.Module]:
        raise self._no_module("ffn_in")

    def hook_point(self, model: nn.Module, i: int, site: str):  # noqa: ANN201
        if site == "ffn":
            raise self._no_module("hook_point('ffn')")
        return super().hook_point(model, i, site)

    def down_weight(self, model: nn.Module, i: int) -> Tensor:
        """[hidden, E * I]: expert e's down projection in columns e*I .. (e+1)*I - 1."""
        down = self.experts(model, i).down_proj  # [E, H, I]
        return down.permute(1, 0, 2).reshape(down.shape[1], -1)

    def weight_slices(self, model: nn.Module, i: int, site: str) -> list[WeightSlice]:
        if site != "ffn":
            return super().weight_slices(model, i, site)
        experts = self.experts(model, i)
        param = experts.gate_up_proj  # [E, 2I, H]: rows of expert e at e*2I + [gate j | up I + j]
        name = next(n for n, p in model.named_parameters() if p is param)
        width = self.expert_width(model.config)
        rows = param.view(-1, param.shape[-1])  # a view: zeroing it zeroes the parameter

        def rows_of(half: int) -> IndexFn:
            return lambda idx: (idx // width) * (2 * width) + half * width + idx % width

        # down_proj's column of a neuron is not one slice of a single dim; the zeroed gate and up rows silence it
        return [WeightSlice(name, rows, 0, rows_of(1)), WeightSlice(name, rows, 0, rows_of(0))]


def switch_off_hook(adapter: MixtralAdapter, model: nn.Module, neurons: Tensor) -> Callable[..., Tensor]:
    """Forward hook on a layer's experts module that removes the contribution of the expert neurons
    `neurons` where they were routed: w · a_j · W_down[e][:, j] for each of their tokens - exactly what
    zeroing them inside the expert computation leaves out (up to float rounding)."""
    width = adapter.expert_width(model.config)
    experts_of, cols = expert_of(neurons, width)
    by_expert = {int(e): cols[experts_of == e] for e in torch.unique(experts_of)}

    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        x, top_k_index, top_k_weights = args[:3]
        out = output.clone()
        for e, j in by_expert.items():
            rows, slots = routed(top_k_index, e)
            if not len(rows):
                continue
            j = j.to(x.device)
            a = expert_activations(module, x[rows], e, j)  # [n, |j|]
            removed = (a * top_k_weights[rows, slots, None].to(a.dtype)) @ module.down_proj[e][:, j].T
            out.index_add_(0, rows, -removed.to(out.dtype))
        return out
    return hook


register_adapter(MixtralAdapter)
