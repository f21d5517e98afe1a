"""A pretend CUDA device for machines without one: code that mixes devices fails here as on a GPU.

Why it exists: studies run on GPUs, but tests run on CPUs, where a tensor made without
``device=`` or an input never moved to the model's device goes unnoticed — until a user's GPU
run stops with ``Expected all tensors to be on the same device`` (issue #12: Integrated
Gradients did). Under :func:`fake_cuda`:

* :class:`FakeCudaTensor` is a real CPU tensor that says it is on ``cuda:0`` (``.device``,
  ``.is_cuda``, ``.get_device()``); values, compute and autograd are the CPU's, unchanged.
* A ``TorchFunctionMode`` sees every call of torch's Python API (``torch.*``, ``Tensor``
  methods and properties, ``nn.functional``): a call asked for ``device="cuda"`` computes on the
  CPU and marks its result; ``.to`` / ``.cuda()`` / ``.cpu()`` copy across the pretend boundary
  (a real copy, as on a GPU); results of calls on marked tensors are marked.
* It raises what CUDA raises: a call mixing a marked tensor with an unmarked CPU tensor that
  is not a 0-dim scalar (:data:`MIXED`), except the mixes CUDA accepts — copies (``copy_``,
  ``to``, ``new_tensor``, ``type_as``), CPU indices of a CUDA tensor, a basic-slicing
  assignment; ``.numpy()`` / ``np.asarray`` of a marked tensor; a CPU random generator for a
  CUDA result; an ordinal other than ``cuda:0``; a CPU scalar as the output of an in-place op.
* A custom ``autograd.Function``'s backward (project code: the engine runs it inside
  ``Tensor.backward``, a torch call, where the mode is off) runs with the mode on, and the
  gradients the engine hands it are on the device of the outputs they belong to. Tensor and
  module backward hooks are not covered (neuronspec registers none).
* ``torch.cuda`` is not patched: with the model on CUDA, the study's stages (through torch,
  transformers and lm-eval) call only ``manual_seed_all`` (from ``torch.manual_seed``),
  ``is_initialized``, ``_is_in_bad_fork`` and ``is_current_stream_capturing``, which work
  unchanged on a CPU build (found by wrapping every function of ``torch.cuda``). The one
  exception is ``torch.compile``, which the q/k score tries for CUDA models and which needs a
  real GPU: tests turn it off (``NEURONSPEC_QK_COMPILE=0``).

Checks happen at torch's Python API, so a mix inside one C++ kernel is not seen: every tensor
such a kernel receives comes through that API, which is where project code can get a device wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import torch
from torch.autograd.function import BackwardCFunction
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack
from torch.utils._pytree import tree_flatten, tree_map

CUDA = torch.device("cuda", 0)
#: CUDA's own messages, so a test can match either device's error
MIXED = "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!"
NUMPY = "can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host memory first."
INDICES = "indices should be either on cpu or on the same device as the indexed tensor (cpu)"
GENERATOR = "Expected a 'cuda' device type for generator but found 'cpu'"
ORDINAL = "CUDA error: invalid device ordinal"


class FakeCudaTensor(torch.Tensor):
    """A CPU tensor that reports device cuda:0 while :func:`fake_cuda` is active."""

    __torch_function__ = torch._C._disabled_torch_function_impl  # the mode does everything


class FakeCudaParameter(FakeCudaTensor, torch.nn.Parameter):
    """A parameter on the pretend device (`Module.to` moves parameters in place, keeping ties)."""


_FAKE = {torch.Tensor: FakeCudaTensor, torch.nn.Parameter: FakeCudaParameter}
_REAL = {v: k for k, v in _FAKE.items()}


def _retype(t: torch.Tensor, data: torch.Tensor) -> None:
    """After `t.data = data`, `t` is on `data`'s device (the object stays: parameters keep their identity)."""
    if is_fake(data) and type(t) in _FAKE:
        t.__class__ = _FAKE[type(t)]
    elif not is_fake(data) and type(t) in _REAL:
        t.__class__ = _REAL[type(t)]


def is_fake(t: object) -> bool:
    return isinstance(t, FakeCudaTensor)


