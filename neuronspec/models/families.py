"""Adapters of Gemma 2/3 and OLMo 2 (sandwich norms), Qwen 3, Phi-3 and GPT-NeoX (Pythia): where
their neurons live.

Fused projections are split into the neurons the separate projections would have, so a
site means the same thing in every family: a q neuron of Phi-3 is output coordinate n of
the query part of ``qkv_proj``; an ``ffn`` neuron of Phi-3 owns row n of the gate half and
row n of the up half of ``gate_up_proj`` (and column n of ``down_proj``). Registered by
importing :mod:`neuronspec.models.sites`.
"""

from __future__ import annotations

from torch import Tensor, nn

from .sites import QKV_SITES, Adapter, Dims, GatedAdapter, IndexFn, register_adapter


class _SandwichAdapter(GatedAdapter):
    """Llama module names; each sublayer's output is normed before the residual add."""

    def post_norm(self, model: nn.Module, i: int, which: str) -> nn.Module:
        layer = self.layers(model)[i]
        return {"ffn": layer.post_feedforward_layernorm, "attn": layer.post_attention_layernorm}[which]


@register_adapter
class Gemma2Adapter(_SandwichAdapter):
    """Gemma 2: (1 + weight) RMSNorms; soft-capped attention logits (``attn_logit_softcapping``, read
    by the q/k score) and final logits (evaluate.logprobs); sliding-window layers (in the mask)."""

    model_types = ("gemma2",)

    def rms_norm_params(self, norm: nn.Module) -> tuple[Tensor, float]:
        return 1.0 + norm.weight.detach().float(), float(norm.eps)  # Gemma's RMSNorm scales by (1 + weight)


@register_adapter
class Gemma3Adapter(Gemma2Adapter):
    """Gemma 3: the text-only model, or the text part of Gemma3ForConditionalGeneration.

    Gemma 2's blocks plus an RMSNorm per head (q_norm / k_norm) *after* the projection;
    the q/k neurons are the projection outputs, before that norm.
    """

    model_types = ("gemma3_text", "gemma3")

    def text_config(self, config):  # noqa: ANN001, ANN201
        return getattr(config, "text_config", None) or config

    def base(self, model: nn.Module) -> nn.Module:
        inner = model.model
        return getattr(inner, "language_model", inner)

    def qk_norm_gains(self, model: nn.Module, i: int) -> tuple[Tensor, Tensor]:
        attn = self.attention(model, i)  # Gemma3RMSNorm scales by (1 + weight)
        return 1.0 + attn.q_norm.weight.detach().float(), 1.0 + attn.k_norm.weight.detach().float()

    def qk_norms(self, model: nn.Module, i: int) -> tuple[nn.Module, nn.Module]:
        attn = self.attention(model, i)
        return attn.q_norm, attn.k_norm


@register_adapter
class Olmo2Adapter(_SandwichAdapter):
    """OLMo 2: no pre-norms; q/k RMSNorms over the *whole* projection (heads·head_dim) before the head
    split: zeroing a q/k neuron (a projection output, before that norm) rescales every head (plnd_qk)."""

    model_types = ("olmo2",)
    qk_norm_per_head = False

    def qk_norms(self, model: nn.Module, i: int) -> tuple[nn.Module, nn.Module]:
        return self.attention(model, i).q_norm, self.attention(model, i).k_norm

    def qk_norm_gains(self, model: nn.Module, i: int) -> tuple[Tensor, Tensor]:
        d = self.dims(model.config).head_dim  # [heads, 1, head_dim]: broadcasts over [B, heads, T, D]
        return tuple(n.weight.detach().float().view(-1, 1, d) for n in self.qk_norms(model, i))  # type: ignore[return-value]


def _offset(k: int) -> IndexFn:
    """Neuron n is coordinate k + n of a fused module's output (a new function even for k = 0,
    so :meth:`Adapter.check` compares against the fused width, not the site's)."""
    return lambda idx: idx + k


