"""The pretend CUDA device of tests/fake_cuda.py: it must fail where CUDA fails, pass where CUDA
passes, and compute exactly what the CPU computes (else the stage test proves nothing)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from fake_cuda import GENERATOR, INDICES, MIXED, NUMPY, ORDINAL, fake_cuda, is_fake

from neuronspec.models.tiny import tiny_model


def test_mixing_a_cuda_tensor_with_a_cpu_tensor_raises_cudas_error() -> None:
    with fake_cuda():
        x = torch.ones(3, device="cuda")
        for mix in (lambda: x + torch.ones(3), lambda: torch.cat([x, torch.ones(1)]),
                    lambda: torch.nn.Linear(3, 2).to("cuda")(torch.ones(3)),
                    lambda: torch.ones(3, 3).index_select(0, torch.tensor([0], device="cuda"))):
            with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
                mix()
        with pytest.raises(RuntimeError, match=re.escape(MIXED)):  # a CPU scalar may be an input, not the output
            t = torch.zeros(())
            t += x.sum()
        with pytest.raises(RuntimeError, match=re.escape(INDICES)):
            torch.ones(3)[torch.tensor([0, 1], device="cuda")]
        with pytest.raises(TypeError, match=re.escape(NUMPY)):
            x.numpy()
        with pytest.raises(TypeError, match=re.escape(NUMPY)):
            np.asarray(x)
        with pytest.raises(RuntimeError, match=re.escape(GENERATOR)):
            torch.randperm(4, generator=torch.Generator(), device="cuda")
        with pytest.raises(RuntimeError, match=re.escape(ORDINAL)):
            x.to("cuda:1")


def test_what_cuda_accepts_passes() -> None:
    with fake_cuda():
        x = torch.arange(4.0, device="cuda")
        assert x.device == torch.device("cuda", 0) and x.is_cuda and x.get_device() == 0
        scaled = x * torch.tensor(2.0)  # a 0-dim CPU tensor joins as a scalar
        assert scaled.device.type == "cuda" and scaled.tolist() == [0.0, 2.0, 4.0, 6.0]
        assert x[torch.tensor([3, 0])].tolist() == [3.0, 0.0]  # CPU indices of a CUDA tensor
        host = torch.zeros(4)
        host[1:3] = x[1:3]  # basic slicing assigns by copy, across devices
        host.copy_(x)
        assert host.device.type == "cpu" and host.tolist() == x.tolist() and x.sum().item() == 6.0


def test_cpu_round_trip_keeps_values_and_copies() -> None:
    values = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    with fake_cuda():
        on = values.to("cuda")
        back = on.cpu()
        assert is_fake(on) and not is_fake(back) and back.device.type == "cpu"
        assert torch.equal(back, values) and torch.equal(torch.as_tensor(back.numpy()), values)
        on.zero_()  # a transfer is a copy, as on a GPU: the host tensor is untouched
        assert torch.equal(back, values) and float(values.abs().sum()) > 0


def test_a_model_on_the_device_computes_what_it_computes_on_the_cpu_forward_and_backward() -> None:
    model = tiny_model("llama")
    model.lm_head.weight = model.model.embed_tokens.weight  # tied, as many checkpoints are
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    ref = model(ids).logits
    ref.square().mean().backward()
    ref_grad = model.model.layers[0].mlp.down_proj.weight.grad.clone()
    model.zero_grad()
    param = model.model.layers[0].mlp.down_proj.weight
    with fake_cuda():
        model.to("cuda")  # parameters move in place (same objects, ties kept), as torch does for a GPU
        assert model.model.layers[0].mlp.down_proj.weight is param and is_fake(param)
        assert model.lm_head.weight is model.model.embed_tokens.weight
        out = model(ids.to("cuda")).logits
        out.square().mean().backward()
        assert out.device.type == "cuda" and param.grad.device.type == "cuda"
        assert torch.equal(out.detach().cpu(), ref.detach())
        assert torch.equal(param.grad.cpu(), ref_grad)


def test_a_custom_functions_backward_runs_on_the_device() -> None:
    seen = []

    class Twice(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # noqa: ANN001, ANN205
            return x * 2

        @staticmethod
        def backward(ctx, grad):  # noqa: ANN001, ANN205
            seen.append(grad.device.type)
            return grad * torch.ones(grad.shape)  # a host tensor in backward: wrong on a GPU

    with fake_cuda():
        w = torch.ones(3, device="cuda", requires_grad=True)
        with pytest.raises(RuntimeError, match=re.escape(MIXED)):
            Twice.apply(w).sum().backward()
    assert seen == ["cuda"]
    out = Twice.apply(torch.ones(3, requires_grad=True))  # after the block: plain torch again
    out.sum().backward()
    assert seen == ["cuda", "cpu"] and not hasattr(out.grad_fn, "_fake_cuda_outputs")