def mark(t: torch.Tensor) -> FakeCudaTensor:
    """`t` (a CPU tensor) as a pretend CUDA tensor: same storage, same autograd history."""
    if is_fake(t):
        return t  # type: ignore[return-value]
    if t.grad_fn is None:  # a leaf: keep it a leaf (optimisers and .grad need that)
        return torch.Tensor._make_subclass(FakeCudaTensor, t, t.requires_grad)
    return t.as_subclass(FakeCudaTensor)  # type: ignore[return-value]


def _place(t: torch.Tensor, cuda: bool) -> torch.Tensor:
    """`t` on the pretend device (`cuda`) or the CPU: a copy when it crosses, as a real transfer is."""
    if is_fake(t) == cuda:
        return t
    plain = t.as_subclass(torch.Tensor) if is_fake(t) else t
    copy = plain.clone()
    return mark(copy) if cuda else copy


def _device(spec: Any) -> torch.device:
    d = torch.device("cuda", spec) if isinstance(spec, int) else torch.device(spec)
    if d.type == "cuda" and d.index not in (None, 0):
        raise RuntimeError(ORDINAL)
    return d


_T = torch.Tensor
_SET_DATA = _T.data.__set__
_GETTERS = {_T.device.__get__: CUDA, _T.is_cuda.__get__: True, _T.is_cpu.__get__: False}
#: calls that take tensors on both devices on a GPU too (they copy)
_COPIES = {_T.copy_, _T.new_tensor, torch.as_tensor, torch.tensor}
#: calls where even a 0-dim CPU tensor cannot join a CUDA one (no CPU-scalar rule: lists, indices)
_NO_SCALARS = {torch.cat, torch.concat, torch.concatenate, torch.stack, torch.hstack, torch.vstack, torch.dstack,
               torch.column_stack, torch.index_select, _T.index_select, torch.gather, _T.gather, torch.take,
               torch.take_along_dim, torch.searchsorted, torch.bucketize, _T.scatter, _T.scatter_, _T.scatter_add,
               _T.scatter_add_, torch.scatter, torch.scatter_add, _T.index_add, _T.index_add_, torch.index_add,
               _T.index_copy, _T.index_copy_, _T.index_fill, _T.index_fill_, torch.index_fill}


def _advanced(index: Any) -> bool:
    """Whether an index is advanced (tensors, lists) — then assignment is index_put_, not a copy."""
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, (torch.Tensor, list)) for i in items)


def _in_place(func: Any) -> bool:
    """Whether `func` writes into its first argument (`add_`, `+=`)."""
    name = getattr(func, "__name__", "")
    return (name.endswith("_") and not name.endswith("__")) or (name.startswith("__i") and name not in
                                                                  ("__init__", "__index__", "__int__", "__invert__"))


def _check_mixed(func: Any, args: tuple, kwargs: dict, tensors: list[torch.Tensor]) -> None:
    if func is _T.__getitem__ or func is _T.__setitem__:
        self, index = args[0], args[1]
        index_tensors = [t for t in tree_flatten(index)[0] if isinstance(t, torch.Tensor)]
        if not is_fake(self) and any(is_fake(t) for t in index_tensors):
            raise RuntimeError(INDICES)
        if func is _T.__setitem__ and isinstance(args[2], torch.Tensor) and _advanced(index):
            value = args[2]
            if is_fake(value) != is_fake(self) and (is_fake(value) or value.dim() > 0):
                raise RuntimeError(MIXED)
        return  # CPU indices of a CUDA tensor are moved by CUDA; basic slicing assigns by copy_
    if func in _COPIES or func is torch._has_compatible_shallow_copy_type:  # the latter: metadata only
        return
    if not any(is_fake(t) for t in tensors):
        return
    strict = func in _NO_SCALARS
    if any(t.device.type == "cpu" and not is_fake(t) and (strict or t.dim() > 0) for t in tensors):
        raise RuntimeError(MIXED)
    outputs = [kwargs.get("out")] + ([args[0]] if _in_place(func) else [])  # a CPU scalar is fine only as an input
    if any(isinstance(t, torch.Tensor) and t.device.type == "cpu" and not is_fake(t) for t in outputs):
        raise RuntimeError(MIXED)


