"""Tiny randomly initialised models of every supported architecture, built from configs.

Tests and benchmarks use these instead of downloads: same module layout as the real
checkpoints, a few thousand parameters, deterministic for a seed.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

ARCHITECTURES = ("llama", "mistral", "qwen2", "gemma3_text", "gpt2", "bloom", "gemma2", "olmo2")


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
    # ---- sandwich-norm families (post-sublayer norms) ----
    elif arch == "gemma2":
        from transformers import Gemma2Config

        # caps far below the real 50 / 30 so that they bend a tiny model's small logits
        cfg = Gemma2Config(**common, **gated, query_pre_attn_scalar=16, sliding_window=16,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                           attn_logit_softcapping=0.5, final_logit_softcapping=2.0)
    elif arch == "olmo2":
        from transformers import Olmo2Config

        cfg = Olmo2Config(**common, **gated)
    else:
        raise ValueError(f"no tiny config for {arch!r}; known: {', '.join(ARCHITECTURES)}")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_model(arch: str, seed: int = 0, **overrides: object) -> torch.nn.Module:
    """A randomly initialised, eval-mode, float32 model of `arch` (deterministic for `seed`)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **overrides), dtype=torch.float32)
    # Random init leaves some norms at exactly 1 / biases at 0; perturb so tests see every path.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()
