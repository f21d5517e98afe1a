"""Mean-ablation arms through the whole plan: the evaluated perplexity equals the evaluator run on
the model under hooks written here, with means from a per-document, per-token loop; zeroing arms
keep their stages; and the study's mistakes are named where they are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_studies import STUDY, make_corpus

from neuronspec.evaluate import evaluator_options, run_evaluator
from neuronspec.models.forward import encode
from neuronspec.models.loading import load_model
from neuronspec.models.masks import NeuronSet, zeroed
from neuronspec.plan.compile import compile_study
from neuronspec.plan.runner import run_plan
from neuronspec.plan.store import Store
from neuronspec.spec import StudyError, load_study

ARMS = """\
  - {name: early, deactivate: {neurons: specific, layers: early}}
  - {name: early-mean, deactivate: {neurons: specific, layers: early, ablation: mean, mean_corpus: detect}}
  - {name: early-mean-random, deactivate: {random_like: early-mean, draws: 1, ablation: mean, mean_corpus: detect}}
"""


def study_text(tmp_path: Path, model: object) -> str:
    text = STUDY.format(model=model, corpus=make_corpus(tmp_path / "c.jsonl"))
    head, _, tail = text.partition("arms:\n")
    return head + "arms:\n" + ARMS + "evaluate:" + tail.split("evaluate:", 1)[1]


def llama_sites(model: torch.nn.Module, layer: int) -> dict[str, tuple[torch.nn.Module, str]]:
    block = model.model.layers[layer]
    return {"ffn": (block.mlp.down_proj, "input"), "attn.v": (block.self_attn.v_proj, "output"),
            "attn.o": (block.self_attn.o_proj, "input")}


def naive_means(model: torch.nn.Module, encodings: list[list[int]], site: str, layer: int) -> torch.Tensor:
    module, where = llama_sites(model, layer)[site]
    rows: list[torch.Tensor] = []
    hook = (module.register_forward_pre_hook(lambda m, a: rows.extend(a[0][0].double())) if where == "input"
            else module.register_forward_hook(lambda m, a, o: rows.extend(o[0].double())))
    try:
        with torch.no_grad():
            for ids in encodings:
                model(input_ids=torch.tensor([ids]))
    finally:
        hook.remove()
    return torch.stack(rows).mean(dim=0)


def test_mean_arm_perplexity_equals_hand_written_hooks(tmp_path: Path, tiny_model_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    path = tmp_path / "s.yaml"
    path.write_text(study_text(tmp_path, tiny_model_dir))
    loaded = load_study(path)
    plan = compile_study(loaded)
    assert plan.stages["means/detect"].kind == "means"
    assert "means/detect" in plan.stages["eval/ppl/early-mean/fr@de"].deps
    assert "means/detect" in plan.stages["eval/ppl/early-mean-random/fr@de"].deps
    assert not any(d.startswith("means/") for d in plan.stages["eval/ppl/early/fr@de"].deps)
    assert plan.stages["eval/ppl/early/fr@de"].spec.mean_corpus is None
    store = Store(tmp_path / ".neuronspec")
    run_plan(plan, store, loaded.study)

    lm = load_model(str(tiny_model_dir))
    detect = store.entry_dir(plan.stages["corpus/detect"].key)
    texts = [d["text"] for lang in ("en", "fr", "de") for d in json.loads((detect / f"{lang}.json").read_text())]
    encodings = encode(lm.tokenizer, texts, 32)
    stage = plan.stages["eval/ppl/early-mean/fr@de"]
    neurons = NeuronSet.load(store.entry_dir(plan.stages["mask/early-mean"].key) / "mask.fr.safetensors")
    assert neurons.count() > 0
    handles = []
    for site, layer, idx in neurons.items():
        module, where = llama_sites(lm.model, layer)[site]
        mean = naive_means(lm.model, encodings, site, layer)

        def put(x: torch.Tensor, idx: torch.Tensor = idx, mean: torch.Tensor = mean) -> torch.Tensor:
            x = x.clone()
            for i in idx.tolist():
                x[..., i] = float(mean[i])
            return x

        handles.append(module.register_forward_pre_hook(lambda m, a, f=put: (f(a[0]), *a[1:])) if where == "input"
                       else module.register_forward_hook(lambda m, a, o, f=put: f(o)))
    ppl = store.entry_dir(plan.stages["corpus/ppl"].key)
    docs = json.loads((ppl / "de.json").read_text())
    from neuronspec.data import Document

    allowed = evaluator_options("perplexity")
    documents = [Document(d["id"], d["lang"], d["text"], d["meta"]) for d in docs]
    try:
        expected = run_evaluator("perplexity", lm.model, lm.tokenizer, documents,
                                 {k: v for k, v in stage.spec.options.items() if k in allowed}, "de", 0).to_json()["value"]
    finally:
        for h in handles:
            h.remove()

    def value(sid: str) -> float:
        return json.loads((store.entry_dir(plan.stages[sid].key) / "result.json").read_text())["value"]

    # a random model is near-uniform: ablations move its perplexity by ~1e-5, so compare tightly
    assert value("eval/ppl/early-mean/fr@de") == pytest.approx(expected, rel=1e-7)
    assert value("eval/ppl/early/fr@de") != pytest.approx(expected, rel=1e-6)  # the same neurons zeroed differ
    # the zeroing arm beside it is what it always was: bit-identical to the evaluator on zeroed weights
    zero = NeuronSet.load(store.entry_dir(plan.stages["mask/early"].key) / "mask.fr.safetensors")
    assert zero == neurons
    with zeroed(lm.model, zero):
        zeroed_value = run_evaluator("perplexity", lm.model, lm.tokenizer, documents,
                                     {k: v for k, v in stage.spec.options.items() if k in allowed}, "de", 0).to_json()["value"]
    assert value("eval/ppl/early/fr@de") == zeroed_value


def test_ablation_mistakes_are_named_where_they_are_written(tmp_path: Path) -> None:
    text = study_text(tmp_path, "gpt2")
    with pytest.raises(StudyError, match="give `mean_corpus`"):
        load_study(text=text.replace(", ablation: mean, mean_corpus: detect}}\n  - {name: early-mean-random",
                                     ", ablation: mean}}\n  - {name: early-mean-random"), name="s.yaml")
    with pytest.raises(StudyError, match="mean_corpus is for ablation: mean"):
        load_study(text=text.replace("layers: early}}", "layers: early, mean_corpus: detect}}"), name="s.yaml")
    with pytest.raises(StudyError, match="no corpus 'nope'|'nope'"):
        load_study(text=text.replace("mean_corpus: detect}}\n  - {name: early-mean-random",
                                     "mean_corpus: nope}}\n  - {name: early-mean-random"), name="s.yaml")
    with pytest.raises(StudyError, match="ablates by mean over 'detect'; its random control must too"):
        load_study(text=text.replace("draws: 1, ablation: mean, mean_corpus: detect", "draws: 1"), name="s.yaml")


def test_export_refuses_a_mean_arm(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from neuronspec.cli import main

    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    path = tmp_path / "s.yaml"
    path.write_text(study_text(tmp_path, tiny_model_dir))
    assert main(["export", str(path), "early-mean", "--lang", "fr", "--out", str(tmp_path / "out")]) == 2
    assert "no form as weights" in capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "out").exists()
