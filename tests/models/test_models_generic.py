"""Families without an adapter: served by layout when it is Llama's, refused by name otherwise.

Ministral (no adapter) runs every parametrised test through ARCHITECTURES; here: what the
layout check refuses, and the rotary check that guards the q/k score where a layout looks
like Llama's but attention rotates differently (Helium: interleaved pairs; SmolLM3: layers
without rotary).
"""

from __future__ import annotations

import pytest
import torch
import transformers

from neuronspec.methods.plnd import plnd_statistics
from neuronspec.models.forward import iter_batches
from neuronspec.models.generic import GenericGatedAdapter
from neuronspec.models.sites import UnsupportedArchitecture, adapter_for
from neuronspec.models.tiny import tiny_model

COMMON = dict(vocab_size=96, num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
DOCS = [[1, 5, 9, 33, 40, 41, 7, 8], [1, 60, 61, 3, 4]]


def _model(config: transformers.PretrainedConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def _plnd(model: torch.nn.Module, sites: list[str]):  # noqa: ANN202
    return plnd_statistics(model, iter_batches(DOCS, batch_size=2, pad_id=0), sites)


def test_llama_layout_needs_no_adapter() -> None:
    model = tiny_model("ministral")
    assert isinstance(adapter_for(model), GenericGatedAdapter)
    assert isinstance(adapter_for(model.config), GenericGatedAdapter)  # dims from the config alone (plan time)


def test_other_layout_is_refused_naming_what_differs_and_how_to_add_an_adapter() -> None:
    model = _model(transformers.Olmo3Config(**COMMON))  # post-sublayer norms, q/k norms
    with pytest.raises(UnsupportedArchitecture) as err:
        adapter_for(model)
    msg = str(err.value)
    for part in ("'olmo3'", "post_feedforward_layernorm", "self_attn.q_norm", "input_layernorm not found",
                 "subclass neuronspec.models.sites.Adapter", "register_adapter"):
        assert part in msg, part


@pytest.mark.parametrize("family,config", [
    ("helium", transformers.HeliumConfig(**COMMON, head_dim=8)),  # rotary pairs (2i, 2i+1), not (i, i + D/2)
    ("smollm3", transformers.SmolLM3Config(**COMMON, no_rope_layers=[0, 0])),  # no rotary at all
])
def test_rotary_the_qk_score_cannot_follow_is_refused(family: str, config) -> None:  # noqa: ANN001
    model = _model(config)
    assert isinstance(adapter_for(model), GenericGatedAdapter)
    assert _plnd(model, ["ffn", "attn.v"])["ffn"].n_docs == len(DOCS)  # sites that do not read rotary work
    with pytest.raises(UnsupportedArchitecture, match="half-split rotary"):
        _plnd(model, ["attn.q"])


def test_rotary_check_passes_a_llama_layout() -> None:
    stats = _plnd(tiny_model("ministral"), ["attn.q", "attn.k"])
    assert stats["attn.q"].n_docs == len(DOCS)
