"""Attribution as a stage of detect.sharing: attr/sharing/LANG and the `attribution` section of select/sharing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from neuronspec.methods.activations import activation_statistics
from neuronspec.methods.attribution import activation_norm_scores, integrated_gradients
from neuronspec.methods.sharing import CATEGORIES, item_categories
from neuronspec.models.forward import encode, iter_batches
from neuronspec.models.loading import load_model
from neuronspec.plan.compile import compile_study
from neuronspec.evaluate.logprobs import pad_token_id
from neuronspec.plan.kinds import KINDS
from neuronspec.plan.runner import run_plan
from neuronspec.plan.store import Store, canonical_json
from neuronspec.report.model import to_json
from neuronspec.report.render import result_tables
from neuronspec.report.results import collect
from neuronspec.spec import load_study
from neuronspec.spec.errors import StudyError


def make_parallel_corpus(path: Path, items: int = 12) -> Path:
    from tiny_studies import make_parallel_corpus as parallel

    return parallel(path, items=items, seed=1)


STUDY = """\
name: tiny-attr
model: {{id: {model}}}
languages: [en, fr, de]
corpora:
  parallel: {{source: {corpus}, docs_per_language: 12, max_tokens: 32}}
detect:
  sharing: {{corpus: parallel, thresholds: [0.0, 0.05], set_threshold: 0.05, batch_size: 3{attribution}}}
