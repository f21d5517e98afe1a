"""Studies with several models: one plan per model, shared corpora, the dynamics table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neuronspec.cli import main
from neuronspec.models.testing import tiny_tokenizer
from neuronspec.models.tiny import tiny_model
from neuronspec.plan.store import Store
from neuronspec.plan.variants import all_stages, compile_variants
from neuronspec.spec import load_study

STUDY = """\
name: dyn
models:
  llama: {{id: {llama}}}
  qwen: {{id: {qwen}}}
languages: [en, fr, de]
corpora:
  parallel: {{source: {corpus}, docs_per_language: 12, max_tokens: 32}}
detect:
  plnd: {{corpus: parallel, sites: [ffn], epsilon: {{quantile: 0.9}}, batch_size: 4}}
  lape: {{corpus: parallel, top_rate: 0.05}}
  linguafranca: {{corpus: parallel, z_threshold: 1.0}}
partitions: {{early: [0, 2]{extra}}}
evaluate:
  ppl: {{metric: perplexity, corpus: parallel, bootstrap: 0}}
"""


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, deeper architecture (4 layers against the llama's 3)."""
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    tiny_model("qwen2", seed=1, num_hidden_layers=4, layer_types=["full_attention"] * 4).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def dyn_study(tmp_path: Path, tiny_model_dir: Path, tiny_qwen_dir: Path, parallel_corpus: Path,  # noqa: ANN201
              monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NEURONSPEC_STORE", raising=False)

    def write(extra: str = "") -> Path:
        path = tmp_path / "dyn.yaml"
        path.write_text(STUDY.format(llama=tiny_model_dir, qwen=tiny_qwen_dir, corpus=parallel_corpus, extra=extra))
        return path

    return write


def test_one_plan_per_model_keyed_by_its_model_with_shared_corpora(dyn_study) -> None:  # noqa: ANN001
    loaded = load_study(dyn_study())
    variants = compile_variants(loaded)
    assert [v.name for v in variants] == ["llama", "qwen"]
    llama, qwen = (v.plan for v in variants)
    assert (llama.study_name, qwen.study_name) == ("dyn@llama", "dyn@qwen")
    assert (llama.dims["num_layers"], qwen.dims["num_layers"]) == (3, 4)
    assert llama.model_identity != qwen.model_identity
    assert llama.stages["corpus/parallel"].key == qwen.stages["corpus/parallel"].key  # no model in a corpus
    for sid in ("stats/plnd/en", "stats/act/parallel/fr", "select/linguafranca", "eval/ppl/base/de"):
        assert llama.stages[sid].key != qwen.stages[sid].key, sid
    merged = all_stages(variants)
    assert merged["qwen:select/lape"].deps == tuple(f"qwen:stats/act/parallel/{lang}" for lang in ("en", "fr", "de"))


def test_two_models_run_end_to_end_and_compare_side_by_side(dyn_study, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    path = dyn_study()
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "plan of dyn@llama" in out and "plan of dyn@qwen" in out and "shared with model llama" in out

    assert main(["run", "-q", "--json", str(path)]) == 0
    first = json.loads(capsys.readouterr().out)
    computed = first["computed"]
    assert "llama:corpus/parallel" in computed and "qwen:corpus/parallel" not in computed  # computed once
    assert "llama:stats/act/parallel/en" in computed and "qwen:stats/act/parallel/en" in computed

    # one column per model, with each model's own numbers
    results = first["results"]
    assert set(results["variants"]) == {"llama", "qwen"}
    dyn = results["dynamics"]
    assert dyn["models"] == ["llama", "qwen"]
    rows = {r["measure"]: r["values"] for r in dyn["rows"]}
    store = Store(path.parent / ".neuronspec")
    for v in compile_variants(load_study(path)):
        entry = store.entry_dir(v.plan.stages["select/linguafranca"].key)
        lf = json.loads((entry / "result.json").read_text())
        assert rows["LRDS (same language − different language)"][v.name] == lf["scores"]["lrds"]
        assert rows["SADS (same meaning − different meaning)"][v.name] == lf["scores"]["sads"]
        assert rows["SKLR (key linguistic regions, z > 1.0)"][v.name] == lf["regions"]["sklr"]
        for lang, n in lf["regions"]["counts"].items():
            assert rows[f"  region size {lang}"][v.name] == n
        assert dyn["per_layer"][v.name]["lrds"] == lf["per_layer"]["lrds"]
        lape = json.loads((store.entry_dir(v.plan.stages["select/lape"].key) / "result.json").read_text())
        assert rows["LAPE neurons fr"][v.name] == lape["counts"]["fr"]
        ppl = json.loads((store.entry_dir(v.plan.stages["eval/ppl/base/de"].key) / "result.json").read_text())
        assert rows["perplexity de (ppl, untouched model)"][v.name] == ppl["value"]
    assert rows["layers"] == {"llama": 3, "qwen": 4}
    assert rows["LRDS (same language − different language)"]["llama"] != rows["LRDS (same language − different language)"]["qwen"]
    assert any(m.startswith("PLND relevant ") for m in rows)

    folder = Path(first["folder"])
    report = (folder / "report.md").read_text()
    assert "### dynamics across models: one column per model\n\n| measure | llama | qwen |" in report
    assert "### llama: LinguaFranca" in report and "### qwen: LinguaFranca" in report
    assert (folder / "dynamics-lrds-sads.png").exists()
    assert (folder / "llama" / "lrds-sads.png").exists() and (folder / "qwen" / "similarity.png").exists()
    record = json.loads((folder / "record.json").read_text())
    assert record["models"]["qwen"]["id"] == str(Path(record["study"]["models"]["qwen"]["id"]))
    assert "model" not in record["study"] and record["variants"]["qwen"]["dims"]["num_layers"] == 4
    assert record["stages"]["qwen:corpus/parallel"]["computed"] is False

    # a second run computes nothing; `report` re-renders the run, also from the record alone
    assert main(["run", "-q", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["computed"] == []
    assert main(["report", "-q", first["run"], "--study", str(path)]) == 0
    assert "report.html" in capsys.readouterr().out
    html = (folder / "report.html").read_text()
    assert "dynamics across models" in html and "llama/lrds-sads" in html
    from neuronspec.report.model import parse_results
    from neuronspec.report.records import results_from_record
    from neuronspec.report.render import result_tables

    rebuilt = result_tables(results_from_record(record))
    assert rebuilt[-1].to_markdown() == result_tables(parse_results(results))[-1].to_markdown()
    # `runs` names both models; `diff` of the study and its run finds nothing to report
    assert main(["runs", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["model"] == f"{record['models']['llama']['id']}, {record['models']['qwen']['id']}"
    assert main(["diff", "--json", first["run"], str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["identical"] is True


def test_partition_past_one_models_layers_is_a_located_error(dyn_study, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    path = dyn_study(extra=", deep: [0, 4]")  # qwen has 4 layers, llama 3
    assert main(["plan", str(path)]) == 2
    problems = capsys.readouterr().err.strip().splitlines()
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:12:29: partitions.deep: layer range [0, 4) ends past the model's 3 layers")
    assert "(model 'llama'" in problems[0]
    assert not (path.parent / ".neuronspec").exists()


def _hub_snapshots(cache: Path, repo: str, refs: dict[str, int]) -> dict[str, str]:
    """A hub cache holding checkpoints of one repo: a tiny Llama per ref (seeded as given), each its own
    commit, as `from_pretrained(repo, revision=ref)` finds it offline. Returns ref -> commit."""
    root = cache / f"models--{repo.replace('/', '--')}"
    commits = {}
    for ref, seed in refs.items():
        sha = f"{seed + 1:x}" * 40
        tiny_model("llama", seed=seed).save_pretrained(root / "snapshots" / sha)
        tiny_tokenizer().save_pretrained(root / "snapshots" / sha)
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(sha)
        commits[ref] = sha
    return commits


CHECKPOINTS = """\
name: ckpt
models:
  early: {{id: tiny-org/tiny-llama, revision: step100}}
  late: {{id: tiny-org/tiny-llama, revision: main}}
languages: [en, fr, de]
corpora:
  parallel: {{source: {corpus}, docs_per_language: 12, max_tokens: 32}}
detect:
  linguafranca: {{corpus: parallel, z_threshold: 1.0}}
"""


def test_checkpoints_of_one_repo_by_revision_run_side_by_side(tmp_path: Path, parallel_corpus: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`models:` with `revision:` studies a training run's checkpoints: each model is its own revision's
    weights (the same LRDS as a study of that checkpoint's folder), keyed by the commit it resolves to."""
    from huggingface_hub import constants

    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NEURONSPEC_STORE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commits = _hub_snapshots(tmp_path / "hub", "tiny-org/tiny-llama", {"step100": 0, "main": 1})
    path = tmp_path / "ckpt.yaml"
    path.write_text(CHECKPOINTS.format(corpus=parallel_corpus))
    assert main(["run", "-q", "--json", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    record = json.loads((Path(out["folder"]) / "record.json").read_text())
    assert {m: record["models"][m]["revision"] for m in ("early", "late")} == {
        "early": commits["step100"], "late": commits["main"]}
    lrds = {r["measure"]: r["values"] for r in out["results"]["dynamics"]["rows"]}["LRDS (same language − different language)"]
    assert lrds["early"] != lrds["late"]

    # the same study of each checkpoint's own folder gives the same number: the revision picked the weights
    for name, ref in (("early", "step100"), ("late", "main")):
        folder = tmp_path / "hub" / "models--tiny-org--tiny-llama" / "snapshots" / commits[ref]
        single = tmp_path / f"{name}.yaml"
        single.write_text(CHECKPOINTS.replace("models:\n  early: {{id: tiny-org/tiny-llama, revision: step100}}\n"
                                              "  late: {{id: tiny-org/tiny-llama, revision: main}}\n",
                                              f"model: {{{{id: {folder}}}}}\n").replace("name: ckpt", f"name: {name}")
                          .format(corpus=parallel_corpus))
        assert main(["run", "-q", "--json", str(single)]) == 0
        alone = json.loads(capsys.readouterr().out)["results"]["detection"]["linguafranca"]["scores"]["lrds"]
        assert alone == pytest.approx(lrds[name], abs=1e-6)
