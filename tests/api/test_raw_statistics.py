"""Results.statistics / activations / documents: the numbers behind a run as DataFrames, checked
against brute force on the tiny model (hooks and a per-token loop written here), against the
stored tensors, and against the selection and evaluation values they explain."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tiny_studies import make_corpus, make_parallel_corpus

import neuronspec as ns
from neuronspec.models.loading import load_model

STUDY = """\
name: raw
model: {{id: {model}}}
languages: [en, fr, de]
corpora:
  detect: {{source: {corpus}, split: detect, docs_per_language: 6, max_tokens: 32, eval_fraction: 0.4}}
  ppl: {{source: {corpus}, split: eval, docs_per_language: 3, max_tokens: 32, eval_fraction: 0.4}}
  parallel: {{source: {parallel}, docs_per_language: 8, max_tokens: 32}}
detect:
  plnd: {{sites: [ffn, attn.v], epsilon: {{quantile: 0.9}}, batch_size: 4}}
  lape: {{corpus: parallel, top_rate: 0.05}}
  linguafranca: {{corpus: parallel, z_threshold: 1.0}}
neurons:
  specific: plnd[lang] - plnd[others]
arms:
  - {{name: specific, deactivate: {{neurons: specific}}}}
evaluate:
  ppl: {{metric: perplexity, corpus: ppl, on: self, bootstrap: 10}}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):  # noqa: ANN201
    root = tmp_path_factory.mktemp("raw")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEURONSPEC_HOME", str(root / "home"))
        path = root / "raw.yaml"
        path.write_text(STUDY.format(model=tiny_model_dir, corpus=make_corpus(root / "c.jsonl"),
                                     parallel=make_parallel_corpus(root / "p.jsonl")))
        yield ns.open_study(path).run(quiet=True), load_model(str(tiny_model_dir))


def corpus_docs(results: ns.Results, corpus: str, lang: str) -> list[dict]:
    entry = results.store.get(results.record["stages"][f"corpus/{corpus}"]["key"])
    return json.loads(entry.file(f"{lang}.json").read_text())


def test_plnd_statistics_are_the_stored_tensors_and_explain_the_selection(run) -> None:  # noqa: ANN001
    from safetensors.torch import load_file

    results, _ = run
    df = results.statistics("plnd", "fr")
    assert list(df.columns) == ["site", "layer", "neuron", "docs", "min", "mean", "sum", "sumsq", "topk_hits"]
    assert len(df) == 3 * 48 + 3 * 16  # every neuron of ffn and attn.v in 3 layers
    entry = results.store.get(results.record["stages"]["stats/plnd/fr"]["key"])
    tensors = load_file(str(entry.file("stats.safetensors")))
    for site, layer, neuron in [("ffn", 2, 40), ("attn.v", 1, 3), ("ffn", 0, 7)]:
        row = df[(df.site == site) & (df.layer == layer) & (df.neuron == neuron)].iloc[0]
        assert row["min"] == pytest.approx(float(tensors[f"{site}/min"][layer, neuron]))
        assert row["sum"] == float(tensors[f"{site}/sum"][layer, neuron])
        assert row["mean"] == pytest.approx(row["sum"] / entry.json()["docs"]) and row["docs"] == entry.json()["docs"]
    # PLND's rule: a neuron is relevant when its smallest importance over the documents reaches ε
    thresholds = results.store.get(results.record["stages"]["select/plnd"]["key"]).json()["thresholds"]
    chosen = df[df["min"] >= df.site.map(thresholds)]
    plnd = results.neuron_set("plnd", "fr")
    assert {(r.site, r.layer, r.neuron) for r in chosen.itertuples()} == \
        {(s, l, int(i)) for s, l, t in plnd.items() for i in t} and plnd.count() > 0


def test_activation_counts_and_pooled_means_match_a_hooked_loop(run) -> None:  # noqa: ANN001
    results, lm = run
    docs = corpus_docs(results, "parallel", "de")
    gate, down = torch.zeros(3, 48, dtype=torch.int64), {}
    tokens = 0
    for d in docs:
        ids = lm.tokenizer(d["text"], truncation=True, max_length=32)["input_ids"]
        seen: dict[tuple[str, int], torch.Tensor] = {}
        hooks = []
        for i, layer in enumerate(lm.model.model.layers):
            hooks.append(layer.mlp.gate_proj.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(("gate", i), o[0])))
            hooks.append(layer.mlp.down_proj.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(("down", i), a[0][0])))
        with torch.no_grad():
            lm.model(input_ids=torch.tensor([ids]))
        for h in hooks:
            h.remove()
        tokens += len(ids) - 1  # the first position (BOS) is not counted
        for i in range(3):
            gate[i] += (seen[("gate", i)][1:] > 0).sum(dim=0)
            down[(d["id"], i)] = seen[("down", i)][1:].double().mean(dim=0)
    stats = results.statistics("lape", "de")
    assert (stats.tokens == tokens).all()
    assert stats.gate_active.tolist() == gate.reshape(-1).tolist()
    assert stats.layer.tolist() == [l for l in range(3) for _ in range(48)]
    pooled = results.activations("linguafranca", "de")
    assert list(pooled.index) == [d["id"] for d in docs] and pooled.shape == (len(docs), 3 * 48)
    for d in docs[:3]:
        for i in range(3):
            torch.testing.assert_close(torch.tensor(pooled.loc[d["id"], i].to_numpy(), dtype=torch.float64),
                                       down[(d["id"], i)], rtol=1e-4, atol=1e-5)


def test_perplexity_documents_recompute_the_cells(run) -> None:  # noqa: ANN001
    results, lm = run
    docs = results.documents("ppl")
    assert list(docs.columns) == ["arm", "draw", "deactivated", "evaluated", "document", "nll", "tokens"]
    assert len(docs) == 3 * 3 + 3 * 3  # base and the arm (on: self), 3 documents per language
    base = docs[(docs.arm == "base") & (docs.evaluated == "en")]
    for d in corpus_docs(results, "ppl", "en"):
        ids = lm.tokenizer(d["text"], truncation=True, max_length=32)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(input_ids=torch.tensor([ids])).logits[0, :-1].double(), dim=-1)
        nll = -float(logp.gather(1, torch.tensor(ids[1:])[:, None]).sum())
        row = base[base.document == d["id"]].iloc[0]
        assert row.nll == pytest.approx(nll, rel=1e-5) and row.tokens == len(ids) - 1
    ev = results.evaluations
    for (arm, lang), part in docs.groupby(["arm", "evaluated"]):
        value = ev[(ev.arm == arm) & (ev.evaluated == lang)].value.iloc[0]
        assert math.exp(part.nll.sum() / part.tokens.sum()) == pytest.approx(value, rel=1e-9)


def test_what_a_run_does_not_hold_is_said(run) -> None:  # noqa: ANN001
    results, _ = run
    with pytest.raises(KeyError, match="no statistics for 'nope'"):
        results.statistics("nope", "en")
    with pytest.raises(KeyError, match="did not run sharing"):
        results.statistics("sharing", "en")
    with pytest.raises(KeyError, match=r"no plnd statistics for 'zh' \(languages: de, en, fr\)"):
        results.statistics("plnd", "zh")
    with pytest.raises(KeyError, match="keeps no activations per document"):
        results.activations("plnd", "en")
    with pytest.raises(KeyError, match="pooled no 'last'"):
        results.activations("linguafranca", "en", "last")
    with pytest.raises(KeyError, match="no evaluation 'nope'"):
        results.documents("nope")
