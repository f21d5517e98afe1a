"""Split-half stability of PLND's sets: the halves folded into one pass must be exactly the
detection each half of the documents gives alone, and the study must report their overlap.

Expectations come from separate passes over each half's documents (one `plnd_statistics`
call per half, no halves machinery) and from Python sets, not from the code under test.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from neuronspec.methods.plnd import plnd_statistics, resolve_thresholds, select_halves, select_relevant
from neuronspec.methods.stability import split_halves
from neuronspec.models.forward import iter_batches, iter_packed
from neuronspec.models.tiny import tiny_model

DOCS = {"xx": [[1, 5, 9, 33, 40, 41, 7, 8], [1, 60, 61, 3, 4], [1, 70, 12, 13, 14, 15], [1, 9, 9, 30, 31, 32, 5],
               [1, 22, 23, 24], [1, 50, 51, 52, 53, 54, 55]],
        "yy": [[1, 80, 81, 82, 83], [1, 90, 91, 92], [1, 85, 86, 87, 88, 89, 84], [1, 93, 94, 95, 10, 11],
               [1, 42, 43, 44, 45]]}
SITES = ["ffn", "attn.v", "attn.o"]


def test_split_halves_is_seeded_disjoint_and_balanced() -> None:
    a, b = split_halves(11, seed=3), split_halves(11, seed=3)
    assert a == b and sorted(set(a)) == [0, 1] and a.count(0) == 5 and a.count(1) == 6
    assert any(split_halves(11, seed=s) != a for s in range(4, 10))


@pytest.mark.parametrize("rule", ["all_docs", "topk_intersect"])
@pytest.mark.parametrize("packed", [False, True])
def test_halves_in_one_pass_equal_each_half_detected_alone(rule: str, packed: bool) -> None:
    model = tiny_model("llama")
    make = iter_packed if packed else iter_batches
    top_k = {s: 0.3 for s in SITES} if rule == "topk_intersect" else None
    eps = {"ffn": {"quantile": 0.8}, "attn.v": {"quantile": 0.7}, "attn.o": {"quantile": 0.9}}
    stats, alone = {}, [{}, {}]
    for seed, (lang, docs) in enumerate(DOCS.items()):
        half = split_halves(len(docs), seed)
        stats[lang] = plnd_statistics(model, make(docs, batch_size=3, pad_id=0), SITES, top_k=top_k, halves=half)
        for h in (0, 1):
            mine = [d for d, g in zip(docs, half) if g == h]
            alone[h][lang] = plnd_statistics(model, iter_batches(mine, batch_size=1, pad_id=0), SITES, top_k=top_k)
    for h, (thresholds, sets) in enumerate(select_halves(stats, eps, rule)):
        for lang in DOCS:
            for site in SITES:
                got, want = stats[lang][site].half(h), alone[h][lang][site]
                assert got.n_docs == want.n_docs
                torch.testing.assert_close(got.min, want.min, rtol=1e-4, atol=1e-7)
                assert torch.equal(got.topk_hits, want.topk_hits)
        want_eps = resolve_thresholds(alone[h], eps) if rule == "all_docs" else {}
        assert thresholds.keys() == want_eps.keys()
        for site in want_eps:
            assert thresholds[site] == pytest.approx(want_eps[site], rel=1e-4)
        want_sets = select_relevant(alone[h], want_eps, rule)
        for lang in DOCS:
            assert sets[lang] == want_sets[lang], (h, lang)


def test_statistics_without_halves_refuse_to_split() -> None:
    from neuronspec.methods.plnd import SiteStats

    with pytest.raises(ValueError, match="without halves"):
        SiteStats.zeros(2, 4).half(0)


STUDY = """\
name: tiny-stability
model: {{id: {model}}}
languages: [en, fr, de]
corpora:
  detect: {{source: {corpus}, split: detect, docs_per_language: 8, max_tokens: 32, eval_fraction: 0.4}}
detect:
  plnd: {{sites: [ffn, attn.v], epsilon: {{quantile: 0.7}}, batch_size: 3, stability: {{seed: 5}}}}
neurons:
  specific: plnd[lang] - plnd[others]
  shared: plnd[all]
"""


def test_study_reports_the_jaccard_of_each_half_detected_alone(tmp_path: Path, tiny_model_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from tiny_studies import make_corpus

    from neuronspec.cli import main
    from neuronspec.models.forward import encode
    from neuronspec.models.loading import load_model
    from neuronspec.plan.compile import compile_study
    from neuronspec.plan.store import Store
    from neuronspec.report.records import list_runs
    from neuronspec.spec import load_study

    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    path = tmp_path / "stability.yaml"
    path.write_text(STUDY.format(model=tiny_model_dir, corpus=make_corpus(tmp_path / "corpus.jsonl")))
    assert main(["run", "-q", "--json", str(path)]) == 0
    store_dir = tmp_path / ".neuronspec"
    run = store_dir / "runs" / list_runs(store_dir)[0]["run_id"]
    results = json.loads((run / "results.json").read_text())
    plan = compile_study(load_study(path))
    corpus = Store(store_dir).get(plan.stages["corpus/detect"].key)

    # brute force: each half's documents detected alone, the named sets as Python sets
    lm = load_model(str(tiny_model_dir))
    langs = ["en", "fr", "de"]
    halves: list[dict[str, dict]] = [{}, {}]
    for lang in langs:
        docs = json.loads(corpus.file(f"{lang}.json").read_text(encoding="utf-8"))
        encodings = [e for e in encode(lm.tokenizer, [d["text"] for d in docs], 32) if len(e) >= 2]
        split = split_halves(len(encodings), 5)
        for h in (0, 1):
            mine = [e for e, g in zip(encodings, split) if g == h]
            halves[h][lang] = plnd_statistics(lm.model, iter_batches(mine, batch_size=1, pad_id=0), ["ffn", "attn.v"])
    as_sets = []
    for h in (0, 1):
        eps = resolve_thresholds(halves[h], {"ffn": {"quantile": 0.7}, "attn.v": {"quantile": 0.7}})
        found = select_relevant(halves[h], eps)
        plain = {lang: {(s, l, int(i)) for s, l, idx in found[lang].items() for i in idx} for lang in langs}
        as_sets.append({"plnd": plain,
                        "specific": {l: plain[l] - set().union(*(plain[o] for o in langs if o != l)) for l in langs},
                        "shared": {"*": set.intersection(*plain.values())}})

    rows = list(csv.DictReader((run / "stability.csv").open()))
    for name in ("plnd", "specific", "shared"):
        got = results["sets"][name]["stability"]
        for lang in as_sets[0][name]:
            a, b = as_sets[0][name][lang], as_sets[1][name][lang]
            jaccard = len(a & b) / len(a | b) if a | b else None
            assert got[lang] == {"jaccard": pytest.approx(jaccard) if jaccard is not None else None,
                                 "size_a": len(a), "size_b": len(b)}, (name, lang)
            row = next(r for r in rows if r["set"] == name and r["language"] == ("" if lang == "*" else lang))
            assert (int(row["size_a"]), int(row["size_b"])) == (len(a), len(b))
    assert any(len(as_sets[0]["plnd"][l]) for l in langs)  # the comparison is not between empty sets
    assert "split-half stability of the neuron sets" in (run / "report.md").read_text()
