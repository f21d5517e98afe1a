"""Float32 linear layers on x86 CPUs through oneDNN instead of MKL.

PyTorch's CPU build multiplies float32 matrices with MKL, and MKL runs its AVX2 code on
AMD processors. oneDNN, the library PyTorch ships for its own fused CPU kernels, uses the
processor's AVX-512: on the 2-core AMD EPYC (Zen 5) machine this project is measured on it
is 1.7–2.2x faster on the linear shapes of Gemma 3 270M, the 262k-token unembedding
included, and perplexity evaluation runs 2.0–2.1x faster (`benchmarks/cpu_linear.py`). Both
compute IEEE float32 products with float32 accumulation (oneDNN's default "strict" math
mode): results differ at rounding level only, as two GEMM libraries always do.

`use_onednn(model)` makes every plain `nn.Linear` call :func:`linear`, which takes oneDNN
for float32 CPU tensors when no gradient is needed (the op has no backward) and
`F.linear` otherwise. Weights are read at every call and never packed, so masks that zero
weights in place are seen. Off with ``NEURONSPEC_ONEDNN=0``; not used where PyTorch was
built without oneDNN or on other processors (ARM builds already route through oneDNN/ACL).
"""

from __future__ import annotations

import os
import platform

import torch
from torch import Tensor, nn

_OP = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


def available() -> bool:
    """Whether :func:`linear` can use oneDNN here (x86 CPU, PyTorch with oneDNN, not turned off)."""
    return (
        os.environ.get("NEURONSPEC_ONEDNN", "1") != "0"
        and platform.machine().lower() in ("x86_64", "amd64")
        and torch.backends.mkldnn.is_available()
        and _OP is not None
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear(x, weight, bias)`, through oneDNN for float32 CPU tensors without gradient.

    A one-row product (batch-1 decoding) stays with MKL unless it is unembedding-shaped: at one
    row oneDNN was 0.5-0.95x on Gemma 3 270M's layer shapes and 2.5-2.6x on its unembedding."""
    if (
        x.device.type == "cpu"
        and (x.numel() > x.shape[-1] or weight.shape[0] >= 16 * weight.shape[1])
        and x.dtype == weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad)))
        and available()
    ):
        return _OP(x, weight, bias, "none", [], "")
    return nn.functional.linear(x, weight, bias)


class OneDNNLinear(nn.Linear):
    """An `nn.Linear` whose forward is :func:`linear` (same parameters, hooks and state dict)."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


def use_onednn(model: nn.Module) -> int:
    """Make the model's plain `nn.Linear` modules OneDNNLinear in place; returns how many.

    Subclasses of nn.Linear (quantised or adapter layers) keep their own forward.
    """
    if not available():
        return 0
    swapped = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = OneDNNLinear
            swapped += 1
    return swapped
