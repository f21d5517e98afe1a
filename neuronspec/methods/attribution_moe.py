"""Integrated Gradients' scaled activations for expert neurons (Mixtral, Qwen2-MoE).

A dense layer's neurons are one module input that a pre-hook scales (attribution.py). Expert
neurons are computed inside the experts module, so here the whole layer's activation a
[tokens, E * I (+ shared)] - 0 where an expert was not routed (methods/activations_moe.py) -
is rebuilt from the MoE block's input, scaled by α as one tensor (the gradient leaf), and fed
back: the experts module's output is replaced by Σ_e w_te W_down[e] (α a)_te over the token's
routed experts (what the module computes from its own a, with α = 1), the shared expert's
down projection reads the shared part. Routing is the block's own: the layer's input does not
depend on α.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from neuronspec.models.moe import MixtralAdapter, expert_activations, routed


class ExpertScale:
    """Hooks on layer `layer`'s MoE block that replace its expert neurons a by α·a (α per batch row),
    optionally as a leaf that requires grad; ``clean`` and ``leaf`` are [rows, T, width] as a dense
    layer's down-projection input would be."""

    def __init__(self, adapter: MixtralAdapter) -> None:
        self.adapter = adapter
        self.alpha: Tensor | None = None
        self.grad_leaf = False
        self.leaf: Tensor | None = None
        self.clean: Tensor | None = None
        self._flat: Tensor | None = None  # the scaled activations, [rows * T, width]

    def attach(self, model: nn.Module, layer: int) -> list[RemovableHandle]:
        a, cfg = self.adapter, model.config
        routed_n = a.num_experts(cfg) * a.expert_width(cfg)
        experts, block, shared = a.experts(model, layer), a.ffn_output(model, layer), a.shared_expert(model, layer)

        @torch.no_grad()
        def clean_of(x: Tensor) -> Tensor:
            """[N, width]: every expert neuron of the N tokens x, 0 where its expert was not routed."""
            _, _, top_k_index = block.gate(x)
            out = x.new_zeros(x.shape[0], a.dims(cfg).intermediate)
            for e in range(a.num_experts(cfg)):
                rows, _ = routed(top_k_index, e)
                out[rows, e * a.expert_width(cfg):(e + 1) * a.expert_width(cfg)] = expert_activations(experts, x[rows], e)
            if shared:
                mlp = shared[0]
                out[:, routed_n:] = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
            return out

        def on_block(module: nn.Module, args: tuple) -> None:
            h = args[0]
            clean = clean_of(h.detach().reshape(-1, h.shape[-1]))
            self.clean = clean.view(h.shape[0], h.shape[1], -1)
            scaled = (self.clean * self.alpha.to(clean.dtype)[:, None, None]).detach()
            if self.grad_leaf:
                scaled.requires_grad_(True)
                self.leaf = scaled
            self._flat = scaled.reshape(-1, scaled.shape[-1])

        def on_experts(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            _, top_k_index, top_k_weights = args[:3]
            width = a.expert_width(cfg)
            out = torch.zeros_like(output)
            for e in range(a.num_experts(cfg)):
                rows, slots = routed(top_k_index, e)
                act = self._flat[rows, e * width:(e + 1) * width] * top_k_weights[rows, slots, None].to(output.dtype)
                out = out.index_add(0, rows, act @ module.down_proj[e].T)
            return out

        handles = [block.register_forward_pre_hook(on_block), experts.register_forward_hook(on_experts)]
        if shared:
            handles.append(shared[0].down_proj.register_forward_pre_hook(
                lambda module, args: (self._flat[:, routed_n:], *args[1:])))
        return handles