class Qwen3Adapter(GatedAdapter):
    """Qwen 3: Llama's layout plus an RMSNorm per head on q and k (gain ``weight``, not Gemma's
    ``1 + weight``) after the projection and before RoPE; the q/k neurons are the projection
    outputs, before that norm, as for Gemma 3."""

    model_types = ("qwen3",)
    qk_norm_heads_first = False  # Qwen3Attention normalises q_proj(x).view(B, T, heads, D), then transposes

    def qk_norm_gains(self, model: nn.Module, i: int) -> tuple[Tensor, Tensor]:
        attn = self.attention(model, i)
        return attn.q_norm.weight.detach().float(), attn.k_norm.weight.detach().float()

    def qk_norms(self, model: nn.Module, i: int) -> tuple[nn.Module, nn.Module]:
        attn = self.attention(model, i)
        return attn.q_norm, attn.k_norm


class Phi3Adapter(GatedAdapter):
    """Phi-3: fused ``self_attn.qkv_proj`` ([q | k | v] along the output, as Phi3Attention slices
    it) and ``mlp.gate_up_proj`` ([gate | up], ``chunk(2)``). Rotary may cover only part of a head
    (``partial_rotary_factor``); :func:`rotary_of` hands the q/k score the tables as applied."""

    model_types = ("phi3",)

    def ffn_in(self, model: nn.Module, i: int) -> list[nn.Module]:
        return [self.layers(model)[i].mlp.gate_up_proj]

    def ffn_act(self, model: nn.Module, i: int) -> nn.Module:
        return self.layers(model)[i].mlp.activation_fn

    def ffn_in_slices(self, model: nn.Module, i: int) -> list[tuple[nn.Module, IndexFn]]:
        fused = self.layers(model)[i].mlp.gate_up_proj
        width = self.dims(model.config).intermediate
        return [(fused, _offset(width)), (fused, _offset(0))]  # [up, gate], as the other gated families

    def projection(self, model: nn.Module, i: int, site: str) -> tuple[nn.Module, IndexFn]:
        d = self.dims(model.config)
        starts = (0, d.heads * d.head_dim, (d.heads + d.kv_heads) * d.head_dim)
        return self.attention(model, i).qkv_proj, _offset(starts[QKV_SITES.index(site)])


class GPTNeoXAdapter(Adapter):
    """GPT-NeoX / Pythia: ``gpt_neox.layers[i].{attention.{query_key_value, dense}, mlp.{dense_h_to_4h,
    dense_4h_to_h}}``, ``gpt_neox.final_layer_norm``.

    ``query_key_value`` is laid out per head: GPTNeoXAttention views its output as
    (B, T, heads, 3 * head_dim) and chunks the last dimension into q, k, v, so neuron
    n = h * head_dim + d of site s (0, 1, 2) is coordinate h * 3 * head_dim + s * head_dim + d
    (BLOOM's layout). Attention and MLP may run in parallel (``use_parallel_residual``): each
    site's neurons are still the inputs/outputs of the same modules. Rotary covers the first
    ``rotary_pct`` of each head.
    """

    model_types = ("gpt_neox",)

    def dims(self, config) -> Dims:  # noqa: ANN001
        heads = config.num_attention_heads
        return Dims(config.num_hidden_layers, config.hidden_size, config.intermediate_size, heads, heads,
                    config.hidden_size // heads)

    def base(self, model: nn.Module) -> nn.Module:
        return model.gpt_neox

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return self.base(model).layers

    def final_norm(self, model: nn.Module) -> nn.Module:
        return self.base(model).final_layer_norm

    def ffn_down(self, model: nn.Module, i: int) -> nn.Module:
        return self.layers(model)[i].mlp.dense_4h_to_h

    def ffn_in(self, model: nn.Module, i: int) -> list[nn.Module]:
        return [self.layers(model)[i].mlp.dense_h_to_4h]

    def attention(self, model: nn.Module, i: int) -> nn.Module:
        return self.layers(model)[i].attention

    def attn_out(self, model: nn.Module, i: int) -> nn.Module:
        return self.attention(model, i).dense

    def projection(self, model: nn.Module, i: int, site: str) -> tuple[nn.Module, IndexFn]:
        s = QKV_SITES.index(site)
        hd = self.dims(model.config).head_dim

        def index_fn(idx: Tensor) -> Tensor:
            return (idx // hd) * (3 * hd) + s * hd + idx % hd

        return self.attention(model, i).query_key_value, index_fn


for _cls in (Qwen3Adapter, Phi3Adapter, GPTNeoXAdapter):
    register_adapter(_cls)
