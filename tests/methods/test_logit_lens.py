"""Logit lens on a tiny model against a manual projection, and token-language classification."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from neuronspec.methods.logit_lens import (
    TokenClassifier,
    category,
    lens_topk,
    logit_lens,
    token_script,
)
from neuronspec.models.forward import encode, hidden_forward, iter_batches
from neuronspec.models.testing import tiny_tokenizer
from neuronspec.models.tiny import tiny_model

TEXTS = ["Hello world", "a b c 12", "Guten Tag!", "xyz"]


def _manual(model, tokenizer, encodings, classifier, language, final_norm, k, positions="last"):
    """Per layer: categories of the top-k of the full (unchunked) projection of hidden_forward states."""
    layers = len(model.model.layers)
    counts = {c: [0] * layers for c in ("english", "prompt", "other", "ambiguous", "non_linguistic")}
    totals = [0] * layers
    for ids in encodings:
        x = torch.tensor([ids])
        for l in range(layers):
            with torch.no_grad():
                h = hidden_forward(model, x, torch.ones_like(x), last_layer=l)[0]
                h = h[-1:] if positions == "last" else h[1:]
                if final_norm:
                    h = model.model.norm(h)
                logits = h @ model.lm_head.weight.T  # every logit, no chunks
            for tid in logits.topk(k, dim=-1).indices.flatten().tolist():
                for c in category(classifier(tid), language):
                    counts[c][l] += 1
                totals[l] += 1
    return counts, totals


@pytest.mark.parametrize("final_norm", [True, False])
@pytest.mark.parametrize("positions", ["last", "all"])
def test_lens_matches_manual_projection(final_norm: bool, positions: str) -> None:
    model, tok = tiny_model("llama"), tiny_tokenizer()
    enc = encode(tok, TEXTS, max_tokens=32)
    classifier = TokenClassifier(tok, ["en", "zh"])
    res = logit_lens(model, iter_batches(enc, batch_size=3, pad_id=0), "en", classifier, top_k=3,
                     positions=positions, final_norm=final_norm)
    counts, totals = _manual(model, tok, enc, classifier, "en", final_norm, 3, positions)
    assert res.totals == totals and res.counts == counts
    ratios = res.ratios()
    for l in range(3):  # English prompts: english + other + ambiguous + non-linguistic = 1
        assert sum(ratios[c][l] for c in ("english", "other", "ambiguous", "non_linguistic")) == pytest.approx(1.0)
    assert ratios["prompt"] == ratios["english"]


@pytest.mark.parametrize("arch", ["gemma3_text", "gemma2", "olmo2", "qwen3", "phi3", "gpt_neox", "ministral"])
def test_last_layer_with_final_norm_is_the_model_prediction_and_chunks_are_exact(arch: str) -> None:
    model = tiny_model(arch)
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        h = hidden_forward(model, ids, torch.ones_like(ids), last_layer=2)[:, -1]
        top = lens_topk(model, h, 5, final_norm=True, chunk_elements=7)  # 7 logits per chunk: 14 chunks
        logits = model(input_ids=ids).logits[:, -1]
    assert torch.equal(top, logits.topk(5, dim=-1).indices)


def test_token_classification() -> None:
    class Tok:
        all_special_ids = [0]

        def decode(self, ids):
            return {0: "<s>", 5: "Привет", 6: " maison", 7: "ab", 8: "中文", 9: "...", 10: "Ωμέγα"}[ids[0]]

    c = TokenClassifier(Tok(), ["fr", "zh", "ru"])
    assert [c(i) for i in (0, 5, 7, 8, 9, 10)] == ["none", "ru", "latin/unknown", "zh", "none", "el"]
    if importlib.util.find_spec("lingua"):
        assert c(6) == "fr"  # lingua among the Latin-script universe (en, fr)
    assert TokenClassifier(Tok(), ["zh"])(6) == "en"  # the only Latin-script language in the universe
    assert token_script("日本語です") == ("Kana", 5) and token_script("ＡＢＣ") == ("Latin", 3)
    assert category("en", "en") == ["english", "prompt"] and category("el", "zh") == ["other"]
    assert category("zh", "zh") == ["prompt"] and category("latin/unknown", "fr") == ["ambiguous"]


def test_plot(tmp_path) -> None:
    model, tok = tiny_model("gpt2"), tiny_tokenizer()
    enc = encode(tok, TEXTS, max_tokens=32)
    classifier = TokenClassifier(tok, ["en", "fr"], use_lingua=False)
    res = {lang: logit_lens(model, iter_batches(enc, batch_size=4, pad_id=0), lang, classifier) for lang in ("en", "fr")}
    from neuronspec.report.model import LogitLens
    from neuronspec.report.plots import plot_logit_lens

    typed = {lang: LogitLens.model_validate(r.to_json()) for lang, r in res.items()}  # as a run's results hold it
    assert plot_logit_lens(typed, tmp_path / "lens.png").stat().st_size > 0
    assert res["fr"].to_json()["ratios"]["prompt"] == [0.0, 0.0, 0.0]
