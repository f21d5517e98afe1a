"""Perplexity: token weighting, bootstrap CI, batch/padding invariance."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from neuronspec.evaluate import perplexity, ppl_increase
from neuronspec.models.tiny import ARCHITECTURES, tiny_model

TEXTS = [
    "the cat sat on the mat.",
    "hi",
    "a much longer document, which has many more tokens than the others do!",
    "bonjour, ça va?",
    "short one",
    "numbers 0123456789 and more",
]


def test_token_weighted_against_hand_computation(char_tokenizer, full_logprobs) -> None:
    model = tiny_model("llama")
    result = perplexity(model, char_tokenizer, TEXTS, batch_size=4, bootstrap=0)
    nll = [float(-full_logprobs(model, char_tokenizer(t)["input_ids"]).sum()) for t in TEXTS]
    tokens = [len(char_tokenizer(t)["input_ids"]) - 1 for t in TEXTS]
    assert result.doc_tokens == tokens == [len(t) for t in TEXTS]  # BOS + chars, first is context
    assert result.doc_nll == pytest.approx(nll, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(sum(nll) / sum(tokens)), rel=1e-5)
    assert result.tokens == sum(tokens) and result.docs == len(TEXTS)
    mean_of_doc_ppl = sum(math.exp(n / k) for n, k in zip(nll, tokens)) / len(TEXTS)
    assert result.ppl != pytest.approx(mean_of_doc_ppl, rel=1e-4)  # it is token-, not document-weighted
    assert result.ci_low is None and result.ci_high is None


def test_bootstrap_ci_contains_estimate_and_is_seeded(char_tokenizer) -> None:
    model = tiny_model("gpt2")
    a = perplexity(model, char_tokenizer, TEXTS, bootstrap=500, seed=3)
    b = perplexity(model, char_tokenizer, TEXTS, bootstrap=500, seed=3)
    c = perplexity(model, char_tokenizer, TEXTS, bootstrap=500, seed=4)
    assert a.ci_low <= a.ppl <= a.ci_high and a.ci_low < a.ci_high
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    json.dumps(a.to_dict(), allow_nan=False)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batch_size_and_padding_invariance(arch: str, char_tokenizer) -> None:
    model = tiny_model(arch)
    one = perplexity(model, char_tokenizer, TEXTS, batch_size=1, bootstrap=0)
    four = perplexity(model, char_tokenizer, TEXTS, batch_size=4, bootstrap=0)
    assert four.ppl == pytest.approx(one.ppl, rel=1e-5, abs=1e-5)
    assert four.doc_nll == pytest.approx(one.doc_nll, rel=1e-5, abs=1e-5)


def test_documents_truncation_and_errors(char_tokenizer) -> None:
    model = tiny_model("bloom")
    docs = [SimpleNamespace(id=str(i), lang="en", text=t, meta={}) for i, t in enumerate(TEXTS)]
    as_docs = perplexity(model, char_tokenizer, docs, bootstrap=0)
    as_strings = perplexity(model, char_tokenizer, TEXTS, bootstrap=0)
    assert as_docs.ppl == as_strings.ppl
    cut = perplexity(model, char_tokenizer, TEXTS, max_tokens=5, bootstrap=0)
    assert cut.doc_tokens == [min(4, len(t)) for t in TEXTS]
    with pytest.raises(ValueError, match="at least one document"):
        perplexity(model, char_tokenizer, [""], bootstrap=0)


def test_ppl_increase() -> None:
    assert ppl_increase(10.0, 15.0) == pytest.approx(50.0)
    assert ppl_increase(20.0, 10.0) == pytest.approx(-50.0)
    with pytest.raises(ValueError):
        ppl_increase(0.0, 1.0)


def test_token_budget_changes_batching_not_the_result(char_tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """batch_tokens packs length-sorted documents to a padded-token budget; the per-document
    NLL is the same as with plain batches (padding never enters a prediction)."""
    import neuronspec.evaluate.logprobs as logprobs

    shapes: list[tuple[int, int]] = []
    decoder = logprobs.decoder_of

    def recording(model):  # noqa: ANN001, ANN202
        inner = decoder(model)

        def call(input_ids, **kw):  # noqa: ANN001, ANN202
            shapes.append(tuple(input_ids.shape))
            return inner(input_ids=input_ids, **kw)
        return call

    model = tiny_model("llama")
    plain = perplexity(model, char_tokenizer, TEXTS, batch_size=8, bootstrap=0)
    monkeypatch.setattr(logprobs, "decoder_of", recording)
    packed = perplexity(model, char_tokenizer, TEXTS, batch_size=8, batch_tokens=80, bootstrap=0)
    assert all(b * t <= 80 or b == 1 for b, t in shapes) and len(shapes) > 1
    assert sorted(b for b, _ in shapes) != [len(TEXTS)]
    assert packed.doc_nll == pytest.approx(plain.doc_nll, rel=1e-5)
    assert packed.doc_tokens == plain.doc_tokens
