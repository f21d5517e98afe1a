"""The reference code's rule (topk_intersect): per document, the k most important neurons of
each layer; a neuron is kept when it is in that top k for every document.

The expectation is computed here without SiteStats' hit counters: each document's
importances come from its own one-document pass, its per-layer top k is a Python set, and
the sets are intersected over the documents.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from neuronspec.methods.plnd import plnd_statistics, select_relevant, topk_count
from neuronspec.models.forward import iter_batches
from neuronspec.models.sites import adapter_for, site_width
from neuronspec.models.tiny import tiny_model

DOCS = [[1, 5, 9, 33, 40, 41, 7, 8], [1, 60, 61, 3, 4], [1, 70, 12, 13, 14, 15], [1, 9, 9, 30, 31, 32, 5]]


def _per_document_sets(model, sites: list[str], k: dict[str, int]) -> dict[str, dict[int, set[int]]]:
    """site → layer → ∩ over documents of {the k largest importances of that layer}."""
    out: dict[str, dict[int, set[int]]] = {}
    for doc in DOCS:
        one = plnd_statistics(model, iter_batches([doc], batch_size=1, pad_id=0), sites)
        for site in sites:
            imp = one[site].sum  # one document: the sum is its importance, [layers, width]
            for layer in range(imp.shape[0]):
                ranked = sorted(range(imp.shape[1]), key=lambda n: -float(imp[layer, n]))
                top = set(ranked[: k[site]])
                out.setdefault(site, {}).setdefault(layer, top)
                out[site][layer] &= top
    return out


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2"])
def test_topk_intersect_equals_per_document_per_layer_topk_and_intersection(arch: str) -> None:
    model = tiny_model(arch)
    sites = ["ffn", "attn.v", "attn.o"] + (["attn.q", "attn.k"] if adapter_for(model).supports_attention_interface else [])
    dims = adapter_for(model).dims(model.config)
    top_k: dict[str, int | float] = {s: 0.5 for s in sites}
    top_k["ffn"] = 20  # one count, the rest fractions
    counts = {s: topk_count(k, site_width(dims, s)) for s, k in top_k.items()}
    stats = plnd_statistics(model, iter_batches(DOCS, batch_size=3, pad_id=0), sites, top_k=top_k)
    for site in sites:  # every document scores exactly k hits in every layer
        assert stats[site].topk_hits.sum(1).tolist() == [counts[site] * len(DOCS)] * dims.num_layers
    got = select_relevant({"xx": stats}, {}, rule="topk_intersect")["xx"]
    want = _per_document_sets(model, sites, counts)
    for site in sites:
        for layer in range(dims.num_layers):
            assert set(got.indices(site, layer).tolist()) == want[site][layer], (arch, site, layer)


def test_topk_count_reads_counts_and_fractions() -> None:
    assert topk_count(2000, 14336) == 2000
    assert topk_count(0.14, 14336) == 2007
    assert topk_count(0.001, 100) == 1
    with pytest.raises(ValueError, match="1..256"):
        topk_count(1000, 256)


TOPK_STUDY = """\
name: tiny-topk
model: {{id: {model}}}
languages: [en, fr, de]
corpora:
  detect: {{source: {corpus}, split: detect, docs_per_language: 5, max_tokens: 32, eval_fraction: 0.4}}
detect:
  plnd: {{sites: [ffn, attn.q], rule: topk_intersect, top_k: {{ffn: 0.5, attn.q: 12}}, batch_size: 2}}
"""


def test_study_topk_intersect_reproduces_a_direct_per_document_computation(tmp_path: Path, tiny_model_dir: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from tiny_studies import make_corpus

    from neuronspec.models.forward import encode
    from neuronspec.models.loading import load_model
    from neuronspec.plan.compile import compile_study
    from neuronspec.plan.runner import run_plan
    from neuronspec.plan.store import Store
    from neuronspec.spec import load_study

    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    path = tmp_path / "topk.yaml"
    path.write_text(TOPK_STUDY.format(model=tiny_model_dir, corpus=make_corpus(tmp_path / "corpus.jsonl")))
    loaded = load_study(path)
    plan = compile_study(loaded)
    store = Store(tmp_path / ".neuronspec")
    run_plan(plan, store, loaded.study)
    counts = json.loads((store.entry_dir(plan.stages["select/plnd"].key) / "result.json").read_text())["counts"]

    lm = load_model(str(tiny_model_dir))
    dims = adapter_for(lm.model).dims(lm.model.config)
    k = {"ffn": round(0.5 * dims.intermediate), "attn.q": 12}
    for lang in ("en", "fr", "de"):
        docs = json.loads(store.get(plan.stages["corpus/detect"].key).file(f"{lang}.json").read_text(encoding="utf-8"))
        kept: dict[str, list[set[int]]] = {}
        for enc in encode(lm.tokenizer, [d["text"] for d in docs], 32):
            one = plnd_statistics(lm.model, iter_batches([enc], batch_size=1, pad_id=0), ["ffn", "attn.q"])
            for site, st in one.items():
                tops = [set(st.sum[layer].topk(k[site]).indices.tolist()) for layer in range(dims.num_layers)]
                kept[site] = tops if site not in kept else [a & b for a, b in zip(kept[site], tops)]
        want = {site: {str(layer): len(s) for layer, s in enumerate(sets) if s} for site, sets in kept.items()}
        have = {site: {layer: n for layer, n in by_layer.items() if n} for site, by_layer in counts[lang].items()}
        assert have == want, lang


def test_a_topk_count_wider_than_the_layer_is_a_located_error(tmp_path: Path, tiny_model_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from neuronspec.plan.compile import compile_study
    from neuronspec.spec import load_study
    from neuronspec.spec.errors import StudyError

    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    path = tmp_path / "topk.yaml"
    path.write_text(TOPK_STUDY.format(model=tiny_model_dir, corpus=tmp_path / "c.jsonl").replace("attn.q: 12", "attn.q: 999"))
    with pytest.raises(StudyError, match=r"topk.yaml:7:\d+.*top_k 999 exceeds the 32 attn.q"):
        compile_study(load_study(path))
