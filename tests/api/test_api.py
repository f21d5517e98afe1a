"""The Python API on a tiny quickstart-shaped study: the tour of docs/api.md as written,
tidy results checked against the store's own stage results, sets and masks as NeuronSets."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch

import neuronspec as ns
from neuronspec.plan.store import Store
from neuronspec.spec import load_study

ROOT = Path(__file__).resolve().parents[2]
API_DOC = ROOT / "docs" / "api.md"
ALPHABETS = {"en": "abcdefgh ", "zh": "ijklmnop ", "hi": "qrstuvwx "}
#: the quickstart's shape (set `specific`, arms `specific` and `random`) on a tiny model, 2 draws
STUDY = """\
name: quickstart
model: {{id: {model}}}
languages: [en, zh, hi]
corpora:
  detect: {{source: {corpus}, split: detect, docs_per_language: 6, max_tokens: 32, eval_fraction: 0.4}}
  ppl: {{source: {corpus}, split: eval, docs_per_language: 3, max_tokens: 32, eval_fraction: 0.4}}
detect:
  plnd: {{sites: [ffn, attn.v, attn.o], epsilon: {{quantile: 0.9}}, batch_size: 4}}
neurons:
  specific: plnd[lang] - plnd[others]
arms:
  - {{name: specific, deactivate: {{neurons: specific}}}}
  - {{name: random, deactivate: {{random_like: specific, draws: 2}}}}
evaluate:
  ppl: {{metric: perplexity, corpus: ppl, on: all, bootstrap: 50}}
"""


@pytest.fixture(scope="module")
def study_path(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("api")
    rng = random.Random(0)
    with (root / "corpus.jsonl").open("w") as f:
        for lang, letters in ALPHABETS.items():
            for i in range(20):
                f.write(json.dumps({"id": f"{lang}-{i}", "lang": lang,
                                    "text": "".join(rng.choice(letters) for _ in range(rng.randint(20, 40)))}) + "\n")
    path = root / "studies" / "quickstart.yaml"
    path.parent.mkdir()
    path.write_text(STUDY.format(model=tiny_model_dir, corpus=root / "corpus.jsonl"))
    return path


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEURONSPEC_HOME", str(tmp_path_factory.mktemp("home")))
        mp.delenv("NEURONSPEC_STORE", raising=False)
        yield


def api_tour() -> str:
    text = API_DOC.read_text(encoding="utf-8")
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def test_api_tour_runs_as_written(study_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the study path changes: the tiny study stands in for studies/quickstart.yaml
    (the model comes from the study file, so it is the tiny model too)."""
    code = api_tour()
    assert code.count("studies/quickstart.yaml") == 1
    monkeypatch.chdir(study_path.parent.parent)
    scope: dict = {}
    exec(compile(code.replace("studies/quickstart.yaml", str(study_path)), "docs/api.md", "exec"), scope)  # noqa: S102
    # the export really has the set's neurons off: reload it and compare with the hooked model
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained("quickstart-zh-off")
    lm, zh, batch = scope["lm"], scope["zh"], scope["batch"]
    assert zh.count() > 0
    with torch.no_grad(), ns.deactivate(lm.model, zh):
        hooked = lm.model(**batch).logits
    with torch.no_grad():
        plain = lm.model(**batch).logits
        exported = reloaded(**batch).logits
    assert torch.allclose(exported, hooked, atol=1e-5) and not torch.allclose(plain, hooked, atol=1e-5)
    assert ns.NeuronSet.load("specific.zh.safetensors") == zh


