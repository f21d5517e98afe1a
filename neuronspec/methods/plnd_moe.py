"""PLND's ``ffn`` importance for expert neurons of a mixture-of-experts layer (Mixtral, Qwen2-MoE).

The experts module's output at token t is Σ_e w_te · W_down[e] a_te over the experts e the
router chose for t (weights w_te). Switching off neuron j of expert e removes
w_te · a_tej · W_down[e][:, j] at the tokens routed to e and nothing elsewhere, so its squared
change is w_te² a_tej² ‖W_down[e][:, j]‖² there and 0 at other tokens - the dense formula with the
routing weight folded in. A shared expert (Qwen2-MoE) runs on every token, scaled by
s_t = sigmoid(gate · x_t): its neuron's is s_t² a_tj² ‖W_down[:, j]‖². Neurons are numbered
e * I + j, the shared expert's after the routed ones (models/moe.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from neuronspec.models.moe import MixtralAdapter, expert_activations, routed

Reduce = Callable[[Tensor], Tensor]  # [tokens, W] per-token squared changes → [documents, W]


@torch.no_grad()
def routed_importance(experts: nn.Module, x: Tensor, top_k_index: Tensor, top_k_weights: Tensor,
                      reduce: Reduce) -> Tensor:
    """[documents, E * I], expert after expert (one expert's [tokens, I] at a time, never [tokens, E * I])."""
    x = x.detach()
    parts = []
    for e in range(experts.gate_up_proj.shape[0]):
        rows, slots = routed(top_k_index, e)
        per_token = x.new_zeros(x.shape[0], experts.gate_up_proj.shape[1] // 2, dtype=torch.float32)
        if len(rows):
            a = expert_activations(experts, x[rows], e).float()
            per_token[rows] = (a * top_k_weights[rows, slots, None].float()).square()
        norms = experts.down_proj[e].detach().float().square().sum(0)  # [I]
        parts.append(reduce(per_token) * norms)
    return torch.cat(parts, dim=-1)


@torch.no_grad()
def shared_importance(mlp: nn.Module, gate: nn.Module, x: Tensor, reduce: Reduce) -> Tensor:
    """[documents, I_shared] for a shared expert `mlp` scaled by sigmoid(`gate`(x)), x [tokens, H]."""
    a = (mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)).float()
    scaled = a * torch.sigmoid(gate(x)).float()
    return reduce(scaled.square()) * mlp.down_proj.weight.detach().float().square().sum(0)


def importance_hooks(adapter: MixtralAdapter, model: nn.Module, i: int, reduce: Reduce,
                     put: Callable[[Tensor], None]) -> list[RemovableHandle]:
    """Hooks that `put` layer `i`'s [documents, ffn width] importances once per forward pass: the shared
    expert's part from the MoE block's input (kept until) the routed part from the experts module's call."""
    pending: dict[str, Tensor] = {}
    shared = adapter.shared_expert(model, i)

    def on_block(module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        pending["shared"] = shared_importance(*shared, x.reshape(-1, x.shape[-1]), reduce)  # type: ignore[misc]

    def on_experts(module: nn.Module, args: tuple) -> None:
        parts = [routed_importance(module, *args[:3], reduce)]
        if shared:
            parts.append(pending.pop("shared"))
        put(torch.cat(parts, dim=-1))

    handles = [adapter.experts(model, i).register_forward_pre_hook(on_experts)]
    if shared:
        handles.append(adapter.ffn_output(model, i).register_forward_pre_hook(on_block))
    return handles
