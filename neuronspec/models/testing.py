"""Tiny tokenizer and LoadedModel for tests of every layer (no downloads, milliseconds).

``tiny.py`` builds the models; this adds a character-level tokenizer with the same
96-token vocabulary and special ids (pad 0, bos 1, eos 2) so a tiny model can stand in
for a real one wherever a :class:`~neuronspec.models.loading.LoadedModel` is expected.
"""

from __future__ import annotations

from typing import Any

from .loading import LoadedModel, state_dict_digest, tokenizer_identity
from .sites import adapter_for
from .tiny import tiny_model

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
CHARS = "".join(chr(c) for c in range(32, 32 + 96 - len(SPECIALS)))  # space .. '{'


def tiny_tokenizer() -> Any:
    """A character-level fast tokenizer: 96 ids, BOS prepended, unknown chars -> <unk>."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate((*SPECIALS, *CHARS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def tiny_loaded(arch: str, seed: int = 0, **overrides: object) -> LoadedModel:
    """A tiny model of `arch` with the tiny tokenizer, packaged like a real load."""
    model = tiny_model(arch, seed=seed, **overrides)
    tokenizer = tiny_tokenizer()
    adapter = adapter_for(model)
    identity = {"id": f"tiny-{arch}", "source": "tiny", "weights_sha256": state_dict_digest(model),
                "dtype": "float32", "architecture": arch, "tokenizer": tokenizer_identity(tokenizer)}
    return LoadedModel(model, tokenizer, adapter, adapter.dims(model.config), identity)


def tiny_gemma3_multimodal(seed: int = 0) -> Any:
    """A tiny Gemma3ForConditionalGeneration (SigLIP tower + the tiny gemma3 text config)."""
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        SiglipVisionConfig,
    )

    from .tiny import tiny_config

    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                image_size=16, patch_size=8)
    cfg = Gemma3Config(text_config=tiny_config("gemma3_text").to_dict(), vision_config=vision.to_dict(),
                       mm_tokens_per_image=4, image_token_index=95, boi_token_index=93, eoi_token_index=94)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()
