"""PLND's ``ffn`` importance for expert neurons of a mixture-of-experts layer (Mixtral).

The experts module's output at token t is Σ_e w_te · W_down[e] a_te over the experts e the
router chose for t (weights w_te). Switching off neuron j of expert e removes
w_te · a_tej · W_down[e][:, j] at the tokens routed to e and nothing elsewhere, so its squared
change is w_te² a_tej² ‖W_down[e][:, j]‖² there and 0 at other tokens - the dense formula with the
routing weight folded in. Neurons are numbered e * I + j (models/moe.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from neuronspec.models.moe import expert_activations, routed


@torch.no_grad()
def routed_importance(experts: nn.Module, x: Tensor, top_k_index: Tensor, top_k_weights: Tensor,
                      reduce: Callable[[Tensor], Tensor]) -> Tensor:
    """[documents, E * I]: `reduce` ([tokens, I] per-token squared changes → [documents, I]) of each
    expert's neurons, times their down-projection columns' squared norms, expert after expert
    (one expert's [tokens, I] at a time, never [tokens, E * I])."""
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
