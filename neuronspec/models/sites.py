"""The one site registry: which tensor a "neuron" is, per architecture family.

A *site* names a family of neurons (docs/methods.md, "Neurons: the five sites", per architecture):

- ``ffn``     coordinate k of the input of the FFN down-projection (width intermediate);
- ``attn.q``  output coordinate k of the query projection (heads * head_dim);
- ``attn.k``  output coordinate k of the key projection (kv_heads * head_dim);
- ``attn.v``  output coordinate k of the value projection (kv_heads * head_dim);
- ``attn.o``  input coordinate k of the attention output projection (heads * head_dim).

Everything else in neuronspec (statistics hooks, masks, weight zeroing, fine-tuning
gradient masks) asks an :class:`Adapter` where a site lives instead of knowing module
paths itself. Adding an architecture = one short subclass + :func:`register_adapter`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

SITES: tuple[str, ...] = ("ffn", "attn.q", "attn.k", "attn.v", "attn.o")
QKV_SITES: tuple[str, ...] = ("attn.q", "attn.k", "attn.v")

IndexFn = Callable[[Tensor], Tensor]
"""Maps neuron indices (LongTensor) of a site to coordinates of a module tensor."""


def _identity(idx: Tensor) -> Tensor:
    return idx


class UnsupportedArchitecture(ValueError):
    """Raised for a model family that has no registered adapter."""


class SiteShapeError(ValueError):
    """Raised when a model's modules do not have the widths its config announces."""


@dataclass(frozen=True)
class Dims:
    """The sizes that define every site's width, read once from a config."""

    num_layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int


def check_site(site: str) -> str:
    """Return `site` or raise a ValueError naming the valid ones."""
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; valid sites: {', '.join(SITES)}")
    return site


def site_width(dims: Dims, site: str) -> int:
    """Number of neurons of `site` in one layer."""
    check_site(site)
    if site == "ffn":
        return dims.intermediate
    if site in ("attn.q", "attn.o"):
        return dims.heads * dims.head_dim
    return dims.kv_heads * dims.head_dim


def kv_group(h_kv: int, heads: int, kv_heads: int) -> range:
    """Query heads that read KV head `h_kv` under grouped-query attention.

    transformers' ``repeat_kv`` expands [B, kv_heads, T, D] to [B, kv_heads, n_rep, T, D]
    and reshapes to [B, kv_heads * n_rep, T, D], so query head h uses KV head
    h // n_rep with n_rep = heads // kv_heads: the group of h_kv is a contiguous range.
    """
    if kv_heads <= 0 or heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a positive multiple of kv_heads ({kv_heads})")
    if not 0 <= h_kv < kv_heads:
        raise ValueError(f"kv head {h_kv} out of range [0, {kv_heads})")
    n_rep = heads // kv_heads
    return range(h_kv * n_rep, (h_kv + 1) * n_rep)


@dataclass(frozen=True)
class HookPoint:
    """Where a site's neurons are visible during a forward pass.

    ``kind == "input"``: the neurons are coordinates of the module's first positional
    input (use a forward pre-hook); ``"output"``: coordinates of its output (forward
    hook). ``index_fn`` maps neuron indices to coordinates of that last dimension.
    """

    module: nn.Module
    kind: Literal["input", "output"]
    index_fn: IndexFn
    width: int  # size of the site (not of the module tensor, which may be fused)


@dataclass(frozen=True)
class WeightSlice:
    """Neuron n of a site owns ``param`` at positions ``index_fn(n)`` along ``dim``.

    Zeroing every slice of a site is equivalent to deactivating its neurons; the same
    slices say which rows/columns a neuron-restricted fine-tune may update.
    """

    name: str
    param: nn.Parameter
    dim: int
    index_fn: IndexFn


