"""`run_evaluator`: one signature, JSON-ready dicts with a headline."""

from __future__ import annotations

import json

import pytest

from neuronspec.evaluate import EVALUATORS, evaluator_options, run_evaluator
from neuronspec.models.tiny import tiny_model

TEXTS = ["the cat sat on the mat.", "bonjour, ça va?", "numbers 0123456789"]


def test_registry_names() -> None:
    assert set(EVALUATORS) == {"perplexity", "choice", "generation"}
    assert "normalize" in evaluator_options("choice") and "lang" not in evaluator_options("generation")


def test_perplexity_headline(char_tokenizer) -> None:
    evaluated = run_evaluator("perplexity", tiny_model("llama"), char_tokenizer, TEXTS, {"bootstrap": 50}, "en", 7)
    assert evaluated.headline.n == len(TEXTS) and evaluated.headline.higher_is_better is False
    out = evaluated.to_json()
    assert out["metric"] == "perplexity" and out["higher_is_better"] is False
    assert out["value"] == out["ppl"] and out["ci"] == [out["ci_low"], out["ci_high"]]
    assert out["seed"] == 7 and out["lang"] == "en" and out["kind"] == "perplexity"
    again = run_evaluator("perplexity", tiny_model("llama"), char_tokenizer, TEXTS, {"bootstrap": 50}, "en", 7).to_json()
    assert json.dumps(out, allow_nan=False) == json.dumps(again, allow_nan=False)
    no_ci = run_evaluator("perplexity", tiny_model("llama"), char_tokenizer, TEXTS, {"bootstrap": 0}, "en", 0)
    assert no_ci.headline.ci is None


def test_choice_headline(char_tokenizer) -> None:
    items = [{"meta": {"prompt": "the sky is", "choices": [" blue", " red"], "label": 0}}] * 3
    out = run_evaluator("choice", tiny_model("gpt2"), char_tokenizer, items, {"normalize": "length"}, "en", 0).to_json()
    assert out["metric"] == "accuracy" and out["higher_is_better"] is True and out["value"] == out["accuracy"]
    json.dumps(out, allow_nan=False)


def test_generation_headline_and_metric_choice(char_tokenizer) -> None:
    pytest.importorskip("lingua")
    items = [{"meta": {"prompt": "hello", "reference": "hello world"}}] * 2
    options = {"max_new_tokens": 4, "languages": ["en", "fr", "zh"], "bootstrap": 20}
    rouge = run_evaluator("generation", tiny_model("qwen2"), char_tokenizer, items, options, "en", 0).to_json()
    assert rouge["metric"] == "rouge_l" and rouge["value"] == rouge["rouge_l"] and rouge["ci"] == rouge["rouge_l_ci"]
    fid = run_evaluator("generation", tiny_model("qwen2"), char_tokenizer, items, {**options, "metric": "fidelity"}, "en", 0).to_json()
    assert fid["metric"] == "fidelity" and fid["value"] == fid["fidelity"]
    json.dumps(fid, allow_nan=False)


def test_errors_name_the_alternatives(char_tokenizer) -> None:
    model = tiny_model("bloom")
    with pytest.raises(ValueError, match="unknown evaluator 'bleu'.*perplexity"):
        run_evaluator("bleu", model, char_tokenizer, TEXTS, {}, "en", 0)
    with pytest.raises(ValueError, match="unknown option.*batchsize.*allowed: batch_size"):
        run_evaluator("perplexity", model, char_tokenizer, TEXTS, {"batchsize": 2}, "en", 0)
    with pytest.raises(ValueError, match="no metric 'bleu'"):
        run_evaluator("perplexity", model, char_tokenizer, TEXTS, {"metric": "bleu"}, "en", 0)
