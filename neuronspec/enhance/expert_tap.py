"""The gradient tap for routed expert neurons of a mixture-of-experts layer (Mixtral, Qwen2-MoE).

A routed ffn neuron (expert e, index j) owns rows (e, j) and (e, I + j) of the experts module's
``gate_up_proj`` [E, 2I, H] and column j of ``down_proj[e]`` [H, I] - slices of 3-D parameters
that no nn.Linear computes, so the dense tap (train.py) does not apply. Instead a forward hook on
the experts module passes its output through :class:`_ExpertTap`, whose backward recomputes, in
float32 and for the selected neurons only, each one's term of the output where its expert was
routed, w · act(x·g_j) · (x·u_j) · d_j, and takes that small graph's gradient w.r.t. (g_j, u_j, d_j).
The layer's output is a sum of such terms (plus terms of other neurons, which do not depend on
these slices), so that is exactly the slices' part of the full weight gradient; the forward pass
stays the model's own and the full expert weights never get a gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..models.moe import routed


class _ExpertTap(torch.autograd.Function):
    """Identity on the experts' output y [N, H]; backward also returns the gradients of the
    compact gate_up rows [2k, H] (in `gu_order`) and down columns [k, H] of neurons `pairs` [k, 2]."""

    @staticmethod
    def forward(ctx, y: Tensor, x: Tensor, top_k_index: Tensor, top_k_weights: Tensor,  # noqa: ANN001
                gu_compact: Tensor, down_compact: Tensor, experts: nn.Module, pairs: Tensor,
                gu_order: Tensor) -> Tensor:
        ctx.save_for_backward(x, top_k_index, top_k_weights.detach(), pairs, gu_order)
        ctx.experts, ctx.dtype = experts, gu_compact.dtype
        return y.view_as(y)

    @staticmethod
    def backward(ctx, gy: Tensor):  # noqa: ANN001, ANN205
        x, top_k_index, weights, pairs, gu_order = ctx.saved_tensors
        m = ctx.experts
        width = m.gate_up_proj.shape[1] // 2
        k, hidden = pairs.shape[0], m.gate_up_proj.shape[-1]
        grads = [torch.zeros(k, hidden, dtype=torch.float32, device=gy.device) for _ in range(3)]  # gate, up, down
        with torch.enable_grad():
            for e in torch.unique(pairs[:, 0]).tolist():
                rows, slots = routed(top_k_index, e)
                if not len(rows):
                    continue
                pos = torch.where(pairs[:, 0] == e)[0]
                j = pairs[pos, 1]
                xr, w = x[rows].detach().float(), weights[rows, slots].float()
                leaves = [m.gate_up_proj[e, j].detach().float().requires_grad_(True),
                          m.gate_up_proj[e, width + j].detach().float().requires_grad_(True),
                          m.down_proj[e][:, j].detach().float().t().contiguous().requires_grad_(True)]
                a = m.act_fn(xr @ leaves[0].t()) * (xr @ leaves[1].t())  # [n, |j|]
                out = (a * w[:, None]) @ leaves[2]  # these neurons' share of the output [n, H]
                for g, leaf_grad in zip(grads, torch.autograd.grad(out, leaves, gy[rows].float()), strict=True):
                    g[pos] = leaf_grad
        gu = torch.cat(grads[:2])[gu_order]
        return (gy, None, None, None, gu.to(ctx.dtype) if ctx.needs_input_grad[4] else None,
                grads[2].to(ctx.dtype) if ctx.needs_input_grad[5] else None, None, None, None)


def gate_up_order(pairs: Tensor, gu_coords: Tensor, width: int) -> Tensor:
    """The permutation taking [gate rows of `pairs`; up rows of `pairs`] to the order of `gu_coords`
    (sorted (expert, row) pairs), checked."""
    key = pairs[:, 0] * 2 * width
    keys = torch.cat([key + pairs[:, 1], key + width + pairs[:, 1]])
    order = torch.argsort(keys)
    if not torch.equal(keys[order], gu_coords[:, 0] * 2 * width + gu_coords[:, 1]):
        raise ValueError("gate_up_proj rows do not match the down_proj columns: not whole expert neurons")
    return order


def expert_hook(gu_compact: Tensor, down_compact: Tensor, pairs: Tensor, gu_order: Tensor) -> Callable[..., Tensor]:
    """Forward hook for an experts module, called as (hidden [N, H], top-k index, top-k weights)."""
    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        x, top_k_index, top_k_weights = args[:3]
        return _ExpertTap.apply(output, x, top_k_index, top_k_weights, gu_compact, down_compact, module, pairs,
                                gu_order)
    return hook
