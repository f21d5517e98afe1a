"""Post-RoPE query/key capture, for scores that need q and k as attention sees them.

PLND's ``attn.q`` / ``attn.k`` importance is a change of attention probabilities, so
it needs the queries and keys *after* rotary embeddings (and Gemma's q/k norms) - which
only exist inside the attention function. transformers 5 dispatches every attention
call through ``AttentionInterface``; we register one more implementation,
``"neuronspec"``, that hands q/k to a callback and then calls the implementation the
model was using. Nothing in transformers is patched; the model's config is switched to
``"neuronspec"`` inside :func:`capture_attention` and restored afterwards.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, PretrainedConfig
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    AttentionMaskInterface,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .sites import HookPoint, UnsupportedArchitecture, adapter_for

IMPL = "neuronspec"


class AttentionCallback(Protocol):
    def __call__(self, layer_idx: int, query: Tensor, key: Tensor, attention_mask: Tensor | None,
                 scaling: float, module: nn.Module) -> None: ...


# Per-config original implementation, per-module callback and the rotary (cos, sin) of the
# module's current call; filled only inside the context.
_ORIGINAL: dict[int, str] = {}
_CALLBACKS: dict[int, AttentionCallback] = {}
_ROTARY: dict[int, tuple[Tensor, Tensor] | None] = {}
# Per attention module still to verify (Adapter.verify_rotary): its q projection's hook point and last output.
_VERIFY: dict[int, HookPoint] = {}
_PRE_QUERY: dict[int, Tensor] = {}
_LOCK = threading.Lock()
_registered = False


def _original_impl(config: PretrainedConfig | None) -> str:
    impl = _ORIGINAL.get(id(config)) if config is not None else None
    if impl is None:
        raise RuntimeError(f"attn_implementation {IMPL!r} is only valid inside neuronspec's capture_attention()")
    return impl


def _attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
               attention_mask: Tensor | None, **kwargs) -> tuple[Tensor, Tensor | None]:
    """Registered as ``"neuronspec"``: callback first (if wanted), then the original function."""
    callback = _CALLBACKS.get(id(module))
    if id(module) in _VERIFY:
        _verify_rotary(module, query)
    if callback is not None:
        scaling = kwargs.get("scaling")
        callback(module.layer_idx, query, key, attention_mask,
                 float(scaling) if scaling is not None else query.shape[-1] ** -0.5, module)
    impl = _original_impl(getattr(module, "config", None))
    if impl == "eager":
        # "eager" is not in the global registry: each model file defines its own.
        fn = sys.modules[type(module).__module__].eager_attention_forward
    else:
        fn = ALL_ATTENTION_FUNCTIONS[impl]
    return fn(module, query, key, value, attention_mask, **kwargs)


def _mask(*args, config: PretrainedConfig | None = None, **kwargs) -> Tensor | None:
    """Mask builder for ``"neuronspec"``: the original one, but never skip a causal mask.

    sdpa normally returns None for plain causal attention (and uses is_causal=True);
    forcing the mask means the callback always sees where attention is allowed.
    """
    impl = _original_impl(config)
    if impl == "sdpa":
        kwargs["allow_is_causal_skip"] = False
    return ALL_MASK_ATTENTION_FUNCTIONS[impl](*args, config=config, **kwargs)


def _register() -> None:
    global _registered
    if not _registered:
        AttentionInterface.register(IMPL, _attention)
        AttentionMaskInterface.register(IMPL, _mask)
        _registered = True


def rotary_of(module: nn.Module) -> tuple[Tensor, Tensor] | None:
    """The (cos, sin) [B|1, T, head_dim] that `module`'s current forward applied to q and k
    (``position_embeddings``), or None for a model without rotary embeddings. Valid inside a
    callback of :func:`capture_attention`."""
    return _ROTARY.get(id(module))


def _keep_rotary(module: nn.Module, args: tuple, kwargs: dict) -> None:
    _ROTARY[id(module)] = kwargs.get("position_embeddings")


def rotate_half(x: Tensor, dim: int | None = None) -> Tensor:
    """rotate_half over the first `dim` coordinates (all by default), 0 on the rest: with the
    rotary tables widened by :func:`full_rotary_tables`, partial rotary is rotary over all D."""
    dim = x.shape[-1] if dim is None else dim
    half = dim // 2
    return torch.cat((-x[..., half:dim], x[..., :half], torch.zeros_like(x[..., dim:])), dim=-1)


def full_rotary_tables(rotary: tuple[Tensor, Tensor], d: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """(cos, sin, 1 / (cos² + sin²)) [B|1,1,T,D] and the rotary width r. Partial rotary (GPT-NeoX's
    rotary_pct, Phi's partial_rotary_factor) turns only the first r coordinates, so cos is 1 and sin
    0 past r. YaRN / LongRoPE multiply both tables by an attention factor m: R_t is then m times a
    rotation, R_tᵀ R_t = m², and the pre-RoPE vector is R_tᵀ q / m²."""
    cos, sin = (x.float()[:, None] for x in rotary)
    r = cos.shape[-1]
    if r < d:
        cos = torch.cat((cos, cos.new_ones(*cos.shape[:-1], d - r)), dim=-1)
        sin = torch.cat((sin, sin.new_zeros(*sin.shape[:-1], d - r)), dim=-1)
    return cos, sin, (cos.square() + sin.square()).reciprocal_(), r


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Half-split rotary (Llama's ``apply_rotary_pos_emb``) of x [B, H, T, D] with tables
    [B|1, T, r], r <= D: coordinates past r pass unchanged (partial rotary)."""
    full_cos, full_sin, _, r = full_rotary_tables((cos, sin), x.shape[-1])
    return x * full_cos + rotate_half(x, r) * full_sin


def _watch_query(point: HookPoint, attention: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """Keep the q projection's output of `attention`'s next call for :func:`_verify_rotary`."""
    _VERIFY[id(attention)] = point

    def keep(module: nn.Module, args: tuple, output: Tensor) -> None:
        if id(attention) in _VERIFY:
            _PRE_QUERY[id(attention)] = output.detach()
    return point.module.register_forward_hook(keep)


def _verify_rotary(module: nn.Module, query: Tensor) -> None:
    """Raise unless `query` is the q projection's output under :func:`apply_rotary` of the tables
    the module was given (or unrotated without tables); checked on a module's first call only."""
    point = _VERIFY.pop(id(module))
    pre = _PRE_QUERY.pop(id(module), None)
    if pre is None:
        return
    b, h, t, d = query.shape
    expected = pre[..., point.index_fn(torch.arange(point.width, device=pre.device))].float()
    expected = expected.reshape(b, t, h, d).transpose(1, 2)
    rotary = _ROTARY.get(id(module))
    if rotary is not None:
        expected = apply_rotary(expected, *(x.float() for x in rotary))
    gap = float((expected - query.float()).abs().max())
    if gap > 1e-2 * float(query.float().abs().max()) + 1e-6:
        raise UnsupportedArchitecture(
            f"{type(module).__name__} (layer {module.layer_idx}) does not hand attention its q projection's "
            f"output under half-split rotary{' (it received none)' if rotary is None else ''}: the q/k score "
            f"would be wrong (largest gap {gap:.3g}). Its family needs an adapter of its own that says how "
            "(interleaved rotary, a q/k norm, layers without rotary ...).")


def additive_mask(attention_mask: Tensor | None, dtype: torch.dtype = torch.float32) -> Tensor | None:
    """Normalise a mask passed to the callback to an additive float mask (0 / dtype min)."""
    if attention_mask is None or attention_mask.dtype != torch.bool:
        return None if attention_mask is None else attention_mask.to(dtype)
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(attention_mask, zero, torch.finfo(dtype).min)


@contextmanager
def capture_attention(model: nn.Module, callback: AttentionCallback, layers: set[int]) -> Iterator[nn.Module]:
    """Call ``callback(layer_idx, query, key, attention_mask, scaling, module)`` in each forward.

    - ``query``: [B, heads, T, head_dim] after RoPE (and q_norm for Gemma 3);
    - ``key``: [B, kv_heads, T_kv, head_dim], before ``repeat_kv`` (query head h reads
      KV head h // (heads // kv_heads), see ``sites.kv_group``);
    - ``attention_mask``: 4-D [B, 1, T, T_kv'] in the form the model's original
      implementation uses - bool (True = may attend) for sdpa, additive float
      (0 / dtype min) for eager; T_kv' may exceed T_kv, slice ``[..., :key.shape[-2]]``.
      It already encodes causality, padding and Gemma 3's sliding window. It is None
      only if the model built no mask. :func:`additive_mask` converts either form.
    - ``scaling``: the factor the model multiplies q.k by (Gemma 3: query_pre_attn_scalar**-0.5);
      soft-capping, if any, is ``module.attn_logit_softcapping``; :func:`rotary_of` gives the
      rotary (cos, sin) that turned the pre-RoPE q/k into these.

    Only modules whose ``layer_idx`` is in `layers` call back. BLOOM (ALiBi) computes
    attention itself and is not supported.
    """
    adapter = adapter_for(model)
    if not adapter.supports_attention_interface:
        raise NotImplementedError(
            f"capture_attention needs transformers' AttentionInterface, which {model.config.model_type} "
            "does not use (it computes attention inline); attn.q/attn.k scores are unavailable for it"
        )
    _register()
    configs = {id(m.config): m.config for m in model.modules()
               if isinstance(getattr(m, "config", None), PretrainedConfig)}
    attn_modules = {id(m): m for m in (adapter.attention(model, i) for i in sorted(layers))}
    with _LOCK:
        if any(c._attn_implementation == IMPL or id(c) in _ORIGINAL for c in configs.values()):
            raise RuntimeError("capture_attention does not nest on the same model")
        originals = {k: c._attn_implementation for k, c in configs.items()}
        _ORIGINAL.update(originals)
        _CALLBACKS.update({k: callback for k in attn_modules})
    hooks = [m.register_forward_pre_hook(_keep_rotary, with_kwargs=True) for m in attn_modules.values()]
    if adapter.verify_rotary:
        hooks += [_watch_query(adapter.hook_point(model, i, "attn.q"), adapter.attention(model, i)) for i in sorted(layers)]
    try:
        for c in configs.values():
            c._attn_implementation_internal = IMPL
        yield model
    finally:
        for h in hooks:
            h.remove()
        with _LOCK:
            for k, c in configs.items():
                c._attn_implementation_internal = originals[k]
                _ORIGINAL.pop(k, None)
            for k in attn_modules:
                _CALLBACKS.pop(k, None)
                _ROTARY.pop(k, None)
                _VERIFY.pop(k, None)
                _PRE_QUERY.pop(k, None)
