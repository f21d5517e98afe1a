"""LAPE, LinguaFranca, Sharing and the logit lens as study methods, on one shared activation pass."""

from __future__ import annotations

from neuronspec.plan.compile import compile_study
from neuronspec.plan.runner import run_plan
from neuronspec.plan.store import Store
from neuronspec.report.model import to_json
from neuronspec.report.render import result_tables
from neuronspec.report.results import collect
from neuronspec.spec import load_study


def test_methods_share_one_activation_pass_and_feed_sets_arms_and_report(methods_study) -> None:  # noqa: ANN001
    path = methods_study()
    loaded = load_study(path)
    plan = compile_study(loaded)
    act = [sid for sid in plan.stages if sid.startswith("stats/act/")]
    assert act == ["stats/act/parallel/en", "stats/act/parallel/fr", "stats/act/parallel/de"]  # once per language
    for method in ("lape", "linguafranca", "sharing"):
        assert plan.stages[f"select/{method}"].deps == tuple(act)
    assert not plan.notes
    store = Store(path.parent / ".neuronspec")
    run_plan(plan, store, loaded.study)
    typed = collect(plan, store)
    results = to_json(typed)  # the JSON users read (results.json, `run --json`)
    lf = results["detection"]["linguafranca"]
    assert lf["regions"]["sklr"] == sum(lf["regions"]["counts"].values())
    assert len(lf["per_layer"]["lrds"]) == 3
    assert set(results["detection"]["sharing"]["shares"]) == {"0.0", "0.05"}
    assert results["detection"]["sharing"]["event"] == "reference"
    assert set(results["logit_lens"]) == {"en", "fr", "de"}
    assert results["sets"]["sharing.all_shared"]["family"] is False
    assert [(m.arm, m.draw, m.lang) for m in typed.masks if m.arm == "shared"] == [("shared", None, "*")]
    assert "regions" in results["evaluations"]["ppl"]["matrices"]
    titles = [t.title for t in result_tables(typed)]
    assert any(t.startswith("LinguaFranca") for t in titles) and any(t.startswith("Sharing Matters") for t in titles)
    assert any(t.startswith("LAPE") for t in titles) and any(t.startswith("logit lens") for t in titles)


def test_unreachable_z_threshold_is_said_not_silently_empty(methods_study) -> None:  # noqa: ANN001
    plan = compile_study(load_study(methods_study(z=2.0)))
    assert any("unreachable with 3 languages" in note and "√(n−1) = 1.41" in note for note in plan.notes)
