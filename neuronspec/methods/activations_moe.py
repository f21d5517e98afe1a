"""Activation statistics of expert neurons (Mixtral, Qwen2-MoE): what a routed neuron's value is.

An expert neuron j of expert e is computed only for the tokens the router sends to e; there
it is a_tej = act(x W_gate[e][j]) · (x W_up[e][j]), the input of the expert's down projection
(unweighted: the routing weight multiplies the expert's output, not its neurons). On every
other token the expert never runs, the neuron writes nothing, and the statistics read it as
0 - a neuron that did not fire. So LAPE's activation probability of an expert neuron is
P(routed to e and a > 0) over all of a language's tokens (= P(routed) · P(a > 0 | routed)),
its gate event likewise, and the pooled means average over all counted tokens with 0 where
the expert was not routed. A shared expert (Qwen2-MoE) runs on every token and is read at its
down projection's input, as a dense MLP.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from neuronspec.models.moe import MixtralAdapter, expert_activations, routed

Fold = Callable[[Tensor, slice], None]
"""Takes a layer's values [B*T tokens, w] for its ffn columns `cols` (flattened as the MoE block flattens them)."""


def expert_hooks(adapter: MixtralAdapter, model: nn.Module, i: int, fold: Fold | None,
                 fold_gate: Fold | None, fold_act: Fold | None = None) -> list[RemovableHandle]:
    """Hooks giving `fold` layer `i`'s expert neuron values (0 where not routed), `fold_gate` its
    gate events (act(gate) > 0, False where not routed) and `fold_act` the gate's activation
    act(x·gate) (0 where not routed; Sharing Matters' event), one expert's [tokens, I] at a time."""
    width = adapter.expert_width(model.config)

    @torch.no_grad()
    def on_experts(module: nn.Module, args: tuple) -> None:
        x, top_k_index = args[0], args[1]
        for e in range(adapter.num_experts(model.config)):
            rows, _ = routed(top_k_index, e)
            cols = slice(e * width, (e + 1) * width)
            if fold is not None:
                a = x.new_zeros(x.shape[0], width, dtype=torch.float32)
                a[rows] = expert_activations(module, x[rows], e).float()
                fold(a, cols)
            if fold_gate is not None:
                fired = torch.zeros(x.shape[0], width, dtype=torch.bool, device=x.device)
                fired[rows] = x[rows] @ module.gate_up_proj[e, :width].T > 0
                fold_gate(fired, cols)
            if fold_act is not None:
                act = x.new_zeros(x.shape[0], width, dtype=torch.float32)
                act[rows] = module.act_fn(x[rows] @ module.gate_up_proj[e, :width].T).float()
                fold_act(act, cols)

    handles = [adapter.experts(model, i).register_forward_pre_hook(on_experts)]
    shared = adapter.shared_expert(model, i)
    if shared:
        routed_n = adapter.num_experts(model.config) * width
        cols = slice(routed_n, routed_n + adapter.shared_width(model.config))
        mlp = shared[0]
        if fold is not None:
            handles.append(mlp.down_proj.register_forward_pre_hook(lambda module, args: fold(args[0], cols)))
        if fold_gate is not None:
            handles.append(mlp.gate_proj.register_forward_hook(lambda module, args, out: fold_gate(out > 0, cols)))
        if fold_act is not None:
            handles.append(mlp.act_fn.register_forward_hook(
                lambda module, args, out: fold_act(out.reshape(-1, out.shape[-1]), cols)))
    return handles