class Adapter:
    """Maps the sites of one architecture family to real modules of a model.

    Subclasses set ``model_types`` and implement the module lookups; methods take the
    model so one adapter instance serves any number of models of its family.
    """

    model_types: tuple[str, ...] = ()
    supports_attention_interface: bool = True
    #: the q/k norms (if any) normalise each head; False: the whole projection at once (OLMo 2)
    qk_norm_per_head: bool = True
    #: the q/k norms' inputs are [B, heads, T, D] (Gemma 3 normalises after the transpose), not [B, T, heads, D]
    qk_norm_heads_first: bool = True
    #: the queries attention sees must be checked, once per layer, to be the q projection's output under
    #: half-split rotary (families recognised by layout only, whose rotary convention nothing declares)
    verify_rotary: bool = False
    #: ffn neurons live inside routed experts (models/moe.py): no module input holds them, so statistics
    #: and deactivation work from the experts module's call (``experts(model, i)``)
    routed_ffn: bool = False

    # ---- config -----------------------------------------------------------------
    def text_config(self, config):  # noqa: ANN001, ANN201 - transformers configs are untyped
        """The config that describes the decoder stack (multimodal models nest it)."""
        return config

    def dims(self, config) -> Dims:  # noqa: ANN001
        raise NotImplementedError

    def expert_layout(self, config):  # noqa: ANN001, ANN201 - models.moe.ExpertLayout | None
        """How the ffn neurons split into experts (``routed_ffn`` families), else None."""
        return None

    # ---- modules ----------------------------------------------------------------
    def base(self, model: nn.Module) -> nn.Module:
        """The decoder stack without the unembedding (e.g. ``model.model``)."""
        raise NotImplementedError

    def layers(self, model: nn.Module) -> nn.ModuleList:
        raise NotImplementedError

    def final_norm(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def unembed(self, model: nn.Module) -> nn.Module:
        return model.lm_head

    def ffn_down(self, model: nn.Module, i: int) -> nn.Module:
        """Module whose input holds the ``ffn`` neurons of layer `i`."""
        raise NotImplementedError

    def attn_out(self, model: nn.Module, i: int) -> nn.Module:
        """Module whose input holds the ``attn.o`` neurons of layer `i`."""
        raise NotImplementedError

    def ffn_output(self, model: nn.Module, i: int) -> nn.Module:
        """Module whose output is layer `i`'s FFN contribution (what PLND's ``ffn`` score measures the change of)."""
        return self.ffn_down(model, i)

    def attention(self, model: nn.Module, i: int) -> nn.Module:
        """The attention module of layer `i` (the one that calls the attention function)."""
        raise NotImplementedError

    def projection(self, model: nn.Module, i: int, site: str) -> tuple[nn.Module, IndexFn]:
        """(module, index_fn): the q/k/v neurons are output coordinates index_fn(n)."""
        raise NotImplementedError

    def ffn_in(self, model: nn.Module, i: int) -> list[nn.Module]:
        """Modules whose output rows feed the ``ffn`` neurons (up and gate, or fc1)."""
        raise NotImplementedError

    def ffn_act(self, model: nn.Module, i: int) -> nn.Module | None:
        """The module that applies the MLP's nonlinearity to the gate, act(gate·x), whose output is
        what Sharing Matters' reference code thresholds; None for a plain MLP, where the ``ffn``
        neuron (the down projection's input) is that output itself."""
        return None

    def ffn_in_slices(self, model: nn.Module, i: int) -> list[tuple[nn.Module, IndexFn]]:
        """(module, index_fn) per input of the ``ffn`` neurons, [up, gate] or [fc1]: neuron n is
        output coordinate index_fn(n). Fused gate/up projections override this (one module, two maps)."""
        return [(module, _identity) for module in self.ffn_in(model, i)]

    def qk_norm_gains(self, model: nn.Module, i: int) -> tuple[Tensor, Tensor] | None:
        """Gains [head_dim] of the q/k RMSNorms after the projection, before RoPE; None if there are none."""
        return None

    def qk_norms(self, model: nn.Module, i: int) -> tuple[nn.Module, nn.Module] | None:
        """The per-head q and k RMSNorm modules (their inputs are the pre-norm projection outputs
        that deactivation zeroes), or None when the family has none."""
        return None

    def post_norm(self, model: nn.Module, i: int, which: str) -> nn.Module | None:
        """The RMSNorm on layer `i`'s ``"ffn"`` / ``"attn"`` output before the residual add, or None."""
        return None

    def rms_norm_params(self, norm: nn.Module) -> tuple[Tensor, float]:
        """(gain [hidden] float32, eps) of one of this family's RMSNorms: y ↦ gain ⊙ y / √(mean y² + eps)."""
        return norm.weight.detach().float(), norm_eps(norm)

    # ---- weights: always [out, in] ----------------------------------------------
    def down_weight(self, model: nn.Module, i: int) -> Tensor:
        """FFN down-projection weight as [hidden, intermediate]."""
        return self.ffn_down(model, i).weight

    def o_weight(self, model: nn.Module, i: int) -> Tensor:
        """Attention output projection weight as [hidden, heads * head_dim]."""
        return self.attn_out(model, i).weight

    # Layout of weights inside nn.Linear-like modules: (dim of output rows, dim of input columns).
    def _out_in_dims(self, module: nn.Module) -> tuple[int, int]:
        return (0, 1)

    # ---- derived, shared by all families ----------------------------------------
    def hook_point(self, model: nn.Module, i: int, site: str) -> HookPoint:
        """Where the neurons of `site` in layer `i` can be read or zeroed."""
        width = site_width(self.dims(model.config), site)
        if site == "ffn":
            return HookPoint(self.ffn_down(model, i), "input", _identity, width)
        if site == "attn.o":
            return HookPoint(self.attn_out(model, i), "input", _identity, width)
        module, index_fn = self.projection(model, i, site)
        return HookPoint(module, "output", index_fn, width)

    def weight_slices(self, model: nn.Module, i: int, site: str) -> list[WeightSlice]:
        """Every weight/bias slice owned by the neurons of `site` in layer `i`."""
        check_site(site)
        names = {id(p): n for n, p in model.named_parameters()}
        slices: list[WeightSlice] = []

        def add(module: nn.Module, which: Literal["out", "in"], index_fn: IndexFn) -> None:
            out_dim, in_dim = self._out_in_dims(module)
            w = module.weight
            slices.append(WeightSlice(names[id(w)], w, out_dim if which == "out" else in_dim, index_fn))
            bias = getattr(module, "bias", None)
            if which == "out" and bias is not None:
                slices.append(WeightSlice(names[id(bias)], bias, 0, index_fn))

        if site == "ffn":
            for module, index_fn in self.ffn_in_slices(model, i):
                add(module, "out", index_fn)
            add(self.ffn_down(model, i), "in", _identity)
        elif site == "attn.o":
            add(self.attn_out(model, i), "in", _identity)
        else:
            module, index_fn = self.projection(model, i, site)
            add(module, "out", index_fn)
        return slices

    def check(self, model: nn.Module) -> Dims:
        """Verify every site's width against the real module shapes; return the dims."""
        dims = self.dims(model.config)
        layers = self.layers(model)
        if len(layers) != dims.num_layers:
            raise SiteShapeError(f"config says {dims.num_layers} layers, model has {len(layers)}")
        problems: list[str] = []
        for i in range(dims.num_layers):
            for site in SITES:
                width = site_width(dims, site)
                for sl in self.weight_slices(model, i, site):
                    size = sl.param.shape[sl.dim]
                    top = int(sl.index_fn(torch.tensor([width - 1])).max())
                    if (sl.index_fn is _identity and size != width) or top >= size:
                        problems.append(f"layer {i} {site}: {sl.name} has size {size} along dim {sl.dim},"
                                        f" expected {width} neurons")
        if problems:
            raise SiteShapeError(f"{type(self).__name__} does not match this model:\n  " + "\n  ".join(problems[:10]))
        return dims


# ---- families ---------------------------------------------------------------------


class GatedAdapter(Adapter):
    """Llama-style decoders: ``model.model.layers[i].{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj}``."""

    model_types = ("llama", "mistral", "qwen2")

    def dims(self, config) -> Dims:  # noqa: ANN001
        c = self.text_config(config)
        heads = c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
        return Dims(c.num_hidden_layers, c.hidden_size, c.intermediate_size, heads,
                    getattr(c, "num_key_value_heads", None) or heads, head_dim)

    def base(self, model: nn.Module) -> nn.Module:
        return model.model

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return self.base(model).layers

    def final_norm(self, model: nn.Module) -> nn.Module:
        return self.base(model).norm

    def ffn_down(self, model: nn.Module, i: int) -> nn.Module:
        return self.layers(model)[i].mlp.down_proj

    def ffn_act(self, model: nn.Module, i: int) -> nn.Module:
        act = getattr(self.layers(model)[i].mlp, "act_fn", None)
        if not isinstance(act, nn.Module):
            raise ValueError(f"layer {i}'s mlp has no act_fn module: the gate's activation cannot be read")
        return act

    def ffn_in(self, model: nn.Module, i: int) -> list[nn.Module]:
        mlp = self.layers(model)[i].mlp
        return [mlp.up_proj, mlp.gate_proj]

    def attention(self, model: nn.Module, i: int) -> nn.Module:
        return self.layers(model)[i].self_attn

    def attn_out(self, model: nn.Module, i: int) -> nn.Module:
        return self.attention(model, i).o_proj

    def projection(self, model: nn.Module, i: int, site: str) -> tuple[nn.Module, IndexFn]:
        attn = self.attention(model, i)
        name = {"attn.q": "q_proj", "attn.k": "k_proj", "attn.v": "v_proj"}[_qkv(site)]
        return getattr(attn, name), _identity


class _TransformerHAdapter(Adapter):
    """GPT-2 and BLOOM keep their decoder stack at ``model.transformer.h`` and end with ``ln_f``."""

    def base(self, model: nn.Module) -> nn.Module:
        return model.transformer

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return self.base(model).h

    def final_norm(self, model: nn.Module) -> nn.Module:
        return self.base(model).ln_f


class GPT2Adapter(_TransformerHAdapter):
    """GPT-2: Conv1D modules store weights as [in, out]; q/k/v are fused in ``c_attn``."""

    model_types = ("gpt2",)

    def dims(self, config) -> Dims:  # noqa: ANN001
        heads = config.n_head
        return Dims(config.n_layer, config.n_embd, config.n_inner or 4 * config.n_embd, heads, heads,
                    config.n_embd // heads)

    def ffn_down(self, model: nn.Module, i: int) -> nn.Module:
        return self.layers(model)[i].mlp.c_proj

    def ffn_in(self, model: nn.Module, i: int) -> list[nn.Module]:
        return [self.layers(model)[i].mlp.c_fc]

    def attention(self, model: nn.Module, i: int) -> nn.Module:
        return self.layers(model)[i].attn

    def attn_out(self, model: nn.Module, i: int) -> nn.Module:
        return self.attention(model, i).c_proj

    def projection(self, model: nn.Module, i: int, site: str) -> tuple[nn.Module, IndexFn]:
        # GPT2Attention: c_attn(x).split(embed_dim, dim=2) -> [q | k | v].
        offset = QKV_SITES.index(_qkv(site)) * model.config.n_embd
        return self.attention(model, i).c_attn, lambda idx: idx + offset

    def _out_in_dims(self, module: nn.Module) -> tuple[int, int]:
        return (1, 0)  # Conv1D weight is [in, out]

    def down_weight(self, model: nn.Module, i: int) -> Tensor:
        return self.ffn_down(model, i).weight.T

    def o_weight(self, model: nn.Module, i: int) -> Tensor:
        return self.attn_out(model, i).weight.T


class BloomAdapter(_TransformerHAdapter):
    """BLOOM: fused ``query_key_value`` laid out per head as [heads, 3, head_dim].

    BloomAttention._reshape views the fused output as (B, T, heads, 3, head_dim) and takes
    [..., 0, :] / [..., 1, :] / [..., 2, :] for q / k / v, so neuron n = h*head_dim + d of
    site s (0, 1, 2) is coordinate h*3*head_dim + s*head_dim + d. BLOOM computes attention
    itself (ALiBi), not through transformers' AttentionInterface.
    """

    model_types = ("bloom",)
    supports_attention_interface = False

    def dims(self, config) -> Dims:  # noqa: ANN001
        heads = config.n_head
        return Dims(config.n_layer, config.hidden_size, 4 * config.hidden_size, heads, heads,
                    config.hidden_size // heads)

    def ffn_down(self, model: nn.Module, i: int) -> nn.Module:
        return self.layers(model)[i].mlp.dense_4h_to_h

    def ffn_in(self, model: nn.Module, i: int) -> list[nn.Module]:
        return [self.layers(model)[i].mlp.dense_h_to_4h]

    def attention(self, model: nn.Module, i: int) -> nn.Module:
        return self.layers(model)[i].self_attention

    def attn_out(self, model: nn.Module, i: int) -> nn.Module:
        return self.attention(model, i).dense

    def projection(self, model: nn.Module, i: int, site: str) -> tuple[nn.Module, IndexFn]:
        s = QKV_SITES.index(_qkv(site))
        hd = self.dims(model.config).head_dim

        def index_fn(idx: Tensor) -> Tensor:
            return (idx // hd) * (3 * hd) + s * hd + idx % hd

        return self.attention(model, i).query_key_value, index_fn

    def check(self, model: nn.Module) -> Dims:
        cfg = model.config
        if getattr(cfg, "pretraining_tp", 1) > 1 and getattr(cfg, "slow_but_exact", False):
            # That path calls F.linear on weight slices and bypasses the modules' hooks.
            raise SiteShapeError("BLOOM with pretraining_tp > 1 and slow_but_exact=True is not supported")
        return super().check(model)


def _qkv(site: str) -> str:
    if site not in QKV_SITES:
        raise ValueError(f"projection() is for {', '.join(QKV_SITES)}; got {site!r}")
    return site


def norm_eps(norm: nn.Module) -> float:
    """The epsilon of an RMSNorm module (families name it ``eps`` or ``variance_epsilon``)."""
    for name in ("eps", "variance_epsilon"):
        value = getattr(norm, name, None)
        if value is not None:
            return float(value)
    raise AttributeError(f"{type(norm).__name__} has neither .eps nor .variance_epsilon")


# ---- registry ---------------------------------------------------------------------

_REGISTRY: dict[str, Adapter] = {}


def register_adapter(adapter_cls: type[Adapter]) -> type[Adapter]:
    """Register an Adapter subclass for each of its ``model_types`` (usable as a decorator)."""
    if not adapter_cls.model_types:
        raise ValueError(f"{adapter_cls.__name__}.model_types is empty")
    instance = adapter_cls()
    for model_type in adapter_cls.model_types:
        _REGISTRY[model_type] = instance
    return adapter_cls


for _cls in (GatedAdapter, GPT2Adapter, BloomAdapter):
    register_adapter(_cls)


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def adapter_for(model_or_config) -> Adapter:  # noqa: ANN001
    """The adapter of a model (its widths are checked against its modules) or of a config."""
    is_model = isinstance(model_or_config, nn.Module)
    config = model_or_config.config if is_model else model_or_config
    model_type = getattr(config, "model_type", None)
    adapter = _REGISTRY.get(model_type)
    if adapter is None:  # an unregistered family: usable when its layout is Llama's (checked on the model)
        from .generic import generic_adapter

        adapter = generic_adapter(config, supported_model_types())
    if is_model:
        adapter.check(model_or_config)
    return adapter


# Families added after the first six live in their own modules; importing them registers them.
from . import families, moe  # noqa: E402,F401
