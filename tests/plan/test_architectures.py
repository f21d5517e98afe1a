"""A tiny study end to end on each family added after the first six (and one served by layout
only): PLND on every site, a deactivation arm and its random control (as many neurons), perplexity,
the logit lens."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_studies import STUDY, make_corpus, make_parallel_corpus

from neuronspec.models.masks import NeuronSet
from neuronspec.models.testing import tiny_tokenizer
from neuronspec.models.tiny import tiny_model
from neuronspec.plan.compile import compile_study
from neuronspec.plan.runner import run_plan
from neuronspec.plan.store import Store
from neuronspec.report.model import to_json
from neuronspec.report.results import collect
from neuronspec.spec import load_study

SITES = ["ffn", "attn.q", "attn.k", "attn.v", "attn.o"]


@pytest.mark.parametrize("arch", ["qwen3", "phi3", "gpt_neox", "ministral", "gemma2", "olmo2", "mixtral", "qwen2_moe"])
def test_study_runs_every_site_and_arm(arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    folder = tmp_path / "model"
    tiny_model(arch).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    text = STUDY.format(model=folder, corpus=make_corpus(tmp_path / "corpus.jsonl"))
    text = text.replace("sites: [ffn, attn.v, attn.o]", "sites: [all]") + "analyses:\n  logit_lens: {corpus: detect}\n"
    path = tmp_path / "study.yaml"
    path.write_text(text)
    loaded = load_study(path)
    plan = compile_study(loaded)
    store = Store(tmp_path / ".neuronspec")
    run_plan(plan, store, loaded.study)
    results = to_json(collect(plan, store))  # the JSON users read
    counts = results["sets"]["specific"]["counts"]
    assert set().union(*(counts[lang] for lang in counts)) == set(SITES), counts  # every site found neurons
    early = results["evaluations"]["ppl"]["matrices"]["early"]
    assert early["control"] == "early-random" and early["control_draws"] == 2
    assert all(early["change"][lang][lang] != 0 for lang in ("en", "fr", "de"))  # the arm changed something
    assert set(results["logit_lens"]) == {"en", "fr", "de"}
    cells = results["evaluations"]["ppl"]["cells"]
    arm = {(c["mask_lang"], c["lang"]): c for c in cells if c["arm"] == "early"}
    controls = [c for c in cells if c["arm"] == "early-random"]
    assert len(arm) == 9 and len(controls) == 18  # 3 mask languages × 3 languages (× 2 draws)
    for c in controls:  # the random control deactivates as many neurons as the arm it copies
        assert c["deactivated"] == arm[(c["mask_lang"], c["lang"])]["deactivated"]
    if arch in LAYOUTS:  # a mixture of experts: the control's ffn neurons match the arm's per layer and expert
        layout = LAYOUTS[arch]

        def per_expert(sid: str, lang: str) -> dict[tuple[int, int], int]:
            ns = NeuronSet.load(store.entry_dir(plan.stages[sid].key) / f"mask.{lang}.safetensors")
            out: dict[tuple[int, int], int] = {}
            for site, layer, t in ns.items():
                for n in t.tolist() if site == "ffn" else []:
                    e = min(n // layout["width"], layout["num_experts"])
                    out[(layer, e)] = out.get((layer, e), 0) + 1
            return out
        for lang in ("en", "fr", "de"):
            want = per_expert("mask/early", lang)
            assert want and all(per_expert(f"mask/early-random/draw{k}", lang) == want for k in (1, 2))


MOE_STUDY = """\
name: moe
model: {{id: {model}}}
languages: [en, fr, de]
corpora:
  parallel: {{source: {corpus}, docs_per_language: 12, max_tokens: 32}}
detect:
  lape: {{corpus: parallel, top_rate: 0.05}}
  linguafranca: {{corpus: parallel, z_threshold: 1.0}}
  sharing: {{corpus: parallel, thresholds: [0.0], attribution: {{method: ig, steps: 16, probes: 4, docs: 2, layers: [2]}}}}
neurons:
  lape_en: lape[en]
"""


#: the tiny configs' expert layouts (models/tiny.py): Mixtral 4 experts of 12; Qwen2-MoE 4 of 8 and a shared 16
LAYOUTS = {"mixtral": {"num_experts": 4, "width": 12, "shared": 0}, "qwen2_moe": {"num_experts": 4, "width": 8, "shared": 16}}


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_activation_methods_select_expert_neurons(arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LAPE, LinguaFranca and Sharing (with Integrated Gradients on the last layer) run on expert neurons
    (each refused before) and select some of them; the run lists a set's neurons by expert and index."""
    import neuronspec as ns

    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    folder = tmp_path / "model"
    tiny_model(arch).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    path = tmp_path / "study.yaml"
    path.write_text(MOE_STUDY.format(model=folder, corpus=make_parallel_corpus(tmp_path / "parallel.jsonl")))
    run = ns.open_study(path).run(quiet=True)
    results = to_json(run.data)
    sets = results["sets"]
    for method in ("lape", "linguafranca", "sharing"):  # each method's sets hold expert neurons
        assert any(sets[method]["counts"][lang].get("ffn") for lang in ("en", "fr", "de")), (method, sets[method])
    assert results["detection"]["lape"]["selected"] > 0
    assert results["detection"]["linguafranca"]["scores"]["lrds"] > 0
    attribution = results["detection"]["sharing"]["attribution"]
    assert attribution["layers"] == [2] and attribution["max_relative_completeness_gap"] < 1e-3  # IG on expert neurons
    layout = LAYOUTS[arch]
    assert results["dims"]["experts"] == layout
    chosen = run.neuron_set("linguafranca", "en")
    table = run.neuron_table(chosen)
    assert len(table) == chosen.count() > 0
    routed = layout["num_experts"] * layout["width"]
    for row in table.itertuples():
        n = row.neuron
        expected = (n // layout["width"], n % layout["width"]) if n < routed else (layout["num_experts"], n - routed)
        assert (row.expert, row.index, row.shared) == (*expected, n >= routed)
    # the run's experts.csv / expert_counts: ffn neurons of each set per layer and expert, counted by hand here
    by_hand: dict[tuple[int, int], int] = {}
    for site, layer, idx in chosen.items():
        for n in idx.tolist():
            e = n // layout["width"] if n < routed else layout["num_experts"]
            by_hand[(layer, e)] = by_hand.get((layer, e), 0) + 1
    counts = run.expert_counts
    mine = counts[(counts.set == "linguafranca") & (counts.language == "en")]
    assert {(r.layer, r.expert): r.neurons for r in mine.itertuples()} == by_hand
    assert (mine.shared == (mine.expert == layout["num_experts"])).all()
    assert (run.folder / "experts.csv").read_text().startswith("model,set,language,layer,expert,shared,neurons\n")


def test_qwen2_moe_with_dense_layers_is_refused_at_plan_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Dense MLP layers between sparse ones give layers different ffn widths, which neuronspec does not
    model: the study's model.id is the located error, before any weights load."""
    from neuronspec.cli import main

    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    folder = tmp_path / "model"
    tiny_model("qwen2_moe", mlp_only_layers=[1]).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(model=folder, corpus=make_corpus(tmp_path / "corpus.jsonl")))
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2:" in err and "dense MLP layers [1]" in err and "mlp_only_layers=[1]" in err