"""
IG = ", attribution: {method: ig, steps: 12, step_batch: 5, probes: 6, docs: 4, layers: [0, 2]}"
NORM = ", attribution: {method: activation_norm, docs: 5}"


@pytest.fixture
def write_study(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    corpus = make_parallel_corpus(tmp_path / "parallel.jsonl")

    def write(attribution: str = "", name: str = "attr.yaml") -> Path:
        path = tmp_path / name
        path.write_text(STUDY.format(model=tiny_model_dir, corpus=corpus, attribution=attribution))
        return path

    return write


def _first_docs(store: Store, plan, lang: str, n: int, field: str = "text") -> list[str]:  # noqa: ANN001
    import json

    docs = json.loads(store.get(plan.stages["corpus/parallel"].key).file(f"{lang}.json").read_text(encoding="utf-8"))
    return [d[field] for d in docs[:n]]


def test_ig_stage_equals_a_direct_call_and_feeds_the_sharing_attribution(write_study) -> None:  # noqa: ANN001
    path = write_study(IG)
    loaded = load_study(path)
    plan = compile_study(loaded)
    attr = [sid for sid in plan.stages if sid.startswith("attr/")]
    assert attr == ["attr/sharing/en", "attr/sharing/fr", "attr/sharing/de"]
    assert all(plan.stages[a].deps == ("corpus/parallel",) and plan.stages[a].model_bound for a in attr)
    assert set(attr) <= set(plan.stages["select/sharing"].deps)
    assert KINDS["attr.sharing"].loads_model and not KINDS["attr.sharing"].data_parallel
    store = Store(path.parent / ".neuronspec")
    run = run_plan(plan, store, loaded.study, only=["attr/*"])
    assert set(run.computed) == {"corpus/parallel", *attr}  # no activation pass, no selection

    lm = load_model(str(loaded.study.model.id))
    for lang in ("en", "de"):
        entry = store.get(plan.stages[f"attr/sharing/{lang}"].key)
        saved = load_file(str(entry.file("attributions.safetensors")))
        info = entry.json()
        assert saved["attributions"].shape == (4, 2, lm.model.config.intermediate_size)
        assert saved["attributions"].dtype == torch.float32 and info["layers"] == [0, 2]
        assert info["ids"] == _first_docs(store, plan, lang, 4, "id")
        enc = encode(lm.tokenizer, _first_docs(store, plan, lang, 4), 32)
        direct = integrated_gradients(lm.model, iter_batches(enc, batch_size=3, pad_id=pad_token_id(lm.model, lm.tokenizer)),
                                      layers=[0, 2], steps=12, step_batch=5, probes=6, n_samples=4, tolerance=None)
        assert float(direct.attributions.abs().max()) > 0
        torch.testing.assert_close(saved["attributions"], direct.attributions, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(saved["f_baseline"], direct.f_baseline)
        assert info["max_abs_completeness_gap"] == pytest.approx(float(direct.completeness_gap.abs().max()), rel=1e-4, abs=1e-6)
        assert len(info["completeness_gap"]) == 4 and len(info["completeness_gap"][0]) == 2
    ids = {lang: store.get(plan.stages[f"attr/sharing/{lang}"].key).json()["ids"] for lang in ("en", "fr", "de")}
    assert ids["en"] == ids["fr"] == ids["de"]  # the same items in every language

    run_plan(plan, store, loaded.study, only=["select/sharing"])
    typed = collect(plan, store)
    results = to_json(typed)  # the JSON users read (results.json, `run --json`)
    section = results["detection"]["sharing"]["attribution"]
    assert section["method"] == "ig" and section["tau"] == 0.05 and section["layers"] == [0, 2]
    assert sum(section["overall"][c]["share"] for c in CATEGORIES) == pytest.approx(1.0)
    for j in range(2):
        assert sum(section["per_layer"][c]["share"][j] for c in CATEGORIES) == pytest.approx(1.0)
    # brute force from the stored attributions and the per-item categories of the same items
    from neuronspec.methods.activations import ActivationStats

    langs = ["en", "fr", "de"]
    pooled = {l: ActivationStats.from_tensors(load_file(str(store.get(plan.stages[f"stats/act/parallel/{l}"].key)
                                                             .file("activations.safetensors")))).pooled["act_last"] for l in langs}  # the default event: reference
    codes = item_categories(pooled, range(4), 0.05).view(4, 3, -1)[:, [0, 2]]
    attrs = [load_file(str(store.get(plan.stages[f"attr/sharing/{l}"].key).file("attributions.safetensors")))["attributions"]
             for l in langs]
    total = sum(float(a.abs().sum()) for a in attrs)
    for ci, cat in enumerate(CATEGORIES):
        mass = sum(float(a.double().abs()[codes == ci].sum()) for a in attrs)
        assert section["overall"][cat]["share"] == pytest.approx(mass / total, rel=1e-6, abs=1e-12)
        assert section["overall"][cat]["count"] == int((codes == ci).sum())
    titles = [t.title for t in result_tables(typed)]
    assert any(t.startswith("Sharing Matters: attribution by category (Integrated Gradients") for t in titles)
    assert any(p.endswith("sharing-attribution.png") for p in results["plots"])


def test_activation_norm_path_needs_no_gradients(write_study) -> None:  # noqa: ANN001
    path = write_study(NORM)
    loaded = load_study(path)
    plan = compile_study(loaded)
    spec = plan.stages["attr/sharing/fr"].spec
    # ig's quadrature fields stay out of its key (a literal, not the compiler's own recipe)
    assert canonical_json(spec.json_dict()) == (
        '{"batch_size":3,"batch_tokens":null,"corpus":"parallel","docs":5,"lang":"fr","layers":null,"max_tokens":32,'
        '"method":"activation_norm","probes":null,"step_batch":null,"steps":null}')
    store = Store(path.parent / ".neuronspec")
    run_plan(plan, store, loaded.study, only=["select/sharing"])
    lm = load_model(str(loaded.study.model.id))
    enc = encode(lm.tokenizer, _first_docs(store, plan, "fr", 5), 32)
    stats = activation_statistics(lm.model, iter_batches(enc, batch_size=3, pad_id=pad_token_id(lm.model, lm.tokenizer)),
                                  poolings=["mean_abs"], thresholds=())
    expected = activation_norm_scores(lm.model, stats.pooled["mean_abs"])
    saved = load_file(str(store.get(plan.stages["attr/sharing/fr"].key).file("attributions.safetensors")))
    torch.testing.assert_close(saved["attributions"], expected)
    section = to_json(collect(plan, store))["detection"]["sharing"]["attribution"]
    assert section["method"] == "activation_norm" and section["layers"] == [0, 1, 2] and section["items"] == 5
    assert "max_abs_completeness_gap" not in section
    assert sum(v["share"] for v in section["overall"].values()) == pytest.approx(1.0)


def test_attribution_changes_only_the_sharing_selection_and_its_dependants(write_study) -> None:  # noqa: ANN001
    plain = compile_study(load_study(write_study("", "plain.yaml")))
    with_attr = compile_study(load_study(write_study(IG, "with.yaml")))
    assert not any(sid.startswith("attr/") for sid in plain.stages)
    sel = plain.stages["select/sharing"]
    assert canonical_json(sel.spec.json_dict()) == (
        '{"attribution":null,"corpus":"parallel","event":"reference","min_fraction":0.5,"set_threshold":0.05,'
        '"thresholds":[0.0,0.05]}')
    assert sel.deps == ("stats/act/parallel/en", "stats/act/parallel/fr", "stats/act/parallel/de")
    downstream = set(plain.downstream(["select/sharing"]))  # sets, which read select/sharing's output
    for sid, stage in plain.stages.items():  # every other stage is untouched by the field
        if sid not in downstream:
            assert with_attr.stages[sid].key == stage.key, sid
    assert with_attr.stages["select/sharing"].key != sel.key


def test_attribution_layers_are_checked_against_the_model(write_study) -> None:  # noqa: ANN001
    with pytest.raises(StudyError, match="layers \\[3\\] past the model's 3 layers"):
        compile_study(load_study(write_study(", attribution: {layers: [0, 3]}")))
    with pytest.raises(StudyError, match="steps >= probes"):
        load_study(write_study(", attribution: {steps: 8, probes: 9}"))
