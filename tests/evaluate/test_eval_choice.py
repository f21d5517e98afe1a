"""Multiple choice: batched scoring equals brute-force per-choice scoring."""

from __future__ import annotations

import json

import pytest
import torch

from neuronspec.data.document import Document
from neuronspec.evaluate import load_choice_items, multiple_choice
from neuronspec.evaluate.choice import split_continuation
from neuronspec.models.tiny import ARCHITECTURES, tiny_model

ITEMS = [
    {"meta": {"prompt": "the sky is", "choices": [" blue", " green", " very loud"], "label": 0}},
    {"meta": {"prompt": "2 + 2 = ", "choices": ["4", "22", "five"], "label": 0}},
    {"meta": {"prompt": "capital of france:", "choices": [" paris", " rome"], "label": 1}},
    {"meta": {"prompt": "a", "choices": ["b", "bb", "bbb", "c"], "label": 3}},
]


def brute_force(model, tokenizer, item, full_logprobs, normalize: str) -> list[float]:
    """Score each choice alone: full forward over prompt+choice, sum the choice's log-probs."""
    prompt, scores = item["meta"]["prompt"], []
    for choice in item["meta"]["choices"]:
        context = tokenizer(prompt.rstrip(" "))["input_ids"]
        whole = tokenizer(prompt + choice)["input_ids"]
        n = len(whole) - len(context)
        total = float(full_logprobs(model, whole)[-n:].sum())
        scores.append(total / n if normalize == "length" else total)
    return scores


@pytest.mark.parametrize(("arch", "normalize"), [("llama", "none"), ("gemma3_text", "length"), ("bloom", "none")])
def test_equals_brute_force(arch: str, normalize: str, char_tokenizer, full_logprobs) -> None:
    model = tiny_model(arch)
    result = multiple_choice(model, char_tokenizer, ITEMS, normalize=normalize, bootstrap=0)
    expected = [brute_force(model, char_tokenizer, it, full_logprobs, normalize) for it in ITEMS]
    for got, want in zip(result.scores, expected):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert result.predictions == [max(range(len(s)), key=s.__getitem__) for s in expected]
    labels = [it["meta"]["label"] for it in ITEMS]
    assert result.accuracy == pytest.approx(sum(p == y for p, y in zip(result.predictions, labels)) / len(ITEMS))
    assert result.n == len(ITEMS)


def test_trailing_space_moves_into_the_continuation(char_tokenizer) -> None:
    context, cont = split_continuation(char_tokenizer, "2 + 2 = ", "4")
    assert context == char_tokenizer("2 + 2 =")["input_ids"]
    assert cont == char_tokenizer(" 4", add_special_tokens=False)["input_ids"]


def test_truncation_keeps_the_continuation(char_tokenizer) -> None:
    model = tiny_model("qwen2")
    long = [{"meta": {"prompt": "x" * 100, "choices": [" yes", " no"], "label": 0}}]
    short = [{"meta": {"prompt": "x" * 6, "choices": [" yes", " no"], "label": 0}}]
    a = multiple_choice(model, char_tokenizer, long, max_tokens=10, bootstrap=0)
    b = multiple_choice(model, char_tokenizer, short, max_tokens=10, bootstrap=0)
    assert len(a.scores[0]) == 2 and all(torch.isfinite(torch.tensor(a.scores[0])))
    assert a.scores != b.scores  # the window slid over the prompt, it did not cut " yes"


def test_bootstrap_is_seeded_and_json_ready(char_tokenizer) -> None:
    model = tiny_model("mistral")
    items = ITEMS * 5
    a = multiple_choice(model, char_tokenizer, items, bootstrap=200, seed=1)
    b = multiple_choice(model, char_tokenizer, items, bootstrap=200, seed=1)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert a.ci_low <= a.accuracy <= a.ci_high
    json.dumps(a.to_dict(), allow_nan=False)


def test_load_choice_items(tmp_path, char_tokenizer) -> None:
    path = tmp_path / "task.jsonl"
    rows = [{"id": "q1", "lang": "en", "prompt": "the sky is", "choices": [" blue", " red"], "label": 0},
            {"prompt": "one plus one:", "choices": [" two", " three"], "label": 0}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    items = load_choice_items(path)
    assert [it.id for it in items] == ["q1", "1"] and items[0].lang == "en"
    assert items[1].meta["choices"] == [" two", " three"]
    result = multiple_choice(tiny_model("llama"), char_tokenizer, items, bootstrap=0)
    assert result.n == 2

    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "p", "choices": ["a"], "label": 3}) + "\n")
    with pytest.raises(ValueError, match=r"task.jsonl:2: 'label'"):
        load_choice_items(path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"task.jsonl:1:"):
        load_choice_items(path)


def test_accepts_data_layer_documents(char_tokenizer) -> None:
    docs = [Document(id=str(i), lang="en", text=it["meta"]["prompt"], meta=dict(it["meta"]))
            for i, it in enumerate(ITEMS)]
    model = tiny_model("llama")
    assert multiple_choice(model, char_tokenizer, docs, bootstrap=0) == multiple_choice(
        model, char_tokenizer, ITEMS, bootstrap=0
    )


def old_path_scores(model, tokenizer, items, max_tokens: int) -> list[list[float]]:
    """The scoring this module replaced: every prompt + choice as its own sequence through
    `token_logprobs` (all positions unembedded), summing the trailing continuation log-probs."""
    from neuronspec.evaluate.logprobs import token_logprobs

    scores = []
    for item in items:
        row = []
        for choice in item["meta"]["choices"]:
            context, cont = split_continuation(tokenizer, item["meta"]["prompt"], choice)
            ids = (context + cont)[-max_tokens:]
            k = min(len(cont), len(ids) - 1)
            row.append(float(token_logprobs(model, [ids], pad_id=0)[0][-k:].double().sum()))
        scores.append(row)
    return scores


# longer than the tiny Gemma 3's 16-token sliding window, and cut by max_tokens so that
# one item's choices end up with different contexts
LONG_ITEMS = ITEMS + [
    {"meta": {"prompt": "once upon a time there was a long prompt,", "choices": [" and", " x", " and then some"], "label": 2}},
    {"meta": {"prompt": "y" * 30, "choices": ["z", "zz", "zzzzzzzz"], "label": 1}},
]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shared_prompt_equals_the_old_path(arch: str, char_tokenizer) -> None:
    model = tiny_model(arch)
    max_tokens = 24
    result = multiple_choice(model, char_tokenizer, LONG_ITEMS, max_tokens=max_tokens, bootstrap=0)
    expected = old_path_scores(model, char_tokenizer, LONG_ITEMS, max_tokens)
    for got, want in zip(result.scores, expected):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert result.predictions == [max(range(len(s)), key=s.__getitem__) for s in expected]


def test_shared_prompt_only_unembeds_continuations(char_tokenizer, monkeypatch) -> None:
    """The unembedding sees one row per continuation token, none for the prompt."""
    from neuronspec.evaluate import logprobs

    seen = []
    original = logprobs.target_logprobs
    monkeypatch.setattr(logprobs, "target_logprobs", lambda m, h, t, **kw: seen.append(h.shape[0]) or original(m, h, t, **kw))
    multiple_choice(tiny_model("llama"), char_tokenizer, ITEMS, bootstrap=0)
    expected = [sum(len(split_continuation(char_tokenizer, it["meta"]["prompt"], c)[1]) for c in it["meta"]["choices"])
                for it in ITEMS]
    assert seen == expected