def _to(func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    """`Tensor.to` / `.cuda()` / `.cpu()` / `.type_as()` across the pretend boundary."""
    src, rest, kwargs = args[0], args[1:], dict(kwargs)
    copy = kwargs.pop("copy", False)
    if func is _T.cpu:
        device, dtype, non_blocking, memory_format = torch.device("cpu"), None, False, None
    elif func is _T.cuda:
        device, dtype, non_blocking, memory_format = CUDA, None, kwargs.get("non_blocking", False), None
    elif func is _T.type_as or (rest and isinstance(rest[0], torch.Tensor)) or "other" in kwargs:
        other = rest[0] if rest else kwargs["other"]
        device, dtype = (CUDA if is_fake(other) else other.device), other.dtype
        non_blocking, memory_format = False, None
    else:
        device, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*rest, **kwargs)
    cuda = _device(device).type == "cuda" if device is not None else is_fake(src)
    crossing = cuda != is_fake(src)
    extra = {"memory_format": memory_format} if memory_format is not None else {}
    out = _T.to(src, device="cpu" if cuda else device, dtype=dtype, non_blocking=non_blocking, copy=copy or crossing,
                **extra)
    return out if out is src else (mark(out) if cuda else out)


class FakeCudaMode(TorchFunctionMode):
    """The pretend device while active; `calls` counts the torch calls that computed on it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _GETTERS:
            return _GETTERS[func] if is_fake(args[0]) else func(*args, **kwargs)
        if func is _T.get_device:
            return 0 if is_fake(args[0]) else func(*args, **kwargs)
        if func in (_T.numpy, _T.__array__) and is_fake(args[0]):
            raise TypeError(NUMPY)
        if func in (_T.to, _T.cuda, _T.cpu, _T.type_as):
            return _to(func, args, kwargs)
        if func == _SET_DATA:  # `param.data = moved` (how Module.to moves a parameter): the object moves
            func(*args, **kwargs)
            _retype(*args)
            return None
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        _check_mixed(func, args, kwargs, tensors)
        explicit = kwargs.get("device") is not None
        if explicit:
            cuda = _device(kwargs["device"]).type == "cuda"
            if cuda:
                kwargs = {**kwargs, "device": "cpu"}
        else:
            cuda = any(is_fake(t) for t in tensors)
        gen = kwargs.get("generator")
        if cuda and gen is not None and gen.device.type != "cuda":
            raise RuntimeError(GENERATOR)
        self.calls += cuda
        out = func(*args, **kwargs)

        def post(x: Any) -> Any:
            if not isinstance(x, torch.Tensor):
                return x
            if any(x is t for t in tensors):  # in place, or no copy needed
                return _place(x, cuda) if explicit else x
            return mark(x) if cuda else x

        return tree_map(post, out)


_FUNCTION_APPLY = torch.autograd.Function.apply.__func__
_BACKWARD_APPLY = BackwardCFunction.apply


def _function_apply(cls: type, *args: Any, **kwargs: Any) -> Any:
    """`Function.apply`, noting on the graph node which outputs are on the pretend device."""
    out = _FUNCTION_APPLY(cls, *args, **kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    node = next((o.grad_fn for o in outs if isinstance(o, torch.Tensor) and o.grad_fn is not None), None)
    if node is not None:
        node._fake_cuda_outputs = tuple(is_fake(o) for o in outs)
    return out


@contextmanager
def fake_cuda() -> Iterator[FakeCudaMode]:
    """Run the block as if the machine had one CUDA GPU (see the module docstring)."""
    mode = FakeCudaMode()

    def backward_apply(node: BackwardCFunction, *grads: Any) -> Any:
        # a custom Function's backward is project code too, but the engine runs it inside
        # `Tensor.backward` (a torch call, so the mode is off) with gradients fresh from C++
        outputs = getattr(node, "_fake_cuda_outputs", ())
        grads = tuple(mark(g) if isinstance(g, torch.Tensor) and i < len(outputs) and outputs[i] else g
                      for i, g in enumerate(grads))
        if mode in _get_current_function_mode_stack():
            return _BACKWARD_APPLY(node, *grads)
        with mode:
            return _BACKWARD_APPLY(node, *grads)

    with mock.patch.object(torch.autograd.Function, "apply", classmethod(_function_apply)), \
            mock.patch.object(BackwardCFunction, "apply", backward_apply), mode:
        yield mode
