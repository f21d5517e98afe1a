"""An ε that empties every set is reported as such: no diagonal wins, no overlap of empty sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuronspec.cli import main


def test_infinite_epsilon_reports_empty_sets(study_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["run", "--json", str(study_file), "--set", "detect.plnd.epsilon=.inf"]) == 0
    out = capsys.readouterr()
    results = json.loads(out.out)["results"]
    specific = results["sets"]["specific"]
    assert specific["empty"] == ["en", "fr", "de"]
    assert all(v is None for row in specific["jaccard"].values() for v in row.values())
    matrix = results["evaluations"]["ppl"]["matrices"]["early"]
    assert matrix["empty_rows"] == ["en", "fr", "de"]
    assert matrix["diagonal_largest"] == 0 and matrix["rows_with_diagonal"] == 0
    assert "neuron set 'specific' is EMPTY for en, fr, de" in out.err

    # `latest` of the study as it is now would be another run: name the --set it was made with
    assert main(["report", "latest", "--study", str(study_file), "-q"]) == 2
    assert main(["report", "latest", "--study", str(study_file), "--set", "detect.plnd.epsilon=.inf", "-q"]) == 0
    html = next((study_file.parent / ".neuronspec" / "runs").glob("*/report.html")).read_text(encoding="utf-8")
    assert "the set is EMPTY for en, fr, de" in html and "specific is EMPTY for en, fr, de" in html
    jaccard = html.split("overlap (Jaccard) of specific")[1].split("</table>")[0]
    assert "1.00" not in jaccard and "–" in jaccard


def test_an_empty_mask_reads_the_base_result_which_the_hooks_reproduce(study_file: Path) -> None:
    """With nothing to switch off an arm's stage takes the base stage's result instead of running the
    model; that result is what evaluating through the (empty) hooks gives — bit for bit."""
    from neuronspec.data import Document
    from neuronspec.evaluate import run_evaluator
    from neuronspec.models.loading import load_model
    from neuronspec.models.masks import NeuronSet, zeroed
    from neuronspec.plan.compile import compile_study
    from neuronspec.plan.kinds.base import read_docs
    from neuronspec.plan.runner import run_plan
    from neuronspec.plan.store import Store
    from neuronspec.spec import load_study

    loaded = load_study(study_file, ["detect.plnd.epsilon=.inf"])
    plan = compile_study(loaded)
    store = Store(study_file.parent / ".neuronspec")
    run_plan(plan, store, loaded.study)
    arm_stage, base_stage = plan.stages["eval/ppl/early/fr@fr"], plan.stages["eval/ppl/base/fr"]
    assert base_stage.id in arm_stage.deps
    got = store.get(arm_stage.key).json()
    assert got == store.get(base_stage.key).json() and got["deactivated"] == 0
    lm = load_model(loaded.study.model.id)
    docs = [Document(d["id"], d["lang"], d["text"], d["meta"])
            for d in read_docs(store.get(plan.stages["corpus/ppl"].key), "fr")]
    options = {k: v for k, v in arm_stage.spec.options.items() if k in ("bootstrap", "batch_size", "max_tokens")}
    with zeroed(lm.model, NeuronSet.empty()):
        direct = run_evaluator("perplexity", lm.model, lm.tokenizer, docs, options, "fr", arm_stage.spec.seed)
    assert direct.to_json()["value"] == got["value"]
