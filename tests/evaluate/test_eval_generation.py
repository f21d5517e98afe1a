"""Generation on tiny models: left-padded batched greedy decoding equals a manual loop."""

from __future__ import annotations

import json

import pytest
import torch

from neuronspec.evaluate.generation import generation, greedy_generate
from neuronspec.models.tiny import tiny_model

pytest.importorskip("lingua")

PROMPTS = ["hello there", "a", "the quick brown fox jumps", "bonjour"]
LANGS = ["en", "fr", "zh"]


def manual_greedy(model, tokenizer, prompt: str, steps: int) -> str:
    """Reference decoding: one unpadded full forward per step, argmax, stop at EOS."""
    ids, new = tokenizer(prompt)["input_ids"], []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            ids.append(token)
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "bloom"])
def test_batched_left_padding_equals_manual_greedy(arch: str, char_tokenizer) -> None:
    model = tiny_model(arch)
    batched = greedy_generate(model, char_tokenizer, PROMPTS, max_new_tokens=6, batch_size=4)
    assert batched == [manual_greedy(model, char_tokenizer, p, 6) for p in PROMPTS]
    assert char_tokenizer.padding_side == "right"  # we pad by hand; the tokenizer is untouched


def test_generation_result(char_tokenizer) -> None:
    model = tiny_model("qwen2")
    items = [
        {"id": f"d{i}", "meta": {"prompt": p, "reference": ref}}
        for i, (p, ref) in enumerate(zip(PROMPTS, ["hello you", "a b c", "the lazy dog", "bonjour madame"]))
    ]
    a = generation(model, char_tokenizer, items, lang="en", languages=LANGS, max_new_tokens=8, batch_size=3,
                   bootstrap=100, seed=0)
    b = generation(model, char_tokenizer, items, lang="en", languages=LANGS, max_new_tokens=8, batch_size=1,
                   bootstrap=100, seed=0)
    assert a.to_dict() == b.to_dict()  # deterministic, and batch size does not change outputs
    assert a.n == 4 and [s["id"] for s in a.samples] == ["d0", "d1", "d2", "d3"]
    assert 0.0 <= a.rouge_l <= 1.0 and 0.0 <= a.fidelity <= 1.0
    assert a.fidelity == pytest.approx(sum(s["faithful"] for s in a.samples) / 4)
    assert a.rouge_l_ci[0] <= a.rouge_l <= a.rouge_l_ci[1]
    json.dumps(a.to_dict(), allow_nan=False)


def test_empty_outputs_are_unfaithful_and_score_zero(char_tokenizer) -> None:
    """A hook that forces EOS first (as a mask would act) yields empty outputs."""
    model = tiny_model("gpt2")

    def force_eos(module, inputs, logits):
        logits = logits.clone()
        logits[..., char_tokenizer.eos_token_id] = 1e4
        return logits

    handle = model.lm_head.register_forward_hook(force_eos)
    try:
        items = [{"meta": {"prompt": "hello", "reference": "hello world"}}] * 2
        result = generation(model, char_tokenizer, items, lang="en", languages=LANGS, max_new_tokens=4)
    finally:
        handle.remove()
    assert [s["output"] for s in result.samples] == ["", ""]
    assert result.fidelity == 0.0 and result.rouge_l == 0.0
    with pytest.raises(ValueError, match="max_new_tokens"):
        generation(model, char_tokenizer, items, lang="en", languages=LANGS, max_new_tokens=0)


def test_unsupported_language_fails_before_decoding(char_tokenizer) -> None:
    items = [{"meta": {"prompt": "hello", "reference": "x"}}]
    with pytest.raises(ValueError, match="cannot identify language 'xx'"):
        generation(tiny_model("gpt2"), char_tokenizer, items, lang="xx", languages=LANGS)
    with pytest.raises(KeyError, match="reference"):
        generation(tiny_model("gpt2"), char_tokenizer, [{"meta": {"prompt": "p"}}], lang="en", languages=LANGS)


def test_stop_strings_cut_outputs(char_tokenizer) -> None:
    model = tiny_model("llama")
    full = greedy_generate(model, char_tokenizer, ["a"], max_new_tokens=8)[0]
    assert len(full) > 3
    stop = full[2]
    cut = greedy_generate(model, char_tokenizer, ["a"], max_new_tokens=8, stop=[stop, "\n"])[0]
    assert cut == full[: full.index(stop)].strip()
