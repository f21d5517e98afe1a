"""lm-evaluation-harness tasks as a study evaluation: run through `neuronspec run` on a tiny
model, each arm's score equals calling lm-eval directly on the same masked model."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from tiny_studies import ALPHABETS, LM_EVAL_CHOICE_TASK, make_corpus  # noqa: E402

# a rolling log-likelihood task (continuous: any mask moves it) and a multiple-choice task, per language
ROLLING = """\
task: tiny_text_{lang}
dataset_path: json
dataset_kwargs:
  data_files: {{test: data/text_{lang}.jsonl}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - {{metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}}
metadata: {{version: 1.0}}
"""
CHOICE = LM_EVAL_CHOICE_TASK.replace("DATA_FILE", "data/choice.jsonl")

STUDY = """\
name: tiny-tasks
model: {{id: {model}}}
languages: [en, fr, de]
corpora:
  detect: {{source: {corpus}, split: detect, docs_per_language: 6, max_tokens: 32, eval_fraction: 0.4}}
detect:
  plnd: {{sites: [ffn, attn.v, attn.o], epsilon: {{quantile: 0.8}}, batch_size: 4}}
neurons:
  specific: plnd[lang] - plnd[others]
arms:
  - {{name: off, deactivate: {{neurons: specific}}}}
evaluate:
  text: {{metric: lm_eval, tasks: {{en: tiny_text_en, fr: tiny_text_fr, de: tiny_text_de}}, include_path: tasks/, on: self, batch_size: 4}}
  choice: {{metric: lm_eval, tasks: [tiny_choice], include_path: tasks, limit: 10, arms: [off]}}
"""


def _write_tasks(folder: Path) -> None:
    rng = random.Random(1)
    (folder / "data").mkdir(parents=True)
    for lang, letters in ALPHABETS.items():
        (folder / f"text_{lang}.yaml").write_text(ROLLING.format(lang=lang))
        with (folder / "data" / f"text_{lang}.jsonl").open("w") as f:
            for _ in range(6):
                f.write(json.dumps({"text": "".join(rng.choice(letters) for _ in range(30)).strip() or "a"}) + "\n")
    (folder / "choice.yaml").write_text(CHOICE)
    with (folder / "data" / "choice.jsonl").open("w") as f:
        for _ in range(14):
            f.write(json.dumps({"prompt": "".join(rng.choice("abcdefgh") for _ in range(12)),
                                "choices": [" a", " b", " c", " d"], "label": rng.randrange(4)}) + "\n")


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`neuronspec ARGS` in this process (lm-eval and torch are imported once for the whole test): exit code, stdout, stderr."""
    from neuronspec.cli import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


def _direct(model_dir: Path, tasks_dir: Path, task: str, neurons, **kw) -> dict:  # noqa: ANN001
    """lm-eval called the documented way (by name, include_path) on the model with the mask's hooks."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from neuronspec.models.loading import load_model
    from neuronspec.models.masks import deactivate

    lm = load_model(str(model_dir))
    cwd = os.getcwd()
    os.chdir(tasks_dir)  # the YAML's data_files are relative: lm-eval itself reads them from the working folder
    try:
        with deactivate(lm.model, neurons):
            out = lm_eval.simple_evaluate(
                model=HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=4, device="cpu"), tasks=[task],
                task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False), log_samples=False, bootstrap_iters=1000,
                random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0, **kw)
    finally:
        os.chdir(cwd)
    return out["results"][task]


def test_lm_eval_tasks_per_arm_equal_lm_eval_called_directly(tmp_path: Path, tiny_model_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from neuronspec.models.masks import NeuronSet
    from neuronspec.plan.store import Store

    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # lm-eval's environment report (pip list, git: ~1.3 s per direct call) is not what is compared
    monkeypatch.setattr("lm_eval.evaluator.add_env_info", lambda results: None)
    monkeypatch.chdir(tmp_path)  # relative data paths must resolve against the task YAML, not the working folder
    _write_tasks(tmp_path / "tasks")
    study = tmp_path / "tasks-study.yaml"
    study.write_text(STUDY.format(model=tiny_model_dir, corpus=make_corpus(tmp_path / "corpus.jsonl")))

    code, printed, _ = _cli(capsys, "plan", str(study))
    assert code == 0
    assert "tiny_text_en (text_en.yaml; 1 local file(s)) for en" in " ".join(printed.split())

    code, printed, logged = _cli(capsys, "run", str(study), "--json", "-q")
    assert code == 0
    # stderr is not a terminal here (as in `run > run.log 2>&1`): no lm-eval / datasets progress bars
    assert "it/s" not in logged and "requests" not in logged and "%|" not in logged, logged[:500]
    out = json.loads(printed)
    results = json.loads((Path(out["folder"]) / "results.json").read_text())
    text, choice = results["evaluations"]["text"], results["evaluations"]["choice"]
    assert text["languages"] == ["en", "fr", "de"] and choice["languages"] == ["tiny_choice"]
    assert "eval/text/off/fr@fr" in out["computed"] and "eval/text/off/fr@de" not in out["computed"]  # on: self

    record = json.loads((Path(out["folder"]) / "record.json").read_text())
    entry = Store(tmp_path / ".neuronspec").entry_dir(record["stages"]["mask/off"]["key"])
    masks = {lang: NeuronSet.load(entry / f"mask.{lang}.safetensors") for lang in ("en", "fr", "de")}
    assert all(m.count() > 0 for m in masks.values()), "the arm must switch neurons off for the test to mean anything"

    for lang in ("en", "fr", "de"):
        base = _direct(tiny_model_dir, tmp_path / "tasks", f"tiny_text_{lang}", NeuronSet.empty())
        arm = _direct(tiny_model_dir, tmp_path / "tasks", f"tiny_text_{lang}", masks[lang])
        assert text["base"][lang] == pytest.approx(base["word_perplexity,none"], rel=1e-9)
        assert text["arms"]["off"]["values"][lang] == pytest.approx(arm["word_perplexity,none"], rel=1e-9)
        assert arm["word_perplexity,none"] != pytest.approx(base["word_perplexity,none"], rel=1e-6)
        # an lm-eval perplexity changes in % (like neuronspec's own perplexity), accuracy in points
        expected = 100 * (arm["word_perplexity,none"] - base["word_perplexity,none"]) / base["word_perplexity,none"]
        assert text["arms"]["off"]["change"][lang] == pytest.approx(expected)
    # a language-neutral task: every language's set, scored against lm-eval on the same mask
    cells = {(c["arm"], c["mask_lang"]): c for c in choice["cells"]}
    for lang in ("en", "fr", "de"):
        direct = _direct(tiny_model_dir, tmp_path / "tasks", "tiny_choice", masks[lang], limit=10)
        cell = cells[("off", lang)]
        assert cell["value"] == pytest.approx(direct["acc,none"]) and cell["stderr"] == pytest.approx(direct["acc_stderr,none"])
        assert cell["n"] == 10 and cell["metric"] == "acc,none"
    assert text["unit"] == "% ppl change" and choice["unit"] == "points"
    fr = cells[("off", "fr")]["value"] - cells[(None, None)]["value"]
    assert choice["matrices"]["off"]["change"]["fr"]["tiny_choice"] == pytest.approx(100 * fr)
    assert cells[(None, None)]["value"] == pytest.approx(
        _direct(tiny_model_dir, tmp_path / "tasks", "tiny_choice", NeuronSet.empty(), limit=10)["acc,none"])

    code, printed, _ = _cli(capsys, "run", str(study), "--json", "-q")
    assert code == 0 and json.loads(printed)["computed"] == []

    # editing a data row recomputes exactly the stages of that task
    with (tmp_path / "tasks" / "data" / "text_de.jsonl").open("a") as f:
        f.write(json.dumps({"text": "qrst uvwx"}) + "\n")
    code, printed, _ = _cli(capsys, "run", str(study), "--json", "-q")
    third = json.loads(printed)
    assert code == 0 and sorted(third["computed"]) == ["eval/text/base/de", "eval/text/off/de@de"]
    # diff and the HTML report read lm-eval cells like any evaluation's
    code, printed, _ = _cli(capsys, "diff", out["run"], third["run"], "--json", "--store", str(tmp_path / ".neuronspec"))
    assert code == 0
    moved = {row["stage"]: row for row in json.loads(printed)["metrics"]}
    assert set(moved) == {"eval/text/base/de", "eval/text/off/de@de"}
    assert moved["eval/text/base/de"]["a"]["value"] == pytest.approx(text["base"]["de"])
    assert moved["eval/text/base/de"]["metric"] == "word_perplexity,none"
    code, _, _ = _cli(capsys, "report", third["run"], "--study", str(study), "-q")
    html = (Path(third["folder"]) / "report.html").read_text()
    assert code == 0 and "tiny_text_de: word_perplexity,none" in html and "tiny_choice: acc,none" in html


HUB_TASK = """\
task: hub_only
dataset_path: nonexistent-org/xcsqa-offline
dataset_name: X-CSQA-en
output_type: multiple_choice
validation_split: validation
doc_to_text: "{{q}}"
doc_to_choice: "{{c}}"
doc_to_target: 0
metric_list:
  - {metric: acc, aggregation: mean, higher_is_better: true}
"""

SMALL = """\
name: tiny-hub
model: {{id: {model}}}
languages: [en, fr]
evaluate:
  hub: {{metric: lm_eval, tasks: {tasks}, include_path: {include}}}
"""


def _small(tmp_path: Path, model: Path, tasks: str = "{en: hub_only}", include: str = "tasks") -> Path:
    (tmp_path / "tasks").mkdir(exist_ok=True)
    (tmp_path / "tasks" / "hub.yaml").write_text(HUB_TASK)
    study = tmp_path / "hub.yaml"
    study.write_text(SMALL.format(model=model, tasks=tasks, include=include))
    return study


def test_a_task_whose_dataset_cannot_be_loaded_fails_its_stage_naming_task_and_dataset(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as offline as this machine, without the retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    study = _small(tmp_path, tiny_model_dir)
    code, _, _ = _cli(capsys, "plan", str(study))
    assert code == 0
    code, _, message = _cli(capsys, "run", str(study), "-q")
    assert code == 1
    assert "eval/hub/base/en" in message and "'hub_only'" in message and "nonexistent-org/xcsqa-offline/X-CSQA-en" in message
    assert not list((tmp_path / ".neuronspec").glob("runs/*/results.json"))  # no result, not a zero


@pytest.mark.parametrize(("tasks", "include", "where", "message"), [
    ("{en: hub_only, de: hub_only}", "tasks", "evaluate.hub.tasks.de", "'de' is not one of the study's languages"),
    ("[hub_only, hub_only]", "tasks", "evaluate.hub.tasks", "tasks must be unique"),
    ("{en: 'bad name'}", "tasks", "evaluate.hub.tasks", "plain names"),
    ("{en: hub_only}", "nowhere", "evaluate.hub.include_path", "is not a folder"),
])
def test_bad_lm_eval_evaluations_are_located_errors(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str],
                                                   tasks: str, include: str, where: str, message: str) -> None:
    study = _small(tmp_path, tiny_model_dir, tasks, include)
    code, _, err = _cli(capsys, "plan", str(study))
    assert code == 2
    assert f"{study}:5:" in err and where in err and message in err


def test_a_task_reading_the_corpus_needs_one(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = _small(tmp_path, tiny_model_dir, "{en: corpus_choice}", str(Path(__file__).parents[2] / "studies" / "tasks"))
    code, _, err = _cli(capsys, "plan", str(study))
    assert code == 2 and "give the evaluation a `corpus`" in err


def test_shipped_mwork_tasks_study_validates_and_plans() -> None:
    from neuronspec.plan.compile import compile_study
    from neuronspec.spec import load_study

    root = Path(__file__).parents[2] / "studies"
    plan = compile_study(load_study(root / "mwork-tasks.yaml"))
    lm = {sid: s for sid, s in plan.stages.items() if s.kind == "eval.lm_eval"}
    by_eval = {name: {s.spec.task["name"] for s in lm.values() if s.evaluation == name} for name in ("xquad", "mgsm", "xcsqa", "xlsum")}
    assert by_eval["xquad"] == {"xquad_en", "xquad_de", "xquad_zh", "xquad_es", "xquad_ru"}  # the paper's six, no French
    assert by_eval["mgsm"] == {f"mgsm_direct_{lang}" for lang in ("en", "de", "fr", "zh", "es", "ru")}
    assert by_eval["xcsqa"] == {f"xcsqa_{lang}" for lang in ("en", "de", "fr", "zh", "es", "ru")}
    xcsqa = plan.stages["eval/xcsqa/task/zh@zh"].spec.task
    assert xcsqa["dataset"] == "INK-USC/xcsr/X-CSQA-zh" and set(xcsqa["files"]) == {"xcsqa_zh.yaml", "xcsqa_common_yaml"}
    xlsum = plan.stages["eval/xlsum/base/fr"].spec.task
    assert set(xlsum["files"]) == {"xlsum_fr.yaml", "xlsum_common_yaml", "rouge_utils.py"}  # the !function module too
    assert plan.stages["eval/xquad/base/en"].spec.task["yaml"] is None  # shipped with lm-eval, keyed by its version
    # on: baseline — each language's set on its language and on English (ΔEng), never on a third
    assert "eval/xquad/under/zh@zh" in plan.stages and "eval/xquad/under/zh@en" in plan.stages
    assert "eval/xquad/under/zh@es" not in plan.stages
    # each table's arms only (Table 2: settings (i)-(v); Table 5 and Table 1 on XL-Sum)
    assert {s.arm for s in lm.values() if s.evaluation == "xquad"} == {None, "under-random", "all-random", "task", "gen", "under"}
    assert {s.arm for s in lm.values() if s.evaluation == "xlsum"} == {None, "gen-random", "all-random", "gen", "all", "all-matched"}
    assert any(n.startswith("evaluate.xlsum: lm-eval") and "csebuetnlp/xlsum/french" in n for n in plan.notes)


AGREE = """\
name: tiny-agree
model: {{id: {model}}}
languages: [en, fr]
corpora:
  detect: {{source: {corpus}, split: detect, docs_per_language: 6, max_tokens: 32, eval_fraction: 0.4}}
  items: {{source: {items}, max_tokens: 24}}
detect:
  plnd: {{sites: [ffn], epsilon: {{quantile: 0.8}}, batch_size: 4}}
neurons:
  specific: plnd[lang] - plnd[others]
arms:
  - {{name: off, deactivate: {{neurons: specific}}}}
evaluate:
  harness: {{metric: lm_eval, tasks: {{en: corpus_choice, fr: corpus_choice}}, corpus: items, include_path: {tasks},
             on: self, batch_size: 3}}
  own: {{metric: choice, corpus: items, on: self, bootstrap: 0}}
"""


def test_corpus_fed_task_agrees_with_the_choice_metric(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """studies/tasks/corpus_choice.yaml over a corpus scores what `choice` scores: the same prompts,
    continuations (the prompt's trailing space moves into them) and left truncation (max_length + 1 =
    max_tokens, derived from the corpus when unset; prompts here are longer than that) — so every cell's
    accuracy is equal. A max_length that cuts otherwise is said in the plan."""
    monkeypatch.setenv("NEURONSPEC_HOME", str(tmp_path / "home"))
    rng = random.Random(3)
    with (tmp_path / "items.jsonl").open("w") as f:
        for lang, letters in (("en", "abcdefgh"), ("fr", "ijklmnop")):
            for i in range(30):
                body = " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 6))) for _ in range(rng.randint(2, 9)))
                f.write(json.dumps({"id": f"{lang}-{i}", "lang": lang, "text": body, "prompt": f"q: {body}\na: ",
                                    "choices": ["ab", "cd", "ef", "gh"], "label": rng.randrange(4)}) + "\n")
    study = tmp_path / "agree.yaml"
    study.write_text(AGREE.format(model=tiny_model_dir, corpus=make_corpus(tmp_path / "corpus.jsonl"),
                                  items=tmp_path / "items.jsonl", tasks=Path(__file__).parents[2] / "studies" / "tasks"))
    code, printed, err = _cli(capsys, "run", str(study), "--json", "-q")
    assert code == 0, err
    ev = json.loads(printed)["results"]["evaluations"]
    own = {(c["arm"], c["mask_lang"], c["lang"]): c for c in ev["own"]["cells"]}
    assert len(own) == 4 and any(c["value"] not in (0.0, 1.0) for c in own.values())
    for c in ev["harness"]["cells"]:
        mine = own[(c["arm"], c["mask_lang"], c["lang"])]
        assert c["n"] == mine["n"] == 30 and c["value"] == pytest.approx(mine["value"]), (c["arm"], c["lang"])
    code, printed, _ = _cli(capsys, "plan", str(study))
    assert code == 0 and "lm-eval max_length 23 (corpus 'items' keeps 24 tokens" in " ".join(printed.split())
    code, printed, _ = _cli(capsys, "plan", str(study), "--set", "evaluate.harness.max_length=40")
    assert code == 0 and "lm-eval and `choice` score different prompts (max_length 23 makes them agree)" in " ".join(printed.split())


def test_lm_eval_stages_refuse_to_run_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    """One rank running lm-eval while the others wait at the next collective could outlast the
    process group's timeout: the stage says how to finish in one process instead."""
    from neuronspec import distributed
    from neuronspec.plan import kinds
    from neuronspec.plan.graph import Stage

    monkeypatch.setattr(distributed, "world", lambda: distributed.World(0, 2))
    spec = kinds.LmEvalStage(seed=0, lang="en", task={"name": "t", "yaml": None}, corpus=None, batch_size=1, limit=None,
                             num_fewshot=None, max_length=None, metric_name=None, bootstrap=0, arm=None, arm_kind=None,
                             mask_lang=None)
    stage = Stage("eval/x/base/en", "eval.lm_eval", spec, evaluation="x", lang="en")
    with pytest.raises(ValueError, match=r"not under torchrun.*--only 'eval/x/\*'"):
        kinds.evaluate_lm_eval(None, stage, spec, Path("."))  # type: ignore[arg-type]


def test_shipped_task_yamls_score_rows_shaped_like_their_datasets(tmp_path: Path) -> None:
    """The Hub datasets are out of reach here: the task YAMLs run on local rows of the same shape."""
    from lm_eval.tasks import TaskManager

    from neuronspec.evaluate.harness import task_config

    tasks = Path(__file__).parents[2] / "studies" / "tasks"
    xcsqa_rows = [{"id": "a", "lang": "zh", "answerKey": "C",
                   "question": {"stem": "狗在哪里", "choices": {"label": list("ABCDE"), "text": ["公园", "海", "天", "月", "箱"]}}}]
    xlsum_rows = [{"id": "a", "url": "u", "title": "t", "summary": "猫坐着", "text": "一只猫坐在垫子上"}]
    wiki_rows = [{"id": "a", "text": "一只猫坐在垫子上", "prompt": "summarize: 一只猫坐在垫子上", "reference": "猫坐着"}]
    for name, split, rows in (("xcsqa_zh", "validation", xcsqa_rows), ("xlsum_zh", "test", xlsum_rows),
                              ("wikilingua_summary", "test", wiki_rows)):
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        cfg = task_config(tasks / f"{name}.yaml", corpus_file=data) | {
            "dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": {split: str(data)}}}
        task = TaskManager(include_defaults=False).load([cfg])["tasks"][name]
        doc = task.dataset[split][0]
        if name == "xcsqa_zh":
            assert task.doc_to_text(doc) == "Question: 狗在哪里\nAnswer:" and task.doc_to_target(doc) == 2
            assert task.doc_to_choice(doc) == ["公园", "海", "天", "月", "箱"]
        else:  # their !function scores with neuronspec's ROUGE-L
            assert task.doc_to_target(doc) == "猫坐着" and task.doc_to_text(doc).endswith("Summary:")
            assert task.process_results(doc, ["猫坐着"]) == {"rougeL": 1.0}
            assert task.process_results(doc, ["狗"]) == {"rougeL": 0.0}
