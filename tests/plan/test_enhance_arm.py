"""Enhance arms in a study: one fine-tune per language, evaluated through its delta."""

from __future__ import annotations

from pathlib import Path

import torch

from neuronspec.plan.compile import compile_study
from neuronspec.plan.runner import run_plan
from neuronspec.plan.store import Store
from neuronspec.report.model import to_json
from neuronspec.report.results import collect
from neuronspec.spec import load_study


def test_enhance_arms_train_per_language_and_evaluate_with_the_delta(enhance_study: Path) -> None:
    loaded = load_study(enhance_study)
    plan = compile_study(loaded)
    assert {"enhance/tune/fr", "enhance/tune/de", "enhance/tune-random/fr", "enhance/tune-random/de"} <= set(plan.stages)
    assert "eval/ppl/tune/fr@en" in plan.stages and "eval/ppl/tune/en@en" not in plan.stages
    store = Store(enhance_study.parent / ".neuronspec")
    result = run_plan(plan, store, loaded.study)
    results = to_json(collect(plan, store))  # the JSON users read
    tune = results["enhance"]["tune/fr"]
    random = results["enhance"]["tune-random/fr"]
    assert tune["neurons"] == random["neurons"] > 0
    assert tune["optimizer_state_bytes"] < tune["full_adam_state_bytes"] / 10
    cells = {(c["arm"], c["mask_lang"], c["lang"]): c["value"] for c in results["evaluations"]["ppl"]["cells"]}
    # the delta changes the model's outputs on the trained language...
    assert cells[("tune", "fr", "fr")] != cells[(None, None, "fr")]
    # ...and the base evaluation, run in the same process after the enhanced ones, is untouched
    assert result.computed.index("eval/ppl/base/fr") < result.computed.index("eval/ppl/tune/fr@fr")
    again = run_plan(plan, store, loaded.study, force=["eval/ppl/base/fr"])
    assert collect(plan, store).evaluations["ppl"].base["fr"] == results["evaluations"]["ppl"]["base"]["fr"]
    assert again.computed == ["eval/ppl/base/fr"]


def test_export_writes_a_model_that_reproduces_the_enhanced_arm(enhance_study: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from neuronspec.cli import main
    from neuronspec.enhance import Delta, apply_delta
    from neuronspec.models.loading import load_model

    assert main(["run", "-q", str(enhance_study)]) == 0
    out = tmp_path / "exported"
    assert main(["export", str(enhance_study), "tune", "--lang", "de", "--out", str(out)]) == 0
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    loaded = load_study(enhance_study)
    plan = compile_study(loaded)
    entry = Store(enhance_study.parent / ".neuronspec").get(plan.stages["enhance/tune/de"].key)
    lm = load_model(loaded.study.model.id)
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    with torch.no_grad(), apply_delta(lm.model, Delta.load(entry.file("delta.safetensors"))):
        want = lm.model(ids).logits
    with torch.no_grad():
        assert torch.allclose(exported(ids).logits, want, atol=1e-5)


def test_enhancing_a_low_precision_model_is_noted(enhance_study) -> None:  # noqa: ANN001
    from neuronspec.plan.compile import compile_study
    from neuronspec.spec import load_study

    assert not compile_study(load_study(enhance_study)).notes
    notes = compile_study(load_study(enhance_study, ["model.dtype=bfloat16"])).notes
    assert any("enhance arms with model.dtype bfloat16" in n for n in notes)