def test_evaluations_are_the_stored_stage_results(study_path: Path) -> None:
    results = ns.open_study(study_path).run(quiet=True)
    ev = results.evaluations
    langs = list(ALPHABETS)
    # base per language + the set arm per (deactivated, evaluated) + each of 2 draws of the control
    assert len(ev) == 3 + 3 * 3 + 2 * 3 * 3
    store = Store(study_path.parent / ".neuronspec")
    base = {}
    for sid, info in results.record["stages"].items():
        if info["kind"] != "eval":
            continue
        stored = store.get(info["key"]).json()
        spec = info["spec"]
        row = ev[(ev.arm == (spec["arm"] or "base")) & (ev.evaluated == spec["lang"])
                 & (ev.deactivated.isna() if spec["mask_lang"] is None else ev.deactivated == spec["mask_lang"])
                 & (ev.draw.isna() if spec.get("draw") is None else ev.draw == spec["draw"])]
        assert len(row) == 1, sid
        assert row.value.iloc[0] == stored["value"]
        if spec["arm"] is None:
            base[spec["lang"]] = stored["value"]
    for r in ev[ev.arm != "base"].itertuples():
        assert r.change == pytest.approx(100 * (r.value - base[r.evaluated]) / base[r.evaluated])
        assert r.change_ci_low <= r.change_ci_high
    assert set(ev[ev.arm == "random"].random_like) == {"specific"} and set(ev[ev.arm == "random"].draw) == {1, 2}
    assert set(ev.deactivated.dropna()) == set(langs)


def test_sets_masks_and_layer_counts(study_path: Path) -> None:
    results = ns.open_study(study_path).results()  # the latest run, nothing computed
    counts = results.layer_counts
    for lang in ALPHABETS:
        s = results.neuron_set("specific", lang)
        per = counts[(counts.set == "specific") & (counts.language == lang)]
        assert per.neurons.sum() == s.count()
        assert {(r.site, r.layer): r.neurons for r in per.itertuples() if r.neurons} == \
            {(site, layer): n for site, layers in s.per_layer_counts().items() for layer, n in layers.items() if n}
        target = results.mask("specific", lang)
        assert target == s  # no partition or site restriction
        draws = [results.mask("random", lang, draw=k) for k in (1, 2)]
        for d in draws:  # same count per site and layer, none of the target's neurons
            assert d.per_layer_counts() == target.per_layer_counts() and (d & target).count() == 0
        assert draws[0] != draws[1] or target.count() == 0
        table = results.neuron_table(s)  # a dense model: flat indices, no expert columns filled
        assert sorted(zip(table.site, table.layer, table.neuron)) == \
            sorted((site, layer, n) for site, layer, idx in s.items() for n in idx.tolist())
        assert table.expert.isna().all() and table["index"].isna().all()
    assert results.expert_counts.empty and not (results.folder / "experts.csv").exists()  # a dense model
    assert len(repr(results)) < 300 and results.folder.name in repr(results) and "ppl" in repr(results)
    assert repr(ns.open_study(study_path)) == f"Study(name='quickstart', file={str(study_path)!r})"
    # a notebook user's slips name what exists instead of a store path or a bare key
    with pytest.raises(KeyError, match=r"no neuron set 'nonexistent' for 'en' in this run \(sets: .*specific"):
        results.neuron_set("nonexistent", "en")
    with pytest.raises(KeyError, match=r"no neuron set 'specific' for 'xx' \(languages: en, hi, zh\)"):
        results.neuron_set("specific", "xx")
    with pytest.raises(KeyError, match=r"random control with 2 draws: pick one with draw= \(1…2\)"):
        results.mask("random", "en")
    with pytest.raises(KeyError, match=r"has draws 1…2, not 7"):
        results.mask("random", "en", draw=7)
    with pytest.raises(KeyError, match=r"no draws .*leave out draw="):
        results.mask("specific", "en", draw=1)
    with pytest.raises(KeyError, match=r"has no arm 'specfic' \(arms with masks: random, specific\)"):
        results.mask("specfic", "en")


def test_overrides_dict_is_set_overrides(study_path: Path) -> None:
    study = ns.open_study(study_path, {"detect.plnd.epsilon.quantile": 0.8, "corpora.ppl.source": "other.jsonl"})
    expected = load_study(study_path, ["detect.plnd.epsilon.quantile=0.8", "corpora.ppl.source=other.jsonl"])
    assert study.loaded.study == expected.study
    with pytest.raises(ns.StudyError):
        ns.open_study(study_path, {"detect.plnd.epsilon.quantile": 2})


