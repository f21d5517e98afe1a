"""Tiny randomly initialised models of every supported architecture, built from configs.

Tests and benchmarks use these instead of downloads: same module layout as the real
checkpoints, a few thousand parameters, deterministic for a seed.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

#: "ministral" has no adapter of its own: the layout-checked Llama one serves it (models/generic.py)
ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma3_text", "gpt2", "bloom", "qwen3", "phi3", "gpt_neox", "ministral", "gemma2", "olmo2")
#: mixture-of-experts families: ffn neurons are expert neurons (models/moe.py)
MOE_ARCHITECTURES = ("mixtral", "qwen2_moe")


def tiny_config(arch: str, **overrides: object) -> PretrainedConfig:
    """A small config of `arch` with grouped-query attention where the family allows it."""
    from transformers import (
        BloomConfig,
        Gemma3TextConfig,
        GPT2Config,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
    )

    common = dict(vocab_size=96, num_hidden_layers=3, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    gated = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=128, head_dim=8)
    if arch == "llama":
        cfg = LlamaConfig(**common, **gated)
    elif arch == "mistral":
        cfg = MistralConfig(**common, **gated, sliding_window=64)
    elif arch == "qwen2":
        cfg = Qwen2Config(**common, **gated)
    elif arch in ("gemma3", "gemma3_text"):
        cfg = Gemma3TextConfig(**common, **{**gated, "head_dim": 8}, query_pre_attn_scalar=8,
                               sliding_window=16, layer_types=["sliding_attention", "sliding_attention", "full_attention"])
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=96, n_layer=3, n_embd=32, n_head=4, n_inner=48, n_positions=128,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    elif arch == "bloom":
        cfg = BloomConfig(vocab_size=96, n_layer=3, hidden_size=32, n_head=4, pad_token_id=0,
                          bos_token_id=1, eos_token_id=2)
    elif arch == "gemma2":
        from transformers import Gemma2Config

        # caps far below the real 50 / 30 so that they bend a tiny model's small logits
        cfg = Gemma2Config(**common, **gated, query_pre_attn_scalar=16, sliding_window=16,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                           attn_logit_softcapping=0.5, final_logit_softcapping=2.0)
    elif arch == "olmo2":
        from transformers import Olmo2Config

        cfg = Olmo2Config(**common, **gated)
    elif arch in _ADDED:
        cfg = _ADDED[arch](common, gated)
    else:
        raise ValueError(f"no tiny config for {arch!r}; known: {', '.join(ARCHITECTURES + MOE_ARCHITECTURES)}")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


# ---- families added after the first six -------------------------------------------------


def _qwen3(common: dict, gated: dict) -> PretrainedConfig:
    from transformers import Qwen3Config

    return Qwen3Config(**common, **gated)


def _phi3(common: dict, gated: dict) -> PretrainedConfig:
    """Fused qkv / gate-up projections, and rotary over half of each head (as Phi-4-mini's 0.75, smaller)."""
    from transformers import Phi3Config

    return Phi3Config(**common, **{k: v for k, v in gated.items() if k != "head_dim"}, partial_rotary_factor=0.5,
                      original_max_position_embeddings=128)


def _gpt_neox(common: dict, gated: dict) -> PretrainedConfig:
    """Pythia's shape: parallel attention and MLP, rotary over a quarter of each head (4 of 16)."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(**common, hidden_size=48, intermediate_size=64, num_attention_heads=3,
                         max_position_embeddings=128, rotary_pct=0.25, use_parallel_residual=True)


def _ministral(common: dict, gated: dict) -> PretrainedConfig:
    from transformers import MinistralConfig

    return MinistralConfig(**common, **gated, sliding_window=16,
                           layer_types=["sliding_attention", "sliding_attention", "full_attention"])


def _mixtral(common: dict, gated: dict) -> PretrainedConfig:
    """4 experts of 12 neurons, 2 per token: ffn has 48 neurons per layer, as the dense tiny models."""
    from transformers import MixtralConfig

    return MixtralConfig(**common, **{**gated, "intermediate_size": 12}, num_local_experts=4, num_experts_per_tok=2,
                         sliding_window=None)


def _qwen2_moe(common: dict, gated: dict) -> PretrainedConfig:
    """4 routed experts of 8 neurons (2 per token, probabilities not renormalised) and a shared one of 16."""
    from transformers import Qwen2MoeConfig

    return Qwen2MoeConfig(**common, **{k: v for k, v in gated.items() if k != "head_dim"}, moe_intermediate_size=8,
                          shared_expert_intermediate_size=16, num_experts=4, num_experts_per_tok=2,
                          norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[])


_ADDED = {"qwen3": _qwen3, "phi3": _phi3, "gpt_neox": _gpt_neox, "ministral": _ministral, "mixtral": _mixtral,
          "qwen2_moe": _qwen2_moe}


def tiny_model(arch: str, seed: int = 0, **overrides: object) -> torch.nn.Module:
    """A randomly initialised, eval-mode, float32 model of `arch` (deterministic for `seed`)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **overrides), dtype=torch.float32)
    # Random init leaves some norms at exactly 1 / biases at 0; perturb so tests see every path.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()
