"""Shared fixtures: a character-level tokenizer that fits the tiny models' 96-token vocab."""

from __future__ import annotations

import pytest
import torch

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]  # ids 0..3 match the tiny configs (pad 0, bos 1, eos 2)
CHARACTERS = (
    "abcdefghijklmnopqrstuvwxyz"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "0123456789"
    " .,!?'-:;()\"/"
    "éèàçùôêîâ"
    "中文你好我是的天"
)


def build_char_tokenizer():
    """A `PreTrainedTokenizerFast` with one token per character and BOS added, like Gemma's."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(CHARACTERS))}
    assert len(vocab) == 96
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine spinning
    OpenMP workers make these tests several times slower; restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def char_tokenizer():
    return build_char_tokenizer()


def _full_logprobs(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """Reference: log p(ids[t] | ids[:t]) as cross-entropy of the full model's logits,
    one unpadded sequence at a time."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    return -torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")


@pytest.fixture(scope="session")
def full_logprobs():
    return _full_logprobs