def test_public_api_is_short_and_lazy() -> None:
    assert sorted(ns.__all__) == ["NeuronSet", "Results", "RunFailed", "Study", "StudyError", "deactivate",
                                  "open_study", "zero_weights"]
    for name in ns.__all__:
        assert getattr(ns, name) is not None
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import sys, neuronspec; "
                          "print(sorted(m for m in ('torch', 'pandas', 'matplotlib', 'transformers') if m in sys.modules))"],
                         capture_output=True, text=True, check=True, env=_env())
    assert out.stdout.strip() == "[]"


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_draws_belong_to_random_deactivate_controls(study_path: Path) -> None:
    text = study_path.read_text()
    with pytest.raises(ns.StudyError) as err:  # draws on an arm that names a set
        load_study(text=text.replace("{neurons: specific}}", "{neurons: specific, draws: 3}}"), name="s.yaml")
    (problem,) = err.value.problems
    assert str(problem).startswith("s.yaml:12:") and "arms.0.deactivate.draws" in str(problem)  # FILE:LINE:COL
    assert "random_like" in str(problem)
    with pytest.raises(ns.StudyError):
        load_study(text=text.replace("draws: 2", "draws: 0"), name="s.yaml")
    default = load_study(text=text.replace(", draws: 2", ""), name="s.yaml").study
    assert default.arms[1].selection.draw_count("deactivate") == 5


def test_results_belong_to_the_study_as_loaded(study_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A later run with another ε is newer, but `results()`, `report latest --study` and
    `diff --study … latest` of the unmodified study read its own run; an unchanged re-run reuses
    that run (not the newest); `runs` tells the runs apart by their --set, note and settings."""
    from neuronspec.cli import main

    plain = ns.open_study(study_path).run(quiet=True)
    other = ns.open_study(study_path, {"detect.plnd.epsilon.quantile": 0.8}).run(quiet=True, note="looser ε")
    assert other.folder != plain.folder and other.folder.name > plain.folder.name
    assert ns.open_study(study_path).results().folder == plain.folder
    assert ns.open_study(study_path, {"detect.plnd.epsilon.quantile": 0.8}).results().folder == other.folder
    with pytest.raises(LookupError) as err:
        ns.open_study(study_path, {"detect.plnd.epsilon.quantile": 0.7}).results()
    message = str(err.value)
    assert other.folder.name in message and "detect.plnd.epsilon.quantile: 0.8 → 0.7" in message, message
    assert ns.open_study(study_path).run(quiet=True).folder == plain.folder  # cached: its own run, reused

    capsys.readouterr()
    assert main(["report", "latest", "--study", str(study_path), "-q"]) == 0
    assert str(plain.folder / "report.html") in capsys.readouterr().out.replace("\n", "")
    assert main(["report", "latest", "--study", str(study_path), "--set", "detect.plnd.epsilon.quantile=0.8", "-q"]) == 0
    assert str(other.folder / "report.html") in capsys.readouterr().out.replace("\n", "")
    assert main(["report", "latest", "--study", str(study_path), "--set", "detect.plnd.epsilon.quantile=0.7", "-q"]) == 2
    assert "0.8 → 0.7" in capsys.readouterr().err.replace("\n", "")
    assert main(["diff", "--study", str(study_path), "latest", other.folder.name, "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert [c["field"] for c in diff["spec"]][:1] == ["detect.plnd.epsilon.quantile"], diff["spec"]

    assert main(["runs", str(study_path), "--json"]) == 0
    listed = {r["run_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed[other.folder.name]["overrides"] == ["detect.plnd.epsilon.quantile=0.8"]
    assert listed[other.folder.name]["note"] == "looser ε"
    assert listed[other.folder.name]["differs"] == ["detect.plnd.epsilon.quantile: 0.8 → 0.9"]
    assert listed[plain.folder.name]["differs"] == [] and listed[plain.folder.name]["overrides"] == []
